//! The metering component in wasmtime: credits, receipt ingest (verify, claim, log, charge), exhaustion,
//! closing, queries. Receipts are signed here with the carriers' dev keys (kernel `usage::receipt`).

use esim402_core::CarrierId;
use esim402_core::esim::iccid::Iccid;
use esim402_core::esim::plmn::Plmn;
use esim402_core::usage::ingest::parse_charges;
use esim402_core::usage::receipt::{Receipt, dev_signing_key};
use esim402_testkit::{Kit, types};
use serde_json::{Value, json};

mod charges;
mod grants;

const MB: u64 = 1_000_000;

fn iccid(n: u32) -> String {
    Iccid::with_check_digit(&format!("89012600000000{n:04}"))
        .unwrap()
        .to_string()
}

fn sim(iccid: &str, carrier: &str) -> types::Sim {
    types::Sim {
        iccid: iccid.into(),
        carrier: carrier.into(),
        region: "us-west".into(),
        state: types::SimState::Active,
        profile_state: types::ProfileState::Released,
        activation_code: Some("LPA:1$smdp.example$X".into()),
        eid: None,
        roaming: types::RoamingPolicy {
            allow: vec![],
            deny: vec![],
            countries: vec!["US".into()],
        },
        data_mb: 10,
        invoice_id: "inv_act".into(),
        created_at: 1,
        failovers: vec![],
        replaces: None,
        replaced_by: None,
        owner: None,
        label: None,
        held_by_owner: false,
        held_for_balance: false,
    }
}

