//! `POST /v1/usage`: a batch of carrier-signed receipts. The order of effects per receipt is the kernel's
//! (`esim402_core::usage::ingest`): verify → claim `(carrier, iccid, session, seq)` by `increment` (one winner
//! ever, on every backend and across instances; a receipt the older per-session claims may have charged is
//! first looked up under its legacy key, a read: kernel `usage::claim`, [`crate::claims`]) → log → charge.
//! Per SIM per batch: one `increment` of its log chunk counter, one chunk holding its log entries, one
//! `increment` of its used-bytes counter. Per batch: every SIM's chunk written by one `set-many`
//! (`wasi:keyvalue/batch`: one commit on SQLite, one round trip on Redis, instead of one per SIM), and one
//! `usage_charged` ledger entry naming every SIM's charge (kernel `charge_entry`); the batch's ledger events
//! share one shard (one append run). Reads that run concurrently (the named accounts, the legacy and gap
//! lookups) go [`WINDOW`] at a time; they are not batched, because Spin's Redis store answers `get-many` with a
//! `KEYS` command (the keys taken as patterns), which fails.
//!
//! Receipts signed as a page (kernel `usage::page`) share one signature recovery per batch ([`Recoveries`]);
//! the claim, log and charge stay per receipt, so a page and single receipts dedupe against each other.
//!
//! Never charged twice: the charge follows a won claim, and a claim is won once. A crash between a claim and
//! the charge leaves the receipt uncharged (at most once, in the payer's favour). Once charged, the batch's
//! ledger events are held (kernel `usage::held`) until the gateway has logged them and releases them; a crash
//! in between leaves them for `GET /v1/ledger/verify` to log (`held-due`). Events the store would not hold
//! either go with the answer, never with an error (which would drop them): a batch whose charges then stopped
//! answers, the SIM whose charge failed reported `charge_unknown` (the `increment` may have landed) and those
//! after it `not_charged` (kernel `mark_uncharged`). Usage reported after a SIM's terminate beyond what its
//! close counted is counted but absorbed, not charged (`after_close`, [`crate::charge`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use esim402_core::join::join_windows;
use esim402_core::ledger::{EntryFields, EntryKind};
use esim402_core::store::keys;
use esim402_core::usage::account::Account;
use esim402_core::usage::claim::{ClaimCheck, claim_check};
use esim402_core::usage::ingest::{
    LogEntry, LogState, Outcome, ReportLine, charge_entry, is_gap, log_position, mark_uncharged,
    parse_batch, totals,
};
use esim402_core::usage::receipt::{
    MAX_UNSIGNED_DISPUTES_PER_SIM, Receipt, Recoveries, verify_signed,
};
use esim402_guest::convert::{event_to_wit, internal, invalid, kv_err};
use esim402_guest::kv;
use esim402_guest::wit;

use crate::accounts;
use crate::bindings::exports::esim402::metering::metering::Ingested;
use crate::claims::WINDOW;

/// An accepted receipt with a previous record (`seq > 1`): where its report line and log entry are, to flag a
/// gap once the batch's claims are known.
struct Follow {
    line: usize,
    iccid: String,
    entry: usize,
    seq: u64,
    /// The previous record's claim key, and its legacy key if the receipt is checked against legacy claims.
    previous: String,
    legacy: Option<String>,
}

/// What one batch does to one SIM.
#[derive(Default)]
struct SimBatch {
    entries: Vec<LogEntry>,
    bytes: u64,
    accepted: u64,
    /// A receipt of it verified and was already charged (a batch sent again).
    duplicate: bool,
}

impl SimBatch {
    /// Named by verified receipts that were all charged before: a batch sent again, which reports the SIM's
    /// standing hold (`holds::settle`).
    fn resent(&self) -> bool {
        self.duplicate && self.accepted == 0
    }
}

