//! The verifier component alone, against a scripted JSON-RPC node: [`Node`] answers each `eth_*` method by
//! name from a small chain state the test controls, and keeps every raw transaction it is sent (and can
//! forget them, like a node that restarted or evicted its pool). Payments are
//! signed like a wallet would (`sign_authorization` with a k256 key) and handed over as the gateway does (the
//! decoded payload's JSON); invoices are passed as values, the way the invoices component answers them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use alloy_consensus::{Signed, TxEip1559};
use alloy_primitives::{Address, B256, TxKind, U256, hex, keccak256};
use esim402_core::invoice::{Invoice, InvoiceStatus, PaymentOption, Purchase};
use esim402_core::x402::exact::{TokenDomain, TransferAuthorization, sign_authorization};
use esim402_core::x402::requirements::requirements_v2;
use esim402_core::x402::wire::{
    ExactEvmPayload, PaymentPayload, PaymentPayloadV1, PaymentPayloadV2, PaymentRequirements,
};
use esim402_core::{InvoiceId, Network, UsdcAmount};
use esim402_testkit::{Kit, Recorded, Scripted, types};
use k256::ecdsa::SigningKey;
use serde_json::{Value, json};

const RPC: &str = "http://rpc.test";
pub(crate) const USDC: &str = "0x5FbDB2315678afecb367f032d93F642f64180aa3";
const PAY_TO: &str = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC";
const STRANGER: &str = "0x976EA74026E726554dB657fA54763abd0C3a0aa9";
/// Anvil dev account #1 as the facilitator: the secret that must never leak.
const FACILITATOR_KEY: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
/// Anvil dev account #3 as the payer.
const PAYER_KEY: &str = "7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6";
pub(crate) const PRICE: u64 = 420_000;
pub(crate) const CHAIN_ID: u64 = 31_337;
/// What the node reports: pending transaction count of the facilitator, base fee, tip, gas estimate.
pub(crate) const TX_COUNT: u64 = 7;
pub(crate) const BASE_FEE: u128 = 1_000_000_000;
pub(crate) const TIP: u128 = 100_000_000;
const GAS_ESTIMATE: u64 = 100_000;
const TRANSFER_WITH_AUTHORIZATION: [u8; 4] = [0xe3, 0xee, 0x16, 0x0e];
const ERC20_TRANSFER_TOPIC: &str =
    "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef";

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub(crate) fn addr(s: &str) -> Address {
    s.parse().unwrap()
}

pub(crate) fn facilitator() -> Address {
    esim402_core::evm::SigningKey::from_hex(FACILITATOR_KEY)
        .unwrap()
        .address()
}

fn payer_key() -> SigningKey {
    SigningKey::from_slice(&hex::decode(PAYER_KEY).unwrap()).unwrap()
}

pub(crate) fn payer() -> Address {
    esim402_core::x402::exact::address_of(payer_key().verifying_key())
}

/// `types::Error` with equality, for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum E {
    InvalidInput { field: String, message: String },
    NotFound(String),
    Conflict(String),
    Expired(String),
    PaymentRequired(String),
    Unavailable(String),
    Internal(String),
}

impl From<types::Error> for E {
    fn from(e: types::Error) -> Self {
        match e {
            types::Error::InvalidInput(f) => Self::InvalidInput {
                field: f.field,
                message: f.message,
            },
            types::Error::NotFound(m) => Self::NotFound(m),
            types::Error::Conflict(m) => Self::Conflict(m),
            types::Error::Expired(m) => Self::Expired(m),
            types::Error::PaymentRequired(m) => Self::PaymentRequired(m),
            types::Error::Unavailable(m) => Self::Unavailable(m),
            types::Error::Internal(m)
            | types::Error::Unauthorized(m)
            | types::Error::Forbidden(m) => Self::Internal(m),
        }
    }
}

/// `types::Settlement` with equality.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum S {
    Settled(String),
    Pending(String),
}

impl From<types::Settlement> for S {
    fn from(s: types::Settlement) -> Self {
        match s {
            types::Settlement::Settled(h) => Self::Settled(h),
            types::Settlement::Pending(h) => Self::Pending(h),
        }
    }
}

// ---- the scripted node -----------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Mining {
    /// Every sent transaction is mined at once with status 1.
    Succeed,
    /// … with status 0.
    Revert,
    /// Never mined (the receipt stays null).
    Never,
}

/// The chain as the test wants the node to describe it.
pub(crate) struct ChainState {
    chain_id: u64,
    balance: U256,
    nonce_used: bool,
    /// Nonces `authorizationState` answers used (besides every nonce while `nonce_used`).
    used: HashSet<B256>,
    simulation_ok: bool,
    token_name: &'static str,
    pub(crate) mining: Mining,
    pub(crate) refuse_send: bool,
    /// Refuse (as `refuse_send`) only transactions calling the token: our no-op to ourselves still goes out.
    pub(crate) refuse_token_calls: bool,
    /// Take the raw transaction but lose the answer (HTTP 502): the sender cannot know it went out.
    pub(crate) lose_send_answer: bool,
    /// Take the raw transaction, then answer with this JSON-RPC error (a provider that forwarded it and
    /// failed afterwards).
    pub(crate) send_error_after_taking: Option<(i64, &'static str)>,
    /// Lose the raw transaction on its way (HTTP 502, nothing kept): what a send cancelled after its
    /// transaction was recorded leaves behind.
    pub(crate) drop_send: bool,
    /// Lose (as `drop_send`) only the raw transactions at this account nonce.
    pub(crate) drop_nonce: Option<u64>,
    /// `eth_getTransactionCount` at `latest` or a block number (default [`TX_COUNT`]).
    pub(crate) mined_count: Option<u64>,
    /// `eth_getTransactionCount` at `pending` (default [`TX_COUNT`]).
    pub(crate) pending_count: Option<u64>,
    pub(crate) estimate_fails: bool,
    /// Mine `transferWithAuthorization` with status 1 but without the token's Transfer log.
    pub(crate) hide_transfer_log: bool,
    /// Answer every request with HTTP 503.
    pub(crate) down: bool,
    /// Refuse JSON-RPC batches with one error object, as nodes without batch support do.
    pub(crate) refuse_batches: bool,
    /// The head block number (receipts are in block 0x11).
    pub(crate) head: u64,
    /// The latest block's timestamp (default: now), against an authorization's `validBefore`.
    pub(crate) block_time: Option<u64>,
    /// The latest block's base fee (default [`BASE_FEE`]).
    pub(crate) base_fee: Option<u128>,
    /// Raw transactions accepted by `eth_sendRawTransaction`, in order (a forgotten one sent again twice).
    sent: Vec<Vec<u8>>,
    /// Hashes of sent transactions the node no longer knows (see [`Node::forget`]).
    forgotten: HashSet<B256>,
    /// Canned receipts (tx-hash proofs, and transactions once mined with status 1), by hash.
    receipts: HashMap<B256, Value>,
    /// The token's logs `eth_getLogs` searches (an authorization's `AuthorizationUsed`/`Canceled`).
    pub(crate) logs: Vec<Value>,
    /// Refuse `eth_getLogs` (a node that limits log queries).
    pub(crate) refuse_logs: bool,
    /// A request with `eth_getLogs` goes to a node whose head is this block (behind a load balancer, lagging):
    /// its `eth_blockNumber` says so, and it has no logs past it.
    pub(crate) log_node_head: Option<u64>,
    /// JSON-RPC errors to answer instead, by method (`eth_estimateGas`) or by `eth_call` and selector
    /// (`eth_call 70a08231`): a provider's rate limit, a node's internal error.
    pub(crate) errors: Vec<(&'static str, i64, &'static str)>,
}

impl Default for ChainState {
    fn default() -> Self {
        Self {
            chain_id: CHAIN_ID,
            balance: U256::from(10 * PRICE),
            nonce_used: false,
            used: HashSet::new(),
            simulation_ok: true,
            token_name: "USD Coin",
            mining: Mining::Succeed,
            refuse_send: false,
            refuse_token_calls: false,
            lose_send_answer: false,
            send_error_after_taking: None,
            drop_send: false,
            drop_nonce: None,
            mined_count: None,
            pending_count: None,
            estimate_fails: false,
            hide_transfer_log: false,
            down: false,
            refuse_batches: false,
            head: 0x20,
            block_time: None,
            base_fee: None,
            sent: Vec::new(),
            forgotten: HashSet::new(),
            receipts: HashMap::new(),
            logs: Vec::new(),
            refuse_logs: false,
            log_node_head: None,
            errors: Vec::new(),
        }
    }
}

#[derive(Default)]
pub(crate) struct Node {
    chain: Mutex<ChainState>,
}

fn qty(n: u128) -> Value {
    json!(format!("{n:#x}"))
}

fn word(v: U256) -> String {
    B256::from(v).to_string()
}

fn abi_string(s: &str) -> String {
    let mut data = s.as_bytes().to_vec();
    data.resize(s.len().div_ceil(32) * 32, 0);
    format!(
        "{}{}{}",
        word(U256::from(32)),
        &word(U256::from(s.len()))[2..],
        hex::encode(data)
    )
}

fn receipt(hash: B256, status: bool, logs: Vec<Value>) -> Value {
    json!({"status": if status { "0x1" } else { "0x0" }, "blockNumber": "0x11",
           "transactionHash": hash.to_string(), "from": facilitator().to_string(), "to": USDC,
           "logs": logs, "gasUsed": "0xb5c8", "type": "0x2"})
}

pub(crate) fn transfer_log(from: Address, to: Address, value: u64) -> Value {
    json!({"address": USDC,
           "topics": [ERC20_TRANSFER_TOPIC, from.into_word().to_string(), to.into_word().to_string()],
           "data": word(U256::from(value)), "removed": false})
}

/// The Transfer log a mined `transferWithAuthorization` in `raw` emits (none for other calls).
fn authorized_transfer(raw: &[u8]) -> Option<Value> {
    let input = decode_tx(raw).tx().input.clone();
    if input.len() < 100 || input[..4] != TRANSFER_WITH_AUTHORIZATION {
        return None;
    }
    let value = U256::from_be_slice(&input[68..100]);
    Some(transfer_log(
        Address::from_slice(&input[16..36]),
        Address::from_slice(&input[48..68]),
        value.to::<u64>(),
    ))
}

impl ChainState {
    /// Whether the token would revert the call `data` (0x-hex): a `transferWithAuthorization` whose nonce is
    /// used, whose value exceeds the payer's balance, or that the simulation refuses.
    fn would_revert(&self, data: &str) -> bool {
        let data = hex::decode(data).unwrap();
        if data[..4] != TRANSFER_WITH_AUTHORIZATION {
            return false;
        }
        let value = U256::from_be_slice(&data[68..100]);
        self.nonce_used || value > self.balance || !self.simulation_ok
    }

    /// The sent transaction with `hash`, unless forgotten.
    fn known(&self, hash: B256) -> Option<&Vec<u8>> {
        if self.forgotten.contains(&hash) {
            return None;
        }
        self.sent.iter().find(|raw| keccak256(raw) == hash)
    }
}

impl Node {
    pub(crate) fn set(&self, f: impl FnOnce(&mut ChainState)) {
        f(&mut self.chain.lock().unwrap());
    }

    /// Forget every transaction sent so far, unmined: a restart, or a pool eviction.
    pub(crate) fn forget(&self) {
        let mut c = self.chain.lock().unwrap();
        let hashes: Vec<B256> = c.sent.iter().map(keccak256).collect();
        c.forgotten.extend(hashes);
    }

    /// Forget the sent transaction `hash`, unmined (its pool dropped it once another of its nonce was mined).
    pub(crate) fn forget_one(&self, hash: B256) {
        self.chain.lock().unwrap().forgotten.insert(hash);
    }

    pub(crate) fn sent(&self) -> Vec<Vec<u8>> {
        self.chain.lock().unwrap().sent.clone()
    }

    /// Answer one POST: a single call, or a batch (an array of calls, answered by an array, as nodes do), or a
    /// refusal of the batch as a node without batch support answers.
    fn answer(&self, r: &Recorded) -> Scripted {
        let req = r.json().unwrap();
        let mut c = self.chain.lock().unwrap();
        if c.down {
            return Scripted::status(503);
        }
        let body = match req {
            Value::Array(_) if c.refuse_batches => json!({"jsonrpc": "2.0", "id": null,
                "error": {"code": -32600, "message": "batch requests are not supported"}}),
            Value::Array(calls) => {
                // A batch searching logs reaches the lagging log node, if there is one.
                let head = c.head;
                if calls.iter().any(|c| c["method"] == "eth_getLogs") {
                    c.head = c.log_node_head.unwrap_or(head);
                }
                let mut answers = Vec::new();
                for call in &calls {
                    match Self::answer_one(&mut c, call) {
                        Ok(a) => answers.push(a),
                        Err(whole) => {
                            c.head = head;
                            return whole;
                        }
                    }
                }
                c.head = head;
                Value::Array(answers)
            }
            call => match Self::answer_one(&mut c, &call) {
                Ok(a) => a,
                Err(whole) => return whole,
            },
        };
        Scripted::json(200, body.to_string())
    }

    /// The answer to one call, or (`Err`) what the whole POST gets instead.
    fn answer_one(c: &mut ChainState, req: &Value) -> Result<Value, Scripted> {
        let id = req["id"].clone();
        let params = &req["params"];
        let method = req["method"].as_str().unwrap();
        let called = match params[0]["data"].as_str() {
            Some(data) if method == "eth_call" => format!("{method} {}", &data[2..10]),
            _ => method.to_owned(),
        };
        if let Some(&(_, code, message)) = c.errors.iter().find(|(m, ..)| *m == called) {
            return Ok(
                json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}),
            );
        }
        let result: Result<Value, (i64, &str)> = match req["method"].as_str().unwrap() {
            "eth_chainId" => Ok(qty(c.chain_id.into())),
            "eth_blockNumber" => Ok(qty(c.head.into())),
            "eth_getTransactionCount" if params[1] == "pending" => {
                Ok(qty(c.pending_count.unwrap_or(TX_COUNT).into()))
            }
            "eth_getTransactionCount" => Ok(qty(c.mined_count.unwrap_or(TX_COUNT).into())),
            "eth_maxPriorityFeePerGas" => Ok(qty(TIP)),
            "eth_getBlockByNumber" => Ok(json!({"number": "0x11",
                                               "timestamp": qty(c.block_time.unwrap_or_else(now).into()),
                                               "baseFeePerGas": qty(c.base_fee.unwrap_or(BASE_FEE))})),
            "eth_estimateGas" if c.estimate_fails => Err((3, "execution reverted")),
            // Like a real node: estimating a `transferWithAuthorization` that the token would refuse reverts.
            "eth_estimateGas" if c.would_revert(params[0]["data"].as_str().unwrap()) => Err((
                3,
                "execution reverted: FiatTokenV2: authorization is used or canceled",
            )),
            "eth_estimateGas" => Ok(qty(GAS_ESTIMATE.into())),
            // The token is deployed; any other address has no code.
            "eth_getCode" if params[0].as_str().unwrap() == USDC.to_lowercase() => {
                Ok(json!(format!("0x{}", "60".repeat(32))))
            }
            "eth_getCode" => Ok(json!("0x")),
            "eth_call" => {
                assert_eq!(params[0]["to"].as_str().unwrap(), USDC.to_lowercase());
                let data = params[0]["data"].as_str().unwrap();
                match &data[2..10] {
                    "e94a0102" => {
                        // authorizationState(address, bytes32): the nonce is the second word.
                        let nonce: B256 = format!("0x{}", &data[74..138]).parse().unwrap();
                        let used = c.nonce_used || c.used.contains(&nonce);
                        Ok(json!(word(U256::from(u8::from(used)))))
                    }
                    "70a08231" => Ok(json!(word(c.balance))),
                    "e3ee160e" if c.simulation_ok => Ok(json!("0x")),
                    "e3ee160e" => Err((3, "execution reverted: FiatTokenV2: invalid signature")),
                    "06fdde03" => Ok(json!(abi_string(c.token_name))),
                    "54fd4d50" => Ok(json!(abi_string("2"))),
                    other => panic!("unexpected eth_call selector {other}"),
                }
            }
            "eth_sendRawTransaction" if c.refuse_send => Err((-32000, "nonce too low")),
            "eth_sendRawTransaction"
                if c.refuse_token_calls
                    && decode_tx(&hex::decode(params[0].as_str().unwrap()).unwrap())
                        .tx()
                        .to
                        == TxKind::Call(USDC.parse().unwrap()) =>
            {
                Err((-32000, "insufficient funds for gas * price + value"))
            }
            "eth_sendRawTransaction" if c.drop_send => return Err(Scripted::status(502)),
            "eth_sendRawTransaction"
                if c.drop_nonce.is_some_and(|n| {
                    decode_tx(&hex::decode(params[0].as_str().unwrap()).unwrap())
                        .tx()
                        .nonce
                        == n
                }) =>
            {
                return Err(Scripted::status(502));
            }
            "eth_sendRawTransaction" => {
                let raw = hex::decode(params[0].as_str().unwrap()).unwrap();
                let hash = keccak256(&raw);
                if c.known(hash).is_some() {
                    Err((-32000, "already known"))
                } else {
                    c.forgotten.remove(&hash);
                    c.sent.push(raw);
                    if c.lose_send_answer {
                        return Err(Scripted::status(502));
                    }
                    match c.send_error_after_taking {
                        Some(error) => Err(error),
                        None => Ok(json!(hash.to_string())),
                    }
                }
            }
            "eth_getTransactionReceipt" => {
                let hash: B256 = params[0].as_str().unwrap().parse().unwrap();
                if let Some(canned) = c.receipts.get(&hash) {
                    Ok(canned.clone())
                } else if c.mining != Mining::Never
                    && let Some(raw) = c.known(hash)
                {
                    // A successful `transferWithAuthorization` logs the token's Transfer, as USDC does.
                    let ok = c.mining == Mining::Succeed;
                    let logs = if ok && !c.hide_transfer_log {
                        authorized_transfer(raw).into_iter().collect()
                    } else {
                        vec![]
                    };
                    let mined = receipt(hash, ok, logs);
                    // Mined with status 1, it stays mined, as on a chain: a later `mining` setting is about
                    // transactions sent after it (a refund run reads its payment's receipt again).
                    if ok {
                        c.receipts.insert(hash, mined.clone());
                    }
                    Ok(mined)
                } else {
                    Ok(Value::Null)
                }
            }
            "eth_getLogs" if c.refuse_logs => {
                Err((-32005, "query returned more than 10000 results"))
            }
            "eth_getLogs" => {
                let filter = &params[0];
                assert_eq!(
                    filter["address"].as_str().unwrap().to_lowercase(),
                    USDC.to_lowercase()
                );
                let topics = filter["topics"].as_array().unwrap();
                let block = |v: &Value| u64::from_str_radix(&v.as_str().unwrap()[2..], 16).unwrap();
                let (from, to) = (block(&filter["fromBlock"]), block(&filter["toBlock"]));
                // A lagging node clamps the range to its own head.
                let to = c.log_node_head.map_or(to, |h| to.min(h));
                let matches =
                    |log: &&Value| {
                        (from..=to).contains(&block(&log["blockNumber"]))
                            && log["topics"].as_array().unwrap().iter().zip(topics).all(
                                |(t, want)| want.is_null() || want.as_array().unwrap().contains(t),
                            )
                    };
                Ok(Value::Array(
                    c.logs.iter().filter(matches).cloned().collect(),
                ))
            }
            "eth_getTransactionByHash" => {
                let hash: B256 = params[0].as_str().unwrap().parse().unwrap();
                match c.known(hash) {
                    Some(raw) => {
                        let tx = decode_tx(raw);
                        let block = (c.mining != Mining::Never).then_some("0x11");
                        Ok(
                            json!({"hash": hash.to_string(), "nonce": qty(tx.tx().nonce.into()),
                                  "from": tx.recover_signer().unwrap().to_string(),
                                  "blockNumber": block}),
                        )
                    }
                    None => Ok(Value::Null),
                }
            }
            other => panic!("unexpected JSON-RPC method {other}"),
        };
        Ok(match result {
            Ok(v) => json!({"jsonrpc": "2.0", "id": id, "result": v}),
            Err((code, message)) => {
                json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
            }
        })
    }
}

