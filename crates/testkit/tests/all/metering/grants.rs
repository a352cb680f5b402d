//! Quota grants in the metering component (kernel `usage::grant`): each reserves its bytes until usage reports
//! them or the grant lapses; a terminate's refunds leave out what outstanding grants let the device use, and
//! the terminated SIM's receipts end a day after it.

use super::*;

/// Grant up to `quota` bytes of `iccid` to its carrier (reserved) at the clock `at`.
async fn grant_at(
    kit: &mut Kit,
    iccid: &str,
    quota: Option<u64>,
    at: u64,
) -> esim402_testkit::metering::Granted {
    ask_at(kit, iccid, quota, true, at).await
}

/// Ask for quota, reserved or not (`reserve`: the carrier asks; not: the owner).
async fn ask_at(
    kit: &mut Kit,
    iccid: &str,
    quota: Option<u64>,
    reserve: bool,
    at: u64,
) -> esim402_testkit::metering::Granted {
    let id = iccid.to_owned();
    kit.call(async move |a, g| g.metering().call_grant(a, id, quota, reserve, at).await)
        .await
        .unwrap()
        .unwrap()
}

/// The owner's quota request is advice: it counts the carrier's outstanding grants and reserves nothing, so
/// a device asking every tick never starves its network of quota.
#[tokio::test]
async fn the_owners_quota_request_reserves_nothing() {
    let mut kit = Kit::builder("metering").build().await.unwrap();
    let id = iccid(300);
    open(&mut kit, &id, 2).await;
    let t = now();
    for _ in 0..3 {
        let advice = ask_at(&mut kit, &id, Some(1_500_000), false, t).await;
        assert_eq!(
            (advice.bytes, advice.balance.reserved_bytes),
            (1_500_000, 0)
        );
    }
    assert_eq!(
        grant_at(&mut kit, &id, Some(1_500_000), t).await.bytes,
        1_500_000
    );
    let advice = ask_at(&mut kit, &id, Some(1_500_000), false, t).await;
    assert_eq!(
        (advice.bytes, advice.balance.reserved_bytes),
        (400_000, 1_500_000),
        "what the carrier holds is not offered (nor the last 100 KB)"
    );
    assert_eq!(
        grant_at(&mut kit, &id, Some(1_500_000), t).await.bytes,
        400_000
    );
}

/// Two grants asked before any report hand out the balance once: the second gets what the first left, the
/// third nothing (low). Before, each quota request was granted from the balance alone, so both got 1.5 of 2 MB.
#[tokio::test]
async fn grants_asked_before_any_report_never_hand_out_the_same_bytes() {
    let mut kit = Kit::builder("metering").build().await.unwrap();
    let id = iccid(301);
    open(&mut kit, &id, 2).await;
    let t = now();
    let first = grant_at(&mut kit, &id, Some(1_500_000), t).await;
    assert_eq!((first.bytes, first.valid_until), (1_500_000, t + 900));
    assert_eq!(first.balance.reserved_bytes, 1_500_000);
    assert!(!first.balance.low, "{:?}", first.balance);
    let second = grant_at(&mut kit, &id, Some(1_500_000), t).await;
    assert_eq!(
        second.bytes, 400_000,
        "only what the first left above the low-water mark"
    );
    assert_eq!(second.balance.reserved_bytes, 1_900_000);
    assert!(second.balance.low);
    let third = grant_at(&mut kit, &id, None, t).await;
    assert_eq!((third.bytes, third.valid_until), (0, 0));
    assert!(third.balance.low && !third.balance.closed);
    // The balance shows what is reserved (it reads the clock: the grants are still live).
    let b = balance(&mut kit, &id).await;
    assert_eq!(
        (b.remaining_bytes, b.reserved_bytes, b.low),
        (2_000_000, 1_900_000, true)
    );
}

/// Reported usage consumes the reservation; what a grant left unused is held until it lapses (its 15 minutes
/// of use and 15 of reporting), then granted again.
#[tokio::test]
async fn reported_usage_consumes_a_grant_and_its_unused_part_lapses() {
    let mut kit = Kit::builder("metering").build().await.unwrap();
    let id = iccid(302);
    open(&mut kit, &id, 2).await;
    let t = now();
    assert_eq!(
        grant_at(&mut kit, &id, Some(1_500_000), t).await.bytes,
        1_500_000
    );
    ingest(
        &mut kit,
        vec![receipt(&id, "tmobile", "s", 1, 1_000_000, "310-260")],
    )
    .await;
    // 1 MB used, 0.5 MB of the grant still outstanding: 0.5 MB may be granted.
    let next = grant_at(&mut kit, &id, Some(2 * MB), t + 60).await;
    assert_eq!(next.bytes, 400_000);
    assert_eq!(next.balance.used_bytes, MB);
    // Both lapsed (on whole minutes): the 1 MB not reported may be granted again.
    let later = grant_at(&mut kit, &id, Some(2 * MB), t + 60 + 1_800 + 60).await;
    assert_eq!(
        (later.bytes, later.balance.reserved_bytes),
        (900_000, 900_000)
    );
}

