//! Paying for an eSIM end to end on a real chain: the host serves the app, the dev stack runs anvil with the
//! project's EIP-3009 token, the SM-DP+ simulator hands out profiles. Payments are signed here with the kernel's
//! wallet-side signer (the official Python client has its own test, `python_client.rs`), sent to
//! `POST /v1/esim/activate`, and every outcome is checked on chain: balances, `authorizationState`, receipts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use alloy_primitives::{Address, B256, U256, keccak256};
use alloy_sol_types::{SolCall, sol};
use esim402_core::x402::exact::{TokenDomain, TransferAuthorization, sign_authorization};
use esim402_core::x402::header::{
    decode_payment_required_header, decode_payment_response_header, encode_payment_payload_header,
};
use esim402_core::x402::wire::{
    ExactEvmPayload, PaymentPayload, PaymentPayloadV2, PaymentRequirements,
};
use esim402_host::devstack::{DevStack, chain};
use esim402_host::runtime_config::StoreConfig;
use esim402_tests::{
    AppProcess, RedisServer, Runner, SmdpSim, TestApp, free_port, options, repo_root, spawn_app_on,
};
use serde_json::{Value, json};

sol! {
    function balanceOf(address account) returns (uint256);
    function authorizationState(address authorizer, bytes32 nonce) returns (bool);
    function transfer(address to, uint256 value) returns (bool);
    function transferWithAuthorization(address from, address to, uint256 value, uint256 validAfter,
        uint256 validBefore, bytes32 nonce, bytes signature);
    function cancelAuthorization(address authorizer, bytes32 nonce, uint8 v, bytes32 r, bytes32 s);
}

/// Where a [`PayStack`] serves the app.
pub enum Served {
    /// In this process (`spawn_app`), with the in-memory store.
    InProcess(TestApp),
    /// A child process (`esim402 up` or `spin up`).
    Process(AppProcess),
}

/// The store of an app served by a child process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// A SQLite file in the app's temporary directory (Spin's `type = "spin"`).
    Sqlite,
    /// A private `redis-server` (Spin's `type = "redis"`).
    Redis,
}

/// The app with a dev chain and an SM-DP+ simulator, all on loopback, all stopped on drop.
pub struct PayStack {
    _app: Served,
    /// The app's base URL.
    pub url: String,
    /// The Redis server of a `Store::Redis` app (stopped after the app).
    _redis: Option<RedisServer>,
    /// Holds a `Store::Sqlite` app's database file, so a restarted app finds it.
    _store_dir: tempfile::TempDir,
    /// Everything the app was started with: its `SPIN_VARIABLE_*` and other environment, and (for an app served
    /// by a child process) its runner and runtime config, so peers and restarts get the same.
    pub app_env: Vec<(String, String)>,
    launch: Option<(Runner, String)>,
    pub sim: SmdpSim,
    /// The dev chain (anvil stopped by PID on drop).
    pub chain: DevStack,
    pub http: reqwest::Client,
    pub rpc_url: String,
    pub token: Address,
    pub admin_token: String,
    /// The access token of every SIM this stack's requests activated (as an agent keeps them): sent with
    /// requests to that SIM's routes unless the request names its own `authorization`.
    pub sim_tokens: std::sync::Mutex<HashMap<String, String>>,
}

/// The ICCID a path addresses (`/v1/esim/<iccid>[/…]`), if any.
pub fn path_iccid(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v1/esim/")?;
    let iccid = rest.split(['/', '?']).next()?;
    (iccid.len() >= 18 && iccid.bytes().all(|b| b.is_ascii_digit())).then_some(iccid)
}

impl PayStack {
    pub async fn start(extra: &[(&str, &str)]) -> Self {
        Self::start_with(None, extra).await
    }

    /// The stack with the app served by `process` (a runner and its store), or in this process.
    pub async fn start_with(process: Option<(&Runner, Store)>, extra: &[(&str, &str)]) -> Self {
        Self::start_with_args(process, extra, &[]).await
    }

    /// [`Self::start_with`], passing `args` to the runner's `up` (for an app served by a child process).
    pub async fn start_with_args(
        process: Option<(&Runner, Store)>,
        extra: &[(&str, &str)],
        args: &[&str],
    ) -> Self {
        let listener = match process {
            None => Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()),
            Some(_) => None,
        };
        let addr = match &listener {
            Some(l) => l.local_addr().unwrap(),
            None => std::net::SocketAddr::from(([127, 0, 0, 1], free_port())),
        };
        let callback = format!("http://{addr}/gsma/rsp2/es2plus/handleDownloadProgressInfo");
        let sim = SmdpSim::start(Some(&callback), None).unwrap();
        let mut env = HashMap::from([("SPIN_VARIABLE_SMDP_URL".to_owned(), sim.url.clone())]);
        for (k, v) in extra {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        let chain = tokio::time::timeout(
            Duration::from_secs(30),
            DevStack::start(&repo_root(), addr, &env),
        )
        .await
        .expect("dev stack start timed out")
        .unwrap();
        let mut all = env;
        all.extend(chain.env.iter().cloned());
        let rpc_url = all["SPIN_VARIABLE_RPC_URL"].clone();
        let token = all["SPIN_VARIABLE_USDC_ADDRESS"].parse().unwrap();
        let admin_token = all["SPIN_VARIABLE_ADMIN_TOKEN"].clone();
        let app_env: Vec<(String, String)> = all.into_iter().collect();
        let store_dir = tempfile::tempdir().unwrap();
        let (app, redis, launch) = match (process, listener) {
            (Some((runner, store)), _) => {
                let redis = (store == Store::Redis).then(|| RedisServer::start().unwrap());
                // An absolute path in a directory of the stack's own: a restarted app opens the same file.
                let rc = match &redis {
                    Some(r) => format!(
                        "[key_value_store.default]\ntype = \"redis\"\nurl = \"{}\"\n",
                        r.url
                    ),
                    None => format!(
                        "[key_value_store.default]\ntype = \"spin\"\npath = \"{}\"\n",
                        store_dir.path().join("kv.db").display()
                    ),
                };
                let app = AppProcess::start_with_args(runner, addr.port(), &rc, &app_env, args)
                    .await
                    .unwrap();
                (Served::Process(app), redis, Some((runner.clone(), rc)))
            }
            (None, Some(listener)) => {
                let mut opts = options(StoreConfig::Memory);
                opts.env.extend(app_env.iter().cloned());
                (
                    Served::InProcess(spawn_app_on(opts, listener).await.unwrap()),
                    None,
                    None,
                )
            }
            (None, None) => unreachable!("an in-process app always has its listener"),
        };
        let url = match &app {
            Served::InProcess(a) => a.url.clone(),
            Served::Process(a) => a.url.clone(),
        };
        Self {
            _app: app,
            url,
            _redis: redis,
            _store_dir: store_dir,
            app_env,
            launch,
            sim,
            chain,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
            rpc_url,
            token,
            admin_token,
            sim_tokens: std::sync::Mutex::default(),
        }
    }

    /// Remember the access token a paid answer carries.
    pub fn remember(&self, body: &Value) {
        if let (Some(iccid), Some(token)) = (body["iccid"].as_str(), body["access_token"].as_str())
        {
            self.sim_tokens
                .lock()
                .unwrap()
                .insert(iccid.to_owned(), token.to_owned());
        }
    }

    /// A `SIGN-IN-WITH-X` value for `path`, signed by the agent that pays in these tests (the SIMs' owner).
    pub fn sign_in(&self, path: &str) -> String {
        self.sign_in_ahead(path, 0)
    }

    /// [`PayStack::sign_in`], issued `ahead` seconds in the future, for a host whose clock runs ahead
    /// (`ESIM402_CLOCK_SKEW_SECS`).
    pub fn sign_in_ahead(&self, path: &str, ahead: u64) -> String {
        esim402_tests::sign_in_ahead(
            chain::DEMO_AGENT_KEY.trim_start_matches("0x"),
            &self.url,
            path,
            ahead,
        )
    }

    /// The remembered access token of the SIM `path` addresses.
    pub fn token_for(&self, path: &str) -> Option<String> {
        let iccid = path_iccid(path)?;
        self.sim_tokens.lock().unwrap().get(iccid).cloned()
    }

    /// The app's environment with `set` added (or replaced) and `unset` removed.
    pub fn env_with(&self, set: &[(&str, &str)], unset: &[&str]) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self
            .app_env
            .iter()
            .filter(|(k, _)| !unset.contains(&k.as_str()) && !set.iter().any(|(s, _)| s == k))
            .cloned()
            .collect();
        env.extend(set.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        env
    }

    /// Another instance of an app served by a child process: same runner, same store, same settings, `env`
    /// (see [`PayStack::env_with`]), on a port of its own.
    pub async fn start_peer(&self, env: &[(String, String)]) -> AppProcess {
        let (runner, rc) = self
            .launch
            .as_ref()
            .expect("peers need an app served by a process");
        AppProcess::start(runner, free_port(), rc, env)
            .await
            .unwrap()
    }

    /// The child process serving the app.
    pub fn process(&mut self) -> &mut AppProcess {
        match &mut self._app {
            Served::Process(p) => p,
            Served::InProcess(_) => panic!("the app is served in this process"),
        }
    }

    /// Start the app again on its port and store with `env`, after its process ended (see
    /// [`AppProcess::kill`]).
    pub async fn restart(&mut self, env: &[(String, String)]) {
        let (runner, rc) = self
            .launch
            .clone()
            .expect("restarts need an app served by a process");
        self.process().kill();
        let port: u16 = self.url.rsplit(':').next().unwrap().parse().unwrap();
        let app = AppProcess::start(&runner, port, &rc, env).await.unwrap();
        self._app = Served::Process(app);
    }

    /// Stop the app and serve it again with another runner, on the same port, store and environment.
    pub async fn restart_on(&mut self, runner: Runner) {
        let launch = self
            .launch
            .as_mut()
            .expect("restarts need an app served by a process");
        launch.0 = runner;
        let env = self.app_env.clone();
        self.restart(&env).await;
    }

    /// How many transactions the dev stack's facilitator account has sent (hex quantity, `"0x0"` for none).
    pub async fn facilitator_transactions(&self) -> Value {
        self.rpc(
            "eth_getTransactionCount",
            json!([chain::FACILITATOR, "latest"]),
        )
        .await
    }

    pub async fn rpc(&self, method: &str, params: Value) -> Value {
        let r: Value = self
            .http
            .post(&self.rpc_url)
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(r.get("error").is_none(), "{method}: {r}");
        r["result"].clone()
    }

    async fn view<C: SolCall>(&self, call: &C) -> C::Return {
        let data = format!("0x{}", hex::encode(call.abi_encode()));
        let out = self
            .rpc(
                "eth_call",
                json!([{"to": self.token, "data": data}, "latest"]),
            )
            .await;
        let bytes = hex::decode(out.as_str().unwrap().trim_start_matches("0x")).unwrap();
        C::abi_decode_returns(&bytes).unwrap()
    }

    pub async fn balance(&self, who: Address) -> U256 {
        self.view(&balanceOfCall { account: who }).await
    }

    pub async fn nonce_used(&self, from: Address, nonce: B256) -> bool {
        self.view(&authorizationStateCall {
            authorizer: from,
            nonce,
        })
        .await
    }

    /// Send a token call from an unlocked anvil account; returns the tx hash.
    pub async fn send_token(&self, from: Address, data: Vec<u8>) -> String {
        let tx = self
            .rpc(
                "eth_sendTransaction",
                json!([{"from": from, "to": self.token, "data": format!("0x{}", hex::encode(data)),
                        "gas": "0x30000"}]),
            )
            .await;
        tx.as_str().unwrap().to_owned()
    }

