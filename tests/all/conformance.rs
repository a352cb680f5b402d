//! Facilitator API conformance, checked differentially: the same x402 v2 `/verify` (and `/settle`) bodies go to our
//! facilitator (`POST {app}/verify`), to the official TypeScript facilitator (`@x402/core` + `@x402/evm` 2.27.0,
//! `tests/peers/ts_facilitator.mjs`) and to the official Python one (`x402` 2.25.0, `tests/peers/py_facilitator.py`),
//! all three on the same anvil chain with the same token. Where the references agree on a verdict, ours must be
//! the same string; where they differ (or one of them throws, i.e. answers 500), ours must be one of theirs or of
//! the same reason family. Ours always answers HTTP 200 with a verdict: a payload with a missing field is a
//! rejection, not a 400, and never a 5xx.
//!
//! The peers are installed by `scripts/setup.sh` (`tools/node_modules`, `tools/.venv`). Without them the test
//! prints `skipped …` and passes, unless `ESIM402_REQUIRE_PEERS` is set. Each peer signs with its own anvil account
//! (#3 for TypeScript, #4 for Python), never the app's facilitator key (#1) nor a payer's.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use alloy_primitives::{Address, U256, keccak256};
use esim402_core::x402::exact::{
    TokenDomain, TransferAuthorization, address_of, sign_authorization,
};
use esim402_host::devstack::{chain, spawn_announcing};
use esim402_tests::repo_root;
use k256::ecdsa::SigningKey;
use serde_json::{Value, json};

use crate::payments::PayStack;

/// The TypeScript peer's signer: anvil account #3 (a published test key).
const TS_PEER_KEY: &str = "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6";
/// The Python peer's signer: anvil account #4 (a published test key).
const PY_PEER_KEY: &str = "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a";
/// A payer without tokens: anvil account #5.
const PAUPER_KEY: &str = "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba";
/// Someone who is not the payer: anvil account #7.
const STRANGER_KEY: &str = "0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356";
/// Base mainnet USDC: no code on the dev chain.
const NO_CODE_ASSET: &str = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913";
const NETWORK: &str = "eip155:31337";
const AMOUNT: u64 = 10_000;

fn key(hex_key: &str) -> SigningKey {
    SigningKey::from_slice(&hex::decode(hex_key.trim_start_matches("0x")).unwrap()).unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Multicall3's canonical address: deployed on every public chain, and the TS reference diagnoses a failed
/// simulation through it (`tryAggregate`); anvil has none, so the test places it there.
const MULTICALL3: &str = "0xcA11bde05977b3631167028862bE2a173976CA11";
/// An unlocked anvil account that deploys Multicall3's code (#8).
const MULTICALL3_DEPLOYER: &str = "0x23618e81E3f5cdF7f54C3d65f7FBc0aBf5B21E8f";

/// Put Multicall3 at its canonical address, as on a real chain: its creation code comes from the pinned viem
/// (`multicall3Bytecode`), is deployed from an unlocked account, and the runtime code is copied over.
async fn install_multicall3(s: &PayStack) {
    let viem = repo_root().join("tools/node_modules/viem/_cjs/constants/contracts.js");
    let text = std::fs::read_to_string(&viem).unwrap();
    let creation = text
        .split("exports.multicall3Bytecode = '")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .unwrap_or_else(|| panic!("no multicall3Bytecode in {}", viem.display()));
    let tx = s
        .rpc(
            "eth_sendTransaction",
            json!([{"from": MULTICALL3_DEPLOYER, "data": creation, "gas": "0x200000"}]),
        )
        .await;
    let tx = tx.as_str().unwrap().to_owned();
    s.mined(&tx).await;
    let receipt = s.rpc("eth_getTransactionReceipt", json!([tx])).await;
    assert_eq!(receipt["status"], "0x1", "{receipt}");
    let code = s
        .rpc("eth_getCode", json!([receipt["contractAddress"], "latest"]))
        .await;
    s.rpc("anvil_setCode", json!([MULTICALL3, code])).await;
}

/// A reference facilitator in a child process on a loopback port, stopped by its PID on drop.
struct Peer {
    child: Child,
    url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Peer {
    fn start(program: &Path, script: &str, rpc_url: &str, key: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("peer.log");
        let mut cmd = Command::new(program);
        cmd.arg(repo_root().join(script))
            .args(["--rpc-url", rpc_url, "--network", NETWORK, "--port", "0"])
            .env("X402_PEER_PRIVATE_KEY", key)
            .stderr(Stdio::from(std::fs::File::create(&log)?));
        let (child, port) = spawn_announcing(&mut cmd, "listening ").map_err(|e| {
            anyhow::anyhow!(
                "{e:#}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        })?;
        Ok(Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        })
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `node` and the venv's `python`, or why the peers cannot run.
fn peer_programs() -> Result<(PathBuf, PathBuf), String> {
    let root = repo_root();
    let node = std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("node"))
                .find(|n| n.is_file())
        })
        .ok_or("`node` is not on PATH")?;
    for dir in [
        "tools/node_modules/@x402/core",
        "tools/node_modules/@x402/evm",
        "tools/node_modules/viem",
    ] {
        if !root.join(dir).is_dir() {
            return Err(format!("{dir} is missing"));
        }
    }
    let python = root.join("tools/.venv/bin/python");
    if !python.is_file() {
        return Err("tools/.venv/bin/python is missing".into());
    }
    Ok((node, python))
}

/// One facilitator's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// `isValid: true` / `success: true`.
    Ok,
    /// `isValid: false` / `success: false`, with the reason.
    Refused(String),
    /// No verdict: an HTTP error status (the references throw on some malformed payloads).
    Error(u16),
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ok => f.pad("ok"),
            Self::Refused(r) => f.pad(r),
            Self::Error(s) => f.pad(&format!("HTTP {s}")),
        }
    }
}

