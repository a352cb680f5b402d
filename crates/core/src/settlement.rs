//! The settlement of one payment, as the verifier keeps it: the claim on an EIP-3009 authorization
//! (`x402/nonce/<caip2>/<from>/<nonce>`) or on a transaction that paid by itself (`txhash/<hash>`), and where
//! it is. This module holds the rules; the verifier loads a [`Record`], asks a function here, and writes back
//! what it says (a versioned-cell update, so two callers never both win).
//!
//! Life of a record: [`Status::Claimed`] (taken before anything is signed, by a random `holder`) →
//! [`Status::Submitted`] (the signed transaction and its hash recorded *before* the broadcast) →
//! [`Status::Confirmed`] | [`Status::Failed`]. Rules a reader must not break:
//! - Only the holder of a `claimed` record may sign for it ([`Record::record_submitted`]); a claim that stays
//!   quiet for [`CLAIM_LEASE_SECS`] may be taken over ([`Record::take_over`]): its holder never signed (it
//!   records before it broadcasts), so nothing of it can be out there.
//! - A `submitted` record is only ever reconciled against its recorded hashes: a second transaction is never
//!   signed for it, only a replacement of the same one (same nonce and call, higher fees: kernel `evm::bump`),
//!   recorded before it is sent ([`Record::record_replacement`]) with every earlier hash kept
//!   ([`SentTx::replaced`]); a receipt of any of them is the settlement's ([`SentTx::is_ours`]).
//! - Terminal records never change again ([`Record::finish`] refuses them), and a record claimed for one
//!   invoice never settles another ([`replay`]).

use alloy_primitives::{Address, B256, Bytes, U256, keccak256};
use serde::{Deserialize, Serialize};

use crate::evm::SignedTx;
use crate::evm::quantity;
use crate::money::UsdcAmount;
use crate::x402::InvalidReason;

/// How long a `claimed` record may go without progress before another call may take it over. Its holder does
/// at most a handful of RPC calls (10 s timeout each) before recording `submitted`, so a quiet claim means the
/// holder was cancelled before signing (the host drops a request's task when its client leaves).
pub const CLAIM_LEASE_SECS: u64 = 120;

/// Where a settlement is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Claimed; nothing signed or sent yet.
    Claimed,
    /// Signed and (possibly) broadcast: the transaction is recorded; the receipt is not in yet.
    Submitted,
    /// Mined with status 1: money moved.
    Confirmed,
    /// Terminal failure: `reason` says why; no money moved.
    Failed,
}

/// A signed transaction as settlement and refund records keep it (flattened into them: the JSON fields are
/// `transaction`, `signer`, `signer_nonce` and `raw_transaction`; `transaction` is `null` until signed, the
/// others absent; `replaced` too while it is empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentTx {
    /// Its hash.
    #[serde(default)]
    pub transaction: Option<String>,
    /// The account that signed it, checksummed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    /// Its account nonce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer_nonce: Option<u64>,
    /// The signed bytes (0x-hex), kept so that the identical bytes can be sent again if the node loses them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_transaction: Option<String>,
    /// The hashes of the earlier transactions at the same nonce that `transaction` replaced with higher fees
    /// (kernel `evm::bump`), oldest first: the same call, so whichever of them is mined is this record's.
    /// Absent on records from before replacements (none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaced: Vec<String>,
}

impl SentTx {
    /// What a record keeps of `tx`.
    pub fn signed(tx: &SignedTx) -> Self {
        Self {
            transaction: Some(tx.hash.to_string()),
            signer: Some(tx.from.to_checksum(None)),
            signer_nonce: Some(tx.nonce),
            raw_transaction: Some(quantity::encode_data(&tx.raw)),
            replaced: Vec::new(),
        }
    }

    /// Every hash recorded for this transaction's nonce, the latest first: any of them may be the one mined.
    pub fn hashes(&self) -> Vec<B256> {
        let earlier = self.replaced.iter().rev().filter_map(|h| h.parse().ok());
        self.hash().into_iter().chain(earlier).collect()
    }

    /// Whether `hash` is one of [`SentTx::hashes`].
    pub fn is_ours(&self, hash: B256) -> bool {
        self.hashes().contains(&hash)
    }

    /// Record `tx`, a replacement of the recorded transaction `previous` (same signer and nonce, another hash),
    /// keeping `previous` among the earlier hashes; `false` (unchanged) if `previous` is no longer the recorded
    /// one (someone replaced it first) or `tx` is no replacement of it.
    pub fn replace(&mut self, previous: B256, tx: &SignedTx) -> bool {
        let same_nonce = self.signer_nonce == Some(tx.nonce)
            && self
                .signer
                .as_deref()
                .and_then(|s| s.parse::<Address>().ok())
                == Some(tx.from);
        if self.hash() != Some(previous) || tx.hash == previous || !same_nonce {
            return false;
        }
        let mut replaced = std::mem::take(&mut self.replaced);
        replaced.push(previous.to_string());
        *self = Self {
            replaced,
            ..Self::signed(tx)
        };
        true
    }

    /// Name `mined`, one of the earlier hashes, as the transaction (a refund paid by it): the recorded one goes
    /// among the earlier hashes and its bytes are dropped (they hash to it, not to `mined`). Nothing changes if
    /// `mined` is the recorded one or not ours.
    pub fn mined_as(&mut self, mined: B256) {
        let Some(current) = self.hash() else { return };
        let at = self.replaced.iter().position(|h| h.parse() == Ok(mined));
        if current == mined || at.is_none() {
            return;
        }
        self.replaced.retain(|h| h.parse() != Ok(mined));
        self.replaced.push(current.to_string());
        self.transaction = Some(mined.to_string());
        self.raw_transaction = None;
    }

    /// A transaction that is not ours (a tx-hash proof): its hash only.
    pub fn hash_only(hash: B256) -> Self {
        Self {
            transaction: Some(hash.to_string()),
            ..Self::default()
        }
    }

    /// The recorded hash, if any.
    pub fn hash(&self) -> Option<B256> {
        self.transaction.as_deref()?.parse().ok()
    }

    /// The transaction as signed, recorded at `recorded_at`; `None` unless every field is there and the bytes
    /// hash to the recorded hash.
    pub fn our_tx(&self, recorded_at: u64) -> Option<OurTx> {
        let hash: B256 = self.transaction.as_deref()?.parse().ok()?;
        let raw = quantity::parse_data(self.raw_transaction.as_deref()?).ok()?;
        if keccak256(&raw) != hash {
            return None;
        }
        Some(OurTx {
            hash,
            raw,
            signer: self.signer.as_deref()?.parse().ok()?,
            nonce: self.signer_nonce?,
            recorded_at,
            earlier: self.hashes().into_iter().skip(1).collect(),
        })
    }
}

/// One of our signed transactions, as its record holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OurTx {
    /// Its hash (`keccak256(raw)`).
    pub hash: B256,
    /// The signed bytes.
    pub raw: Bytes,
    /// The account that signed it.
    pub signer: Address,
    /// Its account nonce.
    pub nonce: u64,
    /// When it was recorded (unix seconds).
    pub recorded_at: u64,
    /// The hashes of the transactions at the same nonce it replaced, the latest first ([`SentTx::replaced`]).
    pub earlier: Vec<B256>,
}

