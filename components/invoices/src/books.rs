//! The ledger (kernel `ledger`, stored by `esim402_guest::ledger`): every money event is appended here, in its
//! invoice's shard; `verify` replays every shard against its stored head and reports the root; `export` pages
//! through one shard or merges all of them by time.

use esim402_core::ledger::{
    self, EntryFields, EntryKind, LedgerEntry, SHARDS, to_json_line, verify_read,
};
use esim402_core::paid::PaymentRecord;
use esim402_core::store::keys;
use esim402_core::usage::held::Held;
use esim402_guest::convert::{self, invalid, kv_err, kv_fault};
use esim402_guest::{kv, ledger as store, wit};

/// An event as the ledger takes it.
type LedgerEvent = (EntryKind, EntryFields);

/// `log-events`: append the events in order (one invoice's run with one head advance); a malformed one is an
/// input error (nothing is appended). Events an append could not write are parked in the outbox (the next
/// `ledger-verify` drains it), which counts as logged, and so are a resumed attempt's events whose repeat check
/// could not read the store (the drain checks them); only if they cannot be parked either is the store failure
/// returned (`unavailable`).
pub async fn log(now: u64, events: &[wit::LedgerEvent], resumed: bool) -> Result<(), wit::Error> {
    let mut events = events
        .iter()
        .map(|e| {
            convert::event(e)
                .ok_or_else(|| invalid("kind", format!("unknown ledger event kind {:?}", e.kind)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if resumed {
        events = match not_yet_logged(events.clone()).await {
            Ok(events) => events,
            // The repeat check could not read the store: the drain runs it (from the shards' start).
            Err(e) => {
                let count = events.len();
                return match store::park_repeats(now, events).await {
                    Ok(()) => {
                        eprintln!(
                            "invoices: repeat check failed ({e:?}); {count} events parked for the drain to check"
                        );
                        Ok(())
                    }
                    Err(park) => {
                        eprintln!("invoices: parking {count} events failed too: {park:?}");
                        Err(e)
                    }
                };
            }
        };
    }
    if events.is_empty() {
        return Ok(());
    }
    let failed = match store::append_all(now, events).await {
        Ok(_) => return Ok(()),
        Err(failed) => failed,
    };
    let count = failed.events.len();
    match store::park(now, failed.events, failed.landed_since).await {
        Ok(()) => {
            eprintln!(
                "invoices: ledger append failed ({:?}); {count} events parked in the outbox for the next drain",
                failed.error
            );
            Ok(())
        }
        Err(e) => {
            eprintln!("invoices: parking {count} ledger events failed too: {e:?}");
            Err(kv_fault("ledger", failed.error))
        }
    }
}

/// `park-held`: held usage events (metering `held-due`) into the outbox, each batch under its own id
/// (`usage::held::Held::outbox_id`), so the next drain appends what its first append did not; how many of
/// them (from the first) wait there now.
pub async fn park_held(batches: &[wit::HeldEvents]) -> Result<u32, wit::Error> {
    let batches = batches
        .iter()
        .map(|b| {
            let events = b
                .events
                .iter()
                .map(|e| {
                    convert::event(e).ok_or_else(|| {
                        invalid("kind", format!("unknown ledger event kind {:?}", e.kind))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Held {
                batch: b.batch.clone(),
                at: b.at,
                events,
            })
        })
        .collect::<Result<Vec<_>, wit::Error>>()?;
    let parked = store::park_recovered(&batches).await.map_err(|e| match e {
        kv::KvError::Refused(full) => wit::Error::Unavailable(full.to_string()),
        e => kv_fault("ledger", e),
    })?;
    u32::try_from(parked).map_err(convert::internal)
}

/// A resumed attempt's `events` less the once-per-invoice ones its invoice already has in the ledger or the
/// outbox (kernel `ledger::not_yet_logged`), found by reading each invoice's shard from where its entries start
/// (its payment record's `ledger_since`; from the shard's start without one) and the outbox record.
async fn not_yet_logged(events: Vec<LedgerEvent>) -> Result<Vec<LedgerEvent>, wit::Error> {
    let mut invoices: Vec<&str> = events
        .iter()
        .filter(|(kind, _)| ledger::once_per_invoice(*kind))
        .filter_map(|(_, f)| f.invoice_id.as_deref())
        .collect();
    invoices.sort_unstable();
    invoices.dedup();
    // The outbox before the shards: a drain appends an event and then removes it from the outbox, so read in
    // this order the event is seen in one or the other.
    let parked = store::parked_events()
        .await
        .map_err(|e| kv_fault("ledger", e))?;
    let mut found = Vec::new();
    for id in invoices {
        let record = kv::get_json::<PaymentRecord, wit::Error>(&keys::invoice(id))
            .await
            .map_err(kv_err)?;
        // No record, or one from before `ledger_since`: the invoice's entries may start anywhere.
        let since = record.and_then(|r| r.ledger_since).unwrap_or(0);
        found.extend(
            store::read_landed(ledger::shard_of(id), since)
                .await
                .map_err(|e| kv_fault("ledger", e))?,
        );
    }
    Ok(ledger::not_yet_logged(events, &found, &parked))
}

/// `ledger-verify`: first drains the outbox (events whose append failed), then `{ok, count, head}` (the head
/// is the root over every shard; `parked`: events still waiting, if any), or the first problem.
pub async fn verify() -> Result<String, wit::Error> {
    let parked = match store::drain(esim402_guest::util::now_secs()).await {
        Ok(d) => d.left,
        Err(e) => {
            eprintln!("invoices: draining the ledger outbox failed: {e:?}");
            match store::parked().await {
                Ok(n) => n,
                // Anyone may ask: the answer says where, the log says what (as for an entry below).
                Err(esim402_guest::kv::KvError::Corrupt { key, message }) => {
                    eprintln!("invoices: ledger check: {key}: not an outbox record: {message}");
                    let body =
                        serde_json::json!({ "ok": false, "error": format!("{key} is unreadable") });
                    return Ok(body.to_string());
                }
                Err(e) => return Err(kv_fault("ledger", e)),
            }
        }
    };
    let shards = match read_helped().await {
        Ok(shards) => shards,
        // An entry edited into something that does not parse is a verdict, not a failure of the check.
        // Anyone may ask: the answer says where, the log says what (the decoder's message can quote the record).
        Err(esim402_guest::kv::KvError::Corrupt { key, message }) => {
            eprintln!("invoices: ledger check: {key}: not a ledger entry: {message}");
            let body = serde_json::json!({ "ok": false, "error": ledger::unreadable(&key) });
            return Ok(body.to_string());
        }
        Err(e) => return Err(kv_fault("ledger", e)),
    };
    let body = match verify_read(&shards.read, &shards.gone) {
        // `pending`: entries of appends in flight, past their shard's head, continuing its chain.
        Ok((root, pending)) => {
            let mut body = serde_json::json!({
                "ok": true, "count": root.count, "head": root.hash.to_string(),
            });
            if pending > 0 {
                body["pending"] = pending.into();
            }
            if parked > 0 {
                body["parked"] = parked.into();
            }
            body
        }
        Err((shard, e)) => {
            let heads: Vec<_> = shards.read.iter().map(|(h, _)| *h).collect();
            let root = ledger::root(&heads);
            serde_json::json!({
                "ok": false, "error": format!("shard {shard}: {e}"), "stored_count": root.count,
                "stored_head": root.hash.to_string(),
                "entries_read": shards.read.iter().map(|(_, e)| e.len()).sum::<usize>(),
            })
        }
    };
    Ok(body.to_string())
}

/// Every shard, for the check, with stranded heads helped forward first (kernel `ledger::stranded`: entries an
/// appender cut off before its head advance left past the head, on a shard nobody appended to since, once they
/// are old enough not to be an append in flight), so they count in the root; read again if one was moved. A
/// shard whose head is gone is read without entries, so it is never helped forward from genesis.
async fn read_helped() -> Result<store::Shards, esim402_guest::kv::KvError<()>> {
    let shards = store::read_all().await?;
    for shard in &shards.gone {
        eprintln!(
            "invoices: ledger check: the head of shard {shard} was written and is gone (removed, or lost by the store): its entries are not trusted until an operator restores it"
        );
    }
    let mut helped = false;
    for (from, to) in ledger::stranded(&shards.read, esim402_guest::util::now_secs()) {
        match store::help_forward(from, to).await {
            Ok(moved) => {
                if moved {
                    // For the operator: a head that did not say what its shard holds (an appender stopped
                    // before its head advance, or a head set back).
                    eprintln!(
                        "invoices: ledger check: the head of shard {} was behind its chain: moved from {} to {} entries",
                        from.shard, from.count, to.count
                    );
                }
                helped |= moved;
            }
            Err(e) => eprintln!(
                "invoices: helping the head of shard {} forward failed: {e:?}",
                from.shard
            ),
        }
    }
    if helped {
        return store::read_all().await;
    }
    Ok(shards)
}

/// `ledger-export`: JSON lines of one shard from `start`, or of every shard merged by (time, shard, seq).
pub async fn export(shard: Option<u16>, start: u64, limit: u32) -> Result<String, wit::Error> {
    let limit = u64::from(limit);
    let entries: Vec<LedgerEntry> = match shard {
        Some(s) if s >= SHARDS => {
            return Err(invalid("shard", format!("shard must be 0-{}", SHARDS - 1)));
        }
        Some(s) => store::read_from(s, start, limit)
            .await
            .map_err(|e| kv_fault("ledger", e))?,
        None => {
            let mut all = Vec::new();
            for s in 0..SHARDS {
                all.extend(
                    store::read_from(s, 0, u64::MAX)
                        .await
                        .map_err(|e| kv_fault("ledger", e))?,
                );
            }
            all.sort_by_key(|e| (e.at, e.shard, e.seq));
            all.into_iter()
                .skip(usize::try_from(start).unwrap_or(usize::MAX))
                .take(usize::try_from(limit).unwrap_or(usize::MAX))
                .collect()
        }
    };
    Ok(entries.iter().map(to_json_line).collect())
}