fn credit(invoice: &str, mb: u64, paid: u64) -> esim402_testkit::metering::DataCredit {
    esim402_testkit::metering::DataCredit {
        invoice_id: invoice.into(),
        kind: if invoice == "inv_act" {
            "activation"
        } else {
            "top-up"
        }
        .into(),
        bytes: mb * MB,
        paid,
        payer: "0x70997970C51812dc3A010C7d01b50e0d17dc79C8".into(),
        transaction: format!("0x{:064x}", invoice.len()),
        network: "eip155:31337".into(),
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn receipt(iccid: &str, carrier: &str, session: &str, seq: u64, bytes: u64, plmn: &str) -> Value {
    receipt_at(iccid, carrier, session, seq, bytes, plmn, now())
}

/// [`receipt`] for the window `[t - 900, t - 60]`.
fn receipt_at(
    iccid: &str,
    carrier: &str,
    session: &str,
    seq: u64,
    bytes: u64,
    plmn: &str,
    t: u64,
) -> Value {
    let r = Receipt {
        carrier: CarrierId::parse(carrier).unwrap(),
        iccid: Iccid::parse(iccid).unwrap(),
        plmn: Plmn::parse(plmn).unwrap(),
        session_id: session.into(),
        seq,
        window_start: t - 900,
        window_end: t - 60,
        bytes_up: bytes / 4,
        bytes_down: bytes - bytes / 4,
        signature: vec![],
        page: None,
    };
    let key = dev_signing_key(&r.carrier);
    serde_json::to_value(r.sign(&key).unwrap().to_wire()).unwrap()
}

async fn open(kit: &mut Kit, iccid: &str, mb: u64) -> types::Balance {
    let s = sim(iccid, "tmobile");
    let c = credit("inv_act", mb, 30_000);
    kit.call(async move |a, g| g.metering().call_credit(a, s, c, now()).await)
        .await
        .unwrap()
        .unwrap()
        .balance
}

/// Ingest a batch: what the component answers (report, ledger events, SIMs run dry).
async fn ingested(kit: &mut Kit, receipts: Vec<Value>) -> esim402_testkit::metering::Ingested {
    ingested_at(kit, receipts, now()).await
}

/// [`ingested`] at the clock `at` (unix seconds).
async fn ingested_at(
    kit: &mut Kit,
    receipts: Vec<Value>,
    at: u64,
) -> esim402_testkit::metering::Ingested {
    let body = json!({ "receipts": receipts }).to_string();
    kit.call(async move |a, g| g.metering().call_ingest(a, body, at).await)
        .await
        .unwrap()
        .unwrap()
}

/// Ingest a batch: its report, the kinds of its ledger events and the SIMs it holds for want of balance.
async fn ingest(kit: &mut Kit, receipts: Vec<Value>) -> (Value, Vec<String>, Vec<String>) {
    let out = ingested(kit, receipts).await;
    let kinds = out.events.iter().map(|e| e.kind.clone()).collect();
    assert!(out.holds.iter().all(|h| h.hold), "a batch only holds");
    (
        serde_json::from_str(&out.report).unwrap(),
        kinds,
        out.holds.into_iter().map(|h| h.iccid).collect(),
    )
}

/// Each report line's refusal reason, in order.
fn reasons(report: &Value) -> Vec<&str> {
    report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect()
}

/// `transfer`: move `from`'s balance to `to` (a SIM on `carrier`).
async fn transfer(
    kit: &mut Kit,
    from: &str,
    to: &str,
    carrier: &str,
) -> Result<esim402_testkit::metering::Credited, types::Error> {
    let (from, to) = (from.to_owned(), sim(to, carrier));
    kit.call(async move |a, g| g.metering().call_transfer(a, from, to, now()).await)
        .await
        .unwrap()
}

/// The SIM's receipt log, from entry 1, at most `limit` entries.
async fn receipt_log(kit: &mut Kit, iccid: &str, limit: u32) -> Vec<Value> {
    let id = iccid.to_owned();
    let log = kit
        .call(async move |a, g| g.metering().call_receipts(a, id, 1, limit).await)
        .await
        .unwrap()
        .unwrap();
    serde_json::from_str(&log).unwrap()
}

async fn balance(kit: &mut Kit, iccid: &str) -> types::Balance {
    let id = iccid.to_owned();
    kit.call(async move |a, g| g.metering().call_get_balance(a, id).await)
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn credits_land_once_per_invoice() {
    let mut kit = Kit::builder("metering").build().await.unwrap();
    let id = iccid(1);
    let b = open(&mut kit, &id, 10).await;
    assert_eq!(
        (b.credited_bytes, b.used_bytes, b.remaining_bytes),
        (10 * MB, 0, 10_000_000)
    );
    // The same activation credited again (a retried payment): nothing new.
    let (s, c) = (sim(&id, "tmobile"), credit("inv_act", 10, 30_000));
    let again = kit
        .call(async move |a, g| g.metering().call_credit(a, s, c, now()).await)
        .await
        .unwrap()
        .unwrap();
    assert!(!again.new);
    assert_eq!(again.balance.credited_bytes, 10 * MB);
    let (s, c) = (sim(&id, "tmobile"), credit("inv_top", 50, 150_000));
    let top = kit
        .call(async move |a, g| g.metering().call_credit(a, s, c, now()).await)
        .await
        .unwrap()
        .unwrap();
    assert!(top.new);
    assert_eq!(top.event.kind, "data_credited");
    assert_eq!(top.balance.credited_bytes, 60 * MB);
    assert!(kit.kv_get(&format!("balance/{id}")).await.is_some());
}

/// Outside development (here a payment network other than the local dev chain) without a catalog of its own,
/// receipts signed with the built-in carriers' public dev keys charge nothing: the batch is refused with an
/// error naming the variable.
#[tokio::test]
async fn outside_development_no_dev_signed_receipt_is_charged() {
    let mut kit = Kit::builder("metering")
        .var("payment_network", "eip155:31337,base")
        .build()
        .await
        .unwrap();
    let id = iccid(60);
    open(&mut kit, &id, 10).await;
    let body =
        json!({ "receipts": [receipt(&id, "tmobile", "s1", 1, 300_000, "310-260")] }).to_string();
    let refused = kit
        .call(async move |a, g| g.metering().call_ingest(a, body, now()).await)
        .await
        .unwrap();
    assert!(
        matches!(&refused, Err(types::Error::Internal(m)) if m.contains("carrier_catalog")),
        "{refused:?}"
    );
    let b = balance(&mut kit, &id).await;
    assert_eq!((b.used_bytes, b.remaining_bytes), (0, 10_000_000), "{b:?}");
}

#[tokio::test]
async fn receipts_are_charged_once_and_replays_are_duplicates() {
    let mut kit = Kit::builder("metering").build().await.unwrap();
    let id = iccid(2);
    open(&mut kit, &id, 10).await;
    let batch = vec![
        receipt(&id, "tmobile", "s1", 1, 300_000, "310-260"),
        receipt(&id, "tmobile", "s1", 2, 200_000, "310-410"),
        receipt(&id, "tmobile", "s1", 4, 100_000, "310-260"),
    ];
    let (report, kinds, exhausted) = ingest(&mut kit, batch.clone()).await;
    assert_eq!(report["totals"]["accepted"], 3, "{report}");
    assert_eq!(report["totals"]["gaps"], 1, "seq 3 never came: {report}");
    assert_eq!(report["results"][2]["gap"], true);
    assert_eq!(report["totals"]["bytes_charged"], 600_000);
    assert_eq!(kinds, vec!["usage_charged"]);
    assert!(exhausted.is_empty());
    assert_eq!(balance(&mut kit, &id).await.used_bytes, 600_000);

    let (again, kinds, _) = ingest(&mut kit, batch).await;
    assert_eq!(again["totals"]["duplicate"], 3, "{again}");
    assert_eq!(again["totals"]["accepted"], 0);
    assert!(kinds.is_empty(), "a replay logs no charge");
    assert_eq!(
        balance(&mut kit, &id).await.used_bytes,
        600_000,
        "never charged twice"
    );
}

/// Receipts are claimed per SIM (kernel `usage::claim`): a carrier's charging ids wrap, so two of its SIMs
/// can report the same `(session, seq)`, and each is charged to its own SIM, with gaps tracked per SIM.
/// Each SIM's replays stay duplicates. (Before, the second SIM's receipts were duplicates, never charged.)
#[tokio::test]
async fn two_sims_reporting_the_same_session_and_seq_are_both_charged() {
    use esim402_core::store::keys;
    let mut kit = Kit::builder("metering").build().await.unwrap();
    let (a, b) = (iccid(70), iccid(71));
    open(&mut kit, &a, 10).await;
    open(&mut kit, &b, 10).await;
    let first = vec![
        receipt(&a, "tmobile", "c7", 1, 300_000, "310-260"),
        receipt(&a, "tmobile", "c7", 2, 200_000, "310-260"),
        receipt(&a, "tmobile", "c7", 3, 100_000, "310-260"),
    ];
    let (report, _, _) = ingest(&mut kit, first.clone()).await;
    assert_eq!(report["totals"]["accepted"], 3, "{report}");
    // The other SIM's records with the same charging id and seqs, one of them twice in the batch, and a seq 4
    // whose seq 3 only the first SIM reported.
    let second = vec![
        receipt(&b, "tmobile", "c7", 1, 50_000, "310-260"),
        receipt(&b, "tmobile", "c7", 2, 40_000, "310-260"),
        receipt(&b, "tmobile", "c7", 1, 50_000, "310-260"),
        receipt(&b, "tmobile", "c7", 4, 10_000, "310-260"),
    ];
    let (report, kinds, _) = ingest(&mut kit, second.clone()).await;
    assert_eq!(report["totals"]["accepted"], 3, "{report}");
    assert_eq!(report["totals"]["duplicate"], 1, "its own copy: {report}");
    assert_eq!(report["results"][2]["status"], "duplicate", "{report}");
    assert_eq!(report["totals"]["bytes_charged"], 100_000, "{report}");
    assert_eq!(
        report["results"][3]["gap"], true,
        "its own seq 3 never came: {report}"
    );
    assert_eq!(report["totals"]["gaps"], 1, "{report}");
    assert_eq!(kinds, vec!["usage_charged"]);
    assert_eq!(balance(&mut kit, &a).await.used_bytes, 600_000);
    assert_eq!(balance(&mut kit, &b).await.used_bytes, 100_000);
    assert_eq!(receipt_log(&mut kit, &b, 10).await.len(), 3);

    // Each SIM's batch sent again: all duplicates, nothing charged.
    for batch in [first, second] {
        let (again, kinds, _) = ingest(&mut kit, batch.clone()).await;
        assert_eq!(again["totals"]["accepted"], 0, "{again}");
        assert_eq!(again["totals"]["duplicate"], batch.len(), "{again}");
        assert!(kinds.is_empty(), "a replay logs no charge");
    }
    assert_eq!(balance(&mut kit, &a).await.used_bytes, 600_000);
    assert_eq!(balance(&mut kit, &b).await.used_bytes, 100_000);
    assert!(
        kit.kv_get(keys::RECEIPT_CLAIMS_SINCE).await.is_none(),
        "accounts opened with per-SIM claims never need the upgrade marker"
    );
}

/// Make `iccid`'s account one opened before receipts were claimed per SIM (its record without the flag).
async fn open_before_per_sim_claims(kit: &mut Kit, iccid: &str) {
    open(kit, iccid, 10).await;
    let key = format!("balance/{iccid}");
    let mut account: Value = serde_json::from_slice(&kit.kv_get(&key).await.unwrap()).unwrap();
    assert_eq!(account["claims_per_sim"], true, "{account}");
    account.as_object_mut().unwrap().remove("claims_per_sim");
    kit.kv_put(&key, account.to_string().as_bytes()).await;
}

/// Carriers retry: a batch charged before the upgrade, under the per-session claims, and sent again after it
/// is all duplicates (looked up under its legacy keys, kernel `usage::claim`), and a record after it is charged
/// without a gap. A receipt ending past the overlap after the store's marker is claimed per SIM only: a
/// legacy claim of the same `(session, seq)` (another SIM's, from before) no longer makes it a duplicate.
#[tokio::test]
async fn a_batch_charged_under_the_legacy_claims_sent_again_is_all_duplicates() {
    use esim402_core::store::keys;
    use esim402_core::usage::claim::UPGRADE_SLACK_SECS;
    let mut kit = Kit::builder("metering").build().await.unwrap();
    let id = iccid(72);
    open_before_per_sim_claims(&mut kit, &id).await;
    // Per-SIM claims started two hours ago; the batch was charged before, by the older version.
    let since = now() - 7_200;
    kit.kv_put(keys::RECEIPT_CLAIMS_SINCE, since.to_string().as_bytes())
        .await;
    let charged: Vec<Value> = (1..=3)
        .map(|seq| receipt_at(&id, "tmobile", "s1", seq, 100_000, "310-260", since))
        .collect();
    for seq in 1..=3 {
        let legacy = keys::legacy_receipt_claim("tmobile", "s1", seq);
        kit.kv().increment(&legacy, 1).await.unwrap();
    }
    let (report, kinds, _) = ingest(&mut kit, charged.clone()).await;
    assert_eq!(report["totals"]["duplicate"], 3, "{report}");
    assert_eq!(report["totals"]["accepted"], 0, "{report}");
    assert!(kinds.is_empty(), "nothing charged: {kinds:?}");
    assert_eq!(balance(&mut kit, &id).await.used_bytes, 0);

    // The next record of that session, ending within the overlap: charged, its seq 3 found under the legacy
    // key (no gap). A record ending past the overlap is charged although an older claim of another SIM holds
    // its (session, seq) legacy key.
    kit.kv()
        .increment(&keys::legacy_receipt_claim("tmobile", "s9", 1), 1)
        .await
        .unwrap();
    let later = vec![
        receipt_at(
            &id,
            "tmobile",
            "s1",
            4,
            70_000,
            "310-260",
            since + UPGRADE_SLACK_SECS,
        ),
        receipt(&id, "tmobile", "s9", 1, 30_000, "310-260"),
    ];
    let (report, _, _) = ingest(&mut kit, later.clone()).await;
    assert_eq!(report["totals"]["accepted"], 2, "{report}");
    assert_eq!(report["totals"]["gaps"], 0, "{report}");
    assert_eq!(balance(&mut kit, &id).await.used_bytes, 100_000);
    // And both sent again, with the first batch: duplicates (their own per-SIM claims, the legacy ones).
    let (again, _, _) = ingest(&mut kit, [charged, later].concat()).await;
    assert_eq!(again["totals"]["duplicate"], 5, "{again}");
    assert_eq!(balance(&mut kit, &id).await.used_bytes, 100_000);
}

/// A session spanning the upgrade: its record before it charged under the legacy key, the next ending past the
/// overlap (checked per SIM): charged, and no gap reported, its previous record found under its legacy claim.
/// Before, every session of an older account spanning the upgrade was flagged with a gap.
#[tokio::test]
async fn a_session_spanning_the_upgrade_is_not_flagged_as_a_gap() {
    use esim402_core::store::keys;
    let mut kit = Kit::builder("metering").build().await.unwrap();
    let id = iccid(75);
    open_before_per_sim_claims(&mut kit, &id).await;
    let since = now() - 7_200;
    kit.kv_put(keys::RECEIPT_CLAIMS_SINCE, since.to_string().as_bytes())
        .await;
    kit.kv()
        .increment(&keys::legacy_receipt_claim("tmobile", "s5", 1), 1)
        .await
        .unwrap();
    let next = vec![receipt(&id, "tmobile", "s5", 2, 50_000, "310-260")];
    let (report, _, _) = ingest(&mut kit, next).await;
    assert_eq!(report["totals"]["accepted"], 1, "{report}");
    assert_eq!(report["totals"]["gaps"], 0, "{report}");
}

/// Without a marker, the first batch naming an account opened before per-SIM claims makes it (its clock,
/// written once) and checks that account's receipts against their legacy claims.
#[tokio::test]
async fn the_upgrade_marker_is_made_once_by_the_first_batch_that_needs_it() {
    use esim402_core::store::keys;
    let mut kit = Kit::builder("metering").build().await.unwrap();
    let (older, newer) = (iccid(73), iccid(74));
    open_before_per_sim_claims(&mut kit, &older).await;
    open(&mut kit, &newer, 10).await;
    // Both sessions' first records hold legacy claims (another SIM's, or the older SIM's own).
    for session in ["s1", "s2"] {
        let legacy = keys::legacy_receipt_claim("tmobile", session, 1);
        kit.kv().increment(&legacy, 1).await.unwrap();
    }
    let at = now();
    let out = ingested_at(
        &mut kit,
        vec![
            receipt(&older, "tmobile", "s1", 1, 100_000, "310-260"),
            receipt(&newer, "tmobile", "s2", 1, 100_000, "310-260"),
        ],
        at,
    )
    .await;
    let report: Value = serde_json::from_str(&out.report).unwrap();
    assert_eq!(report["results"][0]["status"], "duplicate", "{report}");
    assert_eq!(
        report["results"][1]["status"], "accepted",
        "an account opened now has no legacy claims: {report}"
    );
    let marker = kit.kv_get(keys::RECEIPT_CLAIMS_SINCE).await.unwrap();
    assert_eq!(marker, at.to_string().into_bytes());
    // A later batch does not move it.
    ingested_at(
        &mut kit,
        vec![receipt(&older, "tmobile", "s1", 2, 100_000, "310-260")],
        at + 3_600,
    )
    .await;
    assert_eq!(
        kit.kv_get(keys::RECEIPT_CLAIMS_SINCE).await.unwrap(),
        at.to_string().into_bytes()
    );
    assert_eq!(balance(&mut kit, &older).await.used_bytes, 100_000);
}

/// A batch naming many SIMs is one `usage_charged` event: every SIM's charge in it, the totals adding up, and
/// a `batch` id (the ledger shard of all the batch's events).
#[tokio::test]
async fn a_batch_naming_fifty_sims_is_one_charge_event() {
    let mut kit = Kit::builder("metering").build().await.unwrap();
    let ids: Vec<String> = (100..150).map(iccid).collect();
    for id in &ids {
        // Each SIM's own activation invoice (a credit lands once per invoice).
        let (s, mut c) = (sim(id, "tmobile"), credit("inv_act", 10, 30_000));
        c.invoice_id = format!("inv_act_{id}");
        kit.call(async move |a, g| g.metering().call_credit(a, s, c, now()).await)
            .await
            .unwrap()
            .unwrap();
    }
    let batch: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            receipt(
                id,
                "tmobile",
                &format!("s-{id}"),
                1,
                1_000 * (i as u64 + 1),
                "310-260",
            )
        })
        .collect();
    let out = ingested(&mut kit, batch).await;
    assert_eq!(out.events.len(), 1, "{:?}", out.events);
    let e = &out.events[0];
    assert_eq!(e.kind, "usage_charged");
    let detail = |k: &str| {
        e.details
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(detail("sims"), "50");
    assert_eq!(detail("receipts"), "50");
    let total: u64 = (1..=50).map(|i| 1_000 * i).sum();
    assert_eq!(detail("bytes"), total.to_string());
    assert_eq!(detail("batch").len(), 16, "a batch id: {e:?}");
    let charges = parse_charges(&detail("charges")).expect("iccid:bytes:receipts list");
    assert_eq!(charges.len(), 50);
    for (i, id) in ids.iter().enumerate() {
        let want = (id.clone(), 1_000 * (i as u64 + 1), 1);
        assert!(charges.contains(&want), "{want:?} in {charges:?}");
        assert_eq!(balance(&mut kit, id).await.used_bytes, want.1);
    }
}

/// The receipt log is written one chunk per batch: positions increase across chunks, `from` starts inside a
/// chunk or past it, and `limit` cuts across chunks.
#[tokio::test]
async fn the_receipt_log_pages_across_batches() {
    let mut kit = Kit::builder("metering").build().await.unwrap();
    let id = iccid(4);
    open(&mut kit, &id, 10).await;
    for (first, n) in [(1, 3), (4, 2), (6, 1)] {
        let batch = (first..first + n)
            .map(|seq| receipt(&id, "tmobile", "s1", seq, 1_000, "310-260"))
            .collect();
        let (report, _, _) = ingest(&mut kit, batch).await;
        assert_eq!(report["totals"]["accepted"], n, "{report}");
    }
    let page = |from: u64, limit: u32| {
        let id = id.clone();
        async move |kit: &mut Kit| -> Vec<(u64, u64)> {
            let log: Value = serde_json::from_str(
                &kit.call(async move |a, g| g.metering().call_receipts(a, id, from, limit).await)
                    .await
                    .unwrap()
                    .unwrap(),
            )
            .unwrap();
            log.as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    (
                        e["n"].as_u64().unwrap(),
                        e["receipt"]["seq"].as_u64().unwrap(),
                    )
                })
                .collect()
        }
    };
    let all = page(1, 100)(&mut kit).await;
    assert_eq!(
        all,
        [(1, 1), (2, 2), (3, 3), (1_001, 4), (1_002, 5), (2_001, 6)],
        "three chunks, in order"
    );
    assert_eq!(
        page(2, 100)(&mut kit).await,
        all[1..],
        "from inside a chunk"
    );
    assert_eq!(
        page(4, 100)(&mut kit).await,
        all[3..],
        "from past a chunk's end"
    );
    assert_eq!(page(1, 4)(&mut kit).await, all[..4], "limit across chunks");
    assert_eq!(page(1_002, 1)(&mut kit).await, all[4..5]);
    assert!(page(2_002, 100)(&mut kit).await.is_empty(), "past the end");
}

