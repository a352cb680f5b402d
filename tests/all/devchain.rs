//! The dev chain `esim402 up` starts (`DevStack`: anvil on loopback + the project's EIP-3009 test token), checked
//! over JSON-RPC: the token is deployed with the configured EIP-712 domain, the demo agent is funded, the app's
//! payment variables point at it, and anvil is stopped by its PID when the stack is dropped. A second test drives
//! the token's EIP-3009 paths the facilitator relies on, with signatures made by anvil (`eth_signTypedData_v4`)
//! for its dev accounts, so the contract's EIP-712 hashing is checked against an independent implementation.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use alloy_primitives::{Address, B256, Bytes, U256, b256, keccak256};
use alloy_sol_types::{SolCall, SolValue, sol};
use esim402_host::devstack::{DevStack, chain};
use esim402_tests::{process_exists, repo_root};
use serde_json::{Value, json};

sol! {
    function name() returns (string);
    function version() returns (string);
    function symbol() returns (string);
    function decimals() returns (uint8);
    function totalSupply() returns (uint256);
    function owner() returns (address);
    function balanceOf(address account) returns (uint256);
    function mint(address to, uint256 value);
    function DOMAIN_SEPARATOR() returns (bytes32);
    function TRANSFER_WITH_AUTHORIZATION_TYPEHASH() returns (bytes32);
    function eip712Domain() returns (bytes1 fields, string name, string version, uint256 chainId,
        address verifyingContract, bytes32 salt, uint256[] extensions);
    function authorizationState(address authorizer, bytes32 nonce) returns (bool);
    function transferWithAuthorization(address from, address to, uint256 value, uint256 validAfter,
        uint256 validBefore, bytes32 nonce, uint8 v, bytes32 r, bytes32 s);
    function transferWithAuthorization(address from, address to, uint256 value, uint256 validAfter,
        uint256 validBefore, bytes32 nonce, bytes signature);
    function receiveWithAuthorization(address from, address to, uint256 value, uint256 validAfter,
        uint256 validBefore, bytes32 nonce, uint8 v, bytes32 r, bytes32 s);
    function cancelAuthorization(address authorizer, bytes32 nonce, uint8 v, bytes32 r, bytes32 s);
}

/// From x402.md §3 (equal to USDC's constants).
const TRANSFER_TYPEHASH: B256 =
    b256!("0x7c7c6cdb67a18743f49ec6fa9b35f50d52ed05cbed4cc592e13b44501c1a2267");

