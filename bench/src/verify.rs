//! The `verify` benchmark: x402 `exact` verifications per second, the kernel's code natively versus the same
//! code inside the release `verifier.wasm`, over the same distinct pre-signed payloads (random EIP-3009
//! nonces; signing is not timed):
//!
//! - **native, verify_exact**: `esim402_core::x402::verify_exact` with [`ChainFacts`] saying the nonce is
//!   unused, the balance suffices and the simulation passed: EIP-712 hashing, one k256 public-key recovery and
//!   the reference checks;
//! - **native, one facilitator verify's kernel calls**: what the component calls in the kernel for one
//!   `/verify` body: parse the JSON request, resolve the enabled networks (registry + token overrides) and
//!   narrow the registry, parse the facilitator key (one k256 public-key derivation), `verify_exact` without
//!   and then with the chain's facts (two recoveries), encode the JSON answer;
//! - **component**: `facilitator-verify` of one `verifier.wasm` instance in wasmtime (test-kit host boundary),
//!   sequentially, then with several calls in flight on the same instance. Each call also reads its Spin
//!   variables, and asks a scripted JSON-RPC node (answered at once, no network) for the chain id, the nonce
//!   state, the balance and a `transferWithAuthorization` simulation through outbound `wasi:http` (one JSON-RPC
//!   batch); the node counts the calls and the HTTP requests. The key-value store counts its operations too (`/verify` is expected to use none:
//!   only settlement claims nonces). The kit answers a zero-delay scripted request at once (no timer wait).
//!
//! Two refused payments, natively and in the component, isolate the signature work: an authorization to another
//! recipient is refused before any hashing, one signed by another key after one EIP-712 hash + recovery;
//! neither reaches the chain. The difference of their medians is the signature work on each side.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use esim402_core::Network;
use esim402_core::evm::SigningKey as EvmKey;
use esim402_core::x402::exact::{
    TokenDomain, TransferAuthorization, address_of, claimed_payer, resolve_network,
    sign_authorization,
};
use esim402_core::x402::networks::TokenOverrides;
use esim402_core::x402::wire::{
    ExactEvmPayload, Extra, PaymentPayload, PaymentPayloadV2, PaymentRequirements,
};
use esim402_core::x402::{ChainFacts, NetworkConfig, Networks, VerifyRequest, VerifyResponse};
use esim402_host::devstack::chain;
use esim402_host::kv::wrapped::{Hook, Op, Wrapped};
use esim402_host::kv::{KvResult, MemoryStore, SharedBackend};
use esim402_testkit::{Kit, Recorded, Scripted, types};
use serde_json::{Value, json};

/// The scripted node's endpoint (never resolved: the test kit answers it).
const RPC: &str = "http://rpc.bench";
const CHAIN_ID: u64 = 31_337;
const PRICE: u64 = 420_000;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The anvil network entry, as the component resolves `payment_network = eip155:31337`.
fn network() -> anyhow::Result<&'static NetworkConfig> {
    let id = Network::parse("eip155:31337").map_err(|e| anyhow::anyhow!("{e}"))?;
    Networks::builtin()
        .get(id)
        .context("eip155:31337 is not in the network registry")
}

/// One signed payment: the payload and its facilitator `/verify` body.
struct Signed {
    payload: PaymentPayload,
    body: String,
}

/// Which payments to build: valid ones, or ones the verifier refuses at a known point.
#[derive(Clone, Copy)]
enum Kind {
    /// Everything right: hashing, one recovery in the chain-free pass, chain reads, a second recovery.
    Valid,
    /// Authorization to another address: refused before any hashing or recovery, without chain reads.
    WrongRecipient,
    /// Signed by another key: refused after one EIP-712 hash + recovery, without chain reads.
    WrongSigner,
}

impl Kind {
    /// The `invalidReason` the verifier must answer (`None`: `isValid: true`).
    fn reason(self) -> Option<&'static str> {
        match self {
            Self::Valid => None,
            Self::WrongRecipient => Some("invalid_exact_evm_recipient_mismatch"),
            Self::WrongSigner => Some("invalid_exact_evm_signature"),
        }
    }
}

fn requirements(net: &NetworkConfig) -> PaymentRequirements {
    PaymentRequirements {
        scheme: "exact".into(),
        network: net.caip2(),
        amount: PRICE.to_string(),
        asset: net.usdc.to_checksum(None),
        pay_to: chain::RECIPIENT.to_checksum(None),
        max_timeout_seconds: 300,
        extra: Some(Extra::eip712(&net.eip712_name, &net.eip712_version)),
    }
}

