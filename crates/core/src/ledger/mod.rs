//! The tamper-evident money ledger: append-only entries, each hash-chained to the one before it in its
//! *shard*. The ledger is [`SHARDS`] independent chains, so concurrent events rarely wait on one another (an
//! event's shard is [`shard_of`] its invoice: one invoice's events stay in order in one chain); its [`root`]
//! is the total count and a keccak over every shard's head.
//!
//! Every money event (invoice issued, payment verified, settlement submitted/confirmed/failed, refunds,
//! activation outcome) becomes a [`LedgerEntry`]. An entry's `hash` is `keccak256(prev_hash ‖ canonical JSON)`,
//! where the canonical JSON is every other field with sorted keys and no whitespace; the first entry links to the
//! zero hash. Keep a [`ChainHead`] (entry count and last hash) next to the entries and append with
//! [`ChainHead::append`]; [`verify_chain`] replays the chain and names the first entry that was edited, removed,
//! reordered or given a forged hash. A chain cannot notice its own tail being cut off or wholly rewritten, so
//! compare the replayed head with a head stored elsewhere ([`verify_against`]).
//!
//! ```
//! use esim402_core::ledger::{verify_chain, ChainHead, EntryFields, EntryKind};
//! use esim402_core::UsdcAmount;
//!
//! let mut head = ChainHead::genesis();
//! let issued = head.append(1_700_000_000, EntryKind::InvoiceIssued,
//!     EntryFields::default().invoice("inv_1").amount(UsdcAmount::from_micros(420_000)));
//! let paid = head.append(1_700_000_060, EntryKind::PaymentVerified, EntryFields::default().invoice("inv_1"));
//! assert_eq!(verify_chain([&issued, &paid]).unwrap(), head);
//! ```

mod absent;
pub mod outbox;

pub use absent::{AbsentHead, absent_head, first_proposal_key};

use std::collections::BTreeMap;
use std::fmt;

use alloy_primitives::{B256, keccak256};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::money::UsdcAmount;

/// What happened, as recorded in the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// An invoice was created and offered to a payer.
    InvoiceIssued,
    /// A payment for an invoice passed verification.
    PaymentVerified,
    /// A settlement transaction was broadcast (its hash is known; confirmation is not).
    SettlementSubmitted,
    /// A settlement transaction was mined successfully.
    SettlementConfirmed,
    /// A settlement failed (reverted, or rejected before broadcast).
    SettlementFailed,
    /// We owe the payer a refund (paid, but the service was not delivered).
    RefundOwed,
    /// A refund was paid out.
    RefundPaid,
    /// The eSIM activation the invoice paid for succeeded.
    ActivationCompleted,
    /// What the invoice paid for could not be delivered: an activation, or a top-up or switch (the name is the
    /// first purchase's; kept, as every entry's kind is in its hash).
    ActivationFailed,
    /// Data was credited to a SIM's balance (its activation or a paid top-up), once per invoice.
    DataCredited,
    /// Accepted usage receipts were charged to a SIM's balance (one entry per SIM per batch).
    UsageCharged,
    /// A usage receipt failed verification and is kept, uncharged, as disputed.
    UsageDisputed,
}

impl EntryKind {
    /// Every kind, in declaration order.
    pub const ALL: [Self; 12] = [
        Self::InvoiceIssued,
        Self::PaymentVerified,
        Self::SettlementSubmitted,
        Self::SettlementConfirmed,
        Self::SettlementFailed,
        Self::RefundOwed,
        Self::RefundPaid,
        Self::ActivationCompleted,
        Self::ActivationFailed,
        Self::DataCredited,
        Self::UsageCharged,
        Self::UsageDisputed,
    ];

    /// The snake_case name used on the wire and in the canonical encoding.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvoiceIssued => "invoice_issued",
            Self::PaymentVerified => "payment_verified",
            Self::SettlementSubmitted => "settlement_submitted",
            Self::SettlementConfirmed => "settlement_confirmed",
            Self::SettlementFailed => "settlement_failed",
            Self::RefundOwed => "refund_owed",
            Self::RefundPaid => "refund_paid",
            Self::ActivationCompleted => "activation_completed",
            Self::ActivationFailed => "activation_failed",
            Self::DataCredited => "data_credited",
            Self::UsageCharged => "usage_charged",
            Self::UsageDisputed => "usage_disputed",
        }
    }
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The optional payload of an entry, built up with the chained setters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EntryFields {
    /// The invoice the event belongs to.
    pub invoice_id: Option<String>,
    /// The amount of money involved.
    pub amount: Option<UsdcAmount>,
    /// The network (CAIP-2) the money moved on.
    pub network: Option<String>,
    /// The on-chain transaction hash.
    pub tx_hash: Option<String>,
    /// The payer's address.
    pub payer: Option<String>,
    /// Anything else worth keeping (reason strings, carrier ids, …). Never secrets.
    pub details: BTreeMap<String, String>,
}

impl EntryFields {
    /// Set the invoice id.
    pub fn invoice(mut self, id: impl Into<String>) -> Self {
        self.invoice_id = Some(id.into());
        self
    }

    /// Set the amount.
    pub fn amount(mut self, amount: UsdcAmount) -> Self {
        self.amount = Some(amount);
        self
    }