/// The dev stack without the SM-DP+ simulator (its binary is not beside the test binary).
async fn start(extra: &[(&str, &str)]) -> DevStack {
    let mut env = HashMap::from([(
        "SPIN_VARIABLE_SMDP_URL".to_owned(),
        "http://127.0.0.1:9".to_owned(),
    )]);
    for (k, v) in extra {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    let listen = SocketAddr::from(([127, 0, 0, 1], 0));
    tokio::time::timeout(
        Duration::from_secs(30),
        DevStack::start(&repo_root(), listen, &env),
    )
    .await
    .expect("dev stack start timed out")
    .unwrap()
}

fn env_of(stack: &DevStack) -> HashMap<String, String> {
    stack.env.iter().cloned().collect()
}

/// JSON-RPC to the dev chain.
struct Rpc {
    http: reqwest::Client,
    url: String,
    token: Address,
}

impl Rpc {
    fn for_stack(stack: &DevStack) -> Self {
        let env = env_of(stack);
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            url: env["SPIN_VARIABLE_RPC_URL"].clone(),
            token: env["SPIN_VARIABLE_USDC_ADDRESS"].parse().unwrap(),
        }
    }

    /// The result, or the JSON-RPC error object.
    async fn call(&self, method: &str, params: Value) -> Result<Value, Value> {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let mut reply: Value = self
            .http
            .post(&self.url)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        match reply.get_mut("error") {
            Some(err) => Err(err.take()),
            None => Ok(reply["result"].take()),
        }
    }

    /// `eth_call` the token (from `from`), decoding the return value; a revert gives its message.
    async fn view_from<C: SolCall>(&self, from: Address, call: &C) -> Result<C::Return, String> {
        let tx = json!({"from": from, "to": self.token, "data": Bytes::from(call.abi_encode())});
        match self.call("eth_call", json!([tx, "latest"])).await {
            Ok(out) => {
                let data: Bytes = serde_json::from_value(out).unwrap();
                Ok(C::abi_decode_returns(&data).unwrap())
            }
            Err(e) => Err(e["message"].as_str().unwrap_or_default().to_owned()),
        }
    }

    /// `eth_call` that must revert; its message.
    async fn revert<C: SolCall>(&self, from: Address, call: &C) -> String {
        match self.view_from(from, call).await {
            Ok(_) => panic!("expected a revert"),
            Err(e) => e,
        }
    }

    async fn view<C: SolCall>(&self, call: &C) -> C::Return {
        self.view_from(Address::ZERO, call).await.unwrap()
    }

    /// Send a transaction to the token from an unlocked dev account; the receipt of a successful one.
    async fn send<C: SolCall>(&self, from: Address, call: &C) -> Value {
        let tx = json!({"from": from, "to": self.token, "data": Bytes::from(call.abi_encode())});
        let hash = self.call("eth_sendTransaction", json!([tx])).await.unwrap();
        for _ in 0..500 {
            let receipt = self
                .call("eth_getTransactionReceipt", json!([hash]))
                .await
                .unwrap();
            if !receipt.is_null() {
                assert_eq!(receipt["status"], "0x1", "{receipt}");
                return receipt;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no receipt for {hash}");
    }

    async fn balance(&self, who: Address) -> U256 {
        self.view(&balanceOfCall { account: who }).await
    }

    /// `signer` (an anvil dev account) signs an EIP-712 message of the token's domain; (v, r, s).
    async fn sign(&self, signer: Address, primary: &str, message: Value) -> (u8, B256, B256) {
        let auth_fields = json!([
            {"name": "from", "type": "address"},
            {"name": "to", "type": "address"},
            {"name": "value", "type": "uint256"},
            {"name": "validAfter", "type": "uint256"},
            {"name": "validBefore", "type": "uint256"},
            {"name": "nonce", "type": "bytes32"},
        ]);
        let domain = self.view(&eip712DomainCall {}).await;
        let typed = json!({
            "types": {
                "EIP712Domain": [
                    {"name": "name", "type": "string"},
                    {"name": "version", "type": "string"},
                    {"name": "chainId", "type": "uint256"},
                    {"name": "verifyingContract", "type": "address"},
                ],
                "TransferWithAuthorization": auth_fields,
                "ReceiveWithAuthorization": auth_fields,
                "CancelAuthorization": [
                    {"name": "authorizer", "type": "address"},
                    {"name": "nonce", "type": "bytes32"},
                ],
            },
            "primaryType": primary,
            "domain": {"name": domain.name, "version": domain.version, "chainId": chain::CHAIN_ID,
                       "verifyingContract": self.token},
            "message": message,
        });
        let sig = self
            .call("eth_signTypedData_v4", json!([signer, typed]))
            .await
            .unwrap();
        let sig: Bytes = serde_json::from_value(sig).unwrap();
        assert_eq!(sig.len(), 65);
        (
            sig[64],
            B256::from_slice(&sig[..32]),
            B256::from_slice(&sig[32..64]),
        )
    }
}

/// A signed `TransferWithAuthorization` (or `ReceiveWithAuthorization`) for the demo agent.
struct Auth {
    to: Address,
    value: U256,
    valid_after: U256,
    valid_before: U256,
    nonce: B256,
    v: u8,
    r: B256,
    s: B256,
}

impl Auth {
    async fn sign(rpc: &Rpc, primary: &str, to: Address, value: u64, window: (u64, u64)) -> Self {
        let nonce = fresh_nonce();
        let message = json!({
            "from": chain::DEMO_AGENT, "to": to, "value": value.to_string(),
            "validAfter": window.0.to_string(), "validBefore": window.1.to_string(), "nonce": nonce,
        });
        let (v, r, s) = rpc.sign(chain::DEMO_AGENT, primary, message).await;
        Self {
            to,
            value: U256::from(value),
            valid_after: U256::from(window.0),
            valid_before: U256::from(window.1),
            nonce,
            v,
            r,
            s,
        }
    }

    fn vrs(&self) -> transferWithAuthorization_0Call {
        transferWithAuthorization_0Call {
            from: chain::DEMO_AGENT,
            to: self.to,
            value: self.value,
            validAfter: self.valid_after,
            validBefore: self.valid_before,
            nonce: self.nonce,
            v: self.v,
            r: self.r,
            s: self.s,
        }
    }

    fn packed(&self) -> transferWithAuthorization_1Call {
        let mut sig = [self.r.as_slice(), self.s.as_slice()].concat();
        sig.push(self.v);
        transferWithAuthorization_1Call {
            from: chain::DEMO_AGENT,
            to: self.to,
            value: self.value,
            validAfter: self.valid_after,
            validBefore: self.valid_before,
            nonce: self.nonce,
            signature: sig.into(),
        }
    }

    fn receive(&self) -> receiveWithAuthorizationCall {
        receiveWithAuthorizationCall {
            from: chain::DEMO_AGENT,
            to: self.to,
            value: self.value,
            validAfter: self.valid_after,
            validBefore: self.valid_before,
            nonce: self.nonce,
            v: self.v,
            r: self.r,
            s: self.s,
        }
    }
}

/// A nonce no other authorization in this test binary uses.
fn fresh_nonce() -> B256 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    keccak256(format!("esim402-devchain-{t}-{n}"))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn dev_stack_deploys_and_funds_the_token_and_stops_anvil() {
    let stack = start(&[]).await;
    let env = env_of(&stack);
    let rpc = Rpc::for_stack(&stack);

    // The app is pointed at the dev chain.
    assert!(rpc.url.starts_with("http://127.0.0.1:"), "{}", rpc.url);
    assert_eq!(env["SPIN_VARIABLE_PAYMENT_NETWORK"], "eip155:31337");
    assert_eq!(env["SPIN_VARIABLE_USDC_EIP712_NAME"], "USD Coin");
    assert_eq!(env["SPIN_VARIABLE_USDC_EIP712_VERSION"], "2");
    assert_eq!(
        env["SPIN_VARIABLE_RECIPIENT_ADDRESS"],
        chain::RECIPIENT.to_string()
    );
    let facilitator_key = &env["SPIN_VARIABLE_FACILITATOR_PRIVATE_KEY"];
    assert_eq!(facilitator_key.len(), 66);
    // The first contract of account #0 on a fresh chain: the spin.toml default.
    assert_eq!(
        rpc.token.to_string(),
        "0x5FbDB2315678afecb367f032d93F642f64180aa3"
    );
    assert_eq!(rpc.call("eth_chainId", json!([])).await.unwrap(), "0x7a69");
    let code = rpc
        .call("eth_getCode", json!([rpc.token, "latest"]))
        .await
        .unwrap();
    assert!(code.as_str().unwrap().len() > 1000);

    // The token as configured.
    assert_eq!(rpc.view(&nameCall {}).await, "USD Coin");
    assert_eq!(rpc.view(&versionCall {}).await, "2");
    assert_eq!(rpc.view(&symbolCall {}).await, "USDC");
    assert_eq!(rpc.view(&decimalsCall {}).await, 6);
    assert_eq!(rpc.view(&ownerCall {}).await, chain::DEPLOYER);
    let funds = U256::from(1_000_000_000u64);
    assert_eq!(rpc.balance(chain::DEMO_AGENT).await, funds);
    assert_eq!(rpc.view(&totalSupplyCall {}).await, funds);
    let domain_hash = keccak256(
        (
            keccak256(
                "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)",
            ),
            keccak256("USD Coin"),
            keccak256("2"),
            U256::from(31337),
            rpc.token,
        )
            .abi_encode(),
    );
    assert_eq!(rpc.view(&DOMAIN_SEPARATORCall {}).await, domain_hash);
    assert_eq!(
        rpc.view(&TRANSFER_WITH_AUTHORIZATION_TYPEHASHCall {}).await,
        TRANSFER_TYPEHASH
    );
    let domain = rpc.view(&eip712DomainCall {}).await;
    assert_eq!(
        (domain.name.as_str(), domain.version.as_str()),
        ("USD Coin", "2")
    );
    assert_eq!(domain.chainId, U256::from(31337));
    assert_eq!(domain.verifyingContract, rpc.token);
    // The facilitator (account #1) can pay gas.
    let gas_funds = rpc
        .call("eth_getBalance", json!([chain::FACILITATOR, "latest"]))
        .await
        .unwrap();
    assert_ne!(gas_funds, "0x0");

    // The facts file: the demo wallet's key, never the facilitator's.
    let dir = tempfile::tempdir().unwrap();
    let path = stack.write_facts(dir.path()).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains(facilitator_key.trim_start_matches("0x")));
    let facts: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(facts["rpc_url"], rpc.url.as_str());
    assert_eq!(facts["chain_id"], 31337);
    assert_eq!(facts["token_address"], rpc.token.to_string());
    assert_eq!(facts["facilitator_address"], chain::FACILITATOR.to_string());
    assert_eq!(facts["recipient_address"], chain::RECIPIENT.to_string());
    assert_eq!(facts["demo_agent_address"], chain::DEMO_AGENT.to_string());
    assert_eq!(facts["demo_agent_private_key"], chain::DEMO_AGENT_KEY);
    assert_eq!(facts["demo_agent_balance"], "1000000000");

    // `fund` (the paid bench's top-up) mints only the shortfall.
    let fund = |at_least: U256| chain::fund(&rpc.url, rpc.token, chain::DEMO_AGENT, at_least);
    assert_eq!(fund(funds).await.unwrap(), U256::ZERO);
    let more = funds + U256::from(250_000_000u64);
    assert_eq!(fund(more).await.unwrap(), U256::from(250_000_000u64));
    assert_eq!(rpc.balance(chain::DEMO_AGENT).await, more);
    assert_eq!(fund(funds).await.unwrap(), U256::ZERO);

    // Dropping the stack stops anvil by its PID.
    let pid = stack.pid("anvil").unwrap();
    assert!(process_exists(pid));
    drop(stack);
    assert!(!process_exists(pid), "anvil (pid {pid}) still running");
    assert!(
        rpc.http
            .post(&rpc.url)
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}))
            .send()
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_configured_rpc_url_skips_the_chain() {
    let stack = start(&[("SPIN_VARIABLE_RPC_URL", "http://127.0.0.1:9")]).await;
    assert!(stack.pid("anvil").is_none());
    assert!(stack.env.is_empty());
    assert!(stack.facts.is_empty());

    // Also when set in the app's .env (no anvil is installed there, so starting one would fail).
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env"),
        "SPIN_VARIABLE_RPC_URL=http://127.0.0.1:9\nSPIN_VARIABLE_SMDP_URL=http://127.0.0.1:9\n",
    )
    .unwrap();
    let listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let stack = DevStack::start(dir.path(), listen, &HashMap::new())
        .await
        .unwrap();
    assert!(stack.env.is_empty());
}