/// Readiness: a configuration that loads is ready; a signing key that is set but malformed, or an enabled
/// network without its endpoint, is not, named by its variable and never by its value. An unset key is a
/// feature turned off, not a fault.
#[tokio::test]
async fn readiness_names_a_malformed_key_and_a_network_without_an_endpoint() {
    let node = Arc::new(Node::default());
    let ready = async |kit: &mut Kit| {
        kit.call(async |a, g| g.verifier().call_ready(a).await)
            .await
            .unwrap()
    };
    let ok = ready(&mut kit(&node, &[]).await).await;
    assert!(ok.is_ok(), "{ok:?}");
    let off = ready(&mut kit(&node, &[("treasury_private_key", "")]).await).await;
    assert!(off.is_ok(), "an unset key turns refunds off: {off:?}");
    let bad_key = "0x1234567890abcdef";
    let mut k = kit(
        &node,
        &[
            ("facilitator_private_key", bad_key),
            ("payment_network", "eip155:31337,base"),
        ],
    )
    .await;
    let e = ready(&mut k).await;
    let Err(types::Error::Internal(m)) = &e else {
        panic!("{e:?}");
    };
    assert!(m.contains("facilitator_private_key"), "{m}");
    assert!(m.contains("rpc_url_base"), "{m}");
    assert!(
        !m.contains("1234567890abcdef"),
        "the key's value never shows: {m}"
    );
}

/// An `exact` payment for an invoice is refused 503 before anything is held or asked of the chain when no key
/// here can settle it (malformed, or unset): the gateway would otherwise order a profile, fail to settle and
/// give it back (a fresh-user trial: a typo in `facilitator_private_key` made every paid activation order and
/// release a carrier profile). The facilitator API's `/verify` is not concerned (it settles nothing).
#[tokio::test]
async fn an_exact_payment_nobody_here_can_settle_is_refused_before_its_order() {
    let node = Arc::new(Node::default());
    for key in ["0xdeadbeef", ""] {
        let mut k = kit(&node, &[("facilitator_private_key", key)]).await;
        let inv = invoice(2, None);
        let got = verify(&mut k, &inv, pay(&inv).v2()).await;
        assert!(
            matches!(&got, Err(E::Unavailable(m)) if m.contains("facilitator_private_key")
                && !m.contains("deadbeef")),
            "{key:?}: {got:?}"
        );
        assert!(rpc_calls(&k).is_empty(), "nothing asked of the chain");
    }
}

pub(crate) async fn kit(node: &Arc<Node>, vars: &[(&str, &str)]) -> Kit {
    let mut b = builder(node);
    for (k, v) in vars {
        b = b.var(k, v);
    }
    b.build().await.unwrap()
}

/// The verifier on the scripted `node`, with the test network's settings.
fn builder(node: &Arc<Node>) -> esim402_testkit::Builder {
    let n = node.clone();
    Kit::builder("verifier")
        .var("payment_network", "eip155:31337")
        .var("usdc_address", USDC)
        .var("usdc_eip712_name", "USD Coin")
        .var("usdc_eip712_version", "2")
        .var("rpc_url", RPC)
        .var("facilitator_private_key", FACILITATOR_KEY)
        .var("settlement_timeout_ms", "2000")
        .allow(RPC)
        .respond(move |r| n.answer(r))
}

// ---- invoices and payments -------------------------------------------------------------------------------

pub(crate) fn invoice(seed: u8, payer: Option<Address>) -> Invoice {
    let option = PaymentOption {
        network: Network::parse("eip155:31337").unwrap(),
        asset: USDC.into(),
        pay_to: PAY_TO.into(),
        amount_atomic: PRICE.to_string(),
        eip712_name: "USD Coin".into(),
        eip712_version: "2".into(),
    };
    let purchase = Purchase::Activation {
        region: "us-west".into(),
        data_mb: 100,
        carrier: None,
        eid: None,
        payer: payer.map(|p| p.to_checksum(None)),
        allow_failover: false,
    };
    Invoice::new(
        // The verifier parses the id but never opens it (the invoices component does): any well-formed id.
        InvoiceId::parse(&format!("inv_test.{seed}")).unwrap(),
        UsdcAmount::from_micros(PRICE),
        vec![option],
        purchase,
        now() - 10,
        900,
    )
    .unwrap()
}

fn status_to_wit(s: InvoiceStatus) -> types::InvoiceStatus {
    match s {
        InvoiceStatus::Open => types::InvoiceStatus::Open,
        InvoiceStatus::Pending => types::InvoiceStatus::Pending,
        InvoiceStatus::Paid => types::InvoiceStatus::Paid,
        InvoiceStatus::Expired => types::InvoiceStatus::Expired,
        InvoiceStatus::Refunded => types::InvoiceStatus::Refunded,
        InvoiceStatus::Failed => types::InvoiceStatus::Failed,
    }
}

/// The invoice as the gateway hands it to the verifier (what `invoices.get` answers; `esim402-guest`'s
/// `convert::invoice_to_wit`).
pub(crate) fn wit_invoice(inv: &Invoice) -> types::Invoice {
    let purchase = match &inv.purchase {
        Purchase::Activation {
            region,
            data_mb,
            carrier,
            eid,
            payer,
            allow_failover,
        } => types::Purchase::Activation(types::ActivationRequest {
            region: region.clone(),
            data_mb: *data_mb,
            carrier: carrier.clone(),
            eid: eid.clone(),
            payer: payer.clone(),
            networks: Vec::new(),
            allow_failover: *allow_failover,
        }),
        other => panic!("test invoices are activations, not {other:?}"),
    };
    types::Invoice {
        id: inv.invoice_id.to_string(),
        purchase,
        amount: inv.amount_usdc.micros(),
        options: inv
            .accepts
            .iter()
            .map(|o| types::PaymentOption {
                network: o.network.to_string(),
                asset: o.asset.clone(),
                pay_to: o.pay_to.clone(),
                amount: o.amount_atomic.parse().unwrap(),
                eip712_name: o.eip712_name.clone(),
                eip712_version: o.eip712_version.clone(),
            })
            .collect(),
        created_at: inv.created_at,
        expires_at: inv.expires_at,
        status: status_to_wit(inv.status),
        transaction: inv.transaction.clone(),
        payer: inv.payer.clone(),
        quoted: None,
    }
}

/// `inv` as the invoices component shows it once `tx` from the payer was marked paid.
pub(crate) fn paid_invoice(inv: &Invoice, tx: &str) -> Invoice {
    let mut paid = inv.clone();
    paid.status = InvoiceStatus::Paid;
    paid.transaction = Some(tx.to_owned());
    paid.payer = Some(payer().to_checksum(None));
    paid
}

/// One payment as a wallet builds it; tests bend one field at a time.
pub(crate) struct Pay {
    auth: TransferAuthorization,
    domain: TokenDomain,
    accepted: PaymentRequirements,
    high_s: bool,
}

static NONCES: AtomicU64 = AtomicU64::new(1);

pub(crate) fn pay(inv: &Invoice) -> Pay {
    let n = NONCES.fetch_add(1, Ordering::Relaxed);
    Pay {
        auth: TransferAuthorization {
            from: payer(),
            to: addr(PAY_TO),
            value: U256::from(PRICE),
            valid_after: U256::ZERO,
            valid_before: U256::from(now() + 300),
            nonce: keccak256(format!("test nonce {n}")),
        },
        domain: TokenDomain {
            name: "USD Coin".into(),
            version: "2".into(),
            chain_id: CHAIN_ID,
            verifying_contract: addr(USDC),
        },
        accepted: requirements_v2(inv)[0].clone(),
        high_s: false,
    }
}

impl Pay {
    fn signature(&self) -> Vec<u8> {
        let mut sig = sign_authorization(&payer_key(), &self.auth, &self.domain)
            .unwrap()
            .to_vec();
        if self.high_s {
            // The malleable twin (n - s, flipped parity) still recovers, but USDC refuses it.
            let n = U256::from_be_slice(
                &hex::decode("fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141")
                    .unwrap(),
            );
            let s = U256::from_be_slice(&sig[32..64]);
            sig[32..64].copy_from_slice(&(n - s).to_be_bytes::<32>());
            sig[64] = if sig[64] == 27 { 28 } else { 27 };
        }
        sig
    }

    fn exact(&self) -> ExactEvmPayload {
        ExactEvmPayload {
            signature: format!("0x{}", hex::encode(self.signature())),
            authorization: self.auth.to_wire(),
        }
    }

    fn payload(&self) -> PaymentPayload {
        PaymentPayload::V2(PaymentPayloadV2 {
            resource: None,
            accepted: self.accepted.clone(),
            payload: self.exact(),
            extensions: None,
        })
    }

    /// The proof as the gateway passes it on from a `PAYMENT-SIGNATURE` header: the decoded payload's JSON.
    pub(crate) fn v2(&self) -> types::PaymentProof {
        types::PaymentProof::X402(self.payload().to_json())
    }

    /// The same authorization as an `X-PAYMENT` (x402 v1) payload.
    fn v1(&self) -> types::PaymentProof {
        types::PaymentProof::X402(
            PaymentPayload::V1(PaymentPayloadV1 {
                scheme: "exact".into(),
                network: "anvil".into(),
                payload: self.exact(),
            })
            .to_json(),
        )
    }

    /// The settlement record of this authorization (`x402/nonce/…`).
    pub(crate) fn nonce_key(&self) -> String {
        format!(
            "x402/nonce/eip155:31337/{:#x}/{}",
            self.auth.from, self.auth.nonce
        )
    }

    /// A facilitator `/verify` or `/settle` body for this payment.
    fn facilitator_body(&self) -> String {
        json!({"x402Version": 2,
               "paymentPayload": serde_json::from_str::<Value>(&self.payload().to_json()).unwrap(),
               "paymentRequirements": self.accepted})
        .to_string()
    }
}

// ---- calls -----------------------------------------------------------------------------------------------

/// `verify`: the payer it vouches for (checksummed), on the invoice's network.
pub(crate) async fn verify(
    kit: &mut Kit,
    inv: &Invoice,
    proof: types::PaymentProof,
) -> Result<String, E> {
    let inv = wit_invoice(inv);
    let v = kit
        .call(async move |a, g| g.verifier().call_verify(a, inv, proof).await)
        .await
        .unwrap()
        .map_err(E::from)?;
    assert_eq!(v.network, "eip155:31337");
    Ok(v.payer)
}

/// What `verify` would have established for a payment by [`payer`]; `settle` is given it.
pub(crate) fn verified() -> types::Verified {
    types::Verified {
        payer: payer().to_checksum(None),
        network: "eip155:31337".into(),
        at: now(),
        // Not the proof's fingerprint: settle recovers the signature itself.
        proof: String::new(),
        transferred: None,
        claimed: false,
    }
}

pub(crate) async fn settle(
    kit: &mut Kit,
    inv: &Invoice,
    proof: types::PaymentProof,
) -> Result<S, E> {
    let inv = wit_invoice(inv);
    kit.call(async move |a, g| g.verifier().call_settle(a, inv, proof, verified()).await)
        .await
        .unwrap()
        .map(S::from)
        .map_err(E::from)
}

async fn facilitator_verify(kit: &mut Kit, body: String) -> Result<Value, E> {
    kit.call(async move |a, g| g.verifier().call_facilitator_verify(a, body).await)
        .await
        .unwrap()
        .map(|s| serde_json::from_str(&s).unwrap())
        .map_err(E::from)
}

async fn facilitator_settle(kit: &mut Kit, body: String) -> Result<Value, E> {
    kit.call(async move |a, g| g.verifier().call_facilitator_settle(a, body).await)
        .await
        .unwrap()
        .map(|s| serde_json::from_str(&s).unwrap())
        .map_err(E::from)
}

pub(crate) async fn kv_json(kit: &Kit, key: &str) -> Option<Value> {
    kit.kv_get(key)
        .await
        .map(|b| serde_json::from_slice(&b).unwrap())
}

/// Move the stored record at `key` `secs` into the past (its `updated_at`): time passing for a record.
pub(crate) async fn backdate(kit: &Kit, key: &str, secs: u64) {
    let mut record = kv_json(kit, key).await.unwrap();
    let at = record["updated_at"].as_u64().unwrap();
    record["updated_at"] = json!(at - secs);
    kit.kv_put(key, record.to_string().as_bytes()).await;
}

/// The keys under `prefix` that hold a value (not removed, not a versioned cell's bookkeeping).
pub(crate) async fn live_keys(kit: &Kit, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    for key in kit.kv().keys().await.unwrap() {
        if key.starts_with(prefix) && !key.contains('@') && kit.kv_get(&key).await.is_some() {
            out.push(key);
        }
    }
    out.sort();
    out
}

pub(crate) fn decode_tx(raw: &[u8]) -> Signed<TxEip1559> {
    let mut buf = raw;
    let tx = Signed::<TxEip1559>::eip2718_decode(&mut buf).unwrap();
    assert!(buf.is_empty());
    tx
}

/// Every JSON-RPC call the component made, in order, batches unpacked (each request checked to carry its
/// `Content-Length`: sent with its length, not chunked).
pub(crate) fn rpc_calls(kit: &Kit) -> Vec<Value> {
    kit.requests()
        .iter()
        .inspect(|r| {
            assert_eq!(
                r.header("content-length"),
                Some(r.body.len().to_string().as_str()),
                "{} {}",
                r.method,
                r.uri
            );
        })
        .flat_map(|r| match r.json().unwrap() {
            Value::Array(calls) => calls,
            call => vec![call],
        })
        .collect()
}

/// The methods of each JSON-RPC batch the component sent, in order (single calls left out).
pub(crate) fn batched_methods(kit: &Kit) -> Vec<Vec<String>> {
    kit.requests()
        .iter()
        .filter_map(|r| match r.json().unwrap() {
            Value::Array(calls) => Some(
                calls
                    .iter()
                    .map(|c| c["method"].as_str().unwrap().to_owned())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

pub(crate) fn rpc_methods(kit: &Kit) -> Vec<String> {
    rpc_calls(kit)
        .iter()
        .map(|r| r["method"].as_str().unwrap().to_owned())
        .collect()
}

// ---- verify ----------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_valid_payment_verifies_and_returns_the_checksummed_payer() {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[]).await;
    let inv = invoice(1, None);
    let p = pay(&inv);
    let want = payer().to_checksum(None);
    assert_eq!(verify(&mut kit, &inv, p.v2()).await, Ok(want.clone()));
    assert_eq!(verify(&mut kit, &inv, p.v1()).await, Ok(want));

    // The chain was asked what the reference asks: nonce state, balance, and a simulation from our account.
    let calls: Vec<Value> = rpc_calls(&kit)
        .into_iter()
        .filter(|r| r["method"] == "eth_call")
        .collect();
    let selectors: Vec<&str> = calls
        .iter()
        .map(|c| &c["params"][0]["data"].as_str().unwrap()[..10])
        .collect();
    for s in ["0xe94a0102", "0x70a08231", "0xe3ee160e"] {
        assert!(selectors.contains(&s), "{selectors:?}");
    }
    // In one batch each time (the first with the token's code, asked once per instance).
    assert_eq!(
        batched_methods(&kit),
        [
            vec!["eth_getCode", "eth_call", "eth_call", "eth_call"],
            vec!["eth_call", "eth_call", "eth_call"]
        ],
        "{:?}",
        rpc_methods(&kit)
    );
    let simulation = calls
        .iter()
        .find(|c| {
            c["params"][0]["data"]
                .as_str()
                .unwrap()
                .starts_with("0xe3ee160e")
        })
        .unwrap();
    assert_eq!(
        simulation["params"][0]["from"],
        format!("{:#x}", facilitator())
    );
    assert!(node.sent().is_empty(), "verify never broadcasts");
}

/// How one rejection is provoked, and the exact reason it must produce.
struct Case {
    name: &'static str,
    chain: fn(&mut ChainState),
    pay: fn(&mut Pay),
    reason: &'static str,
    /// Whether the chain may be asked (structural failures are decided without it).
    reads_chain: bool,
}

impl Case {
    /// What `settle` of the same payment answers. `settle` no longer reads the chain facts again (`verify` did,
    /// and the gateway only settles what verified): a refusal the chain decides is caught by the broadcast's
    /// gas estimate, which simulates the transfer, as a failed simulation.
    fn settle_reason(&self) -> &'static str {
        if self.reads_chain {
            "invalid_exact_evm_transaction_simulation_failed"
        } else {
            self.reason
        }
    }
}

#[tokio::test]
async fn each_rejection_maps_to_its_exact_reason() {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[]).await;
    let inv = invoice(2, None);
    let cases = [
        Case {
            name: "wrong recipient",
            chain: |_| {},
            pay: |p| p.auth.to = addr(STRANGER),
            reason: "invalid_exact_evm_recipient_mismatch",
            reads_chain: false,
        },
        Case {
            name: "underpaid",
            chain: |_| {},
            pay: |p| p.auth.value = U256::from(PRICE - 1),
            reason: "invalid_exact_evm_payload_authorization_value_mismatch",
            reads_chain: false,
        },
        Case {
            name: "expired",
            chain: |_| {},
            pay: |p| p.auth.valid_before = U256::from(now() - 1),
            reason: "invalid_exact_evm_payload_authorization_valid_before",
            reads_chain: false,
        },
        Case {
            name: "not yet valid",
            chain: |_| {},
            pay: |p| p.auth.valid_after = U256::from(now() + 600),
            reason: "invalid_exact_evm_payload_authorization_valid_after",
            reads_chain: false,
        },
        Case {
            name: "high-s signature",
            chain: |_| {},
            pay: |p| p.high_s = true,
            reason: "invalid_exact_evm_signature",
            reads_chain: false,
        },
        Case {
            name: "signed for another chain",
            chain: |_| {},
            pay: |p| p.domain.chain_id = 8453,
            reason: "invalid_exact_evm_signature",
            reads_chain: false,
        },
        Case {
            name: "signed for another token domain",
            chain: |_| {},
            pay: |p| p.domain.name = "USDC".into(),
            reason: "invalid_exact_evm_signature",
            reads_chain: false,
        },
        Case {
            name: "tampered requirements",
            chain: |_| {},
            pay: |p| p.accepted.amount = "1".into(),
            reason: "invalid_payment_requirements",
            reads_chain: false,
        },
        Case {
            name: "nonce already used",
            chain: |c| c.nonce_used = true,
            pay: |_| {},
            reason: "invalid_exact_evm_nonce_already_used",
            reads_chain: true,
        },
        Case {
            name: "insufficient balance",
            chain: |c| c.balance = U256::from(PRICE - 1),
            pay: |_| {},
            reason: "invalid_exact_evm_insufficient_balance",
            reads_chain: true,
        },
        Case {
            name: "simulation fails",
            chain: |c| c.simulation_ok = false,
            pay: |_| {},
            reason: "invalid_exact_evm_transaction_simulation_failed",
            reads_chain: true,
        },
        Case {
            name: "simulation fails, token domain differs on chain",
            chain: |c| {
                c.simulation_ok = false;
                c.token_name = "Bridged USDC";
            },
            pay: |_| {},
            reason: "invalid_exact_evm_token_name_mismatch",
            reads_chain: true,
        },
    ];
    for case in cases {
        node.set(|c| *c = ChainState::default());
        node.set(case.chain);
        let mut p = pay(&inv);
        (case.pay)(&mut p);
        let before = kit.requests().len();
        let got = verify(&mut kit, &inv, p.v2()).await;
        assert_eq!(
            got,
            Err(E::PaymentRequired(case.reason.into())),
            "{}",
            case.name
        );
        let asked = kit.requests().len() > before;
        assert_eq!(asked, case.reads_chain, "{}: chain asked", case.name);
        // Settling the same payment is refused (for the same reason when decided without the chain), and
        // claims nothing: no settlement record, no claim on a transaction, nothing broadcast. But for an
        // authorization the chain reads as used: another transaction executed it, and none is found that says
        // what it moved, so its money may have reached `payTo`: held for an operator, never refused (which
        // withdraws the order).
        let got = settle(&mut kit, &inv, p.v2()).await;
        if case.name == "nonce already used" {
            assert!(matches!(&got, Err(E::Unavailable(_))), "{got:?}");
            let record = kv_json(&kit, &p.nonce_key()).await.unwrap();
            assert_eq!(record["status"], "claimed");
            assert!(live_keys(&kit, "txhash/").await.is_empty());
            continue;
        }
        assert_eq!(
            got,
            Err(E::PaymentRequired(case.settle_reason().into())),
            "{} (settle)",
            case.name
        );
        assert!(kit.kv_get(&p.nonce_key()).await.is_none(), "{}", case.name);
        assert!(live_keys(&kit, "txhash/").await.is_empty(), "{}", case.name);
    }
    assert!(node.sent().is_empty());
}

#[tokio::test]
async fn malformed_proofs_are_invalid_input_naming_the_payment() {
    // The gateway decodes the header (kernel `x402::header`); what reaches the verifier is the payload's JSON,
    // and a payload that does not parse is bad input on `payment`, decided before the chain is asked.
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[]).await;
    let inv = invoice(3, None);
    let cases = [
        "not json!",
        "",
        "{nope",
        r#"{"x402Version":2,"payload":{}}"#,
        r#"{"x402Version":9}"#,
    ];
    for payload in cases {
        let proof = types::PaymentProof::X402(payload.into());
        for settling in [false, true] {
            let got = if settling {
                settle(&mut kit, &inv, proof.clone())
                    .await
                    .map(|_| String::new())
            } else {
                verify(&mut kit, &inv, proof.clone()).await
            };
            match got {
                Err(E::InvalidInput { field, .. }) => assert_eq!(field, "payment", "{payload:?}"),
                other => panic!("{payload:?}: {other:?}"),
            }
        }
    }
    assert!(kit.requests().is_empty(), "nothing reaches the chain");
}

