//! Metered data end to end: a paid activation opens a balance; the traffic simulator (a real process) asks
//! for quota and reports carrier-signed receipts; the balance drains; the quota request answers 402 with
//! top-up options; the official x402 Python client pays a top-up unmodified; the balance is credited once and
//! quota is granted again. Also: concurrent copies of one batch charge once (each SIM, when two share a
//! carrier's charging id), a zero balance suspends the SIM and a top-up resumes it, terminate refunds the
//! unused data once (paid by the refund job, on chain), and a disputed receipt is visible and uncharged.

use alloy_primitives::U256;
use esim402_core::CarrierId;
use esim402_core::esim::iccid::Iccid;
use esim402_core::esim::plmn::Plmn;
use esim402_core::usage::receipt::{
    Receipt, SimTerms, WireReceipt, dev_signing_key, sign_page, verify,
};
use esim402_core::x402::header::decode_payment_required_header;
use esim402_tests::TrafficSim;
use serde_json::{Value, json};

use crate::payments::{PayStack, Payment, agent, now};
use crate::python_client::pay as python_pay;

/// A paid activation of `data_mb` (T-Mobile, the region default); its ICCID.
async fn activate(s: &PayStack, data_mb: u32) -> String {
    let act = s
        .activate_paid(&json!({"region": "us-west", "data_mb": data_mb}), &[])
        .await;
    act["iccid"].as_str().unwrap().to_owned()
}

/// A paid 1 MB SIM with 950 KB used: 50 KB left, below the low-water mark.
async fn running_low(s: &PayStack) -> String {
    used_up(s, 950_000).await
}

/// A paid 1 MB SIM whose carrier reported `bytes` used, in one receipt.
async fn used_up(s: &PayStack, bytes: u64) -> String {
    let iccid = activate(s, 1).await;
    let (status, _, r) = s
        .post(
            "/v1/usage",
            &json!({"receipts": [receipt(&iccid, "s", 1, bytes, "310-260")]}),
            &[],
        )
        .await;
    assert_eq!((status, &r["totals"]["accepted"]), (200, &json!(1)), "{r}");
    iccid
}

pub(crate) fn receipt(iccid: &str, session: &str, seq: u64, bytes: u64, plmn: &str) -> Value {
    let t = now();
    let r = Receipt {
        carrier: CarrierId::parse("tmobile").unwrap(),
        iccid: Iccid::parse(iccid).unwrap(),
        plmn: Plmn::parse(plmn).unwrap(),
        session_id: session.into(),
        seq,
        window_start: t - 600,
        window_end: t - 1,
        bytes_up: bytes / 2,
        bytes_down: bytes - bytes / 2,
        signature: vec![],
        page: None,
    };
    let key = dev_signing_key(&r.carrier);
    serde_json::to_value(r.sign(&key).unwrap().to_wire()).unwrap()
}

async fn balance(s: &PayStack, iccid: &str) -> Value {
    let (status, b) = s.get(&format!("/v1/esim/{iccid}/balance")).await;
    assert_eq!(status, 200, "{b}");
    b
}

