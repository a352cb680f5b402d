use esim402_core::ledger::{EntryFields, EntryKind};
use esim402_testkit::{Kit, types};
use serde_json::json;

const RECIPIENT: &str = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC";

pub(crate) fn builder() -> esim402_testkit::Builder {
    Kit::builder("invoices")
        .var("payment_network", "eip155:31337")
        .var("usdc_address", "0x5FbDB2315678afecb367f032d93F642f64180aa3")
        .var("usdc_eip712_name", "USD Coin")
        .var("usdc_eip712_version", "2")
        .var("recipient_address", RECIPIENT)
        .var("invoice_ttl_secs", "900")
}

async fn kit() -> Kit {
    builder().build().await.unwrap()
}

fn purchase() -> types::Purchase {
    types::Purchase::Activation(crate::activation("us-west", 100))
}

/// The quote `purchase()` is sealed with at `amount`: T-Mobile's, data worth 5/7 of it (100 MB at $0.003 per MB
/// of $0.42).
fn quoted(amount: u64) -> Option<types::SealedQuote> {
    Some(types::SealedQuote {
        carrier: "tmobile".into(),
        data_value: amount / 7 * 5,
    })
}

pub(crate) async fn issue(kit: &mut Kit, amount: u64, now: u64) -> types::Invoice {
    kit.call(async move |a, g| {
        g.invoices()
            .call_issue(a, purchase(), amount, quoted(amount), Vec::new(), now)
            .await
    })
    .await
    .unwrap()
    .unwrap()
}

pub(crate) async fn get(
    kit: &mut Kit,
    id: &str,
    now: u64,
) -> Result<Option<types::Invoice>, types::Error> {
    let id = id.to_owned();
    kit.call(async move |a, g| g.invoices().call_get(a, id, now).await)
        .await
        .unwrap()
}

pub(crate) async fn begin(kit: &mut Kit, id: &str, fingerprint: &str, now: u64) -> types::Begin {
    let (id, fingerprint) = (id.to_owned(), fingerprint.to_owned());
    kit.call(async move |a, g| {
        g.invoices()
            .call_begin_payment(a, id, fingerprint, false, now)
            .await
    })
    .await
    .unwrap()
    .unwrap()
}

pub(crate) async fn finish(
    kit: &mut Kit,
    id: &str,
    holder: &str,
    end: types::PaymentEnd,
    status: u16,
) {
    let (id, holder) = (id.to_owned(), holder.to_owned());
    let response = types::StoredResponse {
        status,
        headers: Vec::new(),
        body: "{}".into(),
    };
    kit.call(async move |a, g| {
        g.invoices()
            .call_finish_payment(a, id, holder, end, response)
            .await
    })
    .await
    .unwrap()
    .unwrap();
}

/// Every key in the store, sorted.
async fn all_keys(kit: &Kit) -> Vec<String> {
    let mut keys = kit.kv().keys().await.unwrap();
    keys.sort();
    keys
}

/// Every key in the store that is not a versioned cell's bookkeeping (`<key>@v<n>…`).
async fn cell_keys(kit: &Kit) -> Vec<String> {
    let mut keys = all_keys(kit).await;
    keys.retain(|k| !k.contains('@'));
    keys
}

#[tokio::test]
async fn issue_seals_the_invoice_with_the_configured_payment_option() {
    let mut kit = kit().await;
    let inv = issue(&mut kit, 420_000, 1_000).await;
    assert_eq!(inv.amount, 420_000);
    assert_eq!(inv.created_at, 1_000);
    assert_eq!(inv.expires_at, 1_900);
    assert_eq!(inv.status, types::InvoiceStatus::Open);
    assert_eq!(inv.options.len(), 1);
    assert_eq!(inv.options[0].network, "eip155:31337");
    assert_eq!(inv.options[0].pay_to, RECIPIENT);
    assert_eq!(inv.options[0].amount, 420_000);
    assert_eq!(inv.options[0].eip712_name, "USD Coin");
    assert!(inv.id.starts_with("inv_"), "{}", inv.id);

    // Stateless: the terms live in the id; nothing is stored for the invoice (only the generated MAC key).
    assert!(kit.kv_get(&format!("invoice/{}", inv.id)).await.is_none());
    assert_eq!(cell_keys(&kit).await, ["secret/invoice-key"]);

    let read = get(&mut kit, &inv.id, 1_001).await.unwrap().unwrap();
    assert_eq!(read.id, inv.id);
    assert_eq!(read.status, types::InvoiceStatus::Open);
    assert_eq!(
        (read.amount, read.created_at, read.expires_at),
        (420_000, 1_000, 1_900)
    );
    assert_eq!(read.options.len(), 1);
    assert_eq!(read.options[0].pay_to, RECIPIENT);
    assert!(
        matches!(&read.purchase, types::Purchase::Activation(r) if r.region == "us-west" && r.data_mb == 100)
    );

    // With `invoice_secret` set, issuing writes nothing but the store's salt (once, binding the key to it).
    let mut keyed = builder()
        .var("invoice_secret", "a test secret of enough length")
        .build()
        .await
        .unwrap();
    issue(&mut keyed, 1, 1).await;
    assert_eq!(cell_keys(&keyed).await, ["secret/invoice-salt"]);
}

#[tokio::test]
async fn an_id_not_issued_here_opens_to_nothing() {
    // The equivalent of an unknown invoice now that nothing is stored: a tampered id, or one sealed under
    // another key, does not open.
    let mut kit = kit().await;
    let inv = issue(&mut kit, 420_000, 1_000).await;
    let (body, mac) = inv.id.rsplit_once('.').unwrap();
    let flipped = if mac.starts_with('A') { 'B' } else { 'A' };
    let tampered = format!("{body}.{flipped}{}", &mac[1..]);
    assert!(get(&mut kit, &tampered, 1_001).await.unwrap().is_none());

    let mut other = builder()
        .var("invoice_secret", "another deployment's secret")
        .build()
        .await
        .unwrap();
    assert!(get(&mut other, &inv.id, 1_001).await.unwrap().is_none());
    assert!(get(&mut kit, "inv_nope", 1_001).await.unwrap().is_none());
}

