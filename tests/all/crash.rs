//! Crash safety of a paid activation: the host (`esim402 up`, a child process) is armed with the test-only
//! failpoint `ESIM402_FAILPOINT` (crates/host/src/kv/failpoint.rs), which stalls the paying request right after
//! a given key-value write; the test then SIGKILLs it by PID, starts it again on the same store (a SQLite file,
//! or Redis) and sends the same payment again. Whatever the crash point: the payment completes or nothing is
//! charged, never twice; no profile stays handed out at the SM-DP+ simulator without a paid SIM; the ledger
//! verifies with every money event once.
//!
//! The crash points, in the order a paid `exact` activation reaches them (key map: crates/core/src/store/keys.rs):
//! - `ledger/`: after verification, the first ledger entry of the attempt is written (`invoice_issued`; the
//!   shard head not yet advanced, `payment_verified` not yet appended);
//! - `order/#2`: the carrier allocated a profile (DownloadOrder) and the order journal holds the step, not yet
//!   confirmed;
//! - `order/#3`: the order is complete (SIM stored with its activation code), nothing settled;
//! - `x402/nonce/#2`: the settlement transaction is signed and its hash recorded on the authorization's record,
//!   not yet broadcast;
//! - `x402/nonce/#3`: after the broadcast, its confirmed outcome recorded; the invoice not yet marked paid;
//! - `invoice/#2`: the invoice marked paid, the settlement and activation not yet logged;
//! - `balance/`: the SIM's data credited, not yet logged.
//!
//! The last two lose the attempt's ledger events with it: the same payment sent again logs them again, and the
//! ledger keeps each once (kernel `ledger::not_yet_logged`).
//!
//! The restart runs with `ESIM402_CLOCK_SKEW_SECS` past the payment record's lease (`paid::LEASE_SECS`): a
//! restart "after the lease", without waiting for it.
//!
//! The last two tests arm `ESIM402_FAILPOINT_SYNC` instead: the store's disk sync fails, and the host must
//! withhold its answers and its outbound requests rather than show a write a power loss could take back.

use std::time::Duration;

use esim402_core::paid::LEASE_SECS;
use esim402_tests::Runner;

use crate::payments::{PayStack, Payment, Store, activation, agent, price, proof_headers};

/// One crash point.
struct Crash {
    /// `ESIM402_FAILPOINT`.
    failpoint: &'static str,
    store: Store,
    /// Attempts that got past verification (each logs `payment_verified`).
    verified: usize,
}

/// The ledger's event kinds and its check's answer, the check asserted to verify.
async fn verified_ledger(s: &PayStack) -> (Vec<String>, serde_json::Value) {
    let (kinds, verify) = s.ledger().await;
    assert_eq!(verify["ok"], true, "{verify}");
    (kinds, verify)
}

/// How many events of `kind` are among `kinds`.
fn count(kinds: &[String], kind: &str) -> usize {
    kinds.iter().filter(|k| *k == kind).count()
}

/// `POST /v1/esim/activate` carrying the payment `header`.
async fn send_payment(
    s: &PayStack,
    header: &str,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    s.post(
        "/v1/esim/activate",
        &activation(),
        &[("payment-signature", header.to_owned())],
    )
    .await
}

/// Send `req`; it stalls at `failpoint` (the host prints that it was hit), the host is killed under it, and the
/// request never gets an answer.
async fn kill_during(s: &mut PayStack, req: reqwest::RequestBuilder, failpoint: &str) {
    let stalled = tokio::spawn(async move { req.send().await.map(|r| r.status().as_u16()) });
    s.process()
        .wait_for_log(
            &format!("failpoint hit: {failpoint}"),
            Duration::from_secs(120),
        )
        .await
        .unwrap();
    s.process().kill();
    let lost = stalled.await.unwrap();
    assert!(
        lost.is_err(),
        "the stalled request never answered: {lost:?}"
    );
}

/// Send the payment `header`; the paying request stalls at `failpoint` and the host is killed under it.
async fn stall_and_kill(s: &mut PayStack, header: &str, failpoint: &str) {
    let req = s
        .http
        .post(format!("{}/v1/esim/activate", s.url))
        .header("payment-signature", header.to_owned())
        .json(&activation());
    kill_during(s, req, failpoint).await;
}

/// Restart the host on the same store without the failpoints (stall and error), its clock `secs` ahead (a restart that long
/// after the crash, without waiting for it), with `extra` variables set.
async fn restart_later(s: &mut PayStack, secs: u64, extra: &[(&str, &str)]) {
    let skew = secs.to_string();
    let mut set = vec![("ESIM402_CLOCK_SKEW_SECS", skew.as_str())];
    set.extend_from_slice(extra);
    let env = s.env_with(&set, &["ESIM402_FAILPOINT", "ESIM402_FAILPOINT_ERROR"]);
    s.restart(&env).await;
}

