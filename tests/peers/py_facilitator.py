"""The official x402 Python facilitator (x402 2.25 `x402FacilitatorSync` + the `exact` EVM facilitator scheme +
`FacilitatorWeb3Signer`), served over loopback HTTP as a differential oracle for ours and for benchmarks:
POST /verify, POST /settle, GET /supported.

    tools/.venv/bin/python tests/peers/py_facilitator.py [--rpc-url URL] [--network eip155:31337] [--port 0]
    env: X402_PEER_RPC_URL, X402_PEER_PRIVATE_KEY (required; this peer's own account, never the app's facilitator
         key nor a payer's), X402_PEER_NETWORK, X402_PEER_PORT.

Prints `listening <port>` on stdout once it accepts connections. Bodies are `{x402Version, paymentPayload,
paymentRequirements}`; an unparsable body, or one without paymentPayload/paymentRequirements or that the SDK's
models refuse, is 400; an exception from the SDK is 500 with its message (the caller sees why). Threaded, HTTP/1.1
keep-alive.
"""

import argparse
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pydantic import ValidationError
from x402 import x402FacilitatorSync
from x402.mechanisms.evm import FacilitatorWeb3Signer
from x402.mechanisms.evm.exact import register_exact_evm_facilitator
from x402.schemas.helpers import parse_payment_payload, parse_payment_requirements


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rpc-url", default=os.environ.get("X402_PEER_RPC_URL", "http://127.0.0.1:8545"))
    ap.add_argument("--network", default=os.environ.get("X402_PEER_NETWORK", "eip155:31337"))
    ap.add_argument("--port", type=int, default=int(os.environ.get("X402_PEER_PORT", "0")))
    args = ap.parse_args()
    key = os.environ.get("X402_PEER_PRIVATE_KEY")
    if not key:
        sys.exit("X402_PEER_PRIVATE_KEY is required (this facilitator's own dev account key)")

    facilitator = x402FacilitatorSync()
    register_exact_evm_facilitator(facilitator, FacilitatorWeb3Signer(key, args.rpc_url), networks=args.network)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_args) -> None:  # quiet: one line per request would swamp a benchmark
            pass

        def send(self, status: int, value) -> None:
            body = json.dumps(value).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/supported":
                return self.send(404, {"error": f"no route GET {self.path}"})
            self.send(200, facilitator.get_supported().model_dump(by_alias=True, exclude_none=True))

        def do_POST(self) -> None:
            path = self.path.split("?")[0]
            raw = self.rfile.read(int(self.headers.get("content-length") or 0))
            if path not in ("/verify", "/settle"):
                return self.send(404, {"error": f"no route POST {path}"})
            try:
                body = json.loads(raw)
            except ValueError as e:
                return self.send(400, {"error": f"body is not JSON: {e}"})
            if not isinstance(body, dict) or "paymentPayload" not in body or "paymentRequirements" not in body:
                return self.send(400, {"error": "body needs paymentPayload and paymentRequirements"})
            try:
                payload = parse_payment_payload(body["paymentPayload"])
                requirements = parse_payment_requirements(payload.x402_version, body["paymentRequirements"])
            except (ValidationError, ValueError, TypeError, AttributeError) as e:
                return self.send(400, {"error": f"invalid body: {e}"})
            try:
                run = facilitator.verify if path == "/verify" else facilitator.settle
                result = run(payload, requirements)
            except Exception as e:  # noqa: BLE001 - report whatever the SDK raised
                return self.send(500, {"error": f"{type(e).__name__}: {e}"})
            self.send(200, result.model_dump(by_alias=True, exclude_none=True))

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"listening {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