impl OurTx {
    /// Its hash and every earlier one of its nonce, the latest first.
    pub fn hashes(&self) -> Vec<B256> {
        std::iter::once(self.hash)
            .chain(self.earlier.iter().copied())
            .collect()
    }
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
    /// What pays: the authorization's nonce key or the proof's `txhash/` key (the record's own key).
    pub claim: String,
    /// Who drives this settlement now: a random token per attempt, so a holder whose claim was taken over can
    /// no longer sign or broadcast.
    pub holder: String,
    /// The invoice paid, if any (none for the facilitator API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoice: Option<String>,
    /// When the payment was verified and claimed (unix seconds); replays are re-checked as of then.
    pub claimed_at: u64,
    /// The settlement transaction, once signed by the facilitator (for a tx-hash proof: the proof's hash).
    #[serde(flatten)]
    pub sent: SentTx,
    /// The chain's head block when the settlement transaction was prepared (its gas estimate ran there): a
    /// transaction that front-ran it was mined after it ([`front_run_search`]). Absent on records from before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at_block: Option<u64>,
    /// The transaction that executed the authorization when it was not `sent` (a front-run: [`front_run`], or
    /// one of our own earlier hashes of the nonce that a replacement did not outrun: [`SentTx::replaced`]),
    /// once this record was confirmed by it; what the payment reports as its settlement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executed_by: Option<String>,
    /// The x402 reason of a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Last change (unix seconds).
    pub updated_at: u64,
    /// Claimed by a build whose facilitator API reports a confirmed settlement's one success through a claim
    /// (`x402/reported/…`): a repeat may report it if nobody has. Records from before (`false`) reported
    /// theirs when they were confirmed, so a repeat of them never does.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub success_claimed_apart: bool,
    /// A tx-hash transfer for the invoice, from its payer, mined after the invoice's deadline: confirmed (the
    /// money arrived, and is owed back: a refund may be recorded against it) but it pays nothing, and a proof
    /// presenting it again never delivers ([`Record::pays_invoice`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub late_transfer: bool,
    /// With [`Record::late_transfer`]: whether the transfer was mined in time but moved less than the invoice's
    /// amount (`true`: its answer ends the invoice), or was mined late (`false`: its answer leaves the invoice
    /// open for a transfer mined in time; a late transfer that was also short is late). `None` on records from
    /// before, which told them apart by the amount alone ([`Record::is_short_transfer`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub short_transfer: Option<bool>,
    /// What a tx-hash transfer moved from the payer to the recipient, which may be more than the invoice asked:
    /// what a refund of the whole payment returns ([`crate::refund::amount_owed`]). Absent on our own
    /// settlements (an `exact` authorization moves exactly the invoice's amount), on records from before, and
    /// for a transfer above `u64::MAX` atomic units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paid_amount: Option<UsdcAmount>,
}

/// The conflict a settlement answers while another attempt of the same payment drives it (its claim is live):
/// that attempt decides, so a caller waits and sends the same payment again rather than ending it.
pub const IN_PROGRESS: &str = "already settled: settlement in progress";

/// How a settlement ended, as far as the chain showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Mined with status 1.
    Confirmed(B256),
    /// Mined with status 0: no money moved.
    Reverted(B256),
    /// Broadcast (or possibly broadcast); no receipt yet.
    Pending(B256),
    /// Never mined and never will be (another transaction used its account nonce), and the authorization is
    /// unused: no money moved.
    Dropped(B256),
    /// Mined with status 1, but the receipt shows no `Transfer(from, to, value)` of the asset for the
    /// authorization (x402 `invalid_exact_evm_transfer_event_mismatch`): not a settlement we can report.
    Unproven(B256),
}

/// What a repeat of a claimed payment gets, from its record alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replay {
    /// Settled: the transaction.
    Settled(String),
    /// Failed for good: the x402 reason.
    Failed(String),
    /// Broadcast without a receipt: reconcile against this hash (never sign another).
    Reconcile(B256),
    /// Claimed and abandoned before signing: take it over and drive it.
    TakeOver,
    /// Claimed by a live holder.
    InProgress,
    /// The record names no usable hash although it says it was broadcast (corrupt).
    Corrupt,
}

impl Record {
    /// Whether a transaction that executes this record's authorization is this record's payment's money, and
    /// pays nothing else (a tx-hash proof presenting it is refused): the record names an invoice and its own
    /// settlement was sent (or confirmed), so another transaction that executed the authorization front-ran
    /// it, and the invoice is left for an operator to settle with that transaction. A claim never sent or a
    /// failed one moved nothing of ours: whoever executed the authorization may present it. Records of the
    /// facilitator API (no invoice) never block: anyone may post an authorization to `/settle`.
    pub fn owns_executions(&self) -> bool {
        self.invoice.is_some() && matches!(self.status, Status::Submitted | Status::Confirmed)
    }

    /// The same record, noting that the transfer moved `value` atomic units, when known
    /// ([`Record::paid_amount`]; not noted above `u64::MAX`).
    pub fn with_paid_amount(mut self, value: Option<U256>) -> Self {
        self.paid_amount = Self::default_paid_amount(value);
        self
    }

    /// `value` atomic units as [`Record::paid_amount`] notes them: none above `u64::MAX`.
    pub fn default_paid_amount(value: Option<U256>) -> Option<UsdcAmount> {
        value
            .and_then(|v| u64::try_from(v).ok())
            .map(UsdcAmount::from_micros)
    }

    /// Whether this transfer, claimed as one that pays nothing, was short (mined in time, less than `amount`)
    /// rather than late: as recorded, or for a record from before [`Record::short_transfer`] existed, by the
    /// amount alone (the rule it was answered by then).
    pub fn is_short_transfer(&self, amount: UsdcAmount) -> bool {
        self.short_transfer
            .unwrap_or_else(|| self.paid_amount.is_some_and(|paid| paid < amount))
    }

    /// Whether this confirmed record pays its invoice: confirmed and not a [`Record::late_transfer`].
    pub fn pays_invoice(&self) -> bool {
        self.status == Status::Confirmed && !self.late_transfer
    }

    /// A fresh claim on `claim`, held by `holder`.
    pub fn claimed(
        network: impl Into<String>,
        payer: Address,
        claim: String,
        holder: String,
        invoice: Option<&str>,
        now: u64,
    ) -> Self {
        Self {
            status: Status::Claimed,
            network: network.into(),
            payer: payer.to_checksum(None),
            claim,
            holder,
            invoice: invoice.map(str::to_owned),
            claimed_at: now,
            sent: SentTx::default(),
            sent_at_block: None,
            executed_by: None,
            reason: None,
            updated_at: now,
            success_claimed_apart: true,
            late_transfer: false,
            short_transfer: None,
            paid_amount: None,
        }
    }

    /// The recorded transaction hash, if any.
    pub fn tx_hash(&self) -> Option<B256> {
        self.sent.hash()
    }

    /// The transaction that settled this payment: the one that executed its authorization if another than
    /// ours did ([`front_run`]), else the recorded one.
    pub fn settled_hash(&self) -> Option<B256> {
        match &self.executed_by {
            Some(by) => by.parse().ok(),
            None => self.tx_hash(),
        }
    }

    /// The transaction of a `submitted` record, as signed (for rebroadcasting). A `submitted` record's
    /// `updated_at` is when the transaction was recorded: only a terminal outcome changes it again.
    pub fn submitted_tx(&self) -> Option<OurTx> {
        if self.status != Status::Submitted {
            return None;
        }
        self.sent.our_tx(self.updated_at)
    }

    /// Whether a settle request whose payload checks out as `authorization` (its payer signed it) may have this
    /// `submitted` or `confirmed` record's outcome: the recorded transaction executes that very authorization.
    /// Another authorization with the same nonce (signed for another recipient or amount) must not be told it
    /// was paid by this one's transaction. A record from before the transaction's bytes were kept cannot tell:
    /// `true`.
    pub fn settles(&self, authorization: &crate::x402::exact::TransferAuthorization) -> bool {
        if !matches!(self.status, Status::Submitted | Status::Confirmed) {
            return false;
        }
        match self.sent.our_tx(self.updated_at) {
            Some(tx) => crate::x402::exact::settled_authorization(&tx.raw) == Some(*authorization),
            None => true,
        }
    }

