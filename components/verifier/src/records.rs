//! What the verifier keeps in the `default` key-value store, and the claims that make settlement at-most-once.
//!
//! - `x402/nonce/<caip2>/<from>/<nonce>` → [`Record`]: the claim on one EIP-3009 authorization, taken with
//!   insert-if-absent **before** anything is signed. Whoever inserts it is the only one who may broadcast that
//!   authorization. For invoice settlements it is a marker (the record lives under the invoice); for the
//!   facilitator API it is the settlement record itself.
//! - `settlement/<invoice id>` → [`Record`]: the invoice's settlement, claimed with compare-and-swap (absent, or
//!   a terminal failure of another authorization that moved no money). Status `claimed` → `submitted` (the tx
//!   hash and the signed bytes are recorded *before* the broadcast) → `confirmed` | `failed`.
//! - `txhash/<hash>` → [`Record`]: a transaction that paid something (our settlements and tx-hash proofs), so
//!   no transfer pays two invoices.
//! - `signer/<caip2>/<address>/nonce` → the kernel's `NonceState` of each key we sign with (the facilitator's,
//!   the treasury's), updated by compare-and-swap; it names the record holding each unmined nonce's
//!   transaction, so a later send can offer the node a transaction it never got (see `crate::rebroadcast`).
//! - `refund/<invoice id>` → a refund owed for a confirmed payment, and `refund/queue` → the ids of refunds not
//!   yet paid, in order (see `crate::refund`).
//!
//! Releasing a claim (only ever for a transaction that was certainly not broadcast) deletes it.

use alloy_primitives::{Address, B256};
use esim402_core::InvoiceId;
use esim402_core::x402::NetworkConfig;
use esim402_guest::kv::{self, KvError};
use serde::{Deserialize, Serialize};

use crate::rebroadcast::{OurTx, SentTx};
use crate::wit;

/// The claim key of one authorization.
pub fn nonce_key(network: &NetworkConfig, from: Address, nonce: B256) -> String {
    format!("x402/nonce/{}/{from:#x}/{nonce}", network.caip2())
}

/// The authorizer and EIP-3009 nonce named by a [`nonce_key`], if `key` is one.
pub fn parse_nonce_key(key: &str) -> Option<(Address, B256)> {
    let mut parts = key.strip_prefix("x402/nonce/")?.split('/');
    let (_network, from, nonce) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    Some((from.parse().ok()?, nonce.parse().ok()?))
}

/// The settlement record key of an invoice.
pub fn settlement_key(invoice: &InvoiceId) -> String {
    format!("settlement/{invoice}")
}

/// The claim key of a transaction that paid something.
pub fn txhash_key(hash: B256) -> String {
    format!("txhash/{hash}")
}

/// The refund record key of an invoice.
pub fn refund_key(invoice: &InvoiceId) -> String {
    format!("refund/{invoice}")
}

/// Whether `key` is a refund record's (and not the queue's).
pub fn is_refund_key(key: &str) -> bool {
    key.starts_with("refund/") && key != REFUND_QUEUE_KEY
}

/// The list of invoice ids whose refunds are not paid yet.
pub const REFUND_QUEUE_KEY: &str = "refund/queue";

/// The nonce bookkeeping key of a signer.
pub fn signer_nonce_key(network: &NetworkConfig, signer: Address) -> String {
    format!("signer/{}/{signer:#x}/nonce", network.caip2())
}

/// Where a settlement is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Claimed; nothing signed or sent yet (a tx-hash proof waiting for confirmations never gets here).
    Claimed,
    /// Signed and (possibly) broadcast: `transaction` is set; the receipt is not in yet.
    Submitted,
    /// Mined with status 1: money moved.
    Confirmed,
    /// Terminal failure: `reason` says why; no money moved.
    Failed,
}