#[tokio::test]
async fn bad_receipts_are_disputed_never_charged() {
    let mut kit = Kit::builder("metering").build().await.unwrap();
    let id = iccid(3);
    open(&mut kit, &id, 10).await;
    let mut forged = receipt(&id, "tmobile", "s1", 1, 1_000, "310-260");
    forged["bytes_down"] = json!(1);
    let roaming = receipt(&id, "tmobile", "s2", 1, 1_000, "262-01");
    let other_carrier = receipt(&id, "att", "s3", 1, 1_000, "310-410");
    let unknown_sim = receipt(&iccid(99), "tmobile", "s4", 1, 1_000, "310-260");
    let (report, kinds, _) = ingest(
        &mut kit,
        vec![
            forged.clone(),
            roaming,
            other_carrier,
            unknown_sim,
            json!({"carrier": 1}),
        ],
    )
    .await;
    let reasons = reasons(&report);
    assert_eq!(
        reasons,
        [
            "bad_signature",
            "plmn_not_allowed",
            "iccid_not_on_carrier",
            "unknown_sim",
            "malformed_receipt"
        ]
    );
    // Three kept, two told and logged: the forged one is unsigned, so neither its poster nor the ledger (whose
    // count anyone can read) says it was kept.
    assert_eq!(report["totals"]["disputed"], 2, "{report}");
    assert_eq!(report["results"][0]["disputed"], false, "{report}");
    assert_eq!(kinds, vec!["usage_disputed"; 2]);
    assert_eq!(balance(&mut kit, &id).await.used_bytes, 0);

    // The owner sees them; a resubmitted dispute is not kept twice.
    let (_, kinds, _) = ingest(&mut kit, vec![forged]).await;
    assert!(kinds.is_empty());
    let log = Value::from(receipt_log(&mut kit, &id, 100).await);
    let log = log.as_array().unwrap();
    assert_eq!(log.len(), 3);
    assert!(log.iter().all(|e| e["state"] == "disputed"));
    assert_eq!(log[1]["reason"], "plmn_not_allowed");
}

/// A receipt its carrier signed but refused for its own fields (2 TB in one receipt) is the carrier's signed
/// dispute: kept, told and in the ledger. The same receipt forged is anyone's: kept unlogged, within the unsigned
/// cap. Before, both were anyone's, so a carrier's overcharging attempt left no ledger entry.
#[tokio::test]
async fn a_carrier_signed_receipt_refused_for_its_fields_is_logged_as_its_dispute() {
    let mut kit = Kit::builder("metering").build().await.unwrap();
    let id = iccid(31);
    open(&mut kit, &id, 10).await;
    let huge = receipt(&id, "tmobile", "s1", 1, 2_000_000_000_000, "310-260");
    let mut forged = receipt(&id, "tmobile", "s2", 1, 2_000_000_000_000, "310-260");
    forged["bytes_down"] = json!(forged["bytes_down"].as_u64().unwrap() + 1);
    let (report, kinds, _) = ingest(&mut kit, vec![huge, forged]).await;
    assert_eq!(reasons(&report), ["too_many_bytes", "too_many_bytes"]);
    assert_eq!(report["results"][0]["disputed"], true, "{report}");
    assert_eq!(report["results"][1]["disputed"], false, "{report}");
    assert_eq!(kinds, vec!["usage_disputed"]);
    assert_eq!(balance(&mut kit, &id).await.used_bytes, 0);
    assert_eq!(receipt_log(&mut kit, &id, 100).await.len(), 2);
}

/// A balance that runs out puts metering's hold on the SIM with a new epoch; every later batch reports the same
/// hold again (so a hold that was not applied is applied then); the top-up that refills it releases the hold
/// with the next epoch, and sending the same payment again reports that release again.
#[tokio::test]
async fn exhaustion_holds_the_sim_then_a_top_up_releases_it() {
    let mut kit = Kit::builder("metering").build().await.unwrap();
    let id = iccid(4);
    open(&mut kit, &id, 1).await;
    let out = ingested(
        &mut kit,
        vec![receipt(&id, "tmobile", "s", 1, 1_200_000, "310-260")],
    )
    .await;
    let held = |iccid: &str, hold: bool, epoch: u64| (iccid.to_owned(), hold, epoch);
    let holds = |l: &[types::BalanceHold]| -> Vec<(String, bool, u64)> {
        l.iter()
            .map(|h| (h.iccid.clone(), h.hold, h.epoch))
            .collect()
    };
    assert_eq!(holds(&out.holds), vec![held(&id, true, 1)]);
    let b = balance(&mut kit, &id).await;
    assert_eq!(b.remaining_bytes, -200_000);
    assert!(b.low && b.suspended_for_balance);
    let again = ingested(
        &mut kit,
        vec![receipt(&id, "tmobile", "s", 2, 1_000, "310-260")],
    )
    .await;
    assert_eq!(
        holds(&again.holds),
        vec![held(&id, true, 1)],
        "the same hold again"
    );
    // The first batch sent again charges nothing (all duplicates) and still reports the hold: its first
    // report may not have been applied.
    let resent = ingested(
        &mut kit,
        vec![receipt(&id, "tmobile", "s", 1, 1_200_000, "310-260")],
    )
    .await;
    assert_eq!(
        holds(&resent.holds),
        vec![held(&id, true, 1)],
        "a batch of duplicates reports the hold"
    );
    // A stranger's forged receipt naming the held SIM verifies nothing: no hold reported for it.
    let mut forged = receipt(&id, "tmobile", "s", 9, 1_000, "310-260");
    forged["bytes_down"] = json!(1);
    let junk = ingested(&mut kit, vec![forged]).await;
    assert!(junk.holds.is_empty(), "{:?}", holds(&junk.holds));
    for _ in 0..2 {
        let (s, c) = (sim(&id, "tmobile"), credit("inv_top", 10, 30_000));
        let top = kit
            .call(async move |a, g| g.metering().call_credit(a, s, c, now()).await)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            holds(top.hold.as_slice()),
            vec![held(&id, false, 2)],
            "released, at epoch 2"
        );
        assert!(!top.balance.suspended_for_balance);
    }
    let after = ingested(
        &mut kit,
        vec![receipt(&id, "tmobile", "s", 3, 1_000, "310-260")],
    )
    .await;
    assert!(after.holds.is_empty());
    let resent = ingested(
        &mut kit,
        vec![receipt(&id, "tmobile", "s", 1, 1_200_000, "310-260")],
    )
    .await;
    assert!(resent.holds.is_empty(), "released: nothing to report");
}

/// After a switch the old SIM's data lives on the new SIM, and so does what the old SIM still reports (it is
/// in service until the new one is installed): each such byte is charged to the new SIM once, and when that
/// runs the new balance out, both SIMs are suspended.
#[tokio::test]
async fn usage_the_old_sim_reports_after_a_switch_draws_on_the_new_sim() {
    let mut kit = Kit::builder("metering").build().await.unwrap();
    let (old, new) = (iccid(21), iccid(22));
    open(&mut kit, &old, 10).await;
    ingest(
        &mut kit,
        vec![receipt(&old, "tmobile", "s", 1, 3 * MB, "310-260")],
    )
    .await;
    let moved = transfer(&mut kit, &old, &new, "tmobile").await.unwrap();
    assert_eq!(moved.balance.remaining_bytes, 7_000_000);

    let late = vec![receipt(&old, "tmobile", "s", 2, 2 * MB, "310-260")];
    let (report, _, exhausted) = ingest(&mut kit, late.clone()).await;
    assert_eq!(report["totals"]["accepted"], 1, "{report}");
    assert!(exhausted.is_empty());
    let b = balance(&mut kit, &new).await;
    assert_eq!((b.used_bytes, b.remaining_bytes), (2 * MB, 5_000_000));
    let b = balance(&mut kit, &old).await;
    assert_eq!(
        (b.used_bytes, b.remaining_bytes, b.reserved_bytes, b.closed),
        (5 * MB, 0, 0, true),
        "what it had left moved on: none shown here"
    );
    assert_eq!(b.switched_to.as_deref(), Some(new.as_str()));
    // A replay is a duplicate: nothing more is handed on.
    ingest(&mut kit, late).await;
    assert_eq!(balance(&mut kit, &new).await.used_bytes, 2 * MB);

    let (_, _, exhausted) = ingest(
        &mut kit,
        vec![receipt(&old, "tmobile", "s", 3, 6 * MB, "310-260")],
    )
    .await;
    assert_eq!(exhausted, vec![old.clone(), new.clone()]);
    let b = balance(&mut kit, &new).await;
    assert_eq!(b.remaining_bytes, -1_000_000);
    assert!(b.suspended_for_balance);
}

/// A switch retires the old SIM: what its carrier reports for windows starting within a day of the move draws
/// on the new SIM, a window starting later is refused and kept as a dispute, charged to neither SIM. A window
/// that ended over an hour before a SIM was ordered is refused the same way. Before, the old carrier
/// could charge the new SIM, on another carrier, for as long as it liked.
#[tokio::test]
async fn a_retired_sims_late_windows_and_a_sims_windows_before_it_opened_are_refused() {
    let mut kit = Kit::builder("metering").build().await.unwrap();
    let (old, new) = (iccid(61), iccid(62));
    open(&mut kit, &old, 10).await;
    // The new SIM ordered now (the test SIMs' records otherwise date from 1970).
    let to = types::Sim {
        created_at: now(),
        ..sim(&new, "verizon")
    };
    let from = old.clone();
    kit.call(async move |a, g| g.metering().call_transfer(a, from, to, now()).await)
        .await
        .unwrap()
        .unwrap();
    let day = 86_400;
    let in_grace = receipt_at(&old, "tmobile", "s", 1, MB, "310-260", now() + day);
    let after = receipt_at(&old, "tmobile", "s", 2, MB, "310-260", now() + day + 1_000);
    let before = receipt_at(&new, "verizon", "n", 1, MB, "310-410", now() - 3_600);
    let out = ingested_at(&mut kit, vec![in_grace, after, before], now() + day + 1_000).await;
    let report: Value = serde_json::from_str(&out.report).unwrap();
    let results = report["results"].as_array().unwrap();
    assert_eq!(results[0]["status"], "accepted", "{report}");
    for (line, reason) in [(1, "after_retirement"), (2, "before_activation")] {
        assert_eq!(results[line]["status"], "rejected", "{report}");
        assert_eq!(results[line]["reason"], reason, "{report}");
        assert_eq!(results[line]["disputed"], true, "{report}");
    }
    let b = balance(&mut kit, &new).await;
    // The T-Mobile MB by its value on Verizon (kernel `LateRate`): 6/7 of it.
    assert_eq!(
        b.used_bytes, 857_142,
        "only the window within the day: {b:?}"
    );
}