/// `n` distinct payments of `kind` from the demo agent, each with a random nonce.
fn payments(n: usize, kind: Kind) -> anyhow::Result<Vec<Signed>> {
    let net = network()?;
    let agent = k256::ecdsa::SigningKey::from_slice(&hex::decode(
        chain::DEMO_AGENT_KEY.trim_start_matches("0x"),
    )?)?;
    let from = address_of(agent.verifying_key());
    let signer = match kind {
        Kind::WrongSigner => k256::ecdsa::SigningKey::from_slice(&[0x42; 32])?,
        Kind::Valid | Kind::WrongRecipient => agent,
    };
    let to = match kind {
        Kind::WrongRecipient => chain::DEPLOYER,
        Kind::Valid | Kind::WrongSigner => chain::RECIPIENT,
    };
    let requirements = requirements(net);
    let domain: TokenDomain = net.token_domain();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut nonce = [0u8; 32];
        getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("getrandom: {e}"))?;
        let auth = TransferAuthorization {
            from,
            to,
            value: alloy_primitives::U256::from(PRICE),
            valid_after: alloy_primitives::U256::ZERO,
            valid_before: alloy_primitives::U256::from(now() + 3600),
            nonce: nonce.into(),
        };
        let signature = sign_authorization(&signer, &auth, &domain)?;
        let payload = PaymentPayload::V2(PaymentPayloadV2 {
            resource: None,
            accepted: requirements.clone(),
            payload: ExactEvmPayload {
                signature: format!("0x{}", hex::encode(signature)),
                authorization: auth.to_wire(),
            },
            extensions: None,
        });
        let body = json!({"x402Version": 2,
                          "paymentPayload": serde_json::from_str::<Value>(&payload.to_json())?,
                          "paymentRequirements": requirements})
        .to_string();
        out.push(Signed { payload, body });
    }
    Ok(out)
}

fn facts() -> ChainFacts {
    ChainFacts::new(false, alloy_primitives::U256::from(1_000 * PRICE), true)
}

