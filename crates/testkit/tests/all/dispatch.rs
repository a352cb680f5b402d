//! The dispatch component alone, against a scripted SM-DP+: every ES2+ call it makes is answered at the host
//! boundary by [`FakeSmdp`], which behaves per carrier as each test says.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use esim402_core::esim::Iccid;
use esim402_testkit::bindings::exports::esim402::dispatch::dispatch::Withdrawal;
use esim402_testkit::{Kit, Recorded, Scripted, types};
use serde_json::{Value, json};

const SMDP: &str = "http://smdp.test";
const EID: &str = "89049032123451234512345678901235";

/// How one carrier's SM-DP+ behaves.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Behaves {
    Ok,
    PoolEmpty,
    Http503,
    /// Every call answered 401 (a wrong credential): refused before any function ran.
    Http401,
    Timeout,
    ConfirmFails,
    ConfirmTimeout,
    EidMismatch,
    /// ConfirmOrder fails; CancelOrder is carried out but every answer to it is lost.
    ConfirmFailsCancelLost,
    /// ConfirmOrder refuses the EID (`8.1.4/6.1`, outside the range the SM-DP+ accepts).
    ConfirmEidOutOfRange,
    /// ConfirmOrder succeeds without `smdpAddress` (optional in ES2+).
    ConfirmWithoutAddress,
    /// ConfirmOrder fails; CancelOrder answers `Failed` without a status code (not executed).
    ConfirmFailsCancelErrs,
    /// ConfirmOrder fails; CancelOrder answers `Expired` without a status code (not executed).
    ConfirmFailsCancelExpires,
    /// Every connection is refused: no request reaches the SM-DP+.
    Refused,
    /// The first try of each call gets no answer (it may have been executed); the retry is refused.
    TimeoutThenRefused,
    /// ConfirmOrder succeeds with an empty `matchingId` (valid in ES2+: SM-DS and default-SM-DP+ flows).
    ConfirmEmptyMatchingId,
}

#[derive(Default)]
struct FakeSmdp {
    behaviour: Mutex<HashMap<String, Behaves>>,
    serial: AtomicU64,
    /// FCI → the answer given (the real SM-DP+ is idempotent on it).
    answered: Mutex<HashMap<String, Value>>,
    /// The ICCID the next DownloadOrder hands out (a profile given back to the pool, handed out again).
    reissue: Mutex<Option<String>>,
    /// Set once a ConfirmOrder is answered (e.g. a failing store's switch: the writes after the confirm fail).
    on_confirm: Mutex<Option<Arc<std::sync::atomic::AtomicBool>>>,
    /// FCIs tried once ([`Behaves::TimeoutThenRefused`]).
    tried: Mutex<std::collections::HashSet<String>>,
}

fn es2(body: Value) -> Scripted {
    Scripted::json(200, body.to_string()).with_header("x-admin-protocol", "gsma/rsp/v2.5.0")
}

fn ok_header() -> Value {
    json!({"functionExecutionStatus": {"status": "Executed-Success"}})
}

fn failed(subject: &str, reason: &str) -> Value {
    json!({"header": {"functionExecutionStatus": {"status": "Failed",
        "statusCodeData": {"subjectCode": subject, "reasonCode": reason, "message": "scripted"}}}})
}

impl FakeSmdp {
    fn set(&self, carrier: &str, b: Behaves) {
        self.behaviour.lock().unwrap().insert(carrier.into(), b);
    }

    fn answer(&self, r: &Recorded) -> Scripted {
        // http://smdp.test/<carrier>/gsma/rsp2/es2plus/<function>
        let path = r.uri.strip_prefix(SMDP).unwrap();
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let carrier = parts.next().unwrap().to_owned();
        let function = path.rsplit('/').next().unwrap().to_owned();
        let body = r.json().unwrap();
        let fci = body["header"]["functionCallIdentifier"]
            .as_str()
            .unwrap()
            .to_owned();
        let b = self
            .behaviour
            .lock()
            .unwrap()
            .get(&carrier)
            .copied()
            .unwrap_or(Behaves::Ok);
        if let Some(flag) = self.on_confirm.lock().unwrap().as_ref()
            && function == "confirmOrder"
        {
            flag.store(true, Ordering::SeqCst);
        }
        if (b, function.as_str()) == (Behaves::ConfirmFailsCancelLost, "cancelOrder") {
            self.answered
                .lock()
                .unwrap()
                .insert(fci, json!({"header": ok_header()}));
            return Scripted::Timeout {
                after: Duration::from_secs(5),
            };
        }
        if let Some(v) = self.answered.lock().unwrap().get(&fci) {
            return es2(v.clone());
        }
        let v = match (b, function.as_str()) {
            (Behaves::Http503, _) => return Scripted::status(503),
            (Behaves::Http401, _) => return Scripted::status(401),
            (Behaves::Refused, _) => return Scripted::Refused,
            (Behaves::TimeoutThenRefused, _) if !self.tried.lock().unwrap().insert(fci.clone()) => {
                return Scripted::Refused;
            }
            (Behaves::Timeout | Behaves::TimeoutThenRefused, _) => {
                return Scripted::Timeout {
                    after: Duration::from_secs(5),
                };
            }
            (Behaves::PoolEmpty, "downloadOrder") => failed("8.2.5", "3.7"),
            (Behaves::EidMismatch, "downloadOrder") => failed("8.1.1", "3.10"),
            (_, "downloadOrder") if self.reissue.lock().unwrap().is_some() => {
                let iccid = self.reissue.lock().unwrap().take().unwrap();
                json!({"header": ok_header(), "iccid": iccid})
            }
            (_, "downloadOrder") => {
                let n = self.serial.fetch_add(1, Ordering::SeqCst);
                let iccid = Iccid::with_check_digit(&format!("890126{n:012}")).unwrap();
                json!({"header": ok_header(), "iccid": iccid.as_str()})
            }
            (
                Behaves::ConfirmFails
                | Behaves::ConfirmFailsCancelLost
                | Behaves::ConfirmFailsCancelErrs
                | Behaves::ConfirmFailsCancelExpires,
                "confirmOrder",
            ) => failed("8.2.1", "3.5"),
            (Behaves::ConfirmFailsCancelErrs, "cancelOrder") => {
                json!({"header": {"functionExecutionStatus": {"status": "Failed"}}})
            }
            (Behaves::ConfirmFailsCancelExpires, "cancelOrder") => {
                json!({"header": {"functionExecutionStatus": {"status": "Expired"}}})
            }
            (Behaves::ConfirmEidOutOfRange, "confirmOrder") => failed("8.1.4", "6.1"),
            (Behaves::ConfirmTimeout, "confirmOrder") => {
                return Scripted::Timeout {
                    after: Duration::from_secs(5),
                };
            }
            (Behaves::ConfirmEmptyMatchingId, "confirmOrder") => json!({"header": ok_header(),
                "matchingId": "", "smdpAddress": format!("smdp.{carrier}.esim402.test")}),
            (Behaves::ConfirmWithoutAddress, "confirmOrder") => json!({"header": ok_header(),
                "matchingId": format!("MID-{}", fci.len())}),
            (_, "confirmOrder") => json!({"header": ok_header(),
                "matchingId": format!("MID-{}", fci.len()),
                "smdpAddress": format!("smdp.{carrier}.esim402.test")}),
            (_, "cancelOrder") => json!({"header": ok_header()}),
            (_, f) => panic!("unexpected ES2+ function {f}"),
        };
        self.answered.lock().unwrap().insert(fci, v.clone());
        es2(v)
    }
}

/// The payer every test order is made for (its SIM's owner).
const OWNER: &str = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
/// Callback credentials of two carriers.
const CALLBACKS: &str = "tmobile=tmobile-callback-secret,verizon=verizon-callback-secret";
const TMOBILE_CB: &str = "tmobile-callback-secret";
const VERIZON_CB: &str = "verizon-callback-secret";

async fn kit_with(smdp: Arc<FakeSmdp>, vars: &[(&str, &str)]) -> Kit {
    kit_on(smdp, vars, None).await
}

/// [`kit_with`] on `store` (the in-memory store if `None`).
async fn kit_on(
    smdp: Arc<FakeSmdp>,
    vars: &[(&str, &str)],
    store: Option<esim402_host::kv::SharedBackend>,
) -> Kit {
    let mut b = Kit::builder("dispatch")
        .var("smdp_url", SMDP)
        .var("carrier_callback_credentials", CALLBACKS)
        .allow(SMDP)
        .respond(move |r| smdp.answer(r));
    for (k, v) in vars {
        b = b.var(k, v);
    }
    if let Some(store) = store {
        b = b.store(store);
    }
    b.build().await.unwrap()
}

fn request(region: &str, carrier: Option<&str>) -> types::ActivationRequest {
    types::ActivationRequest {
        carrier: carrier.map(Into::into),
        ..crate::activation(region, 100)
    }
}

/// The clock every test order is placed at; [`AFTER_LEASE`] is an hour later, past any order's lease.
const NOW: u64 = 1_764_000_000;
const AFTER_LEASE: u64 = NOW + 3_600;

/// A short order budget and ES2+ call timeout: a confirm that times out leaves the order pending.
const SHORT_BUDGET: &[(&str, &str)] = &[("dispatch_budget_secs", "1"), ("es2_timeout_ms", "600")];

/// The last call sent to the SM-DP+ retired `iccid` at `carrier`: CancelOrder with `Unavailable`, so nobody
/// can download that profile any more.
fn assert_retired(kit: &Kit, carrier: &str, iccid: &str) {
    assert_eq!(calls(kit).last(), Some(&call(carrier, "cancelOrder")));
    let cancel = kit.requests().last().unwrap().json().unwrap();
    assert_eq!(cancel["iccid"].as_str(), Some(iccid));
    assert_eq!(cancel["finalProfileStatusIndicator"], "Unavailable");
}

/// The credential of `iccid`'s owner, as `authorize` would have accepted it for a request (its wallet; the
/// test owner for a SIM without a record or an owner).
async fn owner_credential(kit: &mut Kit, iccid: &str) -> types::Credential {
    let id = iccid.to_owned();
    let owner = kit
        .call(async move |a, g| g.dispatch().call_get_sim(a, id).await)
        .await
        .unwrap()
        .ok()
        .flatten()
        .and_then(|s| s.owner)
        .unwrap_or_else(|| OWNER.to_owned());
    credential_wallet(&owner, "nonce-of-the-request")
}

/// Terminate `iccid` as its owner would (`lifecycle`): the SIM after it.
async fn terminate(kit: &mut Kit, iccid: &str) -> types::Sim {
    terminate_answer(kit, iccid).await.unwrap()
}

async fn order(
    kit: &mut Kit,
    req: types::ActivationRequest,
    invoice: &str,
) -> Result<types::Sim, types::Error> {
    order_at(kit, req, invoice, NOW).await
}

/// [`order`] placed (or repeated) at `now`.
async fn order_at(
    kit: &mut Kit,
    req: types::ActivationRequest,
    invoice: &str,
    now: u64,
) -> Result<types::Sim, types::Error> {
    order_until(kit, req, invoice, now, None).await
}

/// [`order_at`] paid by a payment that can no longer settle after `withdraw_after` (an `exact` authorization's
/// `validBefore`).
async fn order_until(
    kit: &mut Kit,
    req: types::ActivationRequest,
    invoice: &str,
    now: u64,
    withdraw_after: Option<u64>,
) -> Result<types::Sim, types::Error> {
    order_withdrawn(
        kit,
        req,
        invoice,
        now,
        withdraw_after.map(Withdrawal::UnsettledAfter),
    )
    .await
}

/// [`order_at`] with `withdraw` (the WIT `withdrawal`).
async fn order_withdrawn(
    kit: &mut Kit,
    req: types::ActivationRequest,
    invoice: &str,
    now: u64,
    withdraw: Option<Withdrawal>,
) -> Result<types::Sim, types::Error> {
    let invoice = invoice.to_owned();
    kit.call(async move |a, g| {
        g.dispatch()
            .call_order_profile(a, req, invoice, OWNER.into(), None, now, withdraw)
            .await
    })
    .await
    .unwrap()
}

/// The SIM record of `iccid`, which must exist.
async fn get_sim(kit: &mut Kit, iccid: &str) -> types::Sim {
    let id = iccid.to_owned();
    kit.call(async move |a, g| g.dispatch().call_get_sim(a, id).await)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
}

/// A HandleDownloadProgressInfo `body` presented with `credential`.
async fn download_progress(
    kit: &mut Kit,
    body: String,
    credential: Option<&str>,
) -> Result<Option<types::Sim>, types::Error> {
    let credential = credential.map(str::to_owned);
    kit.call(async move |a, g| {
        g.dispatch()
            .call_download_progress(a, body, credential)
            .await
    })
    .await
    .unwrap()
}

/// (carrier, function) of every ES2+ request, in order.
fn calls(kit: &Kit) -> Vec<(String, String)> {
    kit.requests()
        .iter()
        .map(|r| {
            let p = r.uri.strip_prefix(SMDP).unwrap().trim_start_matches('/');
            (
                p.split('/').next().unwrap().to_owned(),
                p.rsplit('/').next().unwrap().to_owned(),
            )
        })
        .collect()
}

fn call(c: &str, f: &str) -> (String, String) {
    (c.to_owned(), f.to_owned())
}