    /// A `claimed` record whose holder went quiet for longer than [`CLAIM_LEASE_SECS`].
    pub fn is_abandoned(&self, now: u64) -> bool {
        self.status == Status::Claimed && self.updated_at.saturating_add(CLAIM_LEASE_SECS) <= now
    }

    /// Whether this record is terminal.
    pub fn is_terminal(&self) -> bool {
        matches!(self.status, Status::Confirmed | Status::Failed)
    }

    /// Hand an abandoned claim on `claim` to `holder`; `false` (unchanged) if the claim is live or not
    /// `claim`'s. `claimed_at` stays the payment's first verification: replays are re-checked as of then (a
    /// takeover's time may lie past the authorization's `validBefore`, and a resend re-checked then would no
    /// longer match its own record). The lease runs from `updated_at`.
    pub fn take_over(&mut self, claim: &str, holder: &str, now: u64) -> bool {
        if self.claim != claim || !self.is_abandoned(now) {
            return false;
        }
        self.holder = holder.to_owned();
        self.updated_at = now;
        true
    }

    /// Record the signed transaction, prepared at the chain's head block `at_block` (if read), before its
    /// broadcast, if `holder` still holds the claim; `false` (unchanged) otherwise: the caller must not
    /// broadcast.
    pub fn record_submitted(
        &mut self,
        claim: &str,
        holder: &str,
        tx: &SignedTx,
        at_block: Option<u64>,
        now: u64,
    ) -> bool {
        if self.claim != claim || self.holder != holder || self.status != Status::Claimed {
            return false;
        }
        self.status = Status::Submitted;
        self.sent = SentTx::signed(tx);
        self.sent_at_block = at_block;
        self.updated_at = now;
        true
    }

    /// Record `tx`, a replacement of the recorded transaction `previous` with higher fees (kernel `evm::bump`),
    /// before it is sent, if the record is still `submitted` for `claim`, held by `holder` and names `previous`
    /// (a compare-and-swap on the hash: two replays never both replace it); `false` (unchanged) otherwise, and
    /// the caller must not send `tx`. `updated_at` becomes the time the replacement was recorded.
    pub fn record_replacement(
        &mut self,
        claim: &str,
        holder: &str,
        previous: B256,
        tx: &SignedTx,
        now: u64,
    ) -> bool {
        if self.claim != claim || self.holder != holder || self.status != Status::Submitted {
            return false;
        }
        if !self.sent.replace(previous, tx) {
            return false;
        }
        self.updated_at = now;
        true
    }

    /// Record a terminal `outcome` (not `Pending`) for the claim `claim`; `false` (unchanged) if the record is
    /// terminal already or not `claim`'s. A failure carries `transaction_failed`, an unproven transfer
    /// `invalid_exact_evm_transfer_event_mismatch`. A confirmation by another transaction than the recorded
    /// one (a front-run, [`front_run`]) records it as [`Record::executed_by`].
    pub fn finish(&mut self, claim: &str, outcome: Outcome, now: u64) -> bool {
        if self.claim != claim || self.is_terminal() || matches!(outcome, Outcome::Pending(_)) {
            return false;
        }
        self.updated_at = now;
        let reason = match outcome {
            Outcome::Confirmed(by) => {
                self.status = Status::Confirmed;
                if self.tx_hash() != Some(by) {
                    self.executed_by = Some(by.to_string());
                }
                return true;
            }
            Outcome::Unproven(_) => InvalidReason::TransferEventMismatch,
            _ => InvalidReason::TransactionFailed,
        };
        self.status = Status::Failed;
        self.reason = Some(reason.as_str().to_owned());
        true
    }

    /// The hash whose `txhash/` key the claim `claim` must hold before `outcome` is recorded on this record
    /// ([`Record::finish`]): for a confirmation by one of its own hashes ([`SentTx::is_ours`]), that hash, so a
    /// refund finds what the transaction took. Each is claimed before it is recorded, but a request cancelled
    /// between the two by an older build, which recorded first, left it unclaimed; a confirmation by another
    /// transaction (a front-run) is claimed where it is found, with its own checks.
    pub fn to_claim_before(&self, claim: &str, outcome: Outcome) -> Option<B256> {
        match outcome {
            Outcome::Confirmed(by) if self.claim == claim && self.sent.is_ours(by) => Some(by),
            _ => None,
        }
    }

    /// Whether `holder`, the record a `txhash/` key of this settlement's transaction holds, is this
    /// settlement's own claim. Another settlement's (a tx-hash proof of another invoice that presented the hash
    /// first) means the transfer pays that one: recording it here too would let one transfer pay two invoices,
    /// so the caller records nothing and leaves this one to an operator.
    pub fn holds_txhash(&self, holder: &Record) -> bool {
        holder.claim == self.claim
    }

    /// The outcome to report when a terminal result was recorded by someone else first, as recorded: never a
    /// drop over a confirmation, nor a confirmation over a failure. `hash` is the caller's transaction.
    pub fn settled_outcome(&self, hash: B256) -> Outcome {
        match self.status {
            Status::Confirmed => Outcome::Confirmed(self.settled_hash().unwrap_or(hash)),
            Status::Failed
                if self.reason.as_deref()
                    == Some(InvalidReason::TransferEventMismatch.as_str()) =>
            {
                Outcome::Unproven(hash)
            }
            Status::Failed => Outcome::Reverted(hash),
            Status::Claimed | Status::Submitted => Outcome::Pending(hash),
        }
    }
}

/// What a repeat of the payment that holds `record` gets, at `now`.
pub fn replay(record: &Record, now: u64) -> Replay {
    match record.status {
        Status::Confirmed => Replay::Settled(
            record
                .settled_hash()
                .map(|h| h.to_string())
                .unwrap_or_default(),
        ),
        Status::Failed => Replay::Failed(
            record
                .reason
                .clone()
                .unwrap_or_else(|| InvalidReason::TransactionFailed.as_str().to_owned()),
        ),
        Status::Submitted => match record.tx_hash() {
            Some(hash) => Replay::Reconcile(hash),
            None => Replay::Corrupt,
        },
        Status::Claimed if record.is_abandoned(now) => Replay::TakeOver,
        Status::Claimed => Replay::InProgress,
    }
}

/// What the chain shows of a settlement's authorization after the settlement's own transaction can no longer
/// execute it (it reverted, or it can never be mined) although the authorization reads as used: another
/// transaction used it first (a front-run: the payer's own, another facilitator's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsedElsewhere {
    /// Executed by `tx`; `pays`: its receipt shows the token's `Transfer(from, to, value)` of this payment's
    /// authorization (a payer who signed another authorization with the same nonce moved other money).
    Executed {
        /// The transaction that executed it.
        tx: B256,
        /// Whether it moved this payment's money.
        pays: bool,
    },
    /// Canceled by its authorizer (`cancelAuthorization`): nothing moved.
    Canceled,
    /// Nothing found (outside the searched blocks, or the node could not say).
    Unknown,
}

/// How many blocks before the one that showed the authorization used are searched for the transaction that
/// used it ([`UsedElsewhere`]) when the record does not say at which block its transaction was prepared
/// (records from before [`Record::sent_at_block`]).
pub const FRONT_RUN_LOOKBACK_BLOCKS: u64 = 1_000;

/// How many blocks before [`Record::sent_at_block`] the search starts: a front-run mined before the block our
/// gas estimate ran at would have failed the estimate, so this only covers a node whose `latest` lagged.
pub const FRONT_RUN_MARGIN_BLOCKS: u64 = 64;

/// The most blocks after the search's start that are searched: an authorization is executable only until its
/// `validBefore` (minutes after our transaction was prepared), which this covers on chains of 0.25 s blocks,
/// and node providers that cap `eth_getLogs` ranges commonly allow 10 000 blocks.
pub const FRONT_RUN_MAX_SPAN_BLOCKS: u64 = 9_999;

