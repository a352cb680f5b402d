"""The official x402 Python resource server (x402 2.25 Flask middleware) with one paywalled route, as the
`compare402` benchmark's Python peer: POST /v1/esim/activate answers 402 with the x402 v2 PAYMENT-REQUIRED header
until paid.

    tools/.venv/bin/python bench/peers/flask_402.py --facilitator http://127.0.0.1:PORT --asset 0x… --pay-to 0x…

The middleware wraps `x402ResourceServerSync(HTTPFacilitatorClientSync(FacilitatorConfig(url=…)))` with the
`exact` EVM server scheme on `--network`; at start-up it asks the facilitator's GET /supported (point it at
esim402's own facilitator API; without httpx installed, the client is given a requests.Session, which the SDK's
`http_client` setting accepts). The price is `{"amount", "asset", "extra"}` (the token's EIP-712 domain), the
recipient `--pay-to`. Served by Flask's (werkzeug's) threaded server on 127.0.0.1 (`--port 0`: any free port),
HTTP/1.1 keep-alive, request logging off. Prints `listening <port>` on stdout once it accepts connections; exits
when its stdin closes (the process that started it is gone) or on SIGTERM/SIGINT.
"""

import argparse
import logging
import os
import sys
import threading

from flask import Flask, jsonify
from werkzeug.serving import make_server
from x402.http import FacilitatorConfig, HTTPFacilitatorClientSync
from x402.http.middleware.flask import payment_middleware
from x402.http.types import PaymentOption, RouteConfig
from x402.mechanisms.evm.exact import register_exact_evm_server
from x402.server import x402ResourceServerSync


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--facilitator", required=True, help="facilitator base URL (GET /supported at start-up)")
    ap.add_argument("--network", default="eip155:31337")
    ap.add_argument("--asset", default="0x5FbDB2315678afecb367f032d93F642f64180aa3")
    ap.add_argument("--pay-to", default="0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC")
    ap.add_argument("--amount", default="420000", help="atomic units (6 decimals)")
    ap.add_argument("--eip712-name", default="USD Coin")
    ap.add_argument("--eip712-version", default="2")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request would swamp a benchmark

    app = Flask(__name__)

    @app.post("/v1/esim/activate")
    def activate():  # reached only once paid; the benchmark never pays
        return jsonify({"activation_code": "LPA:1$example.invalid$BENCH"})

    # The SDK's sync facilitator client defaults to httpx; the `requests` extra is what tools/.venv has, and a
    # requests.Session has the calls it makes (get/post with headers=/json=; status_code, json(), text).
    try:
        import httpx  # noqa: F401

        http_client = None
    except ImportError:
        import requests

        http_client = requests.Session()
    facilitator = HTTPFacilitatorClientSync(FacilitatorConfig(url=args.facilitator, http_client=http_client))
    # Fail fast (the middleware only warns and then answers 500) if the facilitator does not offer the network.
    supported = facilitator.get_supported()
    if not any(k.scheme == "exact" and k.network == args.network for k in supported.kinds):
        sys.exit(f"facilitator {args.facilitator} does not support exact on {args.network}: {supported}")
    server = x402ResourceServerSync(facilitator)
    register_exact_evm_server(server, args.network)
    routes = {
        "POST /v1/esim/activate": RouteConfig(
            accepts=PaymentOption(
                scheme="exact",
                pay_to=args.pay_to,
                price={
                    "amount": args.amount,
                    "asset": args.asset,
                    "extra": {"name": args.eip712_name, "version": args.eip712_version},
                },
                network=args.network,
                max_timeout_seconds=300,
            ),
            description="eSIM activation",
            mime_type="application/json",
        )
    }
    payment_middleware(app, routes, server)

    httpd = make_server("127.0.0.1", args.port, app, threaded=True)

    def watch_stdin() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        finally:
            os._exit(0)

    threading.Thread(target=watch_stdin, daemon=True).start()
    print(f"listening {httpd.server_port}", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