/// `price` of `data_mb` in `region` (no carrier named).
async fn price(
    kit: &mut Kit,
    region: &'static str,
    data_mb: u32,
) -> Result<types::Quote, types::Error> {
    kit.call(async move |a, g| {
        g.dispatch()
            .call_price(a, crate::activation(region, data_mb))
            .await
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn price_uses_the_regions_default_carrier() {
    let mut kit = kit_with(Arc::default(), &[]).await;
    let q = price(&mut kit, "us-west", 100).await.unwrap();
    assert_eq!((q.carrier.as_str(), q.amount), ("tmobile", 420_000));

    let unknown = price(&mut kit, "mars-north", 1).await;
    assert!(matches!(unknown, Err(types::Error::InvalidInput(f)) if f.field == "region"));
    assert!(kit.requests().is_empty(), "pricing never calls a carrier");
}

/// An activation's quote carries what its invoice seals (T-Mobile's 100 MB: $0.30 of data in $0.42), and
/// `data-value` values a settled activation by that seal whatever the catalog says since: T-Mobile's rate
/// raised meanwhile changes nothing, a failover to a carrier cheaper today is valued at its rate, and an
/// invoice sealed without a quote (by an earlier build) is valued at today's rate, as before.
#[tokio::test]
async fn an_activation_is_worth_its_sealed_quote_whatever_the_catalog_says_since() {
    let mut kit = kit_with(Arc::default(), &[]).await;
    let q = price(&mut kit, "us-west", 100).await.unwrap();
    let sealed = q.sealed.clone().unwrap();
    assert_eq!(
        (sealed.carrier.as_str(), sealed.data_value, q.amount),
        ("tmobile", 300_000, 420_000)
    );

    let builtin = esim402_core::esim::catalog::BUILTIN_TOML.to_owned();
    let (old_rate, new_rate) = ("price_per_mb = \"0.003\"", "price_per_mb = \"0.004\"");
    assert_eq!(builtin.matches(old_rate).count(), 1);
    let raised = builtin.replace(old_rate, new_rate);
    let mut kit = kit_with(Arc::default(), &[("carrier_catalog", &raised)]).await;
    let value = async |kit: &mut Kit, carrier: &'static str, quoted: Option<types::SealedQuote>| {
        kit.call(async move |a, g| {
            g.dispatch()
                .call_data_value(a, carrier.into(), 100, 420_000, quoted)
                .await
        })
        .await
        .unwrap()
        .unwrap()
    };
    assert_eq!(
        value(&mut kit, "tmobile", Some(sealed.clone())).await,
        300_000
    );
    // Without the seal, today's (raised) rate: $0.40 of the $0.42 paid, fee included.
    assert_eq!(value(&mut kit, "tmobile", None).await, 400_000);
    // A failover to AT&T ($0.0032 per MB): its $0.32 is above the quote, so the quote's $0.30.
    assert_eq!(value(&mut kit, "att", Some(sealed.clone())).await, 300_000);
    let cheap = types::SealedQuote {
        data_value: 330_000,
        ..sealed.clone()
    };
    assert_eq!(value(&mut kit, "att", Some(cheap)).await, 320_000);
    // A carrier the catalog no longer prices: the seal stands.
    assert_eq!(value(&mut kit, "gone", Some(sealed)).await, 300_000);
}

/// Outside development (`public_origins` set, or a payment network other than the local dev chain) the built-in
/// catalog is refused, and so is a catalog whose carriers sign receipts with their public development keys
/// (the built-in text set on purpose): nothing is priced or ordered, and the error names the variable. A
/// catalog whose carriers sign with keys of their own (here: none) prices as before.
#[tokio::test]
async fn outside_development_the_dev_catalog_and_dev_signers_price_and_order_nothing() {
    let builtin = esim402_core::esim::catalog::BUILTIN_TOML.to_owned();
    let unsigned = esim402_testkit::catalog_without_signers();
    let public = ("public_origins", "https://esim402.example");
    let mainnet = ("payment_network", "eip155:31337,base");
    for (outside, catalog, refusal) in [
        (public, None, "outside development"),
        (mainnet, None, "outside development"),
        (public, Some(&builtin), "development key"),
    ] {
        let smdp = Arc::new(FakeSmdp::default());
        let mut vars = vec![outside];
        if let Some(c) = catalog {
            vars.push(("carrier_catalog", c));
        }
        let mut kit = kit_with(smdp, &vars).await;
        let priced = price(&mut kit, "us-west", 100).await;
        assert!(
            matches!(&priced, Err(types::Error::Internal(m)) if m.contains("carrier_catalog") && m.contains(refusal)),
            "{vars:?}: {priced:?}"
        );
        let ordered = order(&mut kit, request("us-west", None), "inv-public").await;
        assert!(
            matches!(&ordered, Err(types::Error::Internal(m)) if m.contains("carrier_catalog")),
            "{ordered:?}"
        );
        assert!(kit.requests().is_empty(), "no carrier was called");
    }
    let mut kit = kit_with(
        Arc::default(),
        &[public, mainnet, ("carrier_catalog", &unsigned)],
    )
    .await;
    let q = price(&mut kit, "us-west", 100).await.unwrap();
    assert_eq!((q.carrier.as_str(), q.amount), ("tmobile", 420_000));

    // A carrier signing with the key derived from its own id (the traffic simulator's): the 402 is priced (no
    // key derivation on that path), but no order is placed, so no payment is taken for a SIM whose receipts
    // metering would refuse.
    let id = esim402_core::CarrierId::parse("acme-iot").unwrap();
    let dev = esim402_core::x402::exact::address_of(
        esim402_core::usage::receipt::dev_signing_key(&id).verifying_key(),
    )
    .to_checksum(None);
    let acme = unsigned
        .replacen(
            "[carriers.tmobile]",
            &format!("[carriers.acme-iot]\nreceipt_signer = \"{dev}\""),
            1,
        )
        .replace("\"tmobile\"", "\"acme-iot\"");
    let smdp = Arc::new(FakeSmdp::default());
    let mut kit = kit_with(smdp, &[public, ("carrier_catalog", &acme)]).await;
    let q = price(&mut kit, "us-west", 100).await.unwrap();
    assert_eq!(q.carrier, "acme-iot");
    let ordered = order(&mut kit, request("us-west", None), "inv-acme").await;
    assert!(
        matches!(&ordered, Err(types::Error::Internal(m)) if m.contains("carrier_catalog") && m.contains("acme-iot")),
        "{ordered:?}"
    );
    assert!(kit.requests().is_empty(), "no carrier was called");
}

/// `try-price` (the 402 path's synchronous call) has no answer until the instance has loaded its
/// configuration, then answers exactly as `price` does, errors included.
#[tokio::test]
async fn try_price_answers_like_price_once_the_configuration_is_loaded() {
    let mut kit = kit_with(Arc::default(), &[]).await;
    let try_price = async |kit: &mut Kit, region: &'static str, mb: u32| {
        kit.call(async move |a, g| {
            g.dispatch()
                .call_try_price(a, crate::activation(region, mb))
                .await
        })
        .await
        .unwrap()
    };
    assert!(
        try_price(&mut kit, "us-west", 100).await.is_none(),
        "no configuration loaded yet"
    );
    for mb in [100, 200, 5_000] {
        let priced = kit
            .call(async move |a, g| {
                g.dispatch()
                    .call_price(a, crate::activation("us-west", mb))
                    .await
            })
            .await
            .unwrap()
            .unwrap();
        let tried = try_price(&mut kit, "us-west", mb).await.unwrap().unwrap();
        assert_eq!(
            (tried.carrier, tried.region, tried.data_mb, tried.amount),
            (priced.carrier, priced.region, priced.data_mb, priced.amount)
        );
    }
    let unknown = try_price(&mut kit, "mars-north", 1).await.unwrap();
    assert!(matches!(unknown, Err(types::Error::InvalidInput(f)) if f.field == "region"));
    assert!(kit.requests().is_empty(), "pricing never calls a carrier");
}

#[tokio::test]
async fn happy_path_orders_confirms_and_returns_an_activation_code() {
    let mut kit = kit_with(Arc::default(), &[]).await;
    let sim = order(&mut kit, request("us-west", None), "inv-1")
        .await
        .unwrap();
    assert_eq!(sim.carrier, "tmobile");
    assert_eq!(sim.state, types::SimState::Active);
    assert_eq!(sim.profile_state, types::ProfileState::Released);
    let code = sim.activation_code.clone().unwrap();
    assert!(
        code.starts_with("LPA:1$smdp.tmobile.esim402.test$MID-"),
        "{code}"
    );
    assert!(sim.failovers.is_empty());
    assert!(!sim.roaming.allow.is_empty() || !sim.roaming.countries.is_empty());

    assert_eq!(
        calls(&kit),
        [
            call("tmobile", "downloadOrder"),
            call("tmobile", "confirmOrder")
        ]
    );
    let reqs = kit.requests();
    let download = reqs[0].json().unwrap();
    assert_eq!(download["profileType"], "tmo-iot-data");
    assert_eq!(
        download["header"]["functionRequesterIdentifier"],
        "esim402-tmobile"
    );
    let confirm = reqs[1].json().unwrap();
    assert_eq!(confirm["releaseFlag"], true);
    assert_eq!(confirm["iccid"].as_str(), Some(sim.iccid.as_str()));
    assert_ne!(
        download["header"]["functionCallIdentifier"], confirm["header"]["functionCallIdentifier"],
        "every call has its own functionCallIdentifier"
    );
    for r in &reqs {
        assert_eq!(r.header("x-admin-protocol"), Some("gsma/rsp/v2.5.0"));
        assert_eq!(r.header("content-type"), Some("application/json"));
        // Sent with its length, not chunked.
        assert_eq!(
            r.header("content-length"),
            Some(r.body.len().to_string().as_str())
        );
    }
    let stored: Value =
        serde_json::from_slice(&kit.kv_get(&format!("sim/{}", sim.iccid)).await.unwrap()).unwrap();
    assert_eq!(stored["state"], "active");
    assert_eq!(stored["invoice_id"], "inv-1");
}

#[tokio::test]
async fn the_same_invoice_orders_once() {
    let mut kit = kit_with(Arc::default(), &[]).await;
    let first = order(&mut kit, request("us-west", None), "inv-dup")
        .await
        .unwrap();
    let again = order(&mut kit, request("us-west", None), "inv-dup")
        .await
        .unwrap();
    assert_eq!(first.iccid, again.iccid);
    assert_eq!(first.activation_code, again.activation_code);
    assert_eq!(calls(&kit).len(), 2, "the repeat made no ES2+ call");

    // Ordering for another payer with the same invoice gets no SIM: the order was the first payer's.
    let other = "0xa0Ee7A142d267C1f36714E4a8F75612F20a79720";
    let req = request("us-west", None);
    let refused = kit
        .call(async move |a, g| {
            g.dispatch()
                .call_order_profile(a, req, "inv-dup".into(), other.into(), None, NOW, None)
                .await
        })
        .await
        .unwrap();
    match refused {
        Err(types::Error::Conflict(m)) => assert!(m.contains("another payer"), "{m}"),
        other => panic!("another payer got {other:?}"),
    }
    assert_eq!(calls(&kit).len(), 2, "and no ES2+ call");
}

#[tokio::test]
async fn an_empty_pool_fails_over_to_the_next_carrier() {
    let smdp = Arc::new(FakeSmdp::default());
    smdp.set("tmobile", Behaves::PoolEmpty);
    let mut kit = kit_with(smdp, &[]).await;
    let sim = order(&mut kit, request("us-west", None), "inv-2")
        .await
        .unwrap();
    assert_eq!(sim.carrier, "verizon");
    assert_eq!(sim.failovers.len(), 1);
    assert!(sim.failovers[0].contains("tmobile") && sim.failovers[0].contains("8.2.5/3.7"));
    assert_eq!(
        calls(&kit),
        [
            call("tmobile", "downloadOrder"),
            call("verizon", "downloadOrder"),
            call("verizon", "confirmOrder"),
        ]
    );
}

#[tokio::test]
async fn a_5xx_is_retried_with_the_same_call_id_then_failed_over_and_swept_later() {
    let smdp = Arc::new(FakeSmdp::default());
    smdp.set("tmobile", Behaves::Http503);
    let mut kit = kit_with(smdp.clone(), &[]).await;
    let sim = order(&mut kit, request("us-west", None), "inv-3")
        .await
        .unwrap();
    assert_eq!(sim.carrier, "verizon");
    assert!(sim.failovers[0].contains("HTTP 503"), "{:?}", sim.failovers);
    let reqs = kit.requests();
    let fci = |i: usize| reqs[i].json().unwrap()["header"]["functionCallIdentifier"].clone();
    assert_eq!(
        fci(0),
        fci(1),
        "the retry repeats the call id (safe: idempotent)"
    );

    // The lost DownloadOrder is queued; once tmobile answers again, the next order replays its call id and
    // returns whatever it allocated to the pool.
    let queued: Value =
        serde_json::from_slice(&kit.kv_get("cleanup/queue").await.unwrap()).unwrap();
    assert_eq!(queued[0]["kind"], "lost_download");
    smdp.set("tmobile", Behaves::Ok);
    let before = kit.requests().len();
    order(&mut kit, request("us-west", None), "inv-4")
        .await
        .unwrap();
    let after: Vec<_> = kit.requests()[before..].to_vec();
    assert_eq!(
        after[0].json().unwrap()["header"]["functionCallIdentifier"],
        fci(0)
    );
    let cancel = after
        .iter()
        .find(|r| r.uri.ends_with("/cancelOrder"))
        .expect("the recovered profile is cancelled");
    assert_eq!(
        cancel.json().unwrap()["finalProfileStatusIndicator"],
        "Available"
    );
    let queued: Value =
        serde_json::from_slice(&kit.kv_get("cleanup/queue").await.unwrap()).unwrap();
    assert_eq!(queued, json!([]));
}

/// A CancelOrder the SM-DP+ carried out but whose answers were lost is queued with its call id and sent again
/// as the same call, which the SM-DP+ replays: a new call id would cancel whatever the ICCID is by then (the
/// profile back in the pool may have gone to another order).
#[tokio::test]
async fn a_cancel_whose_answers_were_lost_is_sent_again_as_the_same_call() {
    let smdp = Arc::new(FakeSmdp::default());
    smdp.set("tmobile", Behaves::ConfirmFailsCancelLost);
    let mut kit = kit_with(smdp.clone(), &[("es2_timeout_ms", "200")]).await;
    let sim = order(&mut kit, request("us-west", None), "inv-30")
        .await
        .unwrap();
    assert_eq!(sim.carrier, "verizon");
    let fci_of = |r: &Recorded| r.json().unwrap()["header"]["functionCallIdentifier"].clone();
    let tried: Vec<Value> = kit
        .requests()
        .iter()
        .filter(|r| r.uri.ends_with("/cancelOrder"))
        .map(fci_of)
        .collect();
    assert!(!tried.is_empty());
    assert!(tried.iter().all(|f| *f == tried[0]), "one call: {tried:?}");
    let queued: Value =
        serde_json::from_slice(&kit.kv_get("cleanup/queue").await.unwrap()).unwrap();
    assert_eq!(queued[0]["kind"], "cancel");
    assert_eq!(queued[0]["fci"], tried[0]);

    // The next order sweeps it: the same call again, answered by the SM-DP+'s replay.
    smdp.set("tmobile", Behaves::Ok);
    let before = kit.requests().len();
    order(&mut kit, request("us-west", None), "inv-31")
        .await
        .unwrap();
    let swept: Vec<Value> = kit.requests()[before..]
        .iter()
        .filter(|r| r.uri.ends_with("/cancelOrder"))
        .map(fci_of)
        .collect();
    assert_eq!(swept, [tried[0].clone()]);
    let queued: Value =
        serde_json::from_slice(&kit.kv_get("cleanup/queue").await.unwrap()).unwrap();
    assert_eq!(queued, json!([]));
}

/// An order's whole time (the sweep before it, its budget, a cancel after it) must fit the part of a payment's
/// lease an order may take: a budget of 100 s with 10 s calls (accepted before, and then able to outlast the
/// lease) is served lowered to fit (kernel `order::fit_to_payment_lease`), not refused.
#[tokio::test]
async fn a_budget_whose_order_would_outlast_the_payment_lease_is_served_lowered() {
    let mut kit = kit_with(
        Arc::new(FakeSmdp::default()),
        &[("dispatch_budget_secs", "100")],
    )
    .await;
    let sim = order(&mut kit, request("us-west", None), "inv-43")
        .await
        .unwrap();
    assert_eq!(sim.state, types::SimState::Active);
}

/// A ConfirmOrder answer without `smdpAddress` (optional in ES2+) is used with the catalog's `smdp_address`
/// for the carrier; before, it counted as malformed: the profile was given back and the order failed over.
#[tokio::test]
async fn a_confirm_without_an_smdp_address_uses_the_catalogs() {
    let smdp = Arc::new(FakeSmdp::default());
    smdp.set("tmobile", Behaves::ConfirmWithoutAddress);
    // The built-in catalog with T-Mobile's address (it names none: the simulator always sends its own).
    let builtin = esim402_core::esim::catalog::BUILTIN_TOML.to_owned();
    let anchor = "profile_type = \"tmo-iot-data\"";
    assert!(builtin.contains(anchor));
    let catalog = builtin.replace(
        anchor,
        &format!("{anchor}\nsmdp_address = \"smdp.tmobile.esim402.test\""),
    );
    let mut kit = kit_with(smdp, &[("carrier_catalog", &catalog)]).await;
    let sim = order(&mut kit, request("us-west", None), "inv-42")
        .await
        .unwrap();
    assert_eq!(sim.carrier, "tmobile");
    assert!(sim.failovers.is_empty(), "{:?}", sim.failovers);
    let code = sim.activation_code.unwrap();
    assert!(
        code.starts_with("LPA:1$smdp.tmobile.esim402.test$MID-"),
        "{code}"
    );
}

/// A CancelOrder the SM-DP+ did not execute (`Failed` or `Expired`, with no status code: optional on the wire)
/// is queued and sent again by the next sweep as a new call (its own call id would replay the failure). Before,
/// any answer that parsed counted as done: the profile stayed allocated at the carrier.
#[tokio::test]
async fn a_cancel_the_smdp_did_not_execute_is_queued_and_sent_again_as_a_new_call() {
    for (n, behaves) in [
        Behaves::ConfirmFailsCancelErrs,
        Behaves::ConfirmFailsCancelExpires,
    ]
    .into_iter()
    .enumerate()
    {
        let smdp = Arc::new(FakeSmdp::default());
        smdp.set("tmobile", behaves);
        let mut kit = kit_with(smdp.clone(), &[]).await;
        let sim = order(&mut kit, request("us-west", None), &format!("inv-40{n}"))
            .await
            .unwrap();
        assert_eq!(sim.carrier, "verizon", "{behaves:?}");
        let cancels = |kit: &Kit| -> Vec<Value> {
            kit.requests()
                .iter()
                .filter(|r| r.uri.ends_with("/cancelOrder"))
                .map(|r| r.json().unwrap())
                .collect()
        };
        let tried = cancels(&kit);
        assert_eq!(tried.len(), 1, "{behaves:?}");
        let queued: Value =
            serde_json::from_slice(&kit.kv_get("cleanup/queue").await.unwrap()).unwrap();
        assert_eq!(queued[0]["kind"], "cancel", "{behaves:?}: {queued}");
        assert_eq!(queued[0]["iccid"], tried[0]["iccid"]);

        // The next order's sweep sends it again, as a new call; carried out, it leaves the queue.
        smdp.set("tmobile", Behaves::Ok);
        order(&mut kit, request("us-west", None), &format!("inv-41{n}"))
            .await
            .unwrap();
        let again = cancels(&kit);
        assert_eq!(again.len(), 2, "{behaves:?}");
        assert_eq!(again[1]["iccid"], tried[0]["iccid"]);
        assert_ne!(
            again[1]["header"]["functionCallIdentifier"],
            tried[0]["header"]["functionCallIdentifier"]
        );
        let queued: Value =
            serde_json::from_slice(&kit.kv_get("cleanup/queue").await.unwrap()).unwrap();
        assert_eq!(queued, json!([]), "{behaves:?}");
    }
}

#[tokio::test]
async fn a_timeout_fails_over_within_the_budget() {
    let smdp = Arc::new(FakeSmdp::default());
    smdp.set("tmobile", Behaves::Timeout);
    let mut kit = kit_with(smdp, &[("es2_timeout_ms", "200")]).await;
    let sim = order(&mut kit, request("us-west", None), "inv-5")
        .await
        .unwrap();
    assert_eq!(sim.carrier, "verizon");
    assert!(sim.failovers[0].contains("timeout"), "{:?}", sim.failovers);
}

/// A DownloadOrder that never reached the SM-DP+ (connection refused) allocated nothing: it fails over without
/// queueing a lost DownloadOrder (whose replay would allocate a profile only to cancel it). One whose first try
/// may have been executed (no answer) is still queued, even when the same-id retry is then refused.
#[tokio::test]
async fn a_download_order_that_never_reached_the_carrier_is_not_queued_as_lost() {
    let queued = async |kit: &Kit| -> Vec<Value> {
        kit.kv_get("cleanup/queue")
            .await
            .map(|b| serde_json::from_slice::<Vec<Value>>(&b).unwrap())
            .unwrap_or_default()
    };
    let smdp = Arc::new(FakeSmdp::default());
    smdp.set("tmobile", Behaves::Refused);
    let mut kit = kit_with(smdp, &[("es2_timeout_ms", "200")]).await;
    let sim = order(&mut kit, request("us-west", None), "inv-refused")
        .await
        .unwrap();
    assert_eq!(sim.carrier, "verizon");
    assert!(
        sim.failovers[0].contains("unreachable"),
        "{:?}",
        sim.failovers
    );
    assert_eq!(
        calls(&kit)[..2],
        [
            call("tmobile", "downloadOrder"),
            call("tmobile", "downloadOrder")
        ]
    );
    assert_eq!(queued(&kit).await, Vec::<Value>::new());

    // A 401 (or any 4xx refusing the request itself) says no function ran: nothing queued either. Before, every
    // non-200 was queued as a lost download, replayed later only to allocate and cancel a profile.
    let smdp = Arc::new(FakeSmdp::default());
    smdp.set("tmobile", Behaves::Http401);
    let mut kit = kit_with(smdp, &[("es2_timeout_ms", "200")]).await;
    let sim = order(&mut kit, request("us-west", None), "inv-401")
        .await
        .unwrap();
    assert_eq!(sim.carrier, "verizon");
    assert!(sim.failovers[0].contains("HTTP 401"), "{:?}", sim.failovers);
    assert_eq!(queued(&kit).await, Vec::<Value>::new());

    let smdp = Arc::new(FakeSmdp::default());
    smdp.set("tmobile", Behaves::TimeoutThenRefused);
    let mut kit = kit_with(smdp, &[("es2_timeout_ms", "200")]).await;
    let sim = order(&mut kit, request("us-west", None), "inv-maybe")
        .await
        .unwrap();
    assert_eq!(sim.carrier, "verizon");
    assert!(sim.failovers[0].contains("timeout"), "{:?}", sim.failovers);
    let queued = queued(&kit).await;
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert_eq!(queued[0]["kind"], "lost_download");
}

#[tokio::test]
async fn a_failed_confirm_cancels_the_allocated_profile_before_failing_over() {
    let smdp = Arc::new(FakeSmdp::default());
    smdp.set("tmobile", Behaves::ConfirmFails);
    let mut kit = kit_with(smdp, &[]).await;
    let sim = order(&mut kit, request("us-west", None), "inv-6")
        .await
        .unwrap();
    assert_eq!(sim.carrier, "verizon");
    assert_eq!(
        calls(&kit),
        [
            call("tmobile", "downloadOrder"),
            call("tmobile", "confirmOrder"),
            call("tmobile", "cancelOrder"),
            call("verizon", "downloadOrder"),
            call("verizon", "confirmOrder"),
        ]
    );
    given_back(&kit, 1).await;
}

/// The profile whose ConfirmOrder is request `confirm` went back to the pool (the next request cancels it,
/// `Available`), and its record says it failed.
async fn given_back(kit: &Kit, confirm: usize) {
    let reqs = kit.requests();
    let abandoned = reqs[confirm].json().unwrap()["iccid"].clone();
    let cancel = reqs[confirm + 1].json().unwrap();
    assert_eq!(cancel["iccid"], abandoned);
    assert_eq!(cancel["finalProfileStatusIndicator"], "Available");
    let old: Value = serde_json::from_slice(
        &kit.kv_get(&format!("sim/{}", abandoned.as_str().unwrap()))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(old["state"], "failed");
}

#[tokio::test]
async fn an_explicit_carrier_never_fails_over_unless_allowed() {
    let smdp = Arc::new(FakeSmdp::default());
    smdp.set("att", Behaves::PoolEmpty);
    let mut kit = kit_with(smdp, &[]).await;
    let err = order(&mut kit, request("us-west", Some("att")), "inv-7")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, types::Error::Unavailable(m) if m.contains("att")),
        "{err:?}"
    );
    assert_eq!(calls(&kit), [call("att", "downloadOrder")]);

    // A failed order is final for its invoice: a repeat replays the failure without calling carriers.
    let again = order(&mut kit, request("us-west", Some("att")), "inv-7").await;
    assert!(matches!(again, Err(types::Error::Unavailable(_))));
    assert_eq!(calls(&kit).len(), 1);

    let allowed = types::ActivationRequest {
        allow_failover: true,
        ..request("us-west", Some("att"))
    };
    let sim = order(&mut kit, allowed, "inv-8").await.unwrap();
    assert_eq!(sim.carrier, "tmobile");
}

#[tokio::test]
async fn an_eid_is_sent_and_a_wrong_device_is_rejected_without_failover() {
    let smdp = Arc::new(FakeSmdp::default());
    let mut kit = kit_with(smdp.clone(), &[]).await;
    let with_eid = types::ActivationRequest {
        eid: Some(EID.into()),
        ..request("us-west", None)
    };
    let sim = order(&mut kit, with_eid.clone(), "inv-9").await.unwrap();
    assert_eq!(sim.eid.as_deref(), Some(EID));
    for r in kit.requests() {
        assert_eq!(r.json().unwrap()["eid"], EID, "{}", r.uri);
    }

    smdp.set("tmobile", Behaves::EidMismatch);
    let before = kit.requests().len();
    let err = order(&mut kit, with_eid, "inv-10").await.unwrap_err();
    assert!(
        matches!(&err, types::Error::InvalidInput(f) if f.field == "eid"),
        "{err:?}"
    );
    assert_eq!(
        kit.requests().len() - before,
        1,
        "no other carrier was tried"
    );

    let bad = types::ActivationRequest {
        eid: Some("89049032123451234512345678901234".into()),
        ..request("us-west", None)
    };
    let err = order(&mut kit, bad, "inv-11").await.unwrap_err();
    assert!(matches!(&err, types::Error::InvalidInput(f) if f.field == "eid"));
}

/// An EID the carrier refuses at ConfirmOrder (after DownloadOrder took it) is the client's fault like one
/// refused at DownloadOrder: a 400 on `eid`, no other carrier tried, and the allocated profile given back.
#[tokio::test]
async fn an_eid_refused_at_confirm_is_rejected_and_the_profile_given_back() {
    let smdp = Arc::new(FakeSmdp::default());
    smdp.set("tmobile", Behaves::ConfirmEidOutOfRange);
    let mut kit = kit_with(smdp, &[]).await;
    let with_eid = types::ActivationRequest {
        eid: Some(EID.into()),
        ..request("us-west", None)
    };
    let err = order(&mut kit, with_eid, "inv-eid-confirm")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, types::Error::InvalidInput(f) if f.field == "eid" && f.message.contains("range")),
        "{err:?}"
    );
    assert_eq!(
        calls(&kit),
        [
            call("tmobile", "downloadOrder"),
            call("tmobile", "confirmOrder"),
            call("tmobile", "cancelOrder"),
        ]
    );
    given_back(&kit, 1).await;
}

/// The SIM record of an allocated profile cannot be written: the order fails, and the profile goes back to
/// the carrier's pool instead of staying allocated with nobody to confirm it.
#[tokio::test]
async fn a_sim_record_that_cannot_be_written_gives_the_profile_back() {
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let store = Arc::new(crate::failing_writes("sim/", &failing));
    let mut kit = kit_on(Arc::default(), &[], Some(store)).await;
    let err = order(&mut kit, request("us-west", None), "inv-no-sim")
        .await
        .unwrap_err();
    assert!(matches!(&err, types::Error::Unavailable(_)), "{err:?}");
    assert_eq!(
        calls(&kit),
        [
            call("tmobile", "downloadOrder"),
            call("tmobile", "cancelOrder"),
        ]
    );
    let cancel = kit.requests()[1].json().unwrap();
    assert_eq!(cancel["finalProfileStatusIndicator"], "Available");
    assert!(
        cancel["iccid"]
            .as_str()
            .is_some_and(|i| i.starts_with("890126"))
    );
}