    /// Set the network.
    pub fn network(mut self, network: impl Into<String>) -> Self {
        self.network = Some(network.into());
        self
    }

    /// Set the transaction hash.
    pub fn tx_hash(mut self, hash: impl Into<String>) -> Self {
        self.tx_hash = Some(hash.into());
        self
    }

    /// Set the payer.
    pub fn payer(mut self, payer: impl Into<String>) -> Self {
        self.payer = Some(payer.into());
        self
    }

    /// Add one detail.
    pub fn detail(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.details.insert(key.into(), value.into());
        self
    }
}

/// How many chains the ledger is split into. Fixed for the life of a ledger: changing it would move events
/// between chains.
pub const SHARDS: u16 = 16;

/// The shard an event belongs to: a hash of `key` (its invoice id; for events without one, what identifies
/// them, e.g. a SIM or a batch).
pub fn shard_of(key: &str) -> u16 {
    let h = keccak256(key.as_bytes());
    u16::from_be_bytes([h[0], h[1]]) % SHARDS
}

/// The shard an event belongs to: its invoice's, else its batch's (details: all events of one receipt batch
/// make one run in one chain, whatever SIMs they name), else its SIM's, else its kind's.
pub fn shard_for(kind: EntryKind, fields: &EntryFields) -> u16 {
    let key = fields
        .invoice_id
        .as_deref()
        .or_else(|| fields.details.get("batch").map(String::as_str))
        .or_else(|| fields.details.get("iccid").map(String::as_str))
        .unwrap_or(kind.as_str());
    shard_of(key)
}

/// Whether an invoice has at most one event of `kind` (everything but a payment's verification, which each
/// attempt logs): such an event can be logged again by a resumed attempt and recognised as a repeat.
pub fn once_per_invoice(kind: EntryKind) -> bool {
    kind != EntryKind::PaymentVerified
}

/// The events a resumed payment attempt logs, less those an earlier attempt of the same invoice logged
/// already: a once-per-invoice event ([`once_per_invoice`]) whose invoice has an event of that kind among
/// `found` (the invoice's shard read from where its entries start, `crate::paid::PaymentRecord::ledger_since`)
/// or `parked` (in the outbox, waiting for a drain). An attempt interrupted between an effect and its append (a
/// crash) leaves the event unlogged; the resumed attempt logs every such event again, and this keeps each once.
pub fn not_yet_logged(
    events: Vec<(EntryKind, EntryFields)>,
    found: &[LedgerEntry],
    parked: &[(EntryKind, EntryFields)],
) -> Vec<(EntryKind, EntryFields)> {
    let logged: std::collections::BTreeSet<(&str, EntryKind)> = found
        .iter()
        .filter_map(|e| Some((e.invoice_id.as_deref()?, e.kind)))
        .chain(
            parked
                .iter()
                .filter_map(|(k, f)| Some((f.invoice_id.as_deref()?, *k))),
        )
        .collect();
    events
        .into_iter()
        .filter(|(kind, fields)| {
            !once_per_invoice(*kind)
                || fields
                    .invoice_id
                    .as_deref()
                    .is_none_or(|id| !logged.contains(&(id, *kind)))
        })
        .collect()
}

/// Where a chain ends: its shard, how many entries it has and the hash of the last one (zero for an empty
/// chain).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChainHead {
    /// The shard.
    #[serde(default)]
    pub shard: u16,
    /// Number of entries so far; also the `seq` the next entry gets.
    pub count: u64,
    /// Hash of the last entry, or zero before the first.
    pub hash: B256,
}

impl ChainHead {
    /// The head of an empty shard 0 (a ledger of one chain).
    pub const fn genesis() -> Self {
        Self::genesis_of(0)
    }

    /// The head of an empty `shard`.
    pub const fn genesis_of(shard: u16) -> Self {
        Self {
            shard,
            count: 0,
            hash: B256::ZERO,
        }
    }

    /// The head once `entry` has been appended.
    pub fn after(entry: &LedgerEntry) -> Self {
        Self {
            shard: entry.shard,
            count: entry.seq.saturating_add(1),
            hash: entry.hash,
        }
    }

    /// Build the next entry and advance this head past it.
    pub fn append(&mut self, at: u64, kind: EntryKind, fields: EntryFields) -> LedgerEntry {
        let entry = LedgerEntry::new(self, at, kind, fields);
        *self = Self::after(&entry);
        entry
    }
}

impl Default for ChainHead {
    fn default() -> Self {
        Self::genesis()
    }
}

impl fmt::Display for ChainHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "shard {}: {} entries ending in {}",
            self.shard, self.count, self.hash
        )
    }
}