async fn crash_and_pay_again(c: Crash) {
    let mut s = PayStack::start_with(
        Some((&Runner::Host, c.store)),
        &[("ESIM402_FAILPOINT", c.failpoint)],
    )
    .await;
    let start = s.balance(agent()).await;
    let (invoice, req) = s.invoice(&activation()).await;
    let pay = Payment::for_requirement(&req);
    let header = pay.header();
    stall_and_kill(&mut s, &header, c.failpoint).await;

    // Restarted on the same store, after the lease, without the failpoint: the same payment again.
    restart_later(&mut s, LEASE_SECS + 1, &[]).await;
    let (status, _, body) = send_payment(&s, &header).await;
    let sent = s.facilitator_transactions().await;
    let id = invoice["invoice_id"].as_str().unwrap();
    let (_, inv) = s.get(&format!("/v1/invoices/{id}")).await;
    let completed = status == 200;
    if completed {
        assert!(
            body["activation_code"]
                .as_str()
                .unwrap()
                .starts_with("LPA:1$"),
            "{body}"
        );
        assert_eq!(
            s.balance(agent()).await,
            start - price(&req),
            "charged once"
        );
        assert!(s.nonce_used(agent(), pay.auth.nonce).await);
        assert_eq!(sent, "0x1", "one settlement transaction");
        assert_eq!(inv["status"], "paid", "{inv}");
    } else {
        // Not completed: nothing may have been charged (an `exact` authorization is never refunded; it is
        // simply not settled).
        assert_eq!(s.balance(agent()).await, start, "{status}: {body}");
        assert!(!s.nonce_used(agent(), pay.auth.nonce).await);
        assert_eq!(sent, "0x0", "{status}: {body}");
    }

    // Every profile the SM-DP+ handed out belongs to a paid, active SIM; completed: exactly the one sold.
    let profiles = s.handed_out().await;
    for iccid in &profiles {
        let (st, sim) = s.get(&format!("/v1/esim/{iccid}")).await;
        assert_eq!(
            st, 200,
            "{iccid} handed out, unknown here: {sim}; the payment answered {status}: {body}"
        );
        assert_eq!(sim["state"], "active", "{sim}");
        let (_, paid) = s
            .get(&format!(
                "/v1/invoices/{}",
                sim["invoice_id"].as_str().unwrap()
            ))
            .await;
        assert_eq!(paid["status"], "paid", "{iccid} handed out unpaid: {paid}");
    }
    if completed {
        assert_eq!(
            profiles.into_iter().collect::<Vec<_>>(),
            [body["iccid"].as_str().unwrap()],
            "one profile"
        );
    } else {
        assert!(profiles.is_empty(), "{profiles:?}");
    }

    // Once more: a terminal 409, nothing moves.
    let (again, _, b) = send_payment(&s, &header).await;
    if completed {
        assert_eq!(again, 409, "{b}");
        assert_eq!(s.balance(agent()).await, start - price(&req));
    }

    // The ledger verifies, each money event exactly once (verification once per attempt that reached it).
    let (kinds, verify) = verified_ledger(&s).await;
    assert_eq!(verify["count"].as_u64(), Some(kinds.len() as u64));
    assert_eq!(count(&kinds, "invoice_issued"), 1, "{kinds:?}");
    assert_eq!(count(&kinds, "payment_verified"), c.verified, "{kinds:?}");
    let once = usize::from(completed);
    for k in [
        "settlement_confirmed",
        "activation_completed",
        "data_credited",
    ] {
        assert_eq!(count(&kinds, k), once, "{k}: {kinds:?}");
    }
    assert_eq!(count(&kinds, "settlement_failed"), 0, "{kinds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_after_verification_the_same_payment_completes_once() {
    crash_and_pay_again(Crash {
        failpoint: "ledger/",
        store: Store::Sqlite,
        verified: 1,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_with_a_profile_allocated_the_same_payment_confirms_it_once() {
    crash_and_pay_again(Crash {
        failpoint: "order/#2",
        store: Store::Sqlite,
        verified: 2,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_after_the_carrier_order_the_same_payment_settles_once() {
    crash_and_pay_again(Crash {
        failpoint: "order/#3",
        store: Store::Redis,
        verified: 2,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_with_the_settlement_signed_not_sent_the_same_bytes_settle_once() {
    crash_and_pay_again(Crash {
        failpoint: "x402/nonce/#2",
        store: Store::Sqlite,
        verified: 2,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_after_the_broadcast_the_same_payment_completes_without_a_second_one() {
    crash_and_pay_again(Crash {
        failpoint: "x402/nonce/#3",
        store: Store::Redis,
        verified: 2,
    })
    .await;
}

/// The invoice's paid mark refused once by the store after the settlement confirmed
/// (`ESIM402_FAILPOINT_ERROR=invoice/#2`: the payment record's second update): tried once more, it lands, and
/// the settlement and the activation are logged once. Before, a refused mark made the attempt log neither
/// event (it logged nothing it had not marked) and end the payment: both were lost for good, and the invoice
/// stayed unpaid.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paid_mark_the_store_refuses_once_is_marked_and_logged_once() {
    let s = PayStack::start_with(
        Some((&Runner::Host, Store::Sqlite)),
        &[("ESIM402_FAILPOINT_ERROR", "invoice/#2")],
    )
    .await;
    let start = s.balance(agent()).await;
    let (invoice, req) = s.invoice(&activation()).await;
    let id = invoice["invoice_id"].as_str().unwrap();
    let header = Payment::for_requirement(&req).header();
    let (status, _, first) = send_payment(&s, &header).await;
    assert_eq!(status, 200, "{first}");
    let (_, inv) = s.get(&format!("/v1/invoices/{id}")).await;
    assert_eq!(inv["status"], "paid", "{inv}");
    let (kinds, _) = verified_ledger(&s).await;
    for k in [
        "settlement_confirmed",
        "activation_completed",
        "data_credited",
    ] {
        assert_eq!(count(&kinds, k), 1, "{k}: {kinds:?}");
    }
    assert_eq!(s.facilitator_transactions().await, "0x1");
    assert_eq!(s.balance(agent()).await, start - price(&req));
    let (status, _, again) = send_payment(&s, &header).await;
    assert_eq!(status, 409, "ended: {again}");
    let (kinds, _) = verified_ledger(&s).await;
    assert_eq!(count(&kinds, "settlement_confirmed"), 1, "{kinds:?}");
}

/// Answers wait for the store's disk sync (the host's durability barrier, crates/host/src/kv/mod.rs). With the
/// sync failing from the moment the activation's data balance is written (`ESIM402_FAILPOINT_SYNC=balance/`:
/// after the settlement, before the answer), the paid request is answered 503 `storage_unavailable` instead of
/// its 200, and so is every later request, a 402 included: nothing that depends on an unsynced write leaves.
/// Restarted without the failpoint, the store holds the payment exactly once: settled once, the invoice paid,
/// the same payment refused as spent, the ledger verifying.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_disk_sync_withholds_the_answers_and_the_payment_stays_settled_once() {
    let mut s = PayStack::start_with(
        Some((&Runner::Host, Store::Sqlite)),
        &[("ESIM402_FAILPOINT_SYNC", "balance/")],
    )
    .await;
    let start = s.balance(agent()).await;
    let (invoice, req) = s.invoice(&activation()).await;
    let pay = Payment::for_requirement(&req);
    let header = pay.header();
    let (status, _, body) = send_payment(&s, &header).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "storage_unavailable", "{body}");
    let (status, _, body) = s.post("/v1/esim/activate", &activation(), &[]).await;
    assert_eq!(
        status, 503,
        "a 402 writes nothing but is withheld too: {body}"
    );

    let env = s.env_with(&[], &["ESIM402_FAILPOINT_SYNC"]);
    s.restart(&env).await;
    assert_eq!(
        s.balance(agent()).await,
        start - price(&req),
        "charged once"
    );
    assert!(s.nonce_used(agent(), pay.auth.nonce).await);
    let id = invoice["invoice_id"].as_str().unwrap();
    let (_, inv) = s.get(&format!("/v1/invoices/{id}")).await;
    assert_eq!(inv["status"], "paid", "{inv}");
    let (again, _, b) = send_payment(&s, &header).await;
    assert_eq!(again, 409, "{b}");
    assert_eq!(s.balance(agent()).await, start - price(&req));
    let (kinds, _) = verified_ledger(&s).await;
    for k in [
        "settlement_confirmed",
        "activation_completed",
        "data_credited",
    ] {
        assert_eq!(count(&kinds, k), 1, "{k}: {kinds:?}");
    }
}

/// Outbound requests wait for the disk sync too. With the sync failing from the payment record's first write
/// on (`ESIM402_FAILPOINT_SYNC=invoice/`: after verification, before the carrier order), nothing leaves the
/// host after it: the SM-DP+ hands out no profile, no settlement is sent, and the answer is withheld.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_disk_sync_stops_the_carrier_order_and_the_settlement() {
    let s = PayStack::start_with(
        Some((&Runner::Host, Store::Sqlite)),
        &[("ESIM402_FAILPOINT_SYNC", "invoice/")],
    )
    .await;
    let start = s.balance(agent()).await;
    let (_, req) = s.invoice(&activation()).await;
    let pay = Payment::for_requirement(&req);
    let (status, _, body) = send_payment(&s, &pay.header()).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "storage_unavailable", "{body}");
    assert!(s.handed_out().await.is_empty(), "no carrier order left");
    assert_eq!(s.balance(agent()).await, start, "nothing settled");
    assert!(!s.nonce_used(agent(), pay.auth.nonce).await);
    let sent = s.facilitator_transactions().await;
    assert_eq!(sent, "0x0", "no facilitator transaction");
}

/// An `exact` payment interrupted after its profile was ordered (killed at `order/#3`: the SIM stored with its
/// code, nothing settled) and sent again only once its authorization has expired can no longer settle. The
/// profile it ordered is withdrawn (the SIM terminated), nothing is charged, and the invoice ends with a
/// 410; the next payment of it gets that ending, not the profile. (Before, the expired payment released the
/// invoice, and the next payment of it was answered with the SIM the first one had ordered.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payment_that_expires_after_its_order_withdraws_the_profile() {
    let mut s = PayStack::start_with(
        Some((&Runner::Host, Store::Sqlite)),
        &[("ESIM402_FAILPOINT", "order/#3")],
    )
    .await;
    let start = s.balance(agent()).await;
    let (invoice, req) = s.invoice(&activation()).await;
    let id = invoice["invoice_id"].as_str().unwrap().to_owned();
    let pay = Payment::for_requirement(&req);
    let header = pay.header();
    stall_and_kill(&mut s, &header, "order/#3").await;
    let ordered = s.handed_out().await;
    assert_eq!(ordered.len(), 1, "the order completed: {ordered:?}");

    // Past the authorization's `validBefore` (and the payment record's lease), before the invoice's expiry.
    let skew = req.max_timeout_seconds + 60;
    restart_later(&mut s, skew, &[]).await;
    // Ordered, nothing settled: the payer's wallet sign-in does not get the activation code (before, it did:
    // a profile for nothing).
    let code_path = format!("/v1/esim/{}/activation", ordered.iter().next().unwrap());
    let r = s
        .http
        .get(format!("{}{code_path}", s.url))
        .header("sign-in-with-x", s.sign_in_ahead(&code_path, skew))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let refused: serde_json::Value = r.json().await.unwrap();
    assert_eq!(status, 409, "{refused}");
    assert!(refused.get("activation_code").is_none(), "{refused}");
    let (status, _, body) = send_payment(&s, &header).await;
    assert_eq!(status, 410, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("withdrawn") && message.contains(&id),
        "{body}"
    );
    assert!(body.get("activation_code").is_none(), "{body}");
    assert_eq!(body["charged"], false, "said to the client too: {body}");
    assert_eq!(s.balance(agent()).await, start, "nothing charged");
    assert!(!s.nonce_used(agent(), pay.auth.nonce).await);
    // The profile was downloaded meanwhile (the simulator's device does so once it is released), so the
    // SM-DP+ keeps it; the SIM here is terminated, and its owner's credential no longer opens it.
    let iccid = ordered.into_iter().next().unwrap();
    let path = format!("/v1/esim/{iccid}");
    let sim: serde_json::Value = s
        .http
        .get(format!("{}{path}", s.url))
        .header("sign-in-with-x", s.sign_in_ahead(&path, skew))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sim["state"], "terminated", "{sim}");
    let (_, inv) = s.get(&format!("/v1/invoices/{id}")).await;
    assert_ne!(inv["status"], "paid", "{inv}");

    // Another payment of the invoice (a fresh authorization) gets the ending: no SIM, nothing charged.
    let next = Payment::for_requirement(&req);
    let (status, headers, body) = send_payment(&s, &next.header()).await;
    assert_eq!(status, 410, "{body}");
    assert_eq!(body["invoice_ended"], true, "{body}");
    assert!(body.get("iccid").is_none(), "{body}");
    assert!(headers.get("payment-response").is_none(), "{headers:?}");
    assert_eq!(s.balance(agent()).await, start);
    assert!(!s.nonce_used(agent(), next.auth.nonce).await);

    let (kinds, _) = verified_ledger(&s).await;
    assert_eq!(count(&kinds, "settlement_confirmed"), 0, "{kinds:?}");
    assert_eq!(count(&kinds, "settlement_failed"), 1, "{kinds:?}");
    assert_eq!(count(&kinds, "activation_failed"), 1, "{kinds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_after_the_invoice_is_marked_paid_the_same_payment_logs_it_once() {
    crash_and_pay_again(Crash {
        failpoint: "invoice/#2",
        store: Store::Sqlite,
        verified: 2,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_after_the_data_is_credited_the_same_payment_logs_it_once() {
    crash_and_pay_again(Crash {
        failpoint: "balance/",
        store: Store::Redis,
        verified: 2,
    })
    .await;
}

/// The refund job killed right after a refund's transfer was recorded paid (`refund/inv_#4`: owed, claimed,
/// submitted, paid), before its `refund_paid` reached the ledger: a run once the killed one is surely over
/// sends nothing again and hands the event back as a repeat, which the ledger keeps once. (Before, the paid refund was gone from the queue at
/// the next run, and its event with the killed run.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_after_a_refund_is_paid_the_next_run_logs_it_once() {
    let mut s = PayStack::start_with(
        Some((&Runner::Host, Store::Sqlite)),
        &[
            ("ESIM402_FAILPOINT", "refund/inv_#4"),
            ("SPIN_VARIABLE_ES2_TIMEOUT_MS", "2000"),
        ],
    )
    .await;
    let body =
        serde_json::json!({"region": "us-west", "data_mb": 100, "payer": agent().to_string()});
    let (invoice, req) = s.invoice(&body).await;
    let id = invoice["invoice_id"].as_str().unwrap().to_owned();
    let start = s.balance(agent()).await;
    let tx =
        crate::payments::pay_directly(&s, esim402_host::devstack::chain::RECIPIENT, price(&req))
            .await;
    s.break_us_west().await;
    let (status, _, failed) = s
        .post(
            "/v1/esim/activate",
            &body,
            &crate::payments::proof_headers(&tx, &id),
        )
        .await;
    assert_eq!(status, 503, "{failed}");
    assert_eq!(failed["refund"]["status"], "owed", "{failed}");

    let run = s
        .http
        .post(format!("{}/admin/refunds/run", s.url))
        .bearer_auth(s.admin_token.clone());
    kill_during(&mut s, run, "refund/inv_#4").await;
    assert_eq!(s.balance(agent()).await, start, "the refund was paid");

    // Restarted once the killed run is surely over (kernel `refund::RELOG_AFTER_SECS`).
    restart_later(&mut s, esim402_core::refund::RELOG_AFTER_SECS + 1, &[]).await;
    let (status, summary) = s.run_refunds().await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["paid"], serde_json::json!([]), "{summary}");
    assert_eq!(summary["remaining"], 0, "{summary}");
    assert_eq!(s.balance(agent()).await, start, "paid once");

    let (kinds, _) = verified_ledger(&s).await;
    for k in ["refund_owed", "refund_paid"] {
        assert_eq!(count(&kinds, k), 1, "{k}: {kinds:?}");
    }
}

/// A terminate killed right after it recorded the refund of the SIM's unused data (`refund/inv_`: its first
/// write), before `refund_owed` reached the ledger: terminating again once the first is surely over owes
/// nothing new and logs the event as a repeat, which the ledger keeps once. (Before, the repeat logged
/// nothing, and the owed refund never reached the ledger.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_after_a_terminate_owes_its_refund_terminating_again_logs_it_once() {
    let mut s = PayStack::start_with(
        Some((&Runner::Host, Store::Sqlite)),
        &[("ESIM402_FAILPOINT", "refund/inv_")],
    )
    .await;
    let act = s.activate_paid(&activation(), &[]).await;
    let iccid = act["iccid"].as_str().unwrap().to_owned();
    let terminate = format!("/v1/esim/{iccid}/terminate");
    let req = s
        .http
        .post(format!("{}{terminate}", s.url))
        .header("sign-in-with-x", s.sign_in(&terminate))
        .json(&serde_json::json!({}));
    kill_during(&mut s, req, "refund/inv_").await;

    let skew = esim402_core::refund::RELOG_AFTER_SECS + 1;
    restart_later(&mut s, skew, &[]).await;
    let r = s
        .http
        .post(format!("{}{terminate}", s.url))
        .header("sign-in-with-x", s.sign_in_ahead(&terminate, skew))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let again: serde_json::Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        again["refunds"].as_array().map(Vec::len),
        Some(1),
        "{again}"
    );

    let (kinds, _) = verified_ledger(&s).await;
    assert_eq!(count(&kinds, "refund_owed"), 1, "{kinds:?}");
}

/// A payment interrupted after its order (`order/#3`) and sent again while the chain cannot be reached: the
/// verification cannot run (503), which decides nothing: the ordered profile is not withdrawn, and the same
/// payment sent again once the chain is back completes, charged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resumed_payment_that_cannot_reach_the_chain_keeps_its_order() {
    let mut s = PayStack::start_with(
        Some((&Runner::Host, Store::Sqlite)),
        &[("ESIM402_FAILPOINT", "order/#3")],
    )
    .await;
    let start = s.balance(agent()).await;
    let (_, req) = s.invoice(&activation()).await;
    let pay = Payment::for_requirement(&req);
    let header = pay.header();
    stall_and_kill(&mut s, &header, "order/#3").await;
    let ordered = s.handed_out().await;

    let dead = {
        let l = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        format!("http://127.0.0.1:{}", l.local_addr().unwrap().port())
    };
    restart_later(&mut s, LEASE_SECS + 1, &[("SPIN_VARIABLE_RPC_URL", &dead)]).await;
    let (status, _, body) = send_payment(&s, &header).await;
    assert!(status >= 500, "{status}: {body}");
    assert_eq!(s.handed_out().await, ordered, "the order stands");

    restart_later(&mut s, LEASE_SECS + 1, &[]).await;
    let (status, _, body) = send_payment(&s, &header).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        Some(body["iccid"].as_str().unwrap().to_owned()),
        ordered.into_iter().next(),
        "the profile ordered before"
    );
    assert_eq!(
        s.balance(agent()).await,
        start - price(&req),
        "charged once"
    );
}

/// Receipt ingest killed right after the batch was charged and its ledger events held (`meter/held/`: the
/// write that holds them), before they reached the ledger: the next ledger verify, once the batch's request is
/// surely over (kernel `usage::held::RELOG_AFTER_SECS`), logs them once, naming what was charged; a second
/// verify adds nothing, and the batch sent again charges and logs nothing. (Before, the events were lost for
/// good: a replayed batch charges nothing and logs nothing.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_after_a_usage_batch_is_charged_the_next_verify_logs_its_events_once() {
    use crate::metering::receipt;
    let mut s = PayStack::start_with(
        Some((&Runner::Host, Store::Sqlite)),
        &[("ESIM402_FAILPOINT", "meter/held/")],
    )
    .await;
    let act = s.activate_paid(&activation(), &[]).await;
    let iccid = act["iccid"].as_str().unwrap().to_owned();
    let batch = serde_json::json!({"receipts": [
        receipt(&iccid, "crash", 1, 10_000, "310-260"),
        receipt(&iccid, "crash", 2, 5_000, "310-260"),
    ]});
    let req = s.http.post(format!("{}/v1/usage", s.url)).json(&batch);
    kill_during(&mut s, req, "meter/held/").await;

    restart_later(&mut s, esim402_core::usage::held::RELOG_AFTER_SECS + 1, &[]).await;
    let used = |b: serde_json::Value| b["used_bytes"].clone();
    let (_, b) = s.get(&format!("/v1/esim/{iccid}/balance")).await;
    assert_eq!(used(b), 15_000, "charged before the crash");

    // Verify first (it logs what the crash left held), then read the ledger, twice.
    for round in 0..2 {
        let (status, verify) = s.get("/v1/ledger/verify").await;
        assert_eq!(
            (status, &verify["ok"]),
            (200, &serde_json::json!(true)),
            "{verify}"
        );
        let recovered = (round == 0).then_some(1);
        assert_eq!(verify["recovered"].as_u64(), recovered, "{verify}");
        let entries = s.ledger_entries().await;
        let charged: Vec<_> = entries
            .iter()
            .filter(|e| e["kind"] == "usage_charged")
            .collect();
        assert_eq!(charged.len(), 1, "round {round}: {charged:?}");
        assert_eq!(charged[0]["details"]["bytes"], "15000", "{}", charged[0]);
        assert_eq!(charged[0]["details"]["iccid"], iccid.as_str());
    }

    let (status, _, again) = s.post("/v1/usage", &batch, &[]).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["totals"]["duplicate"], 2, "{again}");
    let (_, b) = s.get(&format!("/v1/esim/{iccid}/balance")).await;
    assert_eq!(used(b), 15_000, "charged once");
    let (kinds, _) = verified_ledger(&s).await;
    assert_eq!(count(&kinds, "usage_charged"), 1, "{kinds:?}");
}

/// A payment killed right after its invoice was marked paid (`invoice/#2`) and sent again only once its
/// authorization has expired: the settlement is ours and confirmed, so the resumed attempt still verifies and
/// completes with the SIM the first attempt ordered, charged once, each event logged once; the SIM is never
/// withdrawn. (The other crash tests send the payment again within its validity.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paid_invoice_resumed_after_its_authorization_expired_completes_with_its_sim() {
    let mut s = PayStack::start_with(
        Some((&Runner::Host, Store::Sqlite)),
        &[("ESIM402_FAILPOINT", "invoice/#2")],
    )
    .await;
    let start = s.balance(agent()).await;
    let (_, req) = s.invoice(&activation()).await;
    let header = Payment::for_requirement(&req).header();
    stall_and_kill(&mut s, &header, "invoice/#2").await;

    restart_later(&mut s, req.max_timeout_seconds + LEASE_SECS + 1, &[]).await;
    let (status, _, body) = send_payment(&s, &header).await;
    assert_eq!(status, 200, "{body}");
    let profiles = s.handed_out().await;
    assert_eq!(
        profiles.into_iter().collect::<Vec<_>>(),
        [body["iccid"].as_str().unwrap()],
        "the profile the first attempt ordered"
    );
    let (_, sim) = s
        .get(&format!("/v1/esim/{}", body["iccid"].as_str().unwrap()))
        .await;
    assert_eq!(sim["state"], "active", "{sim}");
    assert_eq!(
        s.balance(agent()).await,
        start - price(&req),
        "charged once"
    );
    let (kinds, _) = verified_ledger(&s).await;
    for k in [
        "settlement_confirmed",
        "activation_completed",
        "data_credited",
    ] {
        assert_eq!(count(&kinds, k), 1, "{k}: {kinds:?}");
    }
    assert_eq!(count(&kinds, "activation_failed"), 0, "{kinds:?}");
}

/// A paid switch killed right after its balance move reached the new SIM's account (`balance/#3`: the old
/// SIM's activation credit, its move out, the new SIM's credit): the same payment sent again after the lease
/// completes the switch and logs the move once, under the switch's invoice. (Before, the resumed move found the
/// credit landed, `new` was false, and its `data_credited` event was never logged.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_after_a_switch_moved_the_balance_the_same_payment_logs_the_move_once() {
    let failpoint = "balance/#3";
    let mut s = PayStack::start_with(
        Some((&Runner::Host, Store::Sqlite)),
        &[("ESIM402_FAILPOINT", failpoint)],
    )
    .await;
    let act = s.activate_paid(&activation(), &[]).await;
    let old = act["iccid"].as_str().unwrap().to_owned();
    let path = format!("/v1/esim/{old}/switch");
    let target = serde_json::json!({"carrier": "verizon"});
    let (_, req) = s.challenge(&path, &target).await;
    let header = Payment::for_requirement(&req).header();
    let paid = s
        .http
        .post(format!("{}{path}", s.url))
        .header("payment-signature", header.clone())
        .bearer_auth(act["access_token"].as_str().unwrap())
        .json(&target);
    kill_during(&mut s, paid, failpoint).await;

    restart_later(&mut s, LEASE_SECS + 1, &[]).await;
    let (status, _, new_sim) = s
        .post(&path, &target, &[("payment-signature", header)])
        .await;
    assert_eq!(status, 200, "{new_sim}");
    let moves: Vec<_> = s
        .ledger_entries()
        .await
        .into_iter()
        .filter(|e| e["kind"] == "data_credited" && e["details"]["kind"] == "transfer")
        .collect();
    assert_eq!(moves.len(), 1, "the move logged once: {moves:?}");
    assert_eq!(moves[0]["invoice_id"], new_sim["invoice_id"], "{moves:?}");
    let (_, verify) = s.get("/v1/ledger/verify").await;
    assert_eq!(verify["ok"], true, "{verify}");
}