/// The blocks `(from, to)` (both included) to search for the transaction that used `record`'s authorization,
/// which the chain showed used by `by_block`: from just before our transaction was prepared (or
/// [`FRONT_RUN_LOOKBACK_BLOCKS`] back for a record that does not say) up to `by_block`, at most
/// [`FRONT_RUN_MAX_SPAN_BLOCKS`] past the start however late the replay comes.
pub fn front_run_search(record: &Record, by_block: u64) -> (u64, u64) {
    let from = match record.sent_at_block {
        Some(at) => at.saturating_sub(FRONT_RUN_MARGIN_BLOCKS),
        None => by_block.saturating_sub(FRONT_RUN_LOOKBACK_BLOCKS),
    }
    .min(by_block);
    (
        from,
        by_block.min(from.saturating_add(FRONT_RUN_MAX_SPAN_BLOCKS)),
    )
}

/// The blocks `(from, to)` (both included) to search for the transaction that used the authorization of a
/// `claimed` record with nothing of ours prepared (no [`Record::sent_at_block`]: a claim made once the chain
/// showed the authorization used, by `by_block`, or one whose gas estimate reverted): there is no block of ours
/// to start from, so the widest window providers allow ([`FRONT_RUN_MAX_SPAN_BLOCKS`] back), which is hours of
/// blocks on 1-2 s chains and about 40 minutes at 0.25 s.
pub fn used_claim_search(by_block: u64) -> (u64, u64) {
    (by_block.saturating_sub(FRONT_RUN_MAX_SPAN_BLOCKS), by_block)
}

/// What a settlement whose own transaction ended as `failed` (reverted or dropped) becomes, when the
/// authorization it carries reads as used: `used` says by what.
/// - Executed by a transaction that moved this payment's money: an invoice's settlement is confirmed by that
///   transaction (the money reached `payTo` under the authorization presented to us, which pays that one
///   invoice only: its claim decides, and the caller must also claim the transaction's `txhash/` key so no
///   proof presents it again). A facilitator API settlement stays pending: another facilitator may have
///   settled the same authorization for another resource server with the same `payTo`, and reporting it
///   here too would let one transfer buy two resources.
/// - Executed by a transaction that moved other money, or canceled: this payment's money can never move, so
///   the settlement ends as `failed`.
/// - Unknown: pending, for an operator.
///
/// A transaction the record names as its own ([`SentTx::is_ours`]: a lagging node showed our mined transaction
/// as unmineable, or an earlier hash of the nonce was mined) is no front-run: when it moved this payment's
/// money the settlement is confirmed by it, facilitator API settlements too.
pub fn front_run(record: &Record, failed: Outcome, used: UsedElsewhere) -> Outcome {
    let ours = match failed {
        Outcome::Reverted(h) | Outcome::Dropped(h) => h,
        other => return other,
    };
    match used {
        UsedElsewhere::Executed { tx, pays: true }
            if record.invoice.is_some() || record.sent.is_ours(tx) =>
        {
            Outcome::Confirmed(tx)
        }
        UsedElsewhere::Executed { pays: false, .. } | UsedElsewhere::Canceled => failed,
        UsedElsewhere::Executed { .. } | UsedElsewhere::Unknown => Outcome::Pending(ours),
    }
}

/// Where a settlement stands whose own transaction ended as failed (reverted, or can never be mined) while
/// the chain read its authorization unused then. Our transaction put the signed authorization in public
/// calldata: anyone may still execute it, moving the money to `payTo`, until its `validBefore`. So nothing is
/// final before the chain can no longer execute it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unexecuted {
    /// It may still be executed, or the chain could not be read: pending (nothing withdrawn, the payment may
    /// be sent again).
    Pending,
    /// It can never be executed any more and reads unused past its `validBefore`: failed, no money moved.
    Failed,
    /// It was executed (or canceled) meanwhile: decided by what used it ([`front_run`]).
    UsedMeanwhile,
}

/// Whether an authorization valid before `valid_before` may still be executed after a block with
/// `block_timestamp`: EIP-3009 needs `block.timestamp < validBefore`, and every later block is later. `None`
/// (a record from before the signed bytes were kept: the authorization is not known) counts as lapsed.
pub fn may_still_execute(valid_before: Option<U256>, block_timestamp: u64) -> bool {
    valid_before.is_some_and(|before| U256::from(block_timestamp) < before)
}

/// [`Unexecuted`] for an authorization valid before `valid_before`, from the latest block's timestamp and
/// `authorizationState` read at that same block (`None`: unreadable): used there, decided by what used it;
/// unused, failed only once that block is past `validBefore` ([`may_still_execute`]), else pending.
pub fn unexecuted(
    valid_before: Option<U256>,
    latest_timestamp: Option<u64>,
    used_at_latest: Option<bool>,
) -> Unexecuted {
    match (latest_timestamp, used_at_latest) {
        (Some(_), Some(true)) => Unexecuted::UsedMeanwhile,
        (Some(at), Some(false)) if !may_still_execute(valid_before, at) => Unexecuted::Failed,
        _ => Unexecuted::Pending,
    }
}

/// What a settlement whose own transaction was never sent (its gas estimate reverted, or its claim was taken
/// over and the authorization no longer verifies) becomes when the chain reads its authorization as used:
/// another transaction executed it before ours was prepared (the payer's own, anyone holding the payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsedBeforeSent {
    /// Settled by that transaction (it moved this invoice's money): the caller claims its `txhash/` key for
    /// the record, then records it as [`Record::executed_by`] ([`Record::finish`]).
    Confirmed(B256),
    /// This payment's money can never move (other money under the same nonce, or a cancel): refused, as
    /// before, and the claim released.
    Refused,
    /// Not known what used it, or a facilitator API settlement: the claim stays held (a later attempt that
    /// takes it over decides again), and nothing is refused or withdrawn.
    Pending,
}

/// [`UsedBeforeSent`] for `record` (a `claimed` record: nothing of ours was signed) from what `used` it; the
/// rules of [`front_run`], without a transaction of ours.
pub fn used_before_sent(record: &Record, used: UsedElsewhere) -> UsedBeforeSent {
    match front_run(record, Outcome::Reverted(B256::ZERO), used) {
        Outcome::Confirmed(tx) => UsedBeforeSent::Confirmed(tx),
        Outcome::Pending(_) => UsedBeforeSent::Pending,
        _ => UsedBeforeSent::Refused,
    }
}

/// The time a claim of an invoice's settlement made for an authorization *already used on chain* records as
/// its `claimed_at` (a resumed payment refused by `verify` because another transaction executed it while its
/// order waited): a moment at which the payment passes the chain-free checks as it did for the attempt that
/// ordered (its repeats are checked "as of the claim", and now may be past `validBefore`). That attempt
/// verified at some moment no later than now and no later than `validBefore` less the checks' buffer
/// ([`crate::x402::exact::VALID_BEFORE_BUFFER_SECS`]), and no earlier than `validAfter`; the later of those
/// bounds is the earliest of now and that last second, which therefore passes them too.
pub fn used_claimed_at(valid_before: U256, now: u64) -> u64 {
    let buffer = U256::from(crate::x402::exact::VALID_BEFORE_BUFFER_SECS);
    let last = valid_before.saturating_sub(buffer);
    u64::try_from(last).map_or(now, |last| last.min(now))
}

/// Whether the facilitator API may settle the authorization `nonce` of a payer whose holds are `holds`, at
/// `now`: not while an invoice's payment holds it (`verify` passed for that invoice and its order may be on
/// its way: the invoice's own settlement must be the one that executes it, or that invoice would be withdrawn
/// while its money moved).
pub fn api_may_settle(holds: &crate::hold::Holds, nonce: B256, now: u64) -> bool {
    let nonce = nonce.to_string();
    !holds.held.iter().any(|h| h.nonce == nonce && h.until > now)
}