/// What one component `facilitator-verify` asks of the kernel, natively (see the module docs).
fn kernel_of_one_verify(body: &str, net: &NetworkConfig, now: u64) -> anyhow::Result<String> {
    let request = VerifyRequest::from_json(body.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let overrides = TokenOverrides {
        usdc: Some(net.usdc),
        eip712_name: Some(net.eip712_name.clone()),
        eip712_version: Some(net.eip712_version.clone()),
        confirmations: None,
    };
    let enabled = Networks::builtin()
        .enabled(&net.caip2(), &overrides)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let networks = Networks::builtin()
        .clone()
        .retain(|n| enabled.iter().any(|e| e.network == n.network));
    let key = EvmKey::from_hex(chain::facilitator_key()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let requirements = request.payment_requirements.to_v2();
    let payer = claimed_payer(&request.payment_payload);
    resolve_network(&request, &networks).map_err(|r| anyhow::anyhow!("{}", r.as_str()))?;
    let net = enabled
        .iter()
        .find(|n| n.matches(&requirements.network))
        .context("network not enabled")?;
    // What the verifier does now: the chain-free checks (one recovery), then the chain facts' checks.
    let verdict =
        esim402_core::x402::check_exact(&request.payment_payload, &requirements, net, now, None)
            .and_then(|checked| checked.check_chain(&facts()).map(|()| checked.payer));
    std::hint::black_box(key.address());
    Ok(serde_json::to_string(&VerifyResponse::from_result(
        verdict, payer,
    ))?)
}

/// A 32-byte ABI word holding `v`.
fn word(v: u128) -> String {
    format!("0x{v:064x}")
}

/// The scripted JSON-RPC node: answers at once (a batch with an array, as nodes do), counts the HTTP requests
/// and the calls by method.
#[derive(Default)]
struct Node {
    /// HTTP requests (a batch is one).
    posts: AtomicU64,
    by_method: Mutex<BTreeMap<String, u64>>,
}

impl Node {
    fn answer(&self, r: &Recorded) -> Scripted {
        self.posts.fetch_add(1, Ordering::Relaxed);
        let Ok(req) = r.json() else {
            return Scripted::status(400);
        };
        let body = match req {
            Value::Array(calls) => Value::Array(calls.iter().map(|c| self.answer_one(c)).collect()),
            call => self.answer_one(&call),
        };
        Scripted::json(200, body.to_string())
    }

    fn answer_one(&self, req: &Value) -> Value {
        let method = req["method"].as_str().unwrap_or_default();
        let label = match method {
            "eth_call" => {
                let data = req["params"][0]["data"].as_str().unwrap_or_default();
                match data.get(2..10) {
                    Some("e94a0102") => "eth_call authorizationState",
                    Some("70a08231") => "eth_call balanceOf",
                    Some("e3ee160e") => "eth_call transferWithAuthorization",
                    _ => "eth_call other",
                }
            }
            other => other,
        };
        if let Ok(mut m) = self.by_method.lock() {
            *m.entry(label.to_owned()).or_default() += 1;
        }
        let result = match label {
            "eth_chainId" => json!(format!("{CHAIN_ID:#x}")),
            "eth_call authorizationState" => json!(word(0)),
            "eth_call balanceOf" => json!(word(u128::from(1_000 * PRICE))),
            "eth_call transferWithAuthorization" => json!("0x"),
            // The token has code (asked once per instance: `asset_not_deployed_contract`).
            "eth_getCode" => json!("0x6080"),
            _ => {
                return json!({"jsonrpc": "2.0", "id": req["id"],
                              "error": {"code": -32601, "message": "not scripted"}});
            }
        };
        json!({"jsonrpc": "2.0", "id": req["id"], "result": result})
    }
}

/// What the benchmark adds to the in-memory store: a count of every operation the component makes.
#[derive(Default)]
struct Counting(AtomicU64);

impl Hook for Counting {
    fn before(&self, _op: Op, _key: &str) -> KvResult<()> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// The in-memory store, counting every operation the component makes.
type CountingKv = Wrapped<Counting>;

fn counting_kv() -> CountingKv {
    Wrapped::new(Arc::new(MemoryStore::default()), Counting::default())
}

async fn kit(node: &Arc<Node>, kv: &Arc<CountingKv>) -> anyhow::Result<Kit> {
    let net = network()?;
    let n = node.clone();
    Kit::builder("verifier")
        .var("payment_network", "eip155:31337")
        .var("usdc_address", &net.usdc.to_checksum(None))
        .var("usdc_eip712_name", &net.eip712_name)
        .var("usdc_eip712_version", &net.eip712_version)
        .var("rpc_url", RPC)
        .var("facilitator_private_key", chain::facilitator_key())
        .var("settlement_timeout_ms", "2000")
        .allow(RPC)
        .respond(move |r| n.answer(r))
        .store(kv.clone() as SharedBackend)
        .build()
        .await
}

type VerifyCall<'a> = Pin<
    Box<
        dyn Future<Output = (wasmtime::Result<Result<String, types::Error>>, Duration)> + Send + 'a,
    >,
>;

/// `facilitator-verify` for every payment, at most `window` in flight on the one instance; each answer must be
/// the one `kind` expects. Returns the per-call latencies.
async fn component_phase(
    kit: &mut Kit,
    set: &[Signed],
    kind: Kind,
    window: usize,
) -> anyhow::Result<Vec<Duration>> {
    let bodies: Vec<String> = set.iter().map(|s| s.body.clone()).collect();
    let window = window.max(1);
    let expected = bodies.len();
    let results = kit
        .call(async move |a, g| {
            let mut todo = bodies.into_iter();
            let mut running: Vec<VerifyCall<'_>> = Vec::new();
            let mut done = Vec::new();
            std::future::poll_fn(|cx| {
                loop {
                    while running.len() < window {
                        let Some(body) = todo.next() else { break };
                        running.push(Box::pin(async move {
                            let t = Instant::now();
                            let r = g.verifier().call_facilitator_verify(a, body).await;
                            (r, t.elapsed())
                        }));
                    }
                    if running.is_empty() {
                        return Poll::Ready(());
                    }
                    let before = running.len();
                    let mut i = 0;
                    while i < running.len() {
                        if let Poll::Ready(out) = running[i].as_mut().poll(cx) {
                            done.push(out);
                            drop(running.swap_remove(i));
                        } else {
                            i += 1;
                        }
                    }
                    if running.len() == before {
                        return Poll::Pending;
                    }
                }
            })
            .await;
            Ok(done)
        })
        .await?;
    let mut lat = Vec::with_capacity(results.len());
    for (r, elapsed) in results {
        let answer = r?.map_err(|e| anyhow::anyhow!("facilitator-verify failed: {e:?}"))?;
        let v: Value = serde_json::from_str(&answer)?;
        let ok = match kind.reason() {
            None => v["isValid"] == true,
            Some(reason) => v["isValid"] == false && v["invalidReason"] == reason,
        };
        if !ok {
            bail!(
                "facilitator-verify answered {answer}, expected {:?}",
                kind.reason()
            );
        }
        lat.push(elapsed);
    }
    if lat.len() != expected {
        bail!("{} of {expected} calls answered", lat.len());
    }
    Ok(lat)
}

/// Print one phase; returns (calls/s, median µs per call: robust to preemption on a shared machine).
fn line(name: &str, elapsed: Duration, lat: &mut [Duration]) -> (f64, f64) {
    lat.sort_unstable();
    let n = lat.len();
    let rate = n as f64 / elapsed.as_secs_f64();
    let p = |q: f64| {
        lat.get(((lat.len().saturating_sub(1)) as f64 * q).round() as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    println!(
        "verify {name:<50} {n:>5} in {:>5.2}s = {rate:>6.0}/s  p50 {:>7.1}us  p99 {:>7.1}us",
        elapsed.as_secs_f64(),
        p(0.5),
        p(0.99)
    );
    (rate, p(0.5))
}

/// `verify_exact` natively over `set` (with the chain's facts, or without), each answer as `kind` expects.
fn native_phase(
    name: &str,
    set: &[Signed],
    kind: Kind,
    facts: Option<&ChainFacts>,
) -> anyhow::Result<(f64, f64)> {
    let net = network()?;
    let requirements = requirements(net);
    let ts = now();
    let mut lat = Vec::with_capacity(set.len());
    let start = Instant::now();
    for s in set {
        let t = Instant::now();
        let verdict = esim402_core::x402::verify_exact(&s.payload, &requirements, net, ts, facts);
        lat.push(t.elapsed());
        match (verdict, kind.reason()) {
            (Ok(payer), None) => {
                std::hint::black_box(payer);
            }
            (Err(r), Some(want)) if r.as_str() == want => {}
            (other, want) => bail!("native verify_exact: {other:?}, expected {want:?}"),
        }
    }
    Ok(line(name, start.elapsed(), &mut lat))
}

/// Run the scenario: `count` distinct payments per phase, component calls `concurrency` at a time in one phase.
pub async fn run(count: usize, concurrency: usize) -> anyhow::Result<()> {
    const WARM: usize = 50;
    let count = count.clamp(10, 20_000);
    let net = network()?;
    let valid = payments(count + WARM, Kind::Valid)?;
    let (warm, valid) = valid.split_at(WARM);
    let recipient = payments(count, Kind::WrongRecipient)?;
    let signer = payments(count, Kind::WrongSigner)?;
    println!(
        "verify: {count} distinct signed payments per phase (+{WARM} warm-up), one payer, random nonces; network {} USDC {}",
        net.caip2(),
        net.usdc
    );

    // Native: the headline figure, the whole kernel side of one component call, and the two refusals that
    // isolate the signature work (hashing + recovery).
    let f = facts();
    native_phase(
        "native verify_exact, valid (warm-up)",
        warm,
        Kind::Valid,
        Some(&f),
    )?;
    let (native, _) = native_phase(
        "native verify_exact, valid (1 recovery)",
        valid,
        Kind::Valid,
        Some(&f),
    )?;
    let ts = now();
    let mut lat = Vec::with_capacity(count);
    let start = Instant::now();
    for s in valid {
        let t = Instant::now();
        let answer = kernel_of_one_verify(&s.body, net, ts)?;
        lat.push(t.elapsed());
        if !answer.contains("\"isValid\":true") {
            bail!("native kernel path refused a valid payment: {answer}");
        }
    }
    let (native_full, _) = line(
        "native, kernel calls of one /verify (1 rec. + key)",
        start.elapsed(),
        &mut lat,
    );
    let (_, native_floor) = native_phase(
        "native verify_exact, refused: recipient (no rec.)",
        &recipient,
        Kind::WrongRecipient,
        None,
    )?;
    let (_, native_sig) = native_phase(
        "native verify_exact, refused: signature (1 rec.)",
        &signer,
        Kind::WrongSigner,
        None,
    )?;

    // The component: one instance, compiled once (cached on disk), warmed up, then measured.
    let node = Arc::new(Node::default());
    let kv = Arc::new(counting_kv());
    let t = Instant::now();
    let mut kit = kit(&node, &kv).await?;
    println!(
        "verify: verifier.wasm loaded and instantiated in {:.2}s",
        t.elapsed().as_secs_f64()
    );
    component_phase(&mut kit, warm, Kind::Valid, 1).await?;
    let posts_before = node.posts.load(Ordering::Relaxed);
    let kv_before = kv.hook.0.load(Ordering::Relaxed);
    if let Ok(mut m) = node.by_method.lock() {
        m.clear();
    }
    let start = Instant::now();
    let mut lat = component_phase(&mut kit, valid, Kind::Valid, 1).await?;
    let (seq, comp_valid) = line("component, valid, sequential", start.elapsed(), &mut lat);
    let posts = node.posts.load(Ordering::Relaxed) - posts_before;
    let calls: u64 = node
        .by_method
        .lock()
        .map(|m| m.values().sum())
        .unwrap_or_default();
    let kv_ops = kv.hook.0.load(Ordering::Relaxed) - kv_before;
    let by_method = node.by_method.lock().map(|m| m.clone()).unwrap_or_default();

    let start = Instant::now();
    let mut lat = component_phase(&mut kit, valid, Kind::Valid, concurrency).await?;
    let (conc, _) = line(
        &format!("component, valid, {concurrency} in flight (one instance)"),
        start.elapsed(),
        &mut lat,
    );
    let posts_before = node.posts.load(Ordering::Relaxed);
    let start = Instant::now();
    let mut lat = component_phase(&mut kit, &recipient, Kind::WrongRecipient, 1).await?;
    let (_, comp_floor) = line(
        "component, refused: recipient (no rec.), sequential",
        start.elapsed(),
        &mut lat,
    );
    let start = Instant::now();
    let mut lat = component_phase(&mut kit, &signer, Kind::WrongSigner, 1).await?;
    let (_, comp_sig) = line(
        "component, refused: signature (1 rec.), sequential",
        start.elapsed(),
        &mut lat,
    );
    if node.posts.load(Ordering::Relaxed) != posts_before {
        bail!("a refused payment reached the chain");
    }

    println!(
        "verify: JSON-RPC calls per valid component verify: {:.2} ({calls} for {count}) in {:.2} HTTP requests \
         (batches); refused ones: 0",
        calls as f64 / count as f64,
        posts as f64 / count as f64
    );
    for (method, n) in &by_method {
        println!("  {method:<36} {:.2} per verify", *n as f64 / count as f64);
    }
    println!(
        "verify: key-value operations per component verify: {:.2}",
        kv_ops as f64 / count as f64
    );
    let (sig_in, sig_native) = (comp_sig - comp_floor, native_sig - native_floor);
    println!(
        "verify: signature work per verify (EIP-712 hash + k256 recovery; medians, refused-by-signature minus \
         refused-by-recipient): component {sig_in:.0}us, native {sig_native:.0}us: {:.1}x in the component",
        sig_in / sig_native
    );
    let rpc = comp_valid - comp_floor - sig_in;
    println!(
        "verify: a valid component verify (median {comp_valid:.0}us) = {comp_floor:.0}us floor refused before hashing \
         (WIT call, body JSON, variables, answer) + {sig_in:.0}us signature work + {rpc:.0}us for the \
         {:.0} JSON-RPC calls in {:.0} HTTP request(s) over wasi:http (the chain id is asked once per instance)",
        calls as f64 / count as f64,
        posts as f64 / count as f64,
    );
    println!(
        "verify: valid verifies/s, component / native: {:.3} of verify_exact ({:.1}x slower), {:.3} of the same kernel \
         calls natively ({:.1}x); {concurrency} in flight: {:.3} / {:.3}",
        seq / native,
        native / seq,
        seq / native_full,
        native_full / seq,
        conc / native,
        conc / native_full
    );
    println!(
        "verify: the component figure includes per call: the WIT call, JSON parsing of the body, Spin variable \
         reads (configuration and the facilitator key are parsed once per instance), the chain-free check \
         (1 recovery), {calls_per:.0} JSON-RPC calls in {posts_per:.0} request(s) over outbound wasi:http answered \
         by the scripted node (host side: policy check, recording, JSON), the check of the chain's facts (no 2nd recovery), the JSON answer; \
         {kv_per:.0} key-value operations. One store: calls in flight interleave on one thread.",
        calls_per = calls as f64 / count as f64,
        posts_per = posts as f64 / count as f64,
        kv_per = kv_ops as f64 / count as f64
    );
    Ok(())
}