/// `verify` of an invoice value exactly as given.
async fn verify_raw(
    kit: &mut Kit,
    inv: types::Invoice,
    proof: types::PaymentProof,
) -> Result<String, E> {
    kit.call(async move |a, g| g.verifier().call_verify(a, inv, proof).await)
        .await
        .unwrap()
        .map(|v| v.payer)
        .map_err(E::from)
}

#[tokio::test]
async fn malformed_expired_and_paid_invoices_are_refused() {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[]).await;
    // Invoices arrive as values (an unknown id is the invoices component's `none`); what the verifier can
    // still refuse is a value that is not an invoice.
    let inv = invoice(4, None);
    let p = pay(&inv);
    let mut bad_id = wit_invoice(&inv);
    bad_id.id = "not an invoice".into();
    assert!(matches!(
        verify_raw(&mut kit, bad_id, p.v2()).await,
        Err(E::InvalidInput { field, .. }) if field == "invoice_id"
    ));
    let mut no_options = wit_invoice(&inv);
    no_options.options.clear();
    assert!(matches!(
        verify_raw(&mut kit, no_options, p.v2()).await,
        Err(E::Internal(m)) if m.contains("malformed")
    ));

    let mut expired = invoice(5, None);
    expired.created_at = now() - 2_000;
    expired.expires_at = now() - 1_000;
    let p = pay(&expired);
    assert!(matches!(
        verify(&mut kit, &expired, p.v2()).await,
        Err(E::Expired(_))
    ));
    assert!(matches!(
        settle(&mut kit, &expired, p.v2()).await,
        Err(E::Expired(_))
    ));

    let mut paid = invoice(6, None);
    paid.status = InvoiceStatus::Paid;
    let p = pay(&paid);
    assert!(matches!(
        verify(&mut kit, &paid, p.v2()).await,
        Err(E::Conflict(_))
    ));
    assert!(matches!(
        settle(&mut kit, &paid, p.v2()).await,
        Err(E::Conflict(_))
    ));
    assert!(node.sent().is_empty());
    assert!(
        kit.requests().is_empty(),
        "refused before the chain is asked"
    );
}

#[tokio::test]
async fn rpc_failures_are_unavailable_never_a_verdict() {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[]).await;
    let inv = invoice(7, None);
    node.set(|c| c.down = true);
    let got = verify(&mut kit, &inv, pay(&inv).v2()).await;
    assert!(
        matches!(&got, Err(E::Unavailable(m)) if m.contains("HTTP 503")),
        "{got:?}"
    );
    assert!(
        !format!("{got:?}").contains("rpc.test"),
        "the endpoint may carry an API key"
    );

    node.set(|c| {
        c.down = false;
        c.chain_id = 1;
    });
    let got = verify(&mut kit, &inv, pay(&inv).v2()).await;
    assert!(
        matches!(&got, Err(E::Unavailable(m)) if m.contains("chain 1")),
        "{got:?}"
    );
    let got = settle(&mut kit, &inv, pay(&inv).v2()).await;
    assert!(matches!(&got, Err(E::Unavailable(_))), "{got:?}");
    assert!(node.sent().is_empty());
}

// ---- settle ----------------------------------------------------------------------------------------------

/// A node that refuses batches (one error object for the array, as providers without batch support answer)
/// still verifies and settles: the refused batch is sent again as single calls, and this instance sends
/// that node no more batches.
#[tokio::test]
async fn a_node_without_batch_support_gets_single_calls() {
    let node = Arc::new(Node::default());
    node.set(|c| c.refuse_batches = true);
    let mut kit = kit(&node, &[]).await;
    let inv = invoice(12, None);
    let p = pay(&inv);
    assert_eq!(
        verify(&mut kit, &inv, p.v2()).await,
        Ok(payer().to_checksum(None))
    );
    let got = settle(&mut kit, &inv, p.v2()).await.unwrap();
    let sent = node.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(got, S::Settled(keccak256(&sent[0]).to_string()));
    let tx = decode_tx(&sent[0]);
    assert_eq!(tx.tx().gas_limit, GAS_ESTIMATE + GAS_ESTIMATE / 4);
    assert_eq!(tx.tx().max_fee_per_gas, 2 * BASE_FEE + TIP);
    assert_eq!(tx.tx().nonce, TX_COUNT);
    // Only the first batch was tried; its calls and every later one went out singly.
    assert_eq!(batched_methods(&kit).len(), 1, "{:?}", rpc_methods(&kit));
    let methods = rpc_methods(&kit);
    for m in [
        "eth_call",
        "eth_estimateGas",
        "eth_maxPriorityFeePerGas",
        "eth_getBlockByNumber",
    ] {
        assert!(
            kit.requests()
                .iter()
                .any(|r| r.json().unwrap()["method"] == m),
            "{m} sent singly: {methods:?}"
        );
    }
}

/// `rpc_batch = false` sends every call on its own; any other value than `true`/`false` is refused by name.
#[tokio::test]
async fn rpc_batch_false_sends_single_calls_and_a_bad_value_is_named() {
    let node = Arc::new(Node::default());
    let mut single = kit(&node, &[("rpc_batch", "false")]).await;
    let inv = invoice(41, None);
    let p = pay(&inv);
    let got = settle(&mut single, &inv, p.v2()).await.unwrap();
    assert_eq!(got, S::Settled(keccak256(&node.sent()[0]).to_string()));
    assert!(
        batched_methods(&single).is_empty(),
        "{:?}",
        rpc_methods(&single)
    );
    assert!(rpc_methods(&single).contains(&"eth_estimateGas".to_owned()));

    let mut bad = kit(&node, &[("rpc_batch", "yes")]).await;
    let inv = invoice(42, None);
    assert!(matches!(
        verify(&mut bad, &inv, pay(&inv).v2()).await,
        Err(E::Internal(m)) if m.contains("rpc_batch") && m.contains("true or false")
    ));
}

#[tokio::test]
async fn settle_sends_one_transfer_with_authorization_and_replays_its_result() {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[]).await;
    let inv = invoice(10, None);
    let p = pay(&inv);

    let got = settle(&mut kit, &inv, p.v2()).await.unwrap();
    let sent = node.sent();
    assert_eq!(sent.len(), 1);
    let hash = keccak256(&sent[0]).to_string();
    assert_eq!(got, S::Settled(hash.clone()));

    let tx = decode_tx(&sent[0]);
    assert_eq!(tx.tx().to, TxKind::Call(addr(USDC)));
    assert_eq!(tx.tx().input[..4], TRANSFER_WITH_AUTHORIZATION);
    assert_eq!(tx.tx().chain_id, CHAIN_ID);
    assert_eq!(tx.tx().nonce, TX_COUNT);
    assert_eq!(tx.tx().gas_limit, GAS_ESTIMATE + GAS_ESTIMATE / 4);
    assert_eq!(tx.tx().max_priority_fee_per_gas, TIP);
    assert_eq!(tx.tx().max_fee_per_gas, 2 * BASE_FEE + TIP);
    assert_eq!(tx.recover_signer().unwrap(), facilitator());
    // The calldata carries the payer's authorization verbatim.
    let input = &tx.tx().input;
    assert_eq!(input[4..36], payer().into_word()[..]);
    assert_eq!(input[36..68], addr(PAY_TO).into_word()[..]);
    assert_eq!(input[164..196], p.auth.nonce[..]);

    // The settlement record is the authorization's (no per-invoice record any more); it names the invoice.
    let record = kv_json(&kit, &p.nonce_key()).await.unwrap();
    assert_eq!(record["status"], "confirmed");
    assert_eq!(record["transaction"], hash);
    assert_eq!(record["payer"], payer().to_checksum(None));
    assert_eq!(record["claim"], p.nonce_key());
    assert_eq!(record["invoice"], inv.invoice_id.as_str());
    // Our transaction is claimed too, so it can never be presented as a tx-hash proof for something else.
    let claimed = kv_json(&kit, &format!("txhash/{hash}")).await.unwrap();
    assert_eq!(claimed["claim"], p.nonce_key());
    assert_eq!(claimed["invoice"], inv.invoice_id.as_str());
    let nonces = kv_json(
        &kit,
        &format!("signer/eip155:31337/{:#x}/nonce", facilitator()),
    )
    .await
    .unwrap();
    assert_eq!(nonces["next"], TX_COUNT + 1);
    // The send's chain reads went out as one JSON-RPC batch: one round trip to the node, not five.
    let batches = batched_methods(&kit);
    assert!(
        batches.iter().any(|b| b
            == &[
                "eth_estimateGas",
                "eth_getBlockByNumber",
                "eth_maxPriorityFeePerGas",
                "eth_getTransactionCount",
                "eth_getTransactionCount"
            ]),
        "{batches:?}"
    );

    // The same payment again (either header version, and with the invoice as it reads once marked paid):
    // the stored result, no second transaction.
    let paid = paid_invoice(&inv, &hash);
    assert_eq!(
        settle(&mut kit, &inv, p.v2()).await,
        Ok(S::Settled(hash.clone()))
    );
    assert_eq!(
        settle(&mut kit, &paid, p.v1()).await,
        Ok(S::Settled(hash.clone()))
    );
    // Verify still vouches for it (the chain would now call the nonce used).
    node.set(|c| c.nonce_used = true);
    assert_eq!(
        verify(&mut kit, &paid, p.v2()).await,
        Ok(payer().to_checksum(None))
    );
    node.set(|c| c.nonce_used = false);
    // Another payment for the settled invoice: a conflict. (That a different payment never settles an invoice
    // another one holds is the invoices component's payment record's job, checked before the verifier runs:
    // `invoices::another_payment_never_takes_an_invoice_held_or_settled_by_one`. Here the invoice comes in
    // as paid.)
    let other = pay(&inv);
    assert!(matches!(
        verify(&mut kit, &paid, other.v2()).await,
        Err(E::Conflict(m)) if m.contains("paid")
    ));
    assert!(matches!(
        settle(&mut kit, &paid, other.v2()).await,
        Err(E::Conflict(m)) if m.contains("paid")
    ));
    assert!(kit.kv_get(&other.nonce_key()).await.is_none());
    // This payment for another invoice: already settled.
    let inv2 = invoice(11, None);
    let mut reused = pay(&inv2);
    reused.auth = p.auth;
    assert!(matches!(
        settle(&mut kit, &inv2, reused.v2()).await,
        Err(E::Conflict(m)) if m.starts_with("already settled")
    ));
    // A forged signature over the settled authorization does not replay its result.
    let mut forged = pay(&inv);
    forged.auth = p.auth;
    forged.domain.chain_id = 1;
    assert!(matches!(
        settle(&mut kit, &inv, forged.v2()).await,
        Err(E::Conflict(_))
    ));
    assert_eq!(node.sent().len(), 1);
    assert_eq!(
        rpc_methods(&kit)
            .iter()
            .filter(|m| *m == "eth_sendRawTransaction")
            .count(),
        1
    );
}