/// A switch to another carrier moves the unused balance by its value, not its bytes: 7 of 10 MB bought for
/// $0.03 on T-Mobile are worth $0.021, which buys 6 MB on Verizon ($0.0035/MB); the refund of the new SIM is
/// that value. Before, the bytes moved as they were, so a large balance bought cheaply moved to a dearer
/// carrier for the switch fee (which priced the difference on the activation bundle only).
#[tokio::test]
async fn a_switch_to_another_carrier_moves_the_balance_by_its_value() {
    let mut kit = Kit::builder("metering").build().await.unwrap();
    let (old, new) = (iccid(25), iccid(26));
    open(&mut kit, &old, 10).await;
    ingest(
        &mut kit,
        vec![receipt(&old, "tmobile", "s", 1, 3 * MB, "310-260")],
    )
    .await;
    for _ in 0..2 {
        let moved = transfer(&mut kit, &old, &new, "verizon").await.unwrap();
        assert_eq!(moved.balance.remaining_bytes, 6_000_000, "once, by value");
    }
    let shares: Vec<Value> = serde_json::from_value(close(&mut kit, &new).await).unwrap();
    assert_eq!(shares.len(), 1, "{shares:?}");
    assert_eq!(
        (shares[0]["bytes"].as_u64(), shares[0]["amount"].as_str()),
        (Some(6 * MB), Some("0.021")),
        "{shares:?}"
    );
}

/// A switch whose move runs after the new SIM was terminated (someone topped it up, which opened its account,
/// and its owner terminated it) is refused before the old account gives its credits up: they stay on the old
/// SIM (before, the old account closed and the new one refused them: the balance was lost).
#[tokio::test]
async fn a_move_to_a_terminated_sim_leaves_the_balance_where_it_was() {
    let mut kit = Kit::builder("metering").build().await.unwrap();
    let (old, new) = (iccid(27), iccid(28));
    open(&mut kit, &old, 10).await;
    top_up_1mb(&mut kit, &new, "inv_gift").await;
    close(&mut kit, &new).await;
    let refused = transfer(&mut kit, &old, &new, "tmobile").await;
    assert!(
        matches!(refused, Err(types::Error::Conflict(_))),
        "{refused:?}"
    );
    let b = balance(&mut kit, &old).await;
    assert!(!b.closed, "the old SIM keeps its balance");
    assert_eq!(b.remaining_bytes, 10_000_000);
}

/// A switch whose new SIM was terminated before it had an account (the usual case: the move opens it) is refused
/// before the old account gives its credits up, and so is a top-up (or an activation) for such a SIM: the
/// terminate's close leaves a closed account with nothing to refund. Before, the close found nothing, and the
/// move (or the credit) then opened a live account on the terminated SIM: the value stranded there.
#[tokio::test]
async fn a_sim_terminated_before_it_had_an_account_takes_no_move_and_no_credit() {
    let mut kit = Kit::builder("metering").build().await.unwrap();
    let (old, new) = (iccid(29), iccid(30));
    open(&mut kit, &old, 10).await;
    assert_eq!(close(&mut kit, &new).await, json!([]), "nothing to refund");
    assert_eq!(close(&mut kit, &new).await, json!([]), "again");
    let refused = transfer(&mut kit, &old, &new, "tmobile").await;
    assert!(
        matches!(refused, Err(types::Error::Conflict(_))),
        "{refused:?}"
    );
    let b = balance(&mut kit, &old).await;
    assert!(!b.closed, "the old SIM keeps its balance");
    assert_eq!(b.remaining_bytes, 10_000_000);
    for invoice in ["inv_top", "inv_act"] {
        let (s, c) = (sim(&new, "tmobile"), credit(invoice, 10, 30_000));
        let late = kit
            .call(async move |a, g| g.metering().call_credit(a, s, c, now()).await)
            .await
            .unwrap();
        assert!(
            matches!(late, Err(types::Error::Conflict(_))),
            "{invoice}: {late:?}"
        );
    }
    // Still no SIM metered here: its balance and receipts are not found, its receipts not kept.
    let id = new.clone();
    let unknown = kit
        .call(async move |a, g| g.metering().call_get_balance(a, id).await)
        .await
        .unwrap();
    assert!(
        matches!(unknown, Err(types::Error::NotFound(_))),
        "{unknown:?}"
    );
    let (report, kinds, _) = ingest(
        &mut kit,
        vec![receipt(&new, "tmobile", "n", 1, MB, "310-260")],
    )
    .await;
    assert_eq!(reasons(&report), ["unknown_sim"], "{report}");
    assert!(kinds.is_empty(), "{kinds:?}");
}

/// A new SIM terminated after the old account gave its data up and before the new one took it (the two are
/// separate updates) refuses the credits: the move is not a success, and the old account owes their value back
/// (its close returns them). Before, the old account kept "moved, nothing to refund" and the value was lost.
#[tokio::test]
async fn a_move_the_new_sim_refused_after_the_old_gave_it_up_is_owed_back() {
    let mut kit = Kit::builder("metering").build().await.unwrap();
    let (old, new) = (iccid(31), iccid(32));
    open(&mut kit, &old, 10).await; // 10 MB for 30 000
    ingest(
        &mut kit,
        vec![receipt(&old, "tmobile", "s", 1, 4 * MB, "310-260")],
    )
    .await;
    // The new SIM's account before the move (someone topped it up), put back after it: the state the move
    // leaves when the new SIM is terminated between the two updates (or the move stopped there).
    top_up_1mb(&mut kit, &new, "inv_gift").await;
    let key = format!("balance/{new}");
    let before = kit.kv_get(&key).await.unwrap();
    transfer(&mut kit, &old, &new, "tmobile").await.unwrap();
    kit.kv_put(&key, &before).await;
    let gift = close(&mut kit, &new).await;
    assert_eq!(gift.as_array().unwrap().len(), 1, "{gift}");
    assert_eq!(gift[0]["invoice"], "inv_gift", "{gift}");

    for _ in 0..2 {
        let refused = transfer(&mut kit, &old, &new, "tmobile").await;
        assert!(
            matches!(refused, Err(types::Error::Conflict(_))),
            "{refused:?}"
        );
        assert!(balance(&mut kit, &old).await.closed);
        let owed = close(&mut kit, &old).await;
        let owed = owed.as_array().unwrap();
        assert_eq!(owed.len(), 1, "{owed:?}");
        assert_eq!(
            (&owed[0]["invoice"], &owed[0]["bytes"], &owed[0]["amount"]),
            (&json!("inv_act"), &json!(6 * MB), &json!("0.018")),
            "6 of 10 MB unused: {owed:?}"
        );
    }
}

/// A switch's move that refills a new SIM whose balance had run out lifts its hold with the next epoch, and
/// says so (as a credit does), so dispatch resumes it. Before, the move answered no hold: the SIM stayed
/// suspended with a balance.
#[tokio::test]
async fn a_move_that_refills_a_held_sim_releases_its_hold() {
    let mut kit = Kit::builder("metering").build().await.unwrap();
    let (old, new) = (iccid(33), iccid(34));
    open(&mut kit, &old, 10).await;
    top_up_1mb(&mut kit, &new, "inv_gift").await;
    let out = ingested(
        &mut kit,
        vec![receipt(&new, "tmobile", "n", 1, 1_200_000, "310-260")],
    )
    .await;
    assert_eq!(out.holds.len(), 1);
    assert_eq!((out.holds[0].hold, out.holds[0].epoch), (true, 1));
    for _ in 0..2 {
        let moved = transfer(&mut kit, &old, &new, "tmobile").await.unwrap();
        let hold = moved.hold.expect("the release");
        assert_eq!(
            (hold.iccid.as_str(), hold.hold, hold.epoch),
            (new.as_str(), false, 2)
        );
        assert_eq!(moved.balance.remaining_bytes, 9_800_000);
        assert!(!moved.balance.suspended_for_balance);
    }
}

/// A batch that was charging the old SIM while the switch moved its data increments the old SIM's counter
/// after the move's own hand-on, and no later batch of the old SIM may come to forward it. The new SIM's next
/// batch and its balance read hand it on, once. (Before, those bytes were never charged.)
#[tokio::test]
async fn usage_charged_to_the_old_sim_during_the_switch_reaches_the_new_sim() {
    let mut kit = Kit::builder("metering").build().await.unwrap();
    let (old, new) = (iccid(23), iccid(24));
    open(&mut kit, &old, 10).await;
    transfer(&mut kit, &old, &new, "tmobile").await.unwrap();
    // The in-flight batch's charge: the old SIM's used counter grows after the move (it read the account
    // before the move, so it forwards nothing itself).
    kit.kv()
        .increment(&format!("meter/{old}/used"), 2 * MB as i64)
        .await
        .unwrap();
    let b = balance(&mut kit, &new).await;
    assert_eq!(
        (b.used_bytes, b.remaining_bytes),
        (2 * MB, 8_000_000),
        "the balance read hands it on"
    );
    assert_eq!(balance(&mut kit, &new).await.used_bytes, 2 * MB, "once");
    // Another in-flight charge, handed on by the new SIM's own next batch.
    kit.kv()
        .increment(&format!("meter/{old}/used"), MB as i64)
        .await
        .unwrap();
    ingest(
        &mut kit,
        vec![receipt(&new, "tmobile", "n", 1, MB, "310-260")],
    )
    .await;
    let b = balance(&mut kit, &new).await;
    assert_eq!((b.used_bytes, b.remaining_bytes), (4 * MB, 6_000_000));

    // One more in-flight charge, then the new SIM is terminated before anything else reads it: the refund
    // leaves those bytes out too (5 of the 10 MB unused, not 6).
    kit.kv()
        .increment(&format!("meter/{old}/used"), MB as i64)
        .await
        .unwrap();
    let shares: Vec<Value> = serde_json::from_value(close(&mut kit, &new).await).unwrap();
    let unused: u64 = shares.iter().map(|s| s["bytes"].as_u64().unwrap()).sum();
    assert_eq!(unused, 5 * MB, "{shares:?}");
}