/// Killed with a failed-over order's second profile allocated (T-Mobile refused, Verizon's step journaled, its
/// SIM not yet stored): the resumed order still names the failover, and the data is valued at the quoted
/// carrier's rate, so terminating the SIM unused owes back the data part, not the fee. The step's journal write
/// carries the failovers; before, a separate write did, and a resumed order whose separate write had failed
/// reported none and refunded at Verizon's rate, capped at the whole invoice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_after_a_failover_the_resumed_order_keeps_the_quoted_rate() {
    let failpoint = "order/#2";
    let mut s = PayStack::start_with(
        Some((&Runner::Host, Store::Sqlite)),
        &[("ESIM402_FAILPOINT", failpoint)],
    )
    .await;
    s.set_faults("tmobile", serde_json::json!({"http_503": true}))
        .await;
    let (_, req) = s.invoice(&activation()).await;
    // 100 MB at T-Mobile's $0.003 per MB and the $0.12 activation fee.
    assert_eq!(req.amount, "420000");
    let header = Payment::for_requirement(&req).header();
    stall_and_kill(&mut s, &header, failpoint).await;

    restart_later(&mut s, LEASE_SECS + 1, &[]).await;
    let (status, _, act) = send_payment(&s, &header).await;
    assert_eq!(status, 200, "{act}");
    assert_eq!(act["carrier"], "verizon", "{act}");
    let failovers = act["failovers"].as_array().unwrap();
    assert_eq!(failovers.len(), 1, "{act}");
    assert!(failovers[0].as_str().unwrap().contains("tmobile"), "{act}");
    let iccid = act["iccid"].as_str().unwrap();
    let (status, _, term) = s
        .post(
            &format!("/v1/esim/{iccid}/terminate"),
            &serde_json::json!({}),
            &[],
        )
        .await;
    assert_eq!(status, 200, "{term}");
    let refunds = term["refunds"].as_array().unwrap();
    assert_eq!(refunds.len(), 1, "{term}");
    assert_eq!(refunds[0]["amount"], "300000", "{term}");
    verified_ledger(&s).await;
}