/// One settlement, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Status.
    pub status: Status,
    /// CAIP-2 network.
    pub network: String,
    /// The payer, checksummed.
    pub payer: String,
    /// What pays: the authorization's nonce key or the proof's `txhash/` key.
    pub claim: String,
    /// Who drives this settlement now: a random token per attempt, so a holder whose claim was taken over
    /// (see [`CLAIM_LEASE_SECS`]) can no longer sign or broadcast.
    pub holder: String,
    /// The invoice paid, if any (none for the facilitator API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoice: Option<String>,
    /// When the payment was verified and claimed (unix seconds); replays are re-checked as of then.
    pub claimed_at: u64,
    /// The settlement transaction, once signed by the facilitator (for a tx-hash proof: the proof's hash).
    #[serde(flatten)]
    pub sent: SentTx,
    /// The x402 reason of a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Last change (unix seconds).
    pub updated_at: u64,
}

impl Record {
    /// A fresh claim, held by `holder`.
    pub fn claimed(
        network: &NetworkConfig,
        payer: Address,
        claim: String,
        holder: String,
        invoice: Option<&InvoiceId>,
        now: u64,
    ) -> Self {
        Self {
            status: Status::Claimed,
            network: network.caip2(),
            payer: payer.to_checksum(None),
            claim,
            holder,
            invoice: invoice.map(|i| i.as_str().to_owned()),
            claimed_at: now,
            sent: SentTx::default(),
            reason: None,
            updated_at: now,
        }
    }

    /// The recorded transaction hash, if any.
    pub fn tx_hash(&self) -> Option<B256> {
        self.sent.hash()
    }

    /// The transaction of a `submitted` record, as signed (for [`crate::rebroadcast`]). A `submitted` record's
    /// `updated_at` is when the transaction was recorded: only a terminal outcome changes it again.
    pub fn submitted_tx(&self) -> Option<OurTx> {
        if self.status != Status::Submitted {
            return None;
        }
        self.sent.our_tx(self.updated_at)
    }

    /// A `claimed` record whose holder went quiet for longer than [`CLAIM_LEASE_SECS`].
    pub fn is_abandoned(&self, now: u64) -> bool {
        self.status == Status::Claimed && self.updated_at.saturating_add(CLAIM_LEASE_SECS) <= now
    }
}

/// How long a `claimed` record may go without progress before another call may take it over. Its holder
/// does at most a handful of RPC calls (10 s timeout each) before recording `submitted`, so a quiet claim
/// means the holder was cancelled before signing (the host drops a request's task when its client leaves).
pub const CLAIM_LEASE_SECS: u64 = 120;

/// A fresh random holder token.
pub fn new_holder() -> Result<String, wit::Error> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| wit::Error::Internal(format!("no randomness: {e}")))?;
    Ok(alloy_primitives::hex::encode(b))
}

/// Map a key-value failure: the caller's own refusal passes through; anything else is internal.
pub fn kv_err(e: KvError<wit::Error>) -> wit::Error {
    match e {
        KvError::Refused(e) => e,
        KvError::Exists => wit::Error::Conflict("already settled".into()),
        other => wit::Error::Internal(other.to_string()),
    }
}

/// Read a record.
pub async fn load(key: &str) -> Result<Option<Record>, wit::Error> {
    kv::get_json::<Record, wit::Error>(key)
        .await
        .map_err(kv_err)
}

/// Insert `record` at `key` unless the key exists: `Ok(None)` if we won, `Ok(Some(existing))` if not.
pub async fn insert_if_absent(key: &str, record: &Record) -> Result<Option<Record>, wit::Error> {
    let bytes = serde_json::to_vec(record).map_err(|e| wit::Error::Internal(e.to_string()))?;
    match kv::insert_if_absent::<wit::Error>(key, &bytes).await {
        Ok(()) => Ok(None),
        Err(KvError::Exists) => Ok(Some(load(key).await?.ok_or_else(|| {
            wit::Error::Conflict("already settled (claim released meanwhile; retry)".into())
        })?)),
        Err(e) => Err(kv_err(e)),
    }
}