/// Whether the payer of `record` may repeat it for `invoice`: a claim made for one invoice never pays another.
pub fn same_invoice(record: &Record, invoice: Option<&str>) -> bool {
    record.invoice.as_deref() == invoice
}

#[cfg(test)]
mod tests {
    use alloy_primitives::U256;

    use super::*;
    use crate::evm::{Eip1559Tx, SigningKey, sign_eip1559};

    const KEY: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";

    /// One transaction of ours at `nonce` with these fees: the same call whatever the fees.
    fn signed_with(nonce: u64, tip: u128, max_fee: u128) -> SignedTx {
        let tx = Eip1559Tx {
            chain_id: crate::chain::ChainId(31337),
            nonce,
            max_priority_fee_per_gas: tip,
            max_fee_per_gas: max_fee,
            gas_limit: 100_000,
            to: Address::repeat_byte(1),
            value: U256::ZERO,
            input: vec![1, 2, 3].into(),
        };
        sign_eip1559(&tx, &SigningKey::from_hex(KEY).unwrap()).unwrap()
    }

    fn signed(nonce: u64) -> SignedTx {
        signed_with(nonce, 1, 2)
    }

    #[test]
    fn only_a_sent_settlement_of_an_invoice_owns_what_executes_its_authorization() {
        let of = |invoice: Option<&str>, status| Record {
            invoice: invoice.map(str::to_owned),
            status,
            ..claimed(1)
        };
        assert!(of(Some("inv"), Status::Submitted).owns_executions());
        assert!(of(Some("inv"), Status::Confirmed).owns_executions());
        assert!(!of(Some("inv"), Status::Claimed).owns_executions());
        assert!(!of(Some("inv"), Status::Failed).owns_executions());
        assert!(!of(None, Status::Submitted).owns_executions());
    }

    fn claimed(now: u64) -> Record {
        Record::claimed(
            "eip155:31337",
            Address::repeat_byte(9),
            "x402/nonce/a".into(),
            "h1".into(),
            Some("inv_1"),
            now,
        )
    }

    /// A settle request may have a submitted record's outcome only if the recorded transaction executes its very
    /// authorization: the same nonce signed for another recipient or amount does not (before, any request
    /// naming the nonce was answered from the record, a success included).
    #[test]
    fn only_the_authorization_a_record_executes_has_its_outcome() {
        use crate::x402::exact::{TransferAuthorization, transfer_with_authorization_calldata};
        let auth = TransferAuthorization {
            from: Address::repeat_byte(9),
            to: Address::repeat_byte(7),
            value: U256::from(420_000),
            valid_after: U256::ZERO,
            valid_before: U256::from(1_000),
            nonce: B256::repeat_byte(5),
        };
        let tx = Eip1559Tx {
            chain_id: crate::chain::ChainId(31337),
            nonce: 0,
            max_priority_fee_per_gas: 1,
            max_fee_per_gas: 2,
            gas_limit: 100_000,
            to: Address::repeat_byte(1),
            value: U256::ZERO,
            input: transfer_with_authorization_calldata(&auth, &[1; 65]).into(),
        };
        let tx = sign_eip1559(&tx, &SigningKey::from_hex(KEY).unwrap()).unwrap();
        let mut r = claimed(100);
        assert!(!r.settles(&auth), "nothing submitted yet");
        assert!(r.record_submitted("x402/nonce/a", "h1", &tx, None, 101));
        assert!(r.settles(&auth));
        let other = TransferAuthorization {
            to: Address::repeat_byte(8),
            value: U256::from(1_000_000),
            ..auth
        };
        assert!(!r.settles(&other));
        // Confirmed, it still names what it settled; failed, it settles nothing.
        let mut confirmed = r.clone();
        assert!(confirmed.finish("x402/nonce/a", Outcome::Confirmed(tx.hash), 102));
        assert!(confirmed.settles(&auth) && !confirmed.settles(&other));
        let mut failed = r.clone();
        assert!(failed.finish("x402/nonce/a", Outcome::Reverted(tx.hash), 102));
        assert!(!failed.settles(&auth));
        // A record whose transaction is not a settlement settles nothing.
        let mut r = claimed(100);
        assert!(r.record_submitted("x402/nonce/a", "h1", &signed(3), None, 101));
        assert!(!r.settles(&auth));
    }

    /// A record stored before successes were claimed apart reads as such (its success was reported when it was
    /// confirmed); one claimed now says it is, and round-trips.
    #[test]
    fn records_say_whether_their_success_is_claimed_apart() {
        let r = claimed(100);
        assert!(r.success_claimed_apart);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(serde_json::from_value::<Record>(json.clone()).unwrap(), r);
        let mut old = json;
        old.as_object_mut().unwrap().remove("success_claimed_apart");
        assert!(
            !serde_json::from_value::<Record>(old)
                .unwrap()
                .success_claimed_apart
        );
    }