pub async fn ingest(body: &str, now: u64) -> Result<Ingested, wit::Error> {
    let items = parse_batch(body).map_err(|e| invalid("receipts", e.to_string()))?;
    let config = crate::config::get().await?;
    let store = kv::default_store().await.map_err(kv_err)?;
    // The batch's ledger events (a charge per SIM, disputes) share this id and so one ledger shard: one
    // append run per batch, rather than one per SIM contending with every other batch naming that SIM.
    let batch_id = format!(
        "{:016x}",
        esim402_guest::util::random_u64().map_err(internal)?
    );

    // The accounts the batch names, read concurrently.
    let named: BTreeSet<&str> = items.iter().flatten().map(|r| r.iccid.as_str()).collect();
    let loaded = join_windows(named.iter().map(|iccid| accounts::load(iccid)), WINDOW).await;
    let mut accounts: HashMap<String, Option<Account>> = HashMap::new();
    for (iccid, account) in named.into_iter().zip(loaded) {
        accounts.insert(iccid.to_owned(), account?);
    }
    let account_of = |iccid: &str| accounts.get(iccid).and_then(Option::as_ref);
    // An account closed before it opened meters nothing: no terms, as for a SIM without an account.
    let terms_of = |r: &Receipt| account_of(r.iccid.as_str()).and_then(Account::terms);

    // Every receipt verified first (no I/O), so the legacy claims of the verified ones are read at once.
    // Page-signed receipts share their page's signature: recovered once per batch.
    let mut recoveries = Recoveries::default();
    let verified: Vec<_> = items
        .into_iter()
        .map(|item| {
            item.map(|r| {
                // A refusal with whether its carrier signed the receipt (kernel `refusal_signed`).
                let result =
                    verify_signed(&r, |c| config.signer(c), terms_of(&r), now, &mut recoveries);
                (r, result)
            })
        })
        .collect();
    // Which claims decide each verified receipt (kernel `claim_check`): the store's marker is read (made, the
    // first time) only when the batch names an account opened before claims were per SIM.
    let older = accounts.values().flatten().any(|a| !a.claims_per_sim);
    let since = if older {
        Some(crate::claims::since(now).await?)
    } else {
        None
    };
    let older_account =
        |r: &Receipt| account_of(r.iccid.as_str()).is_some_and(|a| !a.claims_per_sim);
    let check = |r: &Receipt| {
        let per_sim = account_of(r.iccid.as_str()).is_none_or(|a| a.claims_per_sim);
        claim_check(per_sim, r.window_end, since)
    };
    let legacy_keys = verified
        .iter()
        .flatten()
        .filter(|(r, result)| result.is_ok() && check(r) == ClaimCheck::AlsoLegacy)
        .map(|(r, _)| r.claim().legacy_key())
        .collect();
    let legacy_claimed = crate::claims::legacy_claimed(&store, legacy_keys).await?;

    let mut lines = Vec::with_capacity(verified.len());
    let mut sims: BTreeMap<String, SimBatch> = BTreeMap::new();
    let mut claimed: HashSet<String> = HashSet::new();
    let mut follows: Vec<Follow> = Vec::new();
    let mut events = Vec::new();
    for (index, item) in verified.into_iter().enumerate() {
        let (r, result) = match item {
            Ok(verified) => verified,
            Err(e) => {
                lines.push(line(index, None, Outcome::rejected(&e, false)));
                continue;
            }
        };
        let metered = terms_of(&r).is_some();
        let outcome = match result {
            Err((e, signed)) => {
                // Kept for a SIM metered here, once per receipt, unsigned ones up to the SIM's cap. An unsigned
                // one past the cap claims nothing either (anyone can make those, so each claim key would be
                // storage a stranger adds at will): the count is read first (an increment by 0).
                let candidate = e.is_dispute_for(metered)
                    && (signed
                        || kv::increment::<wit::Error>(&keys::meter_unsigned(r.iccid.as_str()), 0)
                            .map_err(kv_err)?
                            < MAX_UNSIGNED_DISPUTES_PER_SIM);
                let first = candidate
                    && kv::claim::<wit::Error>(&keys::dispute_claim(r.id_hash(), signed))
                        .map_err(kv_err)?;
                let stored = first
                    && (signed
                        || kv::increment::<wit::Error>(&keys::meter_unsigned(r.iccid.as_str()), 1)
                            .map_err(kv_err)?
                            <= MAX_UNSIGNED_DISPUTES_PER_SIM);
                if stored {
                    let sim = sims.entry(r.iccid.to_string()).or_default();
                    sim.entries
                        .push(entry(&r, now, LogState::Disputed, Some(e.reason()), false));
                }
                // The ledger (whose count anyone can read) logs a dispute the carrier signed; an unsigned one,
                // kept only for a SIM metered here, would tell a stranger which ICCIDs are (the owner's log
                // holds it).
                if stored && signed {
                    let fields = EntryFields::default()
                        .detail("batch", &batch_id)
                        .detail("iccid", r.iccid.as_str())
                        .detail("carrier", r.carrier.as_str())
                        .detail("session_id", &r.session_id)
                        .detail("seq", r.seq.to_string())
                        .detail("bytes", r.total_bytes().to_string())
                        .detail("reason", e.reason());
                    events.push((EntryKind::UsageDisputed, fields));
                }
                // Kept by this batch, or by the earlier one that took its claim.
                Outcome::rejected_signed(&e, stored || (candidate && !first), signed)
            }
            Ok(()) => {
                let id = r.claim();
                let also_legacy = check(&r) == ClaimCheck::AlsoLegacy;
                // Charged under its legacy key before the upgrade: a duplicate, its own key left unclaimed.
                let charged_before = also_legacy && legacy_claimed.contains(&id.legacy_key());
                let key = id.key();
                if !charged_before && kv::claim::<wit::Error>(&key).map_err(kv_err)? {
                    claimed.insert(key);
                    // Bounded by MAX_RECEIPT_BYTES (checked by verify), so it fits a u64.
                    let bytes = u64::try_from(r.total_bytes()).unwrap_or(u64::MAX);
                    let sim = sims.entry(r.iccid.to_string()).or_default();
                    if let Some(previous) = id.previous() {
                        follows.push(Follow {
                            line: lines.len(),
                            iccid: r.iccid.to_string(),
                            entry: sim.entries.len(),
                            seq: id.seq,
                            previous: previous.key(),
                            // An older account's previous record may have been charged under its legacy
                            // key (before the upgrade), whatever this receipt is checked against: a session
                            // spanning the upgrade is no gap.
                            legacy: older_account(&r).then(|| previous.legacy_key()),
                        });
                    }
                    sim.entries
                        .push(entry(&r, now, LogState::Accepted, None, false));
                    sim.bytes = sim.bytes.saturating_add(bytes);
                    sim.accepted += 1;
                    Outcome::Accepted { bytes, gap: false }
                } else {
                    sims.entry(r.iccid.to_string()).or_default().duplicate = true;
                    Outcome::Duplicate
                }
            }
        };
        lines.push(line(index, Some(&r), outcome));
    }

    // Gaps: an accepted receipt whose previous record is neither in this batch nor claimed (all looked up at
    // once, concurrently).
    follows.retain(|f| !claimed.contains(&f.previous));
    let seen = join_windows(
        follows
            .iter()
            .map(|f| crate::claims::seen(&store, &f.previous, f.legacy.as_deref())),
        WINDOW,
    )
    .await;
    for (f, seen) in follows.iter().zip(seen) {
        if is_gap(f.seq, false, seen?) {
            if let Outcome::Accepted { gap, .. } = &mut lines[f.line].outcome {
                *gap = true;
            }
            if let Some(e) = sims
                .get_mut(&f.iccid)
                .and_then(|b| b.entries.get_mut(f.entry))
            {
                e.gap = true;
            }
        }
    }

    // Every SIM's log entries first, written in one call (one commit on SQLite), then the charges.
    let mut writes = Vec::new();
    for (iccid, batch) in &mut sims {
        writes.extend(place_log(iccid, std::mem::take(&mut batch.entries))?);
    }
    kv::set_many::<wit::Error>(&writes).map_err(kv_err)?;
    // The charges (`crate::charge`), then the batch's events held until the ledger has them (nothing is lost to
    // a crash from here to the append), then what the charges do to the accounts. A charge that fails stops the
    // batch; the event names the SIMs charged before it, and the one whose charge is unknown (still held, so
    // logged later).
    let counts: BTreeMap<String, (u64, u64)> = sims
        .iter()
        .map(|(iccid, b)| (iccid.clone(), (b.bytes, b.accepted)))
        .collect();
    let done = crate::charge::charge(&batch_id, &counts, &accounts, &mut lines).await;
    if let Some(fields) = charge_entry(&batch_id, &done.sims) {
        events.push((EntryKind::UsageCharged, fields));
    }
    let held = match events.is_empty() {
        true => None,
        false => match crate::held::hold(&batch_id, now, &events) {
            Ok(id) => Some(id.to_string()),
            Err(e) => {
                eprintln!("metering: holding batch {batch_id}'s ledger events failed: {e:?}");
                None
            }
        },
    };
    let settled = match done.failed {
        Some(e) => Err(e),
        None => {
            let resent: Vec<&String> = sims
                .iter()
                .filter(|(_, b)| b.resent())
                .map(|(i, _)| i)
                .collect();
            crate::holds::settle(&accounts, &done.charged, &resent).await
        }
    };
    let holds = match settled {
        Ok(holds) => holds,
        // Held (or nothing to log): a recovery logs the events (`held-due`); the caller learns of the failure.
        Err(e) if held.is_some() || events.is_empty() => return Err(e),
        // Neither held: the answer is the only way left for the charges that landed to reach the ledger (the
        // gateway logs its events; an error would drop them, and a resend is all duplicates). So it answers,
        // reporting the receipts of the SIM whose charge is unknown and of those not charged as such (kernel
        // `mark_uncharged`). The holds of SIMs out of balance wait for their next batch.
        Err(e) => {
            eprintln!("metering: batch {batch_id} stopped ({e:?}); its events go with the answer");
            let charged: HashSet<&str> = done.charged.iter().map(|c| c.iccid.as_str()).collect();
            mark_uncharged(&mut lines, |iccid| charged.contains(iccid), done.unknown);
            Vec::new()
        }
    };

    let report = serde_json::json!({ "totals": totals(&lines), "results": lines });
    Ok(Ingested {
        report: report.to_string(),
        events: events.iter().map(|(k, f)| event_to_wit(*k, f)).collect(),
        holds,
        held,
    })
}