/// A settlement front-run: the facilitator signed a payment's settlement (its hash recorded; killed before the
/// broadcast), and the payer sends that same authorization itself. That transaction is the payment's money (the
/// payment is left for an operator to settle with it): presented as a tx-hash proof of another invoice of the
/// same payer, it is refused (before, it paid that invoice too, one transfer behind two).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transaction_executing_a_held_authorization_pays_no_tx_hash_invoice() {
    let failpoint = "x402/nonce/#2";
    let mut s = PayStack::start_with(
        Some((&Runner::Host, Store::Sqlite)),
        &[("ESIM402_FAILPOINT", failpoint)],
    )
    .await;
    let (_, req) = s.invoice(&activation()).await;
    let pay = Payment::for_requirement(&req);
    stall_and_kill(&mut s, &pay.header(), failpoint).await;
    let tx = s.send_token(agent(), pay.calldata()).await;
    s.mined(&tx).await;

    restart_later(&mut s, 0, &[]).await;
    let body =
        serde_json::json!({"region": "us-west", "data_mb": 100, "payer": agent().to_string()});
    let (other, other_req) = s.invoice(&body).await;
    assert_eq!(other_req.amount, req.amount);
    let id = other["invoice_id"].as_str().unwrap();
    let (status, _, refused) = s
        .post("/v1/esim/activate", &body, &proof_headers(&tx, id))
        .await;
    assert_eq!(status, 409, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("executes an authorization"),
        "{refused}"
    );
    let (_, inv) = s.get(&format!("/v1/invoices/{id}")).await;
    assert_eq!(inv["status"], "open", "{inv}");
}