/// A terminate right after a grant refunds what is left beyond the grant: the carrier reports the grant's
/// usage later, and it is charged then (before, the refund counted only reported usage, so those bytes were
/// refunded and carried). The terminated SIM's receipts are accepted for a day after the close, not after.
#[tokio::test]
async fn a_terminate_leaves_outstanding_grants_out_of_its_refunds() {
    let mut kit = Kit::builder("metering").build().await.unwrap();
    let id = iccid(303);
    open(&mut kit, &id, 10).await;
    let t = now();
    assert_eq!(grant_at(&mut kit, &id, Some(MB), t).await.bytes, MB);
    ingest(
        &mut kit,
        vec![receipt(&id, "tmobile", "s", 1, 300_000, "310-260")],
    )
    .await;
    let shares = close_at(&mut kit, &id, t + 10).await;
    assert_eq!(shares[0]["bytes"], 9 * MB, "{shares}");
    assert_eq!(shares[0]["amount"], "0.027", "9/10 of 0.03 USDC: {shares}");
    // Closed: no more grants.
    let g = grant_at(&mut kit, &id, None, t + 20).await;
    assert_eq!(g.bytes, 0);
    assert!(g.balance.closed);
    // The grant's usage, reported after the close, is charged; a window starting over a day after it is not.
    let late = receipt(&id, "tmobile", "s", 2, 700_000, "310-260");
    let after = receipt_at(
        &id,
        "tmobile",
        "s",
        3,
        100_000,
        "310-260",
        t + 10 + 86_400 + 1_000,
    );
    let out = ingested_at(&mut kit, vec![late, after], t + 10 + 86_400 + 1_000).await;
    let report: Value = serde_json::from_str(&out.report).unwrap();
    assert_eq!(report["results"][0]["status"], "accepted", "{report}");
    assert_eq!(
        report["results"][1]["reason"], "after_retirement",
        "{report}"
    );
    assert_eq!(balance(&mut kit, &id).await.used_bytes, MB);
    // Closing again changes nothing.
    assert_eq!(close_at(&mut kit, &id, t + 99).await, shares);
}

/// A terminate seals the SIM's reservation as it reads it for the refunds, and a grant whose reservation would
/// land after the seal is refused, whatever the account said when the grant read it. Before, a grant that read
/// the account before the terminate marked it closing reserved its bytes anyway, after the terminate had read
/// the grants; it then saw the account closing and handed nothing out, while its bytes counted as used: the
/// refund was short by that grant. (The seal is set here in place, as that terminate would have left it, on an
/// account the grant reads as open.)
#[tokio::test]
async fn a_grant_after_the_terminates_seal_is_refused() {
    let mut kit = Kit::builder("metering").build().await.unwrap();
    let id = iccid(307);
    open(&mut kit, &id, 10).await;
    let t = now();
    assert_eq!(grant_at(&mut kit, &id, Some(MB), t).await.bytes, MB);
    let key = esim402_core::store::keys::meter_grant(&id);
    let mut reservation: Value = serde_json::from_slice(&kit.kv_get(&key).await.unwrap()).unwrap();
    assert_eq!(reservation.get("sealed"), None, "{reservation}");
    reservation["sealed"] = json!(true);
    kit.kv_put(&key, reservation.to_string().as_bytes()).await;
    let refused = grant_at(&mut kit, &id, Some(MB), t + 1).await;
    assert_eq!((refused.bytes, refused.valid_until), (0, 0), "{refused:?}");
    assert_eq!(
        refused.balance.reserved_bytes, MB,
        "the sealed grant stays reserved"
    );

    // A real terminate seals it, with the grant the refunds leave out.
    let other = iccid(308);
    open(&mut kit, &other, 10).await;
    assert_eq!(grant_at(&mut kit, &other, Some(MB), t).await.bytes, MB);
    let shares = close_at(&mut kit, &other, t + 10).await;
    assert_eq!(shares[0]["bytes"], 9 * MB, "{shares}");
    let key = esim402_core::store::keys::meter_grant(&other);
    let sealed: Value = serde_json::from_slice(&kit.kv_get(&key).await.unwrap()).unwrap();
    assert_eq!(sealed["sealed"], true, "{sealed}");
    assert_eq!(sealed["grants"][0]["bytes"], MB, "{sealed}");
}