#[tokio::test]
async fn twenty_concurrent_settles_broadcast_exactly_once() {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[]).await;
    let kernel = invoice(12, None);
    let proof = pay(&kernel).v2();
    let inv = wit_invoice(&kernel);
    let results = kit
        .call(async move |a, g| {
            let calls = (0..20).map(|_| {
                g.verifier()
                    .call_settle(a, inv.clone(), proof.clone(), verified())
            });
            crate::join_all(calls)
                .await
                .into_iter()
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .unwrap();
    let sent = node.sent();
    assert_eq!(sent.len(), 1, "{results:?}");
    assert_eq!(
        rpc_methods(&kit)
            .iter()
            .filter(|m| *m == "eth_sendRawTransaction")
            .count(),
        1
    );
    let hash = keccak256(&sent[0]).to_string();
    let mut settled = 0;
    let results: Vec<Result<S, E>> = results
        .into_iter()
        .map(|r| r.map(S::from).map_err(E::from))
        .collect();
    for r in &results {
        match r {
            Ok(S::Settled(h)) => {
                assert_eq!(*h, hash);
                settled += 1;
            }
            Err(E::Conflict(m)) => assert!(m.starts_with("already settled"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
    assert!(settled >= 1, "{results:?}");
}

#[tokio::test]
async fn no_receipt_in_time_is_pending_and_a_later_settle_reconciles() {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[("settlement_timeout_ms", "300")]).await;
    let inv = invoice(13, None);
    let p = pay(&inv);
    node.set(|c| c.mining = Mining::Never);

    let got = settle(&mut kit, &inv, p.v2()).await.unwrap();
    let hash = keccak256(&node.sent()[0]).to_string();
    assert_eq!(got, S::Pending(hash.clone()));
    let record = kv_json(&kit, &p.nonce_key()).await.unwrap();
    assert_eq!(record["status"], "submitted");
    assert_eq!(record["transaction"], hash);

    // Still not mined: still pending, never a second broadcast, never a failure.
    assert_eq!(
        settle(&mut kit, &inv, p.v2()).await,
        Ok(S::Pending(hash.clone()))
    );
    node.set(|c| c.mining = Mining::Succeed);
    assert_eq!(
        settle(&mut kit, &inv, p.v2()).await,
        Ok(S::Settled(hash.clone()))
    );
    let record = kv_json(&kit, &p.nonce_key()).await.unwrap();
    assert_eq!(record["status"], "confirmed");
    assert_eq!(node.sent().len(), 1);
}

/// With confirmations required, a settlement is pending until its receipt's block is buried deeply enough; each
/// poll asks for the receipt and the head block in one batch.
#[tokio::test]
async fn a_settlement_waits_for_its_confirmations_reading_receipt_and_head_together() {
    let node = Arc::new(Node::default());
    // Receipts are in block 0x11: a head of 0x12 is 2 confirmations.
    node.set(|c| c.head = 0x12);
    let mut kit = kit(
        &node,
        &[
            ("payment_confirmations", "3"),
            ("settlement_timeout_ms", "300"),
        ],
    )
    .await;
    let inv = invoice(40, None);
    let p = pay(&inv);
    let got = settle(&mut kit, &inv, p.v2()).await.unwrap();
    let hash = keccak256(&node.sent()[0]).to_string();
    assert_eq!(got, S::Pending(hash.clone()));
    let batches = batched_methods(&kit);
    assert!(
        batches
            .iter()
            .any(|b| b == &["eth_getTransactionReceipt", "eth_blockNumber"]),
        "{batches:?}"
    );
    node.set(|c| c.head = 0x13);
    assert_eq!(settle(&mut kit, &inv, p.v2()).await, Ok(S::Settled(hash)));
    assert_eq!(node.sent().len(), 1);

    // A revert counts only once buried too (a reorganisation could still turn it into a success).
    node.set(|c| {
        c.head = 0x12;
        c.mining = Mining::Revert;
    });
    let inv = invoice(41, None);
    let p = pay(&inv);
    let got = settle(&mut kit, &inv, p.v2()).await;
    let hash = keccak256(&node.sent()[1]).to_string();
    assert_eq!(got, Ok(S::Pending(hash)), "not buried yet");
    // Buried, and its published authorization can no longer be executed (the latest block is past its
    // validBefore) and reads unused there: failed.
    node.set(|c| {
        c.head = 0x13;
        c.block_time = Some(now() + 1_000);
    });
    assert_eq!(
        settle(&mut kit, &inv, p.v2()).await,
        Err(E::PaymentRequired(
            "invalid_exact_evm_transaction_failed".into()
        ))
    );
}

#[tokio::test]
async fn a_reverted_settlement_fails_and_leaves_the_invoice_open_to_another_payment() {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[]).await;
    let inv = invoice(14, None);
    let p = pay(&inv);
    node.set(|c| c.mining = Mining::Revert);
    let failed = Err(E::PaymentRequired(
        "invalid_exact_evm_transaction_failed".into(),
    ));
    // Our transaction published the signed authorization: anyone may still execute it until its
    // validBefore, so the revert is not final before then (nothing withdrawn, the payment resumable).
    let hash = keccak256(&{
        let got = settle(&mut kit, &inv, p.v2()).await;
        let raw = node.sent()[0].clone();
        assert_eq!(got, Ok(S::Pending(keccak256(&raw).to_string())));
        raw
    });
    let record = kv_json(&kit, &p.nonce_key()).await.unwrap();
    assert_eq!(record["status"], "submitted");
    // The latest block is past validBefore and the authorization still unused there: failed for good.
    node.set(|c| c.block_time = Some(now() + 1_000));
    assert_eq!(settle(&mut kit, &inv, p.v2()).await, failed);
    let record = kv_json(&kit, &p.nonce_key()).await.unwrap();
    assert_eq!(record["status"], "failed");
    assert_eq!(record["transaction"], hash.to_string());
    assert_eq!(record["reason"], "invalid_exact_evm_transaction_failed");
    // Replayed, not re-sent.
    assert_eq!(settle(&mut kit, &inv, p.v2()).await, failed);
    assert_eq!(node.sent().len(), 1);

    node.set(|c| c.mining = Mining::Succeed);
    let second = pay(&inv);
    let got = settle(&mut kit, &inv, second.v2()).await.unwrap();
    let sent = node.sent();
    assert_eq!(sent.len(), 2);
    assert_eq!(got, S::Settled(keccak256(&sent[1]).to_string()));
    assert_eq!(decode_tx(&sent[1]).tx().nonce, TX_COUNT + 1);
}

/// Settled twice more, `p`'s settlement `hash` stays pending: its record still `submitted`, nothing sent again
/// (money may have moved by a transaction we do not know: never a failure, never a second attempt).
async fn stays_pending(kit: &mut Kit, node: &Node, inv: &Invoice, p: &Pay, hash: &str) {
    for _ in 0..2 {
        assert_eq!(
            settle(kit, inv, p.v2()).await,
            Ok(S::Pending(hash.to_owned()))
        );
    }
    let record = kv_json(kit, &p.nonce_key()).await.unwrap();
    assert_eq!(record["status"], "submitted");
    assert_eq!(node.sent().len(), 1);
}

/// A verifier (receipt waits of 300 ms) on a node that never mines, with invoice `seed` paid: its settlement
/// answered pending with the one transaction it sent, `hash`.
struct PendingSettlement {
    node: Arc<Node>,
    kit: Kit,
    inv: Invoice,
    p: Pay,
    hash: String,
}

async fn pending_settlement(seed: u8) -> PendingSettlement {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[("settlement_timeout_ms", "300")]).await;
    let inv = invoice(seed, None);
    let p = pay(&inv);
    node.set(|c| c.mining = Mining::Never);
    let got = settle(&mut kit, &inv, p.v2()).await;
    let hash = keccak256(&node.sent()[0]).to_string();
    assert_eq!(got, Ok(S::Pending(hash.clone())));
    PendingSettlement {
        node,
        kit,
        inv,
        p,
        hash,
    }
}

/// Our settlement reverts because another transaction executed the same signed authorization first (the
/// payer's own, another facilitator's), and no log names that transaction (outside the blocks searched): the
/// money may have reached `payTo`, so it is never recorded as a failure (which would withdraw the order); it
/// stays pending for an operator, and nothing is sent again.
#[tokio::test]
async fn a_reverted_settlement_whose_authorization_was_executed_meanwhile_stays_pending() {
    let PendingSettlement {
        node,
        mut kit,
        inv,
        p,
        hash,
    } = pending_settlement(28).await;

    node.set(|c| {
        c.mining = Mining::Revert;
        c.nonce_used = true;
    });
    stays_pending(&mut kit, &node, &inv, &p, &hash).await;
}

/// The transaction `tx` executed (`event`: `AuthorizationUsed`) or canceled (`AuthorizationCanceled`) `p`'s
/// authorization in block 0x11, moving `moved` (a Transfer log) if it executed: the token's log, and the
/// receipt showing it, on `node`.
pub(crate) fn used_by(node: &Node, p: &Pay, tx: B256, event: &str, moved: Option<Value>) {
    let topic = keccak256(format!("{event}(address,bytes32)"));
    let log = json!({"address": USDC,
        "topics": [topic.to_string(), p.auth.from.into_word().to_string(), p.auth.nonce.to_string()],
        "data": "0x", "removed": false});
    let mut entry = log.clone();
    entry["blockNumber"] = json!("0x11");
    entry["transactionHash"] = json!(tx.to_string());
    node.set(|c| {
        c.logs.push(entry);
        let logs = std::iter::once(log).chain(moved).collect();
        c.receipts.insert(tx, receipt(tx, true, logs));
    });
}

/// Reverted because the payer executed the authorization first, with the same transfer: the invoice's
/// settlement is confirmed by the payer's transaction, found through the token's `AuthorizationUsed` log, and
/// that transaction's `txhash/` key is claimed for it (before, it stayed pending for an operator).
#[tokio::test]
async fn a_settlement_front_run_by_a_transaction_moving_its_money_is_settled_by_it() {
    let PendingSettlement {
        node,
        mut kit,
        inv,
        p,
        hash: ours,
    } = pending_settlement(29).await;

    let theirs = B256::repeat_byte(0xf1);
    used_by(
        &node,
        &p,
        theirs,
        "AuthorizationUsed",
        Some(transfer_log(p.auth.from, p.auth.to, PRICE)),
    );
    node.set(|c| {
        c.mining = Mining::Revert;
        c.nonce_used = true;
    });
    for _ in 0..2 {
        assert_eq!(
            settle(&mut kit, &inv, p.v2()).await,
            Ok(S::Settled(theirs.to_string()))
        );
    }
    let record = kv_json(&kit, &p.nonce_key()).await.unwrap();
    assert_eq!(record["status"], "confirmed");
    assert_eq!(record["transaction"], ours);
    assert_eq!(record["executed_by"], theirs.to_string());
    let claim = kv_json(&kit, &format!("txhash/{theirs}")).await.unwrap();
    assert_eq!(claim["claim"], p.nonce_key());
    assert_eq!(node.sent().len(), 1, "nothing sent again");
}

/// The facilitator API's settlement, front-run by a transaction moving its money: another facilitator may have
/// reported that transaction to another resource server with the same `payTo`, so it stays pending here.
#[tokio::test]
async fn a_facilitator_api_settlement_front_run_stays_pending() {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[("settlement_timeout_ms", "300")]).await;
    let p = pay(&invoice(32, None));
    node.set(|c| c.mining = Mining::Never);
    facilitator_settle(&mut kit, p.facilitator_body())
        .await
        .unwrap();
    let theirs = B256::repeat_byte(0xf4);
    used_by(
        &node,
        &p,
        theirs,
        "AuthorizationUsed",
        Some(transfer_log(p.auth.from, p.auth.to, PRICE)),
    );
    node.set(|c| {
        c.mining = Mining::Revert;
        c.nonce_used = true;
    });
    let again = facilitator_settle(&mut kit, p.facilitator_body())
        .await
        .unwrap();
    assert_eq!(again["success"], false, "{again}");
    assert_eq!(again["errorReason"], "settlement_pending", "{again}");
    let record = kv_json(&kit, &p.nonce_key()).await.unwrap();
    assert_eq!(record["status"], "submitted");
    assert!(kit.kv_get(&format!("txhash/{theirs}")).await.is_none());
}

/// The front-running transaction was already presented (and claimed) as a tx-hash proof of another invoice:
/// it pays that one, so this settlement stays pending for an operator rather than a transfer paying twice.
#[tokio::test]
async fn a_front_run_transaction_that_already_pays_another_invoice_leaves_the_settlement_pending() {
    let PendingSettlement {
        node,
        mut kit,
        inv,
        p,
        hash: ours,
    } = pending_settlement(30).await;

    let theirs = B256::repeat_byte(0xf2);
    used_by(
        &node,
        &p,
        theirs,
        "AuthorizationUsed",
        Some(transfer_log(p.auth.from, p.auth.to, PRICE)),
    );
    let key = format!("txhash/{theirs}");
    let other = json!({"status": "confirmed", "network": "eip155:31337", "payer": p.auth.from.to_string(),
        "claim": key, "holder": "h", "invoice": "inv_other.1", "claimed_at": 1, "transaction": theirs.to_string(),
        "updated_at": 1});
    kit.kv_put(&key, other.to_string().as_bytes()).await;
    node.set(|c| {
        c.mining = Mining::Revert;
        c.nonce_used = true;
    });
    stays_pending(&mut kit, &node, &inv, &p, &ours).await;
    assert_eq!(kv_json(&kit, &key).await.unwrap()["invoice"], "inv_other.1");
}

/// The nonce was used by a transaction that moved other money (another authorization signed with the same
/// nonce), or canceled by the payer: this payment's money can never move, so the settlement fails (the
/// gateway withdraws the order). What cannot be checked decides nothing (pending): a node that refuses the
/// log query, a log whose transaction's own receipt does not show it, a log outside the blocks searched.
#[tokio::test]
async fn a_settlement_whose_nonce_was_used_without_its_transfer_or_canceled_fails() {
    for case in [
        "other transfer",
        "canceled",
        "logs refused",
        "receipt without the log",
        "log after the block",
    ] {
        let PendingSettlement {
            node,
            mut kit,
            inv,
            p,
            hash: ours,
        } = pending_settlement(31).await;
        let theirs = B256::repeat_byte(0xf3);
        match case {
            "other transfer" => used_by(
                &node,
                &p,
                theirs,
                "AuthorizationUsed",
                Some(transfer_log(p.auth.from, Address::repeat_byte(0x77), PRICE)),
            ),
            "canceled" => used_by(&node, &p, theirs, "AuthorizationCanceled", None),
            _ => {
                let moved = transfer_log(p.auth.from, p.auth.to, PRICE);
                used_by(&node, &p, theirs, "AuthorizationUsed", Some(moved.clone()));
                node.set(|c| match case {
                    "logs refused" => c.refuse_logs = true,
                    // The node's log query names a transaction whose own receipt shows no such event.
                    "receipt without the log" => {
                        c.receipts
                            .insert(theirs, receipt(theirs, true, vec![moved]));
                    }
                    // Mined after the block that showed the authorization used: not what used it.
                    _ => c.logs[0]["blockNumber"] = json!("0x12"),
                });
            }
        }
        node.set(|c| {
            c.mining = Mining::Revert;
            c.nonce_used = true;
        });
        if !matches!(case, "other transfer" | "canceled") {
            stays_pending(&mut kit, &node, &inv, &p, &ours).await;
            continue;
        }
        for _ in 0..2 {
            assert_eq!(
                settle(&mut kit, &inv, p.v2()).await,
                Err(E::PaymentRequired(
                    "invalid_exact_evm_transaction_failed".into()
                )),
                "{case}"
            );
        }
        let record = kv_json(&kit, &p.nonce_key()).await.unwrap();
        assert_eq!(record["status"], "failed", "{case}");
        assert!(
            kit.kv_get(&format!("txhash/{theirs}")).await.is_none(),
            "{case}"
        );
    }
}

#[tokio::test]
async fn a_refused_broadcast_releases_every_claim_so_a_retry_works() {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[]).await;
    let inv = invoice(15, None);
    let p = pay(&inv);
    let nonce_state = format!("signer/eip155:31337/{:#x}/nonce", facilitator());

    node.set(|c| c.refuse_send = true);
    let got = settle(&mut kit, &inv, p.v2()).await;
    assert!(
        matches!(&got, Err(E::Unavailable(m)) if m.contains("refused")),
        "{got:?}"
    );
    // Released: the authorization's record and the claim on the refused transaction's hash.
    assert!(kit.kv_get(&p.nonce_key()).await.is_none());
    assert_eq!(live_keys(&kit, "txhash/").await, Vec::<String>::new());
    assert_eq!(live_keys(&kit, "x402/").await, Vec::<String>::new());
    // The nonce its recorded transaction had is held until the next send finds that record gone (an orphan
    // at once), never handed out before the record is released.
    let state = kv_json(&kit, &nonce_state).await.unwrap();
    assert_eq!(state["pending"], json!([TX_COUNT]));
    assert_eq!(state["reserved_at"], json!({TX_COUNT.to_string(): 0}));

    node.set(|c| {
        c.refuse_send = false;
        c.estimate_fails = true;
    });
    assert_eq!(
        settle(&mut kit, &inv, p.v2()).await,
        Err(E::PaymentRequired(
            "invalid_exact_evm_transaction_simulation_failed".into()
        ))
    );
    assert!(kit.kv_get(&p.nonce_key()).await.is_none());

    node.set(|c| c.estimate_fails = false);
    let got = settle(&mut kit, &inv, p.v2()).await.unwrap();
    let sent = node.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(got, S::Settled(keccak256(&sent[0]).to_string()));
    assert_eq!(
        decode_tx(&sent[0]).tx().nonce,
        TX_COUNT,
        "the released nonce is reused"
    );
}

/// A send refused below a nonce that another send already has out would leave a hole that transaction waits
/// behind until some later send reuses it: the nonce is filled with a no-op instead (nothing, to ourselves);
/// if the node refuses that too, the nonce is given back.
#[tokio::test]
async fn a_nonce_given_back_below_one_still_out_is_filled_with_a_no_op() {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[]).await;
    let nonce_state = format!("signer/eip155:31337/{:#x}/nonce", facilitator());
    // Another settlement holds TX_COUNT + 1 (reserved just now); TX_COUNT was given back earlier, so this
    // settlement reserves it.
    let other = TX_COUNT + 1;
    let seeded = json!({
        "next": TX_COUNT + 2,
        "pending": [other],
        "released": [TX_COUNT],
        "owners": {other.to_string(): "x402/other"},
        "reserved_at": {other.to_string(): now()},
    });
    node.set(|c| c.refuse_token_calls = true);
    for (noop_refused, inv) in [(false, invoice(15, None)), (true, invoice(16, None))] {
        kit.kv_put(&nonce_state, seeded.to_string().as_bytes())
            .await;
        node.set(|c| c.refuse_send = noop_refused);
        let p = pay(&inv);
        let got = settle(&mut kit, &inv, p.v2()).await;
        assert!(
            matches!(&got, Err(E::Unavailable(m)) if m.contains("refused")),
            "{got:?}"
        );
        let state = kv_json(&kit, &nonce_state).await.unwrap();
        if noop_refused {
            // Held, reserved as of its no-op's try: a send after ORPHAN_AFTER_SECS gives it back once the
            // settlement's record is gone (not at once: the record is released before the no-op goes out, and
            // a send in between must not hand the nonce to another transaction).
            assert_eq!(node.sent().len(), 1, "nothing more went out");
            assert_eq!(state["pending"], json!([TX_COUNT, other]), "{state}");
            assert_eq!(state["released"], json!([]), "{state}");
            let reserved = state["reserved_at"][TX_COUNT.to_string()].as_u64().unwrap();
            assert!(reserved + 60 >= now(), "{state}");
        } else {
            let sent = node.sent();
            assert_eq!(sent.len(), 1);
            let noop = decode_tx(&sent[0]);
            let tx = noop.tx();
            assert_eq!(
                (tx.nonce, tx.to, tx.value, tx.input.len(), tx.gas_limit),
                (TX_COUNT, TxKind::Call(facilitator()), U256::ZERO, 0, 21_000)
            );
            assert_eq!(state["pending"], json!([TX_COUNT, other]), "{state}");
            assert_eq!(state["released"], json!([]), "no hole: {state}");
        }
        // The settlement itself released every claim either way.
        assert!(kit.kv_get(&p.nonce_key()).await.is_none());
    }
}

/// The claim on our own settlement's hash cannot be written: the send stops before its broadcast and gives
/// everything back (a transaction out without that claim could be presented again as a tx-hash proof for
/// another invoice); once the store works, a retry settles once.
#[tokio::test]
async fn a_settlement_whose_hash_cannot_be_claimed_is_not_broadcast() {
    let node = Arc::new(Node::default());
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut kit = builder(&node)
        .store(Arc::new(crate::failing_writes("txhash/", &failing)))
        .build()
        .await
        .unwrap();
    let inv = invoice(23, None);
    let p = pay(&inv);
    let got = settle(&mut kit, &inv, p.v2()).await;
    assert!(matches!(&got, Err(E::Unavailable(_))), "{got:?}");
    assert!(node.sent().is_empty(), "nothing broadcast");
    assert!(
        kit.kv_get(&p.nonce_key()).await.is_none(),
        "claims given back"
    );

    failing.store(false, Ordering::SeqCst);
    let got = settle(&mut kit, &inv, p.v2()).await.unwrap();
    let sent = node.sent();
    assert_eq!(sent.len(), 1);
    let hash = keccak256(&sent[0]);
    assert_eq!(got, S::Settled(hash.to_string()));
    assert_eq!(
        live_keys(&kit, "txhash/").await,
        vec![format!("txhash/{hash}")]
    );
}

/// A broadcast whose outcome is unknown keeps every claim and its nonce, and reconciles by its hash: its answer
/// was lost, or the node answered an error that names no refusal (a provider may have forwarded the
/// transaction first). Giving the nonce back there would let the next send share it.
#[tokio::test]
async fn a_lost_broadcast_answer_keeps_the_claims_and_reconciles() {
    let lost = |c: &mut ChainState| c.lose_send_answer = true;
    let upstream = |c: &mut ChainState| {
        c.send_error_after_taking = Some((-32603, "upstream request failed: connection reset"));
    };
    for (n, (how, lose)) in [
        ("lost answer", &lost as &dyn Fn(&mut ChainState)),
        ("upstream error", &upstream),
    ]
    .into_iter()
    .enumerate()
    {
        let node = Arc::new(Node::default());
        let mut kit = kit(&node, &[("settlement_timeout_ms", "300")]).await;
        let inv = invoice([19, 119][n], None);
        let p = pay(&inv);
        node.set(|c| {
            lose(c);
            c.mining = Mining::Never;
        });
        let got = settle(&mut kit, &inv, p.v2()).await;
        let hash = keccak256(&node.sent()[0]).to_string();
        assert_eq!(
            got,
            Ok(S::Pending(hash.clone())),
            "{how}: money may have moved: never a failure"
        );
        assert!(kit.kv_get(&p.nonce_key()).await.is_some(), "{how}");
        let state = kv_json(
            &kit,
            &format!("signer/eip155:31337/{:#x}/nonce", facilitator()),
        )
        .await
        .unwrap();
        assert_eq!(
            state["pending"],
            json!([TX_COUNT]),
            "{how}: a possibly broadcast nonce stays held"
        );

        node.set(|c| {
            c.lose_send_answer = false;
            c.send_error_after_taking = None;
            c.mining = Mining::Succeed;
        });
        assert_eq!(
            settle(&mut kit, &inv, p.v2()).await,
            Ok(S::Settled(hash)),
            "{how}"
        );
        assert_eq!(node.sent().len(), 1, "{how}");
    }
}

#[tokio::test]
async fn a_settlement_the_node_lost_is_sent_again_with_identical_bytes_and_then_confirmed() {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[("settlement_timeout_ms", "300")]).await;
    let inv = invoice(22, None);
    let p = pay(&inv);
    let key = p.nonce_key();
    node.set(|c| c.mining = Mining::Never);
    let got = settle(&mut kit, &inv, p.v2()).await;
    let first = node.sent()[0].clone();
    let hash = keccak256(&first).to_string();
    assert_eq!(got, Ok(S::Pending(hash.clone())));
    let record = kv_json(&kit, &key).await.unwrap();
    assert_eq!(
        record["raw_transaction"],
        format!("0x{}", hex::encode(&first))
    );

    // The node restarts and forgets it. A replay moments after the send leaves it to that send.
    node.forget();
    node.set(|c| c.mining = Mining::Succeed);
    assert_eq!(
        settle(&mut kit, &inv, p.v2()).await,
        Ok(S::Pending(hash.clone()))
    );
    assert_eq!(node.sent().len(), 1);

    // Later: the same bytes again. A refusal ("nonce too low") is an answer that changes nothing.
    backdate(&kit, &key, 60).await;
    node.set(|c| c.refuse_send = true);
    assert_eq!(
        settle(&mut kit, &inv, p.v2()).await,
        Ok(S::Pending(hash.clone()))
    );
    assert_eq!(kv_json(&kit, &key).await.unwrap()["status"], "submitted");
    assert_eq!(node.sent().len(), 1);

    node.set(|c| c.refuse_send = false);
    assert_eq!(
        settle(&mut kit, &inv, p.v2()).await,
        Ok(S::Settled(hash.clone()))
    );
    let sent = node.sent();
    assert_eq!(sent.len(), 2);
    assert_eq!(
        sent[1], first,
        "the identical transaction, not a second settlement"
    );
    let record = kv_json(&kit, &key).await.unwrap();
    assert_eq!(record["status"], "confirmed");
    assert_eq!(record["transaction"], hash);
    assert!(rpc_methods(&kit).contains(&"eth_getTransactionByHash".to_owned()));
}

/// A settlement left pending, then forgotten by the node while another transaction used its account nonce.
async fn unmineable_settlement(kit: &mut Kit, node: &Node, inv: &Invoice, p: &Pay) {
    node.set(|c| c.mining = Mining::Never);
    let got = settle(kit, inv, p.v2()).await;
    let hash = keccak256(&node.sent()[0]).to_string();
    assert_eq!(got, Ok(S::Pending(hash)));
    node.forget();
    node.set(|c| {
        c.mined_count = Some(TX_COUNT + 1);
        c.pending_count = Some(TX_COUNT + 1);
        c.mining = Mining::Succeed;
    });
}

#[tokio::test]
async fn a_settlement_whose_nonce_another_transaction_used_fails_if_its_authorization_is_unused() {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[("settlement_timeout_ms", "300")]).await;
    let inv = invoice(23, None);
    let p = pay(&inv);
    unmineable_settlement(&mut kit, &node, &inv, &p).await;
    let hash = keccak256(&node.sent()[0]).to_string();

    // A used nonce is final, and the authorization shows no money moved; but our transaction published the
    // authorization, which anyone may still execute until its validBefore: pending until then.
    let failed = Err(E::PaymentRequired(
        "invalid_exact_evm_transaction_failed".into(),
    ));
    assert_eq!(
        settle(&mut kit, &inv, p.v2()).await,
        Ok(S::Pending(hash.clone()))
    );
    assert_eq!(
        kv_json(&kit, &p.nonce_key()).await.unwrap()["status"],
        "submitted"
    );
    node.set(|c| c.block_time = Some(now() + 1_000));
    assert_eq!(settle(&mut kit, &inv, p.v2()).await, failed);
    let record = kv_json(&kit, &p.nonce_key()).await.unwrap();
    assert_eq!(record["status"], "failed");
    assert_eq!(record["reason"], "invalid_exact_evm_transaction_failed");
    assert_eq!(record["transaction"], hash);
    assert_eq!(node.sent().len(), 1, "never sent again");
    // authorizationState was read at the block whose count showed the nonce used (0x20), not at `latest`,
    // then at the latest block past validBefore (0x11 on this node).
    let state_reads: Vec<Value> = rpc_calls(&kit)
        .into_iter()
        .filter(|r| {
            r["method"] == "eth_call"
                && r["params"][0]["data"]
                    .as_str()
                    .unwrap()
                    .starts_with("0xe94a0102")
        })
        .collect();
    let at: Vec<&Value> = state_reads.iter().map(|r| &r["params"][1]).collect();
    assert_eq!(at[at.len() - 2..], [&json!("0x20"), &json!("0x11")]);
    assert_eq!(settle(&mut kit, &inv, p.v2()).await, failed);

    // The invoice is open to a new payment, sent with the next account nonce.
    let q = pay(&inv);
    let got = settle(&mut kit, &inv, q.v2()).await;
    let sent = node.sent();
    assert_eq!(sent.len(), 2);
    assert_eq!(got, Ok(S::Settled(keccak256(&sent[1]).to_string())));
    assert_eq!(decode_tx(&sent[1]).tx().nonce, TX_COUNT + 1);
    assert_eq!(
        kv_json(&kit, &q.nonce_key()).await.unwrap()["status"],
        "confirmed"
    );
    assert_eq!(
        kv_json(&kit, &p.nonce_key()).await.unwrap()["status"],
        "failed"
    );
}

