//! A download the SM-DP+ gives up on (its download-attempt limit, `8.8.5/6.4`) through the host, on anvil and the
//! SM-DP+ simulator: the simulated device stays away (`no_device`) so the profile stays released, then the
//! simulator fails its download and sends the terminal HandleDownloadProgressInfo with the carrier's callback
//! credential. The SIM reads `failed`, the profile is retired at the SM-DP+ (CancelOrder `Unavailable`), and
//! the payment goes back through the refund job: a fresh activation's whole payment (fee included), or, for a
//! switch's replacement, the switch fee, with the moved balance back on the old SIM. Sending the callback again
//! owes nothing more, and the ledger verifies. Before, such a SIM stayed active with its profile in error and
//! the money was kept.

use std::time::{Duration, Instant};

use alloy_primitives::U256;
use esim402_core::x402::header::decode_payment_required_header;
use serde_json::{Value, json};

use crate::payments::{PayStack, Payment, agent};

/// The simulator's view of `iccid` at operator `op` (its state, e.g. `Released`, `Error`, `Unavailable`).
async fn profile_state(s: &PayStack, op: &str, iccid: &str) -> String {
    let p: Value = s
        .http
        .get(format!(
            "{}/admin/operators/{op}/profiles/{iccid}",
            s.sim.url
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    p["state"].as_str().unwrap_or_default().to_owned()
}

/// The device's download of `iccid` fails for good: the simulator sends point 3 `Failed` `8.8.5/6.4`.
async fn fail_download(s: &PayStack, op: &str, iccid: &str) {
    let r = s
        .http
        .post(format!(
            "{}/admin/operators/{op}/profiles/{iccid}/fail",
            s.sim.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

/// Wait (at most 20 s) until `check` holds.
async fn eventually<F: AsyncFn() -> bool>(what: &str, check: F) {
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The terminal notification for `iccid` sent again, as the carrier's SM-DP+ would: its answer's status.
async fn callback_again(s: &PayStack, iccid: &str, credential: &str, profile_type: &str) -> u16 {
    let body = json!({"header": {"functionRequesterIdentifier": "smdp", "functionCallIdentifier": "again-1"},
        "iccid": iccid, "profileType": profile_type, "timestamp": "2026-11-24T10:00:00Z",
        "notificationPointId": 3, "notificationPointStatus": {"status": "Failed",
            "statusCodeData": {"subjectCode": "8.8.5", "reasonCode": "6.4", "message": "again"}}});
    s.http
        .post(format!(
            "{}/gsma/rsp2/es2plus/handleDownloadProgressInfo",
            s.url
        ))
        .bearer_auth(credential)
        .header("x-admin-protocol", "gsma/rsp/v2.5.0")
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The refund job pays what is owed, bringing the payer's balance to `expect` (`why`); the SM-DP+ then
/// repeating the notification of `iccid` (`credential`, `profile_type`) gets 204 and nothing more is owed or
/// paid: `owed` refunds in the ledger, which verifies. The ledger's kinds, for more checks.
async fn refunded_once(
    s: &PayStack,
    (iccid, credential, profile_type): (&str, &str, &str),
    expect: U256,
    owed: usize,
    why: &str,
) -> Vec<String> {
    let (status, summary) = s.run_refunds().await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(s.balance(agent()).await, expect, "{why}");
    assert_eq!(
        callback_again(s, iccid, credential, profile_type).await,
        204
    );
    let (status, summary) = s.run_refunds().await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(s.balance(agent()).await, expect, "nothing paid twice");
    let (kinds, verify) = s.ledger().await;
    assert_eq!(count(&kinds, "refund_owed"), owed, "{kinds:?}");
    assert_eq!(verify["ok"], true, "{verify}");
    kinds
}

fn count(kinds: &[String], kind: &str) -> usize {
    kinds.iter().filter(|k| *k == kind).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_download_that_can_never_finish_fails_the_sim_and_refunds_its_whole_payment() {
    let s = PayStack::start(&[]).await;
    s.set_faults("tmobile", json!({"no_device": true})).await;
    let start = s.balance(agent()).await;
    let act = s
        .activate_paid(&json!({"region": "us-west", "data_mb": 10}), &[])
        .await;
    let iccid = act["iccid"].as_str().unwrap().to_owned();
    assert_eq!(act["carrier"], "tmobile", "{act}");
    // 10 MB at $0.003/MB and the $0.12 activation fee.
    let paid = start - s.balance(agent()).await;
    assert_eq!(paid, U256::from(150_000u64));
    assert_eq!(profile_state(&s, "tmobile", &iccid).await, "Released");

    fail_download(&s, "tmobile", &iccid).await;
    let path = format!("/v1/esim/{iccid}");
    eventually("the SIM reads failed", async || {
        s.get(&path).await.1["state"] == "failed"
    })
    .await;
    let (status, sim) = s.get(&path).await;
    assert_eq!(
        (status, &sim["profile_state"]),
        (200, &json!("error")),
        "{sim}"
    );
    // The profile is retired at the SM-DP+: nobody can download it any more.
    eventually("the profile is cancelled", async || {
        profile_state(&s, "tmobile", &iccid).await == "Unavailable"
    })
    .await;
    // The whole payment is owed back (its data was never used), and the refund job pays it.
    eventually("the refund is owed", async || {
        count(&s.ledger().await.0, "refund_owed") == 1
    })
    .await;
    let b = s.get(&format!("/v1/esim/{iccid}/balance")).await.1;
    assert_eq!(b["closed"], true, "{b}");
    // The same notification again (the SM-DP+ repeating it): 204, nothing more owed or paid.
    let kinds = refunded_once(
        &s,
        (&iccid, "test-callback-tmobile", "tmo-iot-data"),
        start,
        1,
        "the whole payment is back",
    )
    .await;
    assert_eq!(count(&kinds, "refund_paid"), 1, "{kinds:?}");
    // A failed SIM is granted no quota and sold no top-up.
    let (status, _, q) = s
        .post(
            &format!("/v1/esim/{iccid}/data"),
            &json!({"quota_kb": 1}),
            &[],
        )
        .await;
    assert_eq!(status, 409, "{q}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_switch_whose_new_profile_can_never_install_gives_the_balance_back() {
    let s = PayStack::start(&[]).await;
    // The old SIM (T-Mobile, installed by the simulated device) with 4 of its 10 MB used.
    let act = s
        .activate_paid(&json!({"region": "us-west", "data_mb": 10}), &[])
        .await;
    let old = act["iccid"].as_str().unwrap().to_owned();
    s.post(
        "/v1/usage",
        &json!({"receipts": [crate::metering::receipt(&old, "s", 1, 4_000_000, "310-260")]}),
        &[],
    )
    .await;
    // The switch to Verizon, whose device never downloads.
    s.set_faults("verizon", json!({"no_device": true})).await;
    let path = format!("/v1/esim/{old}/switch");
    let target = json!({"carrier": "verizon"});
    let (status, headers, _) = s.post(&path, &target, &[]).await;
    assert_eq!(status, 402);
    let req = decode_payment_required_header(headers["payment-required"].to_str().unwrap())
        .unwrap()
        .accepts[0]
        .clone();
    let before = s.balance(agent()).await;
    let pay = Payment::for_requirement(&req);
    let (status, _, new_sim) = s
        .post(&path, &target, &[("payment-signature", pay.header())])
        .await;
    assert_eq!(status, 200, "{new_sim}");
    let new = new_sim["iccid"].as_str().unwrap().to_owned();
    let fee = before - s.balance(agent()).await;
    assert!(fee > U256::ZERO);
    let old_balance = format!("/v1/esim/{old}/balance");
    assert_eq!(s.get(&old_balance).await.1["closed"], true, "moved");

    fail_download(&s, "verizon", &new).await;
    eventually("the replacement reads failed", async || {
        s.get(&format!("/v1/esim/{new}")).await.1["state"] == "failed"
    })
    .await;
    eventually("the replacement's profile is cancelled", async || {
        profile_state(&s, "verizon", &new).await == "Unavailable"
    })
    .await;
    eventually("the switch fee is owed back", async || {
        count(&s.ledger().await.0, "refund_owed") == 1
    })
    .await;
    // The old SIM stays in service with its balance back: 6 MB, as if it had never moved.
    let (_, old_sim) = s.get(&format!("/v1/esim/{old}")).await;
    assert_eq!(old_sim["state"], "active", "{old_sim}");
    let b = s.get(&old_balance).await.1;
    assert_eq!(
        (&b["closed"], &b["remaining_bytes"]),
        (&json!(false), &json!(6_000_000)),
        "{b}"
    );
    let (status, _, q) = s
        .post(
            &format!("/v1/esim/{old}/data"),
            &json!({"quota_kb": 100}),
            &[],
        )
        .await;
    assert_eq!((status, &q["granted_kb"]), (200, &json!(100)), "{q}");
    refunded_once(
        &s,
        (&new, "test-callback-verizon", "vzw-iot-data"),
        before,
        1,
        "the switch fee is back",
    )
    .await;
    assert_eq!(
        s.get(&old_balance).await.1["remaining_bytes"],
        6_000_000,
        "nothing moves twice"
    );
}

/// A SIM whose own download never finished, switched away before it failed, then its replacement failing too:
/// the balance comes back to the old SIM, failed itself, and is owed as its failure owes it: its activation's
/// whole payment (fee included, none of its data used), with the switch fee. Its own failure owed nothing (its
/// balance had moved). Before, the balance that came back was closed as a terminate closes it: its unused data
/// only ($0.03 of the $0.15), the activation fee kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_old_sim_that_failed_itself_gets_its_whole_payment_back_when_its_replacement_fails() {
    let s = PayStack::start(&[]).await;
    s.set_faults("tmobile", json!({"no_device": true})).await;
    s.set_faults("verizon", json!({"no_device": true})).await;
    let start = s.balance(agent()).await;
    let act = s
        .activate_paid(&json!({"region": "us-west", "data_mb": 10}), &[])
        .await;
    let old = act["iccid"].as_str().unwrap().to_owned();
    assert_eq!(act["carrier"], "tmobile", "{act}");
    let path = format!("/v1/esim/{old}/switch");
    let target = json!({"carrier": "verizon"});
    let (status, headers, _) = s.post(&path, &target, &[]).await;
    assert_eq!(status, 402);
    let req = decode_payment_required_header(headers["payment-required"].to_str().unwrap())
        .unwrap()
        .accepts[0]
        .clone();
    let pay = Payment::for_requirement(&req);
    let (status, _, new_sim) = s
        .post(&path, &target, &[("payment-signature", pay.header())])
        .await;
    assert_eq!(status, 200, "{new_sim}");
    let new = new_sim["iccid"].as_str().unwrap().to_owned();

    // The old SIM's download fails first: nothing is owed (its balance is on the replacement).
    fail_download(&s, "tmobile", &old).await;
    eventually("the old SIM's profile is cancelled", async || {
        profile_state(&s, "tmobile", &old).await == "Unavailable"
    })
    .await;
    assert_eq!(s.get(&format!("/v1/esim/{old}")).await.1["state"], "failed");
    assert_eq!(count(&s.ledger().await.0, "refund_owed"), 0);

    fail_download(&s, "verizon", &new).await;
    eventually("the replacement's profile is cancelled", async || {
        profile_state(&s, "verizon", &new).await == "Unavailable"
    })
    .await;
    eventually(
        "the activation and the switch fee are owed back",
        async || count(&s.ledger().await.0, "refund_owed") == 2,
    )
    .await;
    refunded_once(
        &s,
        (&new, "test-callback-verizon", "vzw-iot-data"),
        start,
        2,
        "both payments back whole",
    )
    .await;
}