/// Claim an invoice's settlement record for `record.claim`: taken if absent, or if it holds a terminal failure
/// of a different payment (no money moved, so another payment may try). Otherwise returns what is there.
pub async fn claim_invoice(key: &str, record: &Record) -> Result<Option<Record>, wit::Error> {
    let (_, existing) = kv::update_json_with::<Record, Option<Record>, wit::Error>(key, |cur| {
        Ok(match cur {
            None => (record.clone(), None),
            Some(r) if r.status == Status::Failed && r.claim != record.claim => {
                (record.clone(), None)
            }
            Some(r) => (r.clone(), Some(r)),
        })
    })
    .await
    .map_err(kv_err)?;
    Ok(existing)
}

/// Update the record at `key` if it still belongs to `claim` (and, with `holder`, is still held by it) and is
/// not terminal; returns the record after the attempt and whether `update` was applied.
pub async fn advance(
    key: &str,
    claim: &str,
    holder: Option<&str>,
    update: impl Fn(&mut Record),
) -> Result<(Record, bool), wit::Error> {
    kv::update_json_with::<Record, bool, wit::Error>(key, |cur| {
        let mut r = cur.ok_or_else(|| {
            wit::Error::Conflict(format!(
                "already settled: settlement record {key} was released"
            ))
        })?;
        let held = holder.is_none_or(|h| h == r.holder);
        if r.claim != claim || !held || matches!(r.status, Status::Confirmed | Status::Failed) {
            return Ok((r, false));
        }
        update(&mut r);
        Ok((r, true))
    })
    .await
    .map_err(kv_err)
}

/// Take over the abandoned claim at `key` for `holder`: `true` if this call took it, `false` if the claim is
/// live or not `claim`'s.
pub async fn take_over(key: &str, claim: &str, holder: &str, now: u64) -> Result<bool, wit::Error> {
    let (_, taken) = kv::update_json_with::<Record, bool, wit::Error>(key, |cur| {
        let mut r = cur.ok_or_else(|| {
            wit::Error::Conflict("already settled (claim released meanwhile; retry)".into())
        })?;
        if r.claim != claim || !r.is_abandoned(now) {
            return Ok((r, false));
        }
        r.holder = holder.to_owned();
        r.claimed_at = now;
        r.updated_at = now;
        Ok((r, true))
    })
    .await
    .map_err(kv_err)?;
    Ok(taken)
}

/// Remove the claims at `keys` (those of a payment that was certainly not broadcast), each only while it is
/// still held by `holder` (a cell update decides, so a holder whose claim was taken over meanwhile releases
/// nothing of its successor's). `record_key` goes first: once the record is no longer ours, nothing else is
/// touched. Best effort: a failure is logged and leaves a claim in place, which blocks a retry but never causes
/// a second broadcast.
pub async fn release(record_key: &str, holder: &str, keys: &[String]) {
    let ordered = std::iter::once(record_key)
        .chain(keys.iter().map(String::as_str).filter(|k| *k != record_key));
    for key in ordered {
        let r = kv::change_json::<Record, bool, ()>(key, |cur| {
            Ok(match cur {
                Some(r) if r.holder == holder => (kv::Change::Remove, true),
                _ => (kv::Change::Keep, false),
            })
        })
        .await;
        match r {
            Ok((_, true)) => {}
            // Not ours (any more): leave it and everything after it.
            Ok((_, false)) if key == record_key => return,
            Ok((_, false)) => {}
            Err(e) => eprintln!("verifier: cannot release claim {key}: {e}"),
        }
    }
}

/// Remove the claims at `keys` unconditionally (tombstones: a later claim may take each key; best effort,
/// logged).
pub async fn delete(keys: &[String]) {
    for key in keys {
        if let Err(e) = kv::remove::<()>(key).await {
            eprintln!("verifier: cannot release claim {key}: {e}");
        }
    }
}