#[tokio::test]
async fn an_invoice_read_after_its_deadline_is_expired() {
    let mut kit = kit().await;
    let inv = issue(&mut kit, 50_000, 1_000).await;
    let read = get(&mut kit, &inv.id, 1_901).await.unwrap().unwrap();
    assert_eq!(read.status, types::InvoiceStatus::Expired);
}

#[tokio::test]
async fn racing_mark_paid_calls_have_exactly_one_winner() {
    let mut kit = kit().await;
    let inv = issue(&mut kit, 420_000, 1_000).await;
    // Money is recorded on the payment record, which a payment creates first.
    let types::Begin::Drive(_) = begin(&mut kit, &inv.id, "0xfingerprint", 1_001).await else {
        panic!("the first payment drives");
    };
    let id = inv.id.clone();
    // 32 concurrent calls into the same instance: the component's CAS loop must let exactly one through.
    let results = kit
        .call(async move |a, g| {
            let calls = (0..32).map(|i| {
                g.invoices()
                    .call_mark_paid(a, id.clone(), format!("0x{i:064x}"), "0xpayer".into())
            });
            crate::join_all(calls)
                .await
                .into_iter()
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .unwrap();
    let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    assert_eq!(winners[0].status, types::InvoiceStatus::Paid);
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| matches!(e, types::Error::Conflict(m) if m.contains("paid")))
    );
    let stored = kit.kv_get(&format!("invoice/{}", inv.id)).await.unwrap();
    let json: serde_json::Value = serde_json::from_slice(&stored).unwrap();
    assert_eq!(
        json["paid"]["transaction"].as_str(),
        winners[0].transaction.as_deref()
    );
    let read = get(&mut kit, &inv.id, 1_002).await.unwrap().unwrap();
    assert_eq!(read.status, types::InvoiceStatus::Paid);
    assert_eq!(read.transaction, winners[0].transaction);
    assert_eq!(read.payer.as_deref(), Some("0xpayer"));

    // The winner's mark sent again (a retry whose first answer was lost) is told apart from another's, so the
    // gateway knows its own first mark landed; a mark without a payment record is a fault, not a repeat.
    let (id, tx) = (inv.id.clone(), winners[0].transaction.clone().unwrap());
    let again = kit
        .call(async move |a, g| {
            g.invoices()
                .call_mark_paid(a, id, tx, "0xpayer".into())
                .await
        })
        .await
        .unwrap();
    let same = esim402_core::paid::PAID_BY_THIS_TRANSACTION;
    assert!(
        matches!(&again, Err(types::Error::Conflict(m)) if m.ends_with(same)),
        "{again:?}"
    );
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| matches!(e, types::Error::Conflict(m) if !m.ends_with(same)))
    );
    let unpaid = issue(&mut kit, 420_000, 1_000).await;
    let orphan = kit
        .call(async move |a, g| {
            g.invoices()
                .call_mark_paid(a, unpaid.id, "0x01".into(), "0xpayer".into())
                .await
        })
        .await
        .unwrap();
    assert!(
        matches!(&orphan, Err(types::Error::Internal(_))),
        "{orphan:?}"
    );
}

#[tokio::test]
async fn another_payment_never_takes_an_invoice_held_or_settled_by_one() {
    // What the verifier's per-invoice settlement record used to guarantee: once one payment holds or settled
    // an invoice, a different payment for it is a conflict (`already settled`), never a second settlement.
    let mut kit = kit().await;
    let inv = issue(&mut kit, 420_000, 1_000).await;
    let types::Begin::Drive(first) = begin(&mut kit, &inv.id, "0xa", 1_001).await else {
        panic!("the first payment drives");
    };
    assert!(first.first && !first.resumed);
    let conflict = |b: &types::Begin| matches!(b, types::Begin::Conflict(m) if m.starts_with("already settled"));
    let live = begin(&mut kit, &inv.id, "0xb", 1_002).await;
    assert!(conflict(&live), "{live:?}");

    // Interrupted after broadcasting (pending settlement): still held, the same payment resumes it.
    finish(
        &mut kit,
        &inv.id,
        &first.holder,
        types::PaymentEnd::Resume,
        202,
    )
    .await;
    let other = begin(&mut kit, &inv.id, "0xb", 1_003).await;
    assert!(conflict(&other), "{other:?}");
    let types::Begin::Drive(again) = begin(&mut kit, &inv.id, "0xa", 1_003).await else {
        panic!("the same payment resumes");
    };
    assert!(!again.first);
    assert!(
        again.resumed,
        "an earlier attempt may have acted: a refusal must withdraw, not release"
    );

    // Settled: every other payment is refused, and so is a repeat without a payment-identifier.
    finish(
        &mut kit,
        &inv.id,
        &again.holder,
        types::PaymentEnd::Done,
        200,
    )
    .await;
    for fp in ["0xb", "0xa"] {
        let b = begin(&mut kit, &inv.id, fp, 1_004).await;
        assert!(conflict(&b), "{fp}: {b:?}");
    }
    // Four versions of the record (begin, resume, begin, done): each kept its claim counter, and each owner
    // deleted the proposal it no longer needed, so only the newest version's is left.
    let record = format!("invoice/{}@v", inv.id);
    let bookkeeping: Vec<String> = all_keys(&kit)
        .await
        .into_iter()
        .filter_map(|k| k.strip_prefix(&record).map(str::to_owned))
        .collect();
    assert_eq!(bookkeeping.len(), 5, "{bookkeeping:?}");
    assert_eq!(bookkeeping[..4], ["1", "2", "3", "4"], "counters");
    assert!(bookkeeping[4].starts_with("4."), "{bookkeeping:?}");

    // A payment refused before any effect leaves the invoice free for another.
    let inv2 = issue(&mut kit, 420_000, 1_000).await;
    let types::Begin::Drive(d) = begin(&mut kit, &inv2.id, "0xc", 1_001).await else {
        panic!("drives");
    };
    finish(
        &mut kit,
        &inv2.id,
        &d.holder,
        types::PaymentEnd::Release,
        402,
    )
    .await;
    assert!(matches!(
        begin(&mut kit, &inv2.id, "0xd", 1_002).await,
        types::Begin::Drive(_)
    ));
}

async fn renew(kit: &mut Kit, id: &str, holder: &str, now: u64) -> Result<u64, types::Error> {
    let (id, holder) = (id.to_owned(), holder.to_owned());
    kit.call(async move |a, g| g.invoices().call_renew_payment(a, id, holder, now).await)
        .await
        .unwrap()
}