fn line(index: usize, r: Option<&Receipt>, outcome: Outcome) -> ReportLine {
    ReportLine {
        index,
        iccid: r.map(|r| r.iccid.to_string()),
        session_id: r.map(|r| r.session_id.clone()),
        seq: r.map(|r| r.seq),
        outcome,
    }
}

fn entry(r: &Receipt, now: u64, state: LogState, reason: Option<&str>, gap: bool) -> LogEntry {
    LogEntry {
        n: 0,
        at: now,
        state,
        reason: reason.map(str::to_owned),
        gap,
        receipt: r.to_wire(),
    }
}

/// Place `entries` in the SIM's receipt log as one chunk: one `increment` reserves the chunk (its positions
/// follow from it, kernel `log_position`), written once under its own key (the returned key and JSON).
fn place_log(
    iccid: &str,
    mut entries: Vec<LogEntry>,
) -> Result<Option<(String, Vec<u8>)>, wit::Error> {
    if entries.is_empty() {
        return Ok(None);
    }
    let chunk = kv::increment::<wit::Error>(&keys::meter_chunks(iccid), 1).map_err(kv_err)?;
    let chunk = u64::try_from(chunk).map_err(internal)?;
    for (i, e) in entries.iter_mut().enumerate() {
        e.n = log_position(chunk, i);
    }
    let json = serde_json::to_vec(&entries).map_err(internal)?;
    Ok(Some((keys::meter_chunk(iccid, chunk), json)))
}