#[tokio::test]
async fn a_settlement_whose_nonce_another_transaction_used_stays_pending_if_its_authorization_was_used()
 {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[("settlement_timeout_ms", "300")]).await;
    let inv = invoice(24, None);
    let p = pay(&inv);
    unmineable_settlement(&mut kit, &node, &inv, &p).await;
    let hash = keccak256(&node.sent()[0]).to_string();

    // The money moved, by a transaction no log names: never a failure, never a second attempt.
    node.set(|c| c.nonce_used = true);
    // Another payment cannot take the invoice meanwhile: its payment record stays held by this (resumable)
    // payment (`invoices::another_payment_never_takes_an_invoice_held_or_settled_by_one`); the verifier keeps
    // no per-invoice settlement of its own.
    stays_pending(&mut kit, &node, &inv, &p, &hash).await;
}

/// Our settlement can never be mined (its account nonce went to another of our transactions) and its
/// authorization was executed meanwhile by the payer's transaction, found through the token's log between the
/// block our transaction was prepared at and the head: settled by it.
#[tokio::test]
async fn an_unmineable_settlement_front_run_by_its_payer_is_settled_by_the_payers_transaction() {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[("settlement_timeout_ms", "300")]).await;
    let inv = invoice(38, None);
    let p = pay(&inv);
    unmineable_settlement(&mut kit, &node, &inv, &p).await;
    let record = kv_json(&kit, &p.nonce_key()).await.unwrap();
    assert_eq!(record["sent_at_block"], 0x11, "{record}");
    let theirs = B256::repeat_byte(0xf5);
    used_by(
        &node,
        &p,
        theirs,
        "AuthorizationUsed",
        Some(transfer_log(p.auth.from, p.auth.to, PRICE)),
    );
    node.set(|c| c.nonce_used = true);
    for _ in 0..2 {
        assert_eq!(
            settle(&mut kit, &inv, p.v2()).await,
            Ok(S::Settled(theirs.to_string()))
        );
    }
    let record = kv_json(&kit, &p.nonce_key()).await.unwrap();
    assert_eq!(record["status"], "confirmed");
    assert_eq!(record["executed_by"], theirs.to_string());
    assert_eq!(node.sent().len(), 1, "nothing signed again");
}

#[tokio::test]
async fn the_facilitator_api_reports_a_settlement_that_can_never_be_mined_as_failed_once() {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[("settlement_timeout_ms", "300")]).await;
    let p = pay(&invoice(27, None));
    node.set(|c| c.mining = Mining::Never);
    let pending = facilitator_settle(&mut kit, p.facilitator_body())
        .await
        .unwrap();
    let hash = keccak256(&node.sent()[0]).to_string();
    assert_eq!(pending["errorReason"], "settlement_pending");
    node.forget();
    node.set(|c| {
        c.mined_count = Some(TX_COUNT + 1);
        c.mining = Mining::Succeed;
    });
    // Its published authorization may still be executed until validBefore: pending until then.
    let still = facilitator_settle(&mut kit, p.facilitator_body())
        .await
        .unwrap();
    assert_eq!(still["errorReason"], "settlement_pending", "{still}");
    node.set(|c| c.block_time = Some(now() + 1_000));
    for _ in 0..2 {
        let failed = facilitator_settle(&mut kit, p.facilitator_body())
            .await
            .unwrap();
        assert_eq!(failed["success"], false);
        assert_eq!(
            failed["errorReason"],
            "invalid_exact_evm_transaction_failed"
        );
        assert_eq!(failed["transaction"], hash);
    }
    let record = kv_json(&kit, &p.nonce_key()).await.unwrap();
    assert_eq!(record["status"], "failed");
    assert_eq!(node.sent().len(), 1);
}

#[tokio::test]
async fn a_reserved_nonce_whose_send_never_reached_the_node_goes_out_before_the_next_transaction() {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[("settlement_timeout_ms", "300")]).await;
    let first_inv = invoice(25, None);
    let first = pay(&first_inv);

    // The send is lost on its way (as when the request is cancelled after recording its transaction).
    node.set(|c| c.drop_send = true);
    let got = settle(&mut kit, &first_inv, first.v2()).await;
    assert!(node.sent().is_empty());
    let record = kv_json(&kit, &first.nonce_key()).await.unwrap();
    let lost = hex::decode(record["raw_transaction"].as_str().unwrap()).unwrap();
    let lost_hash = keccak256(&lost).to_string();
    assert_eq!(got, Ok(S::Pending(lost_hash.clone())));
    assert_eq!(record["transaction"], lost_hash);
    assert_eq!(decode_tx(&lost).tx().nonce, TX_COUNT);
    let nonces = kv_json(
        &kit,
        &format!("signer/eip155:31337/{:#x}/nonce", facilitator()),
    )
    .await
    .unwrap();
    assert_eq!(
        nonces["owners"],
        json!({TX_COUNT.to_string(): first.nonce_key()})
    );

    // The next settlement, a minute later, first gives the node the nonce it is missing, then its own.
    backdate(&kit, &first.nonce_key(), 60).await;
    node.set(|c| c.drop_send = false);
    let next_inv = invoice(26, None);
    let got = settle(&mut kit, &next_inv, pay(&next_inv).v2()).await;
    let sent = node.sent();
    assert_eq!(sent.len(), 2);
    assert_eq!(
        sent[0], lost,
        "the identical bytes of the lost transaction, first"
    );
    assert_eq!(decode_tx(&sent[1]).tx().nonce, TX_COUNT + 1);
    assert_eq!(got, Ok(S::Settled(keccak256(&sent[1]).to_string())));

    // The first settlement confirms on its replay, without another send.
    assert_eq!(
        settle(&mut kit, &first_inv, first.v2()).await,
        Ok(S::Settled(lost_hash))
    );
    assert_eq!(node.sent().len(), 2);
}

#[tokio::test]
async fn an_abandoned_claim_is_taken_over_and_a_live_one_is_left_alone() {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[]).await;
    let inv = invoice(21, None);
    let p = pay(&inv);
    // What a settle cancelled between its claim and its signature leaves behind.
    let claimed = |at: u64| {
        json!({"status": "claimed", "network": "eip155:31337", "payer": payer().to_checksum(None),
               "claim": p.nonce_key(), "holder": "gone", "invoice": inv.invoice_id, "claimed_at": at,
               "updated_at": at})
        .to_string()
    };
    kit.kv_put(&p.nonce_key(), claimed(now()).as_bytes()).await;
    assert_eq!(
        settle(&mut kit, &inv, p.v2()).await,
        Err(E::Conflict(
            "already settled: settlement in progress".into()
        ))
    );
    assert!(node.sent().is_empty());

    kit.kv_put(&p.nonce_key(), claimed(now() - 600).as_bytes())
        .await;
    let got = settle(&mut kit, &inv, p.v2()).await;
    let sent = node.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(got, Ok(S::Settled(keccak256(&sent[0]).to_string())));
    let record = kv_json(&kit, &p.nonce_key()).await.unwrap();
    assert_eq!(record["status"], "confirmed");
    assert_ne!(record["holder"], "gone");
}

/// Without a key nothing settles: an invoice's payment is refused at `verify` already, before its order
/// (`an_exact_payment_nobody_here_can_settle_is_refused_before_its_order`; it verified before, and the
/// gateway ordered a profile to give it back), and at `settle`; `/supported` names no signer.
#[tokio::test]
async fn without_a_key_settlement_is_unavailable() {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[("facilitator_private_key", "")]).await;
    let inv = invoice(16, None);
    let p = pay(&inv);
    assert!(matches!(
        verify(&mut kit, &inv, p.v2()).await,
        Err(E::Unavailable(_))
    ));
    let got = settle(&mut kit, &inv, p.v2()).await;
    assert!(
        matches!(&got, Err(E::Unavailable(m)) if m.contains("facilitator_private_key")),
        "{got:?}"
    );
    assert!(node.sent().is_empty());
    let supported: Value = serde_json::from_str(
        &kit.call(async |a, g| g.verifier().call_supported(a).await)
            .await
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(supported["signers"], json!({}));
}

#[tokio::test]
async fn the_private_key_never_leaves_the_component() {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[]).await;
    let inv = invoice(17, None);
    let mut errors = Vec::new();
    let p = pay(&inv);
    let S::Settled(tx) = settle(&mut kit, &inv, p.v2()).await.unwrap() else {
        panic!("settled");
    };
    let paid = paid_invoice(&inv, &tx);
    errors.push(format!(
        "{:?}",
        settle(&mut kit, &paid, pay(&inv).v2()).await
    ));
    node.set(|c| c.refuse_send = true);
    let inv2 = invoice(18, None);
    errors.push(format!(
        "{:?}",
        settle(&mut kit, &inv2, pay(&inv2).v2()).await
    ));
    node.set(|c| c.down = true);
    errors.push(format!(
        "{:?}",
        settle(&mut kit, &inv2, pay(&inv2).v2()).await
    ));
    errors.push(format!(
        "{:?}",
        facilitator_settle(&mut kit, pay(&inv2).facilitator_body()).await
    ));

    // A malformed key is reported by name only.
    let bad_key = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b7869zz";
    let mut bad = self::kit(&node, &[("facilitator_private_key", bad_key)]).await;
    node.set(|c| c.down = false);
    let got = settle(&mut bad, &inv2, pay(&inv2).v2()).await;
    assert!(
        matches!(&got, Err(E::Internal(m)) if m.contains("facilitator_private_key")),
        "{got:?}"
    );
    errors.push(format!("{got:?}"));

    let secrets = [
        FACILITATOR_KEY[2..].to_owned(),
        bad_key[2..].to_owned(),
        // Any long enough fragment would do; these catch a key printed in pieces.
        FACILITATOR_KEY[2..18].to_owned(),
        FACILITATOR_KEY[50..].to_owned(),
    ];
    let mut haystacks = errors;
    for k in [&kit, &bad] {
        for r in k.requests() {
            haystacks.push(format!(
                "{} {} {:?} {}",
                r.method,
                r.uri,
                r.headers,
                String::from_utf8_lossy(&r.body)
            ));
        }
        for key in k.kv().keys().await.unwrap() {
            let value = k.kv().get(&key).await.unwrap().unwrap_or_default();
            haystacks.push(format!("{key} {}", String::from_utf8_lossy(&value)));
        }
    }
    assert!(haystacks.len() > 10);
    for h in &haystacks {
        let h = h.to_lowercase();
        for s in &secrets {
            assert!(!h.contains(s.as_str()), "secret fragment in {h}");
        }
    }
}

// ---- facilitator API -------------------------------------------------------------------------------------

#[tokio::test]
async fn facilitator_api_speaks_the_x402_json_shapes() {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[("settlement_timeout_ms", "300")]).await;
    let inv = invoice(20, None);
    let payer = payer().to_checksum(None);

    let supported: Value = serde_json::from_str(
        &kit.call(async |a, g| g.verifier().call_supported(a).await)
            .await
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        supported,
        json!({"kinds": [{"x402Version": 2, "scheme": "exact", "network": "eip155:31337"},
                         {"x402Version": 1, "scheme": "exact", "network": "anvil"}],
               "extensions": [], "signers": {"eip155:*": [facilitator().to_checksum(None)]}})
    );

    let p = pay(&inv);
    assert_eq!(
        facilitator_verify(&mut kit, p.facilitator_body()).await,
        Ok(json!({"isValid": true, "payer": payer}))
    );
    let mut wrong = pay(&inv);
    wrong.auth.to = addr(STRANGER);
    assert_eq!(
        facilitator_verify(&mut kit, wrong.facilitator_body()).await,
        Ok(
            json!({"isValid": false, "invalidReason": "invalid_exact_evm_recipient_mismatch",
                  "payer": payer})
        )
    );
    // Requirements from the request: a domain that is not the token's is named as such (signed for that
    // domain; signed for ours, the signature fails first, as in the references).
    let mut domain = pay(&inv);
    domain.accepted.extra = Some(esim402_core::x402::wire::Extra::eip712("USDC", "2"));
    let v = facilitator_verify(&mut kit, domain.facilitator_body())
        .await
        .unwrap();
    assert_eq!(v["invalidReason"], "invalid_exact_evm_signature");
    domain.domain.name = "USDC".into();
    let v = facilitator_verify(&mut kit, domain.facilitator_body())
        .await
        .unwrap();
    assert_eq!(v["invalidReason"], "invalid_exact_evm_token_name_mismatch");
    let mut base = pay(&inv);
    base.accepted.network = "eip155:8453".into();
    let v = facilitator_verify(&mut kit, base.facilitator_body())
        .await
        .unwrap();
    assert_eq!(
        (v["isValid"].clone(), v["invalidReason"].clone()),
        (json!(false), json!("invalid_network"))
    );
    let v3 = p
        .facilitator_body()
        .replacen("\"x402Version\":2", "\"x402Version\":3", 1);
    let v = facilitator_verify(&mut kit, v3).await.unwrap();
    assert_eq!(v["invalidReason"], "invalid_x402_version");
    assert!(matches!(
        facilitator_verify(&mut kit, "{not json".into()).await,
        Err(E::InvalidInput { field, .. }) if field == "body"
    ));
    assert!(matches!(
        facilitator_settle(&mut kit, r#"{"x402Version":2}"#.into()).await,
        Err(E::InvalidInput { field, .. }) if field == "body"
    ));

    // Settle: success once; a repeat is a terminal duplicate (reference §5), with no second broadcast.
    let s = facilitator_settle(&mut kit, p.facilitator_body())
        .await
        .unwrap();
    let hash = keccak256(&node.sent()[0]).to_string();
    assert_eq!(
        s,
        json!({"success": true, "payer": payer, "transaction": hash, "network": "eip155:31337"})
    );
    let again = facilitator_settle(&mut kit, p.facilitator_body())
        .await
        .unwrap();
    assert_eq!(again["success"], false);
    assert_eq!(again["errorReason"], "invalid_exact_evm_nonce_already_used");
    assert_eq!(again["transaction"], hash);
    let bad = facilitator_settle(&mut kit, wrong.facilitator_body())
        .await
        .unwrap();
    assert_eq!(
        bad,
        json!({"success": false, "errorReason": "invalid_exact_evm_recipient_mismatch",
               "payer": payer, "transaction": "", "network": "eip155:31337"})
    );
    assert_eq!(node.sent().len(), 1);

    // Pending, then reconciled against the recorded hash: success reported once.
    node.set(|c| c.mining = Mining::Never);
    let q = pay(&inv);
    let pending = facilitator_settle(&mut kit, q.facilitator_body())
        .await
        .unwrap();
    let hash = keccak256(&node.sent()[1]).to_string();
    assert_eq!(pending["success"], false);
    assert_eq!(pending["errorReason"], "settlement_pending");
    assert_eq!(pending["transaction"], hash);
    node.set(|c| c.mining = Mining::Succeed);
    let done = facilitator_settle(&mut kit, q.facilitator_body())
        .await
        .unwrap();
    assert_eq!(done["success"], true, "{done}");
    assert_eq!(done["transaction"], hash);
    let dup = facilitator_settle(&mut kit, q.facilitator_body())
        .await
        .unwrap();
    assert_eq!(dup["errorReason"], "invalid_exact_evm_nonce_already_used");
    assert_eq!(node.sent().len(), 2);

    // An authorization settled for an invoice cannot be settled again through the API.
    let r = pay(&inv);
    settle(&mut kit, &inv, r.v2()).await.unwrap();
    let dup = facilitator_settle(&mut kit, r.facilitator_body())
        .await
        .unwrap();
    assert_eq!(dup["errorReason"], "invalid_exact_evm_nonce_already_used");
    assert_eq!(node.sent().len(), 3);
}

/// A facilitator body for `p` with the JSON pointer `path` removed.
fn body_without(p: &Pay, path: &str) -> String {
    let mut body: Value = serde_json::from_str(&p.facilitator_body()).unwrap();
    let (parent, field) = path.rsplit_once('/').unwrap();
    body.pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .unwrap()
        .remove(field)
        .unwrap();
    body.to_string()
}

#[tokio::test]
async fn facilitator_api_answers_payload_gaps_and_unknown_assets_like_the_references() {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[]).await;
    let inv = invoice(21, None);
    let payer = payer().to_checksum(None);
    // A payload lacking a field is a verdict (HTTP 200), not bad input: the check that reads the field fails.
    let p = pay(&inv);
    for (path, reason) in [
        (
            "/paymentPayload/payload/signature",
            "invalid_exact_evm_signature",
        ),
        (
            "/paymentPayload/payload/authorization",
            "invalid_exact_evm_recipient_mismatch",
        ),
        (
            "/paymentPayload/payload/authorization/from",
            "invalid_exact_evm_signature",
        ),
        (
            "/paymentPayload/payload/authorization/nonce",
            "invalid_exact_evm_signature",
        ),
        (
            "/paymentPayload/payload/authorization/value",
            "invalid_payload",
        ),
        ("/paymentPayload/accepted", "invalid_payload"),
        ("/paymentPayload/x402Version", "invalid_payload"),
    ] {
        let body = body_without(&p, path);
        let v = facilitator_verify(&mut kit, body.clone()).await.unwrap();
        assert_eq!(
            (v["isValid"].clone(), v["invalidReason"].clone()),
            (json!(false), json!(reason)),
            "{path}: {v}"
        );
        let s = facilitator_settle(&mut kit, body).await.unwrap();
        assert_eq!(
            (
                s["success"].clone(),
                s["errorReason"].clone(),
                s["network"].clone()
            ),
            (json!(false), json!(reason), json!("eip155:31337")),
            "{path}: {s}"
        );
    }
    // The shape problem is named.
    let v = facilitator_verify(&mut kit, body_without(&p, "/paymentPayload/accepted"))
        .await
        .unwrap();
    assert!(
        v["invalidMessage"].as_str().unwrap().contains("accepted"),
        "{v}"
    );
    assert_eq!(v["payer"], payer);
    assert!(node.sent().is_empty());

    // An asset that is not our USDC: without code, the references' `asset_not_deployed_contract` (only its code
    // is asked for); nothing is simulated or sent.
    let mut foreign = pay(&inv);
    foreign.accepted.asset = STRANGER.into();
    foreign.domain.verifying_contract = addr(STRANGER);
    let before = rpc_calls(&kit).len();
    let v = facilitator_verify(&mut kit, foreign.facilitator_body())
        .await
        .unwrap();
    assert_eq!(
        v,
        json!({"isValid": false, "invalidReason": "asset_not_deployed_contract", "payer": payer})
    );
    let asked: Vec<String> = rpc_methods(&kit)[before..].to_vec();
    assert!(
        asked
            .iter()
            .all(|m| m == "eth_getCode" || m == "eth_chainId"),
        "{asked:?}"
    );
    let s = facilitator_settle(&mut kit, foreign.facilitator_body())
        .await
        .unwrap();
    assert_eq!(s["errorReason"], "asset_not_deployed_contract");
    assert!(
        kit.kv_get(&foreign.nonce_key()).await.is_none(),
        "nothing claimed"
    );
    assert!(node.sent().is_empty());

    // A failed simulation's revert comes along as `invalidMessage`, as the references send it.
    node.set(|c| c.simulation_ok = false);
    let v = facilitator_verify(&mut kit, pay(&inv).facilitator_body())
        .await
        .unwrap();
    assert_eq!(
        v["invalidReason"],
        "invalid_exact_evm_transaction_simulation_failed"
    );
    assert!(
        v["invalidMessage"]
            .as_str()
            .unwrap()
            .contains("invalid signature"),
        "{v}"
    );
}