    /// A late transfer's record is confirmed (a refund may be owed against it) but pays no invoice; records from
    /// before read as not late.
    #[test]
    fn a_transfer_notes_what_it_moved_when_it_fits() {
        let r = claimed(1).with_paid_amount(Some(U256::from(5_250_000u64)));
        assert_eq!(r.paid_amount, Some(UsdcAmount::from_micros(5_250_000)));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["paid_amount"], "5.25");
        let back: Record = serde_json::from_value(json).unwrap();
        assert_eq!(back, r);
        assert_eq!(
            claimed(1).with_paid_amount(Some(U256::MAX)).paid_amount,
            None
        );
        assert_eq!(claimed(1).with_paid_amount(None).paid_amount, None);
        let old = serde_json::to_value(claimed(1)).unwrap();
        assert!(old.get("paid_amount").is_none(), "{old}");
    }

    #[test]
    fn a_late_transfer_is_confirmed_but_pays_nothing() {
        let mut r = claimed(100);
        assert!(!r.pays_invoice(), "claimed");
        r.status = Status::Confirmed;
        assert!(r.pays_invoice());
        let json = serde_json::to_value(&r).unwrap();
        assert!(json.get("late_transfer").is_none(), "{json}");
        r.late_transfer = true;
        assert!(!r.pays_invoice());
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(serde_json::from_value::<Record>(json).unwrap(), r);
    }

    /// Short or late, as recorded; a record from before the flag, by the amount alone (the rule it was first
    /// answered by), so its resend gets the same answer.
    #[test]
    fn a_transfer_that_pays_nothing_is_short_or_late_as_recorded() {
        let amount = UsdcAmount::from_micros(420_000);
        let mut r = claimed(100).with_paid_amount(Some(U256::from(400_000u64)));
        r.late_transfer = true;
        assert!(
            r.is_short_transfer(amount),
            "before the flag: by the amount"
        );
        r.short_transfer = Some(false);
        assert!(!r.is_short_transfer(amount), "recorded late, though short");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["short_transfer"], false, "{json}");
        r.short_transfer = Some(true);
        assert!(r.is_short_transfer(amount));
        let old = claimed(100).with_paid_amount(Some(U256::from(500_000u64)));
        assert!(!old.is_short_transfer(amount));
    }

    #[test]
    fn a_claim_is_signed_once_by_its_holder_then_finished_once() {
        let mut r = claimed(100);
        let tx = signed(4);
        assert!(!r.record_submitted("x402/nonce/a", "intruder", &tx, None, 101));
        assert!(!r.record_submitted("x402/nonce/b", "h1", &tx, None, 101));
        assert!(r.record_submitted("x402/nonce/a", "h1", &tx, None, 101));
        assert_eq!(r.status, Status::Submitted);
        assert!(
            !r.record_submitted("x402/nonce/a", "h1", &signed(5), None, 102),
            "never a second transaction"
        );
        let ours = r.submitted_tx().unwrap();
        assert_eq!((ours.hash, ours.nonce, ours.recorded_at), (tx.hash, 4, 101));
        assert_eq!(replay(&r, 500), Replay::Reconcile(tx.hash));
        assert!(r.finish("x402/nonce/a", Outcome::Confirmed(tx.hash), 103));
        assert!(
            !r.finish("x402/nonce/a", Outcome::Reverted(tx.hash), 104),
            "terminal"
        );
        assert_eq!(replay(&r, 105), Replay::Settled(tx.hash.to_string()));
    }

    #[test]
    fn a_pending_outcome_is_not_an_ending_and_failures_say_why() {
        let mut r = claimed(0);
        let tx = signed(0);
        r.record_submitted("x402/nonce/a", "h1", &tx, None, 1);
        assert!(!r.finish("x402/nonce/a", Outcome::Pending(tx.hash), 2));
        assert!(r.finish("x402/nonce/a", Outcome::Dropped(tx.hash), 3));
        assert_eq!(
            replay(&r, 4),
            Replay::Failed(InvalidReason::TransactionFailed.as_str().into())
        );
        // Reported as recorded: a failure (another caller's drop or revert alike).
        assert_eq!(r.settled_outcome(tx.hash), Outcome::Reverted(tx.hash));
    }

    #[test]
    fn an_unproven_transfer_fails_with_the_references_reason() {
        let mut r = claimed(0);
        let tx = signed(0);
        r.record_submitted("x402/nonce/a", "h1", &tx, None, 1);
        assert!(r.finish("x402/nonce/a", Outcome::Unproven(tx.hash), 2));
        assert_eq!(r.status, Status::Failed);
        assert_eq!(
            replay(&r, 3),
            Replay::Failed("invalid_exact_evm_transfer_event_mismatch".into())
        );
        assert!(
            !r.finish("x402/nonce/a", Outcome::Confirmed(tx.hash), 4),
            "terminal"
        );
    }

    /// A confirmation by one of the record's own hashes claims it first (before, only the send claimed it, after
    /// the record: a request cancelled between the two confirmed later without a claim, and its refund found
    /// nothing taken).
    #[test]
    fn a_confirmation_by_our_own_hash_is_claimed_before_it_is_recorded() {
        let mut r = claimed(0);
        let first = signed_with(0, 1, 2);
        let bumped = signed_with(0, 2, 4);
        assert_eq!(
            r.to_claim_before("x402/nonce/a", Outcome::Confirmed(first.hash)),
            None,
            "nothing recorded yet"
        );
        r.record_submitted("x402/nonce/a", "h1", &first, None, 1);
        r.record_replacement("x402/nonce/a", "h1", first.hash, &bumped, 2);
        for ours in [first.hash, bumped.hash] {
            assert_eq!(
                r.to_claim_before("x402/nonce/a", Outcome::Confirmed(ours)),
                Some(ours)
            );
        }
        let other = B256::repeat_byte(0xf1);
        assert_eq!(
            r.to_claim_before("x402/nonce/a", Outcome::Confirmed(other)),
            None
        );
        assert_eq!(
            r.to_claim_before("x402/nonce/b", Outcome::Confirmed(first.hash)),
            None
        );
        for failed in [
            Outcome::Reverted(first.hash),
            Outcome::Dropped(first.hash),
            Outcome::Pending(first.hash),
            Outcome::Unproven(first.hash),
        ] {
            assert_eq!(r.to_claim_before("x402/nonce/a", failed), None);
        }
    }

    /// A hash of ours whose `txhash/` key a tx-hash proof of another invoice holds (it presented the hash before
    /// a record left unclaimed by an older build was confirmed) does not confirm this settlement: before, the
    /// confirmation was recorded all the same, and one transfer paid two invoices.
    #[test]
    fn a_hash_claimed_by_another_settlement_does_not_confirm_ours() {
        let mut r = claimed(0);
        let tx = signed(0);
        r.record_submitted("x402/nonce/a", "h1", &tx, None, 1);
        assert!(r.holds_txhash(&r.clone()), "our own claim");
        let taken_over = Record {
            holder: "h2".into(),
            ..r.clone()
        };
        assert!(r.holds_txhash(&taken_over), "claimed by an earlier holder");
        let key = crate::store::keys::txhash(tx.hash);
        let proof = Record {
            claim: key.clone(),
            invoice: Some("inv_2".into()),
            ..Record::claimed(
                "eip155:31337",
                Address::repeat_byte(9),
                key,
                "p".into(),
                None,
                1,
            )
        };
        assert!(!r.holds_txhash(&proof));
    }

    #[test]
    fn someone_elses_confirmation_wins_over_a_drop() {
        let mut r = claimed(0);
        let tx = signed(0);
        r.record_submitted("x402/nonce/a", "h1", &tx, None, 1);
        r.finish("x402/nonce/a", Outcome::Confirmed(tx.hash), 2);
        assert_eq!(r.settled_outcome(tx.hash), Outcome::Confirmed(tx.hash));
        let live = claimed(0);
        assert_eq!(live.settled_outcome(tx.hash), Outcome::Pending(tx.hash));
    }

    /// A lagging node showed our own mined transaction as unmineable, and the token's logs name it: it is no
    /// front-run but our settlement, confirmed with or without an invoice (before, a facilitator API record
    /// stayed pending for an operator for ever).
    #[test]
    fn our_own_transaction_found_executing_the_authorization_confirms_any_settlement() {
        let mut r = claimed(0);
        let first = signed_with(0, 1, 2);
        let bumped = signed_with(0, 2, 4);
        r.record_submitted("x402/nonce/a", "h1", &first, None, 1);
        assert!(r.record_replacement("x402/nonce/a", "h1", first.hash, &bumped, 2));
        let api = Record {
            invoice: None,
            ..r.clone()
        };
        for record in [&r, &api] {
            for ours in [first.hash, bumped.hash] {
                let used = UsedElsewhere::Executed {
                    tx: ours,
                    pays: true,
                };
                assert_eq!(
                    front_run(record, Outcome::Dropped(bumped.hash), used),
                    Outcome::Confirmed(ours)
                );
            }
        }
        // Another facilitator's transaction still leaves the API's settlement pending.
        let other = UsedElsewhere::Executed {
            tx: B256::repeat_byte(0xf1),
            pays: true,
        };
        assert_eq!(
            front_run(&api, Outcome::Dropped(bumped.hash), other),
            Outcome::Pending(bumped.hash)
        );
    }

    #[test]
    fn a_front_run_that_moved_the_money_confirms_an_invoice_by_its_transaction() {
        let mut r = claimed(0);
        let tx = signed(0);
        r.record_submitted("x402/nonce/a", "h1", &tx, None, 1);
        let other = B256::repeat_byte(0xf1);
        let executed = |pays| UsedElsewhere::Executed { tx: other, pays };
        for failed in [Outcome::Reverted(tx.hash), Outcome::Dropped(tx.hash)] {
            assert_eq!(
                front_run(&r, failed, executed(true)),
                Outcome::Confirmed(other)
            );
            // Other money under the same nonce, or a cancel: this payment's money can never move.
            assert_eq!(front_run(&r, failed, executed(false)), failed);
            assert_eq!(front_run(&r, failed, UsedElsewhere::Canceled), failed);
            assert_eq!(
                front_run(&r, failed, UsedElsewhere::Unknown),
                Outcome::Pending(tx.hash)
            );
        }
        // Only failures are looked at again.
        assert_eq!(
            front_run(&r, Outcome::Confirmed(tx.hash), executed(true)),
            Outcome::Confirmed(tx.hash)
        );
        // The facilitator API's settlement: another facilitator's success is not ours to report.
        let api = Record {
            invoice: None,
            ..r.clone()
        };
        assert_eq!(
            front_run(&api, Outcome::Reverted(tx.hash), executed(true)),
            Outcome::Pending(tx.hash)
        );
        assert_eq!(
            front_run(&api, Outcome::Reverted(tx.hash), UsedElsewhere::Canceled),
            Outcome::Reverted(tx.hash)
        );

        // Confirmed by the other transaction: it is what the payment reports, ours stays recorded.
        assert!(r.finish("x402/nonce/a", Outcome::Confirmed(other), 2));
        assert_eq!(r.status, Status::Confirmed);
        assert_eq!(r.executed_by.as_deref(), Some(other.to_string().as_str()));
        assert_eq!(r.tx_hash(), Some(tx.hash));
        assert_eq!(r.settled_hash(), Some(other));
        assert_eq!(replay(&r, 3), Replay::Settled(other.to_string()));
        assert_eq!(r.settled_outcome(tx.hash), Outcome::Confirmed(other));
        assert!(r.owns_executions());
        // Stored and read back.
        let back: Record = serde_json::from_value(serde_json::to_value(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        // Confirmed by our own transaction: nothing else recorded.
        let mut own = claimed(0);
        own.record_submitted("x402/nonce/a", "h1", &tx, None, 1);
        assert!(own.finish("x402/nonce/a", Outcome::Confirmed(tx.hash), 2));
        assert_eq!(own.executed_by, None);
        assert_eq!(own.settled_hash(), Some(tx.hash));
    }

    /// An authorization executed before our settlement was ever sent (its gas estimate reverted): decided like
    /// a front-run while the claim is held, never refused while its money may have moved.
    #[test]
    fn an_authorization_used_before_our_settlement_was_sent_is_decided_like_a_front_run() {
        let r = claimed(0);
        let other = B256::repeat_byte(0xf1);
        let executed = |pays| UsedElsewhere::Executed { tx: other, pays };
        assert_eq!(
            used_before_sent(&r, executed(true)),
            UsedBeforeSent::Confirmed(other)
        );
        assert_eq!(
            used_before_sent(&r, executed(false)),
            UsedBeforeSent::Refused
        );
        assert_eq!(
            used_before_sent(&r, UsedElsewhere::Canceled),
            UsedBeforeSent::Refused
        );
        assert_eq!(
            used_before_sent(&r, UsedElsewhere::Unknown),
            UsedBeforeSent::Pending
        );
        let api = Record {
            invoice: None,
            ..r.clone()
        };
        assert_eq!(
            used_before_sent(&api, executed(true)),
            UsedBeforeSent::Pending
        );
        // Confirmed on the claimed record: the other transaction is what it reports.
        let mut r = r;
        assert!(r.finish("x402/nonce/a", Outcome::Confirmed(other), 1));
        assert_eq!(r.status, Status::Confirmed);
        assert_eq!(r.settled_hash(), Some(other));
        assert_eq!(replay(&r, 2), Replay::Settled(other.to_string()));
    }

    #[test]
    fn the_facilitator_api_may_not_settle_an_authorization_an_invoice_holds() {
        use crate::hold::{Hold, Holds};
        let nonce = B256::repeat_byte(3);
        let mut holds = Holds::default();
        assert!(api_may_settle(&holds, nonce, 100));
        holds
            .held
            .push(Hold::new(nonce, "inv_1", U256::from(5), 1_000, 100));
        assert!(!api_may_settle(&holds, nonce, 100));
        assert!(api_may_settle(&holds, B256::repeat_byte(4), 100));
        // A lapsed hold holds nothing.
        assert!(api_may_settle(&holds, nonce, 400));
    }

    #[test]
    fn a_front_run_is_searched_for_from_just_before_our_transaction_was_prepared() {
        let mut r = claimed(0);
        r.record_submitted("x402/nonce/a", "h1", &signed(0), Some(5_000), 1);
        assert_eq!(r.sent_at_block, Some(5_000));
        // However late the replay: from our transaction, over at most the span.
        let from = 5_000 - FRONT_RUN_MARGIN_BLOCKS;
        assert_eq!(
            front_run_search(&r, 900_000),
            (from, from + FRONT_RUN_MAX_SPAN_BLOCKS)
        );
        assert_eq!(
            front_run_search(&r, 5_000),
            (5_000 - FRONT_RUN_MARGIN_BLOCKS, 5_000)
        );
        // A node behind the block we prepared at: never an inverted range.
        assert_eq!(front_run_search(&r, 10), (10, 10));
        // Records from before the block was kept: a fixed window.
        r.sent_at_block = None;
        assert_eq!(
            front_run_search(&r, 5_000),
            (5_000 - FRONT_RUN_LOOKBACK_BLOCKS, 5_000)
        );
        assert_eq!(front_run_search(&r, 3), (0, 3));
        // Stored, and absent from records without it.
        let v = serde_json::to_value(claimed(0)).unwrap();
        assert!(v.get("sent_at_block").is_none());
    }

    #[test]
    fn someone_elses_outcome_is_reported_as_recorded() {
        let tx = signed(0);
        let finished = |outcome| {
            let mut r = claimed(0);
            r.record_submitted("x402/nonce/a", "h1", &tx, None, 1);
            assert!(r.finish("x402/nonce/a", outcome, 2));
            r.settled_outcome(tx.hash)
        };
        assert_eq!(
            finished(Outcome::Confirmed(tx.hash)),
            Outcome::Confirmed(tx.hash)
        );
        assert_eq!(
            finished(Outcome::Dropped(tx.hash)),
            Outcome::Reverted(tx.hash)
        );
        assert_eq!(
            finished(Outcome::Unproven(tx.hash)),
            Outcome::Unproven(tx.hash)
        );
        let other = B256::repeat_byte(0xf1);
        assert_eq!(
            finished(Outcome::Confirmed(other)),
            Outcome::Confirmed(other)
        );
    }

    #[test]
    fn a_quiet_claim_is_taken_over_after_the_lease_and_a_live_one_is_left() {
        let mut r = claimed(1_000);
        assert_eq!(replay(&r, 1_000 + CLAIM_LEASE_SECS - 1), Replay::InProgress);
        assert!(!r.take_over("x402/nonce/a", "h2", 1_000 + CLAIM_LEASE_SECS - 1));
        assert_eq!(replay(&r, 1_000 + CLAIM_LEASE_SECS), Replay::TakeOver);
        assert!(
            !r.take_over("x402/nonce/z", "h2", 1_000 + CLAIM_LEASE_SECS),
            "not its claim"
        );
        assert!(r.take_over("x402/nonce/a", "h2", 1_000 + CLAIM_LEASE_SECS));
        assert_eq!(r.holder, "h2");
        // Still re-checked as of its first verification (a review found a takeover's later time refusing the
        // same payment sent again, past its `validBefore`, as another payment), its lease renewed.
        assert_eq!(r.claimed_at, 1_000);
        assert_eq!(
            replay(&r, 1_000 + 2 * CLAIM_LEASE_SECS - 1),
            Replay::InProgress
        );
        // The old holder can no longer sign.
        assert!(!r.record_submitted("x402/nonce/a", "h1", &signed(0), None, 2_000));
        assert!(r.record_submitted("x402/nonce/a", "h2", &signed(0), None, 2_000));
        // A submitted record is never taken over, however old.
        assert!(!r.take_over("x402/nonce/a", "h3", 1_000_000));
    }

    #[test]
    fn a_claim_for_one_invoice_never_pays_another() {
        let r = claimed(0);
        assert!(same_invoice(&r, Some("inv_1")));
        assert!(!same_invoice(&r, Some("inv_2")));
        assert!(!same_invoice(&r, None));
    }

    #[test]
    fn a_submitted_record_without_a_hash_is_corrupt_not_resent() {
        let mut r = claimed(0);
        r.status = Status::Submitted;
        assert_eq!(replay(&r, 1), Replay::Corrupt);
        assert!(r.submitted_tx().is_none());
    }

    #[test]
    fn stored_shape_is_flat_and_stable() {
        let mut r = claimed(7);
        let tx = signed(3);
        r.record_submitted("x402/nonce/a", "h1", &tx, None, 8);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["status"], "submitted");
        assert_eq!(v["transaction"], tx.hash.to_string());
        assert_eq!(v["signer_nonce"], 3);
        assert_eq!(v["invoice"], "inv_1");
        assert_eq!(serde_json::from_value::<Record>(v).unwrap(), r);
        // Bytes that do not hash to the recorded hash are not "ours" (never re-sent).
        let mut bad = r.sent.clone();
        bad.raw_transaction = Some("0x00".into());
        assert!(bad.our_tx(0).is_none());
        assert_eq!(SentTx::hash_only(tx.hash).hash(), Some(tx.hash));
    }

    /// `signed(nonce)` again with other fees: a replacement of it.
    fn bumped(nonce: u64, max_fee: u128) -> SignedTx {
        signed_with(nonce, 2, max_fee)
    }

    #[test]
    fn a_replacement_is_recorded_once_over_the_hash_it_replaces_and_keeps_every_hash() {
        let mut r = claimed(7);
        let (first, second, third) = (signed(3), bumped(3, 5), bumped(3, 9));
        // Only a submitted record is replaced.
        assert!(!r.record_replacement("x402/nonce/a", "h1", first.hash, &second, 8));
        assert!(r.record_submitted("x402/nonce/a", "h1", &first, Some(4), 8));
        assert_eq!(r.sent.hashes(), vec![first.hash]);
        // Another claim, another holder, a stale `previous`, another nonce, or the same bytes: refused.
        assert!(!r.record_replacement("x402/nonce/b", "h1", first.hash, &second, 9));
        assert!(!r.record_replacement("x402/nonce/a", "h2", first.hash, &second, 9));
        assert!(!r.record_replacement("x402/nonce/a", "h1", second.hash, &third, 9));
        assert!(!r.record_replacement("x402/nonce/a", "h1", first.hash, &bumped(4, 5), 9));
        assert!(!r.record_replacement("x402/nonce/a", "h1", first.hash, &first, 9));
        assert_eq!(r.sent, SentTx::signed(&first));
        assert!(r.record_replacement("x402/nonce/a", "h1", first.hash, &second, 70));
        // A second replay that read the same record loses the compare-and-swap.
        assert!(!r.record_replacement("x402/nonce/a", "h1", first.hash, &third, 71));
        assert!(r.record_replacement("x402/nonce/a", "h1", second.hash, &third, 140));
        assert_eq!(r.tx_hash(), Some(third.hash));
        assert_eq!(
            r.updated_at, 140,
            "the replacement's own wait starts when it is recorded"
        );
        assert_eq!(r.sent.hashes(), vec![third.hash, second.hash, first.hash]);
        assert!(r.sent.is_ours(first.hash) && !r.sent.is_ours(B256::repeat_byte(7)));
        let tx = r.submitted_tx().unwrap();
        assert_eq!((tx.hash, tx.nonce), (third.hash, 3));
        assert_eq!(tx.earlier, vec![second.hash, first.hash]);
        assert_eq!(tx.hashes(), r.sent.hashes());
        // Stored, and read back; the earlier hashes are kept in order.
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v["replaced"],
            serde_json::json!([first.hash.to_string(), second.hash.to_string()])
        );
        assert_eq!(serde_json::from_value::<Record>(v).unwrap(), r);
        // The original mined after all: the settlement is confirmed by it and reports it.
        assert!(r.finish("x402/nonce/a", Outcome::Confirmed(first.hash), 150));
        assert_eq!(r.settled_hash(), Some(first.hash));
        assert_eq!(replay(&r, 151), Replay::Settled(first.hash.to_string()));
    }

    #[test]
    fn records_from_before_replacements_read_with_none() {
        let mut r = claimed(7);
        r.record_submitted("x402/nonce/a", "h1", &signed(3), None, 8);
        let mut v = serde_json::to_value(&r).unwrap();
        assert!(v.get("replaced").is_none(), "absent while empty");
        v.as_object_mut().unwrap().remove("replaced");
        let back = serde_json::from_value::<Record>(v).unwrap();
        assert!(back.sent.replaced.is_empty());
        assert_eq!(back.submitted_tx().unwrap().earlier, Vec::<B256>::new());
    }

    #[test]
    fn an_earlier_hash_mined_becomes_the_recorded_one_without_bytes() {
        let (first, second) = (signed(3), bumped(3, 5));
        let mut sent = SentTx::signed(&first);
        assert!(sent.replace(first.hash, &second));
        let before = sent.clone();
        sent.mined_as(second.hash);
        sent.mined_as(B256::repeat_byte(7));
        assert_eq!(sent, before, "the recorded one, or not ours: unchanged");
        sent.mined_as(first.hash);
        assert_eq!(sent.hash(), Some(first.hash));
        assert_eq!(sent.raw_transaction, None);
        assert_eq!(sent.hashes(), vec![first.hash, second.hash]);
    }

    #[test]
    fn a_claim_made_after_use_searches_the_widest_window_back_from_the_head() {
        assert_eq!(used_claim_search(50_000), (40_001, 50_000));
        assert_eq!(used_claim_search(100), (0, 100));
        let (from, to) = used_claim_search(50_000);
        assert_eq!(to - from, FRONT_RUN_MAX_SPAN_BLOCKS);
    }

    #[test]
    fn a_claim_of_a_used_authorization_is_dated_inside_its_window() {
        // Before validBefore less the checks' 6 s buffer: now; after it: that last second; beyond u64: now.
        assert_eq!(used_claimed_at(U256::from(1_000u64), 900), 900);
        assert_eq!(used_claimed_at(U256::from(1_000u64), 5_000), 994);
        assert_eq!(used_claimed_at(U256::from(1_000u64), 994), 994);
        assert_eq!(used_claimed_at(U256::from(1_000u64), 996), 994);
        assert_eq!(used_claimed_at(U256::MAX, 42), 42);
        assert_eq!(used_claimed_at(U256::from(3u8), 42), 0);
    }

    #[test]
    fn a_failed_settlements_unused_authorization_is_final_only_once_it_can_no_longer_execute() {
        let before = Some(U256::from(1_000));
        // Our reverted or dropped transaction published it: until validBefore anyone may still execute it.
        assert!(may_still_execute(before, 999));
        assert!(
            !may_still_execute(before, 1_000),
            "block.timestamp < validBefore"
        );
        assert_eq!(unexecuted(before, Some(999), None), Unexecuted::Pending);
        assert_eq!(
            unexecuted(before, Some(999), Some(false)),
            Unexecuted::Pending
        );
        // Executed from our calldata meanwhile: decided by that, without waiting.
        assert_eq!(
            unexecuted(before, Some(999), Some(true)),
            Unexecuted::UsedMeanwhile
        );
        // Past it, the latest block's authorizationState is final.
        assert_eq!(
            unexecuted(before, Some(1_000), Some(false)),
            Unexecuted::Failed
        );
        assert_eq!(
            unexecuted(before, Some(5_000), Some(true)),
            Unexecuted::UsedMeanwhile
        );
        // Unreadable: pending.
        assert_eq!(unexecuted(before, None, Some(false)), Unexecuted::Pending);
        assert_eq!(unexecuted(before, Some(1_000), None), Unexecuted::Pending);
        // A record from before the signed bytes were kept: its authorization unknown, read as lapsed.
        assert!(!may_still_execute(None, 0));
        assert_eq!(unexecuted(None, Some(0), Some(false)), Unexecuted::Failed);
        // A huge validBefore never lapses.
        assert!(may_still_execute(Some(U256::MAX), u64::MAX));
    }
}