/// POST `body` to `{url}{path}`: the verdict, and the raw answer for diagnostics.
async fn ask(http: &reqwest::Client, url: &str, path: &str, body: &Value) -> (Verdict, Value) {
    let r = http
        .post(format!("{url}{path}"))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    if status != 200 {
        return (Verdict::Error(status), v);
    }
    let (ok, reason) = if path == "/verify" {
        (v["isValid"].as_bool(), &v["invalidReason"])
    } else {
        (v["success"].as_bool(), &v["errorReason"])
    };
    let verdict = match ok {
        Some(true) => Verdict::Ok,
        Some(false) => Verdict::Refused(reason.as_str().unwrap_or("<no reason>").to_owned()),
        None => Verdict::Error(status),
    };
    (verdict, v)
}

/// A reason's family: the Python SDK still uses older names for some of the TypeScript/Go reasons, and reports
/// a signature it could not even check as `…failed_to_verify_signature`.
fn family(reason: &str) -> &str {
    match reason {
        "invalid_exact_evm_signature"
        | "invalid_exact_evm_payload_signature"
        | "invalid_exact_evm_failed_to_verify_signature" => "signature",
        "invalid_exact_evm_recipient_mismatch" | "invalid_exact_evm_payload_recipient_mismatch" => {
            "recipient"
        }
        "invalid_exact_evm_missing_eip712_domain" | "missing_eip712_domain" => "eip712_domain",
        "invalid_exact_evm_network_mismatch" | "network_mismatch" => "network",
        "invalid_exact_evm_scheme" | "unsupported_scheme" => "scheme",
        "invalid_exact_evm_transaction_failed" | "transaction_failed" => "transaction_failed",
        other => other,
    }
}

/// Whether our verdict conforms to the references': equal where they agree, else one of theirs (or its family).
/// Ours must always be a verdict.
fn conforms(ours: &Verdict, ts: &Verdict, py: &Verdict) -> bool {
    if matches!(ours, Verdict::Error(_)) {
        return false;
    }
    if ts == py && !matches!(ts, Verdict::Error(_)) {
        return ours == ts;
    }
    let theirs: Vec<&Verdict> = [ts, py]
        .into_iter()
        .filter(|v| !matches!(v, Verdict::Error(_)))
        .collect();
    if theirs.is_empty() {
        // Both references threw: any refusal is better than theirs.
        return matches!(ours, Verdict::Refused(_));
    }
    theirs.iter().any(|t| match (ours, t) {
        (Verdict::Refused(a), Verdict::Refused(b)) => family(a) == family(b),
        (a, b) => a == *b,
    })
}

/// A payment as a wallet builds it; cases bend one thing at a time, then [`Pay::body`] signs it.
#[derive(Clone)]
struct Pay {
    signer: SigningKey,
    auth: TransferAuthorization,
    domain: TokenDomain,
    requirements: Value,
    accepted: Value,
}