/// Orders sweep queued cleanups within one call timeout in all (counted in the order's lease): a carrier that
/// stopped answering cannot hold an order up for a call timeout per queued item, and what the sweep did not
/// reach stays queued.
#[tokio::test]
async fn the_sweep_before_an_order_stays_within_one_call_timeout() {
    let smdp = Arc::new(FakeSmdp::default());
    smdp.set("tmobile", Behaves::Timeout);
    let mut kit = kit_with(smdp, &[("es2_timeout_ms", "200")]).await;
    let queued: Vec<Value> = (1..=4)
        .map(|n| {
            let iccid = Iccid::with_check_digit(&format!("890126{n:012}")).unwrap();
            json!({"kind": "cancel", "carrier": "tmobile", "iccid": iccid.as_str(), "retire": false})
        })
        .collect();
    kit.kv_put("cleanup/queue", Value::from(queued).to_string().as_bytes())
        .await;
    let sim = order(&mut kit, request("us-west", Some("verizon")), "inv-sweep")
        .await
        .unwrap();
    assert_eq!(sim.carrier, "verizon");
    let cancels = calls(&kit)
        .iter()
        .filter(|c| **c == call("tmobile", "cancelOrder"))
        .count();
    assert_eq!(cancels, 1, "{:?}", calls(&kit));
    let left: Value = serde_json::from_slice(&kit.kv_get("cleanup/queue").await.unwrap()).unwrap();
    assert_eq!(left.as_array().map(Vec::len), Some(4), "{left}");
}

/// A queued cancel whose ICCID a live SIM of another order holds now (the carrier handed the profile to it
/// since), or a SIM its own order delivered since, is dropped, not sent: it would cancel that SIM's profile. A
/// cancel of a profile no live SIM holds is still sent (and, kernel-tested, one whose own order's record stayed
/// pending). Before, the sweep cancelled whatever the ICCID was by then.
#[tokio::test]
async fn the_sweep_never_cancels_a_profile_a_live_sim_of_another_order_holds() {
    let smdp = Arc::new(FakeSmdp::default());
    let mut kit = kit_with(smdp, &[]).await;
    let live = order(&mut kit, request("us-west", Some("tmobile")), "inv-live")
        .await
        .unwrap();
    let own = order(&mut kit, request("us-west", Some("tmobile")), "inv-own")
        .await
        .unwrap();
    let free = Iccid::with_check_digit("890126000000000077").unwrap();
    let cancel = |iccid: &str| json!({"kind": "cancel", "carrier": "tmobile", "iccid": iccid, "retire": false});
    let mut owned = cancel(&own.iccid);
    owned["invoice"] = json!("inv-own");
    let mut other = cancel(&live.iccid);
    other["invoice"] = json!("inv-gone");
    let queued = json!([cancel(&live.iccid), other, cancel(free.as_str()), owned]);
    kit.kv_put("cleanup/queue", queued.to_string().as_bytes())
        .await;
    let before = kit.requests().len();
    order(&mut kit, request("us-west", Some("verizon")), "inv-next")
        .await
        .unwrap();
    let cancelled: Vec<Value> = kit.requests()[before..]
        .iter()
        .filter(|r| r.uri.ends_with("/cancelOrder"))
        .map(|r| r.json().unwrap()["iccid"].clone())
        .collect();
    // Not the own order's either: delivered (active), not a pending record whose failed mark did not land
    // (kernel `order::sweep_may_cancel`).
    assert_eq!(cancelled, [json!(free.as_str())]);
    let left: Value = serde_json::from_slice(&kit.kv_get("cleanup/queue").await.unwrap()).unwrap();
    assert_eq!(left, json!([]));
    for iccid in [&live.iccid, &own.iccid] {
        let sim = get_sim(&mut kit, iccid).await;
        assert_eq!(sim.state, types::SimState::Active);
    }
}

/// A carrier that takes a whole sweep's deadline does not keep the items behind it from ever being tried: what
/// failed goes back behind what the sweep did not reach (before, the queue came back in the same order every
/// sweep, and the items behind the slow one were never tried).
#[tokio::test]
async fn a_slow_carrier_at_the_head_of_the_queue_does_not_block_the_rest() {
    let smdp = Arc::new(FakeSmdp::default());
    smdp.set("att", Behaves::Timeout);
    let mut kit = kit_with(smdp, &[("es2_timeout_ms", "200")]).await;
    let iccid = |n: u32| Iccid::with_check_digit(&format!("890141{n:012}")).unwrap();
    let cancel = |carrier: &str, iccid: &Iccid| json!({"kind": "cancel", "carrier": carrier, "iccid": iccid.as_str(), "retire": false});
    let queued = json!([cancel("att", &iccid(1)), cancel("verizon", &iccid(2))]);
    kit.kv_put("cleanup/queue", queued.to_string().as_bytes())
        .await;
    for invoice in ["inv-45", "inv-46"] {
        order(&mut kit, request("us-west", Some("tmobile")), invoice)
            .await
            .unwrap();
    }
    let verizon = calls(&kit)
        .iter()
        .filter(|c| **c == call("verizon", "cancelOrder"))
        .count();
    assert_eq!(verizon, 1, "{:?}", calls(&kit));
    let left: Value = serde_json::from_slice(&kit.kv_get("cleanup/queue").await.unwrap()).unwrap();
    assert_eq!(left.as_array().map(Vec::len), Some(1), "{left}");
    assert_eq!(left[0]["carrier"], "att");
}

/// A cleanup the carrier keeps failing is given up (logged for an operator) once `MAX_CLEANUP_TRIES` sweeps tried
/// it over at least a day; each failed try counts, and one failing for less than a day stays however often it
/// was tried (a carrier down for maintenance). Before, every item stayed in the queue, and in every order's
/// sweep, for good.
#[tokio::test]
async fn a_cleanup_that_keeps_failing_is_given_up_after_its_tries() {
    let smdp = Arc::new(FakeSmdp::default());
    smdp.set("att", Behaves::Http503);
    let mut kit = kit_with(smdp, &[]).await;
    let iccid = |n: u32| Iccid::with_check_digit(&format!("890141{n:012}")).unwrap();
    let (last, young, recent) = (iccid(1), iccid(2), iccid(3));
    let item = |iccid: &Iccid, tries: u32, since: u64| {
        json!({"kind": "cancel", "carrier": "att", "iccid": iccid.as_str(), "retire": false,
               "tries": tries, "since": since})
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (max, at) = (esim402_core::order::MAX_CLEANUP_TRIES, NOW);
    let queued = json!([
        item(&last, max - 1, at),
        item(&young, 3, at),
        item(&recent, max + 10, now - 3600)
    ]);
    kit.kv_put("cleanup/queue", queued.to_string().as_bytes())
        .await;
    let sim = order(&mut kit, request("us-west", None), "inv-44")
        .await
        .unwrap();
    assert_eq!(sim.carrier, "tmobile");
    let tried = calls(&kit)
        .iter()
        .filter(|c| **c == call("att", "cancelOrder"))
        .count();
    assert!(tried >= 3, "all were tried: {:?}", calls(&kit));
    let left: Value = serde_json::from_slice(&kit.kv_get("cleanup/queue").await.unwrap()).unwrap();
    assert_eq!(left.as_array().map(Vec::len), Some(2), "{left}");
    assert_eq!(left[0]["iccid"], young.as_str());
    assert_eq!(
        (left[0]["tries"].as_u64(), left[0]["since"].as_u64()),
        (Some(4), Some(at))
    );
    assert_eq!(left[1]["iccid"], recent.as_str());
    assert_eq!(left[1]["tries"].as_u64(), Some(u64::from(max) + 11));
}

#[tokio::test]
async fn a_denied_smdp_host_fails_in_the_guest_and_nothing_is_sent() {
    // The SM-DP+ host is not in allowed_outbound_hosts: every call fails inside the component.
    let mut kit = Kit::builder("dispatch")
        .var("smdp_url", SMDP)
        .allow("http://other.test")
        .respond(|_| panic!("a denied request must not reach the network"))
        .build()
        .await
        .unwrap();
    let err = order(&mut kit, request("us-west", None), "inv-12")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, types::Error::Unavailable(m) if m.contains("unreachable")),
        "{err:?}"
    );
    assert!(!kit.requests().is_empty());
    assert!(kit.requests().iter().all(|r| !r.allowed));
    // Nothing reached a carrier, so nothing can have been allocated: no lost DownloadOrder to replay.
    let queued = kit.kv_get("cleanup/queue").await;
    let queued: Vec<Value> = queued.map_or_else(Vec::new, |b| serde_json::from_slice(&b).unwrap());
    assert_eq!(queued, Vec::<Value>::new());
}

#[tokio::test]
async fn lifecycle_and_download_progress() {
    let mut kit = kit_with(Arc::default(), &[]).await;
    let sim = order(&mut kit, request("us-west", None), "inv-13")
        .await
        .unwrap();
    let iccid = sim.iccid.clone();
    let act = |action: types::LifecycleAction| {
        let iccid = iccid.clone();
        async move |a: &esim402_testkit::Accessor<esim402_testkit::KitState>,
                    g: &esim402_testkit::Exports| {
            let by = credential_wallet(OWNER, "nonce-of-the-request");
            g.dispatch()
                .call_lifecycle(a, iccid, action, Some(by))
                .await
        }
    };
    let s = kit.call(act(types::LifecycleAction::Resume)).await.unwrap();
    assert!(
        matches!(s, Err(types::Error::Conflict(_))),
        "resume an active SIM: {s:?}"
    );
    let s = kit
        .call(act(types::LifecycleAction::Suspend))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.state, types::SimState::Suspended);
    let s = kit
        .call(act(types::LifecycleAction::Resume))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.state, types::SimState::Active);

    let progress = |np: u32, status: &str| {
        json!({"iccid": iccid, "profileType": "tmo-iot-data", "timestamp": "2026-11-24T10:00:00Z",
            "notificationPointId": np, "notificationPointStatus": {"status": status}})
        .to_string()
    };
    for (np, want) in [
        (3, types::ProfileState::Downloaded),
        (4, types::ProfileState::Installed),
    ] {
        let body = progress(np, "Executed-Success");
        download_progress(&mut kit, body, Some(TMOBILE_CB))
            .await
            .unwrap();
        let s = get_sim(&mut kit, &iccid).await;
        assert_eq!(s.profile_state, want);
    }
    // A late failure report cannot undo an installation, and neither it nor a repeat of a delivered point
    // writes anything (a write would give the SIM's cell a new version).
    let key = esim402_core::store::keys::sim(&iccid);
    let stored = kit.kv().get(&key).await.unwrap();
    for body in [progress(3, "Failed"), progress(4, "Executed-Success")] {
        download_progress(&mut kit, body, Some(TMOBILE_CB))
            .await
            .unwrap();
    }
    assert_eq!(
        kit.kv().get(&key).await.unwrap(),
        stored,
        "a notification that moves nothing rewrote the SIM"
    );

    let s = kit
        .call(act(types::LifecycleAction::Terminate))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.state, types::SimState::Terminated);
    assert_eq!(s.profile_state, types::ProfileState::Installed);
    assert!(
        !calls(&kit).iter().any(|(_, f)| f == "cancelOrder"),
        "an installed profile is not cancelled over ES2+"
    );
    let s = kit.call(act(types::LifecycleAction::Resume)).await.unwrap();
    assert!(matches!(s, Err(types::Error::Conflict(_))));

    let unknown = progress(3, "Executed-Success").replace(&iccid, "8944478600003770170");
    let r = download_progress(&mut kit, unknown, Some(TMOBILE_CB)).await;
    assert!(matches!(r, Err(types::Error::NotFound(_))));
    let r = download_progress(&mut kit, "{}".into(), Some(TMOBILE_CB)).await;
    assert!(matches!(r, Err(types::Error::InvalidInput(f)) if f.field == "body"));
}

/// Metering's balance hold and the owner's suspension are separate holds: each party lifts only its own, and
/// balance holds apply in epoch order, so a suspension arriving after the top-up's release changes nothing.
#[tokio::test]
async fn balance_holds_apply_in_epoch_order_and_only_a_top_up_lifts_them() {
    let mut kit = kit_with(Arc::default(), &[]).await;
    let sim = order(&mut kit, request("us-west", None), "inv-holds")
        .await
        .unwrap();
    let iccid = sim.iccid.clone();
    let hold = |hold: bool, epoch: u64| {
        let h = types::BalanceHold {
            iccid: iccid.clone(),
            hold,
            epoch,
        };
        async move |a: &esim402_testkit::Accessor<esim402_testkit::KitState>,
                    g: &esim402_testkit::Exports| {
            g.dispatch().call_set_balance_hold(a, h).await
        }
    };
    let act = |action: types::LifecycleAction| {
        let iccid = iccid.clone();
        async move |a: &esim402_testkit::Accessor<esim402_testkit::KitState>,
                    g: &esim402_testkit::Exports| {
            let by = credential_wallet(OWNER, "nonce-of-the-request");
            g.dispatch()
                .call_lifecycle(a, iccid, action, Some(by))
                .await
        }
    };
    let state = |r: Result<types::Sim, types::Error>| r.unwrap().state;

    assert_eq!(
        state(kit.call(hold(true, 1)).await.unwrap()),
        types::SimState::Suspended
    );
    let r = kit.call(act(types::LifecycleAction::Resume)).await.unwrap();
    assert!(
        matches!(&r, Err(types::Error::Conflict(m)) if m.contains("topped up")),
        "{r:?}"
    );
    // The owner suspends it too: the top-up's release leaves it suspended until the owner resumes.
    assert_eq!(
        state(
            kit.call(act(types::LifecycleAction::Suspend))
                .await
                .unwrap()
        ),
        types::SimState::Suspended
    );
    assert_eq!(
        state(kit.call(hold(false, 2)).await.unwrap()),
        types::SimState::Suspended
    );
    assert_eq!(
        state(kit.call(act(types::LifecycleAction::Resume)).await.unwrap()),
        types::SimState::Active
    );
    // The exhaustion's hold arriving late (epoch 1 < 2), or again, changes nothing.
    assert_eq!(
        state(kit.call(hold(true, 1)).await.unwrap()),
        types::SimState::Active
    );
    assert_eq!(
        state(kit.call(hold(false, 2)).await.unwrap()),
        types::SimState::Active
    );
    let unknown = types::BalanceHold {
        iccid: Iccid::with_check_digit("890126999999999999")
            .unwrap()
            .as_str()
            .to_owned(),
        hold: true,
        epoch: 1,
    };
    let r = kit
        .call(async move |a, g| g.dispatch().call_set_balance_hold(a, unknown).await)
        .await
        .unwrap();
    assert!(matches!(r, Err(types::Error::NotFound(_))), "{r:?}");
}

#[tokio::test]
async fn terminating_a_never_downloaded_profile_retires_it_at_the_carrier() {
    let mut kit = kit_with(Arc::default(), &[]).await;
    let sim = order(&mut kit, request("us-west", None), "inv-14")
        .await
        .unwrap();
    terminate(&mut kit, &sim.iccid).await;
    assert_retired(&kit, "tmobile", &sim.iccid);
}

/// A profile downloaded to the device but not installed (download-progress point 3) can still be installed
/// there: terminating its SIM retires it at the carrier too.
#[tokio::test]
async fn terminating_a_downloaded_but_not_installed_profile_retires_it_at_the_carrier() {
    let mut kit = kit_with(Arc::default(), &[]).await;
    let sim = order(&mut kit, request("us-west", None), "inv-downloaded")
        .await
        .unwrap();
    let body = json!({"iccid": sim.iccid, "profileType": "tmo-iot-data", "timestamp": "2026-11-24T10:00:00Z",
        "notificationPointId": 3, "notificationPointStatus": {"status": "Executed-Success"}})
    .to_string();
    download_progress(&mut kit, body, Some(TMOBILE_CB))
        .await
        .unwrap();
    let terminated = terminate(&mut kit, &sim.iccid).await;
    assert_eq!(
        (terminated.state, terminated.profile_state),
        (types::SimState::Terminated, types::ProfileState::Downloaded)
    );
    assert_retired(&kit, "tmobile", &sim.iccid);
}

/// `perform-switch` of `iccid` to `carrier`, paid by `invoice`.
async fn switch_to(
    kit: &mut Kit,
    iccid: &str,
    carrier: &str,
    invoice: &str,
) -> Result<types::Sim, types::Error> {
    let target = types::SwitchTarget::Carrier(carrier.to_owned());
    switch_at(kit, iccid, target, invoice, 1_764_000_200).await
}