/// A driver's lease (its end comes with the claim) is renewed by its holder before a long phase; once the
/// lease ran out and the same payment was sent again, the new driver holds the record and the old one's
/// renewal is a conflict, so it stops before its next effect (before, nothing renewed a lease: verification,
/// an order and a settlement at their slowest could outlast it, and a duplicate drove the payment alongside).
#[tokio::test]
async fn a_driver_renews_its_lease_and_one_taken_over_cannot() {
    let lease = esim402_core::paid::LEASE_SECS;
    let mut kit = kit().await;
    let inv = issue(&mut kit, 420_000, 1_000).await;
    let types::Begin::Drive(first) = begin(&mut kit, &inv.id, "0xa", 1_001).await else {
        panic!("the first payment drives");
    };
    assert_eq!(first.lease_until, 1_001 + lease);
    assert_eq!(
        renew(&mut kit, &inv.id, &first.holder, 1_100)
            .await
            .unwrap(),
        1_100 + lease
    );
    // Still held: the same payment sent again before the renewed lease ends is refused.
    let live = begin(&mut kit, &inv.id, "0xa", 1_001 + lease).await;
    assert!(
        matches!(&live, types::Begin::Conflict(m) if m == esim402_core::paid::IN_PROGRESS),
        "{live:?}"
    );
    // Past the renewed lease, a duplicate takes over; the first driver can no longer renew.
    let types::Begin::Drive(second) = begin(&mut kit, &inv.id, "0xa", 1_100 + lease).await else {
        panic!("the same payment takes over a lapsed lease");
    };
    assert_eq!(second.lease_until, 1_100 + lease + lease);
    let stale = renew(&mut kit, &inv.id, &first.holder, 1_101 + lease).await;
    assert!(
        matches!(&stale, Err(types::Error::Conflict(m)) if m == esim402_core::paid::IN_PROGRESS),
        "{stale:?}"
    );
    assert!(
        renew(&mut kit, &inv.id, &second.holder, 1_102 + lease)
            .await
            .is_ok()
    );
    // Ended: nothing to renew.
    finish(
        &mut kit,
        &inv.id,
        &second.holder,
        types::PaymentEnd::Done,
        200,
    )
    .await;
    assert!(matches!(
        renew(&mut kit, &inv.id, &second.holder, 1_103 + lease).await,
        Err(types::Error::Conflict(_))
    ));
    // No record at all, and an id that is not an invoice.
    let never = issue(&mut kit, 420_000, 1_000).await;
    assert!(matches!(
        renew(&mut kit, &never.id, "h", 1_001).await,
        Err(types::Error::Conflict(_))
    ));
    assert!(matches!(
        renew(&mut kit, "not an invoice id", "h", 1_001).await,
        Err(types::Error::InvalidInput(_))
    ));
}

/// `try-issue` (the 402 path's synchronous call) has no answer until the instance has loaded its
/// configuration and key, then seals invoices `get` opens, as `issue` does; its errors are `issue`'s.
#[tokio::test]
async fn try_issue_seals_like_issue_once_the_configuration_is_loaded() {
    let mut kit = kit().await;
    let try_issue = async |kit: &mut Kit, amount: u64, now: u64| {
        kit.call(async move |a, g| {
            g.invoices()
                .call_try_issue(a, purchase(), amount, quoted(amount), Vec::new(), now)
                .await
        })
        .await
        .unwrap()
    };
    assert!(
        try_issue(&mut kit, 420_000, 1_000).await.is_none(),
        "no configuration loaded yet"
    );
    let issued = issue(&mut kit, 420_000, 1_000).await;
    let tried = try_issue(&mut kit, 420_000, 1_000).await.unwrap().unwrap();
    assert_ne!(tried.id, issued.id, "every invoice has its own nonce");
    assert_eq!(tried.amount, issued.amount);
    assert_eq!(tried.expires_at, issued.expires_at);
    assert_eq!(tried.options.len(), issued.options.len());
    let opened = get(&mut kit, &tried.id, 1_001).await.unwrap().unwrap();
    assert_eq!(
        (opened.id.as_str(), opened.amount),
        (tried.id.as_str(), 420_000)
    );
    assert!(matches!(opened.status, types::InvoiceStatus::Open));

    let zero = try_issue(&mut kit, 0, 1_000).await.unwrap();
    assert!(matches!(zero, Err(types::Error::InvalidInput(f)) if f.field == "amount"));
    assert!(kit.requests().is_empty(), "issuing calls nobody");
}

/// An activation's quote travels inside its id: the invoice opened later still says what its data was bought
/// at, and a quote that is not an activation's, or worth more than the invoice, is not sealed.
#[tokio::test]
async fn an_activations_quote_is_sealed_into_its_id() {
    let mut kit = kit().await;
    let issued = issue(&mut kit, 420_000, 1_000).await;
    let q = issued.quoted.clone().unwrap();
    assert_eq!((q.carrier.as_str(), q.data_value), ("tmobile", 300_000));
    let opened = get(&mut kit, &issued.id, 1_001).await.unwrap().unwrap();
    let q = opened.quoted.unwrap();
    assert_eq!((q.carrier.as_str(), q.data_value), ("tmobile", 300_000));

    let refused = async |kit: &mut Kit, purchase: types::Purchase, q: types::SealedQuote| {
        kit.call(async move |a, g| {
            g.invoices()
                .call_issue(a, purchase, 420_000, Some(q), Vec::new(), 1_000)
                .await
        })
        .await
        .unwrap()
    };
    let dear = types::SealedQuote {
        carrier: "tmobile".into(),
        data_value: 420_001,
    };
    let e = refused(&mut kit, purchase(), dear).await;
    assert!(
        matches!(&e, Err(types::Error::Internal(m)) if m.contains("worth more")),
        "{e:?}"
    );
    let switch = types::Purchase::Switch(types::SwitchRequest {
        iccid: "8901260000000000014".into(),
        target: types::SwitchTarget::Carrier("verizon".into()),
    });
    let e = refused(&mut kit, switch, quoted(420_000).unwrap()).await;
    assert!(
        matches!(&e, Err(types::Error::Internal(m)) if m.contains("activation")),
        "{e:?}"
    );
    let bad = types::SealedQuote {
        carrier: "Not A Carrier".into(),
        data_value: 1,
    };
    let e = refused(&mut kit, purchase(), bad).await;
    assert!(
        matches!(&e, Err(types::Error::InvalidInput(f)) if f.field == "quoted"),
        "{e:?}"
    );
}