/// A payment whose settlement the facilitator recorded and died before broadcasting (`x402/nonce/#2`), after
/// which its payer sent `call` (its authorization executed or canceled), mined; the host restarted past the
/// payment's lease.
struct Held {
    s: PayStack,
    invoice: serde_json::Value,
    req: esim402_core::x402::wire::PaymentRequirements,
    header: String,
    tx: String,
    start: alloy_primitives::U256,
}

async fn held_then(call: impl Fn(&Payment) -> Vec<u8>) -> Held {
    let failpoint = "x402/nonce/#2";
    let mut s = PayStack::start_with(
        Some((&Runner::Host, Store::Sqlite)),
        &[("ESIM402_FAILPOINT", failpoint)],
    )
    .await;
    let start = s.balance(agent()).await;
    let (invoice, req) = s.invoice(&activation()).await;
    let pay = Payment::for_requirement(&req);
    let header = pay.header();
    stall_and_kill(&mut s, &header, failpoint).await;
    let tx = s.send_token(agent(), call(&pay)).await;
    s.mined(&tx).await;
    assert!(s.nonce_used(agent(), pay.auth.nonce).await);
    restart_later(&mut s, LEASE_SECS + 1, &[]).await;
    Held {
        s,
        invoice,
        req,
        header,
        tx,
        start,
    }
}