/// One ledger entry. Build it with [`LedgerEntry::new`] or [`ChainHead::append`]; the fields are public for
/// reading, and any edit is caught by [`verify_chain`].
///
/// Serialises (and [`to_json_line`] exports) as the canonical JSON plus `hash`, keys sorted.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerEntry {
    /// The chain it belongs to.
    pub shard: u16,
    /// Position in its chain, from 0.
    pub seq: u64,
    /// When it happened, in unix seconds (supplied by the caller).
    pub at: u64,
    /// What happened.
    pub kind: EntryKind,
    /// The invoice the event belongs to.
    pub invoice_id: Option<String>,
    /// The amount of money involved.
    pub amount: Option<UsdcAmount>,
    /// The network (CAIP-2) the money moved on.
    pub network: Option<String>,
    /// The on-chain transaction hash.
    pub tx_hash: Option<String>,
    /// The payer's address.
    pub payer: Option<String>,
    /// Free-form extra facts.
    #[serde(default)]
    pub details: BTreeMap<String, String>,
    /// Hash of the previous entry (zero for the first).
    pub prev_hash: B256,
    /// `keccak256(prev_hash ‖ canonical_bytes)`.
    pub hash: B256,
}

impl LedgerEntry {
    /// The entry that follows `head` (in its shard): `seq = head.count`, `prev_hash = head.hash`, hash computed.
    pub fn new(head: &ChainHead, at: u64, kind: EntryKind, fields: EntryFields) -> Self {
        let EntryFields {
            invoice_id,
            amount,
            network,
            tx_hash,
            payer,
            details,
        } = fields;
        let mut entry = Self {
            shard: head.shard,
            seq: head.count,
            at,
            kind,
            invoice_id,
            amount,
            network,
            tx_hash,
            payer,
            details,
            prev_hash: head.hash,
            hash: B256::ZERO,
        };
        entry.hash = entry.compute_hash();
        entry
    }

    /// Its payload, as the event it was appended from (the inverse of [`LedgerEntry::new`]'s).
    pub fn fields(&self) -> EntryFields {
        EntryFields {
            invoice_id: self.invoice_id.clone(),
            amount: self.amount,
            network: self.network.clone(),
            tx_hash: self.tx_hash.clone(),
            payer: self.payer.clone(),
            details: self.details.clone(),
        }
    }

    /// The canonical encoding: JSON of every field but `hash`, keys sorted, no whitespace. `None` is `null`,
    /// amounts are decimal USDC strings, hashes `0x`-prefixed lowercase hex.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        self.to_value(false).to_string().into_bytes()
    }

    /// `keccak256(prev_hash ‖ canonical_bytes)`: what `hash` must be.
    pub fn compute_hash(&self) -> B256 {
        let canonical = self.canonical_bytes();
        let mut preimage = Vec::with_capacity(32 + canonical.len());
        preimage.extend_from_slice(self.prev_hash.as_slice());
        preimage.extend_from_slice(&canonical);
        keccak256(preimage)
    }

    /// The JSON object, keys inserted in sorted order so the output is sorted whichever map type serde_json
    /// was built with (`preserve_order` keeps insertion order; the default `BTreeMap` sorts).
    fn to_value(&self, with_hash: bool) -> Value {
        fn opt(s: Option<&str>) -> Value {
            s.map_or(Value::Null, |s| Value::String(s.to_owned()))
        }
        fn hex32(h: &B256) -> Value {
            Value::String(format!("0x{}", hex::encode(h)))
        }
        let details: Map<String, Value> = self
            .details
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let mut m = Map::new();
        m.insert(
            "amount".into(),
            self.amount
                .map_or(Value::Null, |a| Value::String(a.to_string())),
        );
        m.insert("at".into(), Value::from(self.at));
        m.insert("details".into(), Value::Object(details));
        if with_hash {
            m.insert("hash".into(), hex32(&self.hash));
        }
        m.insert("invoice_id".into(), opt(self.invoice_id.as_deref()));
        m.insert("kind".into(), Value::String(self.kind.as_str().into()));
        m.insert("network".into(), opt(self.network.as_deref()));
        m.insert("payer".into(), opt(self.payer.as_deref()));
        m.insert("prev_hash".into(), hex32(&self.prev_hash));
        m.insert("seq".into(), Value::from(self.seq));
        m.insert("shard".into(), Value::from(self.shard));
        m.insert("tx_hash".into(), opt(self.tx_hash.as_deref()));
        Value::Object(m)
    }
}

impl Serialize for LedgerEntry {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_value(true).serialize(s)
    }
}

/// One JSON-lines record for `entry`: its canonical JSON plus `hash`, keys sorted, ending in `\n`.
pub fn to_json_line(entry: &LedgerEntry) -> String {
    let mut line = entry.to_value(true).to_string();
    line.push('\n');
    line
}

/// Parse one JSON-lines record (surrounding whitespace ignored). The entry is not checked: run
/// [`verify_chain`] over what you read.
pub fn from_json_line(line: &str) -> Result<LedgerEntry, LedgerError> {
    serde_json::from_str(line.trim()).map_err(|e| LedgerError::Malformed(e.to_string()))
}