#[tokio::test]
async fn a_settlement_without_its_transfer_event_is_refused_with_the_references_reason() {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[]).await;
    let inv = invoice(22, None);
    node.set(|c| c.hide_transfer_log = true);
    // Through the facilitator API: mined with status 1, but no Transfer(from, to, value) of the token.
    let p = pay(&inv);
    let s = facilitator_settle(&mut kit, p.facilitator_body())
        .await
        .unwrap();
    let hash = keccak256(&node.sent()[0]).to_string();
    assert_eq!(
        (
            s["success"].clone(),
            s["errorReason"].clone(),
            s["transaction"].clone()
        ),
        (
            json!(false),
            json!("invalid_exact_evm_transfer_event_mismatch"),
            json!(hash)
        )
    );
    // Terminal: the record says why, and a repeat sends nothing.
    let record = kv_json(&kit, &p.nonce_key()).await.unwrap();
    assert_eq!(
        (record["status"].clone(), record["reason"].clone()),
        (
            json!("failed"),
            json!("invalid_exact_evm_transfer_event_mismatch")
        )
    );
    let again = facilitator_settle(&mut kit, p.facilitator_body())
        .await
        .unwrap();
    assert_eq!(
        again["errorReason"],
        "invalid_exact_evm_transfer_event_mismatch"
    );
    assert_eq!(node.sent().len(), 1);
    // For an invoice: refused with the same reason, and the invoice is not paid by it.
    let q = pay(&inv);
    assert_eq!(
        settle(&mut kit, &inv, q.v2()).await,
        Err(E::PaymentRequired(
            "invalid_exact_evm_transfer_event_mismatch".into()
        ))
    );
    // A settlement that was pending is reconciled against what its bytes on record execute.
    node.set(|c| c.mining = Mining::Never);
    let r = pay(&inv);
    let pending = facilitator_settle(&mut kit, r.facilitator_body())
        .await
        .unwrap();
    assert_eq!(pending["errorReason"], "settlement_pending");
    node.set(|c| c.mining = Mining::Succeed);
    let done = facilitator_settle(&mut kit, r.facilitator_body())
        .await
        .unwrap();
    assert_eq!(
        done["errorReason"], "invalid_exact_evm_transfer_event_mismatch",
        "{done}"
    );
}

// ---- tx-hash proofs --------------------------------------------------------------------------------------

#[tokio::test]
async fn tx_hash_proofs_pay_one_invoice_once() {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[]).await;
    let inv = invoice(30, Some(payer()));
    let paid = keccak256("a transfer the payer sent");
    let short = keccak256("an underpaying transfer");
    let unmined = keccak256("not mined yet");
    node.set(|c| {
        c.receipts.insert(
            paid,
            receipt(paid, true, vec![transfer_log(payer(), addr(PAY_TO), PRICE)]),
        );
        c.receipts.insert(
            short,
            receipt(
                short,
                true,
                vec![transfer_log(payer(), addr(PAY_TO), PRICE - 1)],
            ),
        );
    });
    let proof_for = |inv: &Invoice, h: B256| signed_proof(inv, h, &payer_key());
    let proof = |h: B256| proof_for(&inv, h);

    assert_eq!(
        verify(&mut kit, &inv, proof(paid)).await,
        Ok(payer().to_checksum(None))
    );
    assert_eq!(
        verify(&mut kit, &inv, proof(short)).await,
        Err(E::PaymentRequired("insufficient_funds".into()))
    );
    assert_eq!(
        settle(&mut kit, &inv, proof(unmined)).await,
        Ok(S::Pending(unmined.to_string()))
    );
    assert_eq!(
        settle(&mut kit, &inv, proof(paid)).await,
        Ok(S::Settled(paid.to_string()))
    );
    // The transaction is claimed for this invoice (its settlement record).
    let record = kv_json(&kit, &format!("txhash/{paid}")).await.unwrap();
    assert_eq!(record["status"], "confirmed");
    assert_eq!(record["invoice"], inv.invoice_id.as_str());
    assert_eq!(record["transaction"], paid.to_string());
    // A repeat (also with the invoice as it reads once paid) answers the same; no other invoice can use it.
    let inv_paid = paid_invoice(&inv, &paid.to_string());
    assert_eq!(
        settle(&mut kit, &inv_paid, proof(paid)).await,
        Ok(S::Settled(paid.to_string()))
    );
    let other = invoice(31, Some(payer()));
    assert!(matches!(
        verify(&mut kit, &other, proof_for(&other, paid)).await,
        Err(E::Conflict(m)) if m.starts_with("already settled")
    ));
    assert!(matches!(
        settle(&mut kit, &other, proof_for(&other, paid)).await,
        Err(E::Conflict(m)) if m.starts_with("already settled")
    ));
    let anonymous = invoice(32, None);
    assert!(matches!(
        verify(&mut kit, &anonymous, proof_for(&anonymous, paid)).await,
        Err(E::InvalidInput { field, .. }) if field == "payer"
    ));
    let unsigned = |hash: &str, signature: &str| {
        types::PaymentProof::TxHash(types::TxHashProof {
            hash: hash.into(),
            signature: signature.into(),
        })
    };
    let good = match proof(paid) {
        types::PaymentProof::TxHash(p) => p.signature,
        other => panic!("{other:?}"),
    };
    assert!(matches!(
        verify(&mut kit, &inv, unsigned("0x1234", &good)).await,
        Err(E::InvalidInput { field, .. }) if field == "tx_hash"
    ));
    assert!(matches!(
        verify(&mut kit, &inv, unsigned(&paid.to_string(), "not hex")).await,
        Err(E::InvalidInput { field, .. }) if field == "X-Payment-Proof-Signature"
    ));
    assert!(node.sent().is_empty());
}

/// A tx-hash proof is the payer's to present: someone who saw the transfer (and names its sender as the
/// payer of their own invoice) cannot sign for it, and the payer's signature for one invoice does not carry
/// over to another. Refused before the chain is asked.
#[tokio::test]
async fn a_tx_hash_proof_needs_the_payers_signature_for_this_invoice() {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[]).await;
    let transfer = keccak256("the payer's transfer, seen in the mempool");
    node.set(|c| {
        c.receipts.insert(
            transfer,
            receipt(
                transfer,
                true,
                vec![transfer_log(payer(), addr(PAY_TO), PRICE)],
            ),
        );
    });
    let thiefs = invoice(33, Some(payer()));
    let thief_key = SigningKey::from_slice(&[9; 32]).unwrap();
    let someone_elses = invoice(34, Some(payer()));
    for (how, proof) in [
        ("another key", signed_proof(&thiefs, transfer, &thief_key)),
        (
            "the payer's signature for another invoice",
            signed_proof(&someone_elses, transfer, &payer_key()),
        ),
    ] {
        for got in [
            verify(&mut kit, &thiefs, proof.clone()).await.map(|_| ()),
            settle(&mut kit, &thiefs, proof).await.map(|_| ()),
        ] {
            assert_eq!(
                got,
                Err(E::PaymentRequired("invalid_exact_evm_signature".into())),
                "{how}"
            );
        }
    }
    assert!(kit.kv_get(&format!("txhash/{transfer}")).await.is_none());
    // The payer's own proof still pays its invoice.
    let own = invoice(35, Some(payer()));
    assert_eq!(
        settle(&mut kit, &own, signed_proof(&own, transfer, &payer_key())).await,
        Ok(S::Settled(transfer.to_string()))
    );
}

/// With two networks enabled, a transfer on the second (the invoice offers both) is found there: it pays the
/// invoice, is recorded on that network, and `settle` given what `verify` found asks only that chain. A
/// transfer on neither is `settlement_pending`; a chain that does not answer decides nothing (503), whatever
/// the other says. Before, only the invoice's first network was asked, and such a transfer was never found. A
/// third network enabled without an endpoint (allowed for all but the first) is skipped, not an error for
/// every proof.
#[tokio::test]
async fn a_tx_hash_proof_is_found_on_any_network_the_invoice_offers() {
    const RPC2: &str = "http://rpc2.test";
    const USDC2: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";
    let first = Arc::new(Node::default());
    let second = Arc::new(Node::default());
    second.set(|c| c.chain_id = 84532);
    let (n1, n2) = (first.clone(), second.clone());
    let mut kit = builder(&first)
        .var("payment_network", "eip155:31337,base-sepolia,polygon")
        .var("rpc_url_base_sepolia", RPC2)
        .allow(RPC2)
        .respond(move |r| {
            if r.uri.starts_with(RPC2) {
                n2.answer(r)
            } else {
                n1.answer(r)
            }
        })
        .build()
        .await
        .unwrap();
    let mut inv = invoice(36, Some(payer()));
    inv.accepts.push(PaymentOption {
        network: Network::parse("eip155:84532").unwrap(),
        asset: USDC2.into(),
        pay_to: PAY_TO.into(),
        amount_atomic: PRICE.to_string(),
        eip712_name: "USDC".into(),
        eip712_version: "2".into(),
    });
    inv.accepts.push(PaymentOption {
        network: Network::parse("eip155:137").unwrap(),
        asset: "0x3c499c542cEF5E3811e1192ce70d8cC03d5c3359".into(),
        pay_to: PAY_TO.into(),
        amount_atomic: PRICE.to_string(),
        eip712_name: "USD Coin".into(),
        eip712_version: "2".into(),
    });
    let transfer = keccak256("a transfer on base-sepolia");
    let mut log = transfer_log(payer(), addr(PAY_TO), PRICE);
    log["address"] = json!(USDC2);
    second.set(|c| {
        c.receipts
            .insert(transfer, receipt(transfer, true, vec![log]));
    });
    let proof = signed_proof(&inv, transfer, &payer_key());

    let (w, p) = (wit_invoice(&inv), proof.clone());
    let verified = kit
        .call(async move |a, g| g.verifier().call_verify(a, w, p).await)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(verified.network, "eip155:84532");
    // Settled on what verify found, with the first chain down: it is not asked.
    first.set(|c| c.down = true);
    let (w, p) = (wit_invoice(&inv), proof.clone());
    let settled = kit
        .call(async move |a, g| g.verifier().call_settle(a, w, p, verified).await)
        .await
        .unwrap()
        .map(S::from)
        .map_err(E::from);
    assert_eq!(settled, Ok(S::Settled(transfer.to_string())));
    let record = kv_json(&kit, &format!("txhash/{transfer}")).await.unwrap();
    assert_eq!(record["network"], "eip155:84532");
    assert_eq!(record["status"], "confirmed");

    // An invoice whose terms for the first network no longer match the deployment's token (its address
    // changed since): that network is skipped, not a final refusal, and the transfer on the second pays.
    let mut stale = invoice(38, Some(payer()));
    stale.accepts = inv.accepts.clone();
    stale.accepts[0].asset = "0x0000000000000000000000000000000000000001".into();
    let transfer2 = keccak256("another transfer on base-sepolia");
    let mut log2 = transfer_log(payer(), addr(PAY_TO), PRICE);
    log2["address"] = json!(USDC2);
    second.set(|c| {
        c.receipts
            .insert(transfer2, receipt(transfer2, true, vec![log2]));
    });
    let (w, p) = (
        wit_invoice(&stale),
        signed_proof(&stale, transfer2, &payer_key()),
    );
    let found = kit
        .call(async move |a, g| g.verifier().call_verify(a, w, p).await)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.network, "eip155:84532");

    // Not mined on either: pending. One chain down and the transfer on neither that answers: 503.
    first.set(|c| c.down = false);
    let unmined = keccak256("not mined anywhere yet");
    let other = invoice(37, Some(payer()));
    let mut other_inv = other.clone();
    other_inv.accepts = inv.accepts.clone();
    assert_eq!(
        verify(
            &mut kit,
            &other_inv,
            signed_proof(&other_inv, unmined, &payer_key())
        )
        .await,
        Err(E::PaymentRequired("settlement_pending".into()))
    );
    second.set(|c| c.down = true);
    assert!(matches!(
        verify(
            &mut kit,
            &other_inv,
            signed_proof(&other_inv, unmined, &payer_key())
        )
        .await,
        Err(E::Unavailable(_))
    ));

    // The first chain down, and the transfer on the second executes an authorization whose `exact` settlement
    // we sent: that chain's final 409 decides, not the other chain's 503.
    first.set(|c| c.down = true);
    second.set(|c| c.down = false);
    let nonce = B256::repeat_byte(0x5a);
    let executing = keccak256("a transfer executing a held authorization");
    let used = json!({"address": USDC2,
        "topics": [keccak256("AuthorizationUsed(address,bytes32)").to_string(),
                   payer().into_word().to_string(), nonce.to_string()],
        "data": "0x", "removed": false});
    let mut moved = transfer_log(payer(), addr(PAY_TO), PRICE);
    moved["address"] = json!(USDC2);
    second.set(|c| {
        c.receipts
            .insert(executing, receipt(executing, true, vec![used, moved]));
    });
    let held = format!("x402/nonce/eip155:84532/{:#x}/{nonce}", payer());
    let record = json!({"status": "submitted", "network": "eip155:84532", "payer": payer().to_string(),
        "claim": held, "holder": "h", "invoice": "inv_test.99", "claimed_at": 1, "transaction": null,
        "updated_at": 1});
    kit.kv_put(&held, record.to_string().as_bytes()).await;
    let mut third = invoice(39, Some(payer()));
    third.accepts = inv.accepts.clone();
    let got = verify(
        &mut kit,
        &third,
        signed_proof(&third, executing, &payer_key()),
    )
    .await;
    assert!(
        matches!(&got, Err(E::Conflict(m)) if m.contains("executes an authorization")),
        "{got:?}"
    );

    // An authorization an invoice's payment only holds (`verify` passed, its order on its way, no settlement
    // claimed yet), executed by its payer: that payment's money, not this invoice's. Before, only a claimed
    // settlement was looked for, so the payer could spend its own `exact` payment a second time as a tx-hash
    // proof while the first invoice's order ran. Held for a short transfer too (told so, not `insufficient_funds`).
    let held_nonce = B256::repeat_byte(0x5b);
    for (n, value) in [(40, PRICE), (41, PRICE / 2)] {
        let executing = keccak256(format!("a transfer executing a held authorization {n}"));
        let used = json!({"address": USDC2,
            "topics": [keccak256("AuthorizationUsed(address,bytes32)").to_string(),
                       payer().into_word().to_string(), held_nonce.to_string()],
            "data": "0x", "removed": false});
        let mut moved = transfer_log(payer(), addr(PAY_TO), value);
        moved["address"] = json!(USDC2);
        second.set(|c| {
            c.receipts
                .insert(executing, receipt(executing, true, vec![used, moved]));
        });
        let holds = esim402_core::store::keys::holds("eip155:84532", addr(USDC2), payer());
        let hold = json!({"held": [{"nonce": held_nonce.to_string(), "invoice": "0011223344556677",
            "value": PRICE, "until": now() + 300}]});
        kit.kv_put(&holds, hold.to_string().as_bytes()).await;
        let mut inv = invoice(n, Some(payer()));
        inv.accepts = third.accepts.clone();
        let got = verify(&mut kit, &inv, signed_proof(&inv, executing, &payer_key())).await;
        assert!(
            matches!(&got, Err(E::Conflict(m)) if m.contains("executes an authorization")),
            "{n}: {got:?}"
        );
    }
}

/// A tx-hash proof of `hash` for `inv`, signed with `key` (kernel `evm::proof_signature`).
fn signed_proof(inv: &Invoice, hash: B256, key: &SigningKey) -> types::PaymentProof {
    let digest = esim402_core::evm::proof_signature::digest(inv.invoice_id.as_str(), hash);
    let sig = esim402_core::x402::exact::sign_prehash(key, digest).unwrap();
    types::PaymentProof::TxHash(types::TxHashProof {
        hash: hash.to_string(),
        signature: format!("0x{}", hex::encode(sig)),
    })
}

/// `settle` given what `verify` returned for the same payload settles it without recovering the signature
/// again; what `verify` said about one payload does not vouch for another.
#[tokio::test]
async fn settle_takes_what_verify_established_only_for_the_same_payload() {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[]).await;
    let inv = invoice(12, None);
    let p = pay(&inv);
    let wit = wit_invoice(&inv);
    let (proof, w) = (p.v2(), wit.clone());
    let verified = kit
        .call(async move |a, g| g.verifier().call_verify(a, w, proof).await)
        .await
        .unwrap()
        .unwrap();
    assert!(!verified.proof.is_empty());
    assert_eq!(verified.payer, payer().to_checksum(None));

    // A different payload whose signature is not its `from`'s, presented with the genuine payload's record:
    // refused for its signature (the record vouches for nothing else), nothing claimed or sent.
    let mut forged = pay(&inv);
    forged.auth.from = facilitator();
    let (proof, w, v) = (forged.v2(), wit.clone(), verified.clone());
    let refused = kit
        .call(async move |a, g| g.verifier().call_settle(a, w, proof, v).await)
        .await
        .unwrap();
    assert_eq!(
        refused.map(S::from).map_err(E::from),
        Err(E::PaymentRequired("invalid_exact_evm_signature".into()))
    );
    assert!(node.sent().is_empty());

    let (proof, w) = (p.v2(), wit.clone());
    let got = kit
        .call(async move |a, g| g.verifier().call_settle(a, w, proof, verified).await)
        .await
        .unwrap()
        .map(S::from)
        .unwrap();
    assert_eq!(node.sent().len(), 1);
    assert_eq!(got, S::Settled(keccak256(&node.sent()[0]).to_string()));
}

/// A facilitator settlement left pending answers only its own authorization. Another authorization with the
/// same nonce (signed by the payer for another recipient and amount) and a copy of the nonce with a forged
/// signature are refused with `nonce_already_used`, and nothing more is sent; the pending payment itself, sent
/// again, gets its success. Before, both were answered from the record: `success:true` with the first
/// payment's transaction, for a payment that paid nobody.
#[tokio::test]
async fn a_pending_facilitator_settlement_answers_only_its_own_authorization() {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[("settlement_timeout_ms", "300")]).await;
    let inv = invoice(90, None);
    node.set(|c| c.mining = Mining::Never);
    let a = pay(&inv);
    let pending = facilitator_settle(&mut kit, a.facilitator_body())
        .await
        .unwrap();
    assert_eq!(pending["errorReason"], "settlement_pending", "{pending}");
    let hash_a = keccak256(&node.sent()[0]).to_string();
    node.set(|c| c.mining = Mining::Succeed);

    let mut b = pay(&inv);
    b.auth.nonce = a.auth.nonce;
    b.auth.to = addr(STRANGER);
    b.auth.value = U256::from(1_000_000u64);
    b.accepted.pay_to = STRANGER.into();
    b.accepted.amount = "1000000".into();
    let s = facilitator_settle(&mut kit, b.facilitator_body())
        .await
        .unwrap();
    assert_eq!(
        (&s["success"], &s["errorReason"]),
        (
            &json!(false),
            &json!("invalid_exact_evm_nonce_already_used")
        ),
        "{s}"
    );

    let mut forged = pay(&inv);
    forged.auth.nonce = a.auth.nonce;
    forged.auth.to = addr(STRANGER);
    forged.accepted.pay_to = STRANGER.into();
    let mut body: Value = serde_json::from_str(&forged.facilitator_body()).unwrap();
    body["paymentPayload"]["payload"]["signature"] = json!(format!("0x{}", "11".repeat(65)));
    let s = facilitator_settle(&mut kit, body.to_string())
        .await
        .unwrap();
    assert_eq!(s["success"], false, "{s}");

    let own = facilitator_settle(&mut kit, a.facilitator_body())
        .await
        .unwrap();
    assert_eq!(
        (&own["success"], &own["transaction"]),
        (&json!(true), &json!(hash_a)),
        "{own}"
    );
    assert_eq!(node.sent().len(), 1, "nothing else sent");
}

