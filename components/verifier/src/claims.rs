//! The settlement records this component keeps (rules: kernel `settlement`; keys: kernel `store::keys`):
//!
//! - `x402/nonce/<caip2>/<from>/<nonce>` → the settlement of one EIP-3009 authorization, claimed with
//!   insert-if-absent **before** anything is signed. Whoever inserts it is the only one who may broadcast that
//!   authorization; it names the invoice it pays (none for the facilitator API), so it never pays another.
//! - `txhash/<hash>` → a transaction that paid something (our settlements and tx-hash proofs), so no transfer
//!   pays two invoices.
//!
//! Every update is a versioned-cell update whose decision is a kernel method, so racing callers never both
//! win. A settlement's updates after its claim start from the cell version it last wrote (`Claim::version`)
//! instead of reading the record again; a version someone else has moved past only costs that read. Releasing
//! a claim (only ever for a transaction that was certainly not broadcast) removes it.

use alloy_primitives::B256;
use esim402_core::evm::SignedTx;
use esim402_core::settlement::{Outcome, Record};
use esim402_guest::convert::kv_fault;
use esim402_guest::kv::{self, Change, KvError};
use esim402_guest::wit;

fn kv_err(e: KvError<wit::Error>) -> wit::Error {
    match e {
        KvError::Refused(e) => e,
        KvError::Exists => wit::Error::Conflict("already settled".into()),
        other => kv_fault("", other),
    }
}

/// A record.
pub async fn load(key: &str) -> Result<Option<Record>, wit::Error> {
    kv::get_json::<Record, wit::Error>(key)
        .await
        .map_err(kv_err)
}

/// Insert `record` at `key` unless the key holds one: `None` if we won, the existing record if not.
pub async fn insert(key: &str, record: &Record) -> Result<Option<Record>, wit::Error> {
    Ok(claim(key, record).await?.err())
}

/// [`insert`]: `Ok` with the cell version now holding our record (to start its next update from) if we won,
/// `Err` with the existing record if not.
pub async fn claim(key: &str, record: &Record) -> Result<Result<kv::Stored, Record>, wit::Error> {
    let (_, existing, version) =
        kv::change_json_from::<Record, Option<Record>, wit::Error>(key, None, |cur| {
            Ok(match cur {
                None => (Change::Put(record.clone()), None),
                Some(r) => (Change::Keep, Some(r)),
            })
        })
        .await
        .map_err(kv_err)?;
    Ok(existing.map_or(Ok(version), Err))
}

/// Apply `f` (a kernel transition returning whether it changed the record), starting from the record's cell
/// version `start` when the caller holds it; the record after the attempt, that answer and the version now
/// holding it. `None` if there is no record.
async fn transition(
    key: &str,
    start: Option<kv::Stored>,
    f: impl Fn(&mut Record) -> bool,
) -> Result<Option<(Record, bool, kv::Stored)>, wit::Error> {
    kv::transition_json_from(key, start, f)
        .await
        .map_err(kv_err)
}

/// The record at `key` as held at `start` (a version its caller wrote, with its data), else as read now, and
/// the version it is at.
async fn current(
    key: &str,
    start: Option<kv::Stored>,
) -> Result<(Option<Record>, kv::Stored), wit::Error> {
    match start {
        Some(version) if version.data.is_some() => {
            let record = version
                .data
                .as_deref()
                .map(serde_json::from_slice::<Record>)
                .transpose()
                .map_err(|e| wit::Error::Internal(format!("settlement record {key}: {e}")))?;
            Ok((record, version))
        }
        _ => kv::read_json::<Record, wit::Error>(key)
            .await
            .map_err(kv_err),
    }
}

/// Record `tx` on the claim before its broadcast, its `txhash/` key claimed first ([`claim_txhash`]): the
/// record and its cell version if this call recorded it, `None` if `holder` no longer holds the claim.
///
/// The claim comes first so that no cancellation (the host drops the task at a store call) can leave a
/// recorded transaction without it: a later replay would send and confirm it, and a refund of it would then
/// find nothing taken. Cancelled between the two, the claim names a transaction whose bytes were never stored,
/// which never leaves: harmless (signed again identically by a later holder, it is claimed already).
pub async fn record_submitted(
    key: &str,
    start: Option<kv::Stored>,
    claim: &str,
    holder: &str,
    tx: &SignedTx,
    at_block: Option<u64>,
    now: u64,
) -> Result<Option<(Record, kv::Stored)>, wit::Error> {
    // The record as this holder last wrote it (or read now), recorded as it will be: what the claim names.
    let (current, start) = current(key, start).await?;
    let Some(mut submitted) = current else {
        return Ok(None);
    };
    // A stale version saying no cannot turn into a yes: holders never come back, statuses never go back.
    if !submitted.record_submitted(claim, holder, tx, at_block, now) {
        return Ok(None);
    }
    if let Some(other) = claim_txhash(&submitted, tx.hash).await? {
        return Err(pays_another(tx.hash, &other));
    }
    Ok(transition(key, Some(start), |r| {
        r.record_submitted(claim, holder, tx, at_block, now)
    })
    .await?
    .and_then(|(record, changed, version)| changed.then_some((record, version))))
}

/// Record `tx`, a replacement of the recorded `previous` with higher fees, before it is sent (kernel
/// `Record::record_replacement`): whether this call recorded it.
pub async fn record_replacement(
    key: &str,
    holder: &str,
    previous: B256,
    tx: &SignedTx,
    now: u64,
) -> Result<bool, wit::Error> {
    let claim = key;
    Ok(transition(key, None, |r| {
        r.record_replacement(claim, holder, previous, tx, now)
    })
    .await?
    .is_some_and(|(_, changed, _)| changed))
}

