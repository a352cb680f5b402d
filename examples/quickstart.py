"""esim402 quickstart: an agent buys an eSIM, reads its balance and tops it up, paying with the official x402
client. Run against `scripts/up.sh`: tools/.venv/bin/python examples/quickstart.py [[--url] URL] (wallet: ESIM402_WALLET_KEY,
else the dev stack's demo agent from .spin/devstack.json)."""
import json
import os
import sys
from pathlib import Path

import requests
from eth_account import Account
from x402 import x402ClientSync
from x402.http.clients.requests import wrapRequestsWithPayment
from x402.mechanisms.evm.exact import register_exact_evm_client

if any(a in ("-h", "--help") for a in sys.argv[1:]):
    print(__doc__)
    sys.exit(0)
args = [a for a in sys.argv[1:] if a != "--url"]  # the URL alone, or after --url as the demos take it
URL = (args[0] if args else "http://127.0.0.1:3000").rstrip("/")
if not URL.startswith(("http://", "https://")) or len(args) > 1:
    sys.exit(f"usage: quickstart.py [[--url] URL]; {URL!r} is not an http(s) URL")
key = os.environ.get("ESIM402_WALLET_KEY") or json.loads(
    (Path(__file__).resolve().parent.parent / ".spin" / "devstack.json").read_text())["demo_agent_private_key"]

client = x402ClientSync()
client.set_spend_controls({"allowed_assets": True})  # the dev chain's token is not on the built-in list
register_exact_evm_client(client, Account.from_key(key))
agent = wrapRequestsWithPayment(requests.Session(), client)  # pays any 402 it gets, then retries

# 1. Activate: the 402 invoice is paid by the client; the answer carries the code and the SIM's access token.
sim = agent.post(f"{URL}/v1/esim/activate", json={"region": "us-west", "data_mb": 10}, timeout=120)
sim.raise_for_status()
sim = sim.json()
print(f"ICCID {sim['iccid']} on {sim['carrier']}, paid {sim['amount_usdc']} USDC")
print(f"scan or install: {sim['qr_code']}")
auth = {"Authorization": f"Bearer {sim['access_token']}"}  # keep it: the SIM's routes are its owner's

# 2. Balance.
balance = requests.get(f"{URL}/v1/esim/{sim['iccid']}/balance", headers=auth, timeout=30).json()
print(f"balance: {balance['remaining_kb']} KB")

# 3. Top up 16 MB (what the $0.05 minimum buys at T-Mobile's $0.003/MB; GET /v1/catalog lists each carrier's):
# the quota route answers 402 with the price; the client pays it and gets the grant.
grant = agent.post(f"{URL}/v1/esim/{sim['iccid']}/data", json={"top_up_mb": 16}, headers=auth, timeout=120)
grant.raise_for_status()
grant = grant.json()
print(f"topped up {grant['topped_up_mb']} MB for {grant['amount_usdc']} USDC: {grant['remaining_kb']} KB left")
