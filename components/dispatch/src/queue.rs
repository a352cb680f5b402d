//! The cleanup queue (`cleanup/queue`, kernel `order::enqueue`/`take`): carrier work still owed so no profile
//! leaks. Filled by [`crate::calls::cancel`] and the order journal, worked off by [`crate::cleanup::sweep`].

use esim402_core::order::{self, Cleanup, Queued};
use esim402_core::store::keys;
use esim402_guest::{kv, util};

/// Queue `item` (once), new.
pub async fn enqueue(item: Cleanup) {
    requeue(item, 0, 0).await;
}

/// Queue `item` (once) after `tries` failed tries, failing since `since` (0: from now). One tried
/// [`order::MAX_CLEANUP_TRIES`] times over at least [`order::MIN_CLEANUP_AGE_SECS`] is given up, logged for an
/// operator (the carrier may still hold the profile it names).
pub async fn requeue(item: Cleanup, tries: u32, since: u64) {
    let now = util::now_secs();
    let since = if since == 0 && tries > 0 { now } else { since };
    if order::gives_up(tries, since, now) {
        eprintln!(
            "dispatch: giving up carrier cleanup after {tries} tries since {since}: {item:?}; an operator must return the profile"
        );
        return;
    }
    let r = kv::update_json::<Vec<Queued>, ()>(keys::CLEANUP_QUEUE, |q| {
        Ok(order::enqueue(q.unwrap_or_default(), &item, tries, since))
    })
    .await;
    if let Err(e) = r {
        eprintln!("dispatch: cannot queue carrier cleanup: {e}");
    }
}

/// Take up to `max` items off the queue atomically, so two sweeps never do the same item.
pub async fn take(max: usize) -> Vec<Queued> {
    // The common case is an empty queue: a plain read, so concurrent orders do not contend on a write.
    match kv::get_json::<Vec<Queued>, ()>(keys::CLEANUP_QUEUE).await {
        Ok(Some(q)) if !q.is_empty() => {}
        _ => return Vec::new(),
    }
    let taken = kv::update_json_with::<Vec<Queued>, Vec<Queued>, ()>(keys::CLEANUP_QUEUE, |q| {
        Ok(order::take(q.unwrap_or_default(), max))
    })
    .await;
    taken.map(|(_, t)| t).unwrap_or_default()
}

/// How many items are queued (an unreadable queue counts none).
pub async fn len() -> usize {
    kv::get_json::<Vec<Queued>, ()>(keys::CLEANUP_QUEUE)
        .await
        .ok()
        .flatten()
        .map_or(0, |q| q.len())
}