async fn traffic(t: &TrafficSim, s: &PayStack, iccid: &str, bytes: u64) -> Value {
    let r = s
        .http
        .post(format!("{}/admin/usage", t.url))
        .json(&json!({"iccid": iccid, "bytes": bytes}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn usage_drains_the_balance_and_the_python_client_pays_a_top_up() {
    let s = PayStack::start(&[]).await;
    let t = TrafficSim::start(&s.url, &s.sim.url).unwrap();
    let iccid = activate(&s, 1).await;
    let b = balance(&s, &iccid).await;
    assert_eq!(
        (b["credited_bytes"].as_u64(), b["remaining_kb"].as_u64()),
        (Some(1_000_000), Some(1_000))
    );

    // Quota while there is data.
    let data = format!("/v1/esim/{iccid}/data");
    let (status, _, q) = s.post(&data, &json!({"quota_kb": 100}), &[]).await;
    assert_eq!(status, 200, "{q}");
    assert_eq!(q["granted_kb"], 100);

    // The network moves 900 KB within quota and reports it: all it may, the last 100 KB are never granted.
    let moved = traffic(&t, &s, &iccid, 900_000).await;
    assert_eq!(moved["delivered"], 900_000, "{moved}");
    assert_eq!(moved["capped"], false);
    let b = balance(&s, &iccid).await;
    assert_eq!(b["used_bytes"], 900_000);
    assert_eq!(b["remaining_kb"], 100);
    assert_eq!(b["low"], true);

    // More traffic stops at the cap: nothing beyond the balance is generated.
    let capped = traffic(&t, &s, &iccid, 500_000).await;
    assert_eq!(
        (capped["capped"].as_bool(), capped["delivered"].as_u64()),
        (Some(true), Some(0))
    );

    // At the low-water mark: 402 with top-up options and an x402 challenge.
    let (status, headers, low) = s.post(&data, &json!({"quota_kb": 100}), &[]).await;
    assert_eq!(status, 402, "{low}");
    assert_eq!(low["remaining_kb"], 100);
    let options = low["top_up_options"].as_array().unwrap();
    // The smallest standard size (10 MB) would cost the $0.05 minimum: the offer is the most data that
    // buys at $0.003/MB, 16 MB; then 50 and 100 MB at the rate.
    assert_eq!(
        options,
        &[
            json!({"data_mb": 16, "amount_usdc": "0.05"}),
            json!({"data_mb": 50, "amount_usdc": "0.15"}),
            json!({"data_mb": 100, "amount_usdc": "0.30"}),
        ]
    );
    let challenge =
        decode_payment_required_header(headers["payment-required"].to_str().unwrap()).unwrap();
    assert_eq!(
        challenge.accepts[0].extra.as_ref().unwrap().other["invoiceId"],
        low["invoice_id"]
    );

    // The official Python client pays the top-up unmodified and gets its grant.
    let start = s.balance(agent()).await;
    let token = s
        .token_for(&data)
        .expect("the activation answered an access token");
    let out = python_pay(
        format!("{}{data}", s.url),
        vec![
            "--body".into(),
            json!({"quota_kb": 100}).to_string(),
            "--header".into(),
            format!("Authorization: Bearer {token}"),
        ],
    )
    .await;
    assert_eq!(out["status"], 200, "{out}");
    assert_eq!(out["body"]["granted_kb"], 100, "{out}");
    assert_eq!(out["body"]["topped_up_mb"], 16);
    assert!(
        out["body"].get("activation_code").is_none(),
        "a top-up never shows the code"
    );
    assert_eq!(out["payment_response"]["success"], true);
    assert_eq!(s.balance(agent()).await, start - U256::from(50_000u64));
    let b = balance(&s, &iccid).await;
    assert_eq!(b["credited_bytes"], 17_000_000, "credited once: {b}");
    assert_eq!(b["low"], false);

    // Quota again, and the network moves data again.
    let (status, _, q) = s.post(&data, &json!({}), &[]).await;
    assert_eq!(status, 200, "{q}");
    let moved = traffic(&t, &s, &iccid, 2_000_000).await;
    assert_eq!(moved["delivered"], 2_000_000, "{moved}");

    // Usage rows and the receipt log.
    let (_, usage) = s
        .get(&format!(
            "/v1/esim/{iccid}/usage?granularity=hour&group_by=plmn"
        ))
        .await;
    let rows = usage["usage_records"].as_array().unwrap();
    let total: u64 = rows.iter().map(|r| r["data_total"].as_u64().unwrap()).sum();
    assert_eq!(total, 2_900_000, "{usage}");
    assert!(rows.iter().all(|r| r["plmn"] == "310-260"));
    let (_, log) = s
        .get(&format!("/v1/esim/{iccid}/receipts?from=1&limit=1000"))
        .await;
    assert!(
        log["receipts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["state"] == "accepted")
    );

    let (kinds, verify) = s.ledger().await;
    assert_eq!(
        kinds.iter().filter(|k| *k == "data_credited").count(),
        2,
        "{kinds:?}"
    );
    assert!(kinds.iter().any(|k| k == "usage_charged"));
    assert_eq!(verify["ok"], true, "{verify}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_copies_of_a_batch_charge_once() {
    let s = PayStack::start(&[]).await;
    let iccid = activate(&s, 10).await;
    let batch = json!({"receipts": (1..=20).map(|i| receipt(&iccid, "burst", i, 10_000, "310-260")).collect::<Vec<_>>()});
    let sends = (0..50).map(|_| {
        let (http, url, batch) = (s.http.clone(), format!("{}/v1/usage", s.url), batch.clone());
        tokio::spawn(async move {
            let r = http.post(url).json(&batch).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        })
    });
    let mut accepted = 0;
    for h in sends {
        accepted += h.await.unwrap()["totals"]["accepted"].as_u64().unwrap();
    }
    assert_eq!(accepted, 20, "each receipt accepted by exactly one batch");
    assert_eq!(balance(&s, &iccid).await["used_bytes"], 200_000);
    let (kinds, verify) = s.ledger().await;
    assert_eq!(verify["ok"], true);
    assert!(kinds.iter().filter(|k| *k == "usage_charged").count() <= 20);
}

/// Receipts are claimed per SIM: two SIMs whose carrier reused a charging id report the same `(session, seq)`,
/// and each is charged once, however many copies of the batch arrive at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_sims_sharing_a_charging_id_are_each_charged_once() {
    let s = PayStack::start(&[]).await;
    let (a, b) = (activate(&s, 10).await, activate(&s, 10).await);
    let receipts: Vec<Value> = (1..=3)
        .flat_map(|seq| {
            [
                receipt(&a, "chg-7", seq, 10_000, "310-260"),
                receipt(&b, "chg-7", seq, 1_000, "310-260"),
            ]
        })
        .collect();
    let batch = json!({ "receipts": receipts });
    let sends = (0..10).map(|_| {
        let (http, url, batch) = (s.http.clone(), format!("{}/v1/usage", s.url), batch.clone());
        tokio::spawn(async move {
            let r = http.post(url).json(&batch).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        })
    });
    let (mut accepted, mut gaps) = (0, 0);
    for h in sends {
        let report = h.await.unwrap();
        accepted += report["totals"]["accepted"].as_u64().unwrap();
        gaps += report["totals"]["gaps"].as_u64().unwrap();
    }
    assert_eq!(accepted, 6, "each SIM's three receipts, once");
    assert_eq!(gaps, 0);
    assert_eq!(balance(&s, &a).await["used_bytes"], 30_000);
    assert_eq!(balance(&s, &b).await["used_bytes"], 3_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zero_balance_suspends_a_top_up_resumes_terminate_refunds_the_rest() {
    let s = PayStack::start(&[]).await;
    let iccid = activate(&s, 1).await;
    let start = s.balance(agent()).await;

    // A disputed receipt (roaming outside the SIM's policy) is visible and uncharged.
    let (status, _, r) = s
        .post(
            "/v1/usage",
            &json!({"receipts": [receipt(&iccid, "s", 1, 5_000, "262-01")]}),
            &[],
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(r["results"][0]["reason"], "plmn_not_allowed", "{r}");
    assert_eq!(balance(&s, &iccid).await["used_bytes"], 0);
    let (_, log) = s.get(&format!("/v1/esim/{iccid}/receipts")).await;
    assert_eq!(log["receipts"][0]["state"], "disputed", "{log}");

    // Late reports overshoot the credit: the SIM is suspended.
    s.post(
        "/v1/usage",
        &json!({"receipts": [receipt(&iccid, "s", 2, 1_100_000, "310-260")]}),
        &[],
    )
    .await;
    let (_, sim) = s.get(&format!("/v1/esim/{iccid}")).await;
    assert_eq!(sim["state"], "suspended", "{sim}");

    // A top-up (paid in Rust here) credits 16 MB and resumes it.
    let data = format!("/v1/esim/{iccid}/data");
    let (_, req) = s.challenge(&data, &json!({})).await;
    let pay = Payment::for_requirement(&req);
    let (status, _, paid) = s
        .post(&data, &json!({}), &[("payment-signature", pay.header())])
        .await;
    assert_eq!(status, 200, "{paid}");
    // Suspended for balance only, not by its owner: the owner's paid top-up gets its grant.
    assert_eq!(paid["status"], "granted", "{paid}");
    // The same payment again moves nothing and credits nothing.
    let (status, _, _) = s
        .post(&data, &json!({}), &[("payment-signature", pay.header())])
        .await;
    assert_eq!(status, 409);
    let b = balance(&s, &iccid).await;
    // 1 MB activated, 16 MB topped up (the default offer: what the $0.05 minimum buys).
    assert_eq!(b["credited_bytes"], 17_000_000);
    assert_eq!(b["remaining_bytes"], 15_900_000);
    let (_, sim) = s.get(&format!("/v1/esim/{iccid}")).await;
    assert_eq!(sim["state"], "active", "{sim}");
    assert_eq!(s.balance(agent()).await, start - U256::from(50_000u64));

    // Terminate: 15.9 MB of the 16 MB top-up unused → 15.9/16 of $0.05 (49 687.5, rounded down) owed back; once.
    let (refund, term) = terminated_unused(&s, &iccid).await;
    assert_eq!(refund["amount"], "49687", "atomic units: {term}");
    // Terminating again (the owner's wallet: the token is revoked) answers the same refunds, owing any the
    // first terminate could not record, and nothing twice.
    let terminate = format!("/v1/esim/{iccid}/terminate");
    let (status, _, again) = s
        .post(
            &terminate,
            &json!({}),
            &[("sign-in-with-x", s.sign_in(&terminate))],
        )
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["refunds"], term["refunds"]);
    let (status, summary) = s.run_refunds().await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(
        s.balance(agent()).await,
        start - U256::from(50_000u64) + U256::from(49_687u64)
    );
    // Terminating revoked the access token; the owner's wallet still manages the SIM, which takes no top-up.
    let (status, _, late) = s.post(&data, &json!({}), &[]).await;
    assert_eq!(status, 404, "a revoked token opens nothing: {late}");
    let (status, _, late) = s
        .post(&data, &json!({}), &[("sign-in-with-x", s.sign_in(&data))])
        .await;
    assert_eq!(status, 409, "{late}");
    let (kinds, verify) = s.ledger().await;
    for k in ["usage_disputed", "refund_owed", "refund_paid"] {
        assert_eq!(
            kinds.iter().filter(|x| *x == k).count(),
            1,
            "{k}: {kinds:?}"
        );
    }
    assert_eq!(verify["ok"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_usage_requests_get_typed_400s() {
    let s = PayStack::start(&[]).await;
    for (body, field) in [
        (json!({"receipts": []}), "receipts"),
        (json!({"nope": 1}), "receipts"),
    ] {
        let (status, _, e) = s.post("/v1/usage", &body, &[]).await;
        assert_eq!(status, 400, "{e}");
        assert_eq!(e["error"]["field"], field, "{e}");
    }
    let (status, _, e) = s
        .post(
            "/v1/esim/8901260000000000014/data",
            &json!({"quota_kb": 0}),
            &[],
        )
        .await;
    assert_eq!(
        (status, e["error"]["field"].as_str()),
        (400, Some("quota_kb")),
        "{e}"
    );
    // Without a credential a quota request is 401; a top-up anyone may buy is priced only for a real SIM.
    let (status, _, e) = s
        .post("/v1/esim/8901260000000000014/data", &json!({}), &[])
        .await;
    assert_eq!(status, 401, "{e}");
    let (status, _, e) = s
        .post(
            "/v1/esim/8901260000000000014/data",
            &json!({"top_up_mb": 10}),
            &[],
        )
        .await;
    assert_eq!(status, 404, "{e}");
    let iccid = activate(&s, 1).await;
    let (status, e) = s
        .get(&format!("/v1/esim/{iccid}/usage?granularity=week"))
        .await;
    assert_eq!(
        (status, e["error"]["field"].as_str()),
        (400, Some("granularity")),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_readme_metering_demo_runs() {
    let s = PayStack::start(&[]).await;
    let t = TrafficSim::start(&s.url, &s.sim.url).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let facts = s.chain.write_facts(dir.path()).unwrap();
    let mut json: Value = serde_json::from_str(&std::fs::read_to_string(&facts).unwrap()).unwrap();
    json["traffic_url"] = Value::String(t.url.clone());
    std::fs::write(&facts, json.to_string()).unwrap();
    let stdout = crate::python_client::run_demo("scripts/demo_metering.py", &s.url, facts).await;
    assert!(
        stdout.contains("quota: 402, top-up options: 16 MB for 0.05 USDC"),
        "{stdout}"
    );
    assert!(stdout.contains("topped up 16 MB"), "{stdout}");
    assert!(
        stdout.contains("ledger: 200 {") && stdout.contains("\"ok\":true"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_batch_of_a_thousand_is_accepted_and_one_more_is_refused() {
    let s = PayStack::start(&[]).await;
    let iccid = activate(&s, 10).await;
    let mut receipts: Vec<Value> = (1..=1001)
        .map(|i| receipt(&iccid, "big", i, 1_000, "310-260"))
        .collect();
    let (status, _, e) = s
        .post("/v1/usage", &json!({ "receipts": receipts }), &[])
        .await;
    assert_eq!(
        (status, e["error"]["field"].as_str()),
        (400, Some("receipts")),
        "{e}"
    );
    receipts.pop();
    let (status, _, r) = s
        .post("/v1/usage", &json!({ "receipts": receipts }), &[])
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["totals"]["accepted"], 1000);
    assert_eq!(r["totals"]["gaps"], 0);
    assert_eq!(balance(&s, &iccid).await["used_bytes"], 1_000_000);
}

/// `n` receipts of `bytes` each for one session, signed as one page (one carrier signature over their root).
fn page(iccid: &str, session: &str, n: u64, bytes: u64) -> Vec<Value> {
    let t = now();
    let receipts = (1..=n)
        .map(|seq| Receipt {
            carrier: CarrierId::parse("tmobile").unwrap(),
            iccid: Iccid::parse(iccid).unwrap(),
            plmn: Plmn::parse("310-260").unwrap(),
            session_id: session.into(),
            seq,
            window_start: t - 600,
            window_end: t - 1,
            bytes_up: bytes / 2,
            bytes_down: bytes - bytes / 2,
            signature: vec![],
            page: None,
        })
        .collect();
    let key = dev_signing_key(&CarrierId::parse("tmobile").unwrap());
    sign_page(receipts, &key)
        .unwrap()
        .iter()
        .map(|r| serde_json::to_value(r.to_wire()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_page_signed_batch_is_charged_once_and_each_receipt_stays_verifiable() {
    let s = PayStack::start(&[]).await;
    let iccid = activate(&s, 10).await;
    let mut receipts = page(&iccid, "paged", 1000, 1_000);
    // One receipt edited after signing: its proof no longer leads to the signed root.
    receipts[500]["bytes_down"] = json!(100_000);
    let (status, _, r) = s
        .post("/v1/usage", &json!({ "receipts": receipts }), &[])
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        (&r["totals"]["accepted"], &r["totals"]["rejected"]),
        (&json!(999), &json!(1)),
        "{}",
        r["totals"]
    );
    assert_eq!(
        r["results"][500]["reason"], "bad_signature",
        "{}",
        r["results"][500]
    );
    assert_eq!(balance(&s, &iccid).await["used_bytes"], 999_000);

    // The same page again: every receipt a duplicate, nothing charged.
    let (_, _, again) = s
        .post("/v1/usage", &json!({ "receipts": receipts }), &[])
        .await;
    assert_eq!(again["totals"]["duplicate"], 999, "{}", again["totals"]);
    assert_eq!(balance(&s, &iccid).await["used_bytes"], 999_000);

    // The log keeps each receipt with its proof; any one of them verifies on its own, as an agent checks it.
    let (_, log) = s
        .get(&format!("/v1/esim/{iccid}/receipts?from=1&limit=1000"))
        .await;
    let entries = log["receipts"].as_array().unwrap();
    let catalog = esim402_core::esim::catalog::Catalog::builtin();
    let signer = |c: &CarrierId| catalog.carrier(c).and_then(|c| c.receipt_signer);
    let mut verified = 0;
    for e in entries.iter().filter(|e| e["state"] == "accepted") {
        let wire: WireReceipt = serde_json::from_value(e["receipt"].clone()).unwrap();
        assert_eq!(wire.page.as_ref().map(|p| p.count), Some(1000));
        let r = wire.parse().unwrap();
        let roaming = esim402_core::esim::plmn::RoamingPolicy::default();
        let terms = SimTerms {
            carrier: &r.carrier,
            roaming: &roaming,
            opened_at: None,
            retired_at: None,
        };
        verify(&r, signer, Some(terms), now()).unwrap();
        verified += 1;
    }
    assert_eq!(verified, 999);
    let disputed: Vec<_> = entries
        .iter()
        .filter(|e| e["state"] == "disputed")
        .collect();
    assert_eq!(disputed.len(), 1, "the edited receipt is kept as disputed");
    assert_eq!(disputed[0]["receipt"]["seq"], 501);
    let (_, verify_ledger) = s.ledger().await;
    assert_eq!(verify_ledger["ok"], true);
}

/// Four SIMs' page-signed batches of 250 at once, to one instance on Redis: hundreds of async store calls in
/// flight while the synchronous `wasi:keyvalue` claims hold the instance. The host once stalled here until the
/// Redis response timeout and answered 500 (the connection's send slots went to calls nobody polled).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_page_batches_on_redis_are_all_charged() {
    let s = std::sync::Arc::new(
        PayStack::start_with(
            Some((&esim402_tests::Runner::Host, crate::payments::Store::Redis)),
            &[],
        )
        .await,
    );
    let mut sims = Vec::new();
    for mb in 10..14 {
        sims.push(activate(&s, mb).await);
    }
    let tasks: Vec<_> = sims
        .iter()
        .map(|iccid| {
            let (s, iccid) = (s.clone(), iccid.clone());
            tokio::spawn(async move {
                let receipts = page(&iccid, &format!("burst-{iccid}"), 250, 1_000);
                let (status, _, r) = s
                    .post("/v1/usage", &json!({ "receipts": receipts }), &[])
                    .await;
                (iccid, status, r)
            })
        })
        .collect();
    for t in tasks {
        let (iccid, status, r) = t.await.unwrap();
        assert_eq!(status, 200, "{iccid}: {r}");
        assert_eq!(r["totals"]["accepted"], 250, "{iccid}: {}", r["totals"]);
        assert_eq!(balance(&s, &iccid).await["used_bytes"], 250_000, "{iccid}");
    }
    let (_, verify_ledger) = s.ledger().await;
    assert_eq!(verify_ledger["ok"], true, "{verify_ledger}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_top_up_paid_by_transaction_hash_credits_once() {
    let s = PayStack::start(&[]).await;
    let iccid = running_low(&s).await;
    let data = format!("/v1/esim/{iccid}/data");
    // A top-up invoice that names no payer cannot be paid by transaction hash (the proof must come from it).
    let (_, _, plain) = s.post(&data, &json!({}), &[]).await;
    let bogus = format!("0x{}", "ab".repeat(32));
    let body = json!({"invoice_id": plain["invoice_id"]});
    let mut proof = crate::payments::proof_headers(&bogus, plain["invoice_id"].as_str().unwrap());
    proof.pop(); // the invoice id is in the body
    let (status, _, e) = s.post(&data, &body, &proof).await;
    assert_eq!(
        (status, e["error"]["field"].as_str()),
        (400, Some("payer")),
        "{e}"
    );
    let ask = json!({"payer": agent().to_string(), "top_up_mb": 50});
    let (status, _, low) = s.post(&data, &ask, &[]).await;
    assert_eq!(status, 402, "{low}");
    assert_eq!(low["top_up_options"][0]["data_mb"], 50);
    let id = low["invoice_id"].as_str().unwrap().to_owned();
    let amount = U256::from(150_000u64); // 50 MB at $0.003/MB
    assert_eq!(low["amount_usdc"], "0.15");
    let tx =
        crate::payments::pay_directly(&s, esim402_host::devstack::chain::RECIPIENT, amount).await;
    let mut body = ask.clone();
    body["invoice_id"] = json!(id);
    let mut proof = crate::payments::proof_headers(&tx, &id);
    proof.pop(); // the invoice id is in the body
    // Paid without the SIM's credential (anyone may pay for a top-up): the answer says what was bought, not
    // the SIM's balance or usage.
    let mut stranger = s.http.post(format!("{}{data}", s.url)).json(&body);
    for (k, v) in &proof {
        stranger = stranger.header(*k, v);
    }
    let answer = stranger.send().await.unwrap();
    let status = answer.status().as_u16();
    let paid: Value = answer.json().await.unwrap();
    assert_eq!(status, 200, "{paid}");
    assert_eq!(paid["topped_up_mb"], 50);
    assert_eq!(paid["status"], "topped_up", "{paid}");
    for private in [
        "remaining_bytes",
        "credited_bytes",
        "used_bytes",
        "granted_bytes",
        "low",
    ] {
        assert!(
            paid.get(private).is_none(),
            "{private} shown to a stranger: {paid}"
        );
    }
    let (status, _, again) = s.post(&data, &body, &proof).await;
    assert_eq!(status, 409, "{again}");
    assert_eq!(
        balance(&s, &iccid).await["credited_bytes"],
        51_000_000,
        "credited once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduled_anomaly_traffic_drains_until_stopped() {
    let s = PayStack::start(&[]).await;
    // Anomaly = 200 KB per simulated hour; 36 000× compressed: one burst every 100 ms.
    let t = TrafficSim::start_compressed(&s.url, &s.sim.url, 36_000).unwrap();
    let iccid = activate(&s, 10).await;
    let schedule = |mode: &str| {
        s.http
            .post(format!("{}/admin/schedule", t.url))
            .json(&json!({"iccid": iccid, "mode": mode}))
            .send()
    };
    assert_eq!(schedule("anomaly").await.unwrap().status(), 200);
    let mut used = 0;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        used = balance(&s, &iccid).await["used_bytes"].as_u64().unwrap();
        if used >= 600_000 {
            break;
        }
    }
    assert!(
        used >= 600_000,
        "three bursts of 200 KB within 10 s: {used}"
    );
    assert_eq!(used % 200_000, 0, "whole bursts only: {used}");
    assert_eq!(schedule("off").await.unwrap().status(), 200);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let stopped = balance(&s, &iccid).await["used_bytes"].as_u64().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        balance(&s, &iccid).await["used_bytes"].as_u64().unwrap(),
        stopped,
        "off stops it"
    );
    assert_eq!(schedule("weekly").await.unwrap().status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_top_up_with_a_payment_identifier_replays_its_answer() {
    let s = PayStack::start(&[]).await;
    let iccid = running_low(&s).await;
    let data = format!("/v1/esim/{iccid}/data");
    let (_, req) = s.challenge(&data, &json!({})).await;
    let pay = Payment::for_requirement(&req).with_payment_id("pay_topup_0123456789abcdef");
    let (status, _, first) = s
        .post(&data, &json!({}), &[("payment-signature", pay.header())])
        .await;
    assert_eq!(status, 200, "{first}");
    // A retry after a lost reply: the same id and request get the same answer, nothing is paid or credited again.
    let (status, _, again) = s
        .post(&data, &json!({}), &[("payment-signature", pay.header())])
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["transaction"], first["transaction"]);
    // 1 MB activated, 16 MB topped up (what the $0.05 minimum buys).
    assert_eq!(balance(&s, &iccid).await["credited_bytes"], 17_000_000);
    // The same id with a different request is refused.
    let (status, _, other) = s
        .post(
            &data,
            &json!({"quota_kb": 5}),
            &[("payment-signature", pay.header())],
        )
        .await;
    assert_eq!(status, 409, "{other}");
}

/// The carrier's quota grants reserve their bytes (kernel `usage::grant`): two asked before any report hand the
/// balance out once (before, both were granted 600 of 1 000 KB and the network could carry 1 200 KB on it); the
/// owner's request is advice and reserves nothing; a terminate right after a grant leaves the grant's bytes out
/// of its refund (before, it refunded them and the carrier reported them later, charged to a closed account).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn carrier_grants_reserve_their_bytes_and_a_terminate_leaves_them_out_of_its_refund() {
    let s = PayStack::start(&[]).await;
    let iccid = activate(&s, 1).await;
    let data = format!("/v1/esim/{iccid}/data");
    let carrier = [("authorization", "Bearer test-callback-tmobile".to_owned())];
    let (status, _, first) = s.post(&data, &json!({"quota_kb": 600}), &carrier).await;
    assert_eq!(
        (status, &first["granted_kb"]),
        (200, &json!(600)),
        "{first}"
    );
    assert!(first["valid_until"].as_u64().unwrap() > now(), "{first}");
    let (status, _, second) = s.post(&data, &json!({"quota_kb": 600}), &carrier).await;
    assert_eq!(
        (status, &second["granted_kb"]),
        (200, &json!(300)),
        "what the first left above the low-water mark: {second}"
    );
    assert_eq!(second["reserved_bytes"], 900_000, "{second}");
    let (status, _, third) = s.post(&data, &json!({"quota_kb": 600}), &carrier).await;
    assert_eq!(
        (status, &third["status"]),
        (402, &json!("low_balance")),
        "{third}"
    );
    // The owner is told what is left to grant, and reserves nothing.
    let b = balance(&s, &iccid).await;
    assert_eq!(
        (&b["reserved_bytes"], &b["low"]),
        (&json!(900_000), &json!(true)),
        "{b}"
    );

    // 250 KB of the grants reported, then the SIM terminated: the 650 KB granted and not reported yet are not
    // refunded, so only the 100 KB never granted is.
    let (status, _, r) = s
        .post(
            "/v1/usage",
            &json!({"receipts": [receipt(&iccid, "s", 1, 250_000, "310-260")]}),
            &[],
        )
        .await;
    assert_eq!((status, &r["totals"]["accepted"]), (200, &json!(1)), "{r}");
    let (status, _, term) = s
        .post(&format!("/v1/esim/{iccid}/terminate"), &json!({}), &[])
        .await;
    assert_eq!(status, 200, "{term}");
    let refunds = term["refunds"].as_array().unwrap();
    assert_eq!(refunds.len(), 1, "{term}");
    // 100 KB of the 1 MB bought at T-Mobile's $0.003 per MB (micro-USDC).
    assert_eq!(refunds[0]["amount"], "300", "{term}");
    // The grants' usage reported after the terminate is charged.
    let (status, _, r) = s
        .post(
            "/v1/usage",
            &json!({"receipts": [receipt(&iccid, "s", 2, 650_000, "310-260")]}),
            &[],
        )
        .await;
    assert_eq!((status, &r["totals"]["accepted"]), (200, &json!(1)), "{r}");
    // Usage beyond what the close counted (used + the grants outstanding) was refunded to the payer: counted,
    // not charged (before, it was charged: a charge nobody paid).
    let (status, _, r) = s
        .post(
            "/v1/usage",
            &json!({"receipts": [receipt(&iccid, "s", 3, 100_000, "310-260")]}),
            &[],
        )
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        (
            &r["results"][0]["status"],
            &r["totals"]["bytes_charged"],
            &r["totals"]["bytes_absorbed"]
        ),
        (&json!("after_close"), &json!(0), &json!(100_000)),
        "{r}"
    );
    let (status, _, refused) = s.post(&data, &json!({"quota_kb": 1}), &carrier).await;
    assert_eq!(status, 409, "{refused}");
}

/// Terminate SIM `iccid` (its access token): its one refund and the whole answer.
async fn terminated_unused(s: &PayStack, iccid: &str) -> (Value, Value) {
    let (status, _, term) = s
        .post(&format!("/v1/esim/{iccid}/terminate"), &json!({}), &[])
        .await;
    assert_eq!(status, 200, "{term}");
    let refunds = term["refunds"].as_array().unwrap();
    assert_eq!(refunds.len(), 1, "{term}");
    (refunds[0].clone(), term)
}

/// After a failover the delivering carrier can be dearer than the one the invoice was priced at: the data is
/// valued at the quoted carrier's rate, so terminating it unused owes back the data part of the payment, not the
/// activation fee (before, it was valued at Verizon's dearer rate, capped at the invoice: the whole payment,
/// fee included, came back).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_over_activation_refunds_its_unused_data_at_the_quoted_rate() {
    let s = PayStack::start(&[]).await;
    s.set_faults("tmobile", json!({"http_503": true})).await;
    let body = json!({"region": "us-west", "data_mb": 1000});
    let (_, req) = s.invoice(&body).await;
    let act = s.activate_paid(&body, &[]).await;
    assert_eq!(act["carrier"], "verizon", "{act}");
    let (refund, term) = terminated_unused(&s, act["iccid"].as_str().unwrap()).await;
    // 1 000 MB at T-Mobile's $0.003 per MB; the invoice is that plus the $0.12 activation fee.
    assert_eq!(req.amount, "3120000");
    assert_eq!(refund["amount"], "3000000", "{term}");
}

/// An invoice seals the quote it was priced at: T-Mobile's rate raised after the 402 (the host restarted with
/// a new catalog, on the same store and invoice key) does not change what the data was bought at, so
/// terminating the SIM unused owes back the quoted data part, not today's value of it. Before, the data was
/// valued at today's rate capped at the invoice: the whole payment, activation fee included, came back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_activation_paid_after_a_rate_change_refunds_its_data_at_the_quoted_rate() {
    let mut s = PayStack::start_with(
        Some((&esim402_tests::Runner::Host, crate::payments::Store::Sqlite)),
        &[],
    )
    .await;
    let body = json!({"region": "us-west", "data_mb": 1000});
    let (_, req) = s.invoice(&body).await;
    // 1 000 MB at T-Mobile's $0.003 per MB, plus the $0.12 activation fee.
    assert_eq!(req.amount, "3120000");

    let builtin = esim402_core::esim::catalog::BUILTIN_TOML.to_owned();
    let (old_rate, new_rate) = ("price_per_mb = \"0.003\"", "price_per_mb = \"0.004\"");
    assert_eq!(builtin.matches(old_rate).count(), 1);
    let raised = builtin.replace(old_rate, new_rate);
    let env = s.env_with(&[("SPIN_VARIABLE_CARRIER_CATALOG", &raised)], &[]);
    s.restart(&env).await;
    let (_, fresh) = s.invoice(&body).await;
    assert_eq!(fresh.amount, "4120000", "the new rate prices new invoices");

    let header = Payment::for_requirement(&req).header();
    let (status, _, act) = s
        .post("/v1/esim/activate", &body, &[("payment-signature", header)])
        .await;
    assert_eq!(status, 200, "{act}");
    assert_eq!(act["carrier"], "tmobile", "{act}");
    let (refund, term) = terminated_unused(&s, act["iccid"].as_str().unwrap()).await;
    assert_eq!(refund["amount"], "3000000", "{term}");
}

/// A SIM whose carrier left the catalog since it was bought: a top-up of it is a 409 naming the carrier, not
/// a 500, and terminating it answers 200 with its refund (before, the termination was recorded and then
/// answered 500, as the carrier could not be found to cancel the profile at).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sim_whose_carrier_left_the_catalog_is_refused_top_ups_and_terminates() {
    let mut s = PayStack::start_with(
        Some((&esim402_tests::Runner::Host, crate::payments::Store::Sqlite)),
        &[],
    )
    .await;
    let iccid = activate(&s, 10).await;
    let mut catalog: toml::Table = esim402_core::esim::catalog::BUILTIN_TOML.parse().unwrap();
    catalog["carriers"]
        .as_table_mut()
        .unwrap()
        .remove("tmobile")
        .unwrap();
    for (_, region) in catalog["regions"].as_table_mut().unwrap().iter_mut() {
        region["carriers"]
            .as_array_mut()
            .unwrap()
            .retain(|c| c.as_str() != Some("tmobile"));
    }
    let without = toml::to_string(&catalog).unwrap();
    let env = s.env_with(&[("SPIN_VARIABLE_CARRIER_CATALOG", &without)], &[]);
    s.restart(&env).await;

    let (status, _, top_up) = s
        .post(
            &format!("/v1/esim/{iccid}/data"),
            &json!({"top_up_mb": 100}),
            &[],
        )
        .await;
    assert_eq!(status, 409, "{top_up}");
    assert!(
        top_up["error"]["message"]
            .as_str()
            .unwrap()
            .contains("carrier tmobile is no longer sold here"),
        "{top_up}"
    );
    let (refund, term) = terminated_unused(&s, &iccid).await;
    assert_eq!(term["state"], "terminated", "{term}");
    assert_eq!(refund["status"], "owed", "{term}");
}

/// A paid switch to Verizon of a 10 MB SIM with 4 MB used, its 402 asked for and signed.
struct Switching {
    old: String,
    path: String,
    target: Value,
    header: String,
}

impl Switching {
    async fn start(s: &PayStack) -> Self {
        let old = activate(s, 10).await;
        s.post(
            "/v1/usage",
            &json!({"receipts": [receipt(&old, "s", 1, 4_000_000, "310-260")]}),
            &[],
        )
        .await;
        let path = format!("/v1/esim/{old}/switch");
        let target = json!({"carrier": "verizon"});
        let (_, req) = s.challenge(&path, &target).await;
        let header = Payment::for_requirement(&req).header();
        Self {
            old,
            path,
            target,
            header,
        }
    }

    /// Send the (same) payment.
    async fn send(&self, s: &PayStack) -> (u16, reqwest::header::HeaderMap, Value) {
        s.post(
            &self.path,
            &self.target,
            &[("payment-signature", self.header.clone())],
        )
        .await
    }
}

/// A switch whose balance move fails at the store (an account update refused once, by the test-only
/// `ESIM402_FAILPOINT_ERROR`) does not end the payment: it answers 503, and the same payment sent again moves the
/// unused data, with its ledger event logged once. Refused: the old account's move out (its second update; the
/// activation credit is its first), or the new account's credit after the move out landed (the third update
/// under `balance/`). Before, the switch answered 200 with the move logged as failed, and a repeat replayed that
/// answer: the 6 MB left were never moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_switch_whose_balance_move_fails_moves_it_when_sent_again() {
    for failing in ["balance/#2", "balance/#3"] {
        let s = PayStack::start_with(
            Some((&esim402_tests::Runner::Host, crate::payments::Store::Sqlite)),
            &[("ESIM402_FAILPOINT_ERROR", failing)],
        )
        .await;
        let switching = Switching::start(&s).await;
        let old = &switching.old;
        let (status, _, failed) = switching.send(&s).await;
        assert_eq!(status, 503, "{failing}: {failed}");
        let (status, _, new_sim) = switching.send(&s).await;
        assert_eq!(status, 200, "{failing}: {new_sim}");
        let new = new_sim["iccid"].as_str().unwrap();
        let b = balance(&s, new).await;
        assert_eq!(
            (b["credited_bytes"].as_u64(), b["used_bytes"].as_u64()),
            (Some(MOVED_TO_VERIZON), Some(0)),
            "{failing}: {b}"
        );
        assert_eq!(balance(&s, old).await["closed"], true);
        let moves = s
            .ledger_entries()
            .await
            .into_iter()
            .filter(|e| e["kind"] == "data_credited" && e["details"]["kind"] == "transfer")
            .count();
        assert_eq!(moves, 1, "{failing}: the move logged once");
    }
}

/// What the 6 unused T-Mobile MB of a [`Switching`] SIM ($0.003/MB: $0.018) buy on Verizon ($0.0035/MB): a
/// switch moves the balance by its value.
const MOVED_TO_VERIZON: u64 = 5_142_857;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_switch_moves_the_unused_balance_to_the_new_sim() {
    let s = PayStack::start(&[]).await;
    let switching = Switching::start(&s).await;
    let old = switching.old.clone();
    let (status, _, new_sim) = switching.send(&s).await;
    assert_eq!(status, 200, "{new_sim}");
    let new = new_sim["iccid"].as_str().unwrap();
    assert_ne!(new, old);
    // 6 MB were left: their value moves, as the bytes it buys on Verizon; the old account closes without a
    // refund (the value moved).
    let b = balance(&s, new).await;
    assert_eq!(
        (b["credited_bytes"].as_u64(), b["used_bytes"].as_u64()),
        (Some(MOVED_TO_VERIZON), Some(0)),
        "{b}"
    );
    // The old SIM's balance names where its data went and shows none left (before, it showed the 6 MB that
    // moved as its own), and its quota is refused naming the new SIM (before: "terminated").
    let b = balance(&s, &old).await;
    assert_eq!(
        (
            &b["closed"],
            b["switched_to"].as_str(),
            &b["remaining_bytes"]
        ),
        (&json!(true), Some(new), &json!(0)),
        "{b}"
    );
    assert_eq!(balance(&s, new).await["switched_to"], Value::Null);
    let (status, _, q) = s
        .post(
            &format!("/v1/esim/{old}/data"),
            &json!({"quota_kb": 100}),
            &[],
        )
        .await;
    assert_eq!(status, 409, "{q}");
    let message = q["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(&format!("switched to SIM {new}")), "{q}");
    // Nor is a top-up sold for it, to anyone (before, it was settled and then owed back by its closed account).
    let (status, _, t) = s
        .post(
            &format!("/v1/esim/{old}/data"),
            &json!({"top_up_mb": 10}),
            &[("authorization", String::new())],
        )
        .await;
    assert_eq!(status, 409, "{t}");
    let message = t["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("takes no top-up"), "{t}");
    // It does not name the new SIM to a caller who did not prove it manages the SIM (before, it did).
    assert!(!message.contains(new), "{t}");
    // The new SIM is metered on its carrier: Verizon's receipts count, T-Mobile's are disputed.
    let t = now();
    let signed = |carrier: &str| {
        let r = Receipt {
            carrier: CarrierId::parse(carrier).unwrap(),
            iccid: Iccid::parse(new).unwrap(),
            plmn: Plmn::parse("311-480").unwrap(),
            session_id: format!("after-{carrier}"),
            seq: 1,
            window_start: t - 60,
            window_end: t - 1,
            bytes_up: 500,
            bytes_down: 500,
            signature: vec![],
            page: None,
        };
        let key = dev_signing_key(&r.carrier);
        serde_json::to_value(r.sign(&key).unwrap().to_wire()).unwrap()
    };
    let (_, _, r) = s
        .post(
            "/v1/usage",
            &json!({"receipts": [signed("verizon"), signed("tmobile")]}),
            &[],
        )
        .await;
    assert_eq!(r["results"][0]["status"], "accepted", "{r}");
    assert_eq!(r["results"][1]["reason"], "iccid_not_on_carrier", "{r}");
    let (kinds, verify) = s.ledger().await;
    assert_eq!(
        kinds.iter().filter(|k| *k == "data_credited").count(),
        2,
        "activation + transfer: {kinds:?}"
    );
    assert_eq!(verify["ok"], true);
}

/// Suspend is recorded here only (ES2+ cannot push it to the network), so the quota grant is where it stops
/// data: a suspended SIM is granted nothing (409) until it is resumed; a top-up may still be bought for it.
/// Before, the grant looked at the balance alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_suspended_sim_is_granted_no_quota_until_resumed() {
    let s = PayStack::start(&[]).await;
    let iccid = activate(&s, 1).await;
    let data = format!("/v1/esim/{iccid}/data");
    let (status, _, q) = s.post(&data, &json!({"quota_kb": 100}), &[]).await;
    assert_eq!(status, 200, "{q}");

    let (status, _, sim) = s
        .post(&format!("/v1/esim/{iccid}/suspend"), &json!({}), &[])
        .await;
    assert_eq!(
        (status, sim["state"].as_str()),
        (200, Some("suspended")),
        "{sim}"
    );
    let (status, _, refused) = s.post(&data, &json!({"quota_kb": 100}), &[]).await;
    assert_eq!(status, 409, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("suspended"),
        "{refused}"
    );
    // A top-up can still be bought for it.
    let (status, _, offer) = s
        .post(&data, &json!({"quota_kb": 100, "top_up_mb": 10}), &[])
        .await;
    assert_eq!(status, 402, "{offer}");

    let (status, _, sim) = s
        .post(&format!("/v1/esim/{iccid}/resume"), &json!({}), &[])
        .await;
    assert_eq!(
        (status, sim["state"].as_str()),
        (200, Some("active")),
        "{sim}"
    );
    let (status, _, q) = s.post(&data, &json!({"quota_kb": 100}), &[]).await;
    assert_eq!(status, 200, "{q}");
    assert_eq!(q["granted_kb"], 100);
}

/// A terminate whose credit's invoice no key of the deployment opens any more (its secret left
/// `invoice_secret_previous`) answers 200 and leaves that refund to an operator (logged `OPERATOR: REFUND NOT
/// RECORDED`): no retry changes it, so a 503 asking to terminate again would be answered for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_terminate_whose_invoice_no_key_opens_is_left_to_an_operator_not_retried() {
    let mut s = PayStack::start_with(
        Some((&esim402_tests::Runner::Host, crate::payments::Store::Sqlite)),
        &[(
            "SPIN_VARIABLE_INVOICE_SECRET",
            "the first invoice secret 16+",
        )],
    )
    .await;
    let iccid = activate(&s, 1).await;
    let mut env = s.app_env.clone();
    env.retain(|(k, _)| k != "SPIN_VARIABLE_INVOICE_SECRET");
    env.push((
        "SPIN_VARIABLE_INVOICE_SECRET".into(),
        "a later invoice secret 16+".into(),
    ));
    s.restart(&env).await;
    let (status, _, out) = s
        .post(&format!("/v1/esim/{iccid}/terminate"), &json!({}), &[])
        .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["state"], "terminated", "{out}");
    assert_eq!(out["refunds"].as_array().map(Vec::len), Some(0), "{out}");
}

/// A terminate whose refund of unused data cannot be recorded (the second refund record's write refused by the
/// store, with the test-only `ESIM402_FAILPOINT_ERROR`) answers 503 saying so: the SIM is terminated and its
/// access token revoked, so the answer tells the owner to terminate again with the wallet, which records the
/// refund left (and nothing twice). Before, it answered 200 listing one refund of two: the other was never
/// owed, and a client holding only the access token could not even terminate again to find out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_terminate_whose_refund_is_not_recorded_answers_503_and_terminating_again_owes_it() {
    let s = PayStack::start_with(
        Some((&esim402_tests::Runner::Host, crate::payments::Store::Sqlite)),
        &[("ESIM402_FAILPOINT_ERROR", "refund/inv_#2")],
    )
    .await;
    let iccid = activate(&s, 1).await;
    // A 10 MB top-up: two credits unused, two refunds owed at the terminate.
    let data = format!("/v1/esim/{iccid}/data");
    let top_up = json!({"quota_kb": 100, "top_up_mb": 10});
    let (_, req) = s.challenge(&data, &top_up).await;
    let pay = Payment::for_requirement(&req);
    let (status, _, paid) = s
        .post(&data, &top_up, &[("payment-signature", pay.header())])
        .await;
    assert_eq!(status, 200, "{paid}");

    let terminate = format!("/v1/esim/{iccid}/terminate");
    let (status, _, first) = s.post(&terminate, &json!({}), &[]).await;
    assert_eq!(status, 503, "{first}");
    let message = first["error"]["message"].as_str().unwrap_or_default();
    for said in [
        "is terminated",
        "1 refund",
        "terminate it again",
        "wallet",
        "access token",
    ] {
        assert!(message.contains(said), "{said:?}: {first}");
    }
    let (_, sim) = s.get_signed_in(&format!("/v1/esim/{iccid}")).await;
    assert_eq!(sim["state"], "terminated", "{sim}");
    // The access token no longer opens it; the owner's wallet terminates again and records the refund left.
    let (status, _, _) = s.post(&terminate, &json!({}), &[]).await;
    assert_eq!(status, 404);
    let (status, _, again) = s
        .post(
            &terminate,
            &json!({}),
            &[("sign-in-with-x", s.sign_in(&terminate))],
        )
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        again["refunds"].as_array().map(Vec::len),
        Some(2),
        "{again}"
    );
    let (kinds, verify) = s.ledger().await;
    assert_eq!(
        kinds.iter().filter(|k| *k == "refund_owed").count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(verify["ok"], true);
}

/// The same unrecorded refund when the owner never terminates again: the operator's cleanup run records it (the
/// terminate listed the SIM before it revoked the token), once; a second run finds nothing. Before, nothing
/// but the owner's wallet sign-in ever recorded it, and a device holding only its access token lost its data's
/// value.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_terminates_unrecorded_refund_is_recorded_by_the_operators_cleanup_run() {
    let s = PayStack::start_with(
        Some((&esim402_tests::Runner::Host, crate::payments::Store::Sqlite)),
        &[("ESIM402_FAILPOINT_ERROR", "refund/inv_")],
    )
    .await;
    let iccid = activate(&s, 1).await;
    let terminate = format!("/v1/esim/{iccid}/terminate");
    let (status, _, first) = s.post(&terminate, &json!({}), &[]).await;
    assert_eq!(status, 503, "{first}");
    let message = first["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("cleanup run"), "{first}");

    let (status, run) = s.admin_run("cleanup", Some(&s.admin_token)).await;
    assert_eq!(status, 200, "{run}");
    assert_eq!(
        (&run["unrefunded_recorded"], &run["unrefunded_left"]),
        (&json!(1), &json!(0)),
        "{run}"
    );
    let (kinds, verify) = s.ledger().await;
    assert_eq!(
        kinds.iter().filter(|k| *k == "refund_owed").count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(verify["ok"], true);
    let (_, again) = s.admin_run("cleanup", Some(&s.admin_token)).await;
    assert_eq!(again["unrefunded_recorded"], 0, "{again}");
    // The owner terminating again with its wallet finds the refund recorded: nothing owed twice.
    let (status, _, repeat) = s
        .post(
            &terminate,
            &json!({}),
            &[("sign-in-with-x", s.sign_in(&terminate))],
        )
        .await;
    assert_eq!(status, 200, "{repeat}");
    let (kinds, _) = s.ledger().await;
    assert_eq!(kinds.iter().filter(|k| *k == "refund_owed").count(), 1);
}

/// A malformed usage or receipts query is refused before the wallet sign-in is used: the same sign-in then
/// opens the corrected request. Before, the 400 used up its nonce and the corrected request got 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_malformed_query_does_not_use_up_the_sign_in() {
    let s = PayStack::start(&[]).await;
    let iccid = activate(&s, 1).await;
    for (route, bad, good) in [
        ("usage", "granularity=week", "granularity=hour"),
        ("receipts", "limit=0", "limit=10"),
    ] {
        let path = format!("/v1/esim/{iccid}/{route}");
        let signed = s.sign_in(&path);
        let get = |query: &str| {
            s.http
                .get(format!("{}{path}?{query}", s.url))
                .header("sign-in-with-x", signed.clone())
                .send()
        };
        let refused = get(bad).await.unwrap();
        assert_eq!(refused.status(), 400, "{route}");
        let opened = get(good).await.unwrap();
        assert_eq!(
            opened.status(),
            200,
            "{route}: the same sign-in still opens it"
        );
    }
}

/// A top-up payment sent with a body naming another size than its invoice's is refused before anything is paid
/// (409), as an activation's is; with the size it was issued for, it pays. Before, a 10 MB invoice paid with
/// `top_up_mb: 50` answered 200 and the client believed it had bought 50 MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_top_up_paid_with_another_size_is_refused_before_paying() {
    let s = PayStack::start(&[]).await;
    let iccid = activate(&s, 1).await;
    let data = format!("/v1/esim/{iccid}/data");
    let ten = json!({"top_up_mb": 10});
    let (_, req) = s.challenge(&data, &ten).await;
    let pay = Payment::for_requirement(&req);
    let (status, _, refused) = s
        .post(
            &data,
            &json!({"top_up_mb": 50}),
            &[("payment-signature", pay.header())],
        )
        .await;
    assert_eq!(status, 409, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("10 MB top-up, not the 50 MB"),
        "{refused}"
    );
    // And says nothing was charged, as an activation's or a switch's does (a fresh-user trial).
    assert_eq!(refused["charged"], false, "{refused}");
    let (status, _, paid) = s
        .post(&data, &ten, &[("payment-signature", pay.header())])
        .await;
    assert_eq!(status, 200, "{paid}");
    assert_eq!(paid["topped_up_mb"], 10, "{paid}");
}

/// Routes that take no parameters refuse a body that is not empty or `{}` before acting (a field is named; a body
/// declared other than JSON is 415), and a POST under /v1/ refuses a query beside its body. Before, a suspend
/// with any body suspended, and a POST's query was ignored while its 402's `resource` showed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bodies_and_queries_a_route_does_not_read_are_refused() {
    let s = PayStack::start(&[]).await;
    let iccid = activate(&s, 1).await;
    let suspend = format!("/v1/esim/{iccid}/suspend");
    let (status, _, e) = s.post(&suspend, &json!({"reason": "night"}), &[]).await;
    assert_eq!(
        (status, &e["error"]["field"]),
        (400, &json!("reason")),
        "{e}"
    );
    let token = s.token_for(&suspend).unwrap();
    let form = s
        .http
        .post(format!("{}{suspend}", s.url))
        .bearer_auth(&token)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("reason=night")
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 415);
    // Two credentials of one kind: refused, whichever comes first (before, the first was taken).
    let twice = s
        .http
        .post(format!("{}{suspend}", s.url))
        .header("authorization", format!("Bearer {token}"))
        .header("authorization", "Bearer sim_somebody_else")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(twice.status(), 400);
    let (_, sim) = s.get(&format!("/v1/esim/{iccid}")).await;
    assert_eq!(sim["state"], "active", "nothing acted: {sim}");
    let (status, _, ok) = s.post(&suspend, &json!({}), &[]).await;
    assert_eq!((status, &ok["state"]), (200, &json!("suspended")), "{ok}");

    let (status, _, e) = s
        .post(
            "/v1/esim/activate?region=eu-central",
            &json!({"region": "us-west", "data_mb": 10}),
            &[],
        )
        .await;
    assert_eq!(
        (status, &e["error"]["field"]),
        (400, &json!("region")),
        "{e}"
    );
    // Every POST under /v1/ refuses a query (before, `data?top_up_mb=100` was granted quota, or sold the
    // first offer, and `switch?carrier=…` was refused for its body alone).
    for (route, body, field) in [
        (
            format!("/v1/esim/{iccid}/data?top_up_mb=100"),
            json!({}),
            "top_up_mb",
        ),
        (
            format!("/v1/esim/{iccid}/switch?carrier=verizon"),
            json!({"carrier": "verizon"}),
            "carrier",
        ),
        (format!("/v1/esim/{iccid}/resume?x"), json!({}), "x"),
    ] {
        let (status, _, e) = s.post(&route, &body, &[]).await;
        assert_eq!(
            (status, &e["error"]["field"]),
            (400, &json!(field)),
            "{route}: {e}"
        );
    }
    let (_, sim) = s.get(&format!("/v1/esim/{iccid}")).await;
    assert_eq!(sim["state"], "suspended", "nothing acted: {sim}");
}

/// A SIM in debt (its carrier reported more than its balance) is offered top-ups that bring it above the
/// low-water mark, and paying the first one gets it granted quota again. Before, a SIM 59 MB in debt was offered
/// 16, 50 and 100 MB: paying the default left it suspended and refused quota (a fresh-user trial, thirty-first
/// session).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sim_in_debt_is_offered_top_ups_that_clear_it() {
    let s = PayStack::start(&[]).await;
    let iccid = used_up(&s, 60_000_000).await;
    assert_eq!(balance(&s, &iccid).await["remaining_bytes"], -59_000_000);
    let data = format!("/v1/esim/{iccid}/data");
    let (low, req) = s.challenge(&data, &json!({})).await;
    // 59 MB owed, the 100 KB low-water mark and a full 1 MB grant: 61 MB at least; the 100 MB size is above it.
    assert_eq!(
        low["top_up_options"],
        json!([
            {"data_mb": 61, "amount_usdc": "0.183"},
            {"data_mb": 100, "amount_usdc": "0.30"},
        ]),
        "{low}"
    );
    let pay = Payment::for_requirement(&req);
    let (status, _, paid) = s
        .post(&data, &json!({}), &[("payment-signature", pay.header())])
        .await;
    assert_eq!(status, 200, "{paid}");
    assert_eq!(paid["status"], "granted", "{paid}");
    assert_eq!(paid["granted_kb"], 1_000, "a full default grant: {paid}");
    let b = balance(&s, &iccid).await;
    assert_eq!(b["credited_bytes"], 62_000_000, "{b}");
    assert_eq!(b["suspended_for_balance"], false, "{b}");
}