/// Why a ledger failed to verify; `seq` is the first entry found wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// The entry's contents do not hash to its stored `hash`: it was edited, or its hash forged.
    #[error(
        "entry {seq}: contents do not match the stored hash {stored} (they hash to {computed})"
    )]
    HashMismatch {
        /// The entry.
        seq: u64,
        /// The hash stored in the entry.
        stored: B256,
        /// The hash its contents give.
        computed: B256,
    },
    /// The entry's `prev_hash` is not the previous entry's hash: something before it was rewritten or removed.
    #[error("entry {seq}: prev_hash {found} does not link to the previous entry's hash {expected}")]
    BrokenLink {
        /// The entry.
        seq: u64,
        /// The previous entry's hash.
        expected: B256,
        /// The `prev_hash` stored in the entry.
        found: B256,
    },
    /// Entries are missing: the sequence jumps forward.
    #[error("entries missing: expected seq {expected}, found {found}")]
    Missing {
        /// The seq that should have come next.
        expected: u64,
        /// The seq that came instead.
        found: u64,
    },
    /// Entries are out of order or duplicated: the sequence goes backwards, or the expected entry comes later.
    #[error("entries out of order: expected seq {expected}, found {found}")]
    OutOfOrder {
        /// The seq that should have come next.
        expected: u64,
        /// The seq that came instead.
        found: u64,
    },
    /// The chain verifies but does not end where the stored head says (tail removed or chain rewritten).
    #[error("ledger ends at {found}, but the stored head is {expected}")]
    HeadMismatch {
        /// The stored head.
        expected: ChainHead,
        /// Where the entries end.
        found: ChainHead,
    },
    /// An entry sits in another shard's chain (moved there, or its shard field edited).
    #[error("entry {seq} belongs to shard {found}, not to shard {expected}")]
    WrongShard {
        /// The entry.
        seq: u64,
        /// The shard whose chain holds it.
        expected: u16,
        /// The shard the entry names.
        found: u16,
    },
    /// A JSON-lines record did not parse.
    #[error("malformed ledger line: {0}")]
    Malformed(String),
    /// The shard's stored head was written and is gone (removed, or lost by its store: [`AbsentHead::Missing`]):
    /// what is left of the chain cannot say where it ended, so it is not taken as the whole shard.
    #[error("head missing (the shard's head was written and is gone)")]
    HeadMissing,
}

/// Replay shard 0's chain from genesis and return its head, or the first problem found.
pub fn verify_chain<'a>(
    entries: impl IntoIterator<Item = &'a LedgerEntry>,
) -> Result<ChainHead, LedgerError> {
    verify_shard_chain(0, entries)
}

/// Replay `shard`'s chain from genesis and return its head, or the first problem found.
pub fn verify_shard_chain<'a>(
    shard: u16,
    entries: impl IntoIterator<Item = &'a LedgerEntry>,
) -> Result<ChainHead, LedgerError> {
    continue_chain(ChainHead::genesis_of(shard), entries)
}

/// The head after `entry` if `entry` is the next link of the chain at `head` (its shard, the head's count as
/// its seq, the head's hash as its previous hash, its own hash right), else what is wrong with it: what an
/// appender checks before it moves a head past an entry another appender wrote.
pub fn continues(head: &ChainHead, entry: &LedgerEntry) -> Result<ChainHead, LedgerError> {
    continue_chain(*head, std::iter::once(entry))
}

/// Replay `entries` as the continuation of a chain at `head`, and return where they end.
fn continue_chain<'a>(
    mut head: ChainHead,
    entries: impl IntoIterator<Item = &'a LedgerEntry>,
) -> Result<ChainHead, LedgerError> {
    let shard = head.shard;
    let mut iter = entries.into_iter();
    while let Some(entry) = iter.next() {
        if entry.shard != shard {
            return Err(LedgerError::WrongShard {
                seq: entry.seq,
                expected: shard,
                found: entry.shard,
            });
        }
        let expected = head.count;
        if entry.seq != expected {
            // A later entry with the expected seq means this one was moved, not that entries were lost.
            let reordered = entry.seq < expected || iter.any(|e| e.seq == expected);
            return Err(if reordered {
                LedgerError::OutOfOrder {
                    expected,
                    found: entry.seq,
                }
            } else {
                LedgerError::Missing {
                    expected,
                    found: entry.seq,
                }
            });
        }
        let computed = entry.compute_hash();
        if computed != entry.hash {
            return Err(LedgerError::HashMismatch {
                seq: entry.seq,
                stored: entry.hash,
                computed,
            });
        }
        if entry.prev_hash != head.hash {
            return Err(LedgerError::BrokenLink {
                seq: entry.seq,
                expected: head.hash,
                found: entry.prev_hash,
            });
        }
        head = ChainHead::after(entry);
    }
    Ok(head)
}

/// Replay the chain of `expected.shard` and check it passes exactly through `expected` (a head kept apart from
/// the entries, so a removed tail is caught). Entries past the head must continue the chain from it: an append
/// in flight writes its entries before it advances the head (and one cut off in between is completed by the
/// next append), so a scan that meets them is not a tampered ledger. Returns how many there are.
pub fn verify_against<'a>(
    entries: impl IntoIterator<Item = &'a LedgerEntry>,
    expected: &ChainHead,
) -> Result<u64, LedgerError> {
    let mut iter = entries.into_iter();
    let within = usize::try_from(expected.count).unwrap_or(usize::MAX);
    let found = verify_shard_chain(expected.shard, iter.by_ref().take(within))?;
    if found != *expected {
        return Err(LedgerError::HeadMismatch {
            expected: *expected,
            found,
        });
    }
    let end = continue_chain(found, iter)?;
    Ok(end.count - found.count)
}