#[tokio::test]
async fn bad_input_and_bad_configuration_are_typed_errors() {
    let mut kit = kit().await;
    let zero = kit
        .call(async |a, g| {
            g.invoices()
                .call_issue(a, purchase(), 0, None, Vec::new(), 1_000)
                .await
        })
        .await
        .unwrap();
    assert!(matches!(zero, Err(types::Error::InvalidInput(f)) if f.field == "amount"));

    let bad_id = get(&mut kit, "not an id", 0).await;
    assert!(matches!(bad_id, Err(types::Error::InvalidInput(f)) if f.field == "invoice_id"));

    let mut misconfigured = builder()
        .var("recipient_address", "not-an-address")
        .build()
        .await
        .unwrap();
    let err = misconfigured
        .call(async |a, g| {
            g.invoices()
                .call_issue(a, purchase(), 1, None, Vec::new(), 1)
                .await
        })
        .await
        .unwrap();
    assert!(matches!(err, Err(types::Error::Internal(m)) if m.contains("recipient_address")));
}

pub(crate) fn ledger_event(kind: &str, invoice: &str) -> types::LedgerEvent {
    types::LedgerEvent {
        kind: kind.into(),
        invoice: Some(invoice.into()),
        amount: Some(420_000),
        network: None,
        tx_hash: None,
        payer: None,
        details: Vec::new(),
    }
}

pub(crate) async fn log(
    kit: &mut Kit,
    now: u64,
    events: Vec<types::LedgerEvent>,
) -> Result<(), types::Error> {
    kit.call(async move |a, g| g.invoices().call_log_events(a, now, events, false).await)
        .await
        .unwrap()
}

pub(crate) async fn ledger_check(kit: &mut Kit) -> serde_json::Value {
    let body = kit
        .call(async move |a, g| g.invoices().call_ledger_verify(a).await)
        .await
        .unwrap()
        .unwrap();
    serde_json::from_str(&body).unwrap()
}

/// [`ledger_check`], asserted to verify with `count` entries; the check, for what else a test reads of it.
pub(crate) async fn ledger_ok(kit: &mut Kit, count: u64) -> serde_json::Value {
    let check = ledger_check(kit).await;
    assert_eq!(
        (&check["ok"], &check["count"]),
        (&json!(true), &json!(count)),
        "{check}"
    );
    check
}