impl Pay {
    fn new(token: Address, tag: &str) -> Self {
        let requirements = json!({
            "scheme": "exact", "network": NETWORK, "amount": AMOUNT.to_string(),
            "asset": token.to_checksum(None), "payTo": chain::RECIPIENT.to_checksum(None),
            "maxTimeoutSeconds": 300, "extra": {"name": "USD Coin", "version": "2"}
        });
        Self {
            signer: key(chain::DEMO_AGENT_KEY),
            auth: TransferAuthorization {
                from: chain::DEMO_AGENT,
                to: chain::RECIPIENT,
                value: U256::from(AMOUNT),
                valid_after: U256::ZERO,
                valid_before: U256::from(now() + 300),
                nonce: keccak256(format!("conformance {tag} {}", now())),
            },
            domain: TokenDomain {
                name: "USD Coin".into(),
                version: "2".into(),
                chain_id: chain::CHAIN_ID,
                verifying_contract: token,
            },
            accepted: requirements.clone(),
            requirements,
        }
    }

    /// Pay from the account of `hex_key`, signed by it.
    fn paid_by(mut self, hex_key: &str) -> Self {
        self.signer = key(hex_key);
        self.auth.from = address_of(self.signer.verifying_key());
        self
    }

    /// Set `field` in both the requirements and `accepted` (they stay equal).
    fn require(mut self, field: &str, value: Value) -> Self {
        self.requirements[field] = value.clone();
        self.accepted[field] = value;
        self
    }

    fn body(&self) -> Value {
        let sig = sign_authorization(&self.signer, &self.auth, &self.domain).unwrap();
        json!({
            "x402Version": 2,
            "paymentPayload": {
                "x402Version": 2,
                "resource": {"url": "http://127.0.0.1/conformance", "description": "conformance", "mimeType": "application/json"},
                "accepted": self.accepted,
                "payload": {
                    "signature": format!("0x{}", hex::encode(sig)),
                    "authorization": self.auth.to_wire(),
                },
            },
            "paymentRequirements": self.requirements,
        })
    }
}

/// What ours answers to each verification case, and whether the two references agree on it (then ours must be
/// their exact string; `conforms` checks it live as well). Where they do not agree, and what we chose:
/// - Python 2.25 still uses older names for some reasons (`…_payload_recipient_mismatch`, `…_payload_signature`,
///   `network_mismatch`, `missing_eip712_domain`); we follow the TS/Go names (same family).
/// - "signature not hex", "signature of 64 bytes": Python says `…failed_to_verify_signature` and
///   `…undeployed_smart_wallet` (it treats a non-65-byte signature as a smart wallet's); TS and we say
///   `invalid_exact_evm_signature`.
/// - "EIP-712 name/version mismatch": TS names the token's domain (`…token_name_mismatch`), Python maps the
///   simulation's "invalid signature" revert to `…payload_signature`; we name the domain, like TS.
/// - "network mismatch", "scheme mismatch": Python routes by the payload's (network, scheme) and throws for one it
///   has not registered (HTTP 500); we give TS's reasons.
/// - "no signature", "no authorization": TS throws (HTTP 500); Python reads the missing field as "" and fails the
///   first check that reads it; so do we (TS names). "signature null": Python reads `None` as it reads a missing
///   signature, and so do we (before, a `null` field was `invalid_payload`).
/// - "authorization without value": both throw (HTTP 500); we answer `invalid_payload` (a number that does not
///   parse).
/// - Duplicate settle: Python broadcasts again and reports the revert (`transaction_failed`); TS and we refuse it
///   before sending (`invalid_exact_evm_nonce_already_used`, reference §5).
const EXPECTED: &[(&str, &str, bool)] = &[
    ("valid", "ok", true),
    (
        "wrong recipient",
        "invalid_exact_evm_recipient_mismatch",
        false,
    ),
    (
        "underpayment",
        "invalid_exact_evm_payload_authorization_value_mismatch",
        true,
    ),
    (
        "overpayment",
        "invalid_exact_evm_payload_authorization_value_mismatch",
        true,
    ),
    (
        "expired validBefore",
        "invalid_exact_evm_payload_authorization_valid_before",
        true,
    ),
    (
        "validAfter in the future",
        "invalid_exact_evm_payload_authorization_valid_after",
        true,
    ),
    (
        "signed by another key",
        "invalid_exact_evm_signature",
        false,
    ),
    ("signature not hex", "invalid_exact_evm_signature", false),
    (
        "signature of 64 bytes",
        "invalid_exact_evm_signature",
        false,
    ),
    (
        "nonce already used on chain",
        "invalid_exact_evm_nonce_already_used",
        true,
    ),
    (
        "insufficient balance",
        "invalid_exact_evm_insufficient_balance",
        true,
    ),
    ("asset without code", "asset_not_deployed_contract", true),
    (
        "EIP-712 name mismatch",
        "invalid_exact_evm_token_name_mismatch",
        false,
    ),
    (
        "EIP-712 version mismatch",
        "invalid_exact_evm_token_version_mismatch",
        false,
    ),
    (
        "network mismatch",
        "invalid_exact_evm_network_mismatch",
        false,
    ),
    ("scheme mismatch", "invalid_exact_evm_scheme", false),
    ("no signature", "invalid_exact_evm_signature", false),
    ("signature null", "invalid_exact_evm_signature", false),
    (
        "no authorization",
        "invalid_exact_evm_recipient_mismatch",
        false,
    ),
    (
        "authorization without from",
        "invalid_exact_evm_signature",
        false,
    ),
    (
        "authorization without nonce",
        "invalid_exact_evm_signature",
        false,
    ),
    ("authorization without value", "invalid_payload", false),
    ("no extra", "invalid_exact_evm_missing_eip712_domain", false),
];