/// Two settles of one payment at once (a client's retry, or a second resource-server instance): the first
/// broadcasts and waits, the second reconciles the same transaction and records its receipt first. One of them
/// reports `success:true`, the other `nonce_already_used`. Before, the broadcasting one answered a success
/// whoever recorded it: two successes for one settlement (3 of 3 rounds in the review).
#[tokio::test]
async fn two_settles_of_one_payment_report_one_success() {
    for round in 0..2u8 {
        let node = Arc::new(Node::default());
        let mut kit = kit(&node, &[("settlement_timeout_ms", "6000")]).await;
        let p = pay(&invoice(100 + round, None));
        node.set(|c| c.mining = Mining::Never);
        let body = p.facilitator_body();
        let n = node.clone();
        let (x, y) = kit
            .call(async move |a, g| {
                let one = g.verifier().call_facilitator_settle(a, body.clone());
                let two = async {
                    while n.sent().is_empty() {
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                    // Past the broadcaster's first polls, so that the second settle's receipt read comes first.
                    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
                    n.set(|c| c.mining = Mining::Succeed);
                    g.verifier().call_facilitator_settle(a, body.clone()).await
                };
                let (x, y) = esim402_core::join::join2(one, two).await;
                Ok((x?, y?))
            })
            .await
            .unwrap();
        let answers: Vec<Value> = [x.unwrap(), y.unwrap()]
            .iter()
            .map(|s| serde_json::from_str(s).unwrap())
            .collect();
        let successes = answers.iter().filter(|a| a["success"] == true).count();
        assert_eq!(successes, 1, "round {round}: {answers:?}");
        assert_eq!(node.sent().len(), 1);
    }
}

/// A zero-value payment to oneself, signed by a fresh unfunded key, costs the attacker nothing; it is refused
/// before the chain, and the facilitator sends nothing (before, each one was broadcast at the facilitator's gas).
#[tokio::test]
async fn payments_that_move_no_money_are_never_broadcast() {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[]).await;
    let inv = invoice(92, None);
    let me = payer().to_checksum(None);
    for (value, pay_to) in [(0u64, STRANGER.to_owned()), (420_000, me.clone()), (0, me)] {
        let mut z = pay(&inv);
        z.auth.to = addr(&pay_to);
        z.auth.value = U256::from(value);
        z.accepted.pay_to = pay_to;
        z.accepted.amount = value.to_string();
        let v = facilitator_verify(&mut kit, z.facilitator_body())
            .await
            .unwrap();
        assert_eq!(v["invalidReason"], "invalid_payment_requirements", "{v}");
        let s = facilitator_settle(&mut kit, z.facilitator_body())
            .await
            .unwrap();
        assert_eq!(s["errorReason"], "invalid_payment_requirements", "{s}");
    }
    assert!(node.sent().is_empty());
}

async fn release_hold(kit: &mut Kit, inv: &Invoice, proof: types::PaymentProof) -> Result<(), E> {
    let inv = wit_invoice(inv);
    kit.call(async move |a, g| g.verifier().call_release_hold(a, inv, proof).await)
        .await
        .unwrap()
        .map_err(E::from)
}

/// Balance holds (kernel `hold`) through the component: a balance of two payments verifies two at once and
/// refuses a third; a settled payment's hold is dropped once the chain (read at one block) shows its nonce
/// used; a released hold frees its share at once; one authorization pays one invoice at a time.
#[tokio::test]
async fn holds_bound_what_one_balance_verifies_at_once() {
    let node = Arc::new(Node::default());
    node.set(|c| c.balance = U256::from(2 * PRICE));
    let mut kit = kit(&node, &[]).await;
    let invoices: Vec<Invoice> = (60..65).map(|seed| invoice(seed, None)).collect();
    let pays: Vec<Pay> = invoices.iter().map(pay).collect();
    let want = payer().to_checksum(None);
    for i in 0..2 {
        assert_eq!(
            verify(&mut kit, &invoices[i], pays[i].v2()).await,
            Ok(want.clone())
        );
    }
    let before = kit.requests().len();
    assert_eq!(
        verify(&mut kit, &invoices[2], pays[2].v2()).await,
        Err(E::PaymentRequired("insufficient_funds".into()))
    );
    // The held nonces were read, with the balance, at one block, not at `latest`.
    let checks: Vec<Value> = kit.requests()[before..]
        .iter()
        .flat_map(|r| match r.json().unwrap() {
            Value::Array(calls) => calls,
            call => vec![call],
        })
        .filter(|c| c["method"] == "eth_call" && c["params"][1] != "latest")
        .collect();
    assert_eq!(checks.len(), 3, "balance and two nonces: {checks:?}");
    assert!(
        checks.iter().all(|c| c["params"][1] == qty(0x20)),
        "{checks:?}"
    );

    // The first settled (its nonce used) and the payer topped up by its price: the third fits once the
    // first's hold is dropped (with it, three prices would be held against two).
    node.set(|c| {
        c.used.insert(pays[0].auth.nonce);
    });
    assert_eq!(
        verify(&mut kit, &invoices[2], pays[2].v2()).await,
        Ok(want.clone())
    );
    // Held now: the second and the third; a check finds no room for a fourth.
    assert_eq!(
        verify(&mut kit, &invoices[3], pays[3].v2()).await,
        Err(E::PaymentRequired("insufficient_funds".into()))
    );
    // The second's order failed: released, its share is free at once.
    assert_eq!(
        release_hold(&mut kit, &invoices[1], pays[1].v2()).await,
        Ok(())
    );
    assert_eq!(
        verify(&mut kit, &invoices[3], pays[3].v2()).await,
        Ok(want.clone())
    );

    // The third's authorization, presented for another invoice while held.
    let mut stolen = pay(&invoices[4]);
    stolen.auth = pays[2].auth;
    assert_eq!(
        verify(&mut kit, &invoices[4], stolen.v2()).await,
        Err(E::Conflict(
            "the authorization is being used to pay another invoice".into()
        ))
    );
    assert!(node.sent().is_empty(), "verify never broadcasts");
}

// ---- node errors, fees and nonces of the sender -------------------------------------------------------------

/// A node error that is not a revert (a provider's rate limit, an internal error, a lagging node's missing
/// header) on the settlement's gas estimate is a fault (503, the payment resumable), never
/// `simulation_failed`: on that 402 the gateway would withdraw an order that was paid. Nothing is sent, every
/// claim is released, and the same payment settles once the node answers.
#[tokio::test]
async fn a_rate_limited_gas_estimate_is_a_fault_not_a_failed_simulation() {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[]).await;
    let inv = invoice(110, None);
    let p = pay(&inv);
    for (code, message) in [
        (-32005, "rate limited"),
        (-32603, "internal error"),
        (-32000, "header not found"),
    ] {
        node.set(|c| c.errors = vec![("eth_estimateGas", code, message)]);
        let got = settle(&mut kit, &inv, p.v2()).await;
        assert!(
            matches!(&got, Err(E::Unavailable(m)) if m.contains(message)),
            "{code} {message}: {got:?}"
        );
        assert!(node.sent().is_empty());
        assert!(
            kit.kv_get(&p.nonce_key()).await.is_none(),
            "claims released"
        );
    }
    node.set(|c| c.errors.clear());
    let got = settle(&mut kit, &inv, p.v2()).await.unwrap();
    assert_eq!(got, S::Settled(keccak256(&node.sent()[0]).to_string()));
}

/// The same for the payment's chain reads: a node error on `balanceOf` is no zero balance, on
/// `authorizationState` no "not an EIP-3009 token", on the simulation no failed simulation. A revert still is
/// an answer about the token.
#[tokio::test]
async fn node_errors_on_the_payment_reads_are_faults_and_only_reverts_are_verdicts() {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[]).await;
    let inv = invoice(111, None);
    for (call, code, message) in [
        ("eth_call 70a08231", -32005, "rate limited"),
        ("eth_call e94a0102", -32603, "internal error"),
        ("eth_call e3ee160e", -32000, "header not found"),
    ] {
        node.set(|c| c.errors = vec![(call, code, message)]);
        let got = verify(&mut kit, &inv, pay(&inv).v2()).await;
        assert!(
            matches!(&got, Err(E::Unavailable(m)) if m.contains(message)),
            "{call}: {got:?}"
        );
    }
    node.set(|c| c.errors = vec![("eth_call e94a0102", 3, "execution reverted")]);
    let got = verify(&mut kit, &inv, pay(&inv).v2()).await;
    assert!(matches!(&got, Err(E::PaymentRequired(_))), "{got:?}");
    node.set(|c| c.errors.clear());
    assert_eq!(
        verify(&mut kit, &inv, pay(&inv).v2()).await,
        Ok(payer().to_checksum(None))
    );
}

/// A latest block the node cannot read leaves the base fee unknown: the send fails as a fault instead of
/// signing a flat 1 gwei fee cap that may sit below the chain's base fee (the transaction would wait unmined,
/// holding its nonce and every later one). Once the block reads, the cap is twice its base fee plus the tip.
#[tokio::test]
async fn an_unreadable_base_fee_fails_the_send_as_a_fault() {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[]).await;
    let inv = invoice(112, None);
    let p = pay(&inv);
    node.set(|c| c.errors = vec![("eth_getBlockByNumber", -32000, "header not found")]);
    let got = settle(&mut kit, &inv, p.v2()).await;
    assert!(
        matches!(&got, Err(E::Unavailable(m)) if m.contains("base fee")),
        "{got:?}"
    );
    assert!(node.sent().is_empty());
    assert!(
        kit.kv_get(&p.nonce_key()).await.is_none(),
        "claims released"
    );

    node.set(|c| c.errors.clear());
    settle(&mut kit, &inv, p.v2()).await.unwrap();
    let sent = decode_tx(&node.sent()[0]);
    assert_eq!(sent.tx().max_fee_per_gas, 2 * BASE_FEE + TIP);
}

/// A confirmed settlement's nonce is used, not orphaned: a lagging node whose pending count is still at it
/// must not make the next send release it (its record names a transaction there, whatever its status) and
/// hand it to another transaction.
#[tokio::test]
async fn a_confirmed_settlements_nonce_is_never_released_as_an_orphan() {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[]).await;
    let nonce_state = format!("signer/eip155:31337/{:#x}/nonce", facilitator());
    let first_inv = invoice(113, None);
    let first = pay(&first_inv);
    let hash = keccak256(&{
        settle(&mut kit, &first_inv, first.v2()).await.unwrap();
        node.sent()[0].clone()
    });
    let record = kv_json(&kit, &first.nonce_key()).await.unwrap();
    assert_eq!(
        (record["status"].as_str(), record["transaction"].as_str()),
        (Some("confirmed"), Some(hash.to_string().as_str()))
    );
    assert_eq!(record["signer_nonce"], json!(TX_COUNT));
    // The node still counts TX_COUNT, mined and pending; the reservation is long past the orphan age.
    let mut state = kv_json(&kit, &nonce_state).await.unwrap();
    assert_eq!(
        state["owners"],
        json!({TX_COUNT.to_string(): first.nonce_key()})
    );
    state["reserved_at"] = json!({TX_COUNT.to_string(): now() - 1_000});
    kit.kv_put(&nonce_state, state.to_string().as_bytes()).await;

    let next_inv = invoice(114, None);
    settle(&mut kit, &next_inv, pay(&next_inv).v2())
        .await
        .unwrap();
    let sent = node.sent();
    assert_eq!(sent.len(), 2);
    assert_eq!(
        decode_tx(&sent[1]).tx().nonce,
        TX_COUNT + 1,
        "not the confirmed settlement's nonce"
    );
}

/// Once a settlement record names its transaction (`submitted`), every later write under `x402/nonce/` fails:
/// a settlement whose transaction the node then refuses, and whose record cannot be released.
struct StuckRecord {
    on: Arc<std::sync::atomic::AtomicBool>,
    tripped: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl esim402_host::kv::wrapped::Hook for StuckRecord {
    fn before(
        &self,
        op: esim402_host::kv::wrapped::Op,
        key: &str,
    ) -> esim402_host::kv::KvResult<()> {
        if op.writes()
            && self.on.load(Ordering::SeqCst)
            && key.starts_with("x402/nonce/")
            && self.tripped.load(Ordering::SeqCst)
        {
            return Err(esim402_host::kv::KvError(format!("injected: {key}")));
        }
        Ok(())
    }

    async fn after_write(&self, inner: &dyn esim402_host::kv::Backend, key: &str) {
        if !key.starts_with("x402/nonce/") || key.contains('@') {
            return;
        }
        let raw = inner.get(key).await.ok().flatten().unwrap();
        let cell = esim402_core::store::cell::Stored::decode(&raw).unwrap();
        let record: Value =
            serde_json::from_slice(&cell.data.unwrap_or_default()).unwrap_or_default();
        if record["status"] == "submitted" {
            self.tripped.store(true, Ordering::SeqCst);
        }
    }
}

/// A send that fails after its transaction was recorded keeps that transaction's nonce while the record still
/// names it: here the node refused the transaction and the record could not be released, so the transaction
/// may yet be sent again (a resend, a reconcile), and the next settlement must take another nonce rather than
/// share it.
#[tokio::test]
async fn a_recorded_transactions_nonce_is_not_reused_while_its_record_stays() {
    let node = Arc::new(Node::default());
    let on = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let store = esim402_host::kv::wrapped::Wrapped::new(
        Arc::new(esim402_host::kv::MemoryStore::default()),
        StuckRecord {
            on: on.clone(),
            tripped: std::sync::atomic::AtomicBool::new(false),
        },
    );
    node.set(|c| c.refuse_send = true);
    let mut kit = builder(&node).store(Arc::new(store)).build().await.unwrap();
    let nonce_state = format!("signer/eip155:31337/{:#x}/nonce", facilitator());
    let inv = invoice(115, None);
    let p = pay(&inv);
    let got = settle(&mut kit, &inv, p.v2()).await;
    assert!(matches!(&got, Err(E::Unavailable(_))), "{got:?}");
    assert!(node.sent().is_empty(), "nothing broadcast");
    let record = kv_json(&kit, &p.nonce_key()).await.unwrap();
    assert_eq!(
        record["status"], "submitted",
        "the release failed: {record}"
    );
    assert_eq!(record["signer_nonce"], json!(TX_COUNT));
    let state = kv_json(&kit, &nonce_state).await.unwrap();
    assert_eq!(state["pending"], json!([TX_COUNT]), "still held: {state}");

    on.store(false, Ordering::SeqCst);
    node.set(|c| c.refuse_send = false);
    let next_inv = invoice(116, None);
    settle(&mut kit, &next_inv, pay(&next_inv).v2())
        .await
        .unwrap();
    let sent = node.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        decode_tx(&sent[0]).tx().nonce,
        TX_COUNT + 1,
        "not the nonce the stuck record's transaction has"
    );
}

/// The payment's authorization was executed on chain after `verify` and before our settlement was prepared
/// (the payer's wallet, or anyone holding the payload, called `transferWithAuthorization` itself): the gas
/// estimate reverts, but the money reached `payTo`. The invoice is settled by that transaction (found through
/// the token's `AuthorizationUsed` log, its `txhash/` key claimed for this payment), never refused as a failed
/// simulation (the gateway withdraws the order and answers "nothing was charged"). A transaction that moved
/// other money under the nonce leaves it refused, its claim released.
#[tokio::test]
async fn an_authorization_executed_before_our_settlement_was_sent_settles_the_invoice_by_it() {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[]).await;
    let inv = invoice(41, None);
    let p = pay(&inv);
    assert_eq!(
        verify(&mut kit, &inv, p.v2()).await,
        Ok(payer().to_checksum(None))
    );
    let theirs = B256::repeat_byte(0xe1);
    used_by(
        &node,
        &p,
        theirs,
        "AuthorizationUsed",
        Some(transfer_log(p.auth.from, p.auth.to, PRICE)),
    );
    node.set(|c| c.nonce_used = true);
    for _ in 0..2 {
        assert_eq!(
            settle(&mut kit, &inv, p.v2()).await,
            Ok(S::Settled(theirs.to_string()))
        );
    }
    let record = kv_json(&kit, &p.nonce_key()).await.unwrap();
    assert_eq!(record["status"], "confirmed");
    assert_eq!(record["executed_by"], theirs.to_string());
    let claim = kv_json(&kit, &format!("txhash/{theirs}")).await.unwrap();
    assert_eq!(claim["claim"], p.nonce_key());
    assert!(node.sent().is_empty(), "nothing of ours was sent");

    // Other money under the same nonce: this payment's money can never move; refused, nothing held.
    let inv = invoice(42, None);
    let p = pay(&inv);
    node.set(|c| c.nonce_used = false);
    verify(&mut kit, &inv, p.v2()).await.unwrap();
    let other = B256::repeat_byte(0xe2);
    used_by(
        &node,
        &p,
        other,
        "AuthorizationUsed",
        Some(transfer_log(p.auth.from, Address::repeat_byte(0x77), PRICE)),
    );
    node.set(|c| c.nonce_used = true);
    assert_eq!(
        settle(&mut kit, &inv, p.v2()).await,
        Err(E::PaymentRequired(
            "invalid_exact_evm_nonce_already_used".into()
        ))
    );
    assert!(kit.kv_get(&p.nonce_key()).await.is_none());
    assert!(kit.kv_get(&format!("txhash/{other}")).await.is_none());
}

/// The same payload posted to the public `POST /settle` while its invoice's order is placed (`verify` passed,
/// holding it for the invoice): refused there, so the invoice's own settlement executes it. Before, `/settle`
/// broadcast it and the invoice's settlement was refused as "already settled" (the order withdrawn while its
/// money moved).
#[tokio::test]
async fn the_facilitator_api_refuses_an_authorization_an_invoice_holds() {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[]).await;
    let inv = invoice(43, None);
    let p = pay(&inv);
    verify(&mut kit, &inv, p.v2()).await.unwrap();
    api_settle_refused_then_invoice_settles(&mut kit, &node, &inv, &p).await;
}

/// `settlement_pending` without a transaction hash: the reference resource servers retry only a pending answer
/// that names one (TS `isRetryableSettlementPendingResult`, Python `is_retryable_settlement_pending`).
fn pending_without_a_hash(answer: &Value) -> bool {
    answer["errorReason"] == "settlement_pending"
        && !answer["transaction"]
            .as_str()
            .is_some_and(|t| t.len() == 66 && t.starts_with("0x"))
}

/// A `/settle` repeat while the first call's claim is live and has sent nothing waits for it; one that sends
/// nothing in time is `duplicate_settlement` saying so, not a terminal "nonce already used", and never
/// `settlement_pending` without a hash (before: `settlement_pending` with `transaction: ""`, which the reference
/// resource servers do not retry). An invoice's failed settlement moved nothing and is answered as its failure,
/// not as a used nonce.
#[tokio::test]
async fn facilitator_repeats_of_a_live_claim_wait_for_it_and_of_a_failed_invoice_settlement_its_failure()
 {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[("settlement_timeout_ms", "300")]).await;
    let p = pay(&invoice(44, None));
    let at = now();
    let live = json!({"status": "claimed", "network": "eip155:31337", "payer": p.auth.from.to_string(),
        "claim": p.nonce_key(), "holder": "h", "claimed_at": at, "transaction": null, "updated_at": at});
    kit.kv_put(&p.nonce_key(), live.to_string().as_bytes())
        .await;
    let got = facilitator_settle(&mut kit, p.facilitator_body())
        .await
        .unwrap();
    assert!(!pending_without_a_hash(&got), "{got}");
    assert_eq!(got["success"], false, "{got}");
    assert_eq!(got["errorReason"], "duplicate_settlement", "{got}");
    assert_eq!(got["transaction"], "", "{got}");
    assert!(
        got["errorMessage"]
            .as_str()
            .is_some_and(|m| m.contains("another settlement of this authorization is in progress")),
        "{got}"
    );
    // The claim is left to its holder.
    assert_eq!(kv_json(&kit, &p.nonce_key()).await.unwrap(), live);
    // The same authorization made invalid (expired) is answered with its own reason, not made to wait on the
    // live claim it names (a review: it followed the claim for the whole settle timeout, then answered
    // `duplicate_settlement`).
    let mut expired: Value = serde_json::from_str(&p.facilitator_body()).unwrap();
    expired["paymentPayload"]["payload"]["authorization"]["validBefore"] = json!("1");
    let got = facilitator_settle(&mut kit, expired.to_string())
        .await
        .unwrap();
    assert_eq!(
        got["errorReason"], "invalid_exact_evm_payload_authorization_valid_before",
        "{got}"
    );
    assert_eq!(kv_json(&kit, &p.nonce_key()).await.unwrap(), live);

    let p = pay(&invoice(45, None));
    let failed = json!({"status": "failed", "network": "eip155:31337", "payer": p.auth.from.to_string(),
        "claim": p.nonce_key(), "holder": "h", "invoice": "inv_45.1", "claimed_at": at,
        "transaction": B256::repeat_byte(0xe3).to_string(), "reason": "invalid_exact_evm_transaction_failed",
        "updated_at": at});
    kit.kv_put(&p.nonce_key(), failed.to_string().as_bytes())
        .await;
    let got = facilitator_settle(&mut kit, p.facilitator_body())
        .await
        .unwrap();
    assert_eq!(got["success"], false, "{got}");
    assert_eq!(
        got["errorReason"], "invalid_exact_evm_transaction_failed",
        "{got}"
    );
    assert!(node.sent().is_empty());
}