/// What [`finish`] did.
pub enum Finished {
    /// The record after the attempt, and whether this call recorded the outcome.
    Record(Box<Record>, bool),
    /// There is no record at the key.
    NoRecord,
    /// Nothing recorded: the confirming hash's `txhash/` key is held by another settlement (a tx-hash proof of
    /// another invoice presented it first), so one transfer would pay two invoices. Left pending for an
    /// operator (logged `OPERATOR:`), as `sender::front_run` leaves a front-run that pays another.
    PaysAnother,
}

/// Record a terminal outcome (kernel `Record::finish`). A confirmation by one of the record's own hashes claims
/// that hash's `txhash/` key first (kernel `Record::to_claim_before`; unless this settlement claimed it itself,
/// `claimed`): a transaction recorded by an older build, or by a request cancelled before its claim, confirms
/// with its claim made, so a refund of it finds what it took. A failed claim records nothing: a later call
/// confirms it. A key another settlement holds records nothing either ([`Finished::PaysAnother`]).
pub async fn finish(
    key: &str,
    start: Option<kv::Stored>,
    claim: &str,
    outcome: Outcome,
    claimed: Option<B256>,
    now: u64,
) -> Result<Finished, wit::Error> {
    let start = match outcome {
        Outcome::Confirmed(by) if claimed != Some(by) => {
            let (current, start) = current(key, start).await?;
            if let Some(record) = current.as_ref()
                && let Some(hash) = record.to_claim_before(claim, outcome)
                && let Some(other) = claim_txhash(record, hash).await?
            {
                eprintln!(
                    "verifier: OPERATOR: settlement {key} ({}) was confirmed by {hash}, which already pays {} ({}); \
                     left pending: settle it by hand",
                    record
                        .invoice
                        .as_deref()
                        .unwrap_or("a facilitator API settlement"),
                    other
                        .invoice
                        .as_deref()
                        .unwrap_or("a facilitator API settlement"),
                    other.claim
                );
                return Ok(Finished::PaysAnother);
            }
            Some(start)
        }
        _ => start,
    };
    Ok(
        match transition(key, start, |r| r.finish(claim, outcome, now)).await? {
            Some((record, changed, _)) => Finished::Record(Box::new(record), changed),
            None => Finished::NoRecord,
        },
    )
}

/// Take over the abandoned claim at `key` for `holder`: the record's cell version if this call took it.
pub async fn take_over(
    key: &str,
    claim: &str,
    holder: &str,
    now: u64,
) -> Result<Option<kv::Stored>, wit::Error> {
    Ok(transition(key, None, |r| r.take_over(claim, holder, now))
        .await?
        .and_then(|(_, changed, version)| changed.then_some(version)))
}

/// Also claim `txhash/<hash>` for a transaction of the settlement `record`, so no proof can present it for
/// another invoice and a refund can find what it paid: `None` once this settlement holds it (claimed now, or
/// before), else the other settlement's record that holds it (kernel `Record::holds_txhash`), which the caller
/// must not record the transaction against ([`pays_another`]).
///
/// A store failure here fails a send before its broadcast. The claim comes before the record
/// ([`record_submitted`]), so the record does not name the transaction yet, and a plain `sender::give_back` of
/// its nonce would do; but the send's `record` cannot tell this failure from one of the record's own write
/// (which may have landed), so it gives the nonce back as for a recorded transaction
/// (`sender::give_back_recorded`: held until the caller's [`release`] has removed the record, then released as
/// an orphan by the next send of the key, or filled with the no-op below later nonces): a delay, never a
/// second transaction.
pub async fn claim_txhash(record: &Record, hash: B256) -> Result<Option<Record>, wit::Error> {
    Ok(insert(&esim402_core::store::keys::txhash(hash), record)
        .await?
        .filter(|holder| !record.holds_txhash(holder)))
}

/// The fault of a transaction of ours whose `txhash/` key `other` holds: it is not recorded, nor sent.
pub fn pays_another(hash: B256, other: &Record) -> wit::Error {
    wit::Error::Conflict(format!(
        "transaction {hash} is claimed by another settlement ({})",
        other.claim
    ))
}

/// Remove the claims at `keys` (those of a payment that was certainly not broadcast), each only while it is
/// still held by `holder` (a cell update decides, so a holder whose claim was taken over meanwhile releases
/// nothing of its successor's). `record_key` goes first: once the record is no longer ours, nothing else is
/// touched. Best effort: a failure is logged and leaves a claim in place, which blocks a retry but never
/// causes a second broadcast.
pub async fn release(record_key: &str, holder: &str, keys: &[String]) {
    let ordered = std::iter::once(record_key)
        .chain(keys.iter().map(String::as_str).filter(|k| *k != record_key));
    for key in ordered {
        let r = kv::change_json::<Record, bool, ()>(key, |cur| {
            Ok(match cur {
                Some(r) if r.holder == holder => (Change::Remove, true),
                _ => (Change::Keep, false),
            })
        })
        .await;
        match r {
            Ok((_, true)) => {}
            Ok((_, false)) if key == record_key => return,
            Ok((_, false)) => {}
            Err(e) => eprintln!("verifier: cannot release claim {key}: {e}"),
        }
    }
}
