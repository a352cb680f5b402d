//! The cleanup queue (`cleanup/queue`, kernel `order::enqueue`/`take`/`settle`): carrier work still owed so no
//! profile leaks. Filled by [`crate::calls::cancel`] and the order journal, worked off by [`crate::cleanup::sweep`].

use esim402_core::order::{self, Cleanup, Queued, Settle};
use esim402_core::store::keys;
use esim402_guest::kv::{self, Change};
use esim402_guest::util;

/// Queue `item` (once), new. Work that cannot be queued (the store failed, or the queue is full: kernel
/// `order::MAX_QUEUED`) is left to an operator, named in an ALERT line: a profile that may stay allocated at
/// its carrier.
pub async fn enqueue(item: Cleanup) {
    let r = kv::update_json::<Vec<Queued>, order::QueueFull>(keys::CLEANUP_QUEUE, |q| {
        order::enqueue_new(q.unwrap_or_default(), &item)
    })
    .await;
    let why = match r {
        Ok(_) => return,
        Err(kv::KvError::Refused(full)) => full.to_string(),
        Err(e) => e.to_string(),
    };
    let work = match &item {
        Cleanup::Cancel {
            carrier,
            iccid,
            retire,
            ..
        } => format!(
            "CancelOrder of ICCID {iccid} at {carrier} ({})",
            if *retire {
                "retire it"
            } else {
                "back to the pool"
            }
        ),
        Cleanup::LostDownload { carrier, fci, .. } => format!(
            "the profile a lost DownloadOrder (call {fci}) may have allocated at {carrier}: find it and cancel it"
        ),
    };
    eprintln!("dispatch: ALERT: carrier cleanup not queued ({why}); left to the operator: {work}");
}

/// Take up to `max` free items atomically, held until `lease_until` (kernel `order::take`): they stay queued,
/// so two sweeps never do the same item and a sweep that stops before it [`settle`]s one loses nothing. A
/// cancel without a call id is given one (`mint`: a fresh ES2+ call id) in the same write, so a redo after
/// the hold sends the same call.
pub async fn take(
    max: usize,
    now: u64,
    lease_until: u64,
    mint: impl Fn() -> Option<String>,
) -> Vec<Queued> {
    // The common case is an empty queue: a plain read, so concurrent orders do not contend on a write.
    let unnamed = match kv::get_json::<Vec<Queued>, ()>(keys::CLEANUP_QUEUE).await {
        Ok(Some(q)) if q.iter().any(|q| q.taken_until <= now) => q
            .iter()
            .filter(|q| q.taken_until <= now && matches!(q.item, Cleanup::Cancel { fci: None, .. }))
            .count(),
        _ => return Vec::new(),
    };
    // Ids made before the write (its closure may run again on a conflict; an id never sent is still new). A few
    // spare for cancels queued since the read; one left without an id waits for the next sweep.
    let ids: Vec<String> = (0..max.min(unnamed.saturating_add(4)))
        .map_while(|_| mint())
        .collect();
    let taken = kv::update_json_with::<Vec<Queued>, Vec<Queued>, ()>(keys::CLEANUP_QUEUE, |q| {
        Ok(order::take(
            q.unwrap_or_default(),
            max,
            now,
            lease_until,
            ids.iter().cloned(),
        ))
    })
    .await;
    taken.map(|(_, t)| t).unwrap_or_default()
}

/// Settle an item this sweep took (kernel `order::settle`): done, free again, or still owed after `tries`
/// failed tries since `since` (given up instead, logged, past [`order::gives_up`]). A failed write leaves it
/// held: the next sweep after the hold tries it again. Whether it is left on the queue: free again, still
/// owed, or held by a failed write (not when done, given up, or no longer this sweep's).
pub async fn settle(taken: &Queued, outcome: Settle) -> bool {
    let outcome = match outcome {
        Settle::Again(item, tries, since) => {
            let now = util::now_secs();
            let since = if since == 0 && tries > 0 { now } else { since };
            if order::gives_up(tries, since, now) {
                eprintln!(
                    "dispatch: giving up carrier cleanup after {tries} tries since {since}: {item:?}; an operator must return the profile"
                );
                Settle::Done
            } else {
                Settle::Again(item, tries, since)
            }
        }
        other => other,
    };
    let stays = !matches!(outcome, Settle::Done);
    let r = kv::change_json::<Vec<Queued>, bool, ()>(keys::CLEANUP_QUEUE, |q| {
        Ok(
            match order::settle(q.unwrap_or_default(), taken, outcome.clone()) {
                Some(q) => (Change::Put(q), stays),
                None => (Change::Keep, false),
            },
        )
    })
    .await;
    r.map_or_else(
        |e| {
            eprintln!(
                "dispatch: cannot settle carrier cleanup {:?} (tried again after its hold): {e}",
                taken.item
            );
            true
        },
        |(_, stays)| stays,
    )
}

/// How many items are queued (an unreadable queue counts none).
pub async fn len() -> usize {
    kv::get_json::<Vec<Queued>, ()>(keys::CLEANUP_QUEUE)
        .await
        .ok()
        .flatten()
        .map_or(0, |q| q.len())
}