/// A `/settle` repeat that finds another call's claim live waits for it, and once that call records its
/// transaction answers as for any sent one: here its receipt, a success with its hash (`settlement_pending`,
/// if it were not mined, with that hash too). Before, it answered `settlement_pending` with `transaction: ""` at
/// once. The claim's sending is staged: the repeat finds the record as claimed, and the test puts back the
/// record the first settle wrote once it sent (whenever the repeat reads it, the answer is the same).
#[tokio::test]
async fn a_facilitator_repeat_that_finds_a_live_claim_answers_with_its_transaction_once_sent() {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[("settlement_timeout_ms", "1500")]).await;
    let p = pay(&invoice(46, None));
    let key = p.nonce_key();
    node.set(|c| c.mining = Mining::Never);
    let first = facilitator_settle(&mut kit, p.facilitator_body())
        .await
        .unwrap();
    let hash = keccak256(&node.sent()[0]).to_string();
    assert_eq!(first["errorReason"], "settlement_pending", "{first}");
    assert_eq!(first["transaction"], hash.as_str(), "{first}");
    let sent = kv_json(&kit, &key).await.unwrap();
    assert_eq!(sent["status"], "submitted");
    // As the record was while the first settle held its claim, before it signed.
    let at = now();
    let claimed = json!({"status": "claimed", "network": "eip155:31337", "payer": sent["payer"],
        "claim": key, "holder": sent["holder"], "claimed_at": sent["claimed_at"], "transaction": null,
        "updated_at": at});
    kit.kv_put(&key, claimed.to_string().as_bytes()).await;
    node.set(|c| c.mining = Mining::Succeed);
    let kv = kit.kv().clone();
    let body = p.facilitator_body();
    let (key2, sent2) = (key.clone(), sent.to_string());
    let got = kit
        .call(async move |a, g| {
            let repeat = g.verifier().call_facilitator_settle(a, body);
            let sends = async {
                tokio::time::sleep(std::time::Duration::from_millis(400)).await;
                let head = kv.get(&key2).await.unwrap().unwrap();
                let head = esim402_core::store::cell::Stored::decode(&head).unwrap();
                let back = esim402_core::store::cell::Stored {
                    data: Some(sent2.into_bytes()),
                    ..head
                };
                kv.set(&key2, &back.encode()).await.unwrap();
            };
            let (got, ()) = esim402_core::join::join2(repeat, sends).await;
            got
        })
        .await
        .unwrap()
        .unwrap();
    let got: Value = serde_json::from_str(&got).unwrap();
    assert!(!pending_without_a_hash(&got), "{got}");
    assert_eq!(got["transaction"], hash.as_str(), "{got}");
    assert_eq!(got["success"], true, "{got}");
    assert_eq!(node.sent().len(), 1, "never a second transaction");
}

/// A transfer the node refuses at settle time as reverting is answered with the reason its revert text gives
/// (kernel `x402::revert`, as the references map it) and the text as `errorMessage`; nothing is sent and the
/// claim is given back. Before, every such revert was `…_transaction_simulation_failed`, its text dropped.
#[tokio::test]
async fn a_settle_time_revert_is_answered_with_the_reason_its_text_gives_and_the_text() {
    let cases = [
        (
            "execution reverted: FiatTokenV2: authorization is used or canceled",
            "invalid_exact_evm_nonce_already_used",
        ),
        (
            "execution reverted: ERC20: transfer amount exceeds balance",
            "invalid_exact_evm_insufficient_balance",
        ),
        (
            "execution reverted: FiatTokenV2: authorization is expired",
            "invalid_exact_evm_payload_authorization_valid_before",
        ),
        ("execution reverted", "invalid_exact_evm_transaction_failed"),
    ];
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[]).await;
    for (seed, (revert, reason)) in (47u8..).zip(cases) {
        node.set(|c| c.errors = vec![("eth_estimateGas", 3, revert)]);
        let p = pay(&invoice(seed, None));
        let got = facilitator_settle(&mut kit, p.facilitator_body())
            .await
            .unwrap();
        assert_eq!(got["success"], false, "{got}");
        assert_eq!(got["errorReason"], reason, "{got}");
        assert_eq!(got["errorMessage"], revert, "{got}");
        assert_eq!(got["transaction"], "", "{got}");
        assert_eq!(got["payer"], payer().to_checksum(None), "{got}");
        assert!(kit.kv_get(&p.nonce_key()).await.is_none(), "{revert}");
    }
    assert!(node.sent().is_empty());
}

/// A request cancelled between reserving a nonce and recording its transaction leaves a hole that a later
/// settlement's transaction waits behind in the node's pool. Sending that settlement again only reconciles it
/// (never a new transaction), so before, nothing filled the hole until some other payment sent, and the
/// authorization could expire meanwhile: now a replay fills an orphan past the orphan age with the key's no-op
/// (once: the reservation is then the no-op's for another orphan age).
#[tokio::test]
async fn a_replay_fills_a_nonce_gap_its_transaction_waits_behind_with_a_no_op() {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[("settlement_timeout_ms", "300")]).await;
    let nonce_state = format!("signer/eip155:31337/{:#x}/nonce", facilitator());
    // Payment A reserved TX_COUNT moments ago, and its request died before recording a transaction.
    let orphan = pay(&invoice(120, None)).nonce_key();
    let claimed = json!({"status": "claimed", "network": "eip155:31337", "payer": payer().to_string(),
        "claim": orphan, "holder": "h", "invoice": "inv_test.120", "claimed_at": now() - 10,
        "transaction": null, "updated_at": now() - 10});
    kit.kv_put(&orphan, claimed.to_string().as_bytes()).await;
    let n = TX_COUNT;
    let seeded = json!({"next": n + 1, "pending": [n], "released": [],
        "owners": {n.to_string(): orphan}, "reserved_at": {n.to_string(): now() - 10}});
    kit.kv_put(&nonce_state, seeded.to_string().as_bytes())
        .await;
    // Payment B sends: A's reservation is too young to be released, so B takes n + 1 and waits behind n.
    node.set(|c| c.mining = Mining::Never);
    let inv = invoice(121, None);
    let p = pay(&inv);
    let got = settle(&mut kit, &inv, p.v2()).await;
    let hash = keccak256(&node.sent()[0]);
    assert_eq!(got, Ok(S::Pending(hash.to_string())));
    assert_eq!(decode_tx(&node.sent()[0]).tx().nonce, n + 1);
    // Past the orphan age, B is sent again: the hole is filled with the no-op, B's transaction is kept.
    let mut state = kv_json(&kit, &nonce_state).await.unwrap();
    state["reserved_at"][n.to_string()] = json!(now() - 1_000);
    kit.kv_put(&nonce_state, state.to_string().as_bytes()).await;
    for _ in 0..2 {
        assert_eq!(
            settle(&mut kit, &inv, p.v2()).await,
            Ok(S::Pending(hash.to_string()))
        );
    }
    let sent = node.sent();
    assert_eq!(sent.len(), 2, "one no-op, B's transaction never again");
    let noop = decode_tx(&sent[1]);
    let tx = noop.tx();
    assert_eq!(
        (tx.nonce, tx.to, tx.value, tx.input.len(), tx.gas_limit),
        (n, TxKind::Call(facilitator()), U256::ZERO, 0, 21_000)
    );
    let state = kv_json(&kit, &nonce_state).await.unwrap();
    assert_eq!(state["pending"], json!([n, n + 1]), "{state}");
    assert_eq!(state["released"], json!([]), "{state}");
    assert_eq!(
        kv_json(&kit, &p.nonce_key()).await.unwrap()["status"],
        "submitted"
    );
}

/// Our settlement reverted with its authorization unused, but its calldata published the signed
/// authorization: anyone may still execute it until its validBefore, sending the money to `payTo`. Before, the
/// revert failed the settlement at once (the order withdrawn, "nothing charged") and such an execution went
/// unnoticed; now it stays pending meanwhile, and the transaction that executed it settles the invoice.
#[tokio::test]
async fn a_reverted_settlement_stays_pending_while_its_published_authorization_may_still_execute() {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[("settlement_timeout_ms", "300")]).await;
    let inv = invoice(122, None);
    let p = pay(&inv);
    node.set(|c| c.mining = Mining::Revert);
    let ours = keccak256(&{
        let got = settle(&mut kit, &inv, p.v2()).await;
        let raw = node.sent()[0].clone();
        assert_eq!(got, Ok(S::Pending(keccak256(&raw).to_string())));
        raw
    });
    for _ in 0..2 {
        assert_eq!(
            settle(&mut kit, &inv, p.v2()).await,
            Ok(S::Pending(ours.to_string()))
        );
    }
    assert_eq!(
        kv_json(&kit, &p.nonce_key()).await.unwrap()["status"],
        "submitted"
    );
    // Someone executes it from our calldata, moving this payment's money, before its validBefore.
    let theirs = B256::repeat_byte(0xf6);
    used_by(
        &node,
        &p,
        theirs,
        "AuthorizationUsed",
        Some(transfer_log(p.auth.from, p.auth.to, PRICE)),
    );
    node.set(|c| {
        c.used.insert(p.auth.nonce);
        c.block_time = Some(now() + 1_000);
    });
    assert_eq!(
        settle(&mut kit, &inv, p.v2()).await,
        Ok(S::Settled(theirs.to_string()))
    );
    let record = kv_json(&kit, &p.nonce_key()).await.unwrap();
    assert_eq!(record["status"], "confirmed");
    assert_eq!(record["executed_by"], theirs.to_string());
    assert_eq!(node.sent().len(), 1, "nothing sent again");
}

/// A payment of our invoice whose authorization expires later than its requirement's `maxTimeoutSeconds`
/// (plus a minute of clock skew) from now is refused: a settlement that reverts with its authorization unused
/// stays pending until the authorization expires, so a payer signing one that never does (and moving its money
/// out just before our transaction) kept its order pending for ever, with a free option to pay later. The
/// public `/verify` still answers what the references answer.
#[tokio::test]
async fn an_invoice_payment_whose_authorization_outlives_its_timeout_is_refused() {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[]).await;
    let inv = invoice(123, None);
    let mut p = pay(&inv);
    p.auth.valid_before = U256::MAX;
    let refused = E::PaymentRequired("invalid_exact_evm_payload_authorization_valid_before".into());
    assert_eq!(verify(&mut kit, &inv, p.v2()).await, Err(refused.clone()));
    assert!(
        live_keys(&kit, "x402/hold/").await.is_empty(),
        "nothing held"
    );
    assert_eq!(settle(&mut kit, &inv, p.v2()).await, Err(refused));
    assert!(
        kit.kv_get(&p.nonce_key()).await.is_none(),
        "nothing claimed"
    );
    assert!(node.sent().is_empty());
    let got = facilitator_verify(&mut kit, p.facilitator_body())
        .await
        .unwrap();
    assert_eq!(got["isValid"], true, "{got}");
    // What the reference clients sign (`now + maxTimeoutSeconds`), with a minute of skew, is paid.
    p.auth.valid_before = U256::from(now() + p.accepted.max_timeout_seconds + 60);
    verify(&mut kit, &inv, p.v2()).await.unwrap();
    let got = settle(&mut kit, &inv, p.v2()).await;
    assert_eq!(got, Ok(S::Settled(keccak256(&node.sent()[0]).to_string())));
}

/// `/settle` taking over an API claim abandoned before it looked for a hold looks for one too: an
/// authorization an invoice's payment holds is that invoice's to settle. Before, the takeover broadcast it, and
/// the invoice's own settlement was refused as "already settled" while its money moved.
#[tokio::test]
async fn the_facilitator_api_refuses_a_held_authorization_after_taking_over_an_abandoned_claim() {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[]).await;
    let inv = invoice(124, None);
    let p = pay(&inv);
    verify(&mut kit, &inv, p.v2()).await.unwrap();
    let at = now() - 600;
    let abandoned = json!({"status": "claimed", "network": "eip155:31337",
        "payer": payer().to_checksum(None), "claim": p.nonce_key(), "holder": "gone", "claimed_at": at,
        "transaction": null, "updated_at": at});
    kit.kv_put(&p.nonce_key(), abandoned.to_string().as_bytes())
        .await;
    api_settle_refused_then_invoice_settles(&mut kit, &node, &inv, &p).await;
}

/// `/settle` of `p`, which the invoice `inv` holds: refused as used, nothing sent, its claim released; then the
/// invoice's own settlement executes it.
async fn api_settle_refused_then_invoice_settles(
    kit: &mut Kit,
    node: &Node,
    inv: &Invoice,
    p: &Pay,
) {
    let got = facilitator_settle(kit, p.facilitator_body()).await.unwrap();
    assert_eq!(got["success"], false, "{got}");
    assert_eq!(
        got["errorReason"], "invalid_exact_evm_nonce_already_used",
        "{got}"
    );
    assert!(node.sent().is_empty());
    assert!(kit.kv_get(&p.nonce_key()).await.is_none(), "claim released");
    let got = settle(kit, inv, p.v2()).await.unwrap();
    assert_eq!(got, S::Settled(keccak256(&node.sent()[0]).to_string()));
}

/// A `/settle` that cannot read the balance holds after claiming is a 503 that gives its claim back. Before, the
/// claim stayed, and the same request sent again was `settlement_pending` until the claim's lease ran out.
#[tokio::test]
async fn a_facilitator_settle_that_cannot_read_the_holds_gives_its_claim_back() {
    let node = Arc::new(Node::default());
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut kit = builder(&node)
        .store(Arc::new(crate::failing_calls("x402/hold/", &failing)))
        .build()
        .await
        .unwrap();
    let p = pay(&invoice(125, None));
    failing.store(true, Ordering::SeqCst);
    let got = facilitator_settle(&mut kit, p.facilitator_body()).await;
    assert!(matches!(got, Err(E::Unavailable(_))), "{got:?}");
    assert!(node.sent().is_empty());
    assert!(kit.kv_get(&p.nonce_key()).await.is_none(), "claim released");
    failing.store(false, Ordering::SeqCst);
    let got = facilitator_settle(&mut kit, p.facilitator_body())
        .await
        .unwrap();
    assert_eq!(got["success"], true, "{got}");
    assert_eq!(node.sent().len(), 1);
}

/// Reads of settlement records fail once a balance hold was written.
struct RecordsUnreadableOnceHeld(Arc<std::sync::atomic::AtomicBool>);

impl esim402_host::kv::wrapped::Hook for RecordsUnreadableOnceHeld {
    fn before(
        &self,
        op: esim402_host::kv::wrapped::Op,
        key: &str,
    ) -> esim402_host::kv::KvResult<()> {
        if op.writes() && key.starts_with("x402/hold/") {
            self.0.store(true, Ordering::SeqCst);
        } else if !op.writes() && key.starts_with("x402/nonce/") && self.0.load(Ordering::SeqCst) {
            return Err(esim402_host::kv::KvError(format!("injected: {key}")));
        }
        Ok(())
    }
}

/// `verify` looks for a claim again once it placed its hold; a store failure there ends the hold it placed.
/// Before, the hold stayed (counted against the payer's balance, refusing `/settle`) until it lapsed.
#[tokio::test]
async fn a_verify_that_cannot_look_again_once_held_ends_its_hold() {
    let node = Arc::new(Node::default());
    let held = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let store = esim402_host::kv::wrapped::Wrapped::new(
        Arc::new(esim402_host::kv::MemoryStore::default()),
        RecordsUnreadableOnceHeld(held.clone()),
    );
    let mut kit = builder(&node).store(Arc::new(store)).build().await.unwrap();
    let inv = invoice(128, None);
    let p = pay(&inv);
    let got = verify(&mut kit, &inv, p.v2()).await;
    assert!(matches!(got, Err(E::Unavailable(_))), "{got:?}");
    assert!(held.load(Ordering::SeqCst), "a hold was placed");
    assert!(live_keys(&kit, "x402/hold/").await.is_empty(), "and ended");
}

/// A replay's gap filling looks past old reservations whose transactions are recorded (still in the node's
/// pool, below its pending count) for the orphan a transaction waits behind. Before, it looked at the 8
/// oldest reservations only, and 8 such in the pool hid the orphan.
#[tokio::test]
async fn a_replay_fills_a_nonce_gap_behind_eight_recorded_reservations() {
    let node = Arc::new(Node::default());
    let mut kit = kit(&node, &[("settlement_timeout_ms", "300")]).await;
    let nonce_state = format!("signer/eip155:31337/{:#x}/nonce", facilitator());
    // Eight of our transactions in the node's pool, reserved long ago and recorded.
    let pool = TX_COUNT..TX_COUNT + 8;
    let n = pool.end;
    node.set(|c| c.pending_count = Some(n));
    let mut owners = serde_json::Map::new();
    let mut reserved_at = serde_json::Map::new();
    for k in pool {
        let key = format!(
            "x402/nonce/eip155:31337/{:#x}/{}",
            payer(),
            B256::repeat_byte(k as u8)
        );
        let record = json!({"status": "submitted", "network": "eip155:31337",
            "payer": payer().to_string(), "claim": key, "holder": "h", "claimed_at": now() - 1_000,
            "transaction": B256::repeat_byte(0xa0 + k as u8).to_string(),
            "signer": facilitator().to_checksum(None), "signer_nonce": k, "updated_at": now() - 1_000});
        kit.kv_put(&key, record.to_string().as_bytes()).await;
        owners.insert(k.to_string(), json!(key));
        reserved_at.insert(k.to_string(), json!(now() - 1_000));
    }
    // Payment A reserved n moments ago, and its request died before recording a transaction.
    let orphan = pay(&invoice(126, None)).nonce_key();
    let claimed = json!({"status": "claimed", "network": "eip155:31337", "payer": payer().to_string(),
        "claim": orphan, "holder": "h", "invoice": "inv_test.126", "claimed_at": now() - 10,
        "transaction": null, "updated_at": now() - 10});
    kit.kv_put(&orphan, claimed.to_string().as_bytes()).await;
    owners.insert(n.to_string(), json!(orphan));
    reserved_at.insert(n.to_string(), json!(now() - 10));
    let seeded = json!({"next": n + 1, "pending": [n], "released": [],
        "owners": owners, "reserved_at": reserved_at});
    kit.kv_put(&nonce_state, seeded.to_string().as_bytes())
        .await;
    // Payment B sends and waits behind n.
    node.set(|c| c.mining = Mining::Never);
    let inv = invoice(127, None);
    let p = pay(&inv);
    let got = settle(&mut kit, &inv, p.v2()).await;
    let hash = keccak256(&node.sent()[0]);
    assert_eq!(got, Ok(S::Pending(hash.to_string())));
    assert_eq!(decode_tx(&node.sent()[0]).tx().nonce, n + 1);
    // Past the orphan age, B is sent again: the hole is filled with the no-op.
    let mut state = kv_json(&kit, &nonce_state).await.unwrap();
    state["reserved_at"][n.to_string()] = json!(now() - 1_000);
    kit.kv_put(&nonce_state, state.to_string().as_bytes()).await;
    assert_eq!(
        settle(&mut kit, &inv, p.v2()).await,
        Ok(S::Pending(hash.to_string()))
    );
    let sent = node.sent();
    assert_eq!(sent.len(), 2, "one no-op");
    let noop = decode_tx(&sent[1]);
    assert_eq!(
        (noop.tx().nonce, noop.tx().to),
        (n, TxKind::Call(facilitator()))
    );
}

/// Refund paths a review found wanting (a sibling file: this one is long enough).
#[path = "verifier_refunds.rs"]
mod refunds_review;

/// A resumed payment whose authorization was executed by someone else while its order waited (`executed`).
#[path = "verifier_executed.rs"]
mod executed;