/// The ledger's entries (`ledger-export`): one shard's, or (no shard) every shard's merged by time.
pub(crate) async fn ledger_entries(kit: &mut Kit, shard: Option<u16>) -> Vec<serde_json::Value> {
    let lines = kit
        .call(async move |a, g| g.invoices().call_ledger_export(a, shard, 0, 100).await)
        .await
        .unwrap()
        .unwrap();
    lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// An append that fails at the store parks the events it did not write in the outbox: the call succeeds
/// (they are logged, just not yet chained), the ledger check says how many wait, and once the store takes
/// writes again the check appends them, once, in order and with their original time. Before, the events
/// were lost and the caller only printed "LEDGER APPEND FAILED".
#[tokio::test]
async fn events_whose_append_fails_are_parked_and_drained_once() {
    let shard = esim402_core::ledger::shard_of("inv_parked");
    let prefix: &'static str = Box::leak(format!("ledger/{shard:02}/").into_boxed_str());
    let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut kit = builder()
        .store(std::sync::Arc::new(crate::failing_writes(prefix, &failing)))
        .build()
        .await
        .unwrap();
    let events = vec![
        ledger_event("invoice_issued", "inv_parked"),
        ledger_event("payment_verified", "inv_parked"),
    ];
    log(&mut kit, 1_000, events)
        .await
        .expect("parked is logged");

    // The shard still refuses writes: the drain appends nothing and the check says what waits.
    let check = ledger_check(&mut kit).await;
    assert_eq!(
        (&check["ok"], &check["count"], &check["parked"]),
        (&json!(true), &json!(0), &json!(2)),
        "{check}"
    );

    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    let check = ledger_ok(&mut kit, 2).await;
    assert!(check.get("parked").is_none(), "{check}");
    let again = ledger_check(&mut kit).await;
    assert_eq!(again["count"], 2, "drained once: {again}");
    assert_eq!(again["head"], check["head"]);

    let entries = ledger_entries(&mut kit, Some(shard)).await;
    let got: Vec<_> = entries
        .iter()
        .map(|e| (e["kind"].as_str().unwrap(), e["at"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        got,
        [("invoice_issued", 1_000), ("payment_verified", 1_000)]
    );
    assert!(
        entries[0]["details"]["outbox"]
            .as_str()
            .unwrap()
            .ends_with("/0"),
        "{}",
        entries[0]
    );
}

/// An outbox with batch `b1` of `invoice` parked (`refund_owed`, `refund_paid`, at 1 000), and its first event
/// as a drain appends it: with its outbox tag.
fn parked_pair(invoice: &str) -> (esim402_core::ledger::outbox::Outbox, types::LedgerEvent) {
    use esim402_core::ledger::{EntryFields, EntryKind};
    let fields = || EntryFields::default().invoice(invoice);
    let mut outbox = esim402_core::ledger::outbox::Outbox::default();
    outbox
        .park(
            "b1",
            1_000,
            vec![
                (EntryKind::RefundOwed, fields()),
                (EntryKind::RefundPaid, fields()),
            ],
            Default::default(),
        )
        .unwrap();
    let (kind, first) = outbox.batches[0].events[0].clone();
    let appended = types::LedgerEvent {
        details: first.details.clone().into_iter().collect(),
        ..ledger_event(kind.as_str(), invoice)
    };
    (outbox, appended)
}

/// A drain that appended part of a parked batch and then stopped (its lease lapsed) is taken over by the next
/// one, which appends only what the first did not: found by the events' outbox tags, scanning the shard from the
/// head count the first claim recorded.
#[tokio::test]
async fn a_lapsed_drain_is_taken_over_without_appending_twice() {
    let mut kit = kit().await;
    let shard = esim402_core::ledger::shard_of("inv_half");
    let (mut outbox, appended) = parked_pair("inv_half");
    // Claimed long ago (its lease is over) with the shard empty.
    outbox.claim("gone", 1_000, &[(shard, 0)].into());
    kit.kv()
        .set("ledger/outbox", &serde_json::to_vec(&outbox).unwrap())
        .await
        .unwrap();
    // What the lapsed drain appended before it stopped.
    log(&mut kit, 1_000, vec![appended]).await.unwrap();

    let check = ledger_ok(&mut kit, 2).await;
    assert!(check.get("parked").is_none(), "{check}");
    let tags: Vec<String> = ledger_entries(&mut kit, Some(shard))
        .await
        .iter()
        .map(|e| e["details"]["outbox"].to_string())
        .collect();
    assert_eq!(tags, ["\"b1/0\"", "\"b1/1\""], "each event once, in order");
}

/// A parked batch whose failed append won its first entry key's claim but never wrote the entry (a store fault,
/// or a crash, between the cell's claim and its publication: kernel `store::cell`) is drained once: the drain's
/// scan settles the claimed key (adopting the claimant's entry) before it decides what landed. Before, the scan
/// read the key as absent, the drain's own append then adopted that entry and appended the event once more.
#[tokio::test]
async fn an_entry_claimed_but_never_written_is_not_appended_again() {
    use esim402_core::ledger::{ChainHead, EntryFields, EntryKind, LedgerEntry, to_json_line};
    use esim402_core::store::cell::{Stored, claim_key, proposal_key};
    let mut kit = kit().await;
    let invoice = "inv_claimed";
    let shard = esim402_core::ledger::shard_of(invoice);
    let fields = || EntryFields::default().invoice(invoice);
    let mut outbox = esim402_core::ledger::outbox::Outbox::default();
    outbox
        .park(
            "b1",
            1_000,
            vec![
                (EntryKind::RefundOwed, fields()),
                (EntryKind::RefundPaid, fields()),
            ],
            [(shard, 0)].into(),
        )
        .unwrap();
    kit.kv()
        .set("ledger/outbox", &serde_json::to_vec(&outbox).unwrap())
        .await
        .unwrap();
    // The failed append's first entry: version 1 of its key claimed and proposed, never published.
    let entry = LedgerEntry::new(
        &ChainHead::genesis_of(shard),
        1_000,
        EntryKind::RefundOwed,
        fields(),
    );
    let key = esim402_core::store::keys::ledger_entry(shard, 0);
    let token = 12_345;
    let proposal = Stored {
        version: 1,
        token,
        data: Some(to_json_line(&entry).into_bytes()),
    };
    kit.kv()
        .set(&proposal_key(&key, 1, token), &proposal.encode())
        .await
        .unwrap();
    kit.kv()
        .increment(&claim_key(&key, 1), i64::try_from(token).unwrap())
        .await
        .unwrap();
    assert!(kit.kv().get(&key).await.unwrap().is_none());

    let check = ledger_ok(&mut kit, 2).await;
    assert!(check.get("parked").is_none(), "{check}");
    let kinds: Vec<String> = ledger_entries(&mut kit, Some(shard))
        .await
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["refund_owed", "refund_paid"], "each event once");
}

/// An entry at a shard's next key that is not the next link (here one claiming seq 50, hashed right) is not
/// sealed in: an appender that finds it refuses to move the head past it, and the event waits in the outbox.
/// Before, the head jumped to 51 and the event was chained onto the forged entry.
#[tokio::test]
async fn an_append_does_not_move_a_head_past_a_forged_entry() {
    use esim402_core::ledger::{ChainHead, EntryFields, EntryKind, LedgerEntry, to_json_line};
    let mut kit = kit().await;
    let invoice = "inv_forged";
    let shard = esim402_core::ledger::shard_of(invoice);
    let mut forged = LedgerEntry::new(
        &ChainHead::genesis_of(shard),
        1_000,
        EntryKind::RefundPaid,
        EntryFields::default().invoice(invoice),
    );
    forged.seq = 50;
    forged.hash = forged.compute_hash();
    let key = esim402_core::store::keys::ledger_entry(shard, 0);
    kit.kv()
        .set(&key, to_json_line(&forged).as_bytes())
        .await
        .unwrap();
    log(
        &mut kit,
        1_000,
        vec![ledger_event("invoice_issued", invoice)],
    )
    .await
    .expect("parked is logged");
    let count = kit
        .kv_get(&esim402_core::store::keys::ledger_head(shard))
        .await
        .map(|bytes| serde_json::from_slice::<ChainHead>(&bytes).unwrap().count);
    assert!(count.unwrap_or(0) == 0, "the head moved: {count:?}");
    let outbox = kit.kv_get("ledger/outbox").await.unwrap();
    let outbox: esim402_core::ledger::outbox::Outbox = serde_json::from_slice(&outbox).unwrap();
    assert_eq!(outbox.parked_events(), 1, "the event waits");
}

/// Runs a second actor once, right after the store call numbered `fire_at` (a write) of the component under
/// test, which it numbers from 0; the second actor uses the store underneath, so only the first is counted.
struct Interleave {
    calls: std::sync::Mutex<Vec<(esim402_host::kv::wrapped::Op, String)>>,
    fire_at: Option<usize>,
    action: tokio::sync::Mutex<Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>>>,
}

#[async_trait::async_trait]
impl esim402_host::kv::wrapped::Hook for Interleave {
    fn before(
        &self,
        op: esim402_host::kv::wrapped::Op,
        key: &str,
    ) -> esim402_host::kv::KvResult<()> {
        self.calls.lock().unwrap().push((op, key.to_owned()));
        Ok(())
    }

    async fn after_write(&self, _inner: &dyn esim402_host::kv::Backend, _key: &str) {
        let now = self.calls.lock().unwrap().len() - 1;
        if Some(now) != self.fire_at {
            return;
        }
        if let Some(action) = self.action.lock().await.take() {
            tokio::spawn(action).await.unwrap();
        }
    }
}

/// A parked batch of two events in the outbox of a fresh store, and the invoices component on it wrapped by
/// [`Interleave`]; the second actor, at `fire_at`, is another invoices component on the same store appending the
/// batch's first event as a drain that took the batch over would: with its tag. With `gap`, it appends another
/// event before it and then removes that one's entry (a hole below the head).
async fn drain_race(
    fire_at: Option<usize>,
    gap: bool,
) -> (
    Kit,
    std::sync::Arc<esim402_host::kv::wrapped::Wrapped<Interleave>>,
) {
    let inner: esim402_host::kv::SharedBackend =
        std::sync::Arc::new(esim402_host::kv::MemoryStore::default());
    let (outbox, appended) = parked_pair("inv_race");
    inner
        .set("ledger/outbox", &serde_json::to_vec(&outbox).unwrap())
        .await
        .unwrap();
    let mut other = builder().store(inner.clone()).build().await.unwrap();
    let (store_below, hole) = (
        inner.clone(),
        esim402_core::store::keys::ledger_entry(esim402_core::ledger::shard_of("inv_race"), 0),
    );
    let second = async move {
        if gap {
            let before = ledger_event("refund_owed", "inv_race");
            log(&mut other, 1_000, vec![before]).await.unwrap();
        }
        log(&mut other, 1_000, vec![appended]).await.unwrap();
        if gap {
            store_below.delete(&hole).await.unwrap();
        }
    };
    let store = std::sync::Arc::new(esim402_host::kv::wrapped::Wrapped::new(
        inner,
        Interleave {
            calls: Default::default(),
            fire_at,
            action: tokio::sync::Mutex::new(Some(Box::pin(second))),
        },
    ));
    let kit = builder().store(store.clone()).build().await.unwrap();
    (kit, store)
}

/// A drain whose append outlasts its lease, while another drain takes the batch over and appends part of it:
/// the first drain's append, resumed, leaves out what the other appended (by its outbox tags, looked for in
/// what the shard gained since the first drain's claim), so each event is in the ledger once. The other drain
/// is played by a second component appending the first event with its tag right after the first drain renewed
/// its claim (its last write before its first ledger entry), so the first drain finds it below the head it
/// reads. Before, the first drain appended both events after it: three entries.
#[tokio::test]
async fn a_drain_whose_append_outlasts_its_lease_does_not_append_twice() {
    let shard = esim402_core::ledger::shard_of("inv_race");
    let entries = format!("ledger/{shard:02}/entry/");
    // A dry run, nobody interleaving: find the first drain's last write before its first entry.
    let (mut dry, store) = drain_race(None, false).await;
    assert_eq!(ledger_check(&mut dry).await["count"], 2);
    let calls = store.hook.calls.lock().unwrap().clone();
    // The interleaving runs after a `set` (a write the hook is told of once it took effect).
    let set = |(op, _): &(esim402_host::kv::wrapped::Op, String)| {
        *op == esim402_host::kv::wrapped::Op::Set
    };
    // The drain's first insert: the proposal for its first entry.
    let proposed = calls
        .iter()
        .position(|c| set(c) && c.1.starts_with(&entries))
        .expect("the drain appends");
    assert!(calls[proposed].1.contains('@'), "{:?}", calls[proposed]);
    // Before the drain reads the head it appends at: its renewal's last write.
    let renewed = calls[..proposed]
        .iter()
        .rposition(set)
        .expect("the drain claims and renews before appending");
    assert!(
        calls[renewed].1.starts_with("ledger/outbox"),
        "{:?}",
        calls[renewed]
    );
    // After it read the head, before its first insert is decided (at the insert's proposal), the other drain
    // takes that seq and the first drain's insert runs into it.

    for fire_at in [renewed, proposed] {
        let (mut kit, store) = drain_race(Some(fire_at), false).await;
        let check = ledger_check(&mut kit).await;
        assert!(store.hook.action.lock().await.is_none(), "interleaved");
        assert_eq!(
            (&check["ok"], &check["count"]),
            (&json!(true), &json!(2)),
            "interleaved after {:?}: {check}",
            calls[fire_at]
        );
        assert!(check.get("parked").is_none(), "{check}");
        let tags: Vec<String> = ledger_entries(&mut kit, Some(shard))
            .await
            .iter()
            .map(|e| e["details"]["outbox"].to_string())
            .collect();
        assert_eq!(tags, ["\"b1/0\"", "\"b1/1\""], "each event once, in order");
    }

    // An entry missing below the head where the drain looks for tags: what lies past the hole cannot be looked
    // at, so the drain appends nothing (the batch stays parked) and the check reports the hole. Before, the
    // drain looked past it as if read and appended the batch's first event a second time.
    let (mut kit, store) = drain_race(Some(renewed), true).await;
    let check = ledger_check(&mut kit).await;
    assert!(store.hook.action.lock().await.is_none(), "interleaved");
    assert_eq!(check["ok"], false, "{check}");
    let outbox: esim402_core::ledger::outbox::Outbox =
        serde_json::from_slice(&kit.kv_get("ledger/outbox").await.unwrap()).unwrap();
    assert_eq!(outbox.parked_events(), 2, "still parked: {outbox:?}");
    assert!(
        kit.kv_get(&esim402_core::store::keys::ledger_entry(shard, 2))
            .await
            .is_none(),
        "nothing appended past the hole"
    );
}

/// A resumed attempt's events whose repeat check cannot read the store (here: the payment record) are parked,
/// not lost: the call succeeds, and the next check appends them, less what the invoice has logged already.
/// (Before, the call returned the store failure, and the attempt's first-time events were lost.)
#[tokio::test]
async fn a_resumed_attempt_whose_repeat_check_fails_parks_its_events_for_the_drain_to_check() {
    let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut kit = builder()
        .store(std::sync::Arc::new(crate::failing_calls(
            "invoice/", &failing,
        )))
        .build()
        .await
        .unwrap();
    log(
        &mut kit,
        1_000,
        vec![
            ledger_event("payment_verified", "inv_rs"),
            ledger_event("settlement_confirmed", "inv_rs"),
        ],
    )
    .await
    .unwrap();
    failing.store(true, std::sync::atomic::Ordering::SeqCst);
    let resumed = vec![
        ledger_event("payment_verified", "inv_rs"),
        ledger_event("settlement_confirmed", "inv_rs"),
        ledger_event("activation_completed", "inv_rs"),
    ];
    let logged = kit
        .call(async move |a, g| g.invoices().call_log_events(a, 2_000, resumed, true).await)
        .await
        .unwrap();
    assert!(logged.is_ok(), "parked is logged: {logged:?}");
    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    let check = ledger_ok(&mut kit, 4).await;
    assert!(check.get("parked").is_none(), "{check}");
    let shard = esim402_core::ledger::shard_of("inv_rs");
    let kinds: Vec<String> = ledger_entries(&mut kit, Some(shard))
        .await
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        kinds,
        [
            "payment_verified",
            "settlement_confirmed",
            "payment_verified",
            "activation_completed"
        ],
        "the repeat left out"
    );
}

/// An invoice id whose ledger shard is none of `taken`.
fn invoice_off(taken: &[u16]) -> String {
    (0..)
        .map(|i| format!("inv_other{i}"))
        .find(|id| !taken.contains(&esim402_core::ledger::shard_of(id)))
        .unwrap()
}

/// The outbox as stored now.
async fn stored_outbox(kit: &Kit) -> esim402_core::ledger::outbox::Outbox {
    kit.kv_get("ledger/outbox")
        .await
        .map(|bytes| serde_json::from_slice(&bytes).unwrap())
        .unwrap_or_default()
}

/// The ids of the batches the outbox holds, in order.
async fn outbox_ids(kit: &Kit) -> Vec<String> {
    stored_outbox(kit)
        .await
        .batches
        .into_iter()
        .map(|b| b.id)
        .collect()
}

/// A parked batch no drain can append (its shard has a hole below its head: the drain cannot look past it)
/// and that fills a drain's share on its own does not hold up the rest of the outbox: the next drain, at once,
/// appends a batch parked after it, and the blocked one keeps waiting. Before, the blocked batch was let go at
/// once and, the oldest, claimed first by every drain: nothing else was ever drained.
#[tokio::test]
async fn a_batch_no_drain_can_append_does_not_hold_up_the_others() {
    use esim402_core::ledger::outbox::{MAX_DRAIN_EVENTS, Outbox};
    use esim402_core::ledger::{EntryFields, EntryKind};
    let mut kit = kit().await;
    let stuck = "inv_hole";
    let shard = esim402_core::ledger::shard_of(stuck);
    let free = invoice_off(&[shard]);
    log(
        &mut kit,
        1_000,
        vec![
            ledger_event("refund_owed", stuck),
            ledger_event("refund_paid", stuck),
        ],
    )
    .await
    .unwrap();
    kit.kv()
        .delete(&esim402_core::store::keys::ledger_entry(shard, 0))
        .await
        .unwrap();
    let mut outbox = Outbox::default();
    let event = |id: &str| (EntryKind::RefundPaid, EntryFields::default().invoice(id));
    outbox
        .park(
            "stuck",
            1_000,
            vec![event(stuck); MAX_DRAIN_EVENTS],
            [(shard, 0)].into(),
        )
        .unwrap();
    outbox
        .park("free", 1_001, vec![event(&free)], Default::default())
        .unwrap();
    kit.kv()
        .set("ledger/outbox", &serde_json::to_vec(&outbox).unwrap())
        .await
        .unwrap();

    for _ in 0..2 {
        let check = ledger_check(&mut kit).await;
        assert_eq!(check["ok"], false, "the hole is reported: {check}");
    }
    let free_shard = esim402_core::ledger::shard_of(&free);
    let appended = ledger_entries(&mut kit, Some(free_shard)).await;
    assert_eq!(appended.len(), 1, "the free batch is drained");
    let left = stored_outbox(&kit).await;
    let ids: Vec<&str> = left.batches.iter().map(|b| b.id.as_str()).collect();
    assert_eq!(ids, ["stuck"], "the blocked batch waits");
    assert!(left.batches[0].failures > 0, "{:?}", left.batches[0].claim);
}

/// A kit on `store(shard)` (a store failing on `shard`, that of invoice `inv_down`) whose outbox holds the
/// batches `batches(down, free)` names (id, events), `free` an invoice of another shard.
async fn parked_on(
    store: impl FnOnce(u16) -> crate::FailingWrites,
    batches: impl FnOnce(&str, &str) -> Vec<(&'static str, Vec<(EntryKind, EntryFields)>)>,
) -> Kit {
    let down = "inv_down";
    let shard = esim402_core::ledger::shard_of(down);
    let free = invoice_off(&[shard]);
    let kit = builder()
        .store(std::sync::Arc::new(store(shard)))
        .build()
        .await
        .unwrap();
    let mut outbox = esim402_core::ledger::outbox::Outbox::default();
    for (at, (id, events)) in (1_000..).zip(batches(down, &free)) {
        outbox.park(id, at, events, Default::default()).unwrap();
    }
    kit.kv()
        .set("ledger/outbox", &serde_json::to_vec(&outbox).unwrap())
        .await
        .unwrap();
    kit
}

/// An event of `kind` for invoice `id`.
fn event_of(kind: EntryKind, id: &str) -> (EntryKind, EntryFields) {
    (kind, EntryFields::default().invoice(id))
}

/// [`parked_on`] with two batches: `down`, an event of `inv_down`, and `free`, one of the other shard's invoice.
async fn down_and_free(store: impl FnOnce(u16) -> crate::FailingWrites) -> Kit {
    parked_on(store, |down, free| {
        vec![
            ("down", vec![event_of(EntryKind::RefundPaid, down)]),
            ("free", vec![event_of(EntryKind::RefundPaid, free)]),
        ]
    })
    .await
}

/// The key prefix `ledger/<shard>/<rest>`, for a failing store (leaked: the store keeps it for the test).
fn shard_prefix(shard: u16, rest: &str) -> &'static str {
    Box::leak(format!("ledger/{shard:02}/{rest}").into_boxed_str())
}

/// A store failure appending one shard's parked batch does not stop the drain: batches of other shards are
/// appended, and the failed one is let go for the next drain, which appends it once the store recovers.
/// Before, the first failure ended the drain, and every batch behind it waited.
#[tokio::test]
async fn a_store_failure_on_one_shard_does_not_stop_the_drain_of_the_others() {
    let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut kit =
        down_and_free(|shard| crate::failing_writes(shard_prefix(shard, ""), &failing)).await;

    let check = ledger_check(&mut kit).await;
    assert_eq!(
        (&check["ok"], &check["count"], &check["parked"]),
        (&json!(true), &json!(1), &json!(1)),
        "{check}"
    );
    let ids = outbox_ids(&kit).await;
    assert_eq!(ids, ["down"]);

    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    let check = ledger_ok(&mut kit, 2).await;
    assert!(check.get("parked").is_none(), "{check}");
}

/// A shard whose head cannot be read (a store fault on it, or a head that does not decode) does not stop the
/// drain of the other shards' parked batches: its own wait. Before, the first unreadable head ended every drain
/// before it claimed anything, so the whole outbox filled up (a review of cdb4494).
#[tokio::test]
async fn an_unreadable_head_does_not_stop_the_drain_of_the_other_shards() {
    let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut kit =
        down_and_free(|shard| crate::failing_calls(shard_prefix(shard, "head"), &failing)).await;
    // The check itself cannot read that shard (a 503, not a verdict); its drain still appends the other batch.
    let check = kit
        .call(async move |a, g| g.invoices().call_ledger_verify(a).await)
        .await
        .unwrap();
    assert!(check.is_err(), "{check:?}");
    let ids = outbox_ids(&kit).await;
    assert_eq!(ids, ["down"]);
    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    ledger_ok(&mut kit, 2).await;
}

/// A parked batch whose first shard's run wrote its entries but could not advance that shard's head is counted
/// against that shard, not the next one: the other shard's batches in the same drain still go. Before, the
/// failure was blamed on the shard of the first event left (the next run's), so a healthy shard's batches
/// waited while the failing one was tried again (a review of cdb4494).
#[tokio::test]
async fn a_head_that_cannot_advance_blames_its_own_shard() {
    let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut kit = parked_on(
        |shard| crate::failing_writes(shard_prefix(shard, "head"), &failing),
        |down, free| {
            let mixed = vec![
                event_of(EntryKind::RefundOwed, down),
                event_of(EntryKind::RefundOwed, free),
            ];
            vec![
                ("mixed", mixed),
                ("later", vec![event_of(EntryKind::RefundPaid, free)]),
            ]
        },
    )
    .await;
    let _ = kit
        .call(async move |a, g| g.invoices().call_ledger_verify(a).await)
        .await
        .unwrap();
    let ids = outbox_ids(&kit).await;
    assert_eq!(ids, ["mixed"], "the other shard's batch went");
}

/// A ledger check that finds nothing to claim in the outbox (every batch held by another drain) writes
/// nothing: the public `GET /v1/ledger/verify` does not rewrite the outbox record. Before, each check wrote it
/// twice (the claim and the release), claiming nothing.
#[tokio::test]
async fn a_check_with_nothing_to_claim_does_not_write_the_outbox() {
    use esim402_core::ledger::outbox::Outbox;
    use esim402_core::ledger::{EntryFields, EntryKind};
    let inner: esim402_host::kv::SharedBackend =
        std::sync::Arc::new(esim402_host::kv::MemoryStore::default());
    let mut outbox = Outbox::default();
    let invoice = "inv_held";
    outbox
        .park(
            "b1",
            1_000,
            vec![(
                EntryKind::RefundPaid,
                EntryFields::default().invoice(invoice),
            )],
            Default::default(),
        )
        .unwrap();
    // Held by a drain whose lease runs far beyond this test.
    let shard = esim402_core::ledger::shard_of(invoice);
    outbox.claim("busy", u64::MAX / 4, &[(shard, 0)].into());
    inner
        .set("ledger/outbox", &serde_json::to_vec(&outbox).unwrap())
        .await
        .unwrap();
    let store = std::sync::Arc::new(esim402_host::kv::wrapped::Wrapped::new(
        inner,
        Interleave {
            calls: Default::default(),
            fire_at: None,
            action: tokio::sync::Mutex::new(None),
        },
    ));
    let mut kit = builder().store(store.clone()).build().await.unwrap();
    let check = ledger_check(&mut kit).await;
    assert_eq!(
        (&check["ok"], &check["parked"]),
        (&json!(true), &json!(1)),
        "{check}"
    );
    let writes: Vec<_> = store
        .hook
        .calls
        .lock()
        .unwrap()
        .iter()
        .filter(|(op, key)| op.writes() && key.starts_with("ledger/outbox"))
        .cloned()
        .collect();
    assert!(writes.is_empty(), "the outbox was written: {writes:?}");
}

/// An entry stranded past its shard's head (its appender crashed between inserting it and advancing the head,
/// and nobody appended to that shard since) is helped into the chain by the ledger check, so it counts in the
/// root. Before, it stayed `pending` for good, outside the root.
#[tokio::test]
async fn a_check_helps_a_stranded_head_past_the_entries_continuing_it() {
    use esim402_core::ledger::{ChainHead, EntryFields, EntryKind, LedgerEntry, to_json_line};
    let mut kit = kit().await;
    let invoice = "inv_stranded";
    let shard = esim402_core::ledger::shard_of(invoice);
    let entry = LedgerEntry::new(
        &ChainHead::genesis_of(shard),
        1_000,
        EntryKind::RefundPaid,
        EntryFields::default().invoice(invoice),
    );
    kit.kv()
        .set(
            &esim402_core::store::keys::ledger_entry(shard, 0),
            to_json_line(&entry).as_bytes(),
        )
        .await
        .unwrap();
    let check = ledger_ok(&mut kit, 1).await;
    assert!(check.get("pending").is_none(), "{check}");
    // The next append chains after it.
    log(&mut kit, 1_001, vec![ledger_event("refund_owed", invoice)])
        .await
        .unwrap();
    ledger_ok(&mut kit, 2).await;
}

/// A ledger entry that does not parse is reported to the (anonymous) caller by shard and seq only: not the
/// decoder's message, which quotes what is stored. Before, the answer carried it.
#[tokio::test]
async fn an_unreadable_entry_is_reported_without_what_it_holds() {
    let mut kit = kit().await;
    let key = esim402_core::store::keys::ledger_entry(4, 0);
    kit.kv()
        .set(&key, br#"{"seq":"s3cret-payer-note"}"#)
        .await
        .unwrap();
    let check = ledger_check(&mut kit).await;
    assert_eq!(check["ok"], false, "{check}");
    assert_eq!(
        check["error"], "shard 4: entry 0 is not a ledger entry",
        "{check}"
    );
    assert!(!check.to_string().contains("s3cret"), "{check}");
}