/// Held, then front-run: the facilitator recorded a payment's settlement and died before the broadcast; the
/// payer then executed the same authorization itself. Sent again, the payment's own transaction reverts, the
/// token's `AuthorizationUsed` log names the payer's, whose transfer is this payment's money: the payment is
/// settled by that transaction and the SIM delivered (before, it stayed pending for an operator). A refund
/// is owed against it, and the payer's transaction pays no other invoice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_settlement_front_run_by_its_payer_is_settled_by_the_payers_transaction() {
    let Held {
        s,
        invoice,
        req,
        header,
        tx,
        start,
    } = held_then(Payment::calldata).await;
    let (status, headers, body) = send_payment(&s, &header).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["activation_code"]
            .as_str()
            .unwrap()
            .starts_with("LPA:1$"),
        "{body}"
    );
    assert_eq!(body["transaction"], tx.as_str(), "{body}");
    assert!(headers.contains_key("payment-response"));
    assert_eq!(
        s.balance(agent()).await,
        start - price(&req),
        "charged once"
    );
    let id = invoice["invoice_id"].as_str().unwrap();
    let (_, inv) = s.get(&format!("/v1/invoices/{id}")).await;
    assert_eq!(inv["status"], "paid", "{inv}");
    assert_eq!(inv["transaction"], tx.as_str(), "{inv}");
    // Sent again: a terminal 409, nothing moves.
    let (again, _, b) = send_payment(&s, &header).await;
    assert_eq!(again, 409, "{b}");

    // The payer's transaction pays no other invoice.
    let body2 =
        serde_json::json!({"region": "us-west", "data_mb": 100, "payer": agent().to_string()});
    let (other, _) = s.invoice(&body2).await;
    let other_id = other["invoice_id"].as_str().unwrap();
    let (refused, _, why) = s
        .post("/v1/esim/activate", &body2, &proof_headers(&tx, other_id))
        .await;
    assert_eq!(refused, 409, "{why}");

    // Terminated at once: the refund of the unused data is owed against the payer's transaction (its
    // `txhash/` claim leads to this payment's settlement).
    let iccid = body["iccid"].as_str().unwrap();
    let (st, _, term) = s
        .post(
            &format!("/v1/esim/{iccid}/terminate"),
            &serde_json::json!({}),
            &[],
        )
        .await;
    assert_eq!(st, 200, "{term}");
    assert_eq!(term["refunds"].as_array().unwrap().len(), 1, "{term}");
    let (kinds, _) = verified_ledger(&s).await;
    assert_eq!(count(&kinds, "settlement_confirmed"), 1, "{kinds:?}");
    assert_eq!(count(&kinds, "settlement_failed"), 0, "{kinds:?}");
    assert_eq!(count(&kinds, "activation_completed"), 1, "{kinds:?}");
}

