"""Metered data end to end with the official x402 Python client: activate, use data, run low, top up, use again.

Start the app first (`scripts/up.sh`: `esim402 up` starts anvil, the SM-DP+ simulator and the traffic simulator
and writes .spin/devstack.json), then:

    tools/.venv/bin/python scripts/demo_metering.py [--url http://127.0.0.1:3000]

1. POST /v1/esim/activate (10 MB) paid by the client → the SIM and its balance;
2. the traffic simulator moves data within quota and reports carrier-signed receipts to /v1/usage;
3. POST /v1/esim/{iccid}/data → 402 with top-up options once the balance is below 100 KB;
4. the client pays the top-up unmodified → 200 with the quota grant; the balance was credited once;
5. quota again, more traffic, usage per hour and network, and the ledger verifies. Exits non-zero on any failure.
"""

import argparse
import json
import sys
from pathlib import Path

import requests
from eth_account import Account
from x402 import x402ClientSync
from x402.http.clients.requests import PaymentError, wrapRequestsWithPayment
from x402.mechanisms.evm.exact import register_exact_evm_client

ROOT = Path(__file__).resolve().parent.parent


def fail(message: str) -> None:
    sys.exit(f"demo: {message}")


def check(resp: requests.Response, status: int, what: str) -> dict:
    if resp.status_code != status:
        fail(f"{what} answered {resp.status_code}, expected {status}: {resp.text}")
    return resp.json()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:3000", help="the app (default: %(default)s)")
    parser.add_argument("--devstack", type=Path, default=ROOT / ".spin" / "devstack.json",
                        help="what `esim402 up` started (default: %(default)s)")
    args = parser.parse_args()
    url = args.url.rstrip("/")
    if not args.devstack.is_file():
        fail(f"{args.devstack} not found: start the app with scripts/up.sh (esim402 up writes it)")
    stack = json.loads(args.devstack.read_text())
    for k in ("demo_agent_private_key", "traffic_url"):
        if k not in stack:
            fail(f"{args.devstack} has no {k}: the dev stack was not started in full")
    traffic = stack["traffic_url"].rstrip("/")

    client = x402ClientSync()
    client.set_spend_controls({"allowed_assets": True, "max_amount_per_payment": False})
    register_exact_evm_client(client, Account.from_key(stack["demo_agent_private_key"]))
    paying = wrapRequestsWithPayment(requests.Session(), client)
    plain = requests.Session()

    try:
        sim = check(paying.post(f"{url}/v1/esim/activate", json={"region": "us-west", "data_mb": 10}, timeout=120),
                    200, "POST /v1/esim/activate")
    except (requests.ConnectionError, PaymentError) as e:
        fail(f"activation failed: {e}")
    iccid = sim["iccid"]
    print(f"activated {iccid} on {sim['carrier']}")
    # The SIM's routes are its owner's: the paid answer carries the SIM's access token (shown once).
    for session in (plain, paying):
        session.headers["Authorization"] = f"Bearer {sim['access_token']}"
    balance = check(plain.get(f"{url}/v1/esim/{iccid}/balance", timeout=30), 200, "balance")
    print(f"balance: {balance['remaining_kb']} KB")

    moved = check(requests.post(f"{traffic}/admin/usage", json={"iccid": iccid, "bytes": 9_950_000}, timeout=120),
                  200, "traffic")
    print(f"the network moved {moved['delivered']} bytes in {moved['receipts']} signed receipts")
    balance = check(plain.get(f"{url}/v1/esim/{iccid}/balance", timeout=30), 200, "balance")
    print(f"balance: {balance['remaining_kb']} KB (low: {balance['low']})")

    low = check(plain.post(f"{url}/v1/esim/{iccid}/data", json={"quota_kb": 100}, timeout=30), 402, "quota")
    options = ", ".join(f"{o['data_mb']} MB for {o['amount_usdc']} USDC" for o in low["top_up_options"])
    print(f"quota: 402, top-up options: {options}")

    try:
        grant = check(paying.post(f"{url}/v1/esim/{iccid}/data", json={"quota_kb": 100}, timeout=120), 200,
                      "paid top-up")
    except PaymentError as e:
        fail(f"the x402 client could not pay the top-up: {e}")
    print(f"topped up {grant['topped_up_mb']} MB (tx {grant['transaction']}); granted {grant['granted_kb']} KB, "
          f"{grant['remaining_kb']} KB left")
    balance = check(plain.get(f"{url}/v1/esim/{iccid}/balance", timeout=30), 200, "balance")
    expected = (10 + low["top_up_options"][0]["data_mb"]) * 1_000_000
    if grant["topped_up_mb"] != low["top_up_options"][0]["data_mb"] or balance["credited_bytes"] != expected:
        fail(f"credited {balance['credited_bytes']} bytes, expected {expected} (10 MB + the offered top-up, once)")

    check(plain.post(f"{url}/v1/esim/{iccid}/data", json={"quota_kb": 100}, timeout=30), 200, "quota again")
    moved = check(requests.post(f"{traffic}/admin/usage", json={"iccid": iccid, "bytes": 500_000}, timeout=120),
                  200, "traffic")
    print(f"quota granted again; the network moved {moved['delivered']} more bytes")
    usage = check(plain.get(f"{url}/v1/esim/{iccid}/usage?granularity=hour&group_by=plmn", timeout=30), 200,
                  "usage")
    for row in usage["usage_records"]:
        print(f"usage: {row['plmn']} from {row['period_start']}: {row['data_total']} bytes "
              f"({row['receipts']} receipts)")
    ledger = plain.get(f"{url}/v1/ledger/verify", timeout=30)
    print(f"ledger: {ledger.status_code} {ledger.text}")
    if ledger.status_code != 200 or not ledger.json().get("ok"):
        fail("the ledger does not verify")


if __name__ == "__main__":
    main()
