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

/// Record `tx` on the claim before its broadcast: the record and its cell version if this call recorded it,
/// `None` if `holder` no longer holds the claim.
pub async fn record_submitted(
    key: &str,
    start: Option<kv::Stored>,
    claim: &str,
    holder: &str,
    tx: &SignedTx,
    at_block: Option<u64>,
    now: u64,
) -> Result<Option<(Record, kv::Stored)>, wit::Error> {
    Ok(transition(key, start, |r| {
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

/// Record a terminal outcome; the record after the attempt and whether this call recorded it.
pub async fn finish(
    key: &str,
    start: Option<kv::Stored>,
    claim: &str,
    outcome: Outcome,
    now: u64,
) -> Result<Option<(Record, bool)>, wit::Error> {
    Ok(transition(key, start, |r| r.finish(claim, outcome, now))
        .await?
        .map(|(record, changed, _)| (record, changed)))
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

/// Also claim `txhash/<hash>` for a transaction we signed (its settlement `record`), so no proof can present
/// it for another invoice and a refund can find what it paid. A store failure here fails the send before
/// its broadcast: a transaction out without this claim could be presented again as a tx-hash proof. The
/// record already names the transaction then, so its account nonce stays held until the caller's [`release`]
/// has removed the record (the next send of the key gives it back only if no record names a transaction at it:
/// `sender::give_back_recorded`); a release that fails keeps both, and the recorded transaction may still go
/// out, to be reconciled like any other `submitted` one.
pub async fn claim_txhash(record: &Record, hash: B256) -> Result<(), wit::Error> {
    insert(&esim402_core::store::keys::txhash(hash), record)
        .await
        .map(drop)
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