/// Held, then canceled: the facilitator recorded a payment's settlement and died before the broadcast; the
/// payer then canceled the authorization (`cancelAuthorization`). Sent again, the payment's own transaction
/// reverts and the token's `AuthorizationCanceled` log shows no money moved: the settlement fails and the
/// profile is withdrawn (before, it stayed pending for an operator).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_held_settlement_whose_authorization_was_canceled_fails() {
    let Held {
        s,
        invoice,
        header,
        start,
        ..
    } = held_then(Payment::cancel_calldata).await;
    let (status, _, body) = send_payment(&s, &header).await;
    assert_eq!(status, 402, "{body}");
    assert!(body.to_string().contains("transaction_failed"), "{body}");
    assert_eq!(s.balance(agent()).await, start, "nothing moved");
    let id = invoice["invoice_id"].as_str().unwrap();
    let (_, inv) = s.get(&format!("/v1/invoices/{id}")).await;
    assert_ne!(inv["status"], "paid", "{inv}");
    // The profile ordered for it was withdrawn: the payer's one SIM, as its owner lists it, is terminated.
    let sims = owners_sims(&s).await;
    assert_eq!(sims.len(), 1, "{sims:?}");
    assert_eq!(sims[0]["state"], "terminated", "{sims:?}");
    let (kinds, _) = verified_ledger(&s).await;
    assert_eq!(count(&kinds, "settlement_confirmed"), 0, "{kinds:?}");
    assert_eq!(count(&kinds, "activation_completed"), 0, "{kinds:?}");
}