#[tokio::test]
async fn a_missing_anvil_names_the_setup_script() {
    let dir = tempfile::tempdir().unwrap();
    let env = HashMap::from([(
        "SPIN_VARIABLE_SMDP_URL".to_owned(),
        "http://127.0.0.1:9".to_owned(),
    )]);
    let listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let Err(err) = DevStack::start(dir.path(), listen, &env).await else {
        panic!("started without anvil");
    };
    let msg = format!("{err:#}");
    assert!(msg.contains("scripts/setup.sh"), "{msg}");
    assert!(msg.contains("--no-dev-stack"), "{msg}");
}

#[tokio::test]
async fn the_token_settles_eip3009_authorizations_like_usdc() {
    // The Base Sepolia domain, to check that the configured name reaches the token.
    let stack = start(&[("SPIN_VARIABLE_USDC_EIP712_NAME", "USDC")]).await;
    let rpc = Rpc::for_stack(&stack);
    assert_eq!(rpc.view(&nameCall {}).await, "USDC");
    assert_eq!(env_of(&stack)["SPIN_VARIABLE_USDC_EIP712_NAME"], "USDC");
    let (agent, payee, facilitator) = (chain::DEMO_AGENT, chain::RECIPIENT, chain::FACILITATOR);
    let funds = U256::from(chain::DEMO_AGENT_FUNDS);
    let window = (0, now() + 300);
    let transfer = "TransferWithAuthorization";

    // (v, r, s), submitted by the facilitator: simulate, then settle.
    let auth = Auth::sign(&rpc, transfer, payee, 10_000, window).await;
    rpc.view_from(facilitator, &auth.vrs()).await.unwrap();
    // The same signature with s mirrored to the high half (and v flipped) recovers the same signer: refused.
    let n = U256::from_be_bytes(
        b256!("0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141").0,
    );
    let mut high_s = auth.vrs();
    high_s.s = B256::from(n - U256::from_be_bytes(auth.s.0));
    high_s.v = if auth.v == 27 { 28 } else { 27 };
    let err = rpc.revert(facilitator, &high_s).await;
    assert!(err.contains("invalid signature"), "{err}");
    let receipt = rpc.send(facilitator, &auth.vrs()).await;
    let topics: Vec<&str> = receipt["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["topics"][0].as_str().unwrap())
        .collect();
    let used = keccak256("AuthorizationUsed(address,bytes32)").to_string();
    let transferred = keccak256("Transfer(address,address,uint256)").to_string();
    assert_eq!(topics, [used.as_str(), transferred.as_str()]);
    assert_eq!(rpc.balance(agent).await, funds - U256::from(10_000));
    assert_eq!(rpc.balance(payee).await, U256::from(10_000));
    let state = authorizationStateCall {
        authorizer: agent,
        nonce: auth.nonce,
    };
    assert!(rpc.view(&state).await);
    // A replay, in either overload, is refused.
    let err = rpc.revert(facilitator, &auth.vrs()).await;
    assert!(err.contains("authorization is used or canceled"), "{err}");
    let err = rpc.revert(facilitator, &auth.packed()).await;
    assert!(err.contains("authorization is used or canceled"), "{err}");

    // The packed `bytes signature` overload.
    let auth = Auth::sign(&rpc, transfer, payee, 5_000, window).await;
    rpc.send(facilitator, &auth.packed()).await;
    assert_eq!(rpc.balance(payee).await, U256::from(15_000));

    // Validity window, then balance, in USDC's words.
    let late = Auth::sign(&rpc, transfer, payee, 1, (0, now() - 10)).await;
    let err = rpc.revert(facilitator, &late.vrs()).await;
    assert!(err.contains("authorization is expired"), "{err}");
    let early = Auth::sign(&rpc, transfer, payee, 1, (now() + 600, now() + 900)).await;
    let err = rpc.revert(facilitator, &early.vrs()).await;
    assert!(err.contains("authorization is not yet valid"), "{err}");
    let too_much = Auth::sign(&rpc, transfer, payee, 2_000_000_000, window).await;
    let err = rpc.revert(facilitator, &too_much.vrs()).await;
    assert!(err.contains("transfer amount exceeds balance"), "{err}");
    // Signed for another payee than the one submitted: the signer does not match.
    let mut forged = Auth::sign(&rpc, transfer, payee, 1, window).await.vrs();
    forged.to = facilitator;
    let err = rpc.revert(facilitator, &forged).await;
    assert!(err.contains("invalid signature"), "{err}");

    // receiveWithAuthorization: only the payee may submit it.
    let auth = Auth::sign(&rpc, "ReceiveWithAuthorization", payee, 1_000, window).await;
    let err = rpc.revert(facilitator, &auth.receive()).await;
    assert!(err.contains("caller must be the payee"), "{err}");
    rpc.send(payee, &auth.receive()).await;
    assert_eq!(rpc.balance(payee).await, U256::from(16_000));

    // cancelAuthorization burns a nonce.
    let auth = Auth::sign(&rpc, transfer, payee, 1, window).await;
    let (v, r, s) = rpc
        .sign(
            agent,
            "CancelAuthorization",
            json!({"authorizer": agent, "nonce": auth.nonce}),
        )
        .await;
    let cancel = cancelAuthorizationCall {
        authorizer: agent,
        nonce: auth.nonce,
        v,
        r,
        s,
    };
    rpc.send(facilitator, &cancel).await;
    let err = rpc.revert(facilitator, &auth.vrs()).await;
    assert!(err.contains("authorization is used or canceled"), "{err}");
    let err = rpc.revert(facilitator, &cancel).await;
    assert!(err.contains("authorization is used or canceled"), "{err}");

    // Only the deployer mints.
    let mint = mintCall {
        to: facilitator,
        value: U256::from(1),
    };
    let err = rpc.revert(facilitator, &mint).await;
    assert!(err.contains("caller is not the owner"), "{err}");
    rpc.view_from(chain::DEPLOYER, &mint).await.unwrap();
}

/// anvil 1.7.1 can keep a sender's next transaction in its *queued* pool for good (an automine race with
/// transactions arriving out of nonce order; mining does not release it), which left settlements pending in
/// benchmark runs. The same pool state made on purpose — a transaction one nonce ahead, then the account's nonce
/// moved up to it with `anvil_setNonce` — is released by the dev stack's pool watch.
#[tokio::test]
async fn the_pool_watch_releases_a_transaction_anvil_holds_queued_at_the_next_nonce() {
    let stack = start(&[]).await;
    let rpc = Rpc::for_stack(&stack);
    let from = chain::DEPLOYER;
    let nonce_of = async |rpc: &Rpc| {
        let n = rpc
            .call("eth_getTransactionCount", json!([from, "latest"]))
            .await
            .unwrap();
        esim402_core::evm::quantity::parse_u64(n.as_str().unwrap()).unwrap()
    };
    let nonce = nonce_of(&rpc).await;
    let ahead = format!("{:#x}", nonce + 1);
    let tx = json!({"from": from, "to": from, "value": "0x1", "nonce": ahead});
    let hash = rpc.call("eth_sendTransaction", json!([tx])).await.unwrap();
    rpc.call("anvil_setNonce", json!([from, ahead]))
        .await
        .unwrap();
    rpc.call("evm_mine", json!([])).await.unwrap();
    let pool = rpc.call("txpool_inspect", json!([])).await.unwrap();
    let sender = format!("{from:#x}");
    assert!(
        pool["queued"][&sender][(nonce + 1).to_string()].is_string(),
        "the transaction at the account's nonce is held queued, mined block or not: {pool}"
    );

    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let receipt = loop {
        let receipt = rpc
            .call("eth_getTransactionReceipt", json!([hash]))
            .await
            .unwrap();
        if !receipt.is_null() {
            break receipt;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not released within 15 s; pool: {}",
            rpc.call("txpool_inspect", json!([])).await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(receipt["status"], "0x1");
    assert_eq!(nonce_of(&rpc).await, nonce + 2);
    let pool = rpc.call("txpool_inspect", json!([])).await.unwrap();
    assert_eq!(pool["queued"], json!({}), "{pool}");
}