/// `perform-switch` of `iccid` to `target`, paid by `invoice`, at `now`.
async fn switch_at(
    kit: &mut Kit,
    iccid: &str,
    target: types::SwitchTarget,
    invoice: &str,
    now: u64,
) -> Result<types::Sim, types::Error> {
    let (id, invoice) = (iccid.to_owned(), invoice.to_owned());
    kit.call(async move |a, g| {
        g.dispatch()
            .call_perform_switch(a, id, target, invoice, now, None)
            .await
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn switch_quotes_the_fee_and_replaces_after_installation() {
    let mut kit = kit_with(Arc::default(), &[]).await;
    let old = order(&mut kit, request("us-west", None), "inv-15")
        .await
        .unwrap();
    let id = old.iccid.clone();
    let q = kit
        .call(async move |a, g| {
            g.dispatch()
                .call_quote_switch(a, id, types::SwitchTarget::Carrier("verizon".into()))
                .await
        })
        .await
        .unwrap()
        .unwrap();
    // The fee: the unused balance moves by its value (metering revalues it at Verizon's rate).
    assert_eq!((q.carrier.as_str(), q.amount), ("verizon", 120_000));

    let id = old.iccid.clone();
    let same = kit
        .call(async move |a, g| {
            g.dispatch()
                .call_quote_switch(a, id, types::SwitchTarget::Carrier("tmobile".into()))
                .await
        })
        .await
        .unwrap();
    assert!(matches!(same, Err(types::Error::InvalidInput(f)) if f.field == "carrier"));

    let id = old.iccid.clone();
    let new = kit
        .call(async move |a, g| {
            g.dispatch()
                .call_perform_switch(
                    a,
                    id,
                    types::SwitchTarget::Carrier("verizon".into()),
                    "inv-16".into(),
                    1_764_000_100,
                    None,
                )
                .await
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(new.carrier, "verizon");
    assert_eq!(new.replaces.as_deref(), Some(old.iccid.as_str()));

    // The same payment sent again meets its own switch: the same SIM, no second order at the carrier.
    let before = kit.requests().len();
    let again = switch_to(&mut kit, &old.iccid, "verizon", "inv-16").await;
    assert_eq!(again.unwrap().iccid, new.iccid);
    assert_eq!(kit.requests().len(), before, "nothing sent to the carrier");
    // Another invoice meets a replacement on its way.
    let other = switch_to(&mut kit, &old.iccid, "verizon", "inv-17").await;
    assert!(matches!(other, Err(types::Error::Conflict(_))), "{other:?}");

    // Installing the new profile takes the old one out of service.
    let body = json!({"iccid": new.iccid, "profileType": "vzw-iot-data", "timestamp": "2026-11-24T10:00:00Z",
        "notificationPointId": 4, "notificationPointStatus": {"status": "Executed-Success"}})
    .to_string();
    download_progress(&mut kit, body, Some(VERIZON_CB))
        .await
        .unwrap();
    let old_now = get_sim(&mut kit, &old.iccid).await;
    assert_eq!(old_now.state, types::SimState::Terminated);
    assert_eq!(old_now.replaced_by.as_deref(), Some(new.iccid.as_str()));
    // The old profile was never downloaded: it is retired at its carrier, so nobody can download it now.
    assert_retired(&kit, "tmobile", &old.iccid);
}

#[tokio::test]
async fn an_order_that_outlives_its_budget_stays_pending_and_is_resumed() {
    let smdp = Arc::new(FakeSmdp::default());
    smdp.set("tmobile", Behaves::ConfirmTimeout);
    let mut kit = kit_with(smdp.clone(), SHORT_BUDGET).await;
    let pending = order(&mut kit, request("us-west", None), "inv-slow")
        .await
        .unwrap();
    assert_eq!(pending.state, types::SimState::Pending);
    assert_eq!(pending.profile_state, types::ProfileState::Ordered);
    assert!(pending.activation_code.is_none());
    let confirms: Vec<_> = kit
        .requests()
        .iter()
        .filter(|r| r.uri.ends_with("/confirmOrder"))
        .map(|r| r.json().unwrap()["header"]["functionCallIdentifier"].clone())
        .collect();
    assert!(
        !calls(&kit).iter().any(|(_, f)| f == "cancelOrder"),
        "nothing is abandoned"
    );

    // While the first attempt's lease runs, a repeat reports the same pending SIM without calling anyone.
    let before = kit.requests().len();
    let again = order(&mut kit, request("us-west", None), "inv-slow")
        .await
        .unwrap();
    assert_eq!(
        (again.iccid.as_str(), again.state),
        (pending.iccid.as_str(), types::SimState::Pending)
    );
    assert_eq!(kit.requests().len(), before);

    // The carrier recovers; once the lease expired, a repeat finishes the same order with the same confirm
    // call id (a confirm that succeeded unseen would be replayed, not refused).
    smdp.set("tmobile", Behaves::Ok);
    let done = order_at(&mut kit, request("us-west", None), "inv-slow", AFTER_LEASE)
        .await
        .unwrap();
    assert_eq!(done.iccid, pending.iccid);
    assert_eq!(done.state, types::SimState::Active);
    assert!(done.activation_code.is_some());
    let last_confirm = kit
        .requests()
        .iter()
        .rev()
        .find(|r| r.uri.ends_with("/confirmOrder"))
        .map(|r| r.json().unwrap()["header"]["functionCallIdentifier"].clone())
        .unwrap();
    assert_eq!(last_confirm, confirms[0]);
}

/// An order left pending after its confirm ran at the SM-DP+ unseen, whose profile the SM-DP+ then reports dead
/// (a terminal download failure on the still-pending SIM): the order, resumed, does not deliver the profile its
/// confirm's replay calls released; it gives it back and fails over. Before, the failure was dropped (nothing
/// to write on a pending SIM) and the resumed order delivered the dead profile as active, its payment kept.
#[tokio::test]
async fn a_pending_orders_profile_reported_dead_is_not_delivered_when_resumed() {
    let smdp = Arc::new(FakeSmdp::default());
    smdp.set("tmobile", Behaves::ConfirmTimeout);
    let mut kit = kit_with(smdp.clone(), SHORT_BUDGET).await;
    let pending = order(&mut kit, request("us-west", None), "inv-dead")
        .await
        .unwrap();
    assert_eq!(pending.state, types::SimState::Pending);
    let iccid = pending.iccid.clone();
    let expired = json!({"iccid": iccid, "profileType": "tmo-iot-data", "timestamp": "2026-11-24T10:00:00Z",
        "notificationPointId": 3, "notificationPointStatus": {"status": "Failed",
            "statusCodeData": {"subjectCode": "8.8.5", "reasonCode": "4.10", "message": "expired"}}});
    let r = download_progress(&mut kit, expired.to_string(), Some(TMOBILE_CB)).await;
    assert!(
        matches!(r, Ok(None)),
        "nothing delivered, nothing owed: {r:?}"
    );
    let stored: Value =
        serde_json::from_slice(&kit.kv_get(&format!("sim/{iccid}")).await.unwrap()).unwrap();
    assert_eq!(
        (&stored["state"], &stored["download_failure"]),
        (&json!("pending"), &json!("8.8.5/4.10")),
        "{stored}"
    );

    smdp.set("tmobile", Behaves::Ok);
    let done = order_at(&mut kit, request("us-west", None), "inv-dead", AFTER_LEASE)
        .await
        .unwrap();
    assert_ne!(done.iccid, iccid, "another profile: {done:?}");
    assert_eq!(done.state, types::SimState::Active);
    assert!(
        done.failovers
            .iter()
            .any(|f| f.contains("failed at the SM-DP+")),
        "{:?}",
        done.failovers
    );
    let dead = get_sim(&mut kit, &iccid).await;
    assert_eq!(dead.state, types::SimState::Failed);
    assert!(dead.activation_code.is_none());
    let cancel = last_request_to(&kit, "tmobile");
    assert!(cancel.uri.ends_with("/cancelOrder"), "{}", cancel.uri);
    assert_eq!(cancel.json().unwrap()["iccid"], json!(iccid));

    // The same terminal notification again (the device retried, or our 204 was lost): the dead profile was
    // never delivered, and its invoice paid for the SIM the failover delivered, so nothing is owed back and
    // nothing sent. Before, the failed record read as a delivered SIM failed by its download: dispatch
    // returned it and the gateway owed the whole invoice back.
    let before = kit.requests().len();
    let r = download_progress(&mut kit, expired.to_string(), Some(TMOBILE_CB)).await;
    assert!(matches!(r, Ok(None)), "nothing owed: {r:?}");
    assert_eq!(kit.requests().len(), before, "nothing sent");
}

/// An order left pending, resumed for another payer (the same invoice ordered by someone else once the first
/// driver's lease ran out), is refused as a repeat of a busy or done order is: nothing confirmed or returned
/// for them, and the order handed back so its own payer's repeat finishes it at once. Before, the resume
/// skipped the payer check and handed the other payer the first one's SIM, activation code included.
#[tokio::test]
async fn a_resumed_order_is_refused_to_another_payer() {
    let smdp = Arc::new(FakeSmdp::default());
    smdp.set("tmobile", Behaves::ConfirmTimeout);
    let mut kit = kit_with(smdp.clone(), SHORT_BUDGET).await;
    let pending = order(&mut kit, request("us-west", None), "inv-payer")
        .await
        .unwrap();
    assert_eq!(pending.state, types::SimState::Pending);
    smdp.set("tmobile", Behaves::Ok);
    let before = kit.requests().len();
    let other = kit
        .call(async move |a, g| {
            g.dispatch()
                .call_order_profile(
                    a,
                    request("us-west", None),
                    "inv-payer".into(),
                    "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC".into(),
                    None,
                    AFTER_LEASE,
                    None,
                )
                .await
        })
        .await
        .unwrap();
    assert!(
        matches!(&other, Err(types::Error::Conflict(m)) if m.contains("another payer")),
        "{other:?}"
    );
    assert_eq!(kit.requests().len(), before, "nothing confirmed for them");
    let kept = get_sim(&mut kit, &pending.iccid).await;
    assert_eq!(kept.state, types::SimState::Pending);
    assert_eq!(kept.owner.as_deref(), Some(OWNER));

    let done = order_at(&mut kit, request("us-west", None), "inv-payer", AFTER_LEASE)
        .await
        .unwrap();
    assert_eq!(
        (done.iccid.as_str(), done.state),
        (pending.iccid.as_str(), types::SimState::Active)
    );
}

/// A store that fails the next `set` of one armed key (then writes through again): a cell update of that key
/// whose claim won and whose head write failed, so it committed and answered an error.
#[derive(Clone, Default)]
struct FailNextSet(Arc<Mutex<Option<String>>>);

impl esim402_host::kv::wrapped::Hook for FailNextSet {
    fn before(
        &self,
        op: esim402_host::kv::wrapped::Op,
        key: &str,
    ) -> esim402_host::kv::KvResult<()> {
        let mut armed = self.0.lock().unwrap();
        if op == esim402_host::kv::wrapped::Op::Set && armed.as_deref() == Some(key) {
            *armed = None;
            return Err(esim402_host::kv::KvError(format!("injected: {key}")));
        }
        Ok(())
    }
}

/// `lifecycle(terminate)` of `iccid` by its owner, as answered.
async fn terminate_answer(kit: &mut Kit, iccid: &str) -> Result<types::Sim, types::Error> {
    let id = iccid.to_owned();
    let by = owner_credential(kit, iccid).await;
    kit.call(async move |a, g| {
        g.dispatch()
            .call_lifecycle(a, id, types::LifecycleAction::Terminate, Some(by))
            .await
    })
    .await
    .unwrap()
}

/// A terminate whose write committed but answered an error (its head write failed after its claim won) never
/// ran its retirement; the owner's repeat is answered the conflict it always was (already terminated: the
/// gateway then reads the SIM) and retires the profile at the SM-DP+. Before, the repeat was refused before
/// anything else, so the released profile was never cancelled.
#[tokio::test]
async fn a_terminate_repeated_after_its_write_answered_an_error_retires_the_profile() {
    let hook = FailNextSet::default();
    let store = esim402_host::kv::wrapped::Wrapped::new(
        Arc::new(esim402_host::kv::MemoryStore::default()),
        hook.clone(),
    );
    let mut kit = kit_on(Arc::default(), &[], Some(Arc::new(store))).await;
    let sim = order(&mut kit, request("us-west", None), "inv-term-lost")
        .await
        .unwrap();
    let before = calls(&kit).len();
    *hook.0.lock().unwrap() = Some(format!("sim/{}", sim.iccid));
    let first = terminate_answer(&mut kit, &sim.iccid).await;
    assert!(first.is_err(), "{first:?}");
    assert!(
        hook.0.lock().unwrap().is_none(),
        "the head write was the one failed"
    );
    assert_eq!(calls(&kit).len(), before, "nothing retired yet");

    let again = terminate_answer(&mut kit, &sim.iccid).await;
    assert!(matches!(again, Err(types::Error::Conflict(_))), "{again:?}");
    assert_eq!(
        get_sim(&mut kit, &sim.iccid).await.state,
        types::SimState::Terminated
    );
    assert_retired(&kit, "tmobile", &sim.iccid);
}

/// A ConfirmOrder answering an empty MatchingID for an order that named no EID is unusable (its code
/// `1$<smdp>$` leads no device to the profile): the profile is given back and the order fails over; nothing is
/// delivered under it. An order naming an EID takes it (the eUICC finds its profile by itself). Before, the
/// empty one was delivered as an active SIM.
#[tokio::test]
async fn an_empty_matching_id_is_delivered_only_for_an_order_naming_an_eid() {
    let smdp = Arc::new(FakeSmdp::default());
    smdp.set("tmobile", Behaves::ConfirmEmptyMatchingId);
    let mut kit = kit_with(smdp.clone(), &[]).await;
    let req = types::ActivationRequest {
        allow_failover: true,
        ..request("us-west", None)
    };
    let sim = order(&mut kit, req, "inv-empty-mid").await.unwrap();
    assert_eq!(sim.carrier, "verizon", "{sim:?}");
    assert!(
        sim.failovers.iter().any(|f| f.contains("empty matchingId")),
        "{:?}",
        sim.failovers
    );
    let given_back = kit
        .requests()
        .into_iter()
        .find(|r| r.uri.ends_with("/tmobile/gsma/rsp2/es2plus/cancelOrder"))
        .expect("the profile is given back");
    let given_back = given_back.json().unwrap();
    assert_eq!(given_back["finalProfileStatusIndicator"], "Available");
    let tmobile = get_sim(&mut kit, given_back["iccid"].as_str().unwrap()).await;
    assert_eq!(tmobile.state, types::SimState::Failed);
    assert!(tmobile.activation_code.is_none());

    let with_eid = types::ActivationRequest {
        eid: Some(EID.into()),
        ..request("us-west", None)
    };
    let sim = order(&mut kit, with_eid, "inv-empty-mid-eid")
        .await
        .unwrap();
    assert_eq!(
        (sim.carrier.as_str(), sim.state),
        ("tmobile", types::SimState::Active)
    );
}

/// The last ES2+ request sent to `carrier`.
fn last_request_to(kit: &Kit, carrier: &str) -> Recorded {
    let prefix = format!("{SMDP}/{carrier}/");
    kit.requests()
        .into_iter()
        .rev()
        .find(|r| r.uri.starts_with(&prefix))
        .unwrap()
}

/// When the authorization of an [`abandoned`] order can no longer settle (its `validBefore`).
const ABANDONED_VALID_BEFORE: u64 = NOW + 60;

/// An `exact` payment's order (`invoice`, T-Mobile) left pending by a confirm that timed out, its
/// authorization valid until [`ABANDONED_VALID_BEFORE`]: the simulator (still timing out confirms), the kit
/// and the pending SIM.
async fn abandoned(invoice: &str) -> (Arc<FakeSmdp>, Kit, types::Sim) {
    let smdp = Arc::new(FakeSmdp::default());
    smdp.set("tmobile", Behaves::ConfirmTimeout);
    let mut kit = kit_with(smdp.clone(), SHORT_BUDGET).await;
    let pending = order_until(
        &mut kit,
        request("us-west", None),
        invoice,
        NOW,
        Some(ABANDONED_VALID_BEFORE),
    )
    .await
    .unwrap();
    (smdp, kit, pending)
}

/// `run-cleanup` at `at`, up to 50 of each: its report.
async fn cleanup_run(
    kit: &mut Kit,
    at: u64,
) -> esim402_testkit::bindings::exports::esim402::dispatch::dispatch::CleanupRun {
    kit.call(async move |a, g| g.dispatch().call_run_cleanup(a, at, 50).await)
        .await
        .unwrap()
        .unwrap()
}

/// Keep `request` as `invoice`'s paid request (`keep-resend`).
async fn keep_resend(kit: &mut Kit, invoice: &str, request: &str) {
    let (i, r) = (invoice.to_owned(), request.to_owned());
    kit.call(async move |a, g| g.dispatch().call_keep_resend(a, i, r).await)
        .await
        .unwrap()
        .unwrap();
}

/// `settle-unrefunded` of `iccid`.
async fn settle_unrefunded(kit: &mut Kit, iccid: &str, done: bool) {
    let i = iccid.to_owned();
    kit.call(async move |a, g| g.dispatch().call_settle_unrefunded(a, i, done).await)
        .await
        .unwrap()
        .unwrap();
}

/// `settle-recheck` of `invoice`.
async fn settle_recheck(kit: &mut Kit, invoice: &str, done: bool) {
    let i = invoice.to_owned();
    kit.call(async move |a, g| g.dispatch().call_settle_recheck(a, i, done).await)
        .await
        .unwrap()
        .unwrap();
}

/// A terminate writes nothing to the unrefunded list; a SIM whose refunds could not be recorded is listed
/// (once), and the operator's run hands it out until its refunds are settled recorded; one not recorded waits
/// its doubling wait.
#[tokio::test]
async fn a_sim_listed_unrefunded_is_handed_out_until_its_refunds_are_settled() {
    let mut kit = kit_with(Arc::default(), &[]).await;
    let sim = order(&mut kit, request("us-west", None), "inv-unrefunded")
        .await
        .unwrap();
    terminate(&mut kit, &sim.iccid).await;
    assert!(cleanup_run(&mut kit, NOW).await.unrefunded.is_empty());
    for _ in 0..2 {
        let i = sim.iccid.clone();
        kit.call(async move |a, g| g.dispatch().call_list_unrefunded(a, i).await)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(
        cleanup_run(&mut kit, NOW).await.unrefunded,
        vec![sim.iccid.clone()]
    );
    settle_unrefunded(&mut kit, &sim.iccid, false).await;
    assert!(
        cleanup_run(&mut kit, NOW + 1).await.unrefunded.is_empty(),
        "not before its wait"
    );
    assert_eq!(
        cleanup_run(&mut kit, NOW + 3_600).await.unrefunded,
        vec![sim.iccid.clone()]
    );
    settle_unrefunded(&mut kit, &sim.iccid, true).await;
    assert!(
        cleanup_run(&mut kit, NOW + 100_000)
            .await
            .unrefunded
            .is_empty()
    );
}

/// An `exact` activation's order kept pending, its paid request kept, and withdrawn by the operator's run: the
/// run hands the kept request back to be sent again; one without a final answer waits (doubling) and does not
/// come back before; a final answer ends it and drops the request. One whose order was delivered instead is
/// never handed back, and its request is dropped.
#[tokio::test]
async fn a_withdrawn_orders_kept_request_is_handed_back_until_it_gets_a_final_answer() {
    let (smdp, mut kit, _) = abandoned("inv-kept").await;
    keep_resend(
        &mut kit,
        "inv-kept",
        r#"{"url":"u","body":"{}","headers":[]}"#,
    )
    .await;
    smdp.set("tmobile", Behaves::Ok);
    let after = ABANDONED_VALID_BEFORE + 61;
    let run = cleanup_run(&mut kit, after).await;
    assert_eq!(run.withdrawn, 1);
    assert_eq!(
        run.recheck
            .iter()
            .map(|k| (k.invoice.as_str(), k.request.as_str()))
            .collect::<Vec<_>>(),
        vec![("inv-kept", r#"{"url":"u","body":"{}","headers":[]}"#)]
    );
    settle_recheck(&mut kit, "inv-kept", false).await;
    assert!(
        cleanup_run(&mut kit, after + 299).await.recheck.is_empty(),
        "waits"
    );
    assert_eq!(cleanup_run(&mut kit, after + 300).await.recheck.len(), 1);
    settle_recheck(&mut kit, "inv-kept", true).await;
    assert!(
        cleanup_run(&mut kit, after + 10_000)
            .await
            .recheck
            .is_empty()
    );
    assert!(
        kit.kv_get("cleanup/resend/inv-kept").await.is_none(),
        "dropped"
    );

    // Delivered: the payment sent again completes the order; its parked entry leaves with its kept request.
    smdp.set("tmobile", Behaves::ConfirmTimeout);
    order_until(
        &mut kit,
        request("us-west", None),
        "inv-done",
        NOW,
        Some(after + 100),
    )
    .await
    .unwrap();
    keep_resend(&mut kit, "inv-done", "{}").await;
    smdp.set("tmobile", Behaves::Ok);
    let done = order_at(&mut kit, request("us-west", None), "inv-done", AFTER_LEASE)
        .await
        .unwrap();
    assert_eq!(done.state, types::SimState::Active);
    // After the lease of the resent order (its own sweep found the entry held by it, and parked it again).
    let run = cleanup_run(&mut kit, AFTER_LEASE + 3_600).await;
    assert!(run.recheck.is_empty(), "{:?}", run.recheck.len());
    assert!(kit.kv_get("cleanup/resend/inv-done").await.is_none());
}

/// A kept request survives a failover: the order's first profile (T-Mobile, pending) fails at its confirm when
/// the payment is sent again and the order moves on to Verizon, pending too. The first profile's parked entry
/// leaves (the order moved on) without dropping the invoice's kept request, so when the second profile is
/// withdrawn the run still hands the request back. (A first version dropped it with the first entry.)
#[tokio::test]
async fn a_kept_request_stays_for_a_failed_over_orders_next_profile() {
    let smdp = Arc::new(FakeSmdp::default());
    smdp.set("tmobile", Behaves::ConfirmTimeout);
    smdp.set("verizon", Behaves::ConfirmTimeout);
    let mut kit = kit_with(smdp.clone(), SHORT_BUDGET).await;
    let req = types::ActivationRequest {
        allow_failover: true,
        ..request("us-west", None)
    };
    let valid_before = NOW + 10_000;
    let first = order_until(&mut kit, req.clone(), "inv-fo", NOW, Some(valid_before))
        .await
        .unwrap();
    assert_eq!(
        (first.carrier.as_str(), first.state),
        ("tmobile", types::SimState::Pending)
    );
    keep_resend(
        &mut kit,
        "inv-fo",
        r#"{"url":"u","body":"{}","headers":[]}"#,
    )
    .await;
    smdp.set("tmobile", Behaves::ConfirmFails);
    let next = order_until(&mut kit, req, "inv-fo", AFTER_LEASE, Some(valid_before))
        .await
        .unwrap();
    assert_eq!(
        (next.carrier.as_str(), next.state),
        ("verizon", types::SimState::Pending)
    );
    let run = cleanup_run(&mut kit, valid_before + 3_600).await;
    assert_eq!(run.withdrawn, 1, "the second profile");
    assert_eq!(
        run.recheck
            .iter()
            .map(|k| k.invoice.as_str())
            .collect::<Vec<_>>(),
        vec!["inv-fo"]
    );
}

/// An `exact` payment's order left pending whose payer never sends the payment again: once its authorization
/// can no longer settle (its `validBefore`, and a margin for clock skew), the cleanup sweep of a later order
/// withdraws it: the SIM terminated, the profile retired at the carrier, and the payment sent again ends with
/// no profile. Before, the profile stayed allocated at the carrier for good.
#[tokio::test]
async fn an_abandoned_order_is_withdrawn_once_its_authorization_expired() {
    let (smdp, mut kit, pending) = abandoned("inv-abandoned").await;
    let valid_before = ABANDONED_VALID_BEFORE;
    assert_eq!(
        (pending.carrier.as_str(), pending.state),
        ("tmobile", types::SimState::Pending)
    );
    assert!(kit.kv_get("cleanup/parked").await.is_some(), "parked");
    // No top-up for it while it may yet be withdrawn: nothing would owe that top-up back.
    let iccid = pending.iccid.clone();
    let top_up = kit
        .call(async move |a, g| g.dispatch().call_quote_top_ups(a, iccid, Some(50), 0).await)
        .await
        .unwrap();
    assert!(
        matches!(&top_up, Err(types::Error::Conflict(m)) if m.contains("still being ordered")),
        "{top_up:?}"
    );
    // The carrier recovers; the payer never sends the payment again. Orders placed before the authorization
    // expired, or within the margin after it, leave the order alone.
    smdp.set("tmobile", Behaves::Ok);
    for (invoice, at) in [("inv-early", NOW + 10), ("inv-margin", valid_before + 59)] {
        order_at(&mut kit, request("us-west", Some("verizon")), invoice, at)
            .await
            .unwrap();
        let sim = get_sim(&mut kit, &pending.iccid).await;
        assert_eq!(sim.state, types::SimState::Pending, "at {at}");
        assert!(
            !calls(&kit).iter().any(|(_, f)| f == "cancelOrder"),
            "at {at}"
        );
    }
    // Later, an order's sweep withdraws it.
    let later = order_at(
        &mut kit,
        request("us-west", Some("verizon")),
        "inv-later",
        valid_before + 60,
    )
    .await
    .unwrap();
    assert_eq!(later.state, types::SimState::Active);
    let withdrawn = get_sim(&mut kit, &pending.iccid).await;
    assert_eq!(withdrawn.state, types::SimState::Terminated);
    assert!(withdrawn.activation_code.is_none());
    let cancel = last_request_to(&kit, "tmobile");
    assert!(cancel.uri.ends_with("/cancelOrder"), "{}", cancel.uri);
    let body = cancel.json().unwrap();
    assert_eq!(body["iccid"].as_str(), Some(pending.iccid.as_str()));
    assert_eq!(body["finalProfileStatusIndicator"], "Unavailable");
    // The payment sent again ends without a profile, and nothing more is asked of the carrier.
    let before = kit.requests().len();
    let again = order_at(
        &mut kit,
        request("us-west", None),
        "inv-abandoned",
        valid_before + 61,
    )
    .await;
    assert!(
        matches!(&again, Err(types::Error::Unavailable(m)) if m.contains("withdrawn")),
        "{again:?}"
    );
    assert_eq!(kit.requests().len(), before);
    assert_eq!(
        get_sim(&mut kit, &pending.iccid).await.state,
        types::SimState::Terminated
    );
    // Withdrawn once: a later sweep finds nothing to do.
    order_at(
        &mut kit,
        request("us-west", Some("verizon")),
        "inv-last",
        AFTER_LEASE,
    )
    .await
    .unwrap();
    assert_eq!(
        calls(&kit)
            .iter()
            .filter(|c| **c == call("tmobile", "cancelOrder"))
            .count(),
        1
    );
}

/// The operator's cleanup run (`run-cleanup`, `POST /admin/cleanup/run` from cron) withdraws an abandoned order
/// once it is due and retries the queued carrier work, with no order placed: before, only a later order's
/// sweep did either, so a service nobody ordered from kept the profile allocated. Its report says what it did
/// and what is left.
#[tokio::test]
async fn a_cleanup_run_withdraws_and_retries_without_an_order() {
    let (smdp, mut kit, pending) = abandoned("inv-cron").await;
    let valid_before = ABANDONED_VALID_BEFORE;
    assert_eq!(pending.state, types::SimState::Pending);
    smdp.set("tmobile", Behaves::Ok);
    let before = kit.requests().len();
    let queued = Iccid::with_check_digit("890126000000000077").unwrap();
    let item = json!([{"kind": "cancel", "carrier": "tmobile", "iccid": queued.as_str(), "retire": false}]);
    kit.kv_put("cleanup/queue", item.to_string().as_bytes())
        .await;
    let cancels = |kit: &Kit| -> Vec<String> {
        kit.requests()
            .iter()
            .filter(|r| r.uri.ends_with("/cancelOrder"))
            .map(|r| r.json().unwrap()["iccid"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    // Before the order is due: the queued cancel is done, the parked order left alone.
    let first = cleanup_run(&mut kit, valid_before + 59).await;
    assert_eq!(
        (
            first.withdrawn,
            first.tried,
            first.requeued,
            first.queued,
            first.parked
        ),
        (0, 1, 0, 0, 1)
    );
    assert_eq!(cancels(&kit), vec![queued.as_str().to_owned()]);
    assert_eq!(
        get_sim(&mut kit, &pending.iccid).await.state,
        types::SimState::Pending
    );
    // Due: withdrawn, its profile retired, and no order was placed for it.
    let second = cleanup_run(&mut kit, valid_before + 60).await;
    assert_eq!(
        (
            second.withdrawn,
            second.tried,
            second.requeued,
            second.queued,
            second.parked
        ),
        (1, 0, 0, 0, 0)
    );
    assert_eq!(
        get_sim(&mut kit, &pending.iccid).await.state,
        types::SimState::Terminated
    );
    assert_retired(&kit, "tmobile", &pending.iccid);
    // Nothing left: a third run does nothing. The runs asked the carrier for the two cancels only.
    let third = cleanup_run(&mut kit, AFTER_LEASE).await;
    assert_eq!((third.withdrawn, third.tried, third.parked), (0, 0, 0));
    let asked: Vec<_> = calls(&kit)[before..].to_vec();
    assert_eq!(asked, vec![call("tmobile", "cancelOrder"); 2]);
}

/// A tx-hash payment's order (`invoice`, `req`) left pending by a T-Mobile confirm that timed out, parked as paid
/// (`paid_order_pending_secs` 600): the simulator (still timing out confirms), the kit and the pending SIM.
async fn paid_pending(
    req: types::ActivationRequest,
    invoice: &str,
) -> (Arc<FakeSmdp>, Kit, types::Sim) {
    let smdp = Arc::new(FakeSmdp::default());
    smdp.set("tmobile", Behaves::ConfirmTimeout);
    let vars = [SHORT_BUDGET, &[("paid_order_pending_secs", "600")]].concat();
    let mut kit = kit_with(smdp.clone(), &vars).await;
    let pending = order_withdrawn(&mut kit, req, invoice, NOW, Some(Withdrawal::Paid))
        .await
        .unwrap();
    (smdp, kit, pending)
}

/// A tx-hash payment's order left pending (its money moved already) is parked as paid: an order's sweep never
/// withdraws it, and the operator's run does only once it stayed pending `paid_order_pending_secs`; that run
/// names its invoice as owed (the caller owes the payment back) on every run after its hold until told the
/// refund is recorded (`settle-owed`). The payment sent again is answered that the payment is owed back.
/// Before, nothing ever withdrew it: the money stayed with us and the profile allocated.
#[tokio::test]
async fn a_paid_order_left_pending_is_withdrawn_by_the_operators_run_and_owed_until_settled() {
    let (smdp, mut kit, pending) = paid_pending(request("us-west", None), "inv-paid").await;
    assert_eq!(
        (pending.carrier.as_str(), pending.state),
        ("tmobile", types::SimState::Pending)
    );
    // Under a key of its own, which earlier builds (rewriting `cleanup/parked` whole) never touch.
    let parked = String::from_utf8(kit.kv_get("cleanup/parked-paid").await.unwrap()).unwrap();
    assert!(parked.contains(r#""paid":true"#), "{parked}");
    assert!(kit.kv_get("cleanup/parked").await.is_none());
    smdp.set("tmobile", Behaves::Ok);
    let cancels = |kit: &Kit| {
        calls(kit)
            .iter()
            .filter(|c| **c == call("tmobile", "cancelOrder"))
            .count()
    };
    // The operator's run leaves it alone before its grace ends; an order's sweep does after it too.
    let early = cleanup_run(&mut kit, NOW + 599).await;
    assert_eq!((early.withdrawn, early.parked), (0, 1));
    assert!(early.owed.is_empty());
    assert_eq!(
        get_sim(&mut kit, &pending.iccid).await.state,
        types::SimState::Pending
    );
    let due = NOW + 600;
    order_at(
        &mut kit,
        request("us-west", Some("verizon")),
        "inv-other",
        due,
    )
    .await
    .unwrap();
    assert_eq!(
        get_sim(&mut kit, &pending.iccid).await.state,
        types::SimState::Pending
    );
    assert_eq!(cancels(&kit), 0);
    // The operator's run, due: withdrawn, its profile retired, its invoice named owed; the entry stays (held)
    // until settled.
    let run = cleanup_run(&mut kit, due).await;
    assert_eq!((run.withdrawn, run.parked), (1, 1));
    assert_eq!(run.owed, vec!["inv-paid".to_owned()]);
    assert_eq!(
        get_sim(&mut kit, &pending.iccid).await.state,
        types::SimState::Terminated
    );
    assert_retired(&kit, "tmobile", &pending.iccid);
    // Held for that run: another run during the hold does not name it; one after the hold does, again, with
    // nothing more asked of the carrier (the refund was not acknowledged: say the caller stopped).
    let during = cleanup_run(&mut kit, due + 1).await;
    assert!(during.owed.is_empty(), "{:?}", during.owed);
    let again = cleanup_run(&mut kit, due + 120).await;
    assert_eq!(
        (again.withdrawn, again.owed.clone()),
        (0, vec!["inv-paid".to_owned()])
    );
    assert_eq!(cancels(&kit), 1);
    // An operator's case (no retry records its refund): named again a day later, not on every run.
    let later = due + 200;
    assert_eq!(settle_owed(&mut kit, &[], &["inv-paid"], later).await, 0);
    let waiting = cleanup_run(&mut kit, later + 86_399).await;
    assert!(waiting.owed.is_empty(), "{:?}", waiting.owed);
    let day = later + 86_400;
    let next_day = cleanup_run(&mut kit, day).await;
    assert_eq!(next_day.owed, vec!["inv-paid".to_owned()]);
    // Recorded: it leaves, and the next run names nothing.
    assert_eq!(
        settle_owed(&mut kit, &["inv-paid", "inv-unknown"], &[], day).await,
        1
    );
    let after = cleanup_run(&mut kit, day + 240).await;
    assert_eq!((after.withdrawn, after.parked), (0, 0));
    assert!(after.owed.is_empty());
    // The same payment sent again: its order is over, and says the payment is owed back.
    let resent = order_withdrawn(
        &mut kit,
        request("us-west", None),
        "inv-paid",
        day + 300,
        Some(Withdrawal::Paid),
    )
    .await;
    assert!(
        matches!(&resent, Err(types::Error::Unavailable(m)) if m.contains("owed back")),
        "{resent:?}"
    );
}

/// The order journal of `invoice` says it failed.
async fn assert_journal_failed(kit: &Kit, invoice: &str) {
    let journal: Value =
        serde_json::from_slice(&kit.kv_get(&format!("order/{invoice}")).await.unwrap()).unwrap();
    assert_eq!(journal["status"], "failed", "{journal}");
}

/// `settle-owed` at `now`: the paid entries of `recorded` leave, those of `operator` wait a day. How many left.
async fn settle_owed(kit: &mut Kit, recorded: &[&str], operator: &[&str], now: u64) -> u32 {
    let own = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let (recorded, operator) = (own(recorded), own(operator));
    kit.call(async move |a, g| {
        g.dispatch()
            .call_settle_owed(a, recorded, operator, now)
            .await
    })
    .await
    .unwrap()
    .unwrap()
}

/// A paid order left pending whose order then failed for another reason (the owner's refresh: the carrier
/// refused the confirm) is owed back by the operator's run too, with nothing withdrawn or cancelled by it:
/// before, the run dropped the entry, and the money stayed with us unless the payer sent the proof again.
#[tokio::test]
async fn a_paid_order_that_failed_otherwise_is_owed_back_by_the_run() {
    let (smdp, mut kit, pending) =
        paid_pending(request("us-west", Some("tmobile")), "inv-refresh").await;
    smdp.set("tmobile", Behaves::ConfirmFails);
    let id = pending.iccid.clone();
    let refreshed = kit
        .call(async move |a, g| g.dispatch().call_resume_order(a, id).await)
        .await
        .unwrap();
    assert!(refreshed.is_err(), "{refreshed:?}");
    assert_journal_failed(&kit, "inv-refresh").await;
    let asked = kit.requests().len();
    let run = cleanup_run(&mut kit, AFTER_LEASE).await;
    assert_eq!(run.owed, vec!["inv-refresh".to_owned()]);
    assert_eq!(run.withdrawn, 0);
    assert_eq!(kit.requests().len(), asked, "nothing asked of the carrier");
}

/// An abandoned order that stopped before storing its pending SIM (its journal names the profile, no record
/// does): withdrawn all the same, its journal failed and its profile retired through the cleanup queue, whose
/// sweep sends a cancel only if no live SIM of ours holds the ICCID by then (kernel `order::sweep_may_cancel`).
/// Before, the entry was dropped with the profile left allocated at the carrier.
#[tokio::test]
async fn an_order_that_never_stored_its_sim_is_withdrawn() {
    let (smdp, mut kit, pending) = abandoned("inv-unstored").await;
    smdp.set("tmobile", Behaves::Ok);
    kit.kv()
        .delete(&format!("sim/{}", pending.iccid))
        .await
        .unwrap();
    let run = cleanup_run(&mut kit, ABANDONED_VALID_BEFORE + 60).await;
    assert_eq!((run.withdrawn, run.queued, run.parked), (1, 0, 0));
    assert_retired(&kit, "tmobile", &pending.iccid);
    assert_journal_failed(&kit, "inv-unstored").await;
}

/// A withdrawal that stopped after terminating the pending SIM but before its cancel (a crash; the SIM record
/// written, the journal still ordering) is finished by the next sweep: the profile retired at the carrier, the
/// journal failed. Before, the sweep found the SIM terminated, took nothing to be left to withdraw and dropped
/// the entry, so the profile stayed allocated at the carrier.
#[tokio::test]
async fn a_withdrawal_that_stopped_before_its_cancel_is_finished() {
    let (smdp, mut kit, pending) = abandoned("inv-crashed").await;
    smdp.set("tmobile", Behaves::Ok);
    let key = format!("sim/{}", pending.iccid);
    let mut stored: Value = serde_json::from_slice(&kit.kv_get(&key).await.unwrap()).unwrap();
    assert_eq!(stored["state"], "pending", "{stored}");
    stored["state"] = json!("terminated");
    kit.kv_put(&key, stored.to_string().as_bytes()).await;
    let run = cleanup_run(&mut kit, ABANDONED_VALID_BEFORE + 60).await;
    assert_eq!((run.withdrawn, run.parked), (1, 0));
    assert_retired(&kit, "tmobile", &pending.iccid);
    assert_journal_failed(&kit, "inv-crashed").await;
}

/// A sweep holds what it takes until its hold ends, leaving it queued: one that stopped before it was done (a
/// crash) loses nothing, and the next sweep after the hold does the work. Before, taking an item removed it,
/// so a crash mid-sweep lost it (and the profile stayed allocated); here a held item is passed over until then.
#[tokio::test]
async fn an_item_a_stopped_sweep_held_is_done_once_its_hold_ends() {
    let smdp = Arc::new(FakeSmdp::default());
    let mut kit = kit_with(smdp, &[]).await;
    let iccid = Iccid::with_check_digit("890126000000000078").unwrap();
    let held = json!([{"kind": "cancel", "carrier": "tmobile", "iccid": iccid.as_str(), "retire": false,
        "taken_until": NOW + 100}]);
    kit.kv_put("cleanup/queue", held.to_string().as_bytes())
        .await;
    let during = cleanup_run(&mut kit, NOW + 99).await;
    assert_eq!((during.tried, during.queued), (0, 1));
    assert!(calls(&kit).is_empty(), "{:?}", calls(&kit));
    let after = cleanup_run(&mut kit, NOW + 100).await;
    assert_eq!((after.tried, after.requeued, after.queued), (1, 0, 0));
    assert_eq!(calls(&kit), vec![call("tmobile", "cancelOrder")]);
}

/// A kit whose writes under `cleanup/` fail once the SM-DP+ has answered its first CancelOrder (until `failing`
/// is cleared): the sweep that sent it cannot settle the item, as if it had crashed right after the call.
async fn kit_losing_settles(
    smdp: Arc<FakeSmdp>,
    failing: &Arc<std::sync::atomic::AtomicBool>,
) -> Kit {
    let store = Arc::new(crate::failing_writes("cleanup/", failing));
    let (flag, first) = (failing.clone(), std::sync::atomic::AtomicBool::new(true));
    Kit::builder("dispatch")
        .var("smdp_url", SMDP)
        .var("carrier_callback_credentials", CALLBACKS)
        .allow(SMDP)
        .respond(move |r| {
            let answer = smdp.answer(r);
            if r.uri.ends_with("/cancelOrder") && first.swap(false, Ordering::SeqCst) {
                flag.store(true, Ordering::SeqCst);
            }
            answer
        })
        .store(store)
        .build()
        .await
        .unwrap()
}

/// `run-cleanup` at `at`: what it tried, left on the queue (`requeued`), and how many items are queued.
async fn run_cleanup(kit: &mut Kit, at: u64) -> (u32, u32, u32) {
    let run = cleanup_run(kit, at).await;
    (run.tried, run.requeued, run.queued)
}

/// The call ids of the CancelOrders sent.
fn cancel_ids(kit: &Kit) -> Vec<String> {
    kit.requests()
        .iter()
        .filter(|r| r.uri.ends_with("/cancelOrder"))
        .map(|r| {
            r.json().unwrap()["header"]["functionCallIdentifier"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// A queued cancel without a call id gets one as a sweep takes it, kept with the held item: when the SM-DP+
/// executed it and the sweep could not settle it (its write failed; a crash alike), the next sweep after the
/// hold sends the same call, which the SM-DP+ replays. Before, each try made a new call id, so the redo was a
/// second real cancel of that ICCID (by then perhaps back in the pool, or another order's profile).
#[tokio::test]
async fn a_cancel_redone_after_its_settle_was_lost_is_the_same_call() {
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut kit = kit_losing_settles(Arc::default(), &failing).await;
    let iccid = Iccid::with_check_digit("890126000000000079").unwrap();
    let item =
        json!([{"kind": "cancel", "carrier": "tmobile", "iccid": iccid.as_str(), "retire": false}]);
    kit.kv_put("cleanup/queue", item.to_string().as_bytes())
        .await;
    let first = run_cleanup(&mut kit, NOW).await;
    // Not settled: still queued, held (counted as left on the queue).
    assert_eq!(first, (1, 1, 1));
    failing.store(false, Ordering::SeqCst);
    let during = run_cleanup(&mut kit, NOW + 1).await;
    assert_eq!(during.0, 0);
    let after = run_cleanup(&mut kit, AFTER_LEASE).await;
    assert_eq!(after, (1, 0, 0));
    let ids = cancel_ids(&kit);
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_eq!(ids[0], ids[1], "the redo is the same call");
}

/// The cancel a lost DownloadOrder's replay learns goes under a call id derived from the lost call's (kernel
/// `order::learned_cancel_fci`): a sweep that sent it and could not settle the item is followed, after the
/// hold, by the same replay and the same cancel, which the SM-DP+ replays. Before, the redo cancelled under a
/// new call id: a second real cancel.
#[tokio::test]
async fn a_learned_cancel_redone_after_its_settle_was_lost_is_the_same_call() {
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut kit = kit_losing_settles(Arc::default(), &failing).await;
    let lost = "FCI-1764000000-7";
    let item = json!([{"kind": "lost_download", "carrier": "tmobile", "fci": lost,
        "profile_type": "tmo-iot-data", "eid": null}]);
    kit.kv_put("cleanup/queue", item.to_string().as_bytes())
        .await;
    let first = run_cleanup(&mut kit, NOW).await;
    assert_eq!((first.0, first.2), (1, 1));
    failing.store(false, Ordering::SeqCst);
    let after = run_cleanup(&mut kit, AFTER_LEASE).await;
    assert_eq!(after, (1, 0, 0));
    assert_eq!(
        calls(&kit),
        [
            call("tmobile", "downloadOrder"),
            call("tmobile", "cancelOrder"),
            call("tmobile", "downloadOrder"),
            call("tmobile", "cancelOrder")
        ]
    );
    let ids = cancel_ids(&kit);
    assert_eq!(ids, vec![esim402_core::order::learned_cancel_fci(lost); 2]);
}

/// A failure given up (its tries spent over more than a day) leaves the queue: the run does not count it as
/// left there. Before, `requeued` counted it, though `queued` showed it gone.
#[tokio::test]
async fn a_cleanup_given_up_is_not_counted_as_requeued() {
    let smdp = Arc::new(FakeSmdp::default());
    smdp.set("att", Behaves::Http503);
    let mut kit = kit_with(smdp, &[]).await;
    let iccid = Iccid::with_check_digit("890141000000000001").unwrap();
    let tries = esim402_core::order::MAX_CLEANUP_TRIES - 1;
    let item = json!([{"kind": "cancel", "carrier": "att", "iccid": iccid.as_str(), "retire": false,
        "tries": tries, "since": NOW}]);
    kit.kv_put("cleanup/queue", item.to_string().as_bytes())
        .await;
    let run = run_cleanup(&mut kit, AFTER_LEASE).await;
    assert_eq!(run, (1, 0, 0));
}

/// The same payment sent again before its authorization expired completes the order: the SIM it delivers is
/// never withdrawn by a later sweep, whenever that runs.
#[tokio::test]
async fn an_order_completed_before_its_authorization_expired_is_not_withdrawn() {
    let (smdp, mut kit, pending) = abandoned("inv-resent").await;
    assert_eq!(pending.state, types::SimState::Pending);
    smdp.set("tmobile", Behaves::Ok);
    let done = order_until(
        &mut kit,
        request("us-west", None),
        "inv-resent",
        NOW + 30,
        Some(ABANDONED_VALID_BEFORE),
    )
    .await
    .unwrap();
    assert_eq!(
        (done.iccid.as_str(), done.state),
        (pending.iccid.as_str(), types::SimState::Active)
    );
    order_at(
        &mut kit,
        request("us-west", Some("verizon")),
        "inv-after",
        AFTER_LEASE,
    )
    .await
    .unwrap();
    let sim = get_sim(&mut kit, &done.iccid).await;
    assert_eq!(sim.state, types::SimState::Active);
    assert!(sim.activation_code.is_some());
    assert!(!calls(&kit).iter().any(|(_, f)| f == "cancelOrder"));
}

/// An order paid with money that moved already (a tx-hash proof: no deadline) left pending is never withdrawn:
/// it is not parked at all.
#[tokio::test]
async fn an_order_without_a_deadline_is_never_withdrawn() {
    let smdp = Arc::new(FakeSmdp::default());
    smdp.set("tmobile", Behaves::ConfirmTimeout);
    let mut kit = kit_with(smdp.clone(), SHORT_BUDGET).await;
    let pending = order(&mut kit, request("us-west", None), "inv-paid")
        .await
        .unwrap();
    assert_eq!(pending.state, types::SimState::Pending);
    assert_eq!(kit.kv_get("cleanup/parked").await, None);
    smdp.set("tmobile", Behaves::Ok);
    order_at(
        &mut kit,
        request("us-west", Some("verizon")),
        "inv-other",
        AFTER_LEASE,
    )
    .await
    .unwrap();
    assert_eq!(
        get_sim(&mut kit, &pending.iccid).await.state,
        types::SimState::Pending
    );
    assert!(!calls(&kit).iter().any(|(_, f)| f == "cancelOrder"));
    // Its payment sent again still completes it.
    let done = order_at(&mut kit, request("us-west", None), "inv-paid", AFTER_LEASE)
        .await
        .unwrap();
    assert_eq!(done.state, types::SimState::Active);
}

/// The device may report a switch's new profile downloaded and installed before the confirm is recorded (its
/// answer lost, the order left pending; or merely slow): the SM-DP+ never sends a notification we answered 204
/// again, so those reports move the pending record, the confirm's write keeps them, and the switch retires the
/// old SIM once it delivers. Before, they were thrown away: the SIM stayed `released` and the old one in
/// service for good.
#[tokio::test]
async fn progress_reported_before_the_confirm_is_recorded_is_kept_and_completes_the_switch() {
    let smdp = Arc::new(FakeSmdp::default());
    let mut kit = kit_with(smdp.clone(), SHORT_BUDGET).await;
    let old = order(&mut kit, request("us-west", None), "inv-early-old")
        .await
        .unwrap();
    assert_eq!(old.carrier, "tmobile");
    smdp.set("verizon", Behaves::ConfirmTimeout);
    let new = switch_to(&mut kit, &old.iccid, "verizon", "inv-early-switch")
        .await
        .unwrap();
    assert_eq!(new.state, types::SimState::Pending);

    let progress = |np: u32| {
        json!({"iccid": new.iccid, "profileType": "vzw-iot-data", "timestamp": "2026-11-24T10:00:00Z",
            "notificationPointId": np, "notificationPointStatus": {"status": "Executed-Success"}})
        .to_string()
    };
    for (np, want) in [
        (3, types::ProfileState::Downloaded),
        (4, types::ProfileState::Installed),
    ] {
        download_progress(&mut kit, progress(np), Some(VERIZON_CB))
            .await
            .unwrap();
        let s = get_sim(&mut kit, &new.iccid).await;
        assert_eq!((s.state, s.profile_state), (types::SimState::Pending, want));
    }
    // Not delivered yet: the old SIM stays in service.
    assert_eq!(
        get_sim(&mut kit, &old.iccid).await.state,
        types::SimState::Active
    );

    // The confirm's answer arrives on the resumed switch: delivered, still installed, the old SIM retired.
    smdp.set("verizon", Behaves::Ok);
    let target = types::SwitchTarget::Carrier("verizon".into());
    let done = switch_at(
        &mut kit,
        &old.iccid,
        target,
        "inv-early-switch",
        AFTER_LEASE,
    )
    .await
    .unwrap();
    assert_eq!(done.iccid, new.iccid);
    assert_eq!(
        (done.state, done.profile_state),
        (types::SimState::Active, types::ProfileState::Installed)
    );
    assert!(done.activation_code.is_some());
    let stored = get_sim(&mut kit, &new.iccid).await;
    assert_eq!(stored.profile_state, types::ProfileState::Installed);
    let old_now = get_sim(&mut kit, &old.iccid).await;
    assert_eq!(old_now.state, types::SimState::Terminated);
    assert_eq!(old_now.replaced_by.as_deref(), Some(new.iccid.as_str()));
    assert_retired(&kit, "tmobile", &old.iccid);
}

/// A profile given back to the carrier's pool keeps its ICCID, and the carrier may hand it to another order. An
/// order resumed with that profile as its journal's step does not take the other order's SIM (before, it was
/// delivered to both invoices: two payers on one SIM), and goes on with the next carrier.
#[tokio::test]
async fn a_resumed_order_never_takes_a_profile_another_order_got_since() {
    let smdp = Arc::new(FakeSmdp::default());
    smdp.set("tmobile", Behaves::ConfirmTimeout);
    let mut kit = kit_with(smdp.clone(), SHORT_BUDGET).await;
    let pending = order(&mut kit, request("us-west", None), "inv-a")
        .await
        .unwrap();
    assert_eq!(pending.state, types::SimState::Pending);
    // Given back as a driver does when its confirm is refused (the record failed, the profile cancelled),
    // the journal still naming the step (the driver stopped before journaling its next carrier).
    let key = format!("sim/{}", pending.iccid);
    let mut record: Value = serde_json::from_slice(&kit.kv_get(&key).await.unwrap()).unwrap();
    record["state"] = json!("failed");
    kit.kv_put(&key, record.to_string().as_bytes()).await;
    // The carrier hands the same profile to another order, which gets it.
    smdp.set("tmobile", Behaves::Ok);
    *smdp.reissue.lock().unwrap() = Some(pending.iccid.clone());
    let other = order(&mut kit, request("us-west", None), "inv-b")
        .await
        .unwrap();
    assert_eq!(
        (other.iccid.as_str(), other.state),
        (pending.iccid.as_str(), types::SimState::Active)
    );
    // The first order, resumed after its lease, orders anew.
    let resumed = order_at(&mut kit, request("us-west", None), "inv-a", AFTER_LEASE)
        .await
        .unwrap();
    assert_ne!(resumed.iccid, pending.iccid);
    assert_eq!(resumed.state, types::SimState::Active);
    assert!(
        resumed
            .failovers
            .iter()
            .any(|f| f.contains("went back to the pool")),
        "{:?}",
        resumed.failovers
    );
    // The other order's SIM is as it was.
    let theirs = get_sim(&mut kit, &pending.iccid).await;
    assert_eq!(theirs.invoice_id, "inv-b");
    assert_eq!(theirs.state, types::SimState::Active);
}

/// Another payer than [`OWNER`].
const OTHER_PAYER: &str = "0xa0Ee7A142d267C1f36714E4a8F75612F20a79720";

/// A carrier answering DownloadOrder with the ICCID of a SIM already on record (another payer's, in service)
/// cannot take it from its owner: the record stays as it was, that profile is neither confirmed nor cancelled
/// (both would act on the other SIM), and the order fails over as for any failed DownloadOrder.
#[tokio::test]
async fn a_carrier_naming_a_live_sims_iccid_cannot_take_it_from_its_owner() {
    let smdp = Arc::new(FakeSmdp::default());
    let mut kit = kit_with(smdp.clone(), &[]).await;
    let theirs = order(&mut kit, request("us-west", None), "inv-payer-a")
        .await
        .unwrap();
    assert_eq!(
        (theirs.carrier.as_str(), theirs.state),
        ("tmobile", types::SimState::Active)
    );
    let key = format!("sim/{}", theirs.iccid);
    let before = kit.kv_get(&key).await.unwrap();

    *smdp.reissue.lock().unwrap() = Some(theirs.iccid.clone());
    let sent = kit.requests().len();
    let req = request("us-west", None);
    let other = kit
        .call(async move |a, g| {
            g.dispatch()
                .call_order_profile(
                    a,
                    req,
                    "inv-payer-b".into(),
                    OTHER_PAYER.into(),
                    None,
                    NOW,
                    None,
                )
                .await
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(other.carrier, "verizon");
    assert_ne!(other.iccid, theirs.iccid);
    assert!(
        other
            .failovers
            .iter()
            .any(|f| f.contains("already another SIM's") && !f.contains(&theirs.iccid)),
        "{:?}",
        other.failovers
    );
    let after = calls(&kit)[sent..].to_vec();
    assert_eq!(
        after,
        [
            call("tmobile", "downloadOrder"),
            call("verizon", "downloadOrder"),
            call("verizon", "confirmOrder"),
        ],
        "nothing confirmed or cancelled for the named profile"
    );
    assert_eq!(
        kit.kv_get(&key).await.unwrap(),
        before,
        "the owner's SIM was rewritten"
    );
    let still = get_sim(&mut kit, &theirs.iccid).await;
    assert_eq!(
        (
            still.owner.as_deref(),
            still.invoice_id.as_str(),
            still.state
        ),
        (Some(OWNER), "inv-payer-a", types::SimState::Active)
    );

    // Another carrier naming it, with no carrier to fail over to: the order fails, nothing is cancelled.
    *smdp.reissue.lock().unwrap() = Some(theirs.iccid.clone());
    let sent = kit.requests().len();
    let err = order(&mut kit, request("us-west", Some("verizon")), "inv-payer-c")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, types::Error::Unavailable(m) if m.contains("already another SIM's")),
        "{err:?}"
    );
    assert_eq!(
        calls(&kit)[sent..].to_vec(),
        [call("verizon", "downloadOrder")]
    );
    assert_eq!(kit.kv_get(&key).await.unwrap(), before);
}

/// A replacement withdrawn by its owner (terminated before it took over) whose installation is reported late
/// leaves the SIM it was to replace in service, even while a later switch of that SIM is on its way; its own
/// record takes no progress either.
#[tokio::test]
async fn a_withdrawn_replacement_reporting_installed_leaves_the_old_sim_in_service() {
    let mut kit = kit_with(Arc::default(), &[]).await;
    let old = order(&mut kit, request("us-west", None), "inv-keep")
        .await
        .unwrap();
    let withdrawn = switch_to(&mut kit, &old.iccid, "verizon", "inv-keep-b")
        .await
        .unwrap();
    let s = terminate(&mut kit, &withdrawn.iccid).await;
    assert_eq!(s.state, types::SimState::Terminated);
    let later = switch_to(&mut kit, &old.iccid, "att", "inv-keep-d")
        .await
        .unwrap();

    let installed = json!({"iccid": withdrawn.iccid, "profileType": "vzw-iot-data",
        "timestamp": "2026-11-24T10:00:00Z", "notificationPointId": 4,
        "notificationPointStatus": {"status": "Executed-Success"}})
    .to_string();
    download_progress(&mut kit, installed, Some(VERIZON_CB))
        .await
        .unwrap();
    let old_now = get_sim(&mut kit, &old.iccid).await;
    assert_eq!(old_now.state, types::SimState::Active);
    assert_eq!(old_now.replaced_by.as_deref(), Some(later.iccid.as_str()));
    let withdrawn_now = get_sim(&mut kit, &withdrawn.iccid).await;
    assert_eq!(
        (withdrawn_now.state, withdrawn_now.profile_state),
        (types::SimState::Terminated, types::ProfileState::Released)
    );
}

/// Two switch payments for the same SIM at once (different invoices): one claims the SIM and orders its
/// replacement, the other is refused before ordering anything (before, both ordered, and the SIM named whichever
/// wrote last). A switch that ordered nothing releases its claim at once.
#[tokio::test]
async fn two_switches_of_one_sim_at_once_order_one_replacement() {
    let smdp = Arc::new(FakeSmdp::default());
    let mut kit = kit_with(smdp.clone(), &[]).await;
    let old = order(&mut kit, request("us-west", None), "inv-race")
        .await
        .unwrap();
    smdp.set("att", Behaves::PoolEmpty);
    let failed = switch_to(&mut kit, &old.iccid, "att", "inv-race-0").await;
    assert!(
        matches!(&failed, Err(types::Error::Unavailable(_))),
        "{failed:?}"
    );

    let sent = kit.requests().len();
    let id = old.iccid.clone();
    let results = kit
        .call(async move |a, g| {
            let calls = ["inv-race-1", "inv-race-2"].map(|invoice| {
                g.dispatch().call_perform_switch(
                    a,
                    id.clone(),
                    types::SwitchTarget::Carrier("verizon".into()),
                    invoice.into(),
                    1_764_000_200,
                    None,
                )
            });
            crate::join_all(calls)
                .await
                .into_iter()
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .unwrap();
    let won: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(won.len(), 1, "{results:?}");
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| matches!(e, types::Error::Conflict(_))),
        "{results:?}"
    );
    let downloads = calls(&kit)[sent..]
        .iter()
        .filter(|(_, f)| f == "downloadOrder")
        .count();
    assert_eq!(downloads, 1, "one replacement ordered");
    let old_now = get_sim(&mut kit, &old.iccid).await;
    assert_eq!(old_now.replaced_by.as_deref(), Some(won[0].iccid.as_str()));
    let stored: Value =
        serde_json::from_slice(&kit.kv_get(&format!("sim/{}", old.iccid)).await.unwrap()).unwrap();
    assert!(
        stored.get("switching").is_none(),
        "claim released: {stored}"
    );
}

/// A region switch left pending (its confirm timed out) names its pending SIM; the same payment sent again
/// meets its confirm refused and fails over: the SIM it delivers instead is named (before, the old SIM kept
/// naming the failed one, so that SIM's installation retired nothing and another switch was taken meanwhile).
#[tokio::test]
async fn a_resent_switch_that_fails_over_names_the_sim_it_delivers() {
    let smdp = Arc::new(FakeSmdp::default());
    smdp.set("telekom-de", Behaves::ConfirmTimeout);
    let mut vars = SHORT_BUDGET.to_vec();
    vars.push((
        "carrier_callback_credentials",
        "vodafone-de=vodafone-callback-secret",
    ));
    let mut kit = kit_with(smdp.clone(), &vars).await;
    let old = order(&mut kit, request("us-west", None), "inv-move")
        .await
        .unwrap();
    let to_eu = || types::SwitchTarget::Region("eu-central".into());
    let pending = switch_at(&mut kit, &old.iccid, to_eu(), "inv-move-1", NOW)
        .await
        .unwrap();
    assert_eq!(
        (pending.carrier.as_str(), pending.state),
        ("telekom-de", types::SimState::Pending)
    );
    let named = get_sim(&mut kit, &old.iccid).await;
    assert_eq!(named.replaced_by.as_deref(), Some(pending.iccid.as_str()));

    smdp.set("telekom-de", Behaves::ConfirmFails);
    let new = switch_at(&mut kit, &old.iccid, to_eu(), "inv-move-1", AFTER_LEASE)
        .await
        .unwrap();
    assert_eq!(
        (new.carrier.as_str(), new.state),
        ("vodafone-de", types::SimState::Active)
    );
    let failed = get_sim(&mut kit, &pending.iccid).await;
    assert_eq!(failed.state, types::SimState::Failed);
    let named = get_sim(&mut kit, &old.iccid).await;
    assert_eq!(named.replaced_by.as_deref(), Some(new.iccid.as_str()));
    let stored: Value =
        serde_json::from_slice(&kit.kv_get(&format!("sim/{}", old.iccid)).await.unwrap()).unwrap();
    assert!(
        stored.get("switching").is_none(),
        "claim released: {stored}"
    );
    // Another payment meets the replacement on its way.
    let other = switch_at(&mut kit, &old.iccid, to_eu(), "inv-move-2", AFTER_LEASE).await;
    assert!(matches!(other, Err(types::Error::Conflict(_))), "{other:?}");

    // Installing it takes the old SIM out of service.
    let body = json!({"iccid": new.iccid, "profileType": "vfde-iot-data", "timestamp": "2026-11-24T10:00:00Z",
        "notificationPointId": 4, "notificationPointStatus": {"status": "Executed-Success"}})
    .to_string();
    download_progress(&mut kit, body, Some("vodafone-callback-secret"))
        .await
        .unwrap();
    let old_now = get_sim(&mut kit, &old.iccid).await;
    assert_eq!(old_now.state, types::SimState::Terminated);
}

/// A switch whose order failed for good with a conflict (here its pending replacement withdrawn by its owner,
/// the same payment then sent again) releases its claim: another switch of the SIM is taken at once, not only
/// once the claim runs out.
#[tokio::test]
async fn a_switch_whose_order_failed_for_good_releases_its_claim() {
    let smdp = Arc::new(FakeSmdp::default());
    smdp.set("verizon", Behaves::ConfirmTimeout);
    let mut kit = kit_with(smdp.clone(), SHORT_BUDGET).await;
    let old = order(&mut kit, request("us-west", None), "inv-drop")
        .await
        .unwrap();
    let to = |c: &str| types::SwitchTarget::Carrier(c.into());
    let pending = switch_at(&mut kit, &old.iccid, to("verizon"), "inv-drop-1", NOW)
        .await
        .unwrap();
    assert_eq!(pending.state, types::SimState::Pending);
    terminate(&mut kit, &pending.iccid).await;

    smdp.set("verizon", Behaves::Ok);
    let again = switch_at(
        &mut kit,
        &old.iccid,
        to("verizon"),
        "inv-drop-1",
        AFTER_LEASE,
    )
    .await;
    assert!(
        matches!(&again, Err(types::Error::Conflict(m)) if m.contains("terminated")),
        "{again:?}"
    );
    let stored: Value =
        serde_json::from_slice(&kit.kv_get(&format!("sim/{}", old.iccid)).await.unwrap()).unwrap();
    assert!(
        stored.get("switching").is_none(),
        "claim released: {stored}"
    );
    let other = switch_at(
        &mut kit,
        &old.iccid,
        to("att"),
        "inv-drop-2",
        AFTER_LEASE + 1,
    )
    .await
    .unwrap();
    assert_eq!(other.carrier, "att");
    let named = get_sim(&mut kit, &old.iccid).await;
    assert_eq!(named.replaced_by.as_deref(), Some(other.iccid.as_str()));
}

/// Fails the first write under `sim/` once armed (and disarms).
struct FailOnce(Arc<std::sync::atomic::AtomicBool>);

impl esim402_host::kv::wrapped::Hook for FailOnce {
    fn before(
        &self,
        op: esim402_host::kv::wrapped::Op,
        key: &str,
    ) -> esim402_host::kv::KvResult<()> {
        if op.writes() && key.starts_with("sim/") && self.0.swap(false, Ordering::SeqCst) {
            return Err(esim402_host::kv::KvError(format!("injected: {key}")));
        }
        Ok(())
    }
}

/// A confirm whose outcome cannot be recorded gives the profile back with its record marked failed (best
/// effort): when the carrier hands that profile out again, the next order records it (before, the record
/// stayed pending and the profile was refused as another SIM's, and leaked).
#[tokio::test]
async fn a_profile_given_back_when_its_confirm_cannot_be_recorded_can_be_handed_out_again() {
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let store = Arc::new(esim402_host::kv::wrapped::Wrapped::new(
        Arc::new(esim402_host::kv::MemoryStore::default()),
        FailOnce(armed.clone()),
    ));
    let smdp = Arc::new(FakeSmdp::default());
    *smdp.on_confirm.lock().unwrap() = Some(armed.clone());
    let mut kit = kit_on(smdp.clone(), &[], Some(store)).await;
    let err = order(&mut kit, request("us-west", Some("tmobile")), "inv-lost")
        .await
        .unwrap_err();
    assert!(matches!(&err, types::Error::Unavailable(_)), "{err:?}");
    let cancel = kit.requests().last().unwrap().json().unwrap();
    assert_eq!(cancel["finalProfileStatusIndicator"], "Available");
    let iccid = cancel["iccid"].as_str().unwrap().to_owned();
    assert_eq!(
        get_sim(&mut kit, &iccid).await.state,
        types::SimState::Failed
    );

    *smdp.on_confirm.lock().unwrap() = None;
    *smdp.reissue.lock().unwrap() = Some(iccid.clone());
    let again = order(&mut kit, request("us-west", None), "inv-found")
        .await
        .unwrap();
    assert_eq!(
        (again.iccid.as_str(), again.carrier.as_str(), again.state),
        (iccid.as_str(), "tmobile", types::SimState::Active)
    );
}

/// Loses the reply of the first write to a SIM record itself (`sim/<iccid>`, not a cell's bookkeeping) once
/// armed, after the store applied it (and disarms). Reads pass.
struct LoseReplyOnce(Arc<std::sync::atomic::AtomicBool>);

impl esim402_host::kv::wrapped::Hook for LoseReplyOnce {
    fn reply(
        &self,
        op: esim402_host::kv::wrapped::Op,
        key: &str,
    ) -> esim402_host::kv::KvResult<()> {
        use esim402_host::kv::wrapped::Op;
        if !matches!(op, Op::Get | Op::Exists | Op::Keys)
            && key.starts_with("sim/")
            && !key.contains('@')
            && self.0.swap(false, Ordering::SeqCst)
        {
            return Err(esim402_host::kv::KvError(format!(
                "injected lost reply: {key}"
            )));
        }
        Ok(())
    }
}

/// A kit whose store loses the reply of one write to a SIM record ([`LoseReplyOnce`]): armed from the start
/// (`now`: the allocation's record), or by the simulator's first confirm (`on_confirm`). The flag, the
/// simulator, the kit.
async fn kit_losing_a_sim_reply(
    now: bool,
    on_confirm: bool,
) -> (Arc<std::sync::atomic::AtomicBool>, Arc<FakeSmdp>, Kit) {
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(now));
    let store = Arc::new(esim402_host::kv::wrapped::Wrapped::new(
        Arc::new(esim402_host::kv::MemoryStore::default()),
        LoseReplyOnce(armed.clone()),
    ));
    let smdp = Arc::new(FakeSmdp::default());
    if on_confirm {
        *smdp.on_confirm.lock().unwrap() = Some(armed.clone());
    }
    let kit = kit_on(smdp.clone(), &[], Some(store)).await;
    (armed, smdp, kit)
}

/// The allocation's record written with its reply lost: the order fails and gives the profile back, its record
/// marked failed first, so the carrier handing the profile out again reaches the next order. Before, the
/// record stayed pending for good: the next order was refused the profile (an ALERT blaming the carrier's pool)
/// and left it allocated.
#[tokio::test]
async fn an_allocation_recorded_with_its_reply_lost_is_failed_before_it_is_given_back() {
    let (armed, smdp, mut kit) = kit_losing_a_sim_reply(true, false).await;
    let err = order(
        &mut kit,
        request("us-west", Some("tmobile")),
        "inv-lost-alloc",
    )
    .await
    .unwrap_err();
    assert!(matches!(&err, types::Error::Unavailable(_)), "{err:?}");
    assert!(!armed.load(Ordering::SeqCst), "a reply was lost");
    let cancel = kit.requests().last().unwrap().json().unwrap();
    assert_eq!(cancel["finalProfileStatusIndicator"], "Available");
    let iccid = cancel["iccid"].as_str().unwrap().to_owned();
    assert_eq!(
        get_sim(&mut kit, &iccid).await.state,
        types::SimState::Failed
    );
    *smdp.reissue.lock().unwrap() = Some(iccid.clone());
    let again = order(&mut kit, request("us-west", Some("tmobile")), "inv-next")
        .await
        .unwrap();
    assert_eq!(
        (again.iccid.as_str(), again.state),
        (iccid.as_str(), types::SimState::Active)
    );
}

/// A confirm whose outcome was stored but whose reply was lost (a Redis timeout after the write applied) ends
/// with the SIM delivered: the record says active with its code, so the profile is kept. Before, the profile
/// was given back to the carrier and the order failed while the record said active (a review, thirty-first
/// session).
#[tokio::test]
async fn a_confirm_stored_with_its_reply_lost_is_delivered() {
    let (armed, _smdp, mut kit) = kit_losing_a_sim_reply(false, true).await;
    let sim = order(
        &mut kit,
        request("us-west", Some("tmobile")),
        "inv-lost-reply",
    )
    .await
    .unwrap();
    assert_eq!(sim.state, types::SimState::Active);
    assert!(!armed.load(Ordering::SeqCst), "a reply was lost");
    assert!(
        !calls(&kit).iter().any(|(_, f)| f == "cancelOrder"),
        "the delivered profile is kept"
    );
    assert_eq!(
        get_sim(&mut kit, &sim.iccid).await.state,
        types::SimState::Active
    );
}

/// Once the SIM is stored active with its code, the writes after it (the owner index, the journal) are
/// bookkeeping: their failure does not fail the order (that would end the payment as if nothing had been
/// delivered, with the profile released), and a repeat of the order finds the same SIM and records it.
#[tokio::test]
async fn a_delivered_sim_whose_journal_and_index_cannot_be_written_is_still_delivered() {
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // "o": the order journal (`order/`) and the owner index (`owner/`), failing from the ConfirmOrder on.
    let store = Arc::new(crate::failing_writes("o", &failing));
    let smdp = Arc::new(FakeSmdp::default());
    *smdp.on_confirm.lock().unwrap() = Some(failing.clone());
    let mut kit = kit_on(smdp.clone(), &[], Some(store)).await;
    let sim = order(&mut kit, request("us-west", None), "inv-late")
        .await
        .unwrap();
    assert_eq!(sim.state, types::SimState::Active);
    assert!(sim.activation_code.is_some());
    assert!(!calls(&kit).iter().any(|(_, f)| f == "cancelOrder"));
    let journal: Value =
        serde_json::from_slice(&kit.kv_get("order/inv-late").await.unwrap()).unwrap();
    assert_eq!(journal["status"], "ordering");
    assert_eq!(journal["step"]["iccid"].as_str(), Some(sim.iccid.as_str()));

    // The store recovers: a repeat after the lease finds the same SIM without calling the carrier.
    failing.store(false, Ordering::SeqCst);
    *smdp.on_confirm.lock().unwrap() = None;
    let sent = kit.requests().len();
    let again = order_at(&mut kit, request("us-west", None), "inv-late", AFTER_LEASE)
        .await
        .unwrap();
    assert_eq!(
        (again.iccid.as_str(), again.activation_code.as_deref()),
        (sim.iccid.as_str(), sim.activation_code.as_deref())
    );
    assert_eq!(kit.requests().len(), sent);
    let journal: Value =
        serde_json::from_slice(&kit.kv_get("order/inv-late").await.unwrap()).unwrap();
    assert_eq!(journal["status"], "done");
    assert_eq!(
        list_sims(&mut kit, "late0001", 0, 10).await.unwrap().0,
        [sim.iccid.as_str()]
    );
}

/// A resumed order whose SIM record cannot be read does not fail (that would end the payment as if nothing
/// were allocated): it answers pending, hands its lease over, and the same payment sent again finishes it.
#[tokio::test]
async fn a_resumed_order_whose_sim_record_cannot_be_read_stays_pending() {
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let store = Arc::new(crate::failing_calls("sim/", &failing));
    let smdp = Arc::new(FakeSmdp::default());
    smdp.set("tmobile", Behaves::ConfirmTimeout);
    let mut kit = kit_on(smdp.clone(), SHORT_BUDGET, Some(store)).await;
    let pending = order(&mut kit, request("us-west", None), "inv-unread")
        .await
        .unwrap();
    assert_eq!(pending.state, types::SimState::Pending);

    smdp.set("tmobile", Behaves::Ok);
    failing.store(true, Ordering::SeqCst);
    let sent = kit.requests().len();
    let again = order_at(
        &mut kit,
        request("us-west", None),
        "inv-unread",
        AFTER_LEASE,
    )
    .await
    .unwrap();
    assert_eq!(
        (again.iccid.as_str(), again.state),
        (pending.iccid.as_str(), types::SimState::Pending)
    );
    assert!(again.activation_code.is_none());
    assert_eq!(kit.requests().len(), sent, "nothing confirmed or cancelled");
    let journal: Value =
        serde_json::from_slice(&kit.kv_get("order/inv-unread").await.unwrap()).unwrap();
    assert_eq!(
        (
            journal["status"].as_str(),
            journal["step"]["iccid"].as_str(),
            journal["lease_until"].as_u64()
        ),
        (Some("ordering"), Some(pending.iccid.as_str()), Some(0))
    );

    // The store recovers: the same payment sent again at once (the lease was handed over) finishes the order.
    failing.store(false, Ordering::SeqCst);
    let done = order_at(
        &mut kit,
        request("us-west", None),
        "inv-unread",
        AFTER_LEASE,
    )
    .await
    .unwrap();
    assert_eq!(
        (done.iccid.as_str(), done.state),
        (pending.iccid.as_str(), types::SimState::Active)
    );
}

/// A pending SIM its owner terminated is withdrawn: the resumed order does not confirm it (the terminate
/// retired its profile), the record stays terminated, and the order ends without a SIM (so no payment is
/// kept for it) instead of writing it back as active.
#[tokio::test]
async fn a_pending_sim_its_owner_terminated_is_not_confirmed_again() {
    let smdp = Arc::new(FakeSmdp::default());
    smdp.set("tmobile", Behaves::ConfirmTimeout);
    let mut kit = kit_with(smdp.clone(), SHORT_BUDGET).await;
    let pending = order(&mut kit, request("us-west", None), "inv-withdrawn")
        .await
        .unwrap();
    assert_eq!(pending.state, types::SimState::Pending);
    let terminated = terminate(&mut kit, &pending.iccid).await;
    assert_eq!(terminated.state, types::SimState::Terminated);
    assert_retired(&kit, "tmobile", &pending.iccid);

    // The carrier answers again and the lease ran out: a repeat would have confirmed the profile.
    smdp.set("tmobile", Behaves::Ok);
    let before = kit.requests().len();
    let got = order_at(
        &mut kit,
        request("us-west", None),
        "inv-withdrawn",
        AFTER_LEASE,
    )
    .await;
    assert!(
        matches!(&got, Err(types::Error::Conflict(m)) if m.contains("terminated")),
        "{got:?}"
    );
    assert_eq!(kit.requests().len(), before, "no carrier was called");
    let stored: Value =
        serde_json::from_slice(&kit.kv_get(&format!("sim/{}", pending.iccid)).await.unwrap())
            .unwrap();
    assert_eq!(stored["state"], "terminated");
    assert!(stored["activation_code"].is_null(), "{stored}");
    // The order ended: a repeat replays its failure.
    let again = order_at(
        &mut kit,
        request("us-west", None),
        "inv-withdrawn",
        AFTER_LEASE + 3_600,
    )
    .await;
    assert!(again.is_err(), "{again:?}");
    assert_eq!(kit.requests().len(), before);
}

fn credential_token(t: &str) -> types::Credential {
    types::Credential::Token(t.to_owned())
}

fn credential_wallet(address: &str, nonce: &str) -> types::Credential {
    types::Credential::Wallet(types::WalletProof {
        address: address.to_owned(),
        nonce: nonce.to_owned(),
    })
}

async fn authorize(
    kit: &mut Kit,
    iccid: &str,
    c: types::Credential,
) -> Result<types::Sim, types::Error> {
    let iccid = iccid.to_owned();
    kit.call(async move |a, g| g.dispatch().call_authorize(a, iccid, c).await)
        .await
        .unwrap()
}

/// A carrier credential is checked before the SIM is looked up: a wrong one is refused alike (401) for a SIM
/// that exists and one that does not, so it cannot tell which ICCIDs are sold here (before, an unknown ICCID
/// answered 404 and a known one 401). The right carrier's credential opens its SIM; another carrier's
/// credential is "no SIM".
#[tokio::test]
async fn a_wrong_carrier_credential_cannot_tell_which_sims_exist() {
    let mut kit = kit_with(Arc::default(), &[]).await;
    let sim = order(&mut kit, request("us-west", None), "inv-carrier-auth")
        .await
        .unwrap();
    let carrier = |s: &str| types::Credential::Carrier(s.to_owned());
    for target in [sim.iccid.clone(), "8901260000000099990".to_owned()] {
        let r = authorize(&mut kit, &target, carrier("not a credential at all")).await;
        assert!(
            matches!(r, Err(types::Error::Unauthorized(_))),
            "{target}: {r:?}"
        );
    }
    let (own, other) = credentials_of(&sim.carrier);
    authorize(&mut kit, &sim.iccid, carrier(&own))
        .await
        .unwrap();
    let r = authorize(&mut kit, &sim.iccid, carrier(&other)).await;
    assert!(matches!(r, Err(types::Error::NotFound(_))), "{r:?}");
}

/// The callback credential of `carrier` and of another carrier, from [`CALLBACKS`].
fn credentials_of(carrier: &str) -> (String, String) {
    let pairs: Vec<(&str, &str)> = CALLBACKS
        .split(',')
        .map(|p| p.split_once('=').unwrap())
        .collect();
    let own = pairs.iter().find(|(c, _)| *c == carrier).unwrap().1;
    let other = pairs.iter().find(|(c, _)| *c != carrier).unwrap().1;
    (own.to_owned(), other.to_owned())
}

#[tokio::test]
async fn only_the_payer_and_the_current_token_open_a_sim() {
    let mut kit = kit_with(
        Arc::default(),
        &[("access_token_secret", "a test token key, 16+")],
    )
    .await;
    let sim = order(&mut kit, request("us-west", None), "inv-auth")
        .await
        .unwrap();
    assert_eq!(sim.owner.as_deref(), Some(OWNER));
    let iccid = sim.iccid.clone();
    let id = iccid.clone();
    let token = kit
        .call(async move |a, g| {
            g.dispatch()
                .call_initial_token(a, id, "inv-auth".into())
                .await
        })
        .await
        .unwrap()
        .unwrap()
        .expect("a fresh SIM has its first token");
    assert!(token.starts_with("sim_"));

    // The owner's wallet (each nonce once) and the token open it.
    authorize(&mut kit, &iccid, credential_wallet(OWNER, "nonce0001"))
        .await
        .unwrap();
    let again = authorize(&mut kit, &iccid, credential_wallet(OWNER, "nonce0001")).await;
    assert!(
        matches!(again, Err(types::Error::Unauthorized(_))),
        "{again:?}"
    );
    authorize(&mut kit, &iccid, credential_token(&token))
        .await
        .unwrap();
    // Another wallet, a wrong token, an unknown SIM: all the same "no SIM".
    let other = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC";
    for (c, target) in [
        (credential_wallet(other, "nonce0002"), iccid.clone()),
        (
            credential_token(&format!("sim_{}", "A".repeat(43))),
            iccid.clone(),
        ),
        (credential_token(&token), "8901260000000099990".to_owned()),
    ] {
        let r = authorize(&mut kit, &target, c).await;
        assert!(matches!(r, Err(types::Error::NotFound(_))), "{r:?}");
    }

    // Rotation retires the old token; terminating revokes every token but the wallet still works.
    let rotated = rotate_by(&mut kit, &iccid, credential_token(&token))
        .await
        .unwrap();
    assert_ne!(rotated, token);
    // A request the old token opened just before the rotation acts after it: refused, nothing changes (before,
    // a leaked token racing its owner's rotation could rotate again and keep the SIM).
    let late = rotate_by(&mut kit, &iccid, credential_token(&token)).await;
    assert!(matches!(&late, Err(types::Error::NotFound(_))), "{late:?}");
    let (id, stale) = (iccid.clone(), credential_token(&token));
    let late = kit
        .call(async move |a, g| {
            g.dispatch()
                .call_lifecycle(a, id, types::LifecycleAction::Suspend, Some(stale))
                .await
        })
        .await
        .unwrap();
    assert!(matches!(late, Err(types::Error::NotFound(_))), "{late:?}");
    assert_eq!(
        get_sim(&mut kit, &iccid).await.state,
        types::SimState::Active,
        "nothing changed"
    );
    assert!(
        authorize(&mut kit, &iccid, credential_token(&token))
            .await
            .is_err()
    );
    authorize(&mut kit, &iccid, credential_token(&rotated))
        .await
        .unwrap();
    let id = iccid.clone();
    let initial = kit
        .call(async move |a, g| {
            g.dispatch()
                .call_initial_token(a, id, "inv-auth".into())
                .await
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        initial, None,
        "the first token is not handed out after a rotation"
    );
    terminate(&mut kit, &iccid).await;
    assert!(
        authorize(&mut kit, &iccid, credential_token(&rotated))
            .await
            .is_err()
    );
    authorize(&mut kit, &iccid, credential_wallet(OWNER, "nonce0003"))
        .await
        .unwrap();
    let r = rotate(&mut kit, &iccid).await;
    assert!(matches!(r, Err(types::Error::Conflict(_))), "{r:?}");
}

#[tokio::test]
async fn callbacks_need_the_issuing_carriers_credential() {
    let mut kit = kit_with(Arc::default(), &[]).await;
    let sim = order(&mut kit, request("us-west", None), "inv-cb")
        .await
        .unwrap();
    assert_eq!(sim.carrier, "tmobile");
    let body = json!({"iccid": sim.iccid, "profileType": "tmo-iot-data", "timestamp": "2026-11-24T10:00:00Z",
        "notificationPointId": 3, "notificationPointStatus": {"status": "Executed-Success"}})
    .to_string();
    for (cred, unauthorized) in [
        (None, true),
        (Some("tmobile-callback-secreT"), true),
        (Some(VERIZON_CB), false),
    ] {
        let r = download_progress(&mut kit, body.clone(), cred).await;
        if unauthorized {
            assert!(
                matches!(r, Err(types::Error::Unauthorized(_))),
                "{cred:?}: {r:?}"
            );
        } else {
            // Another carrier's SIM is no SIM to it (it must not learn which ICCIDs are ours).
            assert!(
                matches!(&r, Err(types::Error::NotFound(m)) if m.contains("no SIM")),
                "{r:?}"
            );
        }
    }
    let still = get_sim(&mut kit, &sim.iccid).await;
    assert_eq!(
        still.profile_state,
        types::ProfileState::Released,
        "refused callbacks change nothing"
    );
    download_progress(&mut kit, body.clone(), Some(TMOBILE_CB))
        .await
        .unwrap();

    // Without configured credentials every callback is refused.
    let mut bare = Kit::builder("dispatch")
        .var("smdp_url", SMDP)
        .build()
        .await
        .unwrap();
    let r = download_progress(&mut bare, body, Some(TMOBILE_CB)).await;
    assert!(
        matches!(&r, Err(types::Error::Unauthorized(m)) if m.contains("disabled")),
        "{r:?}"
    );
}

/// One page of the owner's SIMs: their ICCIDs and the next page's cursor.
async fn list_sims(
    kit: &mut Kit,
    nonce: &str,
    after: u64,
    limit: u32,
) -> Result<(Vec<String>, Option<u64>), types::Error> {
    let wallet = types::WalletProof {
        address: OWNER.to_owned(),
        nonce: nonce.to_owned(),
    };
    let page = kit
        .call(async move |a, g| {
            g.dispatch()
                .call_list_sims(a, wallet, None, after, limit)
                .await
        })
        .await
        .unwrap()?;
    Ok((page.sims.into_iter().map(|s| s.iccid).collect(), page.next))
}

/// Any wallet may list its SIMs; one that paid for nothing gets an empty page and the store keeps nothing for
/// it (its sign-in nonce is claimed only when the page lists a SIM); the owner's nonce is still used once.
#[tokio::test]
async fn listing_stores_no_nonce_for_a_wallet_without_sims() {
    let mut kit = kit_with(Arc::default(), &[]).await;
    let stranger = types::WalletProof {
        address: "0x0000000000000000000000000000000000000b0b".into(),
        nonce: "stranger1".into(),
    };
    for _ in 0..2 {
        let w = stranger.clone();
        let page = kit
            .call(async move |a, g| g.dispatch().call_list_sims(a, w, None, 0, 10).await)
            .await
            .unwrap()
            .unwrap();
        assert!(page.sims.is_empty());
    }
    let keys = kit.kv().keys().await.unwrap();
    assert!(
        !keys.iter().any(|k| k.starts_with("auth/")),
        "nothing stored: {keys:?}"
    );
    order(&mut kit, request("us-west", None), "inv-listed")
        .await
        .unwrap();
    let (sims, _) = list_sims(&mut kit, "owner1", 0, 10).await.unwrap();
    assert_eq!(sims.len(), 1);
    assert!(matches!(
        list_sims(&mut kit, "owner1", 0, 10).await,
        Err(types::Error::Unauthorized(_))
    ));
}

/// Each SIM a wallet pays for takes one write-once slot of its owner index: nothing already indexed is
/// rewritten (no growing list, no cell versions), listing reads the list kept before slots existed first, and
/// skips a slot an order reserved but never filled or a SIM indexed twice.
#[tokio::test]
async fn the_owner_index_takes_one_slot_per_sim_and_never_rewrites_one() {
    let mut kit = kit_with(Arc::default(), &[]).await;
    let mut iccids = Vec::new();
    for i in 0..3 {
        let sim = order(
            &mut kit,
            request("us-west", None),
            &format!("inv-owner-{i}"),
        )
        .await
        .unwrap();
        iccids.push(sim.iccid);
    }
    let owner = OWNER.to_lowercase();
    let kv = kit.kv().clone();
    let raw = |key: String| {
        let kv = kv.clone();
        async move { kv.get(&key).await.unwrap() }
    };
    for (slot, iccid) in iccids.iter().enumerate() {
        assert_eq!(
            raw(format!("owner/{owner}/s/{}", slot + 1))
                .await
                .as_deref(),
            Some(iccid.as_bytes()),
            "slot {} holds the SIM's ICCID as it is",
            slot + 1
        );
    }
    assert_eq!(
        kit.kv()
            .increment(&format!("owner/{owner}/n"), 0)
            .await
            .unwrap(),
        3
    );
    let keys = kit.kv().keys().await.unwrap();
    assert!(
        !keys
            .iter()
            .any(|k| k == &format!("owner/{owner}") || k.contains("/s/") && k.contains('@')),
        "no list and no cell versions under the owner index: {keys:?}"
    );
    assert_eq!(
        list_sims(&mut kit, "list0001", 0, 1_000).await.unwrap(),
        (iccids.clone(), None)
    );
    // Pages of two: the cursor is the next position.
    assert_eq!(
        list_sims(&mut kit, "list0002", 0, 2).await.unwrap(),
        (iccids[..2].to_vec(), Some(2))
    );
    assert_eq!(
        list_sims(&mut kit, "list0003", 2, 2).await.unwrap(),
        (iccids[2..].to_vec(), None)
    );
    for limit in [0, 1_001] {
        let r = list_sims(&mut kit, "list-limit", 0, limit).await;
        assert!(
            matches!(&r, Err(types::Error::InvalidInput(f)) if f.field == "limit"),
            "{r:?}"
        );
    }
    // Refused before the sign-in's nonce was used: it still opens a page.
    assert!(list_sims(&mut kit, "list-limit", 0, 1).await.is_ok());

    // The list of an index from before slots (oldest first), a reserved slot never filled (a crash between
    // the increment and the write), and a SIM indexed again (an order resumed after a crash).
    let legacy = serde_json::to_vec(&[&iccids[1], &iccids[0]]).unwrap();
    kit.kv_put(&format!("owner/{owner}"), &legacy).await;
    assert_eq!(
        kit.kv()
            .increment(&format!("owner/{owner}/n"), 2)
            .await
            .unwrap(),
        5
    );
    kit.kv()
        .set(&format!("owner/{owner}/s/5"), iccids[0].as_bytes())
        .await
        .unwrap();
    let later = order(&mut kit, request("us-west", None), "inv-owner-3")
        .await
        .unwrap();
    assert_eq!(
        raw(format!("owner/{owner}/s/6")).await.as_deref(),
        Some(later.iccid.as_bytes())
    );
    // The old list's 2, then slots 1..=6: 3, the empty slot 4 and the repeat in slot 5 skipped, then 6.
    assert_eq!(
        list_sims(&mut kit, "list0004", 0, 1_000).await.unwrap(),
        (
            vec![
                iccids[1].clone(),
                iccids[0].clone(),
                iccids[2].clone(),
                later.iccid.clone()
            ],
            None
        )
    );
    assert_eq!(
        list_sims(&mut kit, "list0005", 3, 3).await.unwrap(),
        (vec![iccids[2].clone()], Some(6)),
        "positions 3-5 are slots 2-4: one SIM, one repeat of the old list, one empty slot"
    );
}

/// A download-progress failure whose status code says the SM-DP+ gave up on the profile (`8.8.5/6.4` download
/// attempts, `8.2.7/6.4` confirmation-code attempts, `8.8.5/4.10` order expired) fails a SIM whose profile never
/// installed: recorded failed (profile in error), its profile retired at the SM-DP+ (CancelOrder `Unavailable`),
/// and the SIM handed to the gateway to give its money back, both again on a repeat. Before, such
/// a SIM stayed active with its profile in error, and nothing was cancelled. A retryable failure, and a terminal
/// one after installation, keep the SIM in service.
#[tokio::test]
async fn a_terminal_download_failure_fails_the_sim_and_retires_its_profile() {
    let mut kit = kit_with(Arc::default(), &[]).await;
    let progress = |iccid: &str, np: u32, code: Option<(&str, &str)>| {
        let mut status = json!({"status": "Failed"});
        if let Some((s, r)) = code {
            status["statusCodeData"] =
                json!({"subjectCode": s, "reasonCode": r, "message": "limit"});
        }
        json!({"iccid": iccid, "profileType": "tmo-iot-data", "timestamp": "2026-11-24T10:00:00Z",
            "notificationPointId": np, "notificationPointStatus": status})
        .to_string()
    };
    for (n, code) in [("8.8.5", "6.4"), ("8.2.7", "6.4"), ("8.8.5", "4.10")]
        .into_iter()
        .enumerate()
    {
        let sim = order(&mut kit, request("us-west", None), &format!("inv-tf-{n}"))
            .await
            .unwrap();
        let iccid = sim.iccid.clone();
        assert_eq!(sim.state, types::SimState::Active);
        // A retryable failure first (no code): the profile is in error, the SIM stays in service.
        let r = download_progress(&mut kit, progress(&iccid, 3, None), Some(TMOBILE_CB)).await;
        assert!(matches!(r, Ok(None)), "{r:?}");
        let s = get_sim(&mut kit, &iccid).await;
        assert_eq!(
            (s.state, s.profile_state),
            (types::SimState::Active, types::ProfileState::Error)
        );
        // Then the SM-DP+'s limit.
        let before = kit.requests().len();
        let failed = download_progress(&mut kit, progress(&iccid, 3, Some(code)), Some(TMOBILE_CB))
            .await
            .unwrap()
            .expect("the failed SIM is handed back for its refund");
        assert_eq!(failed.iccid, iccid);
        assert_eq!(failed.invoice_id, format!("inv-tf-{n}"));
        let s = get_sim(&mut kit, &iccid).await;
        assert_eq!(
            (s.state, s.profile_state),
            (types::SimState::Failed, types::ProfileState::Error),
            "{code:?}"
        );
        assert_eq!(kit.requests().len(), before + 1, "one call: the cancel");
        assert_retired(&kit, "tmobile", &iccid);
        let stored: Value =
            serde_json::from_slice(&kit.kv_get(&format!("sim/{iccid}")).await.unwrap()).unwrap();
        assert_eq!(stored["download_failure"], format!("{}/{}", code.0, code.1));
        // The owner still reads it (the access token is kept).
        assert!(stored["access"]["token"].is_object(), "{stored}");
        // Sent again: handed back again (the gateway's refunds are idempotent), nothing written; the cancel is
        // sent again (the first call may have stopped before it), which finds nothing more to do.
        let key = esim402_core::store::keys::sim(&iccid);
        let cell = kit.kv().get(&key).await.unwrap();
        let again =
            download_progress(&mut kit, progress(&iccid, 3, Some(code)), Some(TMOBILE_CB)).await;
        assert!(
            matches!(&again, Ok(Some(s)) if s.state == types::SimState::Failed),
            "{again:?}"
        );
        assert_eq!(kit.kv().get(&key).await.unwrap(), cell);
        assert_eq!(
            kit.requests().len(),
            before + 2,
            "the cancel again, nothing else"
        );
        assert_retired(&kit, "tmobile", &iccid);
        // Another report (a success, a retryable failure) for the failed SIM moves nothing and asks nothing.
        let r = download_progress(&mut kit, progress(&iccid, 4, None), Some(TMOBILE_CB)).await;
        assert!(matches!(r, Ok(None)), "{r:?}");
    }
    // After installation a terminal report changes nothing.
    let sim = order(&mut kit, request("us-west", None), "inv-tf-installed")
        .await
        .unwrap();
    let installed = json!({"iccid": sim.iccid, "profileType": "tmo-iot-data", "timestamp": "2026-11-24T10:00:00Z",
        "notificationPointId": 4, "notificationPointStatus": {"status": "Executed-Success"}});
    download_progress(&mut kit, installed.to_string(), Some(TMOBILE_CB))
        .await
        .unwrap();
    let before = kit.requests().len();
    let r = download_progress(
        &mut kit,
        progress(&sim.iccid, 3, Some(("8.8.5", "6.4"))),
        Some(TMOBILE_CB),
    )
    .await;
    assert!(matches!(r, Ok(None)), "{r:?}");
    let s = get_sim(&mut kit, &sim.iccid).await;
    assert_eq!(
        (s.state, s.profile_state),
        (types::SimState::Active, types::ProfileState::Installed)
    );
    assert_eq!(kit.requests().len(), before);
}

/// A terminal download failure whose first call failed the SIM but could not retire its profile (the cancel
/// answered 503 and could not be queued either: the store failed, as a call cut off after its write leaves it):
/// the SM-DP+ sends the notification again, and the repeat retires the profile. A repeat whose cancel fails
/// too queues it, once however often the notification comes. Before, only the call that failed the SIM
/// retired it: the repeat found the SIM failed already and cancelled nothing, so the profile stayed allocated.
#[tokio::test]
async fn a_repeated_terminal_failure_retires_a_profile_the_first_call_could_not() {
    let smdp = Arc::new(FakeSmdp::default());
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let store = Arc::new(crate::failing_writes("cleanup/", &failing));
    let mut kit = kit_on(smdp.clone(), &[], Some(store)).await;
    let sim = order(&mut kit, request("us-west", None), "inv-rt")
        .await
        .unwrap();
    let iccid = sim.iccid.clone();
    let exhausted =
        json!({"iccid": iccid, "profileType": "tmo-iot-data", "timestamp": "2026-11-24T10:00:00Z",
        "notificationPointId": 3, "notificationPointStatus": {"status": "Failed",
            "statusCodeData": {"subjectCode": "8.8.5", "reasonCode": "6.4", "message": "limit"}}})
        .to_string();
    let queued = async |kit: &Kit| -> Vec<Value> {
        kit.kv_get("cleanup/queue")
            .await
            .map(|q| serde_json::from_slice(&q).unwrap())
            .unwrap_or_default()
    };

    // The first call: the SIM fails; its cancel is answered 503 and its queueing fails.
    smdp.set("tmobile", Behaves::Http503);
    failing.store(true, Ordering::SeqCst);
    let before = kit.requests().len();
    let first = download_progress(&mut kit, exhausted.clone(), Some(TMOBILE_CB)).await;
    assert!(
        matches!(&first, Ok(Some(s)) if s.state == types::SimState::Failed),
        "{first:?}"
    );
    assert!(kit.requests().len() > before, "the cancel was tried");
    assert_eq!(calls(&kit).last(), Some(&call("tmobile", "cancelOrder")));
    failing.store(false, Ordering::SeqCst);
    assert!(queued(&kit).await.is_empty(), "nothing queued");

    // Sent again while the SM-DP+ still answers 503: queued now, once however often it comes.
    for _ in 0..2 {
        let again = download_progress(&mut kit, exhausted.clone(), Some(TMOBILE_CB)).await;
        assert!(matches!(&again, Ok(Some(_))), "{again:?}");
        let q = queued(&kit).await;
        assert_eq!(q.len(), 1, "{q:?}");
        assert_eq!(
            (
                &q[0]["kind"],
                &q[0]["iccid"],
                &q[0]["retire"],
                &q[0]["invoice"]
            ),
            (
                &json!("cancel"),
                &json!(iccid),
                &json!(true),
                &json!("inv-rt")
            ),
            "{q:?}"
        );
    }

    // And once the SM-DP+ answers: the repeat retires the profile now.
    smdp.set("tmobile", Behaves::Ok);
    let before = kit.requests().len();
    let again = download_progress(&mut kit, exhausted, Some(TMOBILE_CB)).await;
    assert!(matches!(&again, Ok(Some(_))), "{again:?}");
    assert_eq!(kit.requests().len(), before + 1, "one call: the cancel");
    assert_retired(&kit, "tmobile", &iccid);
}

/// The access-token secret of the token tests.
const TOKEN_SECRET: (&str, &str) = ("access_token_secret", "a test token key, 16+");

/// `initial-token` of `iccid` for the invoice its record names now.
async fn first_token(kit: &mut Kit, iccid: &str) -> Result<Option<String>, types::Error> {
    let id = iccid.to_owned();
    let invoice = kit
        .call(async move |a, g| g.dispatch().call_get_sim(a, id).await)
        .await
        .unwrap()
        .ok()
        .flatten()
        .map_or_else(String::new, |s| s.invoice_id);
    first_token_of(kit, iccid, &invoice).await
}

/// `initial-token` of `iccid` for a paid answer of `invoice`.
async fn first_token_of(
    kit: &mut Kit,
    iccid: &str,
    invoice: &str,
) -> Result<Option<String>, types::Error> {
    let (id, invoice) = (iccid.to_owned(), invoice.to_owned());
    kit.call(async move |a, g| g.dispatch().call_initial_token(a, id, invoice).await)
        .await
        .unwrap()
}

/// `rotate-token` of `iccid`, by its owner's wallet.
async fn rotate(kit: &mut Kit, iccid: &str) -> Result<String, types::Error> {
    let by = owner_credential(kit, iccid).await;
    rotate_by(kit, iccid, by).await
}

/// `rotate-token` of `iccid` by `by`.
async fn rotate_by(
    kit: &mut Kit,
    iccid: &str,
    by: types::Credential,
) -> Result<String, types::Error> {
    let id = iccid.to_owned();
    kit.call(async move |a, g| g.dispatch().call_rotate_token(a, id, by).await)
        .await
        .unwrap()
}

/// [`order`] of `request("us-west", None)` paid by `owner`.
async fn order_paid_by(
    kit: &mut Kit,
    invoice: &str,
    owner: &str,
) -> Result<types::Sim, types::Error> {
    let (invoice, owner) = (invoice.to_owned(), owner.to_owned());
    kit.call(async move |a, g| {
        g.dispatch()
            .call_order_profile(a, request("us-west", None), invoice, owner, None, NOW, None)
            .await
    })
    .await
    .unwrap()
}

/// [`OWNER`]'s order refused at its confirm (its record failed, its profile given back to the pool), then that
/// profile handed out again to [`OTHER_PAYER`]: its ICCID and every token the first payer could get for the
/// failed record (its first, and the rotations it allowed before: generations 1 and 2).
async fn handed_out_again(kit: &mut Kit, smdp: &FakeSmdp) -> (String, Vec<String>) {
    smdp.set("tmobile", Behaves::ConfirmFails);
    order(kit, request("us-west", Some("tmobile")), "inv-first-payer")
        .await
        .unwrap_err();
    let iccid = kit.requests()[1].json().unwrap()["iccid"]
        .as_str()
        .unwrap()
        .to_owned();
    let failed = get_sim(kit, &iccid).await;
    assert_eq!(
        (failed.state, failed.owner.as_deref()),
        (types::SimState::Failed, Some(OWNER))
    );
    let mut old = vec![first_token(kit, &iccid).await.unwrap().unwrap()];
    for _ in 0..2 {
        if let Ok(t) = rotate(kit, &iccid).await {
            old.push(t);
        }
    }
    smdp.set("tmobile", Behaves::Ok);
    *smdp.reissue.lock().unwrap() = Some(iccid.clone());
    let theirs = order_paid_by(kit, "inv-next-payer", OTHER_PAYER)
        .await
        .unwrap();
    assert_eq!(
        (theirs.iccid.as_str(), theirs.owner.as_deref(), theirs.state),
        (iccid.as_str(), Some(OTHER_PAYER), types::SimState::Active)
    );
    (iccid, old)
}

/// A profile given back to the pool and handed out again is another payer's SIM at generation 0: none of the
/// first payer's tokens opens it, before or after its new owner rotates (before, tokens were derived from the
/// ICCID and generation alone, so the first payer's generation-k token was the next payer's).
#[tokio::test]
async fn a_profile_handed_out_again_opens_with_none_of_the_first_payers_tokens() {
    let smdp = Arc::new(FakeSmdp::default());
    let mut kit = kit_with(smdp.clone(), &[TOKEN_SECRET]).await;
    let (iccid, old) = handed_out_again(&mut kit, &smdp).await;
    let theirs = first_token(&mut kit, &iccid).await.unwrap().unwrap();
    assert!(!old.contains(&theirs));
    // The first payer's paid answer replayed asks for the token of its own invoice: none (before, the ICCID's
    // first token, the next payer's).
    assert_eq!(
        first_token_of(&mut kit, &iccid, "inv-first-payer")
            .await
            .unwrap(),
        None
    );
    authorize(&mut kit, &iccid, credential_token(&theirs))
        .await
        .unwrap();
    for round in 0..2 {
        for t in &old {
            let r = authorize(&mut kit, &iccid, credential_token(t)).await;
            assert!(
                matches!(r, Err(types::Error::NotFound(_))),
                "{round}: {r:?}"
            );
        }
        let next = rotate(&mut kit, &iccid).await.unwrap();
        assert!(!old.contains(&next));
        authorize(&mut kit, &iccid, credential_token(&next))
            .await
            .unwrap();
    }
}

/// A wallet's listing shows only SIMs it owns: an ICCID of its owner index recorded for another payer since is
/// not listed (before, the other payer's SIM was, owner, EID and all). An earlier build recorded a profile
/// handed out again over a delivered SIM that failed; such records stay in the store.
#[tokio::test]
async fn a_listing_leaves_out_a_sim_recorded_for_another_payer_since() {
    let mut kit = kit_with(Arc::default(), &[TOKEN_SECRET]).await;
    let reused = order(&mut kit, request("us-west", None), "inv-first-payer")
        .await
        .unwrap();
    let mine = order(&mut kit, request("us-west", None), "inv-first-payer-2")
        .await
        .unwrap();
    // The record of the first as that build left it: the next payer's, under the same ICCID.
    let key = format!("sim/{}", reused.iccid);
    let mut record: Value = serde_json::from_slice(&kit.kv_get(&key).await.unwrap()).unwrap();
    record["access"]["owner"] = json!(OTHER_PAYER);
    record["invoice_id"] = json!("inv-next-payer");
    kit.kv_put(&key, record.to_string().as_bytes()).await;
    assert_eq!(
        get_sim(&mut kit, &reused.iccid).await.owner.as_deref(),
        Some(OTHER_PAYER)
    );
    let (sims, _) = list_sims(&mut kit, "list-after-reissue", 0, 10)
        .await
        .unwrap();
    assert_eq!(
        sims,
        [mine.iccid],
        "{} is another payer's now",
        reused.iccid
    );
}

/// Only a live SIM (active, suspended) takes a new token: a failed one's profile is back at the carrier, and a
/// pending one's confirm would write its first token back (its answer carries that one); the first token of a
/// pending SIM still works once it is delivered.
#[tokio::test]
async fn a_failed_or_pending_sim_takes_no_new_token() {
    let smdp = Arc::new(FakeSmdp::default());
    smdp.set("tmobile", Behaves::ConfirmFails);
    let mut kit = kit_with(smdp.clone(), &[TOKEN_SECRET]).await;
    order(&mut kit, request("us-west", Some("tmobile")), "inv-refused")
        .await
        .unwrap_err();
    let iccid = kit.requests()[1].json().unwrap()["iccid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        get_sim(&mut kit, &iccid).await.state,
        types::SimState::Failed
    );
    let r = rotate(&mut kit, &iccid).await;
    assert!(
        matches!(&r, Err(types::Error::Conflict(m)) if m.contains("failed")),
        "{r:?}"
    );

    smdp.set("tmobile", Behaves::ConfirmTimeout);
    let mut kit = kit_with(
        smdp.clone(),
        &[TOKEN_SECRET, SHORT_BUDGET[0], SHORT_BUDGET[1]],
    )
    .await;
    let pending = order(&mut kit, request("us-west", None), "inv-pending")
        .await
        .unwrap();
    assert_eq!(pending.state, types::SimState::Pending);
    let first = first_token(&mut kit, &pending.iccid)
        .await
        .unwrap()
        .unwrap();
    let r = rotate(&mut kit, &pending.iccid).await;
    assert!(
        matches!(&r, Err(types::Error::Conflict(m)) if m.contains("being ordered")),
        "{r:?}"
    );
    smdp.set("tmobile", Behaves::Ok);
    let done = order_at(
        &mut kit,
        request("us-west", None),
        "inv-pending",
        AFTER_LEASE,
    )
    .await
    .unwrap();
    assert_eq!(done.state, types::SimState::Active);
    authorize(&mut kit, &done.iccid, credential_token(&first))
        .await
        .unwrap();
    rotate(&mut kit, &done.iccid).await.unwrap();
}

/// Outside development the access-token key must come from `access_token_secret`: without it, prices are still
/// quoted but readiness, orders and every token use fail naming the variable, and no key is generated into the
/// store (anyone reading it would derive every SIM's token). Development keeps the stored key.
#[tokio::test]
async fn outside_development_access_tokens_need_their_secret() {
    let unsigned = esim402_testkit::catalog_without_signers();
    let outside = [
        ("public_origins", "https://esim402.example"),
        ("carrier_catalog", unsigned.as_str()),
    ];
    let names_it = |e: &types::Error| matches!(e, types::Error::Internal(m) if m.contains("access_token_secret"));
    let mut kit = kit_with(Arc::default(), &outside).await;
    price(&mut kit, "us-west", 100).await.unwrap();
    let ready = kit
        .call(async |a, g| g.dispatch().call_ready(a).await)
        .await
        .unwrap();
    assert!(ready.as_ref().is_err_and(names_it), "{ready:?}");
    let ordered = order(&mut kit, request("us-west", None), "inv-no-secret").await;
    assert!(ordered.as_ref().is_err_and(names_it), "{ordered:?}");
    assert!(kit.requests().is_empty(), "no carrier was called");
    let iccid = "8901260000000099990";
    let r = first_token(&mut kit, iccid).await;
    assert!(r.as_ref().is_err_and(names_it), "{r:?}");
    let r = rotate(&mut kit, iccid).await;
    assert!(r.as_ref().is_err_and(names_it), "{r:?}");
    let r = authorize(
        &mut kit,
        iccid,
        credential_token(&format!("sim_{}", "A".repeat(43))),
    )
    .await;
    assert!(r.as_ref().is_err_and(names_it), "{r:?}");
    let keys = kit.kv().keys().await.unwrap();
    assert!(!keys.iter().any(|k| k.starts_with("secret/")), "{keys:?}");

    let mut vars = outside.to_vec();
    vars.push(TOKEN_SECRET);
    let mut kit = kit_with(Arc::default(), &vars).await;
    kit.call(async |a, g| g.dispatch().call_ready(a).await)
        .await
        .unwrap()
        .unwrap();
    let sim = order(&mut kit, request("us-west", None), "inv-secret")
        .await
        .unwrap();
    assert!(first_token(&mut kit, &sim.iccid).await.unwrap().is_some());

    let mut kit = kit_with(Arc::default(), &[]).await;
    kit.call(async |a, g| g.dispatch().call_ready(a).await)
        .await
        .unwrap()
        .unwrap();
    let sim = order(&mut kit, request("us-west", None), "inv-dev")
        .await
        .unwrap();
    assert!(first_token(&mut kit, &sim.iccid).await.unwrap().is_some());
}