/// `body` with the JSON pointer `path` removed (its last segment from its parent object).
fn without(mut body: Value, path: &str) -> Value {
    let (parent, field) = path.rsplit_once('/').unwrap();
    body.pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .unwrap()
        .remove(field)
        .unwrap();
    body
}

/// `body` with the JSON pointer `path` set to `value`.
fn with(mut body: Value, path: &str, value: Value) -> Value {
    *body.pointer_mut(path).unwrap() = value;
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn our_facilitator_answers_like_the_official_ones() {
    let (node, python) = match peer_programs() {
        Ok(p) => p,
        Err(why) if std::env::var_os("ESIM402_REQUIRE_PEERS").is_none() => {
            eprintln!(
                "skipped our_facilitator_answers_like_the_official_ones: {why} (scripts/setup.sh installs the peers; \
                 set ESIM402_REQUIRE_PEERS to fail instead)"
            );
            return;
        }
        Err(why) => {
            panic!("ESIM402_REQUIRE_PEERS is set but the reference facilitators cannot run: {why}")
        }
    };
    let s = PayStack::start(&[]).await;
    install_multicall3(&s).await;
    let ts = Peer::start(
        &node,
        "tests/peers/ts_facilitator.mjs",
        &s.rpc_url,
        TS_PEER_KEY,
    )
    .unwrap();
    let py = Peer::start(
        &python,
        "tests/peers/py_facilitator.py",
        &s.rpc_url,
        PY_PEER_KEY,
    )
    .unwrap();
    let http = &s.http;
    let token = s.token;
    let facilitators = [
        ("ours", s.url.as_str()),
        ("ts", ts.url.as_str()),
        ("py", py.url.as_str()),
    ];

    // Settlement first: a valid payment settled by ours succeeds, once; a duplicate is refused terminally, by
    // ours and by the references alike (they see the nonce used on chain), and nothing moves twice.
    let settled = Pay::new(token, "settled").body();
    let start = s.balance(chain::DEMO_AGENT).await;
    let (first, raw) = ask(http, &s.url, "/settle", &settled).await;
    assert_eq!(first, Verdict::Ok, "{raw}");
    let receipt = s
        .rpc("eth_getTransactionReceipt", json!([raw["transaction"]]))
        .await;
    assert_eq!(receipt["status"], "0x1", "{receipt}");
    assert_eq!(
        s.balance(chain::DEMO_AGENT).await,
        start - U256::from(AMOUNT)
    );
    let mut again = Vec::new();
    for (name, url) in facilitators {
        let (verdict, raw) = ask(http, url, "/settle", &settled).await;
        eprintln!("duplicate settle: {name:>4} → {verdict}   {raw}");
        again.push(verdict);
    }
    assert_eq!(
        s.balance(chain::DEMO_AGENT).await,
        start - U256::from(AMOUNT),
        "moved twice"
    );
    let [ours_again, ts_again, py_again] = <[Verdict; 3]>::try_from(again).unwrap();
    assert_eq!(
        ours_again,
        Verdict::Refused("invalid_exact_evm_nonce_already_used".into())
    );
    assert!(
        conforms(&ours_again, &ts_again, &py_again),
        "duplicate settle: ours {ours_again}, ts {ts_again}, py {py_again}"
    );

    // Verification: one body per case, sent to all three.
    let valid = || Pay::new(token, "case");
    let now = now();
    let mut cases: Vec<(&str, Value)> = vec![
        ("valid", valid().body()),
        ("wrong recipient", {
            let mut p = valid();
            p.auth.to = chain::DEPLOYER;
            p.body()
        }),
        ("underpayment", {
            let mut p = valid();
            p.auth.value -= U256::from(1);
            p.body()
        }),
        ("overpayment", {
            let mut p = valid();
            p.auth.value += U256::from(1);
            p.body()
        }),
        ("expired validBefore", {
            let mut p = valid();
            p.auth.valid_before = U256::from(now - 60);
            p.body()
        }),
        ("validAfter in the future", {
            let mut p = valid();
            p.auth.valid_after = U256::from(now + 3600);
            p.body()
        }),
        ("signed by another key", {
            let mut p = valid();
            p.signer = key(STRANGER_KEY);
            p.body()
        }),
        (
            "signature not hex",
            with(
                valid().body(),
                "/paymentPayload/payload/signature",
                json!("0xnothex"),
            ),
        ),
        ("signature of 64 bytes", {
            let b = valid().body();
            let sig = b["paymentPayload"]["payload"]["signature"]
                .as_str()
                .unwrap()[..130]
                .to_owned();
            with(b, "/paymentPayload/payload/signature", json!(sig))
        }),
        ("nonce already used on chain", settled.clone()),
        ("insufficient balance", valid().paid_by(PAUPER_KEY).body()),
        ("asset without code", {
            let mut p = valid().require("asset", json!(NO_CODE_ASSET));
            p.domain.verifying_contract = NO_CODE_ASSET.parse().unwrap();
            p.body()
        }),
        ("EIP-712 name mismatch", {
            let mut p = valid().require("extra", json!({"name": "USDC", "version": "2"}));
            p.domain.name = "USDC".into();
            p.body()
        }),
        ("EIP-712 version mismatch", {
            let mut p = valid().require("extra", json!({"name": "USD Coin", "version": "1"}));
            p.domain.version = "1".into();
            p.body()
        }),
        (
            "network mismatch",
            with(
                valid().body(),
                "/paymentPayload/accepted/network",
                json!("eip155:8453"),
            ),
        ),
        (
            "scheme mismatch",
            with(
                valid().body(),
                "/paymentPayload/accepted/scheme",
                json!("upto"),
            ),
        ),
        (
            "no signature",
            without(valid().body(), "/paymentPayload/payload/signature"),
        ),
        (
            "signature null",
            with(
                valid().body(),
                "/paymentPayload/payload/signature",
                Value::Null,
            ),
        ),
        (
            "no authorization",
            without(valid().body(), "/paymentPayload/payload/authorization"),
        ),
        (
            "authorization without from",
            without(valid().body(), "/paymentPayload/payload/authorization/from"),
        ),
        (
            "authorization without nonce",
            without(
                valid().body(),
                "/paymentPayload/payload/authorization/nonce",
            ),
        ),
        (
            "authorization without value",
            without(
                valid().body(),
                "/paymentPayload/payload/authorization/value",
            ),
        ),
        (
            "no extra",
            without(
                without(valid().body(), "/paymentRequirements/extra"),
                "/paymentPayload/accepted/extra",
            ),
        ),
    ];
    let mut table = Vec::new();
    let mut failures = Vec::new();
    for (name, body) in cases.drain(..) {
        let mut verdicts = Vec::new();
        for (who, url) in facilitators {
            let (verdict, raw) = ask(http, url, "/verify", &body).await;
            if who == "ours" && matches!(verdict, Verdict::Error(_)) {
                failures.push(format!("{name}: ours answered {verdict}: {raw}"));
            }
            verdicts.push(verdict);
        }
        let [ours, t, p] = <[Verdict; 3]>::try_from(verdicts).unwrap();
        if !conforms(&ours, &t, &p) {
            failures.push(format!("{name}: ours {ours}, ts {t}, py {p}"));
        }
        let &(_, want, agree) = EXPECTED
            .iter()
            .find(|(case, ..)| *case == name)
            .unwrap_or_else(|| panic!("no expectation for {name}"));
        if ours.to_string() != want {
            failures.push(format!("{name}: ours {ours}, expected {want}"));
        }
        // The references agree where expected (a drift here means the oracle changed, e.g. Multicall3 missing).
        let refs_agree = t == p && !matches!(t, Verdict::Error(_));
        if refs_agree != agree {
            failures.push(format!(
                "{name}: the references {} (ts {t}, py {p})",
                if agree {
                    "no longer agree"
                } else {
                    "now agree"
                }
            ));
        }
        table.push((name, ours, t, p));
    }
    assert_eq!(table.len(), EXPECTED.len(), "a case without a run");
    eprintln!(
        "\n{:<28} | {:<56} | {:<56} | py 2.25.0",
        "case", "ours", "ts 2.27.0"
    );
    for (name, ours, t, p) in &table {
        eprintln!("{name:<28} | {ours:<56} | {t:<56} | {p}");
    }
    assert!(
        failures.is_empty(),
        "not conformant:\n{}\nts log:\n{}\npy log:\n{}",
        failures.join("\n"),
        ts.log_text(),
        py.log_text()
    );
}