/// The whole ledger in two numbers: how many entries all shards hold, and `keccak256` over every shard's
/// head in shard order (`shard ‖ count ‖ hash`, big-endian), so any change in any chain changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerRoot {
    /// Entries in all shards.
    pub count: u64,
    /// The root hash.
    pub hash: B256,
}

/// The root over the shard heads (missing shards count as empty).
pub fn root(heads: &[ChainHead]) -> LedgerRoot {
    let mut preimage = Vec::with_capacity(usize::from(SHARDS) * 42);
    let mut count = 0u64;
    for shard in 0..SHARDS {
        let head = heads
            .iter()
            .find(|h| h.shard == shard)
            .copied()
            .unwrap_or(ChainHead::genesis_of(shard));
        count = count.saturating_add(head.count);
        preimage.extend_from_slice(&shard.to_be_bytes());
        preimage.extend_from_slice(&head.count.to_be_bytes());
        preimage.extend_from_slice(head.hash.as_slice());
    }
    LedgerRoot {
        count,
        hash: keccak256(preimage),
    }
}

/// Verify every shard against its stored head (`(stored head, entries as read)` per shard) and return the
/// root, or the first shard that fails with why.
pub fn verify_shards(
    shards: &[(ChainHead, Vec<LedgerEntry>)],
) -> Result<(LedgerRoot, u64), (u16, LedgerError)> {
    let mut pending = 0u64;
    for (head, entries) in shards {
        pending += verify_against(entries, head).map_err(|e| (head.shard, e))?;
    }
    let heads: Vec<ChainHead> = shards.iter().map(|(h, _)| *h).collect();
    Ok((root(&heads), pending))
}

/// [`verify_shards`], where `gone` names the shards whose stored head was written and is gone
/// ([`AbsentHead::Missing`]; their heads in `shards` are placeholders): the first of them fails the check with
/// [`LedgerError::HeadMissing`], before any chain is replayed.
pub fn verify_read(
    shards: &[(ChainHead, Vec<LedgerEntry>)],
    gone: &[u16],
) -> Result<(LedgerRoot, u64), (u16, LedgerError)> {
    if let Some(&shard) = gone.iter().min() {
        return Err((shard, LedgerError::HeadMissing));
    }
    verify_shards(shards)
}

/// How old (by its time) an entry past its shard's head must be before a check helps the head past it
/// ([`stranded`]): a younger one may be an append in flight, whose own head advance follows.
pub const STRANDED_AFTER_SECS: u64 = 60;

/// The shards whose stored head has entries past it that continue its chain (`(stored head, entries as read)`
/// per shard, as [`verify_shards`] takes them), at `now`: each head, and the head after those entries, up to the
/// first one younger than [`STRANDED_AFTER_SECS`]. An appender writes its entries before it advances the head,
/// and one cut off in between (a crash) leaves them stranded until the next append to that shard helps the head
/// past them; on a shard nobody appends to again, a check helps it instead, so they count in the root. A shard
/// whose chain does not verify up to its head is left out.
pub fn stranded(shards: &[(ChainHead, Vec<LedgerEntry>)], now: u64) -> Vec<(ChainHead, ChainHead)> {
    shards
        .iter()
        .filter_map(|(head, entries)| {
            let within = usize::try_from(head.count).unwrap_or(usize::MAX);
            // Nothing read past the head: nothing to replay (the common case costs no hashing).
            if entries.len() <= within {
                return None;
            }
            let found = verify_shard_chain(head.shard, entries.iter().take(within)).ok()?;
            if found != *head {
                return None;
            }
            let old = entries
                .iter()
                .skip(within)
                .take_while(|e| e.at.saturating_add(STRANDED_AFTER_SECS) <= now);
            let end = continue_chain(found, old).ok()?;
            (end.count > head.count).then_some((*head, end))
        })
        .collect()
}