/// A switched-away SIM whose late usage runs the new SIM's balance out is held in its own account's epochs
/// (past the new SIM's), which dispatch compares with the SIM's last one (kernel `esim::balance_hold`, run here
/// as dispatch runs it). Before, its hold carried the new SIM's epoch (3) and its account counted nothing, so
/// once the switch failed and the old SIM, its balance back, was topped up, the release (its own epoch 2) was
/// ignored and the SIM stayed suspended with a balance.
#[tokio::test]
async fn a_switched_away_sim_is_held_in_its_own_epochs() {
    use esim402_core::esim::{Holds, SimState, balance_hold};
    let mut kit = Kit::builder("metering").build().await.unwrap();
    let (old, new) = (iccid(81), iccid(82));
    // Dispatch's record of the old SIM: in service, no balance hold applied yet.
    let mut old_sim = (SimState::Active, Holds::default());
    let mut apply = |holds: &[types::BalanceHold]| {
        for h in holds.iter().filter(|h| h.iccid == old) {
            if let Some(next) = balance_hold(old_sim.0, old_sim.1, h.hold, h.epoch) {
                old_sim = next;
            }
        }
        old_sim.0
    };
    // The new SIM's account has counted two hold changes before the switch (held, then released).
    top_up_1mb(&mut kit, &new, "inv_gift").await;
    ingest(
        &mut kit,
        vec![receipt(&new, "tmobile", "n", 1, 1_200_000, "310-260")],
    )
    .await;
    let refill = top_up_1mb(&mut kit, &new, "inv_gift2").await;
    assert_eq!(refill.hold.map(|h| (h.hold, h.epoch)), Some((false, 2)));
    open(&mut kit, &old, 10).await;
    transfer(&mut kit, &old, &new, "tmobile").await.unwrap();

    // 11 MB reported by the old SIM: the new SIM's 10.8 MB run out. Each SIM is held in its own epochs.
    let out = ingested(
        &mut kit,
        vec![receipt(&old, "tmobile", "s", 1, 11 * MB, "310-260")],
    )
    .await;
    let got: Vec<_> = out
        .holds
        .iter()
        .map(|h| (h.iccid.as_str(), h.hold, h.epoch))
        .collect();
    assert_eq!(got, [(old.as_str(), true, 4), (new.as_str(), true, 3)]);
    assert_eq!(apply(&out.holds), SimState::Suspended);

    // The switch fails: the old SIM takes its 10 MB back, 1 MB below zero, still held; a top-up releases it.
    let failed = fail_replacing(&mut kit, &new, Some(&old)).await;
    assert_eq!(apply(failed.hold.as_slice()), SimState::Suspended);
    let (s, c) = (sim(&old, "tmobile"), credit("inv_top", 10, 30_000));
    let topped = kit
        .call(async move |a, g| g.metering().call_credit(a, s, c, now()).await)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(topped.balance.remaining_bytes, 9_000_000);
    assert_eq!(
        apply(topped.hold.as_slice()),
        SimState::Active,
        "released: {:?}",
        topped.hold
    );
}

/// A SIM switched away under an earlier build, which held it with the new SIM's holds under the new SIM's
/// epochs and counted nothing on its own account (not suspended, epoch 0), is healed when the switch fails and
/// its data comes back with a balance: the hold it is sent is a release past every epoch of the replacement
/// (kernel `Account::take_back`), which dispatch applies (kernel `esim::balance_hold`, run here as dispatch runs
/// it). Before, taking the data back changed no hold (its account was not suspended), so it was sent no hold at
/// all (epoch 0), or its own older epoch: the SIM stayed suspended with 9.5 MB paid for.
#[tokio::test]
async fn data_back_from_a_failed_switch_releases_a_sim_held_under_the_earlier_build() {
    use esim402_core::esim::{Holds, SimState, balance_hold};
    use esim402_core::store::keys;
    let mut kit = Kit::builder("metering").build().await.unwrap();
    let (old, new) = (iccid(83), iccid(84));
    // The new SIM's account has counted two hold changes before the switch (held, then released).
    top_up_1mb(&mut kit, &new, "inv_gift").await;
    ingest(
        &mut kit,
        vec![receipt(&new, "tmobile", "n", 1, 1_200_000, "310-260")],
    )
    .await;
    top_up_1mb(&mut kit, &new, "inv_gift2").await;
    open(&mut kit, &old, 10).await;
    transfer(&mut kit, &old, &new, "tmobile").await.unwrap();
    // The new SIM uses 10.5 of its 10.8 MB, then the old SIM's 0.5 MB runs it out.
    ingest(
        &mut kit,
        vec![receipt(&new, "tmobile", "n", 2, 10_500_000, "310-260")],
    )
    .await;
    let out = ingested(
        &mut kit,
        vec![receipt(&old, "tmobile", "s", 1, 500_000, "310-260")],
    )
    .await;
    let replacement = out.holds.iter().find(|h| h.iccid == new).expect("held");
    // What the earlier build left: the old SIM's dispatch record suspended by the new SIM's hold renamed (its
    // epoch), and the old account not suspended, at its own epoch 0.
    let (state, holds) =
        balance_hold(SimState::Active, Holds::default(), true, replacement.epoch).unwrap();
    assert_eq!(state, SimState::Suspended);
    let key = keys::balance(&old);
    let mut account: Value = serde_json::from_slice(&kit.kv_get(&key).await.unwrap()).unwrap();
    account["suspended_for_balance"] = json!(false);
    account.as_object_mut().unwrap().remove("hold_epoch");
    kit.kv_put(&key, account.to_string().as_bytes()).await;

    // The switch fails: the old SIM's 10 MB come back, 9.5 MB left.
    let failed = fail_replacing(&mut kit, &new, Some(&old)).await;
    assert_eq!(failed.restored.as_deref(), Some(old.as_str()));
    let replaced: Value =
        serde_json::from_slice(&kit.kv_get(&keys::balance(&new)).await.unwrap()).unwrap();
    let replacement_epoch = replaced["hold_epoch"].as_u64().unwrap();
    assert!(replacement_epoch >= replacement.epoch);
    let hold = failed.hold.expect("a hold for the old SIM");
    assert_eq!(hold.iccid, old);
    assert!(!hold.hold, "a release: the balance is back");
    assert!(
        hold.epoch > replacement_epoch,
        "past the replacement's epoch {replacement_epoch}: {}",
        hold.epoch
    );
    let (state, _) = balance_hold(state, holds, hold.hold, hold.epoch).expect("applied");
    assert_eq!(state, SimState::Active, "resumed with its balance");
    assert_eq!(balance(&mut kit, &old).await.remaining_bytes, 9_500_000);
}

async fn top_up_1mb(
    kit: &mut Kit,
    iccid: &str,
    invoice: &str,
) -> esim402_testkit::metering::Credited {
    let (s, c) = (sim(iccid, "tmobile"), credit(invoice, 1, 3_000));
    kit.call(async move |a, g| g.metering().call_credit(a, s, c, now()).await)
        .await
        .unwrap()
        .unwrap()
}

/// A SIM that keeps topping up keeps a small account: each top-up folds the credits used up entirely (their
/// bytes and a digest of each invoice), and a folded invoice still credits nothing twice.
#[tokio::test]
async fn top_ups_fold_used_up_credits_and_the_account_stays_small() {
    let mut kit = Kit::builder("metering").build().await.unwrap();
    let id = iccid(7);
    open(&mut kit, &id, 1).await;
    for n in 1..=20u64 {
        // Use the whole balance, then top up 1 MB.
        ingest(
            &mut kit,
            vec![receipt(&id, "tmobile", "s", n, MB, "310-260")],
        )
        .await;
        let r = top_up_1mb(&mut kit, &id, &format!("inv_top_{n}")).await;
        assert!(r.new);
        assert_eq!(
            (r.balance.credited_bytes, r.balance.used_bytes),
            ((n + 1) * MB, n * MB)
        );
    }
    let stored: Value =
        serde_json::from_slice(&kit.kv_get(&format!("balance/{id}")).await.unwrap()).unwrap();
    assert_eq!(
        stored["credits"].as_array().unwrap().len(),
        1,
        "only the unused top-up: {stored}"
    );
    assert_eq!(
        stored["spent"]["invoices"].as_array().unwrap().len(),
        20,
        "{stored}"
    );
    assert_eq!(stored["spent"]["bytes"], 20 * MB);
    // A folded invoice again (a retried payment): nothing credited.
    let again = top_up_1mb(&mut kit, &id, "inv_top_3").await;
    assert!(!again.new);
    assert_eq!(again.balance.credited_bytes, 21 * MB);
}

#[tokio::test]
async fn closing_refunds_unused_data_once_and_refuses_credit() {
    let mut kit = Kit::builder("metering").build().await.unwrap();
    let id = iccid(5);
    open(&mut kit, &id, 10).await; // 10 MB for 30 000 µUSDC
    ingest(
        &mut kit,
        vec![receipt(&id, "tmobile", "s", 1, 4 * MB, "310-260")],
    )
    .await;
    let shares = close(&mut kit, &id).await;
    assert_eq!(shares[0]["invoice"], "inv_act");
    assert_eq!(shares[0]["bytes"], 6 * MB);
    assert_eq!(shares[0]["amount"], "0.018", "6/10 of 30 000: {shares}");
    ingest(
        &mut kit,
        vec![receipt(&id, "tmobile", "s", 2, MB, "310-260")],
    )
    .await;
    assert_eq!(
        close(&mut kit, &id).await,
        shares,
        "the first close fixes the refund"
    );
    let (s, c) = (sim(&id, "tmobile"), credit("inv_late", 10, 30_000));
    let late = kit
        .call(async move |a, g| g.metering().call_credit(a, s, c, now()).await)
        .await
        .unwrap();
    assert!(matches!(late, Err(types::Error::Conflict(_))));
}

#[tokio::test]
async fn usage_rows_per_network() {
    let mut kit = Kit::builder("metering").build().await.unwrap();
    let id = iccid(6);
    open(&mut kit, &id, 10).await;
    ingest(
        &mut kit,
        vec![
            receipt(&id, "tmobile", "s", 1, 1_000, "310-260"),
            receipt(&id, "tmobile", "s", 2, 3_000, "310-410"),
        ],
    )
    .await;
    let id2 = id.clone();
    let rows: Value = serde_json::from_str(
        &kit.call(async move |a, g| g.metering().call_usage(a, id2, "day".into(), true).await)
            .await
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    let totals: u64 = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["data_total"].as_u64().unwrap())
        .sum();
    assert_eq!(totals, 4_000);
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .any(|r| r["plmn"] == "310-410")
    );
    let bad = kit
        .call(async move |a, g| g.metering().call_usage(a, id, "week".into(), false).await)
        .await
        .unwrap();
    assert!(matches!(bad, Err(types::Error::InvalidInput(f)) if f.field == "granularity"));
}

