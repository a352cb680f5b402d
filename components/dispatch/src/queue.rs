//! The cleanup queue (`cleanup/queue`, kernel `order::enqueue`/`take`): carrier work still owed so no profile
//! leaks. Filled by [`crate::calls::cancel`] and the order journal, worked off by [`crate::cleanup::sweep`].

use esim402_core::order::{self, Cleanup};
use esim402_core::store::keys;
use esim402_guest::kv;

/// Queue `item` (once).
pub async fn enqueue(item: Cleanup) {
    let r = kv::update_json::<Vec<Cleanup>, ()>(keys::CLEANUP_QUEUE, |q| {
        Ok(order::enqueue(q.unwrap_or_default(), &item))
    })
    .await;
    if let Err(e) = r {
        eprintln!("dispatch: cannot queue carrier cleanup: {e}");
    }
}

/// Take up to `max` items off the queue atomically, so two sweeps never do the same item.
pub async fn take(max: usize) -> Vec<Cleanup> {
    // The common case is an empty queue: a plain read, so concurrent orders do not contend on a write.
    match kv::get_json::<Vec<Cleanup>, ()>(keys::CLEANUP_QUEUE).await {
        Ok(Some(q)) if !q.is_empty() => {}
        _ => return Vec::new(),
    }
    let taken = kv::update_json_with::<Vec<Cleanup>, Vec<Cleanup>, ()>(keys::CLEANUP_QUEUE, |q| {
        Ok(order::take(q.unwrap_or_default(), max))
    })
    .await;
    taken.map(|(_, t)| t).unwrap_or_default()
}