/// What a ledger check answers about a stored ledger record that does not parse (`key`, as the store names
/// it): which shard and which entry (or the shard's head), never the record or the decoder's message, which can
/// quote stored values. The answer is public (`GET /v1/ledger/verify`); the operator reads the rest in the log.
pub fn unreadable(key: &str) -> String {
    let mut parts = key.strip_prefix("ledger/").unwrap_or_default().split('/');
    let shard = parts.next().and_then(|s| s.parse::<u16>().ok());
    match (shard, parts.next(), parts.next(), parts.next()) {
        (Some(shard), Some("entry"), Some(seq), None) => match seq.parse::<u64>() {
            Ok(seq) => format!("shard {shard}: entry {seq} is not a ledger entry"),
            Err(_) => format!("shard {shard}: an entry is not a ledger entry"),
        },
        (Some(shard), Some("head"), None, None) => {
            format!("shard {shard}: its head is not a chain head")
        }
        _ => "a ledger record is unreadable".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000;

    fn chain(n: u64) -> (Vec<LedgerEntry>, ChainHead) {
        let mut head = ChainHead::genesis();
        let entries = (0..n)
            .map(|i| {
                let kind = EntryKind::ALL[(i % 9) as usize];
                let fields = EntryFields::default()
                    .invoice(format!("inv_{i:032x}"))
                    .amount(UsdcAmount::from_micros(10_000 * (i + 1)))
                    .network("eip155:84532")
                    .detail("attempt", i.to_string());
                let fields = if i % 3 == 0 {
                    fields
                        .tx_hash(format!("0x{:064x}", i))
                        .payer("0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266")
                } else {
                    fields
                };
                head.append(T0 + i, kind, fields)
            })
            .collect();
        (entries, head)
    }

    /// An appender moves a head only past the next link: the entry at the head's count, chained to its hash,
    /// in its shard, its hash right. A seq far ahead, an edited entry or another shard's is refused.
    #[test]
    fn only_the_next_link_continues_a_head() {
        let (entries, head) = chain(3);
        let at_two = ChainHead::after(&entries[1]);
        assert_eq!(continues(&at_two, &entries[2]), Ok(head));
        assert!(continues(&head, &entries[2]).is_err(), "already past it");
        let mut far = entries[2].clone();
        far.seq = 1_000_000;
        far.hash = far.compute_hash();
        assert!(matches!(
            continues(&at_two, &far),
            Err(LedgerError::Missing { .. })
        ));
        let mut edited = entries[2].clone();
        edited.amount = Some(UsdcAmount::from_micros(1));
        assert!(matches!(
            continues(&at_two, &edited),
            Err(LedgerError::HashMismatch { .. })
        ));
        let other = ChainHead::genesis_of(1);
        assert!(matches!(
            continues(&other, &entries[0]),
            Err(LedgerError::WrongShard { .. })
        ));
    }

    #[test]
    fn hundred_entries_verify_to_their_head() {
        let (entries, head) = chain(100);
        assert_eq!(head.count, 100);
        assert_eq!(head.hash, entries[99].hash);
        assert_eq!(entries[0].prev_hash, B256::ZERO);
        assert_eq!(verify_chain(&entries), Ok(head));
        assert_eq!(verify_against(&entries, &head), Ok(0));
        assert_eq!(verify_chain([]), Ok(ChainHead::genesis()));
    }

    #[test]
    fn canonical_encoding_is_sorted_compact_and_hash_is_keccak_of_prev_and_it() {
        let e = LedgerEntry::new(
            &ChainHead::genesis(),
            T0,
            EntryKind::SettlementConfirmed,
            EntryFields::default()
                .invoice("inv_1")
                .amount(UsdcAmount::from_micros(420_000))
                .detail("z", "last")
                .detail("a", "first \"quoted\""),
        );
        let zero = format!("0x{}", "0".repeat(64));
        let expected = format!(
            r#"{{"amount":"0.42","at":1700000000,"details":{{"a":"first \"quoted\"","z":"last"}},"invoice_id":"inv_1","kind":"settlement_confirmed","network":null,"payer":null,"prev_hash":"{zero}","seq":0,"shard":0,"tx_hash":null}}"#
        );
        assert_eq!(String::from_utf8(e.canonical_bytes()).unwrap(), expected);
        let mut preimage = vec![0u8; 32];
        preimage.extend_from_slice(expected.as_bytes());
        assert_eq!(e.hash, keccak256(preimage));
    }

    #[test]
    fn json_lines_round_trip_and_serialize_matches() {
        let (entries, head) = chain(12);
        let text: String = entries.iter().map(to_json_line).collect();
        assert_eq!(text.lines().count(), 12);
        let back: Vec<LedgerEntry> = text.lines().map(|l| from_json_line(l).unwrap()).collect();
        assert_eq!(back, entries);
        assert_eq!(verify_chain(&back), Ok(head));
        assert_eq!(
            serde_json::to_string(&entries[3]).unwrap() + "\n",
            to_json_line(&entries[3])
        );
        assert!(matches!(
            from_json_line(r#"{"seq":0}"#),
            Err(LedgerError::Malformed(_))
        ));
        let line = to_json_line(&entries[0]).replace(r#""at":"#, r#""extra":1,"at":"#);
        assert!(matches!(
            from_json_line(&line),
            Err(LedgerError::Malformed(_))
        ));
    }

    #[test]
    fn every_kind_round_trips_as_snake_case() {
        for kind in EntryKind::ALL {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(serde_json::from_str::<EntryKind>(&json).unwrap(), kind);
        }
    }

    #[test]
    fn edited_entry_is_a_hash_mismatch() {
        let (mut entries, _) = chain(100);
        entries[42].amount = Some(UsdcAmount::from_micros(1));
        let stored = entries[42].hash;
        assert_eq!(
            verify_chain(&entries),
            Err(LedgerError::HashMismatch {
                seq: 42,
                stored,
                computed: entries[42].compute_hash()
            })
        );
        let (mut entries, _) = chain(10);
        entries[7].details.insert("note".into(), "sneaky".into());
        assert!(matches!(
            verify_chain(&entries),
            Err(LedgerError::HashMismatch { seq: 7, .. })
        ));
    }

    #[test]
    fn forged_hash_is_caught_on_the_entry_or_the_next_link() {
        // An arbitrary hash written over the entry's own.
        let (mut entries, _) = chain(100);
        entries[10].hash = B256::repeat_byte(0xab);
        assert!(matches!(
            verify_chain(&entries),
            Err(LedgerError::HashMismatch { seq: 10, .. })
        ));
        // Edited and re-hashed so the entry is self-consistent: the next entry no longer links to it.
        let (mut entries, _) = chain(100);
        entries[10].amount = Some(UsdcAmount::from_micros(1));
        entries[10].hash = entries[10].compute_hash();
        let forged = entries[10].hash;
        assert!(matches!(
            verify_chain(&entries),
            Err(LedgerError::BrokenLink { seq: 11, found, expected }) if expected == forged && found != forged
        ));
    }

    #[test]
    fn removed_entry_is_missing_or_a_broken_link() {
        let (mut entries, head) = chain(100);
        entries.remove(50);
        assert_eq!(
            verify_chain(&entries),
            Err(LedgerError::Missing {
                expected: 50,
                found: 51
            })
        );
        // Renumbered after the removal, with each moved entry re-hashed: the first one no longer links back.
        for e in &mut entries[50..] {
            e.seq -= 1;
            e.hash = e.compute_hash();
        }
        assert!(matches!(
            verify_chain(&entries),
            Err(LedgerError::BrokenLink { seq: 50, .. })
        ));
        // Cutting off the tail leaves a valid chain; only the stored head catches it.
        let (mut entries, _) = chain(100);
        entries.truncate(99);
        assert!(verify_chain(&entries).is_ok());
        assert!(matches!(
            verify_against(&entries, &head),
            Err(LedgerError::HeadMismatch { found, .. }) if found.count == 99
        ));
    }

    #[test]
    fn reordered_or_duplicated_entries_are_out_of_order() {
        let (mut entries, _) = chain(100);
        entries.swap(20, 21);
        assert_eq!(
            verify_chain(&entries),
            Err(LedgerError::OutOfOrder {
                expected: 20,
                found: 21
            })
        );
        let (mut entries, _) = chain(100);
        let dup = entries[30].clone();
        entries.insert(31, dup);
        assert_eq!(
            verify_chain(&entries),
            Err(LedgerError::OutOfOrder {
                expected: 31,
                found: 30
            })
        );
    }

    /// `per_shard` entries in each of three shards.
    fn shards(per_shard: u64) -> Vec<(ChainHead, Vec<LedgerEntry>)> {
        [3u16, 7, 15]
            .iter()
            .map(|&shard| {
                let mut head = ChainHead::genesis_of(shard);
                let entries = (0..per_shard)
                    .map(|i| {
                        head.append(
                            T0 + i,
                            EntryKind::PaymentVerified,
                            EntryFields::default().invoice(format!("inv_{shard}_{i}")),
                        )
                    })
                    .collect();
                (head, entries)
            })
            .collect()
    }

    #[test]
    fn shards_verify_to_a_root_that_every_change_moves() {
        let good = shards(5);
        let (r, pending) = verify_shards(&good).unwrap();
        assert_eq!(pending, 0);
        assert_eq!(r.count, 15);
        assert_eq!(r, root(&good.iter().map(|(h, _)| *h).collect::<Vec<_>>()));
        assert_ne!(r.hash, root(&[]).hash);
        assert_eq!(root(&[]).count, 0);
        // One more entry anywhere moves the root.
        let mut more = shards(5);
        let (head, entries) = &mut more[1];
        entries.push(head.append(T0, EntryKind::RefundOwed, EntryFields::default()));
        assert_ne!(verify_shards(&more).unwrap().0.hash, r.hash);
    }

    /// A shard whose head was written and is gone fails the check by name, even though what is left of its chain
    /// would verify from genesis (a head removed with the tail after it): the lowest such shard is named.
    #[test]
    fn a_shard_whose_head_is_gone_fails_the_check() {
        let mut read = shards(5);
        let first = read[1].1[0].clone();
        read[1] = (ChainHead::genesis_of(7), vec![first]);
        assert!(
            verify_read(&read, &[]).is_ok(),
            "entries past genesis read as pending"
        );
        assert_eq!(
            verify_read(&read, &[15, 7]),
            Err((7, LedgerError::HeadMissing))
        );
        assert_eq!(
            format!("shard 7: {}", LedgerError::HeadMissing),
            "shard 7: head missing (the shard's head was written and is gone)"
        );
        assert_eq!(verify_read(&shards(5), &[]), verify_shards(&shards(5)));
    }

    #[test]
    fn entries_past_the_head_are_an_append_in_flight_if_they_continue_the_chain() {
        let (mut entries, head) = chain(10);
        let mut ahead = head;
        entries.push(ahead.append(T0 + 10, EntryKind::RefundOwed, EntryFields::default()));
        entries.push(ahead.append(T0 + 11, EntryKind::RefundPaid, EntryFields::default()));
        assert_eq!(verify_against(&entries, &head), Ok(2));
        // One that does not continue the chain is not.
        let mut forged = entries.clone();
        forged[11].prev_hash = B256::repeat_byte(7);
        forged[11].hash = forged[11].compute_hash();
        assert!(matches!(
            verify_against(&forged, &head),
            Err(LedgerError::BrokenLink { seq: 11, .. })
        ));
        // And the head still pins the entries before it: one removed below it is caught.
        let mut cut = entries.clone();
        cut.remove(9);
        assert!(verify_against(&cut, &head).is_err());
    }

    #[test]
    fn an_entry_moved_to_another_shard_or_a_truncated_shard_is_caught() {
        let mut moved = shards(5);
        let e = moved[0].1.pop().unwrap();
        moved[1].1.push(e);
        assert!(matches!(
            verify_shards(&moved),
            Err((3, LedgerError::HeadMismatch { .. }))
        ));
        let mut edited = shards(5);
        edited[2].1[1].shard = 3;
        assert!(matches!(
            verify_shards(&edited),
            Err((
                15,
                LedgerError::WrongShard {
                    seq: 1,
                    expected: 15,
                    found: 3
                }
            ))
        ));
        let mut cut = shards(5);
        cut[2].1.truncate(4);
        assert!(matches!(
            verify_shards(&cut),
            Err((15, LedgerError::HeadMismatch { .. }))
        ));
    }

    #[test]
    fn events_spread_over_every_shard_and_one_key_always_lands_in_one() {
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..400 {
            let k = format!("inv_{i}");
            assert_eq!(shard_of(&k), shard_of(&k));
            assert!(shard_of(&k) < SHARDS);
            seen.insert(shard_of(&k));
        }
        assert_eq!(seen.len(), usize::from(SHARDS));
    }

    #[test]
    fn errors_name_the_entry() {
        let err = LedgerError::Missing {
            expected: 5,
            found: 7,
        };
        assert_eq!(err.to_string(), "entries missing: expected seq 5, found 7");
    }

    #[test]
    fn a_resumed_attempt_logs_only_what_no_earlier_attempt_of_the_invoice_did() {
        let inv = |id: &str| EntryFields::default().invoice(id);
        let mut head = ChainHead::genesis_of(shard_of("inv_a"));
        let found = [
            head.append(1, EntryKind::InvoiceIssued, inv("inv_a")),
            head.append(1, EntryKind::PaymentVerified, inv("inv_a")),
            head.append(2, EntryKind::SettlementConfirmed, inv("inv_other")),
        ];
        let events = vec![
            (EntryKind::InvoiceIssued, inv("inv_a")),
            (EntryKind::PaymentVerified, inv("inv_a")),
            (EntryKind::SettlementConfirmed, inv("inv_a")),
            (EntryKind::ActivationCompleted, inv("inv_a")),
            (
                EntryKind::DataCredited,
                EntryFields::default().detail("iccid", "8901"),
            ),
        ];
        // An event waiting in the outbox is logged already too.
        let owed = vec![(EntryKind::RefundOwed, inv("inv_a"))];
        assert_eq!(not_yet_logged(owed.clone(), &found, &[]), owed);
        assert!(not_yet_logged(owed.clone(), &found, &owed).is_empty());
        let kinds: Vec<EntryKind> = not_yet_logged(events, &found, &[])
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            kinds,
            [
                EntryKind::PaymentVerified,
                EntryKind::SettlementConfirmed,
                EntryKind::ActivationCompleted,
                EntryKind::DataCredited,
            ],
            "the issue is a repeat; each attempt's verification is its own; another invoice's settlement is not \
             this one's; an event naming no invoice is kept"
        );
    }

    /// A record that does not parse is reported by where it is, nothing of what it holds.
    #[test]
    fn an_unreadable_record_is_reported_by_shard_and_seq_only() {
        use crate::store::keys;
        assert_eq!(
            unreadable(&keys::ledger_entry(3, 17)),
            "shard 3: entry 17 is not a ledger entry"
        );
        assert_eq!(
            unreadable(&keys::ledger_head(12)),
            "shard 12: its head is not a chain head"
        );
        assert_eq!(
            unreadable("ledger/03/entry/s3cret"),
            "shard 3: an entry is not a ledger entry"
        );
        for other in [
            "ledger/outbox",
            "invoice/inv_s3cret",
            "ledger/x/entry/1",
            "",
        ] {
            assert_eq!(
                unreadable(other),
                "a ledger record is unreadable",
                "{other}"
            );
        }
    }

    /// Entries past a head that continue its chain are stranded (the head moves past them); a shard without
    /// any, or whose entries past the head do not continue it, or whose chain is broken, is left alone.
    #[test]
    fn entries_continuing_past_a_head_are_stranded_and_nothing_else() {
        let (entries, end) = chain(3);
        let mut first = ChainHead::genesis();
        for e in &entries[..1] {
            first = ChainHead::after(e);
        }
        let now = T0 + 1_000_000;
        assert_eq!(
            stranded(&[(first, entries.clone())], now),
            [(first, end)],
            "two entries past the head"
        );
        assert!(stranded(&[(end, entries.clone())], now).is_empty());
        // Young entries may be an append in flight: left to it, from the first young one on.
        let young = entries[2].at;
        let second = ChainHead::after(&entries[1]);
        assert_eq!(
            stranded(&[(first, entries.clone())], young + STRANDED_AFTER_SECS - 1),
            [(first, second)]
        );
        assert!(stranded(&[(first, entries.clone())], entries[1].at).is_empty());
        let mut forged = entries.clone();
        forged[2].prev_hash = B256::ZERO;
        assert!(
            stranded(&[(first, forged.clone())], now).is_empty(),
            "a broken link is not helped past"
        );
        assert!(
            stranded(&[(end, forged)], now).is_empty(),
            "nor a broken chain"
        );
    }
}