/// Moves the SIM's account to another SIM (a switch's `transfer_out`, set in place) right after a grant's
/// reservation lands, once: the switch that read the reservation before that write carried nothing of it.
struct MoveAfterGrant {
    iccid: String,
    to: String,
    armed: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl esim402_host::kv::wrapped::Hook for MoveAfterGrant {
    async fn after_write(&self, inner: &dyn esim402_host::kv::Backend, key: &str) {
        use esim402_core::store::{cell::Stored, keys};
        if key != keys::meter_grant(&self.iccid)
            || !self.armed.swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        let account = keys::balance(&self.iccid);
        let mut stored = Stored::decode(&inner.get(&account).await.unwrap().unwrap()).unwrap();
        let mut a: Value = serde_json::from_slice(stored.data.as_ref().unwrap()).unwrap();
        a["moved_to"] = json!([self.to, []]);
        a["closed"] = json!([]);
        stored.data = Some(a.to_string().into_bytes());
        inner.set(&account, &stored.encode()).await.unwrap();
    }
}

/// A grant whose reservation lands after a switch moved the SIM's data hands nothing out: the move may have
/// carried the SIM's grants to the new SIM before it, so a grant handed out here would be reserved nowhere and
/// its usage charged to the new SIM beyond its balance. (Terminates seal the reservation instead; a review of
/// the seal found switches relying on this re-read, which the seal had replaced.)
#[tokio::test]
async fn a_grant_landing_after_a_switch_moved_the_data_hands_nothing_out() {
    let id = iccid(309);
    let hook = MoveAfterGrant {
        iccid: id.clone(),
        to: iccid(310),
        armed: std::sync::atomic::AtomicBool::new(false),
    };
    let store = std::sync::Arc::new(esim402_host::kv::wrapped::Wrapped::new(
        std::sync::Arc::new(esim402_host::kv::MemoryStore::default()),
        hook,
    ));
    let mut kit = Kit::builder("metering")
        .store(store.clone())
        .build()
        .await
        .unwrap();
    open(&mut kit, &id, 10).await;
    store
        .hook
        .armed
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let g = grant_at(&mut kit, &id, Some(MB), now()).await;
    assert_eq!((g.bytes, g.valid_until), (0, 0), "{g:?}");
    assert!(
        !store.hook.armed.load(std::sync::atomic::Ordering::SeqCst),
        "the move landed after the reservation"
    );
}

/// Usage the old SIM reports after a switch to another carrier, and the grants it still has outstanding, draw
/// on the new SIM by their value too: 7 MB used on T-Mobile ($0.003/MB) are worth $0.021, 6 MB on Verizon
/// ($0.0035/MB); a 3.5 MB grant reserves 3 MB there. Before, they were handed on byte for byte (7 MB), so a
/// switch to a dearer carrier charged its late usage ~17 % more than the old carrier's price.
#[tokio::test]
async fn late_usage_after_a_switch_to_another_carrier_draws_on_the_new_sim_by_its_value() {
    let mut kit = Kit::builder("metering").build().await.unwrap();
    let (old, new) = (iccid(341), iccid(342));
    open(&mut kit, &old, 20).await;
    let t = now();
    assert_eq!(
        grant_at(&mut kit, &old, Some(3_500_000), t).await.bytes,
        3_500_000
    );
    let moved = transfer(&mut kit, &old, &new, "verizon").await.unwrap();
    // The test credit's $0.03 buys 8.571428 MB on Verizon.
    assert_eq!(moved.balance.credited_bytes, 8_571_428);
    assert_eq!(moved.balance.reserved_bytes, 3_000_000, "{moved:?}");
    let (report, _, _) = ingest(
        &mut kit,
        vec![receipt(&old, "tmobile", "s", 1, 7 * MB, "310-260")],
    )
    .await;
    assert_eq!(report["totals"]["accepted"], 1, "{report}");
    let b = balance(&mut kit, &new).await;
    assert_eq!(
        (b.used_bytes, b.remaining_bytes, b.reserved_bytes),
        (6 * MB, 2_571_428, 0),
        "the grant's usage reported: {b:?}"
    );
}

/// A switch hands what the old SIM still reports to the new SIM, so the old SIM's outstanding grant is the new
/// SIM's to reserve: of the 10 MB moved, 7.9 may be granted while the old SIM's 2 MB grant is live (the last 100 KB
/// never are).
#[tokio::test]
async fn a_switch_carries_the_old_sims_outstanding_grants() {
    let mut kit = Kit::builder("metering").build().await.unwrap();
    let (old, new) = (iccid(304), iccid(305));
    open(&mut kit, &old, 10).await;
    let t = now();
    assert_eq!(
        grant_at(&mut kit, &old, Some(2 * MB), t).await.bytes,
        2 * MB
    );
    transfer(&mut kit, &old, &new, "tmobile").await.unwrap();
    let b = balance(&mut kit, &new).await;
    assert_eq!(
        (b.credited_bytes, b.reserved_bytes),
        (10 * MB, 2 * MB),
        "{b:?}"
    );
    let g = grant_at(&mut kit, &new, Some(10 * MB), t).await;
    assert_eq!(g.bytes, 7_900_000);
    // The old SIM, switched away, is granted nothing.
    let g = grant_at(&mut kit, &old, None, t).await;
    assert!(g.bytes == 0 && g.balance.closed, "{g:?}");
}