    /// POST JSON with extra headers: status, headers, body.
    pub async fn post(
        &self,
        path: &str,
        body: &Value,
        headers: &[(&str, String)],
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut req = self.http.post(format!("{}{path}", self.url)).json(body);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        if !headers.iter().any(|(k, _)| {
            k.eq_ignore_ascii_case("authorization") || k.eq_ignore_ascii_case("sign-in-with-x")
        }) && let Some(t) = self.token_for(path)
        {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.json().await.unwrap_or(Value::Null);
        self.remember(&body);
        (status, headers, body)
    }

    /// GET with the SIMs' owner's wallet sign-in.
    pub async fn get_signed_in(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .header("sign-in-with-x", self.sign_in(path))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// GET with the SIM's remembered access token (if the path addresses one).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let mut req = self.http.get(format!("{}{path}", self.url));
        if let Some(t) = self.token_for(path) {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Present a tx-hash proof for the invoice (a 402 body) with the request `body`.
    pub async fn prove(
        &self,
        body: &Value,
        tx: String,
        invoice: &Value,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let id = invoice["invoice_id"].as_str().unwrap();
        self.post("/v1/esim/activate", body, &proof_headers(&tx, id))
            .await
    }

    /// Wait (at most 2 s) until anvil shows `tx` mined: it answers `eth_sendTransaction` before its automined
    /// block is visible.
    pub async fn mined(&self, tx: &str) {
        for _ in 0..200 {
            if !self
                .rpc("eth_getTransactionReceipt", json!([tx]))
                .await
                .is_null()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{tx} was not mined within 2 s");
    }

    /// A paid activation (`body`, its 402 paid with the agent's `exact` payment, `extra` headers beside the
    /// payment): the 200 body.
    pub async fn activate_paid(&self, body: &Value, extra: &[(&str, String)]) -> Value {
        let (_, req) = self.invoice(body).await;
        let pay = Payment::for_requirement(&req);
        let mut headers = vec![("payment-signature", pay.header())];
        headers.extend(extra.iter().cloned());
        let (status, act) = self.post_paid("/v1/esim/activate", body, &headers).await;
        assert_eq!(status, 200, "{act}");
        act
    }

    /// POST a paid request as a conforming client does: a 402 `settlement_pending` (broadcast, receipt not
    /// seen within `settlement_timeout_ms`, which a loaded machine can exceed) is answered by sending the same
    /// payment again, at most `PENDING_RESENDS` times. Status and body of the last answer.
    pub async fn post_paid(
        &self,
        path: &str,
        body: &Value,
        headers: &[(&str, String)],
    ) -> (u16, Value) {
        const PENDING_RESENDS: usize = 8;
        let mut answer = self.post(path, body, headers).await;
        for _ in 0..PENDING_RESENDS {
            if answer.0 != 402 || answer.2["error"]["code"] != "settlement_pending" {
                break;
            }
            answer = self.post(path, body, headers).await;
        }
        (answer.0, answer.2)
    }

    /// Profiles the SM-DP+ simulator has handed out (neither in its pool nor retired), every operator.
    pub async fn handed_out(&self) -> std::collections::BTreeSet<String> {
        let mut out = std::collections::BTreeSet::new();
        for op in ["tmobile", "verizon", "att", "telekom-de", "vodafone-de"] {
            let v: Value = self
                .http
                .get(format!("{}/admin/operators/{op}/profiles", self.sim.url))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            for p in v["profiles"].as_array().unwrap() {
                if !matches!(p["state"].as_str(), Some("Available" | "Unavailable")) {
                    out.insert(p["iccid"].as_str().unwrap().to_owned());
                }
            }
        }
        out
    }

    /// Ask for an activation: the 402's body and its first v2 requirement.
    pub async fn invoice(&self, body: &Value) -> (Value, PaymentRequirements) {
        self.challenge("/v1/esim/activate", body).await
    }

    /// The 402 that `POST path` with `body` answers: its body and its first offered requirement.
    pub async fn challenge(&self, path: &str, body: &Value) -> (Value, PaymentRequirements) {
        let (status, headers, body) = self.post(path, body, &[]).await;
        assert_eq!(status, 402, "{body}");
        let header = headers["payment-required"].to_str().unwrap();
        let required = decode_payment_required_header(header).unwrap();
        (body, required.accepts[0].clone())
    }

    /// `POST /admin/refunds/run` with the admin token: its status and summary.
    pub async fn run_refunds(&self) -> (u16, Value) {
        self.admin_run("refunds", Some(&self.admin_token)).await
    }

    /// `POST /admin/{what}/run` with `token` as the bearer (none: no `Authorization`): its status and body.
    pub async fn admin_run(&self, what: &str, token: Option<&str>) -> (u16, Value) {
        let mut r = self.http.post(format!("{}/admin/{what}/run", self.url));
        if let Some(token) = token {
            r = r.bearer_auth(token);
        }
        let r = r.send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    /// Every ledger entry (the admin export, all shards merged by time), as JSON.
    pub async fn ledger_entries(&self) -> Vec<Value> {
        let r = self
            .http
            .get(format!("{}/v1/ledger?limit=10000", self.url))
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        r.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The ledger's entries of `kind` for invoice `id`, in order.
    pub async fn ledger_of(&self, kind: &str, id: &str) -> Vec<Value> {
        self.ledger_entries()
            .await
            .into_iter()
            .filter(|e| e["kind"] == kind && e["invoice_id"] == id)
            .collect()
    }

    /// The ledger's kinds, in order, and whether it verifies.
    pub async fn ledger(&self) -> (Vec<String>, Value) {
        let kinds = self
            .ledger_entries()
            .await
            .iter()
            .map(|e| e["kind"].as_str().unwrap().to_owned())
            .collect();
        let (_, verify) = self.get("/v1/ledger/verify").await;
        (kinds, verify)
    }

    /// The paying wallet's SIMs (`GET /v1/esim`, signed in as the wallet).
    pub async fn wallet_sims(&self) -> Value {
        self.http
            .get(format!("{}/v1/esim", self.url))
            .header("sign-in-with-x", self.sign_in("/v1/esim"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Terminate `iccid` as its owner (a wallet sign-in): the status.
    pub async fn terminate(&self, iccid: &str) -> u16 {
        let path = format!("/v1/esim/{iccid}/terminate");
        self.http
            .post(format!("{}{path}", self.url))
            .header("sign-in-with-x", self.sign_in(&path))
            .json(&json!({}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// Make every us-west carrier answer 503, so activations there fail.
    pub async fn break_us_west(&self) {
        for op in ["tmobile", "verizon", "att"] {
            self.set_faults(op, json!({"http_503": true})).await;
        }
    }

    /// Inject `faults` into the SM-DP+ simulator's operator `op` (`PUT /admin/operators/<op>/faults`).
    pub async fn set_faults(&self, op: &str, faults: Value) {
        let r = self
            .http
            .put(format!("{}/admin/operators/{op}/faults", self.sim.url))
            .json(&faults)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
}

pub fn agent() -> Address {
    chain::DEMO_AGENT
}

/// The headers of a tx-hash proof of `tx` for the invoice `id`, signed by [`agent`]: `X-Payment-Proof`,
/// `X-Payment-Proof-Signature`, `X-Invoice-Id`.
pub fn proof_headers(tx: &str, id: &str) -> Vec<(&'static str, String)> {
    vec![
        ("x-payment-proof", tx.to_owned()),
        (
            "x-payment-proof-signature",
            esim402_tests::sign_proof(chain::DEMO_AGENT_KEY, id, tx),
        ),
        ("x-invoice-id", id.to_owned()),
    ]
}

fn agent_key() -> k256::ecdsa::SigningKey {
    let bytes = hex::decode(chain::DEMO_AGENT_KEY.trim_start_matches("0x")).unwrap();
    k256::ecdsa::SigningKey::from_slice(&bytes).unwrap()
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

static NONCES: AtomicU64 = AtomicU64::new(1);

/// One payment as a wallet builds it from a requirement; tests bend one field at a time.
#[derive(Clone)]
pub struct Payment {
    pub auth: TransferAuthorization,
    pub domain: TokenDomain,
    pub accepted: PaymentRequirements,
    pub high_s: bool,
    pub extensions: Option<serde_json::Map<String, Value>>,
    /// The payer's key (the demo agent's unless [`Payment::by`] says otherwise).
    pub key: k256::ecdsa::SigningKey,
}

impl Payment {
    /// The same payment, from the wallet of `key` (which must hold the token: `chain::fund`).
    pub fn by(mut self, key: k256::ecdsa::SigningKey) -> Self {
        self.auth.from = esim402_core::x402::exact::address_of(key.verifying_key());
        self.key = key;
        self
    }

    pub fn for_requirement(req: &PaymentRequirements) -> Self {
        let n = NONCES.fetch_add(1, Ordering::Relaxed);
        Self {
            auth: TransferAuthorization {
                from: agent(),
                to: req.pay_to.parse().unwrap(),
                value: req.amount.parse().unwrap(),
                valid_after: U256::ZERO,
                valid_before: U256::from(now() + req.max_timeout_seconds),
                nonce: keccak256(format!("payments test {n} {}", now())),
            },
            domain: TokenDomain {
                name: req.eip712_name().unwrap().to_owned(),
                version: req.eip712_version().unwrap().to_owned(),
                chain_id: chain::CHAIN_ID,
                verifying_contract: req.asset.parse().unwrap(),
            },
            accepted: req.clone(),
            high_s: false,
            extensions: None,
            key: agent_key(),
        }
    }

    fn signature(&self) -> Vec<u8> {
        let mut sig = sign_authorization(&self.key, &self.auth, &self.domain)
            .unwrap()
            .to_vec();
        if self.high_s {
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

    /// Calldata of the token's `transferWithAuthorization` executing this payment's authorization, as anyone
    /// holding it (its payer, another facilitator) may send it.
    pub fn calldata(&self) -> Vec<u8> {
        transferWithAuthorizationCall {
            from: self.auth.from,
            to: self.auth.to,
            value: self.auth.value,
            validAfter: self.auth.valid_after,
            validBefore: self.auth.valid_before,
            nonce: self.auth.nonce,
            signature: self.signature().into(),
        }
        .abi_encode()
    }

    /// Calldata of the token's `cancelAuthorization` burning this payment's nonce, signed by its payer
    /// (EIP-3009 `CancelAuthorization(address authorizer,bytes32 nonce)` under the token's domain).
    pub fn cancel_calldata(&self) -> Vec<u8> {
        let typehash = keccak256("CancelAuthorization(address authorizer,bytes32 nonce)");
        let mut encoded = Vec::with_capacity(96);
        encoded.extend_from_slice(typehash.as_slice());
        encoded.extend_from_slice(self.auth.from.into_word().as_slice());
        encoded.extend_from_slice(self.auth.nonce.as_slice());
        let mut digest = vec![0x19, 0x01];
        digest.extend_from_slice(self.domain.separator().as_slice());
        digest.extend_from_slice(keccak256(&encoded).as_slice());
        let sig =
            esim402_core::x402::exact::sign_prehash(&agent_key(), keccak256(&digest)).unwrap();
        cancelAuthorizationCall {
            authorizer: self.auth.from,
            nonce: self.auth.nonce,
            v: sig[64],
            r: B256::from_slice(&sig[..32]),
            s: B256::from_slice(&sig[32..64]),
        }
        .abi_encode()
    }

    /// The `PAYMENT-SIGNATURE` header value.
    pub fn header(&self) -> String {
        encode_payment_payload_header(&PaymentPayload::V2(PaymentPayloadV2 {
            resource: None,
            accepted: self.accepted.clone(),
            payload: ExactEvmPayload {
                signature: format!("0x{}", hex::encode(self.signature())),
                authorization: self.auth.to_wire(),
            },
            extensions: self.extensions.clone(),
        }))
    }

    pub fn with_payment_id(mut self, id: &str) -> Self {
        let mut m = serde_json::Map::new();
        m.insert(
            "payment-identifier".into(),
            json!({"info": {"required": false, "id": id}}),
        );
        self.extensions = Some(m);
        self
    }
}

pub(crate) fn activation() -> Value {
    json!({"region": "us-west", "data_mb": 100})
}

pub(crate) fn price(req: &PaymentRequirements) -> U256 {
    req.amount.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exact_payment_buys_an_activation_code_and_moves_usdc_once() {
    let s = PayStack::start(&[]).await;
    let recipient = chain::RECIPIENT;
    let (agent0, recipient0) = (s.balance(agent()).await, s.balance(recipient).await);
    let (invoice, req) = s.invoice(&activation()).await;
    assert_eq!(invoice["amount_usdc"], "0.42");
    assert_eq!(
        invoice["x402Version"], 1,
        "v1 challenge fields ride along: {invoice}"
    );
    assert_eq!(
        req.extra.as_ref().unwrap().other["invoiceId"],
        invoice["invoice_id"]
    );
    let pay = Payment::for_requirement(&req);
    let (status, headers, body) = s
        .post(
            "/v1/esim/activate",
            &activation(),
            &[("payment-signature", pay.header())],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let code = body["activation_code"].as_str().unwrap();
    assert!(code.starts_with("LPA:1$"), "{code}");
    assert_eq!(headers["cache-control"], "no-store");
    let settle =
        decode_payment_response_header(headers["payment-response"].to_str().unwrap()).unwrap();
    assert!(settle.success);
    assert_eq!(settle.network, "eip155:31337");
    assert_eq!(settle.transaction, body["transaction"].as_str().unwrap());
    // The transaction is real and mined.
    let receipt = s
        .rpc("eth_getTransactionReceipt", json!([settle.transaction]))
        .await;
    assert_eq!(receipt["status"], "0x1");
    assert_eq!(s.balance(agent()).await, agent0 - price(&req));
    assert_eq!(s.balance(recipient).await, recipient0 + price(&req));
    assert!(s.nonce_used(agent(), pay.auth.nonce).await);
    // The invoice is paid, the SIM exists, the code matches the simulator's profile.
    let id = invoice["invoice_id"].as_str().unwrap();
    let (_, inv) = s.get(&format!("/v1/invoices/{id}")).await;
    assert_eq!(inv["status"], "paid");
    assert_eq!(inv["transaction"], settle.transaction.as_str());
    let (status, sim) = s
        .get(&format!("/v1/esim/{}", body["iccid"].as_str().unwrap()))
        .await;
    assert_eq!(status, 200, "{sim}");
    assert_eq!(sim["invoice_id"], id);
    // The same payment again is a terminal "already settled"; nothing moves.
    let (status, _, again) = s
        .post(
            "/v1/esim/activate",
            &activation(),
            &[("payment-signature", pay.header())],
        )
        .await;
    assert_eq!(status, 409, "{again}");
    assert!(
        again["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already settled")
    );
    assert_eq!(s.balance(agent()).await, agent0 - price(&req));
    let (kinds, verify) = s.ledger().await;
    assert_eq!(
        kinds,
        [
            "invoice_issued",
            "payment_verified",
            "settlement_confirmed",
            "activation_completed",
            "data_credited"
        ]
    );
    assert_eq!(verify["ok"], true, "{verify}");
    assert_eq!(verify["count"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payment_identifier_replays_the_answer_and_refuses_reuse() {
    let s = PayStack::start(&[]).await;
    let (_, req) = s.invoice(&activation()).await;
    let pay = Payment::for_requirement(&req).with_payment_id("pay_0123456789abcdef0001");
    let send = |p: Payment| {
        let s = &s;
        async move {
            s.post(
                "/v1/esim/activate",
                &activation(),
                &[("payment-signature", p.header())],
            )
            .await
        }
    };
    let (status, h1, first) = send(pay.clone()).await;
    assert_eq!(status, 200, "{first}");
    let agent_after = s.balance(agent()).await;
    let (status, h2, second) = send(pay.clone()).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(first, second);
    assert_eq!(h1["payment-response"], h2["payment-response"]);
    // Same id, another payment (another invoice): 409, and it is not settled.
    let (_, req2) = s.invoice(&activation()).await;
    let other = Payment::for_requirement(&req2).with_payment_id("pay_0123456789abcdef0001");
    let (status, _, body) = send(other.clone()).await;
    assert_eq!(status, 409, "{body}");
    assert!(!s.nonce_used(agent(), other.auth.nonce).await);
    assert_eq!(s.balance(agent()).await, agent_after);
    // A malformed id is a 400 naming the extension.
    let bad = Payment::for_requirement(&req2).with_payment_id("short");
    let (status, _, body) = send(bad).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "payment-identifier");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_payments_are_refused_with_their_reason_and_move_nothing() {
    let s = PayStack::start(&[]).await;
    let start = s.balance(agent()).await;
    type Bend = fn(&mut Payment);
    let cases: [(&str, Bend, u16, &str); 9] = [
        (
            "wrong network",
            |p| p.accepted.network = "eip155:8453".into(),
            402,
            "No matching payment requirements",
        ),
        (
            "wrong token contract",
            |p| p.accepted.asset = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913".into(),
            402,
            "No matching payment requirements",
        ),
        (
            "wrong EIP-712 domain",
            |p| p.domain.name = "USDC".into(),
            402,
            "invalid_exact_evm_signature",
        ),
        (
            "wrong recipient",
            |p| p.auth.to = chain::DEPLOYER,
            402,
            "invalid_exact_evm_recipient_mismatch",
        ),
        (
            "underpayment",
            |p| p.auth.value -= U256::from(1),
            402,
            "invalid_exact_evm_payload_authorization_value_mismatch",
        ),
        (
            "expired",
            |p| p.auth.valid_before = U256::from(now() + 2),
            402,
            "invalid_exact_evm_payload_authorization_valid_before",
        ),
        (
            "not yet valid",
            |p| p.auth.valid_after = U256::from(now() + 120),
            402,
            "invalid_exact_evm_payload_authorization_valid_after",
        ),
        (
            "high-s signature",
            |p| p.high_s = true,
            402,
            "invalid_exact_evm_signature",
        ),
        (
            "signed by someone else",
            |p| p.auth.from = chain::DEPLOYER,
            402,
            "invalid_exact_evm_signature",
        ),
    ];
    for (name, bend, status_want, reason) in cases {
        let (_, req) = s.invoice(&activation()).await;
        let mut pay = Payment::for_requirement(&req);
        bend(&mut pay);
        let (status, headers, body) = s
            .post(
                "/v1/esim/activate",
                &activation(),
                &[("payment-signature", pay.header())],
            )
            .await;
        assert_eq!(status, status_want, "{name}: {body}");
        let challenge =
            decode_payment_required_header(headers["payment-required"].to_str().unwrap()).unwrap();
        assert_eq!(challenge.error.as_deref(), Some(reason), "{name}: {body}");
        // The answer says what was wrong in words, not only the code.
        if let Some(cause) = reason
            .parse::<esim402_core::x402::InvalidReason>()
            .ok()
            .and_then(|r| r.exact_cause())
        {
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains(cause), "{name}: {body}");
        }
        assert!(!s.nonce_used(pay.auth.from, pay.auth.nonce).await, "{name}");
        // The refused payment left the invoice open: the right payment still buys it.
        if name == "wrong recipient" {
            let good = Payment::for_requirement(&req);
            let (status, _, body) = s
                .post(
                    "/v1/esim/activate",
                    &activation(),
                    &[("payment-signature", good.header())],
                )
                .await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(s.balance(agent()).await, start - price(&req));
        }
    }
    let after_good = s.balance(agent()).await;

    // A nonce already used on chain (the agent's wallet reused it for a second invoice).
    let (_, req) = s.invoice(&activation()).await;
    let first = Payment::for_requirement(&req);
    let (status, _, body) = s
        .post(
            "/v1/esim/activate",
            &activation(),
            &[("payment-signature", first.header())],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, req2) = s.invoice(&activation()).await;
    let mut reused = Payment::for_requirement(&req2);
    reused.auth.nonce = first.auth.nonce;
    let (status, headers, body) = s
        .post(
            "/v1/esim/activate",
            &activation(),
            &[("payment-signature", reused.header())],
        )
        .await;
    assert_eq!(status, 402, "{body}");
    let challenge =
        decode_payment_required_header(headers["payment-required"].to_str().unwrap()).unwrap();
    assert_eq!(
        challenge.error.as_deref(),
        Some("invalid_exact_evm_nonce_already_used")
    );
    assert_eq!(s.balance(agent()).await, after_good - price(&req));

    // Malformed headers are 400s naming the header, never 5xx.
    for (header, value) in [
        ("payment-signature", "%%%not base64%%%".to_owned()),
        ("payment-signature", "bm90IGpzb24=".to_owned()),
        ("payment-signature", "eyJ4NDAyVmVyc2lvbiI6Mn0=".to_owned()),
        ("x-payment", "e30=".to_owned()),
        ("x-payment-proof", "0x1234".to_owned()),
    ] {
        let (status, _, body) = s
            .post(
                "/v1/esim/activate",
                &activation(),
                &[(header, value.clone())],
            )
            .await;
        assert_eq!(status, 400, "{header}: {value}: {body}");
        assert!(body["error"]["field"].is_string(), "{body}");
    }
    // A payment for one request sent with another request's body is refused before anything happens.
    let (_, req) = s.invoice(&activation()).await;
    let pay = Payment::for_requirement(&req);
    let (status, _, body) = s
        .post(
            "/v1/esim/activate",
            &json!({"region": "us-west", "data_mb": 1000}),
            &[("payment-signature", pay.header())],
        )
        .await;
    assert_eq!(status, 409, "{body}");
    // And says so: nothing was charged (a fresh-user trial: the 409 did not, so a client could not tell).
    assert_eq!(body["charged"], false, "{body}");
    assert!(!s.nonce_used(agent(), pay.auth.nonce).await);
    let (_, verify) = s.get("/v1/ledger/verify").await;
    assert_eq!(verify["ok"], true, "{verify}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_replays_settle_exactly_once() {
    hundred_replays(&PayStack::start(&[]).await).await;
}

/// 100 concurrent requests carry one `exact` payment: one 200, 99 × 409, one settlement, USDC moved once.
pub(crate) async fn hundred_replays(s: &PayStack) {
    let start = s.balance(agent()).await;
    let (_, req) = s.invoice(&activation()).await;
    let header = Payment::for_requirement(&req).header();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let http = s.http.clone();
        let url = format!("{}/v1/esim/activate", s.url);
        let header = header.clone();
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .header("payment-signature", header)
                .json(&activation())
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }));
    }
    let mut by_status: HashMap<u16, usize> = HashMap::new();
    let mut codes = Vec::new();
    for t in tasks {
        let (mut status, mut body) = t.await.unwrap();
        if status == 402 && body["error"]["code"] == "settlement_pending" {
            // The winner's receipt was not seen in time on a loaded machine: collect it as a client would.
            (status, body) = s
                .post_paid(
                    "/v1/esim/activate",
                    &activation(),
                    &[("payment-signature", header.clone())],
                )
                .await;
        }
        *by_status.entry(status).or_default() += 1;
        if status == 200 {
            codes.push(body["activation_code"].clone());
        } else {
            assert_eq!(status, 409, "{body}");
        }
    }
    assert_eq!(by_status.get(&200), Some(&1), "{by_status:?}");
    assert_eq!(by_status.get(&409), Some(&99), "{by_status:?}");
    assert_eq!(s.balance(agent()).await, start - price(&req));
    let (kinds, verify) = s.ledger().await;
    assert_eq!(
        kinds
            .iter()
            .filter(|k| *k == "settlement_confirmed")
            .count(),
        1
    );
    assert_eq!(verify["ok"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unconfirmed_settlement_is_pending_then_reconciled_without_a_second_broadcast() {
    let s = PayStack::start(&[("SPIN_VARIABLE_SETTLEMENT_TIMEOUT_MS", "1500")]).await;
    let start = s.balance(agent()).await;
    let (_, req) = s.invoice(&activation()).await;
    let pay = Payment::for_requirement(&req);
    s.rpc("evm_setAutomine", json!([false])).await;
    let (status, headers, body) = s
        .post(
            "/v1/esim/activate",
            &activation(),
            &[("payment-signature", pay.header())],
        )
        .await;
    assert_eq!(status, 402, "{body}");
    let settle =
        decode_payment_response_header(headers["payment-response"].to_str().unwrap()).unwrap();
    assert!(settle.is_pending(), "{settle:?}");
    assert_eq!(body["transaction"], settle.transaction.as_str());
    let pool = s.rpc("txpool_content", json!([])).await;
    assert_eq!(pool["pending"].as_object().unwrap().len(), 1, "{pool}");
    s.rpc("anvil_mine", json!([1])).await;
    s.rpc("evm_setAutomine", json!([true])).await;
    let (status, headers, body) = s
        .post(
            "/v1/esim/activate",
            &activation(),
            &[("payment-signature", pay.header())],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let done =
        decode_payment_response_header(headers["payment-response"].to_str().unwrap()).unwrap();
    assert_eq!(done.transaction, settle.transaction, "no second broadcast");
    assert!(
        body["activation_code"]
            .as_str()
            .unwrap()
            .starts_with("LPA:1$")
    );
    assert_eq!(s.balance(agent()).await, start - price(&req));
    let nonce = s.facilitator_transactions().await;
    assert_eq!(nonce, "0x1", "the facilitator sent exactly one transaction");
}

/// A top-up whose settlement is still pending when its SIM is terminated, sent again once mined: the order's
/// replay refuses (the SIM is gone) but the money moved, so it is owed back (charged: true, refunded by the
/// refund job). Before, the replay's refusal answered "nothing was charged" and ended the payment while its
/// settlement confirmed: the top-up's money was kept for nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_settled_top_up_whose_sim_was_terminated_meanwhile_is_owed_back() {
    let s = PayStack::start(&[("SPIN_VARIABLE_SETTLEMENT_TIMEOUT_MS", "1500")]).await;
    let act = s.activate_paid(&activation(), &[]).await;
    let iccid = act["iccid"].as_str().unwrap().to_owned();
    let path = format!("/v1/esim/{iccid}/data");
    let ask = json!({"top_up_mb": 10});
    let (_, req) = s.challenge(&path, &ask).await;
    let pay = Payment::for_requirement(&req);
    let before = s.balance(agent()).await;
    s.rpc("evm_setAutomine", json!([false])).await;
    let (status, _, body) = s
        .post(&path, &ask, &[("payment-signature", pay.header())])
        .await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["error"]["code"], "settlement_pending", "{body}");
    assert_eq!(s.terminate(&iccid).await, 200);
    s.rpc("anvil_mine", json!([1])).await;
    s.rpc("evm_setAutomine", json!([true])).await;
    assert_eq!(s.balance(agent()).await, before - price(&req));
    let (status, _, body) = s
        .post(&path, &ask, &[("payment-signature", pay.header())])
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["charged"], true, "{body}");
    assert_eq!(body["refund"]["status"], "owed", "{body}");
    let (status, run) = s.run_refunds().await;
    assert_eq!(status, 200, "{run}");
    // The top-up's refund is paid (beside the terminate's refund of the activation's unused data).
    let top_up_invoice = &req.extra.as_ref().unwrap().other["invoiceId"];
    assert!(
        run["paid"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| &r["invoice"] == top_up_invoice),
        "{run}"
    );
    assert!(s.balance(agent()).await > before, "{run}");
}

/// An activation whose settlement is still pending when its region leaves the catalog (a restart with a new
/// catalog), sent again once mined: its order is not placed again (the catalog would refuse it) but found in
/// its journal, and the settled payment delivers that SIM. Before, the refused re-order owed the payment back
/// while the SIM stayed active with its owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_settling_activation_is_delivered_though_its_region_left_the_catalog() {
    let mut s = PayStack::start_with(
        Some((&Runner::Host, Store::Sqlite)),
        &[("SPIN_VARIABLE_SETTLEMENT_TIMEOUT_MS", "1500")],
    )
    .await;
    let (_, req) = s.invoice(&activation()).await;
    let pay = Payment::for_requirement(&req);
    let headers = [("payment-signature", pay.header())];
    s.rpc("evm_setAutomine", json!([false])).await;
    let (status, _, body) = s.post("/v1/esim/activate", &activation(), &headers).await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["error"]["code"], "settlement_pending", "{body}");
    let mut catalog: toml::Table = esim402_core::esim::catalog::BUILTIN_TOML.parse().unwrap();
    catalog["regions"]
        .as_table_mut()
        .unwrap()
        .remove("us-west")
        .unwrap();
    let without = toml::to_string(&catalog).unwrap();
    let env = s.env_with(&[("SPIN_VARIABLE_CARRIER_CATALOG", &without)], &[]);
    s.restart(&env).await;
    s.rpc("anvil_mine", json!([1])).await;
    s.rpc("evm_setAutomine", json!([true])).await;
    let (status, _, body) = s.post("/v1/esim/activate", &activation(), &headers).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["activation_code"]
            .as_str()
            .unwrap()
            .starts_with("LPA:1$"),
        "{body}"
    );
    assert!(body["refund"].is_null(), "{body}");
    let (status, run) = s.run_refunds().await;
    assert_eq!(status, 200, "{run}");
    assert_eq!(
        run["paid"].as_array().unwrap().len(),
        0,
        "nothing owed back: {run}"
    );
}

/// An activation whose settlement is pending when its owner terminates the SIM (found in the wallet's list),
/// sent again once mined: the SIM it paid for is gone, so the settled payment is owed back (409, charged:
/// true, refunded by the job) and nothing is ordered again. Before, the terminated SIM was answered as a
/// delivery (200 with its dead activation code) and the payment kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_settling_activation_whose_sim_was_terminated_is_owed_back() {
    let s = PayStack::start(&[("SPIN_VARIABLE_SETTLEMENT_TIMEOUT_MS", "1500")]).await;
    let (_, req) = s.invoice(&activation()).await;
    let pay = Payment::for_requirement(&req);
    let headers = [("payment-signature", pay.header())];
    let before = s.balance(agent()).await;
    s.rpc("evm_setAutomine", json!([false])).await;
    let (status, _, body) = s.post("/v1/esim/activate", &activation(), &headers).await;
    assert_eq!(status, 402, "{body}");
    let list = s.wallet_sims().await;
    let iccid = list["sims"][0]["iccid"].as_str().unwrap().to_owned();
    assert_eq!(s.terminate(&iccid).await, 200);
    s.rpc("anvil_mine", json!([1])).await;
    s.rpc("evm_setAutomine", json!([true])).await;
    let handed = s.handed_out().await.len();
    let (status, _, body) = s.post("/v1/esim/activate", &activation(), &headers).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["charged"], true, "{body}");
    assert_eq!(body["refund"]["status"], "owed", "{body}");
    assert_eq!(s.handed_out().await.len(), handed, "nothing ordered again");
    let (status, run) = s.run_refunds().await;
    assert_eq!(status, 200, "{run}");
    assert_eq!(s.balance(agent()).await, before, "{run}");
}

/// The invoice expires while its profile is being ordered: settling is refused before anything is claimed or
/// sent, so no money moves, and the profile is withdrawn (retired at the carrier) instead of staying active
/// and unpaid with the payer. The same payment sent again gets the same answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_invoice_that_expires_during_its_order_settles_nothing_and_keeps_no_sim() {
    let s = PayStack::start(&[("SPIN_VARIABLE_INVOICE_TTL_SECS", "2")]).await;
    let start = s.balance(agent()).await;
    let (_, req) = s.invoice(&activation()).await;
    // T-Mobile (us-west's first carrier) answers each call after 1.5 s: the order outlasts the invoice.
    s.set_faults("tmobile", json!({"latency_ms": 1500})).await;
    let pay = Payment::for_requirement(&req);
    let headers = [("payment-signature", pay.header())];
    for _ in 0..2 {
        let (status, _, body) = s.post("/v1/esim/activate", &activation(), &headers).await;
        assert_eq!(status, 410, "{body}");
        assert!(body["activation_code"].is_null(), "{body}");
    }
    assert!(!s.nonce_used(agent(), pay.auth.nonce).await);
    assert_eq!(s.balance(agent()).await, start);
    // The payer's one SIM, as its owner lists it: terminated, not in service unpaid.
    let list = s.wallet_sims().await;
    let sims = list["sims"].as_array().unwrap();
    assert_eq!(sims.len(), 1, "{list}");
    assert_eq!(sims[0]["state"], "terminated", "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_activation_settles_nothing() {
    let s = PayStack::start(&[("SPIN_VARIABLE_ES2_TIMEOUT_MS", "2000")]).await;
    let start = s.balance(agent()).await;
    let (invoice, req) = s.invoice(&activation()).await;
    s.break_us_west().await;
    let pay = Payment::for_requirement(&req);
    let (status, headers, body) = s
        .post(
            "/v1/esim/activate",
            &activation(),
            &[("payment-signature", pay.header())],
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["charged"], false);
    assert!(headers.get("payment-response").is_none());
    assert!(!s.nonce_used(agent(), pay.auth.nonce).await);
    assert_eq!(s.balance(agent()).await, start);
    let id = invoice["invoice_id"].as_str().unwrap();
    // The failure ended the invoice (another payment of it gets the same failure): it reads `failed`, not
    // `open` as before, which told a client it could still pay it.
    let (_, inv) = s.get(&format!("/v1/invoices/{id}")).await;
    assert_eq!(inv["status"], "failed");
    let (kinds, verify) = s.ledger().await;
    assert_eq!(
        kinds,
        ["invoice_issued", "payment_verified", "activation_failed"]
    );
    assert_eq!(verify["ok"], true);
}

/// A stack whose orders at a slowed T-Mobile ([`slow_tmobile`]) outlive the dispatch budget (4 s, ES2+ calls
/// timing out after 3.5 s): the order is left pending.
async fn short_budget_stack() -> PayStack {
    PayStack::start(&[
        ("SPIN_VARIABLE_DISPATCH_BUDGET_SECS", "4"),
        ("SPIN_VARIABLE_ES2_TIMEOUT_MS", "3500"),
    ])
    .await
}

/// T-Mobile answering every ES2+ call after 2.2 s (`on`: the DownloadOrder within its 3.5 s timeout, the
/// ConfirmOrder not within the budget left), or at once again.
async fn slow_tmobile(s: &PayStack, on: bool) {
    let faults = if on {
        json!({"latency_ms": 2200})
    } else {
        json!({})
    };
    s.set_faults("tmobile", faults).await;
}

/// `send` a paid request while T-Mobile is slowed ([`slow_tmobile`]) so that its order outlives the dispatch
/// budget, then T-Mobile at full speed again: the answer's status and body, and the profiles handed out
/// meanwhile (the pending order's).
async fn with_tmobile_slowed(
    s: &PayStack,
    send: impl AsyncFn() -> (u16, reqwest::header::HeaderMap, Value),
) -> (u16, Value, Vec<String>) {
    let before = s.handed_out().await;
    slow_tmobile(s, true).await;
    let (status, _, answer) = send().await;
    slow_tmobile(s, false).await;
    let allocated = s.handed_out().await.difference(&before).cloned().collect();
    (status, answer, allocated)
}

/// Send (`send`) until the answer is 200, at most a minute, once a second: every answer before it a 503 that
/// `pending` accepts (a resend within the first order's journal lease is answered the same). The 200's body.
async fn until_ok(
    send: impl AsyncFn() -> (u16, reqwest::header::HeaderMap, Value),
    pending: impl Fn(&Value) -> bool,
) -> Value {
    for _ in 0..60 {
        let (status, _, answer) = send().await;
        if status == 200 {
            return answer;
        }
        assert!(status == 503 && pending(&answer), "{status} {answer}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    panic!("still pending after a minute");
}

/// A tx-hash payment whose order outlives the dispatch budget ([`short_budget_stack`]) is told the
/// truth: its transfer is already ours (`charged: true`, the transaction named), not "nothing was charged";
/// the same proof sent again collects the SIM (once the first order's journal lease, 18 s here, has run out:
/// until then every resend is answered the same).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tx_hash_payment_whose_order_is_pending_is_told_it_was_charged() {
    let s = short_budget_stack().await;
    let body = json!({"region": "us-west", "data_mb": 100, "carrier": "tmobile",
                      "payer": agent().to_string()});
    let (invoice, req) = s.invoice(&body).await;
    let tx = pay_directly(&s, chain::RECIPIENT, price(&req)).await;
    slow_tmobile(&s, true).await;
    let (status, _, pending) = s.prove(&body, tx.clone(), &invoice).await;
    assert_eq!(status, 503, "{pending}");
    assert_eq!(pending["charged"], true, "{pending}");
    assert_eq!(pending["transaction"], tx.as_str(), "{pending}");
    let message = pending["error"]["message"].as_str().unwrap();
    assert!(!message.contains("nothing was charged"), "{message}");
    slow_tmobile(&s, false).await;
    let paid = until_ok(
        async || s.prove(&body, tx.clone(), &invoice).await,
        |answer| answer["charged"] == true,
    )
    .await;
    assert!(paid["activation_code"].is_string(), "{paid}");
}

/// A switch moves the SIM's balance, so it is refused (409, nothing quoted or paid) while the SIM has none yet:
/// a tx-hash activation whose order the owner finished with `refresh` is in service before its proof, sent
/// again, credits it. Before, the switch was paid and moved nothing, and the data credited later stayed with
/// the SIM the switch retired, refunded by nothing (a review).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_switch_waits_for_the_sims_balance() {
    let s = short_budget_stack().await;
    let body = json!({"region": "us-west", "data_mb": 100, "carrier": "tmobile",
                      "payer": agent().to_string()});
    let (invoice, req) = s.invoice(&body).await;
    let tx = pay_directly(&s, chain::RECIPIENT, price(&req)).await;
    let (status, pending, allocated) =
        with_tmobile_slowed(&s, async || s.prove(&body, tx.clone(), &invoice).await).await;
    assert_eq!(status, 503, "{pending}");
    let iccid = allocated.first().unwrap().clone();
    let refresh = format!("/v1/esim/{iccid}/refresh");
    let mut refreshed = false;
    for _ in 0..60 {
        let (status, _, answer) = s
            .post(
                &refresh,
                &json!({}),
                &[("sign-in-with-x", s.sign_in(&refresh))],
            )
            .await;
        if status == 200 && answer["state"] == "active" {
            refreshed = true;
            break;
        }
        assert!([200, 409, 503].contains(&status), "{status} {answer}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(refreshed, "the order was never finished");
    let switch = format!("/v1/esim/{iccid}/switch");
    let to = json!({"carrier": "verizon"});
    let (status, headers, refused) = s
        .post(&switch, &to, &[("sign-in-with-x", s.sign_in(&switch))])
        .await;
    assert_eq!(status, 409, "{refused}");
    assert!(!headers.contains_key("payment-required"), "nothing quoted");
    let message = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("has no data balance yet"), "{refused}");
    // The proof sent again credits it; the switch is then quoted.
    let paid = until_ok(
        async || s.prove(&body, tx.clone(), &invoice).await,
        |answer| answer["charged"] == true,
    )
    .await;
    assert_eq!(paid["iccid"], iccid.as_str(), "{paid}");
    let (status, _, quote) = s
        .post(&switch, &to, &[("sign-in-with-x", s.sign_in(&switch))])
        .await;
    assert_eq!(status, 402, "{quote}");
}

/// `esim402 up --jobs-every N` runs the operator's jobs itself, as a cron job would: a refund owed for a
/// tx-hash payment whose activation failed is paid with no call to `POST /admin/refunds/run` (the same run's
/// cleanup job answers too; a refused token would be on the console).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_host_runs_the_operator_jobs_itself() {
    let s = PayStack::start_with_args(
        Some((&Runner::Host, Store::Sqlite)),
        &[("SPIN_VARIABLE_ES2_TIMEOUT_MS", "2000")],
        &["--jobs-every", "1"],
    )
    .await;
    let (id, start, _, _) = failed_tx_hash_activation(&s, 0).await;
    let mut waited = 0;
    while s.balance(agent()).await != start {
        assert!(waited < 60, "the host's refund job never paid the refund");
        tokio::time::sleep(Duration::from_secs(1)).await;
        waited += 1;
    }
    assert_eq!(s.ledger_of("refund_paid", &id).await.len(), 1);
}

/// An `exact` payment whose order outlives the dispatch budget (T-Mobile slowed as above) and that is never
/// sent again: once its authorization can no longer settle (`validBefore` + 60 s; signed here to expire 15 s
/// on), the operator's cleanup run (`POST /admin/cleanup/run`, from cron) withdraws it, with no order placed
/// since: its profile retired at the carrier, nothing moved on chain. Before, the profile stayed allocated for
/// good, and then until some later order's sweep. (About 80 s of real time.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_abandoned_exact_order_is_withdrawn_once_its_authorization_expires() {
    let s = short_budget_stack().await;
    let body = json!({"region": "us-west", "data_mb": 100, "carrier": "tmobile"});
    let (_, req) = s.invoice(&body).await;
    let mut pay = Payment::for_requirement(&req);
    let valid_before = now() + 15;
    pay.auth.valid_before = U256::from(valid_before);
    let headers = [("payment-signature", pay.header())];
    let (status, pending, allocated) = with_tmobile_slowed(&s, async || {
        s.post("/v1/esim/activate", &body, &headers).await
    })
    .await;
    assert_eq!(status, 503, "{pending}");
    assert_eq!(
        allocated.len(),
        1,
        "the pending order's profile: {allocated:?}"
    );
    // Another order before the deadline leaves it allocated.
    s.activate_paid(
        &json!({"region": "us-west", "data_mb": 100, "carrier": "verizon"}),
        &[],
    )
    .await;
    assert!(s.handed_out().await.contains(&allocated[0]));
    wait_past(valid_before + 61).await;
    // With no order placed since, the operator's cleanup run (cron) withdraws it; only with the admin token.
    for token in [None, Some("not-the-admin-token")] {
        let (status, refused) = s.admin_run("cleanup", token).await;
        assert_eq!(status, 401, "{refused}");
    }
    assert!(s.handed_out().await.contains(&allocated[0]));
    let (status, run) = s.admin_run("cleanup", Some(&s.admin_token)).await;
    assert_eq!(status, 200, "{run}");
    assert_eq!(
        (&run["withdrawn"], &run["parked"]),
        (&json!(1), &json!(0)),
        "{run}"
    );
    assert!(
        !s.handed_out().await.contains(&allocated[0]),
        "the abandoned order's profile {} is still allocated",
        allocated[0]
    );
    assert!(!s.nonce_used(agent(), pay.auth.nonce).await);
    // The run sent the kept request again (its authorization might have been executed): never executed, it
    // ended as "nothing charged".
    assert_eq!(
        (&run["rechecked"], &run["rechecked_owed"]),
        (&json!(1), &json!(0)),
        "{run}"
    );
    // Once: a later order's sweep, and the next run, find nothing to withdraw.
    s.activate_paid(
        &json!({"region": "us-west", "data_mb": 100, "carrier": "verizon"}),
        &[],
    )
    .await;
    let (status, again) = s.admin_run("cleanup", Some(&s.admin_token)).await;
    assert_eq!(
        (
            status,
            &again["withdrawn"],
            &again["rechecked"],
            &again["recheck_left"]
        ),
        (200, &json!(0), &json!(0), &json!(0)),
        "{again}"
    );
}

/// Sleep until the clock is past `t` (unix seconds).
async fn wait_past(t: u64) {
    while now() <= t {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// An `exact` payment, signed to expire at `valid_before`, whose order outlives the dispatch budget
/// ([`short_budget_stack`], T-Mobile left slowed): answered 503, its order pending.
struct PendingExact {
    s: PayStack,
    body: Value,
    id: String,
    req: PaymentRequirements,
    pay: Payment,
    /// The payer's balance before it paid.
    start: U256,
}

async fn pending_exact(valid_before: u64) -> PendingExact {
    let s = short_budget_stack().await;
    let body = json!({"region": "us-west", "data_mb": 100, "carrier": "tmobile"});
    let (invoice, req) = s.invoice(&body).await;
    let id = invoice["invoice_id"].as_str().unwrap().to_owned();
    let mut pay = Payment::for_requirement(&req);
    pay.auth.valid_before = U256::from(valid_before);
    let start = s.balance(agent()).await;
    slow_tmobile(&s, true).await;
    let headers = [("payment-signature", pay.header())];
    let (status, _, pending) = s.post("/v1/esim/activate", &body, &headers).await;
    assert_eq!(status, 503, "{pending}");
    PendingExact {
        s,
        body,
        id,
        req,
        pay,
        start,
    }
}

/// An `exact` payment whose order outlives the dispatch budget, and whose payer then executes the signed
/// authorization itself (as another facilitator could): its money is at `payTo`. The same payment sent again
/// no longer verifies (its nonce is used), yet it is settled by that transaction: while the order still waits
/// the answer says the money was taken (`charged: true`, naming the payer's transaction) and the order is parked
/// as paid, so the operator's cleanup run past `validBefore` does not withdraw it unpaid; sent again once the
/// carrier answers, the SIM is delivered, the invoice is paid by the payer's own transaction (in the ledger
/// once), and nothing moves twice. Before, the resend withdrew the order and answered `charged: false` while
/// the money stayed with us. (About 80 s of real time.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exact_payment_executed_by_its_payer_while_its_order_waits_is_delivered() {
    let valid_before = now() + 20;
    let PendingExact {
        s,
        body,
        id,
        req,
        pay,
        start,
    } = pending_exact(valid_before).await;
    let headers = [("payment-signature", pay.header())];
    // The payer executes its authorization while the order waits at the (still slow) carrier.
    let tx = s.send_token(agent(), pay.calldata()).await;
    s.mined(&tx).await;
    assert!(s.nonce_used(agent(), pay.auth.nonce).await);
    // Sent again while the order waits: the money is ours, and the answer says so.
    let (status, _, taken) = s.post("/v1/esim/activate", &body, &headers).await;
    assert_eq!(status, 503, "{taken}");
    assert_eq!(
        (&taken["charged"], &taken["transaction"]),
        (&json!(true), &json!(tx)),
        "{taken}"
    );
    slow_tmobile(&s, false).await;
    // Past the authorization's deadline the cleanup run leaves the order alone: it is paid.
    wait_past(valid_before + 61).await;
    let (status, run) = s.admin_run("cleanup", Some(&s.admin_token)).await;
    assert_eq!((status, &run["withdrawn"]), (200, &json!(0)), "{run}");
    let done = until_ok(
        async || s.post("/v1/esim/activate", &body, &headers).await,
        |a| a["transaction"] == tx.as_str(),
    )
    .await;
    assert!(
        done["activation_code"]
            .as_str()
            .is_some_and(|c| c.starts_with("LPA:1$")),
        "{done}"
    );
    let (_, read) = s.get(&format!("/v1/invoices/{id}")).await;
    assert_eq!(read["status"], "paid", "{read}");
    let confirmed = s.ledger_of("settlement_confirmed", &id).await;
    assert_eq!(confirmed.len(), 1, "{confirmed:?}");
    assert_eq!(confirmed[0]["tx_hash"], tx.as_str(), "{confirmed:?}");
    assert_eq!(s.ledger_of("activation_completed", &id).await.len(), 1);
    assert_eq!(s.balance(agent()).await, start - price(&req));
    // Sent once more: refused as settled (as any paid payment without a payment identifier), nothing moved.
    let (status, _, again) = s.post("/v1/esim/activate", &body, &headers).await;
    assert_eq!(status, 409, "{again}");
    assert_eq!(s.balance(agent()).await, start - price(&req));
    let (_, verify) = s.ledger().await;
    assert_eq!(verify["ok"], true, "{verify}");
}

/// An `exact` payment whose order outlives the dispatch budget, whose payer executes the authorization itself
/// and never sends the payment again: the operator's cleanup run withdraws the order once the authorization can
/// no longer settle, then sends the request it kept again, as the payer would. The authorization was executed,
/// so the invoice is settled by the payer's transaction and the payment owed back, once; the refund run pays it,
/// and the payer's own resend afterwards is told of the refund. Before, the money stayed with us until the payer
/// sent the payment again (an earlier build: for good). (About 80 s of real time.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exact_payment_executed_by_its_payer_and_never_sent_again_is_owed_back_by_the_cleanup_run()
 {
    let valid_before = now() + 15;
    let PendingExact {
        s,
        body,
        id,
        req,
        pay,
        start,
    } = pending_exact(valid_before).await;
    slow_tmobile(&s, false).await;
    let tx = s.send_token(agent(), pay.calldata()).await;
    s.mined(&tx).await;
    assert_eq!(s.balance(agent()).await, start - price(&req));
    wait_past(valid_before + 61).await;
    let (status, run) = s.admin_run("cleanup", Some(&s.admin_token)).await;
    assert_eq!(
        (
            status,
            &run["withdrawn"],
            &run["rechecked"],
            &run["rechecked_owed"]
        ),
        (200, &json!(1), &json!(1), &json!(1)),
        "{run}"
    );
    let confirmed = s.ledger_of("settlement_confirmed", &id).await;
    assert_eq!(confirmed.len(), 1, "{confirmed:?}");
    assert_eq!(confirmed[0]["tx_hash"], tx.as_str(), "{confirmed:?}");
    assert_eq!(s.ledger_of("refund_owed", &id).await.len(), 1);
    let (status, paid) = s.admin_run("refunds", Some(&s.admin_token)).await;
    assert_eq!(status, 200, "{paid}");
    assert_eq!(s.balance(agent()).await, start);
    // Looked at once: the next run sends nothing again; the payer's own resend is told of the refund.
    let (status, again) = s.admin_run("cleanup", Some(&s.admin_token)).await;
    assert_eq!(
        (status, &again["rechecked"], &again["recheck_left"]),
        (200, &json!(0), &json!(0)),
        "{again}"
    );
    let headers = [("payment-signature", pay.header())];
    let (status, _, owed) = s.post("/v1/esim/activate", &body, &headers).await;
    assert_eq!((status, &owed["charged"]), (409, &json!(true)), "{owed}");
    assert!(owed["refund"]["status"].is_string(), "{owed}");
    assert_eq!(s.ledger_of("refund_owed", &id).await.len(), 1);
    assert_eq!(s.balance(agent()).await, start);
    let (_, verify) = s.ledger().await;
    assert_eq!(verify["ok"], true, "{verify}");
}

/// A tx-hash payment whose order outlives the dispatch budget and whose payer never sends the proof again: its
/// transfer is ours, so no deadline ends it. Once it has stayed pending `paid_order_pending_secs` (5 s here),
/// the operator's cleanup run withdraws it (the profile retired at the carrier) and owes the payment back, once;
/// the refund run pays it, and the proof sent again is answered with that refund. Before, nothing revisited
/// it: the payer's money stayed with us and the profile stayed allocated.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_abandoned_tx_hash_order_is_withdrawn_and_its_payment_owed_back() {
    let s = PayStack::start(&[
        ("SPIN_VARIABLE_DISPATCH_BUDGET_SECS", "4"),
        ("SPIN_VARIABLE_ES2_TIMEOUT_MS", "3500"),
        ("SPIN_VARIABLE_PAID_ORDER_PENDING_SECS", "5"),
    ])
    .await;
    let body = json!({"region": "us-west", "data_mb": 100, "carrier": "tmobile",
                      "payer": agent().to_string()});
    let (invoice, req) = s.invoice(&body).await;
    let id = invoice["invoice_id"].as_str().unwrap().to_owned();
    let start = s.balance(agent()).await;
    let tx = pay_directly(&s, chain::RECIPIENT, price(&req)).await;
    let (status, pending, allocated) =
        with_tmobile_slowed(&s, async || s.prove(&body, tx.clone(), &invoice).await).await;
    assert_eq!(
        (status, &pending["charged"]),
        (503, &json!(true)),
        "{pending}"
    );
    assert_eq!(
        allocated.len(),
        1,
        "the pending order's profile: {allocated:?}"
    );
    // The operator's run (cron): nothing before the grace and the order's lease are over, then withdrawn and
    // owed back.
    let mut waited = 0;
    let run = loop {
        let (status, run) = s.admin_run("cleanup", Some(&s.admin_token)).await;
        assert_eq!(status, 200, "{run}");
        if run["owed_back"] == 1 {
            break run;
        }
        assert_eq!(run["withdrawn"], 0, "{run}");
        assert!(waited < 60, "never withdrawn: {run}");
        tokio::time::sleep(Duration::from_secs(1)).await;
        waited += 1;
    };
    assert_eq!(
        (&run["withdrawn"], &run["parked"], &run["owed_left"]),
        (&json!(1), &json!(0), &json!(0)),
        "{run}"
    );
    assert!(
        !s.handed_out().await.contains(&allocated[0]),
        "the withdrawn order's profile {} is still allocated",
        allocated[0]
    );
    let (_, read) = s.get(&format!("/v1/invoices/{id}")).await;
    assert_eq!(read["status"], "refunded", "{read}");
    // Once: the next run owes nothing more; the refund run pays it back whole.
    let (_, again) = s.admin_run("cleanup", Some(&s.admin_token)).await;
    assert_eq!(
        (&again["withdrawn"], &again["owed_back"]),
        (&json!(0), &json!(0)),
        "{again}"
    );
    let (status, paid) = s.admin_run("refunds", Some(&s.admin_token)).await;
    assert_eq!(status, 200, "{paid}");
    assert_eq!(s.balance(agent()).await, start);
    assert_eq!(s.ledger_of("refund_owed", &id).await.len(), 1);
    // The proof sent again gets no SIM: its answer names the refund.
    let (status, _, resent) = s.prove(&body, tx.clone(), &invoice).await;
    assert_ne!(status, 200, "{resent}");
    assert_eq!(resent["charged"], true, "{resent}");
    assert!(resent["refund"].is_object(), "{resent}");
}

/// The owner's `POST …/refresh` does not finish the pending order of an `exact` payment that has not settled
/// (the same payment sent again does, and settles it): before, it released the profile for a payment that
/// might never come.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refresh_does_not_finish_the_order_of_an_unsettled_exact_payment() {
    let s = short_budget_stack().await;
    let body = json!({"region": "us-west", "data_mb": 100, "carrier": "tmobile"});
    let (_, req) = s.invoice(&body).await;
    let pay = Payment::for_requirement(&req);
    let headers = [("payment-signature", pay.header())];
    let (status, pending, allocated) = with_tmobile_slowed(&s, async || {
        s.post("/v1/esim/activate", &body, &headers).await
    })
    .await;
    assert_eq!(status, 503, "{pending}");
    let iccid = allocated.first().unwrap().clone();
    let refresh = format!("/v1/esim/{iccid}/refresh");
    let (status, _, refused) = s
        .post(
            &refresh,
            &json!({}),
            &[("sign-in-with-x", s.sign_in(&refresh))],
        )
        .await;
    assert_eq!(status, 409, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("send the same payment again"),
        "{refused}"
    );
    let (_, sim) = s.get_signed_in(&format!("/v1/esim/{iccid}")).await;
    assert_eq!(sim["state"], "pending", "{sim}");
    assert!(!s.nonce_used(agent(), pay.auth.nonce).await);
    // The same payment sent again finishes and settles it (once the first order's journal lease has ended).
    let paid = until_ok(
        async || s.post("/v1/esim/activate", &body, &headers).await,
        |_| true,
    )
    .await;
    assert_eq!(paid["iccid"], iccid.as_str(), "{paid}");
    assert!(s.nonce_used(agent(), pay.auth.nonce).await);
}

/// A tx-hash payment of its invoice's price plus `extra` micro-USDC whose activation fails (every us-west
/// carrier answering 503): the invoice id, the payer's balance before it paid, what it sent, and the 503 answer,
/// which owes the payment back.
async fn failed_tx_hash_activation(s: &PayStack, extra: u64) -> (String, U256, U256, Value) {
    let body = json!({"region": "us-west", "data_mb": 100, "payer": agent().to_string()});
    let (invoice, req) = s.invoice(&body).await;
    let id = invoice["invoice_id"].as_str().unwrap().to_owned();
    let start = s.balance(agent()).await;
    let sent = price(&req) + U256::from(extra);
    let tx = pay_directly(s, chain::RECIPIENT, sent).await;
    assert_eq!(s.balance(agent()).await, start - sent);
    s.break_us_west().await;
    let (status, _, failed) = s
        .post("/v1/esim/activate", &body, &proof_headers(&tx, &id))
        .await;
    assert_eq!(status, 503, "{failed}");
    assert_eq!(failed["refund"]["status"], "owed", "{failed}");
    (id, start, sent, failed)
}

/// The agent pays by itself (an ERC-20 transfer) and proves it with the transaction hash, once mined.
pub(crate) async fn pay_directly(s: &PayStack, to: Address, amount: U256) -> String {
    let data = transferCall { to, value: amount }.abi_encode();
    let tx = s.send_token(agent(), data).await;
    s.mined(&tx).await;
    tx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tx_hash_proof_pays_once_and_only_for_its_payer() {
    let s = PayStack::start(&[]).await;
    let body = json!({"region": "us-west", "data_mb": 100, "payer": agent().to_string()});
    let (invoice, req) = s.invoice(&body).await;
    let id = invoice["invoice_id"].as_str().unwrap().to_owned();
    let tx = pay_directly(&s, chain::RECIPIENT, price(&req)).await;
    // Someone who saw the transfer (in the pool or mined) and names its sender as the payer of their own
    // invoice cannot present it: the proof must be signed by the payer, for that invoice.
    let (stolen, _) = s.invoice(&body).await;
    let stolen_id = stolen["invoice_id"].as_str().unwrap();
    for signature in [
        esim402_tests::sign_proof(&"11".repeat(32), stolen_id, &tx),
        esim402_tests::sign_proof(chain::DEMO_AGENT_KEY, &id, &tx),
    ] {
        let (status, _, refused) = s
            .post(
                "/v1/esim/activate",
                &body,
                &[
                    ("x-payment-proof", tx.clone()),
                    ("x-payment-proof-signature", signature),
                    ("x-invoice-id", stolen_id.to_owned()),
                ],
            )
            .await;
        assert_eq!(status, 402, "{refused}");
        assert_eq!(refused["error"]["reason"], "invalid_exact_evm_signature");
    }
    // Unsigned: a 400 naming the missing header.
    let (status, _, unsigned) = s
        .post(
            "/v1/esim/activate",
            &body,
            &[
                ("x-payment-proof", tx.clone()),
                ("x-invoice-id", id.clone()),
            ],
        )
        .await;
    assert_eq!(status, 400, "{unsigned}");
    assert_eq!(unsigned["error"]["field"], "X-Payment-Proof-Signature");
    // A request naming two invoices (its body one, X-Invoice-Id another) is refused, not read as its body's.
    let mut two = body.clone();
    two["invoice_id"] = json!(stolen_id);
    let (status, _, both) = s
        .post("/v1/esim/activate", &two, &proof_headers(&tx, &id))
        .await;
    assert_eq!(status, 400, "{both}");
    assert_eq!(both["error"]["field"], "X-Invoice-Id", "{both}");
    // The payer's own proof pays.
    let (status, _, paid) = s
        .post("/v1/esim/activate", &body, &proof_headers(&tx, &id))
        .await;
    assert_eq!(status, 200, "{paid}");
    assert!(
        paid["activation_code"]
            .as_str()
            .unwrap()
            .starts_with("LPA:1$")
    );
    assert_eq!(paid["transaction"], tx.as_str());
    // The same transaction cannot pay a second invoice.
    let (invoice2, _) = s.invoice(&body).await;
    let mut with_id = body.clone();
    with_id["invoice_id"] = invoice2["invoice_id"].clone();
    let invoice2_id = invoice2["invoice_id"].as_str().unwrap();
    let mut signed_for_2 = proof_headers(&tx, invoice2_id);
    signed_for_2.pop(); // the invoice id travels in the body
    let (status, _, again) = s.post("/v1/esim/activate", &with_id, &signed_for_2).await;
    assert_eq!(status, 409, "{again}");
    // Someone who watched the chain cannot claim the agent's transfer for their own invoice.
    let thief = json!({"region": "us-west", "data_mb": 100, "payer": chain::DEPLOYER.to_string()});
    let (stolen, _) = s.invoice(&thief).await;
    let tx2 = pay_directly(&s, chain::RECIPIENT, price(&req)).await;
    let (status, _, body2) = s.prove(&thief, tx2.clone(), &stolen).await;
    assert_eq!(status, 402, "{body2}");
    // An underpaying transfer and a transfer to someone else are refused too.
    for (to, amount) in [
        (chain::RECIPIENT, price(&req) - U256::from(1)),
        (chain::DEPLOYER, price(&req)),
    ] {
        let (inv, _) = s.invoice(&body).await;
        let tx = pay_directly(&s, to, amount).await;
        let (status, _, refused) = s.prove(&body, tx, &inv).await;
        assert_eq!(status, 402, "{refused}");
    }
    // Paying in another asset (ether instead of the invoice's token) proves nothing either.
    let (inv, _) = s.invoice(&body).await;
    let eth = s
        .rpc(
            "eth_sendTransaction",
            json!([{"from": agent(), "to": chain::RECIPIENT, "value": format!("{:#x}", price(&req))}]),
        )
        .await;
    let eth = eth.as_str().unwrap().to_owned();
    s.mined(&eth).await;
    let (status, _, refused) = s.prove(&body, eth, &inv).await;
    assert_eq!(status, 402, "{refused}");
    assert_eq!(refused["error"]["reason"], "invalid_payload", "{refused}");
    // A reverted transfer (more than the agent holds) proves nothing.
    let (inv, _) = s.invoice(&body).await;
    let huge = s.balance(agent()).await + U256::from(1);
    let tx = pay_directly(&s, chain::RECIPIENT, huge).await;
    let receipt = s.rpc("eth_getTransactionReceipt", json!([tx])).await;
    assert_eq!(receipt["status"], "0x0");
    let (status, _, refused) = s.prove(&body, tx, &inv).await;
    assert_eq!(status, 402, "{refused}");
    assert_eq!(
        refused["error"]["reason"],
        "invalid_exact_evm_transaction_failed"
    );
    // Without the invoice id the proof is a 400 naming it.
    let mut unnamed = proof_headers(&tx2, &id);
    unnamed.pop();
    let (status, _, missing) = s.post("/v1/esim/activate", &body, &unnamed).await;
    assert_eq!(status, 400, "{missing}");
    assert_eq!(missing["error"]["field"], "invoice_id");
    let (_, verify) = s.get("/v1/ledger/verify").await;
    assert_eq!(verify["ok"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paid_tx_hash_whose_activation_fails_is_refunded_by_the_refund_job() {
    let s = PayStack::start(&[("SPIN_VARIABLE_ES2_TIMEOUT_MS", "2000")]).await;
    // Overpaid by a dollar: the whole transfer is owed back, not the invoice's amount (before, the dollar was
    // kept).
    let (id, start, sent, failed) = failed_tx_hash_activation(&s, 1_000_000).await;
    assert_eq!(failed["charged"], true);
    assert_eq!(failed["refund"]["amount"], sent.to_string(), "{failed}");
    // The ledger says what came in, as well as the invoice's amount.
    let verified = s.ledger_of("payment_verified", &id).await;
    assert_eq!(verified.len(), 1, "{verified:?}");
    assert_eq!(
        verified[0]["details"]["transferred"], "1.42",
        "{}",
        verified[0]
    );
    let (_, inv) = s.get(&format!("/v1/invoices/{id}")).await;
    assert_eq!(inv["status"], "refunded");
    // The admin endpoint needs its token.
    let run = |token: Option<String>| {
        let s = &s;
        async move {
            let mut r = s.http.post(format!("{}/admin/refunds/run", s.url));
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            let r = r.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    assert_eq!(run(None).await.0, 401);
    assert_eq!(run(Some("wrong".into())).await.0, 401);
    let (status, summary) = run(Some(s.admin_token.clone())).await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["paid"].as_array().unwrap().len(), 1, "{summary}");
    assert_eq!(
        s.balance(agent()).await,
        start,
        "the refund restored the agent's USDC"
    );
    let (_, again) = run(Some(s.admin_token.clone())).await;
    assert_eq!(again["paid"].as_array().unwrap().len(), 0, "{again}");
    assert_eq!(s.balance(agent()).await, start);
    let (kinds, verify) = s.ledger().await;
    for k in [
        "settlement_confirmed",
        "activation_failed",
        "refund_owed",
        "refund_paid",
    ] {
        assert_eq!(
            kinds.iter().filter(|x| *x == k).count(),
            1,
            "{k}: {kinds:?}"
        );
    }
    assert_eq!(verify["ok"], true);
}

/// A refund's payment that a reorganisation took after the refund was owed is not paid back while it is off
/// the chain (before, the refund job paid without looking: the treasury returned money that never stayed);
/// once the same transaction is mined again, the next run pays it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_waits_while_a_reorganisation_has_taken_its_payment() {
    let s = PayStack::start(&[("SPIN_VARIABLE_ES2_TIMEOUT_MS", "2000")]).await;
    let body = json!({"region": "us-west", "data_mb": 100, "payer": agent().to_string()});
    let (invoice, req) = s.invoice(&body).await;
    let id = invoice["invoice_id"].as_str().unwrap().to_owned();
    let start = s.balance(agent()).await;
    let snapshot = s.rpc("evm_snapshot", json!([])).await;
    let tx = pay_directly(&s, chain::RECIPIENT, price(&req)).await;
    let raw = s.rpc("eth_getRawTransactionByHash", json!([tx])).await;
    assert!(raw.as_str().is_some_and(|r| r.len() > 2), "{raw}");
    s.break_us_west().await;
    let (status, _, failed) = s
        .post("/v1/esim/activate", &body, &proof_headers(&tx, &id))
        .await;
    assert_eq!(status, 503, "{failed}");
    assert_eq!(failed["refund"]["status"], "owed", "{failed}");
    // The chain reorganises: the transfer is gone, and the agent has its money without any refund.
    assert_eq!(s.rpc("evm_revert", json!([snapshot])).await, true);
    assert_eq!(s.balance(agent()).await, start);
    let (status, summary) = s.run_refunds().await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["paid"].as_array().unwrap().len(), 0, "{summary}");
    let failures = summary["failed"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{summary}");
    assert_eq!(failures[0]["invoice"], id.as_str(), "{summary}");
    assert!(
        failures[0]["error"]
            .as_str()
            .unwrap()
            .contains("not on chain now"),
        "{summary}"
    );
    assert_eq!(s.balance(agent()).await, start, "nothing was paid back");
    // The same transaction mined again: the refund stands, and the next run pays it, once.
    let again = s.rpc("eth_sendRawTransaction", json!([raw])).await;
    assert_eq!(again.as_str(), Some(tx.as_str()));
    s.mined(&tx).await;
    assert_eq!(s.balance(agent()).await, start - price(&req));
    let (status, summary) = s.run_refunds().await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["paid"].as_array().unwrap().len(), 1, "{summary}");
    assert_eq!(s.balance(agent()).await, start);
    assert_one_refund_owed_and_paid(&s).await;
}

/// The requirement of the 402 a switch to `target` answers at `path`.
async fn switch_requirement(s: &PayStack, path: &str, target: &Value) -> PaymentRequirements {
    let (status, headers, quote) = s.post(path, target, &[]).await;
    assert_eq!(status, 402, "{quote}");
    decode_payment_required_header(headers["payment-required"].to_str().unwrap())
        .unwrap()
        .accepts[0]
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paid_switch_moves_the_sim_to_another_carrier() {
    let s = PayStack::start(&[]).await;
    let (first, req) = s.invoice(&activation()).await;
    let (status, _, sim) = s
        .post(
            "/v1/esim/activate",
            &activation(),
            &[("payment-signature", Payment::for_requirement(&req).header())],
        )
        .await;
    assert_eq!(status, 200, "{sim}");
    let iccid = sim["iccid"].as_str().unwrap();
    let path = format!("/v1/esim/{iccid}/switch");
    let target = json!({"carrier": "verizon"});
    let switch_req = switch_requirement(&s, &path, &target).await;
    let before = s.balance(agent()).await;
    let pay = Payment::for_requirement(&switch_req);
    // The switch payment cannot buy an activation.
    let (status, _, refused) = s
        .post(
            "/v1/esim/activate",
            &activation(),
            &[("payment-signature", pay.header())],
        )
        .await;
    assert_eq!(status, 409, "{refused}");
    // Nor is it taken with a request naming another invoice (before, the header was ignored).
    let (status, _, two) = s
        .post(
            &path,
            &target,
            &[
                ("payment-signature", pay.header()),
                ("x-invoice-id", first["invoice_id"].as_str().unwrap().into()),
            ],
        )
        .await;
    assert_eq!(
        (status, &two["error"]["field"], &two["charged"]),
        (400, &json!("invoice_id"), &json!(false)),
        "{two}"
    );
    let (status, headers, new_sim) = s
        .post(&path, &target, &[("payment-signature", pay.header())])
        .await;
    assert_eq!(status, 200, "{new_sim}");
    assert!(headers.contains_key("payment-response"));
    assert_eq!(new_sim["carrier"], "verizon");
    assert_eq!(new_sim["replaces"], iccid);
    assert!(
        new_sim["activation_code"]
            .as_str()
            .unwrap()
            .starts_with("LPA:1$")
    );
    assert_eq!(s.balance(agent()).await, before - price(&switch_req));
}

/// A switch asked with the SIM's access token and paid from another wallet is refused before anything is paid
/// (403, `charged: false`): a leaked token must not turn into a profile holding the owner's balance, nor cut
/// the owner's SIM off (before, the switch was made and its answer handed the new SIM's code to the token's
/// holder). The owner's wallet sign-in may pay a switch from another wallet.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_switch_paid_by_another_wallet_needs_the_owners_sign_in() {
    let s = PayStack::start(&[]).await;
    let sim = s.activate_paid(&activation(), &[]).await;
    let iccid = sim["iccid"].as_str().unwrap();
    let path = format!("/v1/esim/{iccid}/switch");
    let target = json!({"carrier": "verizon"});
    let switch_req = switch_requirement(&s, &path, &target).await;
    let other = k256::ecdsa::SigningKey::from_slice(&[0x42; 32]).unwrap();
    let other_address = esim402_core::x402::exact::address_of(other.verifying_key());
    chain::fund(&s.rpc_url, s.token, other_address, U256::from(1_000_000u64))
        .await
        .unwrap();
    let funded = s.balance(other_address).await;
    let pay = Payment::for_requirement(&switch_req).by(other);
    let (status, _, refused) = s
        .post(&path, &target, &[("payment-signature", pay.header())])
        .await;
    assert_eq!(
        (status, &refused["charged"], &refused["error"]["code"]),
        (403, &json!(false), &json!("forbidden")),
        "{refused}"
    );
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("SIGN-IN-WITH-X"),
        "{refused}"
    );
    assert_eq!(s.balance(other_address).await, funded, "nothing taken");
    let (_, balance) = s.get(&format!("/v1/esim/{iccid}/balance")).await;
    assert_eq!(
        balance["switched_to"],
        Value::Null,
        "not switched: {balance}"
    );
    // With the owner's wallet sign-in, the same payment pays it.
    let (status, _, paid) = s
        .post(
            &path,
            &target,
            &[
                ("payment-signature", pay.header()),
                ("sign-in-with-x", s.sign_in(&path)),
            ],
        )
        .await;
    assert_eq!(status, 200, "{paid}");
    assert_eq!(paid["payer"], other_address.to_string(), "{paid}");
    assert!(
        paid["activation_code"]
            .as_str()
            .unwrap()
            .starts_with("LPA:1$"),
        "{paid}"
    );
    assert_eq!(
        s.balance(other_address).await,
        funded - price(&switch_req),
        "paid once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_facilitator_api_verifies_and_settles_a_third_party_payment_once() {
    let s = PayStack::start(&[]).await;
    // A merchant's own requirement (no invoice): 0.01 USDC to the deployer account.
    let req: PaymentRequirements = serde_json::from_value(json!({
        "scheme": "exact", "network": "eip155:31337", "amount": "10000",
        "asset": s.token.to_string(), "payTo": chain::DEPLOYER.to_string(),
        "maxTimeoutSeconds": 60, "extra": {"name": "USD Coin", "version": "2"}
    }))
    .unwrap();
    let pay = Payment::for_requirement(&req);
    let payload: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::STANDARD, pay.header()).unwrap(),
    )
    .unwrap();
    let body = json!({"x402Version": 2, "paymentPayload": payload, "paymentRequirements": req});
    let start = s.balance(agent()).await;
    let (status, _, verdict) = s.post("/verify", &body, &[]).await;
    assert_eq!(status, 200, "{verdict}");
    assert_eq!(verdict["isValid"], true, "{verdict}");
    assert_eq!(verdict["payer"], agent().to_string());
    let (status, _, settled) = s.post("/settle", &body, &[]).await;
    assert_eq!(status, 200, "{settled}");
    assert_eq!(settled["success"], true, "{settled}");
    let receipt = s
        .rpc("eth_getTransactionReceipt", json!([settled["transaction"]]))
        .await;
    assert_eq!(receipt["status"], "0x1");
    assert_eq!(s.balance(agent()).await, start - U256::from(10_000u64));
    // A second settle of the same authorization is a terminal failure, never a second transfer.
    let (status, _, again) = s.post("/settle", &body, &[]).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["success"], false, "{again}");
    assert_eq!(again["errorReason"], "invalid_exact_evm_nonce_already_used");
    assert_eq!(s.balance(agent()).await, start - U256::from(10_000u64));
    let (_, _, reverify) = s.post("/verify", &body, &[]).await;
    assert_eq!(reverify["isValid"], false);
    assert_eq!(
        reverify["invalidReason"],
        "invalid_exact_evm_nonce_already_used"
    );
}

/// A payment of a 402 body's first v1 requirement as a v1 client sends it: the requirement, the payload's v2
/// JSON (its `payload` is what the v1 header carries) and the `X-PAYMENT` value.
fn v1_payment(challenge: &Value) -> (PaymentRequirements, Value, String) {
    let v1 = &challenge["accepts"][0];
    let req: PaymentRequirements = serde_json::from_value(json!({
        "scheme": "exact", "network": v1["network"], "amount": v1["maxAmountRequired"],
        "asset": v1["asset"], "payTo": v1["payTo"], "maxTimeoutSeconds": v1["maxTimeoutSeconds"],
        "extra": v1["extra"],
    }))
    .unwrap();
    let mut pay = Payment::for_requirement(&req);
    pay.auth.valid_after = U256::from(now() - 600); // what v1 clients send
    let v2: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::STANDARD, pay.header()).unwrap(),
    )
    .unwrap();
    let header = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        json!({"x402Version": 1, "scheme": "exact", "network": v1["network"], "payload": v2["payload"]})
            .to_string(),
    );
    (req, v2, header)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_v1_client_pays_with_x_payment_and_reads_x_payment_response() {
    let s = PayStack::start(&[]).await;
    // v1 clients read the JSON body of the 402.
    let (status, _, challenge) = s.post("/v1/esim/activate", &activation(), &[]).await;
    assert_eq!(status, 402);
    assert_eq!(challenge["x402Version"], 1);
    assert_eq!(challenge["accepts"][0]["maxAmountRequired"], "420000");
    let (req, _, header) = v1_payment(&challenge);
    let start = s.balance(agent()).await;
    let (status, headers, body) = s
        .post(
            "/v1/esim/activate",
            &activation(),
            &[("x-payment", header.clone())],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(headers.get("payment-response").is_none());
    let settle =
        decode_payment_response_header(headers["x-payment-response"].to_str().unwrap()).unwrap();
    assert!(settle.success);
    assert_eq!(s.balance(agent()).await, start - price(&req));
    // A replay finds the invoice this payment already paid (v1 payments name none): 409, nothing ordered.
    let (status, _, again) = s
        .post(
            "/v1/esim/activate",
            &activation(),
            &[("x-payment", header.clone())],
        )
        .await;
    assert_eq!(status, 409, "{again}");
    // And with another request it is refused before anything happens, without naming the invoice it is bound
    // to (anyone can rebuild a v1 payment from its settlement's calldata; the invoice's terms name the
    // purchase).
    let (status, _, other) = s
        .post(
            "/v1/esim/activate",
            &json!({"region": "us-east", "data_mb": 100}),
            &[("x-payment", header)],
        )
        .await;
    assert_eq!(status, 409, "{other}");
    assert!(!other.to_string().contains("inv_"), "{other}");
    let (kinds, _) = s.ledger().await;
    assert_eq!(
        kinds
            .iter()
            .filter(|k| *k == "activation_completed")
            .count(),
        1
    );
    assert_eq!(s.balance(agent()).await, start - price(&req));
}

/// An x402 v1 payment names no invoice, and once its settlement is sent every field of it is in the
/// transaction's calldata: anyone can send it again. Sent again after its settlement was left pending, it
/// completes, but its answer carries neither the activation code nor the access token (before, whoever resent
/// it got both: the payer's profile); the payer reads the code with its wallet sign-in.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resumed_v1_payment_answers_without_the_activation_code() {
    let s = PayStack::start(&[("SPIN_VARIABLE_SETTLEMENT_TIMEOUT_MS", "1500")]).await;
    let (_, _, challenge) = s.post("/v1/esim/activate", &activation(), &[]).await;
    let (_, v2, header) = v1_payment(&challenge);
    s.rpc("evm_setAutomine", json!([false])).await;
    let (status, _, body) = s
        .post(
            "/v1/esim/activate",
            &activation(),
            &[("x-payment", header.clone())],
        )
        .await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["error"]["code"], "settlement_pending", "{body}");
    // The payload is public now: its nonce and signature are in the pending transaction's calldata.
    let pool = s.rpc("txpool_content", json!([])).await.to_string();
    let signature = v2["payload"]["signature"].as_str().unwrap();
    let nonce = v2["payload"]["authorization"]["nonce"].as_str().unwrap();
    assert!(
        pool.contains(&signature[2..66]) && pool.contains(&nonce[2..]),
        "{pool}"
    );
    s.rpc("anvil_mine", json!([1])).await;
    s.rpc("evm_setAutomine", json!([true])).await;

    // Sent again (by anyone): delivered, without the codes.
    let anyone = reqwest::Client::new();
    let r = anyone
        .post(format!("{}/v1/esim/activate", s.url))
        .header("x-payment", header)
        .json(&activation())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let done: Value = r.json().await.unwrap();
    for field in [
        "activation_code",
        "qr_code",
        "access_token",
        "iccid",
        "eid",
        "owner",
    ] {
        assert!(done.get(field).is_none(), "{field}: {done}");
    }
    assert_eq!(done["status"], "paid", "{done}");
    assert!(
        done["activation_code_note"]
            .as_str()
            .unwrap()
            .contains("SIGN-IN-WITH-X"),
        "{done}"
    );
    // The payer finds the SIM and reads its code with its wallet sign-in (an access token would not do).
    let (_, listed) = s.get_signed_in("/v1/esim").await;
    let iccid = listed["sims"][0]["iccid"].as_str().unwrap().to_owned();
    let path = format!("/v1/esim/{iccid}/activation");
    let (_, sim) = s.get_signed_in(&path).await;
    assert!(
        sim["activation_code"]
            .as_str()
            .unwrap()
            .starts_with("LPA:1$"),
        "{sim}"
    );
    // A first attempt answers with both; its access token does not open the activation route.
    let other = s.activate_paid(&activation(), &[]).await;
    assert!(other["access_token"].is_string(), "{other}");
    let (status, body) = s
        .get(&format!(
            "/v1/esim/{}/activation",
            other["iccid"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not to an access token"),
        "refused for the token, not for a missing credential: {body}"
    );
    // Terminated, its code is given to nobody.
    assert_eq!(s.terminate(&iccid).await, 200);
    assert_eq!(s.get_signed_in(&path).await.0, 409);
}

/// A v1 payload names no invoice whichever header carries it: sent in `PAYMENT-SIGNATURE` it is bound to one
/// invoice as in `X-PAYMENT`, so sent again after its settlement was left pending it completes that invoice
/// (without the codes, as any public v1 payload). Before, it was taken for v2 and every resend got a new
/// invoice: the payer could not collect what it had paid for (409 "already settled").
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_v1_payload_in_payment_signature_is_bound_to_one_invoice() {
    let s = PayStack::start(&[("SPIN_VARIABLE_SETTLEMENT_TIMEOUT_MS", "1500")]).await;
    let (_, _, challenge) = s.post("/v1/esim/activate", &activation(), &[]).await;
    let (req, _, header) = v1_payment(&challenge);
    let start = s.balance(agent()).await;
    s.rpc("evm_setAutomine", json!([false])).await;
    let sent = [("payment-signature", header)];
    let (status, _, body) = s.post("/v1/esim/activate", &activation(), &sent).await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["error"]["code"], "settlement_pending", "{body}");
    s.rpc("anvil_mine", json!([1])).await;
    s.rpc("evm_setAutomine", json!([true])).await;
    let (status, headers, done) = s.post("/v1/esim/activate", &activation(), &sent).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["status"], "paid", "{done}");
    assert!(done.get("activation_code").is_none(), "{done}");
    assert!(headers.get("x-payment-response").is_some(), "a v1 answer");
    let (kinds, _) = s.ledger().await;
    assert_eq!(
        kinds
            .iter()
            .filter(|k| *k == "activation_completed")
            .count(),
        1
    );
    assert_eq!(s.balance(agent()).await, start - price(&req));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tx_hash_proof_waits_for_its_confirmations() {
    let s = PayStack::start(&[("SPIN_VARIABLE_PAYMENT_CONFIRMATIONS", "3")]).await;
    let body = json!({"region": "us-west", "data_mb": 100, "payer": agent().to_string()});
    let (invoice, req) = s.invoice(&body).await;
    let id = invoice["invoice_id"].as_str().unwrap().to_owned();
    let tx = pay_directly(&s, chain::RECIPIENT, price(&req)).await;
    let proof = proof_headers(&tx, &id);
    // Mined in one block, buried by none: too few confirmations, and nothing is claimed.
    let (status, _, early) = s.post("/v1/esim/activate", &body, &proof).await;
    assert_eq!(status, 402, "{early}");
    let (_, inv) = s.get(&format!("/v1/invoices/{id}")).await;
    assert_eq!(inv["status"], "open");
    s.rpc("anvil_mine", json!([2])).await;
    let (status, _, paid) = s.post("/v1/esim/activate", &body, &proof).await;
    assert_eq!(status, 200, "{paid}");
    assert_eq!(paid["transaction"], tx.as_str());
}

/// Run the refund job twice, mining two blocks after each: a second run once the refund's transfer has the
/// network's confirmations (up to 3 in these tests).
async fn pay_owed_refunds(s: &PayStack) {
    for _ in 0..2 {
        let (status, summary) = s.run_refunds().await;
        assert_eq!(status, 200, "{summary}");
        s.rpc("anvil_mine", json!([2])).await;
    }
}

/// The ledger verifies and holds one `refund_owed` and one `refund_paid`.
async fn assert_one_refund_owed_and_paid(s: &PayStack) {
    let (kinds, verify) = s.ledger().await;
    assert_eq!(verify["ok"], true, "{verify}");
    for (kind, n) in [("refund_owed", 1), ("refund_paid", 1)] {
        assert_eq!(kinds.iter().filter(|k| *k == kind).count(), n, "{kinds:?}");
    }
}

/// A transfer of less than the invoice's amount, mined in time: refused `insufficient_funds`, and owed back
/// whole (`charged: true`, the refund); sent again, the same answer and nothing owed twice; a transfer of the
/// amount then pays the invoice. Before, the short transfer's money stayed at `payTo` with no refund.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_short_tx_hash_transfer_is_refused_and_owed_back() {
    let s = PayStack::start(&[]).await;
    let body = json!({"region": "us-west", "data_mb": 100, "payer": agent().to_string()});
    let (invoice, req) = s.invoice(&body).await;
    let id = invoice["invoice_id"].as_str().unwrap().to_owned();
    let start = s.balance(agent()).await;
    let short = price(&req) - U256::from(1u64);
    let tx = pay_directly(&s, chain::RECIPIENT, short).await;
    let proof = proof_headers(&tx, &id);
    let (status, _, refused) = s.post("/v1/esim/activate", &body, &proof).await;
    assert_eq!(status, 402, "{refused}");
    assert_eq!(
        refused["error"]["reason"], "insufficient_funds",
        "{refused}"
    );
    assert_eq!(refused["charged"], true, "{refused}");
    assert_eq!(refused["refund"]["amount"], short.to_string(), "{refused}");
    assert_eq!(refused["invoice_ended"], true, "{refused}");
    let (again, _, same) = s
        .post("/v1/esim/activate", &body, &proof_headers(&tx, &id))
        .await;
    assert_eq!((again, &same["refund"]), (402, &refused["refund"]));
    // The invoice is ended (refunds are once per invoice: a later payment of it could not be owed back): a
    // transfer of its amount presented for it is refused without being taken, and pays a new invoice.
    let (fresh, _) = s.invoice(&body).await;
    let fresh_id = fresh["invoice_id"].as_str().unwrap().to_owned();
    let paid_tx = pay_directly(&s, chain::RECIPIENT, price(&req)).await;
    let (status, _, ended) = s
        .post("/v1/esim/activate", &body, &proof_headers(&paid_tx, &id))
        .await;
    assert_eq!(ended["invoice_ended"], true, "{status} {ended}");
    let (status, _, paid) = s
        .post(
            "/v1/esim/activate",
            &body,
            &proof_headers(&paid_tx, &fresh_id),
        )
        .await;
    assert_eq!(status, 200, "{paid}");
    // Dust is refused and claimed by nothing (a refund's gas is not worth it).
    let (dusty, _) = s.invoice(&body).await;
    let dusty_id = dusty["invoice_id"].as_str().unwrap().to_owned();
    let dust = pay_directly(&s, chain::RECIPIENT, U256::from(9_999u64)).await;
    let (status, _, refused_dust) = s
        .post("/v1/esim/activate", &body, &proof_headers(&dust, &dusty_id))
        .await;
    assert_eq!(status, 402, "{refused_dust}");
    assert_eq!(refused_dust["charged"], Value::Null, "{refused_dust}");
    // The refusal says why in words, not by its code alone.
    let message = refused_dust["error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("moved less than the invoice's amount"),
        "{refused_dust}"
    );
    pay_owed_refunds(&s).await;
    assert_eq!(
        s.balance(agent()).await,
        start - price(&req) - U256::from(9_999u64),
        "the short transfer came back; the new invoice paid; the dust stays"
    );
    assert_one_refund_owed_and_paid(&s).await;
}

/// A transfer both short and mined after the deadline is late, however often its proof is sent: 410, owed back
/// once, the invoice left open, so a transfer mined in time still pays it. Before, the first answer was the
/// 410 but the same proof sent again was taken for a short transfer in time (402 `insufficient_funds`), whose
/// answer ended the invoice: the transfer mined in time was then refused and kept, with no refund (the
/// invoice's one refund was the late one's).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_short_late_transfer_sent_twice_leaves_the_invoice_to_a_transfer_in_time() {
    let s = PayStack::start(&[]).await;
    let body = json!({"region": "us-west", "data_mb": 100, "payer": agent().to_string()});
    let (invoice, req) = s.invoice(&body).await;
    let id = invoice["invoice_id"].as_str().unwrap().to_owned();
    let start = s.balance(agent()).await;
    // Overpaid by 0.1 USDC: kept, and the paid answer says so.
    let sent = price(&req) + U256::from(100_000u64);
    let in_time = pay_directly(&s, chain::RECIPIENT, sent).await;
    let after = invoice["expires_at"].as_u64().unwrap() + 60;
    s.rpc("anvil_setNextBlockTimestamp", json!([after])).await;
    let short = price(&req) - U256::from(1u64);
    let late = pay_directly(&s, chain::RECIPIENT, short).await;
    let proof = proof_headers(&late, &id);
    let (status, _, first) = s.post("/v1/esim/activate", &body, &proof).await;
    assert_eq!(status, 410, "{first}");
    assert_eq!(first["refund"]["amount"], short.to_string(), "{first}");
    for _ in 0..2 {
        let (again, _, same) = s
            .post("/v1/esim/activate", &body, &proof_headers(&late, &id))
            .await;
        assert_eq!((again, &same), (410, &first), "sent again: the same answer");
    }
    let (status, _, paid) = s
        .post("/v1/esim/activate", &body, &proof_headers(&in_time, &id))
        .await;
    assert_eq!(status, 200, "{paid}");
    assert_eq!(paid["transaction"], in_time.as_str(), "{paid}");
    assert_eq!(paid["amount_usdc"], "0.42", "{paid}");
    assert_eq!(paid["transferred_usdc"], "0.52", "{paid}");
    let note = paid["overpayment_note"].as_str().unwrap_or_default();
    assert!(
        note.contains("0.10 USDC more") && note.contains("kept"),
        "{paid}"
    );
    pay_owed_refunds(&s).await;
    assert_eq!(
        s.balance(agent()).await,
        start - sent,
        "the short late transfer came back; the one in time paid, its excess kept"
    );
    assert_one_refund_owed_and_paid(&s).await;
}

/// A tx-hash proof's deadline is judged by the transfer's block: a transfer mined while the invoice was open pays
/// it even when its proof comes after the deadline (it waited for its confirmations; before, the answer was 410
/// and the money stayed at `payTo` with nothing delivered and no refund); one mined after the deadline is refused
/// as expired. A proof that comes too early is told so, as not final, with when to send it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tx_hash_transfer_mined_before_the_deadline_pays_after_it() {
    let s = PayStack::start(&[
        ("SPIN_VARIABLE_PAYMENT_CONFIRMATIONS", "3"),
        ("SPIN_VARIABLE_INVOICE_TTL_SECS", "3"),
    ])
    .await;
    let body = json!({"region": "us-west", "data_mb": 100, "payer": agent().to_string()});
    let (invoice, req) = s.invoice(&body).await;
    let id = invoice["invoice_id"].as_str().unwrap().to_owned();
    let tx = pay_directly(&s, chain::RECIPIENT, price(&req)).await;
    let proof = proof_headers(&tx, &id);
    let (status, headers, early) = s.post("/v1/esim/activate", &body, &proof).await;
    assert_eq!(status, 402, "{early}");
    assert_eq!(early["error"]["reason"], "settlement_pending", "{early}");
    assert!(headers.contains_key("retry-after"), "{headers:?}");
    // The deadline passes while the transfer is buried.
    let expires_at = invoice["expires_at"].as_u64().unwrap();
    while now() <= expires_at {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    s.rpc("anvil_mine", json!([2])).await;
    let (status, _, paid) = s.post("/v1/esim/activate", &body, &proof).await;
    assert_eq!(status, 200, "{paid}");
    assert_eq!(paid["transaction"], tx.as_str());

    // Mined a minute after its invoice's deadline: refused as expired, nothing is delivered, and the transfer
    // is owed back (before, the money stayed at `payTo`).
    let (late, req) = s.invoice(&body).await;
    let late_id = late["invoice_id"].as_str().unwrap().to_owned();
    let after = late["expires_at"].as_u64().unwrap() + 60;
    let start = s.balance(agent()).await;
    // The payer also sent a transfer that was mined in time (a retried send), and presents it last.
    let in_time = pay_directly(&s, chain::RECIPIENT, price(&req)).await;
    s.rpc("anvil_setNextBlockTimestamp", json!([after])).await;
    // Overpaid: the whole late transfer comes back.
    let late_sent = price(&req) + U256::from(250_000u64);
    let tx = pay_directly(&s, chain::RECIPIENT, late_sent).await;
    s.rpc("anvil_mine", json!([2])).await;
    let late_proof = proof_headers(&tx, &late_id);
    let (status, _, refused) = s.post("/v1/esim/activate", &body, &late_proof).await;
    assert_eq!(status, 410, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired before transaction"),
        "{refused}"
    );
    assert_eq!(refused["charged"], true, "{refused}");
    assert_eq!(
        refused["refund"]["amount"],
        late_sent.to_string(),
        "{refused}"
    );
    // Sent again: the same answer, nothing owed twice.
    let (again, _, same) = s.post("/v1/esim/activate", &body, &late_proof).await;
    assert_eq!((again, &same), (410, &refused));
    // The late transfer pays no other invoice either, though it was mined after that one was issued.
    let (other, _) = s.invoice(&body).await;
    let other_id = other["invoice_id"].as_str().unwrap();
    let (status, _, e) = s
        .post("/v1/esim/activate", &body, &proof_headers(&tx, other_id))
        .await;
    assert_eq!(status, 409, "{e}");
    // The transfer mined in time still pays the invoice: the late one's answer did not end it.
    let (status, _, paid) = s
        .post(
            "/v1/esim/activate",
            &body,
            &proof_headers(&in_time, &late_id),
        )
        .await;
    assert_eq!(status, 200, "{paid}");
    assert_eq!(paid["transaction"], in_time.as_str(), "{paid}");
    // The refund job returns it.
    pay_owed_refunds(&s).await;
    assert_eq!(
        s.balance(agent()).await,
        start - price(&req),
        "the late transfer came back; the one in time paid"
    );
    assert_one_refund_owed_and_paid(&s).await;
}