/// A usage query sums the SIM's newest 10 000 log entries: with 10 002 logged, the newest (the only one on
/// network 310-410) is in the rows. Before, the log was read from its first entry and cut at 10 000, leaving
/// out the newest periods. The log is made by one real batch, its entry copied into chunks of 1 000.
#[tokio::test]
async fn usage_rows_come_from_the_newest_receipts() {
    use esim402_core::store::keys;
    use esim402_core::usage::ingest::log_position;
    let mut kit = Kit::builder("metering").build().await.unwrap();
    let id = iccid(7);
    open(&mut kit, &id, 10).await;
    ingest(
        &mut kit,
        vec![receipt(&id, "tmobile", "s", 1, 1_000, "310-260")],
    )
    .await;
    let first = kit
        .kv()
        .get(&keys::meter_chunk(&id, 1))
        .await
        .unwrap()
        .unwrap();
    let entry = serde_json::from_slice::<Vec<Value>>(&first).unwrap()[0].clone();
    let copy = |chunk: u64, index: usize, plmn: &str| {
        let mut e = entry.clone();
        e["n"] = log_position(chunk, index).into();
        e["receipt"]["plmn"] = plmn.into();
        e
    };
    for chunk in 2..=11 {
        let entries: Vec<Value> = (0..1_000).map(|i| copy(chunk, i, "310-260")).collect();
        let bytes = serde_json::to_vec(&entries).unwrap();
        kit.kv()
            .set(&keys::meter_chunk(&id, chunk), &bytes)
            .await
            .unwrap();
    }
    let newest = serde_json::to_vec(&[copy(12, 0, "310-410")]).unwrap();
    kit.kv()
        .set(&keys::meter_chunk(&id, 12), &newest)
        .await
        .unwrap();
    kit.kv()
        .increment(&keys::meter_chunks(&id), 11)
        .await
        .unwrap();

    let id2 = id.clone();
    let rows: Value = serde_json::from_str(
        &kit.call(async move |a, g| g.metering().call_usage(a, id2, "day".into(), true).await)
            .await
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    let rows = rows.as_array().unwrap();
    assert!(rows.iter().any(|r| r["plmn"] == "310-410"), "{rows:?}");
    let totals: u64 = rows.iter().map(|r| r["data_total"].as_u64().unwrap()).sum();
    assert_eq!(totals, 10_000 * 1_000, "the newest 10 000");
}

#[tokio::test]
async fn malformed_batches_and_iccids() {
    let mut kit = Kit::builder("metering").build().await.unwrap();
    let bad = kit
        .call(async |a, g| g.metering().call_ingest(a, "[]".into(), 1).await)
        .await
        .unwrap();
    assert!(matches!(bad, Err(types::Error::InvalidInput(f)) if f.field == "receipts"));
    let bad = kit
        .call(async |a, g| g.metering().call_get_balance(a, "12ab".into()).await)
        .await
        .unwrap();
    assert!(matches!(bad, Err(types::Error::InvalidInput(f)) if f.field == "iccid"));
    let id = iccid(7);
    let unknown = kit
        .call(async move |a, g| g.metering().call_get_balance(a, id).await)
        .await
        .unwrap();
    assert!(matches!(unknown, Err(types::Error::NotFound(_))));
}

/// A metering kit with SIM `n`'s account open (10 MB), its ICCID, and the per-SIM cap of unsigned disputes.
async fn capped_sim(n: u32) -> (Kit, String, usize) {
    use esim402_core::usage::receipt::MAX_UNSIGNED_DISPUTES_PER_SIM;
    let mut kit = Kit::builder("metering").build().await.unwrap();
    let id = iccid(n);
    open(&mut kit, &id, 10).await;
    (
        kit,
        id,
        usize::try_from(MAX_UNSIGNED_DISPUTES_PER_SIM).unwrap(),
    )
}

/// Receipts anyone can make up without a signature — a seq of 0, a window in the future — count against the
/// SIM's cap of unsigned disputes like forged signatures do; receipts naming a SIM not metered here keep
/// nothing, however many ICCIDs a flood makes up.
#[tokio::test]
async fn unsigned_field_refusals_are_capped_and_unknown_sims_keep_nothing() {
    let (mut kit, id, cap) = capped_sim(5).await;
    let made_up: Vec<Value> = (0..cap + 20)
        .map(|n| {
            let mut r = receipt(&id, "tmobile", &format!("junk-{n}"), 1, 1_000, "310-260");
            if n % 2 == 0 {
                r["seq"] = json!(0);
            } else {
                r["window_end"] = json!(now() + 86_400);
            }
            r
        })
        .collect();
    let (report, kinds, _) = ingest(&mut kit, made_up).await;
    let reasons: std::collections::BTreeSet<&str> = reasons(&report).into_iter().collect();
    assert_eq!(
        reasons,
        ["window_in_future", "zero_seq"].into_iter().collect(),
        "{report}"
    );
    // Kept in the owner's log, up to the cap, but neither told nor put in the ledger: a stranger's answer and
    // the ledger's count must not differ from a batch naming a SIM not metered here (below).
    assert!(kinds.is_empty(), "{kinds:?}");
    let log = Value::from(receipt_log(&mut kit, &id, 1_000).await);
    assert_eq!(
        log.as_array().unwrap().len(),
        cap,
        "one kept per receipt, no more"
    );
    assert_eq!(report["totals"]["disputed"], 0, "{report}");

    // Past the cap, more made-up receipts for the metered SIM write no key either (before, each still left a
    // claim key behind: storage anyone could add without bound).
    let mut before = kit.kv().keys().await.unwrap();
    before.sort();
    let more: Vec<Value> = (0..30)
        .map(|n| {
            let mut r = receipt(&id, "tmobile", &format!("more-{n}"), 1, 1_000, "310-260");
            r["seq"] = json!(0);
            r
        })
        .collect();
    let (report, kinds, _) = ingest(&mut kit, more).await;
    assert!(kinds.is_empty(), "{kinds:?}");
    assert_eq!(report["totals"]["rejected"], 30, "{report}");
    let mut after = kit.kv().keys().await.unwrap();
    after.sort();
    assert_eq!(after, before, "no claim key past the cap");

    // A flood naming SIMs nobody metered here: refused, nothing kept, no ledger events, no key written.
    let mut before = kit.kv().keys().await.unwrap();
    before.sort();
    let strangers: Vec<Value> = (100..150)
        .map(|n| {
            let mut r = receipt(&iccid(n), "tmobile", "junk", 1, 1_000, "310-260");
            r["seq"] = json!(0);
            r
        })
        .collect();
    let (report, kinds, _) = ingest(&mut kit, strangers).await;
    assert!(kinds.is_empty(), "{kinds:?}");
    assert_eq!(report["totals"]["disputed"], 0, "{report}");
    assert_eq!(report["totals"]["rejected"], 50, "{report}");
    let mut after = kit.kv().keys().await.unwrap();
    after.sort();
    assert_eq!(after, before, "nothing stored");
}

async fn close(kit: &mut Kit, iccid: &str) -> Value {
    close_at(kit, iccid, now()).await
}

/// [`close`] at the clock `at`.
async fn close_at(kit: &mut Kit, iccid: &str, at: u64) -> Value {
    let id = iccid.to_owned();
    let s = kit
        .call(async move |a, g| g.metering().call_close(a, id, at).await)
        .await
        .unwrap()
        .unwrap();
    serde_json::from_str(&s).unwrap()
}

#[tokio::test]
async fn a_flood_of_forged_receipts_keeps_a_bounded_number_of_disputes() {
    let (mut kit, id, cap) = capped_sim(4).await;
    // Anyone can post receipts whose signature does not verify: 30 more than the cap, in two batches.
    let forged: Vec<Value> = (1..=u64::try_from(cap + 30).unwrap())
        .map(|seq| {
            let mut r = receipt(&id, "tmobile", "flood", seq, 1_000, "310-260");
            r["bytes_down"] = json!(seq);
            r
        })
        .collect();
    let (first, kinds_a, _) = ingest(&mut kit, forged[..cap - 10].to_vec()).await;
    let (_, kinds_b, _) = ingest(&mut kit, forged[cap - 10..].to_vec()).await;
    assert!(
        first["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["reason"] == "bad_signature")
    );
    assert!(
        kinds_a.is_empty() && kinds_b.is_empty(),
        "unsigned disputes stay out of the ledger"
    );
    let log = Value::from(receipt_log(&mut kit, &id, 1_000).await);
    assert_eq!(log.as_array().unwrap().len(), cap);
    assert_eq!(
        balance(&mut kit, &id).await.used_bytes,
        0,
        "nothing charged"
    );
    // A carrier-signed dispute is still kept past the cap (the carrier is accountable for those), even when a
    // forged copy of it (same fields, another signature) came first and took nothing.
    let roaming = receipt(&id, "tmobile", "s9", 1, 1_000, "262-01");
    let mut forged_copy = roaming.clone();
    let sig = forged_copy["signature"].as_str().unwrap().to_owned();
    let flipped = if sig.ends_with('0') { '1' } else { '0' };
    forged_copy["signature"] = json!(format!("{}{flipped}", &sig[..sig.len() - 1]));
    let (copy, kinds, _) = ingest(&mut kit, vec![forged_copy]).await;
    assert_eq!(reasons(&copy), ["bad_signature"]);
    assert!(kinds.is_empty(), "past the cap: {kinds:?}");
    let (real, kinds, _) = ingest(&mut kit, vec![roaming]).await;
    assert_eq!(reasons(&real), ["plmn_not_allowed"], "{real}");
    assert_eq!(kinds, ["usage_disputed"]);
}

/// A charged batch's ledger events stay held (kernel `usage::held`) until released, and a recovery logs them
/// once whatever became of the first append: landed with only the release lost, or never made (a crash right
/// after the charges). A held batch is handed back only once due, parked once however many recoveries run,
/// and appended once; a released one is never handed back. (The metering and invoices components on one store,
/// called as the gateway calls them.)
#[tokio::test]
async fn held_usage_events_are_logged_once_after_a_crash_whatever_landed() {
    use esim402_core::store::keys;
    use esim402_core::usage::held::{RELOG_AFTER_SECS, SlotId};
    let store: esim402_host::kv::SharedBackend =
        std::sync::Arc::new(esim402_host::kv::MemoryStore::default());
    let mut meter = Kit::builder("metering")
        .store(store.clone())
        .build()
        .await
        .unwrap();
    let mut books = crate::invoices::builder()
        .store(store)
        .build()
        .await
        .unwrap();
    let id = iccid(40);
    open(&mut meter, &id, 10).await;
    let t = now();
    let slot =
        |held: &Option<String>| keys::meter_held(SlotId::parse(held.as_deref().unwrap()).unwrap());
    let log = async |books: &mut Kit, events: Vec<types::LedgerEvent>| {
        books
            .call(async move |a, g| g.invoices().call_log_events(a, t, events, false).await)
            .await
            .unwrap()
            .unwrap();
    };
    let release = async |meter: &mut Kit, ids: Vec<String>| {
        meter
            .call(async move |a, g| g.metering().call_release_held(a, ids).await)
            .await
            .unwrap()
            .unwrap()
    };
    let due = async |meter: &mut Kit, at: u64| {
        meter
            .call(async move |a, g| g.metering().call_held_due(a, at).await)
            .await
            .unwrap()
            .unwrap()
    };

    // A: appended, its release lost. B: a crash right after its charges, nothing appended. C: appended and
    // released, as the gateway does.
    // At the test's clock `t`: a second boundary between `t` and the batches must not move them.
    let a = ingested_at(
        &mut meter,
        vec![receipt(&id, "tmobile", "h", 1, 100_000, "310-260")],
        t,
    )
    .await;
    assert!(meter.kv_get(&slot(&a.held)).await.is_some(), "held");
    log(&mut books, a.events.clone()).await;
    let b = ingested_at(
        &mut meter,
        vec![receipt(&id, "tmobile", "h", 2, 50_000, "310-260")],
        t,
    )
    .await;
    let c = ingested_at(
        &mut meter,
        vec![receipt(&id, "tmobile", "h", 3, 25_000, "310-260")],
        t,
    )
    .await;
    log(&mut books, c.events.clone()).await;
    assert_eq!(release(&mut meter, vec![c.held.clone().unwrap()]).await, 1);
    assert!(meter.kv_get(&slot(&c.held)).await.is_none(), "released");

    assert!(
        due(&mut meter, t).await.is_empty(),
        "its request may still be running"
    );
    assert!(due(&mut meter, t + RELOG_AFTER_SECS - 1).await.is_empty());
    let found = due(&mut meter, t + RELOG_AFTER_SECS).await;
    let mut ids: Vec<String> = found.iter().map(|h| h.id.clone()).collect();
    ids.sort();
    let mut expected = vec![a.held.clone().unwrap(), b.held.clone().unwrap()];
    expected.sort();
    assert_eq!(ids, expected, "A and B, not C");
    assert!(found.iter().all(|h| h.at == t));

    // Two recoveries park the same batches; the check drains them.
    for _ in 0..2 {
        let batches = found.clone();
        books
            .call(async move |a, g| g.invoices().call_park_held(a, batches).await)
            .await
            .unwrap()
            .unwrap();
    }
    let first = crate::invoices::ledger_check(&mut books).await;
    assert_eq!(
        (&first["ok"], &first["count"]),
        (&json!(true), &json!(3)),
        "{first}"
    );
    assert!(first.get("parked").is_none(), "{first}");
    let mut bytes: Vec<String> = crate::invoices::ledger_entries(&mut books, None)
        .await
        .into_iter()
        .filter(|e| e["kind"] == "usage_charged")
        .map(|e| e["details"]["bytes"].as_str().unwrap().to_owned())
        .collect();
    bytes.sort();
    assert_eq!(bytes, ["100000", "25000", "50000"], "each batch once");

    assert_eq!(release(&mut meter, ids).await, 2);
    assert!(due(&mut meter, t + RELOG_AFTER_SECS).await.is_empty());
    assert_eq!(
        crate::invoices::ledger_check(&mut books).await["count"],
        3,
        "nothing more"
    );
}

/// A charge that fails at the store stops the batch, and the SIMs charged before it are not lost to the ledger:
/// the batch's event, naming only those, stays held and is handed back once due. (Before, the call failed and
/// the charges that landed never reached the ledger.)
#[tokio::test]
async fn a_batch_whose_charge_fails_holds_the_charges_that_landed() {
    use esim402_core::usage::held::RELOG_AFTER_SECS;
    let (first, second) = (iccid(51), iccid(52));
    assert!(first < second, "charged in ICCID order");
    let prefix: &'static str = Box::leak(format!("meter/{second}/used").into_boxed_str());
    let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut kit = Kit::builder("metering")
        .store(std::sync::Arc::new(crate::failing_writes(prefix, &failing)))
        .build()
        .await
        .unwrap();
    open(&mut kit, &first, 10).await;
    open(&mut kit, &second, 10).await;
    failing.store(true, std::sync::atomic::Ordering::SeqCst);
    let body = json!({ "receipts": [
        receipt(&first, "tmobile", "f", 1, 100_000, "310-260"),
        receipt(&second, "tmobile", "g", 1, 70_000, "310-260"),
    ]})
    .to_string();
    let t = now();
    let out = kit
        .call(async move |a, g| g.metering().call_ingest(a, body, t).await)
        .await
        .unwrap();
    assert!(out.is_err(), "the failed charge fails the batch");
    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(balance(&mut kit, &first).await.used_bytes, 100_000);
    assert_eq!(balance(&mut kit, &second).await.used_bytes, 0);

    let due = kit
        .call(async move |a, g| g.metering().call_held_due(a, t + RELOG_AFTER_SECS).await)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(due.len(), 1, "{due:?}");
    let charged: Vec<_> = due[0]
        .events
        .iter()
        .filter(|e| e.kind == "usage_charged")
        .collect();
    assert_eq!(charged.len(), 1);
    let detail = |k: &str| {
        charged[0]
            .details
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(detail("bytes").as_deref(), Some("100000"));
    assert_eq!(detail("iccid").as_deref(), Some(first.as_str()));
}

/// Writes under any of `prefixes` fail while `failing` is set (an outage of part of the store).
struct FailingUnder {
    prefixes: Vec<String>,
    failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl esim402_host::kv::wrapped::Hook for FailingUnder {
    fn before(
        &self,
        op: esim402_host::kv::wrapped::Op,
        key: &str,
    ) -> esim402_host::kv::KvResult<()> {
        if op.writes()
            && self.prefixes.iter().any(|p| key.starts_with(p.as_str()))
            && self.failing.load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(esim402_host::kv::KvError(format!("injected: {key}")));
        }
        Ok(())
    }
}

/// A charge that fails at the store while holding the batch's events fails too: the charges that landed reach
/// the ledger through the answer (its events, nothing held, so nothing logged twice), and the report says which
/// receipts were not charged. Before, the call failed, the events were dropped, and the landed charge never
/// reached the ledger (a resend is all duplicates).
#[tokio::test]
async fn a_batch_whose_charge_and_hold_fail_answers_with_the_charges_that_landed() {
    use esim402_core::store::keys;
    use esim402_core::usage::held::RELOG_AFTER_SECS;
    let (first, second) = (iccid(53), iccid(54));
    assert!(first < second, "charged in ICCID order");
    let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let store = esim402_host::kv::wrapped::Wrapped::new(
        std::sync::Arc::new(esim402_host::kv::MemoryStore::default()),
        FailingUnder {
            prefixes: vec![keys::meter_used(&second), "meter/held/".into()],
            failing: failing.clone(),
        },
    );
    let mut kit = Kit::builder("metering")
        .store(std::sync::Arc::new(store))
        .build()
        .await
        .unwrap();
    open(&mut kit, &first, 10).await;
    open(&mut kit, &second, 10).await;
    failing.store(true, std::sync::atomic::Ordering::SeqCst);
    let batch = vec![
        receipt(&first, "tmobile", "f", 1, 100_000, "310-260"),
        receipt(&second, "tmobile", "g", 1, 70_000, "310-260"),
    ];
    let t = now();
    let out = ingested_at(&mut kit, batch.clone(), t).await;
    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(out.held, None, "nothing held");
    let charged: Vec<_> = out
        .events
        .iter()
        .filter(|e| e.kind == "usage_charged")
        .collect();
    assert_eq!(charged.len(), 1, "{:?}", out.events);
    let detail = |k: &str| {
        charged[0]
            .details
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(detail("bytes").as_deref(), Some("100000"));
    assert_eq!(detail("iccid").as_deref(), Some(first.as_str()));
    let report: Value = serde_json::from_str(&out.report).unwrap();
    assert_eq!(report["results"][0]["status"], "accepted", "{report}");
    // The refused `increment` may as well have been applied with its reply lost: unknown, not uncharged.
    assert_eq!(report["results"][1]["status"], "charge_unknown", "{report}");
    assert_eq!(
        (
            &report["totals"]["accepted"],
            &report["totals"]["bytes_charged"]
        ),
        (&json!(1), &json!(100_000)),
        "{report}"
    );
    assert_eq!(balance(&mut kit, &first).await.used_bytes, 100_000);
    assert_eq!(balance(&mut kit, &second).await.used_bytes, 0);
    let due = kit
        .call(async move |a, g| g.metering().call_held_due(a, t + RELOG_AFTER_SECS).await)
        .await
        .unwrap()
        .unwrap();
    assert!(due.is_empty(), "not logged a second time: {due:?}");
    let (again, kinds, _) = ingest(&mut kit, batch).await;
    assert_eq!(again["totals"]["duplicate"], 2, "{again}");
    assert!(kinds.is_empty(), "{kinds:?}");
}

/// `fail`: close the account of a SIM whose profile can never be installed (the gateway owes what it returns).
async fn fail(kit: &mut Kit, iccid: &str) -> (Value, Option<String>) {
    let out = fail_replacing(kit, iccid, None).await;
    (serde_json::from_str(&out.refunds).unwrap(), out.restored)
}

/// [`fail`] for a SIM whose record says it replaced `replaces` (a switch's replacement).
async fn fail_replacing(
    kit: &mut Kit,
    iccid: &str,
    replaces: Option<&str>,
) -> esim402_testkit::metering::FailedAccount {
    let (id, old) = (iccid.to_owned(), replaces.map(str::to_owned));
    kit.call(async move |a, g| g.metering().call_fail(a, id, old).await)
        .await
        .unwrap()
        .unwrap()
}

/// A SIM whose profile can never be installed: its untouched activation is refunded whole (the share says
/// `untouched`, so the gateway owes the whole payment, fee included), and its account takes no more credit.
#[tokio::test]
async fn a_failed_sims_account_closes_with_its_untouched_activation() {
    let mut kit = Kit::builder("metering").build().await.unwrap();
    let id = iccid(71);
    open(&mut kit, &id, 10).await;
    let (refunds, restored) = fail(&mut kit, &id).await;
    assert_eq!(restored, None);
    assert_eq!(refunds.as_array().unwrap().len(), 1, "{refunds}");
    assert_eq!(
        (
            &refunds[0]["invoice"],
            &refunds[0]["amount"],
            &refunds[0]["untouched"]
        ),
        (&json!("inv_act"), &json!("0.03"), &json!(true)),
        "{refunds}"
    );
    assert_eq!(
        fail(&mut kit, &id).await.0,
        refunds,
        "fixed by the first call"
    );
    assert!(balance(&mut kit, &id).await.closed);
    // No account at all: a closed one, nothing owed.
    let none = iccid(72);
    assert_eq!(fail(&mut kit, &none).await, (json!([]), None));
}

/// A switch's replacement that can never be installed: the balance the switch moved to it goes back to the
/// old SIM (still in service), as if it had never moved; only the replacement's own top-up is refunded. Sent
/// again, nothing changes.
#[tokio::test]
async fn a_failed_replacement_gives_the_switched_balance_back_to_the_old_sim() {
    let mut kit = Kit::builder("metering").build().await.unwrap();
    let (old, new) = (iccid(73), iccid(74));
    open(&mut kit, &old, 10).await;
    ingest(
        &mut kit,
        vec![receipt(&old, "tmobile", "s", 1, 3 * MB, "310-260")],
    )
    .await;
    transfer(&mut kit, &old, &new, "tmobile").await.unwrap();
    assert!(balance(&mut kit, &old).await.closed);
    // A top-up bought on the new SIM, and 1 MB the old SIM reports after the move.
    let (s, c) = (sim(&new, "tmobile"), credit("inv_top", 10, 30_000));
    kit.call(async move |a, g| g.metering().call_credit(a, s, c, now()).await)
        .await
        .unwrap()
        .unwrap();
    ingest(
        &mut kit,
        vec![receipt(&old, "tmobile", "s", 2, MB, "310-260")],
    )
    .await;

    let (refunds, restored) = fail(&mut kit, &new).await;
    assert_eq!(restored.as_deref(), Some(old.as_str()));
    assert_eq!(refunds.as_array().unwrap().len(), 1, "{refunds}");
    assert_eq!(
        (&refunds[0]["invoice"], &refunds[0]["amount"]),
        (&json!("inv_top"), &json!("0.03")),
        "only the new SIM's own credit: {refunds}"
    );
    let b = balance(&mut kit, &old).await;
    assert_eq!(
        (b.closed, b.credited_bytes, b.used_bytes, b.remaining_bytes),
        (false, 10 * MB, 4 * MB, 6_000_000),
        "the old SIM's balance as if it had never moved"
    );
    assert!(balance(&mut kit, &new).await.closed);
    // Sent again: the same refunds, the balance stays back.
    assert_eq!(fail(&mut kit, &new).await, (refunds, Some(old.clone())));
    assert_eq!(balance(&mut kit, &old).await.remaining_bytes, 6_000_000);
    // The old SIM is metered and topped up again; its usage no longer goes to the failed SIM.
    ingest(
        &mut kit,
        vec![receipt(&old, "tmobile", "s", 3, MB, "310-260")],
    )
    .await;
    assert_eq!(balance(&mut kit, &old).await.remaining_bytes, 5_000_000);
    let (s, c) = (sim(&old, "tmobile"), credit("inv_top2", 10, 30_000));
    let topped = kit
        .call(async move |a, g| g.metering().call_credit(a, s, c, now()).await)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(topped.balance.remaining_bytes, 15_000_000);
}

/// The old SIM stays in use while its replacement never installs, and what it reports after the move counts on
/// its own counter and is handed on to the replacement's. 6 MB move, the owner tops the replacement up with
/// 10 MB, the old SIM reports 8 MB, and the replacement fails: its top-up is refunded whole, and the old SIM,
/// its 10 MB back, counts the 12 MB it used (2 MB below zero, held), each byte charged once. Before, the
/// replacement was closed at the 8 MB handed on (2 MB of them from the top-up, refunded $0.024) while the old
/// SIM counted the same bytes again.
#[tokio::test]
async fn usage_handed_on_to_a_failed_replacement_is_charged_once() {
    let mut kit = Kit::builder("metering").build().await.unwrap();
    let (old, new) = (iccid(91), iccid(92));
    open(&mut kit, &old, 10).await;
    ingest(
        &mut kit,
        vec![receipt(&old, "tmobile", "s", 1, 4 * MB, "310-260")],
    )
    .await;
    transfer(&mut kit, &old, &new, "tmobile").await.unwrap();
    let (s, c) = (sim(&new, "tmobile"), credit("inv_top", 10, 30_000));
    kit.call(async move |a, g| g.metering().call_credit(a, s, c, now()).await)
        .await
        .unwrap()
        .unwrap();
    ingest(
        &mut kit,
        vec![receipt(&old, "tmobile", "s", 2, 8 * MB, "310-260")],
    )
    .await;
    let b = balance(&mut kit, &new).await;
    assert_eq!((b.used_bytes, b.remaining_bytes), (8 * MB, 8_000_000));

    for _ in 0..2 {
        let out = fail_replacing(&mut kit, &new, Some(&old)).await;
        let refunds: Value = serde_json::from_str(&out.refunds).unwrap();
        assert_eq!(refunds.as_array().unwrap().len(), 1, "{refunds}");
        assert_eq!(
            (
                &refunds[0]["invoice"],
                &refunds[0]["bytes"],
                &refunds[0]["amount"],
                &refunds[0]["untouched"]
            ),
            (
                &json!("inv_top"),
                &json!(10 * MB),
                &json!("0.03"),
                &json!(true)
            ),
            "the top-up whole: {refunds}"
        );
        assert_eq!(out.restored.as_deref(), Some(old.as_str()));
        let hold = out
            .hold
            .expect("the old SIM is held: its balance is used up");
        assert_eq!((hold.iccid.as_str(), hold.hold), (old.as_str(), true));
        let b = balance(&mut kit, &old).await;
        assert_eq!(
            (b.closed, b.credited_bytes, b.used_bytes, b.remaining_bytes),
            (false, 10 * MB, 12 * MB, -2_000_000),
            "all the old SIM used, against its own balance"
        );
    }
}

/// A replacement that fails between the switch's two updates (the old account gave its data up, the new one
/// had not taken it: here the new account's write fails): there is nothing on the replacement to close, and
/// the old SIM takes its balance back (the SIM record names it); the switch's move, resumed, is refused and
/// leaves it there. Before, nothing came back (the replacement had no account naming the old SIM), and the
/// resumed move bounced: the old SIM stayed in service with its account closed, its balance owed back.
#[tokio::test]
async fn a_replacement_failing_mid_switch_leaves_the_balance_on_the_old_sim() {
    let (old, new) = (iccid(93), iccid(94));
    let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prefix: &'static str = Box::leak(format!("balance/{new}").into_boxed_str());
    let store = std::sync::Arc::new(crate::failing_writes(prefix, &failing));
    let mut kit = Kit::builder("metering").store(store).build().await.unwrap();
    open(&mut kit, &old, 10).await;
    ingest(
        &mut kit,
        vec![receipt(&old, "tmobile", "s", 1, 4 * MB, "310-260")],
    )
    .await;
    failing.store(true, std::sync::atomic::Ordering::SeqCst);
    let halfway = transfer(&mut kit, &old, &new, "tmobile").await;
    assert!(halfway.is_err(), "{halfway:?}");
    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(balance(&mut kit, &old).await.closed, "given up");

    let out = fail_replacing(&mut kit, &new, Some(&old)).await;
    assert_eq!(out.refunds, "[]");
    assert_eq!(out.restored.as_deref(), Some(old.as_str()));
    let b = balance(&mut kit, &old).await;
    assert_eq!(
        (b.closed, b.remaining_bytes),
        (false, 6_000_000),
        "the balance is back"
    );
    // The switch's move, resumed (its payment sent again): refused, the balance stays.
    let resumed = transfer(&mut kit, &old, &new, "tmobile").await;
    assert!(
        matches!(resumed, Err(types::Error::Conflict(_))),
        "{resumed:?}"
    );
    let b = balance(&mut kit, &old).await;
    assert_eq!((b.closed, b.remaining_bytes), (false, 6_000_000));
    assert_eq!(
        close(&mut kit, &new).await,
        json!([]),
        "nothing on the failed SIM"
    );
}

/// A replacement that moved on itself (switched again before it failed) gives nothing back: the old SIM's
/// balance lives on the next SIM. Before, the old account took it back as well: the same credits on two SIMs.
#[tokio::test]
async fn a_failed_replacement_that_moved_on_gives_nothing_back() {
    let mut kit = Kit::builder("metering").build().await.unwrap();
    let (old, new, next) = (iccid(95), iccid(96), iccid(97));
    open(&mut kit, &old, 10).await;
    transfer(&mut kit, &old, &new, "tmobile").await.unwrap();
    transfer(&mut kit, &new, &next, "tmobile").await.unwrap();
    let out = fail_replacing(&mut kit, &new, Some(&old)).await;
    assert_eq!((out.refunds.as_str(), out.restored), ("[]", None));
    assert!(balance(&mut kit, &old).await.closed, "nothing back");
    assert_eq!(balance(&mut kit, &next).await.remaining_bytes, 10_000_000);
}

/// A switch whose old SIM was terminated (closed) since the move, and whose replacement then fails (the
/// gateway's order: `transfer`, the old SIM's `close`, `fail` of the new SIM, then the old SIM's refunds,
/// `refund_unused` reading its `close`): the data does not come back to a SIM nobody can use; the moved value,
/// less what the old SIM used since the move, is owed once, by the old SIM's close, and not by the failed SIM.
/// Repeats owe nothing more. (The metering side only: the refund job's payment is the verifier's.)
#[tokio::test]
async fn a_switch_whose_old_sim_was_terminated_owes_the_moved_value_from_the_old_sim() {
    let mut kit = Kit::builder("metering").build().await.unwrap();
    let (old, new) = (iccid(98), iccid(100));
    open(&mut kit, &old, 10).await; // 10 MB for $0.03
    ingest(
        &mut kit,
        vec![receipt(&old, "tmobile", "s", 1, 4 * MB, "310-260")],
    )
    .await;
    transfer(&mut kit, &old, &new, "tmobile").await.unwrap(); // 6 MB moved
    // 1 MB the old SIM reports after the move, handed on to the replacement.
    ingest(
        &mut kit,
        vec![receipt(&old, "tmobile", "s", 2, MB, "310-260")],
    )
    .await;
    assert_eq!(
        close(&mut kit, &old).await,
        json!([]),
        "terminated: its balance is away"
    );

    let expected = json!([{ "invoice": "inv_act", "bytes": 5 * MB, "amount": "0.015" }]);
    for _ in 0..2 {
        let out = fail_replacing(&mut kit, &new, Some(&old)).await;
        assert_eq!(
            (out.refunds.as_str(), out.restored),
            ("[]", None),
            "the failed SIM owes none of it, and nothing comes back"
        );
        let refunds = close(&mut kit, &old).await;
        assert_eq!(owed(&refunds), expected, "owed by the old SIM: {refunds}");
        assert_ne!(refunds[0]["untouched"], true, "data, not whole: {refunds}");
    }
    assert_eq!(
        close(&mut kit, &new).await,
        json!([]),
        "nothing on the failed SIM"
    );
    assert!(balance(&mut kit, &old).await.closed);
}

/// The shares of the old SIM's refunds (invoice, bytes, amount).
fn owed(refunds: &Value) -> Value {
    refunds
        .as_array()
        .unwrap()
        .iter()
        .map(|s| json!({ "invoice": s["invoice"], "bytes": s["bytes"], "amount": s["amount"] }))
        .collect()
}

/// The same with the replacement failing between the switch's two updates (it never took the moved data):
/// the old SIM, terminated, owes the moved value less what it used since, once. The switch's move resumed
/// afterwards (its payment sent again) is refused by the failed SIM and bounces (kernel `Account::bounce`):
/// the old SIM still owes what it owed. Before, the bounce overwrote those refunds with the whole moved value,
/// the 1 MB the old SIM used since the move owed back too.
#[tokio::test]
async fn a_bounce_after_a_terminated_old_sim_owes_what_it_owed() {
    let (old, new) = (iccid(101), iccid(102));
    let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prefix: &'static str = Box::leak(format!("balance/{new}").into_boxed_str());
    let store = std::sync::Arc::new(crate::failing_writes(prefix, &failing));
    let mut kit = Kit::builder("metering").store(store).build().await.unwrap();
    open(&mut kit, &old, 10).await;
    ingest(
        &mut kit,
        vec![receipt(&old, "tmobile", "s", 1, 4 * MB, "310-260")],
    )
    .await;
    failing.store(true, std::sync::atomic::Ordering::SeqCst);
    let halfway = transfer(&mut kit, &old, &new, "tmobile").await;
    assert!(halfway.is_err(), "{halfway:?}");
    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    ingest(
        &mut kit,
        vec![receipt(&old, "tmobile", "s", 2, MB, "310-260")],
    )
    .await;
    assert_eq!(close(&mut kit, &old).await, json!([]));
    let out = fail_replacing(&mut kit, &new, Some(&old)).await;
    assert_eq!((out.refunds.as_str(), out.restored), ("[]", None));
    let expected = json!([{ "invoice": "inv_act", "bytes": 5 * MB, "amount": "0.015" }]);
    assert_eq!(owed(&close(&mut kit, &old).await), expected);
    let resumed = transfer(&mut kit, &old, &new, "tmobile").await;
    assert!(
        matches!(resumed, Err(types::Error::Conflict(_))),
        "{resumed:?}"
    );
    assert_eq!(owed(&close(&mut kit, &old).await), expected, "owed once");
}
