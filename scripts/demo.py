"""Buy an eSIM activation with the official x402 Python client, paying from the dev chain's demo agent.

Start the app first (`scripts/up.sh`: `esim402 up` starts anvil with the test token and writes
.spin/devstack.json), then:

    tools/.venv/bin/python scripts/demo.py [--url http://127.0.0.1:3000]

POST /v1/esim/activate answers 402 with an x402 invoice; the client signs an EIP-3009 authorization for it and
retries once; the facilitator settles it on chain and answers 200 with the activation code. The agent's USDC
balance is read before and after, so the demo shows the money moved exactly once. Exits non-zero on any failure.
"""

import argparse
import json
import sys
from pathlib import Path

import requests
from eth_account import Account
from web3 import Web3
from x402 import x402ClientSync
from x402.http import decode_payment_signature_header, x402HTTPClientSync
from x402.http.clients.requests import PaymentError, wrapRequestsWithPayment
from x402.mechanisms.evm.exact import register_exact_evm_client

ROOT = Path(__file__).resolve().parent.parent
BALANCE_OF = [{"name": "balanceOf", "type": "function", "stateMutability": "view",
               "inputs": [{"name": "owner", "type": "address"}], "outputs": [{"name": "", "type": "uint256"}]}]
NEEDED = ("rpc_url", "chain_id", "token_address", "token_decimals", "demo_agent_private_key")


def fail(message: str) -> None:
    sys.exit(f"demo: {message}")


def usdc(atomic: int, decimals: int) -> str:
    whole, frac = divmod(atomic, 10**decimals)
    return f"{whole}.{frac:0{decimals}d} USDC"


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
    missing = [k for k in NEEDED if k not in stack]
    if missing:
        fail(f"{args.devstack} has no {', '.join(missing)}: the dev chain was not started "
             "(SPIN_VARIABLE_RPC_URL or --no-dev-stack)")

    w3 = Web3(Web3.HTTPProvider(stack["rpc_url"]))
    if not w3.is_connected():
        fail(f"cannot reach the dev chain at {stack['rpc_url']}: is esim402 up still running?")
    if w3.eth.chain_id != stack["chain_id"]:
        fail(f"{stack['rpc_url']} is chain {w3.eth.chain_id}, devstack.json says {stack['chain_id']}")
    agent = Account.from_key(stack["demo_agent_private_key"])
    token = w3.eth.contract(address=Web3.to_checksum_address(stack["token_address"]), abi=BALANCE_OF)
    decimals = stack["token_decimals"]
    before = token.functions.balanceOf(agent.address).call()
    print(f"agent {agent.address}: {usdc(before, decimals)}")

    client = x402ClientSync()
    # The dev token is not on the client's built-in asset list, and the default cap is $1 a payment.
    client.set_spend_controls({"allowed_assets": True, "max_amount_per_payment": False})
    register_exact_evm_client(client, agent)
    session = wrapRequestsWithPayment(requests.Session(), client)

    try:
        resp = session.post(f"{url}/v1/esim/activate", json={"region": "us-west", "data_mb": 100}, timeout=120)
    except requests.ConnectionError as e:
        fail(f"cannot reach {url}: is esim402 up running? ({e})")
    except PaymentError as e:
        fail(f"the x402 client could not pay the invoice: {e}")
    settle = None  # the decoded PAYMENT-RESPONSE (a SettleResponse), read with the package's own helper
    if "PAYMENT-RESPONSE" in resp.headers or "X-PAYMENT-RESPONSE" in resp.headers:
        settle = x402HTTPClientSync(client).get_payment_settle_response(resp.headers.get)
    if resp.status_code != 200:
        detail = f"; PAYMENT-RESPONSE {settle.model_dump_json(exclude_none=True)}" if settle else ""
        fail(f"POST /v1/esim/activate answered {resp.status_code}: {resp.text}{detail}")
    if settle is None or not settle.success:
        fail(f"200 without a successful PAYMENT-RESPONSE: {settle}")
    sim = resp.json()
    print(f"activation code: {sim['activation_code']}")
    print(f"ICCID:           {sim['iccid']}")
    print(f"carrier:         {sim['carrier']}")
    print(f"PAYMENT-RESPONSE: {settle.model_dump_json(exclude_none=True)}")
    print(f"transaction:     {settle.transaction} on {settle.network}, payer {settle.payer}")

    paid = int(decode_payment_signature_header(resp.request.headers["PAYMENT-SIGNATURE"]).accepted.amount)
    after = token.functions.balanceOf(agent.address).call()
    print(f"agent {agent.address}: {usdc(after, decimals)} (paid {usdc(before - after, decimals)})")
    if before - after != paid:
        fail(f"the balance moved by {before - after}, the invoice was for {paid} (atomic units)")

    ledger = requests.get(f"{url}/v1/ledger/verify", timeout=30)
    print(f"ledger: {ledger.status_code} {ledger.text}")
    if ledger.status_code != 200 or not ledger.json().get("ok"):
        fail("the ledger does not verify")


if __name__ == "__main__":
    main()