/// The SIMs of the demo agent's wallet, as its owner lists them (signed in ahead of the restarted host's clock).
async fn owners_sims(s: &PayStack) -> Vec<serde_json::Value> {
    let list: serde_json::Value = s
        .http
        .get(format!("{}/v1/esim", s.url))
        .header(
            "sign-in-with-x",
            s.sign_in_ahead("/v1/esim", LEASE_SECS + 1),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    list["sims"].as_array().unwrap().clone()
}

/// Held, then canceled, with a top-up paid for the held SIM in between (anyone may pay a SIM's top-up): when
/// the settlement fails and the profile is withdrawn, the SIM's metering account is closed as a terminate
/// closes it, so the top-up is owed back at once (before, only when its owner terminated the SIM again).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_top_up_of_a_withdrawn_sim_is_owed_back() {
    let Held {
        s, header, start, ..
    } = held_then(Payment::cancel_calldata).await;
    let sims = owners_sims(&s).await;
    let iccid = sims[0]["iccid"].as_str().unwrap().to_owned();
    let data = format!("/v1/esim/{iccid}/data");
    let ask = serde_json::json!({"top_up_mb": 10});
    let (low, req) = s.challenge(&data, &ask).await;
    let top_up = Payment::for_requirement(&req).header();
    let (status, _, paid) = s.post(&data, &ask, &[("payment-signature", top_up)]).await;
    assert_eq!(status, 200, "{paid}");
    assert_eq!(paid["topped_up_mb"], 10, "{paid}");

    let (status, _, body) = send_payment(&s, &header).await;
    assert_eq!(status, 402, "{body}");
    assert!(body.to_string().contains("transaction_failed"), "{body}");
    let sims = owners_sims(&s).await;
    assert_eq!(sims[0]["state"], "terminated", "{sims:?}");
    let owed: Vec<_> = s
        .ledger_entries()
        .await
        .into_iter()
        .filter(|e| e["kind"] == "refund_owed")
        .collect();
    assert_eq!(owed.len(), 1, "the top-up is owed back: {owed:?}");
    assert_eq!(owed[0]["invoice_id"], low["invoice_id"], "{owed:?}");
    // The refund job pays it: the payer has every cent back (the activation never settled).
    let (status, summary) = s.run_refunds().await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(s.balance(agent()).await, start, "the top-up was refunded");
    let (kinds, _) = verified_ledger(&s).await;
    assert_eq!(count(&kinds, "refund_owed"), 1, "{kinds:?}");
    assert_eq!(count(&kinds, "refund_paid"), 1, "{kinds:?}");
}

/// A tx-hash payment held by a crash (its transfer claimed for the invoice, the invoice not marked paid) is its
/// payer's: someone who resends the public hash with a signature that does not verify gets a 402 and does not
/// end it, so no other payment can take the invoice meanwhile, and the payer's own proof sent again completes
/// it. (Before, the bad signature released the payment: another payment took the invoice, and the payer's
/// transfer was refused with nothing delivered and nothing owed back.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_signature_does_not_end_a_held_tx_hash_payment() {
    let failpoint = "txhash/";
    let mut s = PayStack::start_with(
        Some((&Runner::Host, Store::Sqlite)),
        &[("ESIM402_FAILPOINT", failpoint)],
    )
    .await;
    let body =
        serde_json::json!({"region": "us-west", "data_mb": 100, "payer": agent().to_string()});
    let (invoice, req) = s.invoice(&body).await;
    let id = invoice["invoice_id"].as_str().unwrap().to_owned();
    let start = s.balance(agent()).await;
    let tx =
        crate::payments::pay_directly(&s, esim402_host::devstack::chain::RECIPIENT, price(&req))
            .await;
    let proof = proof_headers(&tx, &id);
    let mut held = s
        .http
        .post(format!("{}/v1/esim/activate", s.url))
        .json(&body);
    for (k, v) in &proof {
        held = held.header(*k, v);
    }
    kill_during(&mut s, held, failpoint).await;
    restart_later(&mut s, LEASE_SECS + 1, &[]).await;

    // Malformed: refused (400) before the payment it names is touched.
    let mut malformed = proof.clone();
    malformed[1].1 = "0xzz".into();
    let (status, _, refused) = s.post("/v1/esim/activate", &body, &malformed).await;
    assert_eq!(status, 400, "{refused}");
    let mut forged = proof.clone();
    forged[1].1 = esim402_tests::sign_proof(
        "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
        &id,
        &tx,
    );
    let (status, _, refused) = s.post("/v1/esim/activate", &body, &forged).await;
    assert_eq!(status, 402, "{refused}");
    // Another payment cannot take the invoice meanwhile.
    let other = Payment::for_requirement(&req);
    let (status, _, taken) = s
        .post(
            "/v1/esim/activate",
            &body,
            &[("payment-signature", other.header())],
        )
        .await;
    assert_ne!(status, 200, "{taken}");
    assert!(!s.nonce_used(agent(), other.auth.nonce).await);
    // The payer's own proof completes it.
    let (status, _, done) = s.post("/v1/esim/activate", &body, &proof).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["transaction"], tx.as_str(), "{done}");
    assert_eq!(s.balance(agent()).await, start - price(&req), "paid once");
}
