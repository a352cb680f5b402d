"""Pay one request with the official x402 Python client (x402 2.25.0) and print the outcome as ONE line of JSON.

    tools/.venv/bin/python tests/python/pay.py --url URL --key 0xPRIVKEY [--body JSON] [--method M] [--v1]
                                               [--payment-id ID]

The end-to-end tests call it as an independent x402 peer. stdout is one line:

    {"status": <HTTP status of the final answer>, "body": <its JSON body, or its text>,
     "payment_response": <decoded PAYMENT-RESPONSE or X-PAYMENT-RESPONSE JSON, or null>,
     "sent": <decoded PAYMENT-SIGNATURE or X-PAYMENT the client sent on its retry, or null if it sent none>}

plus "payment_response_error" when that header is present but undecodable or rejected by the package's own
decoder. Any HTTP status exits 0 (a 402 or 409 is data for the test). Exit 1, with {"status": null, "error": …},
only when no answer came: the client refused or failed to build a payment, or the server was unreachable.

--body sends the text verbatim as application/json (default method POST with a body, GET without).
--v1: the client ignores the PAYMENT-REQUIRED header and pays the v1 challenge in the 402 body with X-PAYMENT
(the package's v1 scheme knows only named networks such as base-sepolia, not eip155:31337).
--payment-id: attached with the package's helper append_payment_identifier_to_extensions, which adds
extensions["payment-identifier"].info.id only when the 402 declared the extension. It refuses ids that are not
16-128 characters of [A-Za-z0-9_-]; those are set directly instead, so tests can check the server's 400.
"""

import argparse
import base64
import json
import sys

import requests
from eth_account import Account
from x402 import x402ClientSync
from x402.extensions.payment_identifier import (
    PAYMENT_IDENTIFIER,
    append_payment_identifier_to_extensions,
    is_payment_identifier_extension,
    is_valid_payment_id,
)
from x402.http import decode_payment_response_header, x402HTTPClientSync
from x402.http.clients.requests import PaymentError, wrapRequestsWithPayment
from x402.mechanisms.evm.exact import register_exact_evm_client


class PaymentIdentifier:
    """A client extension (x402ClientSync.register_extension) adding a payment-identifier id to the payload."""

    key = PAYMENT_IDENTIFIER

    def __init__(self, payment_id: str) -> None:
        self.payment_id = payment_id

    def enrich_payment_payload(self, payload, payment_required):
        extensions = dict(payload.extensions or {})
        if is_valid_payment_id(self.payment_id):
            append_payment_identifier_to_extensions(extensions, self.payment_id)
        elif is_payment_identifier_extension(declared := extensions.get(PAYMENT_IDENTIFIER)):
            extensions[PAYMENT_IDENTIFIER] = {**declared, "info": {**declared["info"], "id": self.payment_id}}
        return payload.model_copy(update={"extensions": extensions})


class V1Only(x402HTTPClientSync):
    """Reads the 402 as a v1 client would: the JSON body only, never the PAYMENT-REQUIRED header."""

    def get_payment_required_response(self, get_header, body=None):
        return super().get_payment_required_response(
            lambda name: None if name.upper() == "PAYMENT-REQUIRED" else get_header(name), body
        )


def decode_header(value: str):
    return json.loads(base64.b64decode(value, validate=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True, help="the payer's private key (0x…)")
    parser.add_argument("--body", help="request body, sent verbatim as application/json")
    parser.add_argument("--method", help="default: POST with --body, GET without")
    parser.add_argument("--v1", action="store_true", help="pay the v1 challenge (X-PAYMENT)")
    parser.add_argument("--payment-id", help="payment-identifier extension id")
    parser.add_argument("--header", action="append", default=[],
                        help="extra request header NAME:VALUE (repeatable), e.g. the SIM's Authorization")
    args = parser.parse_args()

    client = x402ClientSync()
    # Our dev token is not on the client's built-in asset list, and the default cap is $1 a payment.
    client.set_spend_controls({"allowed_assets": True, "max_amount_per_payment": False})
    register_exact_evm_client(client, Account.from_key(args.key))
    if args.payment_id is not None:
        client.register_extension(PaymentIdentifier(args.payment_id))
    session = wrapRequestsWithPayment(requests.Session(), V1Only(client) if args.v1 else client)

    method = args.method or ("POST" if args.body is not None else "GET")
    headers = {"content-type": "application/json"} if args.body is not None else {}
    for h in args.header:
        name, _, value = h.partition(":")
        headers[name.strip()] = value.strip()
    body = args.body.encode() if args.body is not None else None
    try:
        resp = session.request(method, args.url, data=body, headers=headers, timeout=120)
    except (PaymentError, requests.RequestException) as e:
        print(json.dumps({"status": None, "body": None, "payment_response": None, "sent": None,
                          "error": f"{type(e).__name__}: {e}"}))
        sys.exit(1)

    try:
        answer = resp.json()
    except ValueError:
        answer = resp.text
    out = {"status": resp.status_code, "body": answer, "payment_response": None, "sent": None}
    raw = resp.headers.get("PAYMENT-RESPONSE") or resp.headers.get("X-PAYMENT-RESPONSE")
    if raw:
        try:
            out["payment_response"] = decode_header(raw)
            decode_payment_response_header(raw)  # would the package itself accept it?
        except ValueError as e:
            out["payment_response_error"] = f"{type(e).__name__}: {e}"
    sent = resp.request.headers.get("PAYMENT-SIGNATURE") or resp.request.headers.get("X-PAYMENT")
    if sent:
        out["sent"] = decode_header(sent)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
