//! Refunds: a confirmed payment whose purchase then failed goes back to its payer as one USDC `transfer` from
//! the treasury key, sent at most once. This module holds the record and every transition; the verifier
//! loads, calls a method here inside a versioned-cell update, and writes what it returns.
//!
//! A refund's life: `owed` → `submitted` (claimed by a holder token; then the hash and the signed bytes are
//! recorded before the broadcast) → `paid`. A reverted transfer (the treasury lacks USDC or gas) goes back to
//! `owed` with `last_error` and `attempts + 1`: no money moved, so a later run may send a new transaction. A
//! send that failed before the broadcast goes back to `owed` too. A `submitted` refund with a hash is only
//! ever reconciled against that hash and the earlier ones of its nonce (a transfer the base fee outgrew is
//! replaced with higher fees, recorded before it is sent: [`Refund::record_replacement`], kernel `evm::bump`;
//! a receipt of any of them is the refund's); one without a hash is a claim in flight, taken over once it went
//! quiet for [`CLAIM_LEASE_SECS`] (it recorded no transaction, so none of it can be out there; a treasury nonce
//! it reserved before it died is released as an orphan by a later send: `NonceState::orphans`).
//!
//! A transaction the node lost whose treasury nonce was used by another one can never be mined; the refund goes
//! back to `owed` only when a run at least [`CONFIRM_UNMINEABLE_SECS`] after the first sighting still sees it
//! so ([`Refund::mark_unmineable`]): a plain `transfer` leaves no on-chain marker to read at a fixed block,
//! and a lagging node behind a load balancer could otherwise hide a mined refund and have it paid twice. Nor
//! on that alone: a node with a pruned transaction index answers "unknown" for a mined transaction as it does
//! for a lost one, so before owing again the token's logs are searched for the transfer itself (treasury to
//! payer, the refund's amount) from the block the transfer was prepared at ([`Refund::transfer_search`],
//! [`transfer_logged`]); found, or not searchable, the refund stays `submitted` for an operator.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::evm::{SignedTx, TransactionReceipt};
use crate::ledger::EntryFields;
use crate::money::UsdcAmount;
pub use crate::settlement::CLAIM_LEASE_SECS;
use crate::settlement::{OurTx, SentTx};

/// How long a refund transaction must keep looking unmineable before the refund is owed again.
pub const CONFIRM_UNMINEABLE_SECS: u64 = 120;
/// The most refunds one run pays.
pub const MAX_REFUNDS_PER_RUN: usize = 20;
/// The longest `reason` kept (it lands in the ledger).
pub const MAX_REASON_CHARS: usize = 500;

/// Where a refund is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefundStatus {
    /// Owed; nothing in flight.
    Owed,
    /// Claimed by a run; once `transaction` is set, signed and (possibly) broadcast.
    Submitted,
    /// Mined with status 1: the money is back with the payer.
    Paid,
}

/// One refund, as stored under `refund/<invoice>` and returned by `owe-refund`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refund {
    /// The invoice whose payment is refunded.
    pub invoice: String,
    /// Who gets the money back, checksummed.
    pub payer: String,
    /// Atomic USDC units.
    pub amount: String,
    /// CAIP-2 network the payment moved on, and the refund with it.
    pub network: String,
    /// The network's USDC contract.
    pub asset: String,
    /// Why the refund is owed.
    pub reason: String,
    /// Status.
    pub status: RefundStatus,
    /// When it became owed (unix seconds).
    pub created_at: u64,
    /// The refund transaction, once signed by the treasury (cleared again if it reverted or never left).
    #[serde(flatten)]
    pub sent: SentTx,
    /// Refund transactions that reverted or would have (no money moved).
    #[serde(default)]
    pub attempts: u32,
    /// Why the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Who drives the refund while it is `submitted` (a random token per attempt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    /// When a run first saw `transaction` unmineable (see [`CONFIRM_UNMINEABLE_SECS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unmineable_since: Option<u64>,
    /// The chain's head block when `transaction` was prepared (if read): where the search for its transfer
    /// starts ([`Refund::transfer_search`]). Absent on records from before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at_block: Option<u64>,
    /// Last change of status or transaction (unix seconds): for a `submitted` refund with a transaction, when
    /// it was recorded.
    pub updated_at: u64,
    /// The payment's transaction this refund returns (`0x…`, lowercase): refunds are once per invoice, and an
    /// invoice paid twice (a late transfer, then one in time) must not answer one payment with the other's
    /// refund ([`Refund::returns_other`]). Absent on records from before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment: Option<String>,
    /// The transaction that moved the payment's money when it is not `payment` (an `exact` settlement
    /// front-run, named by its own transaction by an earlier build): what [`Refund::to_check`] reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_by: Option<String>,
    /// When the payment was claimed here (unix seconds): a refund owed more than [`REORG_HORIZON_SECS`] later
    /// does not read its payment again. Absent on records from before (then it is not read, as before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paid_at: Option<u64>,
}

/// How long after a payment was claimed a reorganisation may still take it: a refund owed later (a terminate's
/// unused data, months on) does not read the payment's receipt again, which a node may have pruned the lookup
/// of (and would then hold the refund forever). One owed sooner is read before every send, however long it
/// waits: a payment a reorganisation took is never paid back.
pub const REORG_HORIZON_SECS: u64 = 86_400;

/// How long after a refund's event (owed: its `created_at`; paid: its `updated_at`) a repeat of that event
/// may be logged: by then the request that recorded it has logged it or stopped for good (a payment logs a
/// refund it owes right after owing it, well within a [`crate::paid::LEASE_SECS`] lease of its own; a refund run
/// within its settlement wait), so a repeat never races the original append and the ledger's repeat check
/// (`crate::ledger::not_yet_logged`) sees what that one logged.
pub const RELOG_AFTER_SECS: u64 = crate::paid::LEASE_SECS;

/// How old an unpaid refund found off the queue must be before a repeat that queues it relogs its event at
/// once ([`Refund::relog_on_repeat`]): its creator queues it right after recording it, so within these seconds
/// it may still be on its way to do so (and to log the event itself).
pub const RELOG_REQUEUED_AFTER_SECS: u64 = 5;

impl Refund {
    /// Whether a repeat of this refund's latest event (`refund_paid` once paid, else `refund_owed`) may be
    /// logged at `now` ([`RELOG_AFTER_SECS`]).
    pub fn relog_due(&self, now: u64) -> bool {
        let at = if self.status == RefundStatus::Paid {
            self.updated_at
        } else {
            self.created_at
        };
        now >= at.saturating_add(RELOG_AFTER_SECS)
    }

    /// Whether a repeat `owe-refund` at `now` answers `relog` (log this refund's `refund_owed` again, as a
    /// repeat the ledger keeps once): once [`Refund::relog_due`], or sooner when the repeat found the unpaid
    /// refund missing from the queue and put it there (`requeued`), once it is [`RELOG_REQUEUED_AFTER_SECS`]
    /// old. Only its creator queues a refund, right after recording it and before answering with its event; a
    /// refund still not on the queue after that is one whose creator stopped (or failed) in between and never
    /// answered, so its event reached no ledger, and a repeat that waited for [`RELOG_AFTER_SECS`] would leave
    /// it unlogged for good when no later repeat comes. A younger one's creator may still be on its way: a
    /// relog then could land beside the creator's own (unchecked) append.
    pub fn relog_on_repeat(&self, now: u64, requeued: bool) -> bool {
        let stopped = now >= self.created_at.saturating_add(RELOG_REQUEUED_AFTER_SECS);
        (requeued && stopped && self.status != RefundStatus::Paid) || self.relog_due(now)
    }
}

/// What a run may do with a refund it found on the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Paid already: drop it from the queue.
    Gone,
    /// Broadcast before: reconcile against its hash.
    FollowUp(alloy_primitives::B256),
    /// Another run holds it and has not recorded a transaction yet.
    InFlight,
    /// Claim it and send a transfer.
    Send,
}

/// How an unmineable sighting changed the refund.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmineable {
    /// First sighting recorded; it stays submitted.
    Noted,
    /// Still within [`CONFIRM_UNMINEABLE_SECS`] of the first sighting, or due but its transfer not searched
    /// for; nothing changed.
    Waiting,
    /// Confirmed, and the token logged no such transfer: owed again (a new transfer may be sent).
    OwedAgain,
    /// Confirmed, but the token logged a transfer of its amount by another transaction, or the search could
    /// not be made: it stays submitted (money may have moved; an operator's case, or a later run's search).
    Held,
    /// The token logged its transfer by one of its own transactions: mined after all (a node with a pruned
    /// index knows neither the transaction nor its receipt), so it is paid, by that transaction.
    Paid,
    /// Not this transaction's refund any more.
    NotOurs,
}

/// What the token's logs show of a refund's transfer, searched before a refund whose transaction looks
/// unmineable is owed again (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferLogged {
    /// Not searched (the caller saw no need): nothing is decided on it.
    NotSearched,
    /// Searched over [`Refund::transfer_search`]'s blocks, by a node whose head covers them: no transfer of
    /// the refund's amount from the treasury to the payer ([`logged_verdict`]).
    Absent,
    /// Such a transfer, by this transaction.
    Found(alloy_primitives::B256),
    /// The search was refused, failed, or could not be made.
    Unknown,
}

/// How many blocks before [`Refund::sent_at_block`] the search for a refund's transfer starts (a node whose
/// `latest` lagged when the transfer was prepared).
pub const TRANSFER_SEARCH_MARGIN_BLOCKS: u64 = 64;

/// The most blocks one search for a refund's transfer spans, both ends included (node providers commonly cap
/// `eth_getLogs` at 10 000): a transfer prepared longer ago is not searched, and its refund stays for an
/// operator.
pub const TRANSFER_SEARCH_MAX_SPAN_BLOCKS: u64 = 10_000;

/// What a search for a refund's transfer up to block `to_block` says, from the transfer it `found` (if any,
/// [`transfer_logged`]) and the head of the node that answered (`node_head`, read in the same batch): no
/// transfer counts as [`TransferLogged::Absent`] only from a node that has every block searched; a lagging
/// node (one behind a load balancer that clamps the range to its own head) answers nothing for blocks it does
/// not have, which is [`TransferLogged::Unknown`].
pub fn logged_verdict(
    found: Option<alloy_primitives::B256>,
    node_head: u64,
    to_block: u64,
) -> TransferLogged {
    match found {
        Some(by) => TransferLogged::Found(by),
        None if node_head >= to_block => TransferLogged::Absent,
        None => TransferLogged::Unknown,
    }
}

impl Refund {
    /// A new owed refund.
    #[allow(
        clippy::too_many_arguments,
        reason = "every field is needed once, at creation"
    )]
    pub fn owed(
        invoice: &str,
        payer: &str,
        amount: UsdcAmount,
        network: &str,
        asset: &str,
        reason: &str,
        now: u64,
    ) -> Self {
        Self {
            invoice: invoice.to_owned(),
            payer: payer.to_owned(),
            amount: amount.micros().to_string(),
            network: network.to_owned(),
            asset: asset.to_owned(),
            reason: clean_reason(reason),
            status: RefundStatus::Owed,
            created_at: now,
            sent: SentTx::default(),
            attempts: 0,
            last_error: None,
            holder: None,
            unmineable_since: None,
            sent_at_block: None,
            updated_at: now,
            payment: None,
            moved_by: None,
            paid_at: None,
        }
    }

    /// The same refund, returning the payment made in `transaction`.
    pub fn for_payment(mut self, transaction: alloy_primitives::B256) -> Self {
        self.payment = Some(format!("{transaction:#x}"));
        self
    }

    /// The same refund, noting the payment's settlement: the transaction that moved its money (`moved_by`, when
    /// it is not the named payment) and when the payment was claimed.
    pub fn settled_by(mut self, moved_by: Option<alloy_primitives::B256>, paid_at: u64) -> Self {
        let named = self.payment.as_deref();
        self.moved_by = moved_by
            .map(|h| format!("{h:#x}"))
            .filter(|h| Some(h.as_str()) != named);
        self.paid_at = Some(paid_at);
        self
    }

    /// The transaction whose receipt must still stand before this refund is sent ([`payment_stands`]): the one
    /// that moved the payment's money; none when the refund was owed more than [`REORG_HORIZON_SECS`] after
    /// the payment was claimed, or for records from before that say neither when nor which.
    pub fn to_check(&self) -> Option<alloy_primitives::B256> {
        let at = self.paid_at?;
        if self.created_at >= at.saturating_add(REORG_HORIZON_SECS) {
            return None;
        }
        self.moved_by
            .as_deref()
            .or(self.payment.as_deref())
            .and_then(|h| h.parse().ok())
    }

    /// Whether this refund returns a payment other than `transaction` (records from before name none: no).
    pub fn returns_other(&self, transaction: alloy_primitives::B256) -> bool {
        self.payment
            .as_deref()
            .is_some_and(|p| p.parse::<alloy_primitives::B256>().ok() != Some(transaction))
    }

    /// The recorded transaction hash.
    pub fn tx_hash(&self) -> Option<alloy_primitives::B256> {
        self.sent.hash()
    }

    /// The transaction of a `submitted` refund, as signed.
    pub fn submitted_tx(&self) -> Option<OurTx> {
        if self.status != RefundStatus::Submitted {
            return None;
        }
        self.sent.our_tx(self.updated_at)
    }

    /// A `submitted` refund whose holder went quiet before recording a transaction.
    pub fn is_abandoned(&self, now: u64) -> bool {
        self.status == RefundStatus::Submitted
            && self.sent.transaction.is_none()
            && self.updated_at.saturating_add(CLAIM_LEASE_SECS) <= now
    }

    /// What a run does with this refund at `now`.
    pub fn next(&self, now: u64) -> Next {
        match self.status {
            RefundStatus::Paid => Next::Gone,
            RefundStatus::Submitted => match self.tx_hash() {
                Some(hash) => Next::FollowUp(hash),
                None if self.is_abandoned(now) => Next::Send,
                None => Next::InFlight,
            },
            RefundStatus::Owed => Next::Send,
        }
    }

    /// Claim the refund for `holder`'s run: `false` (unchanged) unless it is owed or an abandoned claim.
    pub fn claim(&mut self, holder: &str, now: u64) -> bool {
        if self.status != RefundStatus::Owed && !self.is_abandoned(now) {
            return false;
        }
        self.status = RefundStatus::Submitted;
        self.holder = Some(holder.to_owned());
        self.sent = SentTx::default();
        self.sent_at_block = None;
        self.unmineable_since = None;
        self.updated_at = now;
        true
    }

    /// Record the signed transfer, prepared at the chain's head block `at_block` (if read), before its
    /// broadcast, if `holder` still holds the claim and nothing was recorded yet.
    pub fn record_submitted(
        &mut self,
        holder: &str,
        tx: &SignedTx,
        at_block: Option<u64>,
        now: u64,
    ) -> bool {
        if self.status != RefundStatus::Submitted
            || self.holder.as_deref() != Some(holder)
            || self.sent.transaction.is_some()
        {
            return false;
        }
        self.sent = SentTx::signed(tx);
        self.sent_at_block = at_block;
        self.unmineable_since = None;
        self.updated_at = now;
        true
    }

    /// Give a claim that never broadcast back (`attempted`: the transfer would have reverted, which counts as
    /// an attempt), if `holder` still holds it.
    pub fn release(&mut self, holder: &str, error: &str, attempted: bool, now: u64) -> bool {
        if self.status != RefundStatus::Submitted || self.holder.as_deref() != Some(holder) {
            return false;
        }
        self.back_to_owed(error, attempted, now);
        true
    }

    /// Record `tx`, a replacement of the recorded transfer `previous` with higher fees (kernel `evm::bump`),
    /// before it is sent, if the refund is `submitted`, held by `holder` and still names `previous` (a
    /// compare-and-swap on the hash); `false` (unchanged) otherwise, and the caller must not send `tx`.
    pub fn record_replacement(
        &mut self,
        holder: Option<&str>,
        previous: alloy_primitives::B256,
        tx: &SignedTx,
        now: u64,
    ) -> bool {
        if self.status != RefundStatus::Submitted
            || self.holder.as_deref() != holder
            || !self.sent.replace(previous, tx)
        {
            return false;
        }
        self.unmineable_since = None;
        self.updated_at = now;
        true
    }

    /// Whether `tx` is one of the refund's recorded hashes (the latest or one it replaced).
    fn is_ours(&self, tx: &str) -> bool {
        tx.parse().is_ok_and(|h| self.sent.is_ours(h))
    }

    /// The chain's answer for the recorded transaction `tx` (the latest or one it replaced: whichever was
    /// mined): paid (by `tx`, which the record then names), or (reverted) owed again. `false` (unchanged) if
    /// the refund no longer waits for that transaction.
    pub fn settle(&mut self, tx: &str, succeeded: bool, error: &str, now: u64) -> bool {
        if self.status != RefundStatus::Submitted || !self.is_ours(tx) {
            return false;
        }
        if succeeded {
            if let Ok(mined) = tx.parse() {
                self.sent.mined_as(mined);
            }
            self.status = RefundStatus::Paid;
            self.holder = None;
            self.last_error = None;
            self.updated_at = now;
        } else {
            self.back_to_owed(error, true, now);
        }
        true
    }

    /// Whether a sighting of its transaction `tx` as unmineable at `now` would confirm an earlier one: then
    /// the caller searches the token's logs for the transfer first ([`Refund::mark_unmineable`]).
    pub fn confirms_unmineable(&self, tx: &str, now: u64) -> bool {
        self.status == RefundStatus::Submitted
            && self.is_ours(tx)
            && self
                .unmineable_since
                .is_some_and(|since| since.saturating_add(CONFIRM_UNMINEABLE_SECS) <= now)
    }

    /// Its transaction `tx` looked unmineable at `now` (see the module docs); `logged`: what the token's logs
    /// show of its transfer (searched when [`Refund::confirms_unmineable`]). Owed again only when a confirming
    /// sighting's search found no transfer.
    pub fn mark_unmineable(
        &mut self,
        tx: &str,
        error: &str,
        now: u64,
        logged: TransferLogged,
    ) -> Unmineable {
        if self.status != RefundStatus::Submitted || !self.is_ours(tx) {
            return Unmineable::NotOurs;
        }
        if self.unmineable_since.is_none() {
            self.unmineable_since = Some(now);
            return Unmineable::Noted;
        }
        if !self.confirms_unmineable(tx, now) {
            return Unmineable::Waiting;
        }
        match logged {
            TransferLogged::Absent => {
                self.back_to_owed(error, true, now);
                Unmineable::OwedAgain
            }
            TransferLogged::Found(by) if self.sent.is_ours(by) => {
                if self.settle(&by.to_string(), true, "", now) {
                    Unmineable::Paid
                } else {
                    Unmineable::NotOurs
                }
            }
            TransferLogged::Found(_) | TransferLogged::Unknown => Unmineable::Held,
            TransferLogged::NotSearched => Unmineable::Waiting,
        }
    }

    /// The blocks `(from, to)` (both included) to search for this refund's transfer when its transaction
    /// looked unmineable by block `at` (if it was mined, it was by then): from just before the block it was
    /// prepared at; else why not (a record from before [`Refund::sent_at_block`], or more blocks than
    /// [`TRANSFER_SEARCH_MAX_SPAN_BLOCKS`]).
    pub fn transfer_search(&self, at: u64) -> Result<(u64, u64), String> {
        let Some(sent) = self.sent_at_block else {
            return Err("its record does not say at which block its transfer was prepared".into());
        };
        let from = sent.saturating_sub(TRANSFER_SEARCH_MARGIN_BLOCKS).min(at);
        if at - from >= TRANSFER_SEARCH_MAX_SPAN_BLOCKS {
            return Err(format!(
                "blocks {from} to {at} are more than one search of {TRANSFER_SEARCH_MAX_SPAN_BLOCKS} covers"
            ));
        }
        Ok((from, at))
    }

    /// The node knows `tx` after all (it had not caught up): forget an earlier unmineable sighting.
    pub fn seen_again(&mut self, tx: &str) -> bool {
        self.is_ours(tx) && self.unmineable_since.take().is_some()
    }

    /// Back to `owed` after an attempt that moved no money.
    fn back_to_owed(&mut self, error: &str, attempted: bool, now: u64) {
        self.status = RefundStatus::Owed;
        self.sent = SentTx::default();
        self.sent_at_block = None;
        self.holder = None;
        self.unmineable_since = None;
        self.last_error = Some(error.to_owned());
        if attempted {
            self.attempts = self.attempts.saturating_add(1);
        }
        self.updated_at = now;
    }

    /// The ledger fields of this refund's events.
    pub fn ledger_fields(&self) -> EntryFields {
        let mut fields = EntryFields::default()
            .invoice(self.invoice.clone())
            .payer(self.payer.clone())
            .network(self.network.clone());
        if let Ok(amount) = UsdcAmount::parse_atomic(&self.amount) {
            fields = fields.amount(amount);
        }
        fields
    }
}

/// The most a refund of a payment may return: what the payment moved (`paid`: a tx-hash transfer's amount,
/// which may exceed the invoice's) or, when that was not recorded (an `exact` authorization moves the
/// invoice's amount exactly; records from before), the invoice's `amount`.
pub fn amount_owed(paid: Option<UsdcAmount>, invoice: UsdcAmount) -> UsdcAmount {
    paid.unwrap_or(invoice)
}

/// The refund `requested` in atomic units (`None`: the whole payment, [`amount_owed`]), if it is 1 to the
/// whole payment; else what the bounds are.
pub fn amount_of(
    requested: Option<u64>,
    paid: Option<UsdcAmount>,
    invoice: UsdcAmount,
) -> Result<UsdcAmount, String> {
    let most = amount_owed(paid, invoice);
    let amount = requested.map_or(most, UsdcAmount::from_micros);
    if amount == UsdcAmount::ZERO || amount > most {
        let what = if paid.is_some() {
            "what the payment moved"
        } else {
            "the invoice's amount"
        };
        return Err(format!(
            "a refund is 1 to {} micro-USDC ({what})",
            most.micros()
        ));
    }
    Ok(amount)
}

/// What a refund's payment must still show when the refund is about to be sent: the token it moved, who paid
/// it (the refund's payer), and at least how much (the refund's amount).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaymentShows {
    /// The token contract (the refund's asset).
    pub token: alloy_primitives::Address,
    /// The payer the refund goes back to.
    pub payer: alloy_primitives::Address,
    /// The refund's amount: the payment moved at least this from the payer.
    pub amount: alloy_primitives::U256,
}

/// What `owe-refund` makes of the settlement of the payment it is asked to give back (found through the
/// payment's `txhash/` claim), before owing anything ([`settlement_paid`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettlementPaid {
    /// Confirmed: the money moved, and may be owed back.
    Yes,
    /// `submitted`: its transaction (this hash, the recorded one) may be mined already. A confirmation whose
    /// record could not be written leaves it so, the purchase delivered: the caller reconciles it against its
    /// receipt before deciding, and while that stays unsure answers `unavailable` (asked again), never a
    /// refusal its caller takes as final.
    Unsure(alloy_primitives::B256),
    /// `claimed` (nothing sent) or `failed` (nothing moved), or `submitted` without a hash (corrupt): nothing
    /// was paid.
    No,
}

/// [`SettlementPaid`] for `settlement`.
pub fn settlement_paid(settlement: &crate::settlement::Record) -> SettlementPaid {
    use crate::settlement::Status;
    match (settlement.status, settlement.tx_hash()) {
        (Status::Confirmed, _) => SettlementPaid::Yes,
        (Status::Submitted, Some(hash)) => SettlementPaid::Unsure(hash),
        _ => SettlementPaid::No,
    }
}

/// How long after its claim a `submitted` settlement that `owe-refund` cannot reconcile (its receipt shows no
/// outcome: [`SettlementPaid::Unsure`], still pending) is answered `unavailable`, to be asked again: 6 hours.
/// Its own transaction can only move money while the invoice's authorization is valid, minutes after the
/// claim (`x402::MAX_TIMEOUT_SECONDS`, checked against `validBefore`), and one waiting below the base fee is
/// replaced every minute (kernel `evm::bump`): a settlement still pending hours later waits for an operator (a
/// front-run whose transaction pays another invoice, logs that cannot be read, a replacement at its ceiling),
/// not for the chain. Hours leave a lagging node, an RPC outage or a fee spike time to pass; past them
/// `owe-refund` logs `OPERATOR:` and answers a conflict, final for its caller, rather than `unavailable` for
/// ever (a terminate's SIM never leaving the cleanup list, an SM-DP+ failure callback refused without end).
pub const UNSURE_SETTLEMENT_SECS: u64 = 6 * 3600;

/// Whether `owe-refund` gives up at `now` on `settlement` ([`SettlementPaid::Unsure`], its reconcile still
/// pending): [`UNSURE_SETTLEMENT_SECS`] after its claim it answers a conflict for an operator; before, it is
/// asked again.
pub fn unsure_for_good(settlement: &crate::settlement::Record, now: u64) -> bool {
    settlement.claimed_at.saturating_add(UNSURE_SETTLEMENT_SECS) <= now
}

/// Whether the payment a refund returns (its transaction `payment`) still stands when the refund is about to
/// be sent: mined with status 1, buried under `min_confirmations` at `head`, and its receipt's token
/// `Transfer` logs still moving at least the refund's amount from its payer (`receipt`: its receipt, if the
/// node knows it). A reorganisation since the refund was owed may have taken the payment or left it reverted,
/// re-mined it with its transfer failing inside a contract that swallows the failure (then nothing came in and
/// nothing goes back), or made it shallower (then the refund waits for it): the refund stays owed, and a later
/// run asks again. Else why not.
pub fn payment_stands(
    payment: alloy_primitives::B256,
    receipt: Option<&TransactionReceipt>,
    head: u64,
    min_confirmations: u64,
    shows: &PaymentShows,
) -> Result<(), String> {
    let Some(receipt) = receipt else {
        return Err(format!(
            "the payment {payment:#x} is not on chain now (a reorganisation took it?): the refund waits for it"
        ));
    };
    if !receipt.status {
        return Err(format!(
            "the payment {payment:#x} is reverted now (a reorganisation?): nothing came in, the refund waits"
        ));
    }
    let moved = crate::evm::receipt::find_erc20_transfers(receipt, shows.token)
        .iter()
        .filter(|t| t.from == shows.payer)
        .fold(alloy_primitives::U256::ZERO, |sum, t| {
            sum.saturating_add(t.value)
        });
    if moved < shows.amount {
        return Err(format!(
            "the payment {payment:#x} moves {moved} of the token from the payer now, less than the refund's {}: the refund waits",
            shows.amount
        ));
    }
    let have = receipt.confirmations(head);
    if have < min_confirmations {
        return Err(format!(
            "the payment {payment:#x} has {have} of its {min_confirmations} confirmations now: the refund waits for them"
        ));
    }
    Ok(())
}

/// The transaction of a token `Transfer` of exactly `amount` from `from` to `to` among `logs` (an
/// `eth_getLogs` answer for `token`), if any: a refund's transfer, mined, whatever the node says of the
/// transaction itself. A removed log (a reorganisation took it) is not one.
pub fn transfer_logged(
    logs: &[crate::evm::receipt::ChainLog],
    token: alloy_primitives::Address,
    from: alloy_primitives::Address,
    to: alloy_primitives::Address,
    amount: alloy_primitives::U256,
) -> Option<alloy_primitives::B256> {
    let topics = [
        crate::evm::receipt::TRANSFER_TOPIC,
        from.into_word(),
        to.into_word(),
    ];
    logs.iter()
        .find(|l| {
            !l.log.removed
                && l.log.address == token
                && l.log.topics == topics
                && l.log.data.len() == 32
                && alloy_primitives::U256::from_be_slice(&l.log.data) == amount
        })
        .map(|l| l.transaction_hash)
}

/// A reason as kept: trimmed, at most [`MAX_REASON_CHARS`] characters.
pub fn clean_reason(reason: &str) -> String {
    reason.trim().chars().take(MAX_REASON_CHARS).collect()
}

/// The queue with `id` at its end (unchanged if it is there).
pub fn enqueue(mut queue: Vec<String>, id: &str) -> Vec<String> {
    if !queue.iter().any(|i| i == id) {
        queue.push(id.to_owned());
    }
    queue
}

/// The first `limit` distinct ids of the queue (at most [`MAX_REFUNDS_PER_RUN`]).
pub fn batch(queue: &[String], limit: usize) -> Vec<String> {
    let mut seen = HashSet::new();
    queue
        .iter()
        .filter(|id| seen.insert(id.as_str()))
        .take(limit.min(MAX_REFUNDS_PER_RUN))
        .cloned()
        .collect()
}

/// The queue after a run: the `gone` ids dropped, the rest of the run's batch (`tried`) moved to the tail so
/// a refund that keeps failing does not starve the ones behind it; ids queued meanwhile keep their place.
pub fn requeue(queue: &[String], tried: &[String], gone: &[String]) -> Vec<String> {
    let present: HashSet<&str> = queue.iter().map(String::as_str).collect();
    let mut next: Vec<String> = queue
        .iter()
        .filter(|id| !gone.contains(id) && !tried.contains(id))
        .cloned()
        .collect();
    next.extend(
        tried
            .iter()
            .filter(|id| !gone.contains(id) && present.contains(id.as_str()))
            .cloned(),
    );
    next
}

#[cfg(test)]
mod tests {
    use alloy_primitives::{Address, B256, U256};

    use super::*;

    /// A transfer above the invoice's amount is owed back whole, not the invoice's amount (before, the excess
    /// of an overpaid invoice whose order failed, or of a late transfer, was kept).
    #[test]
    fn a_refund_returns_what_the_payment_moved() {
        let usdc = UsdcAmount::from_micros;
        assert_eq!(
            amount_owed(Some(usdc(7_000_000)), usdc(3_000_000)),
            usdc(7_000_000)
        );
        assert_eq!(amount_owed(None, usdc(3_000_000)), usdc(3_000_000));
        assert_eq!(
            amount_of(None, Some(usdc(7_000_000)), usdc(3_000_000)),
            Ok(usdc(7_000_000))
        );
        assert_eq!(amount_of(None, None, usdc(3_000_000)), Ok(usdc(3_000_000)));
        // A part: a terminated SIM's unused data.
        assert_eq!(
            amount_of(Some(2_500_000), None, usdc(3_000_000)),
            Ok(usdc(2_500_000))
        );
        assert_eq!(
            amount_of(Some(6_000_000), Some(usdc(7_000_000)), usdc(3_000_000)),
            Ok(usdc(6_000_000))
        );
        let too_much = amount_of(Some(3_000_001), None, usdc(3_000_000)).unwrap_err();
        assert!(
            too_much.contains("1 to 3000000 micro-USDC (the invoice's amount)"),
            "{too_much}"
        );
        let too_much =
            amount_of(Some(7_000_001), Some(usdc(7_000_000)), usdc(3_000_000)).unwrap_err();
        assert!(
            too_much.contains("1 to 7000000 micro-USDC (what the payment moved)"),
            "{too_much}"
        );
        assert!(amount_of(Some(0), None, usdc(3_000_000)).is_err());
    }

    /// A payment a reorganisation took, reverted or made shallower since its refund was owed is not refunded
    /// until it stands again (before, the refund job paid without looking).
    #[test]
    fn a_refund_waits_for_its_payment_to_stand() {
        use crate::evm::receipt::{Log, TRANSFER_TOPIC};
        let hash = alloy_primitives::B256::repeat_byte(3);
        let (token, payer, pay_to) = (
            Address::repeat_byte(0xaa),
            Address::repeat_byte(0xbb),
            Address::repeat_byte(0xcc),
        );
        let transfer = |from: Address, value: u64| Log {
            address: token,
            topics: vec![TRANSFER_TOPIC, from.into_word(), pay_to.into_word()],
            data: U256::from(value).to_be_bytes::<32>().to_vec().into(),
            removed: false,
        };
        let mined = |status, logs| TransactionReceipt {
            status,
            block_number: 100,
            transaction_hash: hash,
            from: payer,
            to: Some(token),
            logs,
        };
        let shows = PaymentShows {
            token,
            payer,
            amount: U256::from(5_000u64),
        };
        let paid = mined(true, vec![transfer(payer, 5_000)]);
        assert_eq!(payment_stands(hash, Some(&paid), 102, 3, &shows), Ok(()));
        assert_eq!(payment_stands(hash, Some(&paid), 100, 1, &shows), Ok(()));
        let gone = payment_stands(hash, None, 102, 1, &shows).unwrap_err();
        assert!(gone.contains("not on chain now"), "{gone}");
        assert!(gone.contains(&format!("{hash:#x}")), "{gone}");
        let reverted =
            payment_stands(hash, Some(&mined(false, vec![])), 102, 1, &shows).unwrap_err();
        assert!(reverted.contains("reverted now"), "{reverted}");
        let shallow = payment_stands(hash, Some(&paid), 101, 3, &shows).unwrap_err();
        assert!(
            shallow.contains("has 2 of its 3 confirmations"),
            "{shallow}"
        );
        // A node whose head lags the receipt's block counts none.
        assert!(payment_stands(hash, Some(&paid), 99, 1, &shows).is_err());
        // Mined again with status 1 but no transfer from the payer (a contract swallowed it), or less than the
        // refund, or from someone else, or of another token: nothing to give back.
        for logs in [
            vec![],
            vec![transfer(payer, 4_999)],
            vec![transfer(pay_to, 5_000)],
            vec![Log {
                address: Address::repeat_byte(0xdd),
                ..transfer(payer, 5_000)
            }],
        ] {
            let e = payment_stands(hash, Some(&mined(true, logs)), 102, 1, &shows).unwrap_err();
            assert!(e.contains("less than the refund's 5000"), "{e}");
        }
        // Two transfers from the payer add up.
        let split = mined(true, vec![transfer(payer, 2_000), transfer(payer, 3_000)]);
        assert_eq!(payment_stands(hash, Some(&split), 102, 1, &shows), Ok(()));
    }

    /// The receipt read again is the one that moved the money (an earlier build named a front-run settlement
    /// by its own reverted transaction), and only while a reorganisation could still take it: a node that
    /// pruned old lookups must not hold a terminate's refund forever.
    #[test]
    fn a_refund_reads_the_transaction_that_moved_its_money_while_a_reorg_could_take_it() {
        let t = |b: u8| alloy_primitives::B256::repeat_byte(b);
        let owed_at = |created_at: u64| {
            Refund::owed(
                "inv_a",
                "0xp",
                UsdcAmount::from_micros(5),
                "eip155:1",
                "0xa",
                "why",
                created_at,
            )
            .for_payment(t(1))
        };
        // Records from before: not read, as before.
        assert_eq!(owed_at(10).to_check(), None);
        // Owed soon after the payment: read before every send, however long the refund waits (a review found
        // that skipping the read a day on paid back a payment a reorganisation took).
        let soon = owed_at(150).settled_by(Some(t(1)), 100);
        assert_eq!(soon.moved_by, None);
        assert_eq!(soon.to_check(), Some(t(1)));
        let edge = owed_at(100 + REORG_HORIZON_SECS - 1).settled_by(Some(t(1)), 100);
        assert_eq!(edge.to_check(), Some(t(1)));
        // Owed long after it (a terminate's unused data): a node may have pruned the lookup; not read.
        let late = owed_at(100 + REORG_HORIZON_SECS).settled_by(Some(t(1)), 100);
        assert_eq!(late.to_check(), None);
        let front_run = owed_at(150).settled_by(Some(t(2)), 100);
        assert_eq!(front_run.moved_by, Some(format!("{:#x}", t(2))));
        assert_eq!(front_run.to_check(), Some(t(2)));
        // What `returns_other` compares is still the named payment.
        assert!(!front_run.returns_other(t(1)));
        let json = serde_json::to_value(&front_run).unwrap();
        let back: Refund = serde_json::from_value(json).unwrap();
        assert_eq!(back, front_run);
        let old = serde_json::to_value(owed_at(10)).unwrap();
        assert!(
            old.get("moved_by").is_none() && old.get("paid_at").is_none(),
            "{old}"
        );
    }

    #[test]
    fn a_refund_names_the_payment_it_returns() {
        let t = |b: u8| alloy_primitives::B256::repeat_byte(b);
        let r = Refund::owed(
            "inv_a",
            "0xp",
            UsdcAmount::from_micros(5),
            "eip155:1",
            "0xu",
            "why",
            1,
        );
        assert!(!r.returns_other(t(1)), "records from before name none");
        let r = r.for_payment(t(1));
        assert!(!r.returns_other(t(1)));
        assert!(r.returns_other(t(2)));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["payment"], format!("{:#x}", t(1)));
        assert_eq!(serde_json::from_value::<Refund>(json).unwrap(), r);
    }
    use crate::evm::{Eip1559Tx, SigningKey, sign_eip1559};

    fn refund() -> Refund {
        Refund::owed(
            "inv_1",
            "0xa0Ee7A142d267C1f36714E4a8F75612F20a79720",
            UsdcAmount::from_micros(420_000),
            "eip155:31337",
            "0x5FbDB2315678afecb367f032d93F642f64180aa3",
            "  activation failed  ",
            100,
        )
    }

    /// One transfer of ours at `nonce` with these fees: the same call whatever the fees.
    fn signed_with(nonce: u64, tip: u128, max_fee: u128) -> SignedTx {
        let tx = Eip1559Tx {
            chain_id: crate::chain::ChainId(31337),
            nonce,
            max_priority_fee_per_gas: tip,
            max_fee_per_gas: max_fee,
            gas_limit: 60_000,
            to: Address::repeat_byte(5),
            value: U256::ZERO,
            input: vec![9].into(),
        };
        let key = "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a";
        sign_eip1559(&tx, &SigningKey::from_hex(key).unwrap()).unwrap()
    }

    fn signed(nonce: u64) -> SignedTx {
        signed_with(nonce, 1, 2)
    }

    #[test]
    fn owed_then_claimed_sent_and_paid_once() {
        let mut r = refund();
        assert_eq!(r.reason, "activation failed");
        assert_eq!(r.next(100), Next::Send);
        assert!(r.claim("h1", 101));
        assert!(!r.claim("h2", 102), "a live claim is not taken");
        assert_eq!(r.next(102), Next::InFlight);
        let tx = signed(0);
        assert!(!r.record_submitted("h2", &tx, None, 103));
        assert!(r.record_submitted("h1", &tx, None, 103));
        assert!(
            !r.record_submitted("h1", &signed(1), None, 104),
            "one transaction per claim"
        );
        assert_eq!(r.next(104), Next::FollowUp(tx.hash));
        let hash = tx.hash.to_string();
        assert!(r.settle(&hash, true, "", 105));
        assert_eq!(r.status, RefundStatus::Paid);
        assert!(!r.settle(&hash, false, "late revert", 106), "paid is final");
        assert_eq!(r.next(107), Next::Gone);
    }

    /// `signed(nonce)` again with a higher fee cap: a replacement of it.
    fn bumped(nonce: u64) -> SignedTx {
        signed_with(nonce, 2, 5)
    }

    #[test]
    fn a_replaced_transfer_is_paid_by_whichever_of_its_hashes_is_mined() {
        let (first, second) = (signed(0), bumped(0));
        let mut r = refund();
        r.claim("h1", 101);
        assert!(
            !r.record_replacement(Some("h1"), first.hash, &second, 102),
            "nothing recorded yet"
        );
        assert!(r.record_submitted("h1", &first, None, 103));
        assert!(!r.record_replacement(Some("h2"), first.hash, &second, 170));
        assert!(!r.record_replacement(Some("h1"), second.hash, &second, 170));
        r.unmineable_since = Some(150);
        assert!(r.record_replacement(Some("h1"), first.hash, &second, 170));
        assert_eq!((r.updated_at, r.unmineable_since), (170, None));
        assert_eq!(r.next(171), Next::FollowUp(second.hash));
        assert_eq!(r.submitted_tx().unwrap().earlier, vec![first.hash]);
        // Not ours: unchanged.
        assert!(!r.settle(&B256::repeat_byte(3).to_string(), true, "", 172));
        // The original was mined: paid by it, and the record names it.
        let mut paid_by_first = r.clone();
        assert!(paid_by_first.settle(&first.hash.to_string(), true, "", 172));
        assert_eq!(paid_by_first.status, RefundStatus::Paid);
        assert_eq!(paid_by_first.tx_hash(), Some(first.hash));
        assert!(paid_by_first.is_ours(&second.hash.to_string()));
        // The replacement was mined.
        assert!(r.settle(&second.hash.to_string(), true, "", 172));
        assert_eq!(r.tx_hash(), Some(second.hash));
        // An earlier hash counts for the unmineable sighting too.
        let mut seen = refund();
        seen.claim("h1", 1);
        seen.record_submitted("h1", &first, None, 2);
        seen.record_replacement(Some("h1"), first.hash, &second, 70);
        assert_eq!(
            seen.mark_unmineable(
                &first.hash.to_string(),
                "x",
                80,
                TransferLogged::NotSearched
            ),
            Unmineable::Noted
        );
        assert!(seen.seen_again(&first.hash.to_string()));
    }

    #[test]
    fn a_revert_or_a_refused_send_owes_it_again() {
        let mut r = refund();
        r.claim("h1", 1);
        assert!(!r.release("h2", "x", true, 2), "only the holder releases");
        assert!(r.release("h1", "would revert", true, 2));
        assert_eq!((r.status, r.attempts), (RefundStatus::Owed, 1));
        r.claim("h2", 3);
        assert!(r.release("h2", "node down", false, 4));
        assert_eq!(
            r.attempts, 1,
            "a fault before the broadcast is not an attempt"
        );
        r.claim("h3", 5);
        let tx = signed(2);
        r.record_submitted("h3", &tx, None, 6);
        assert!(r.settle(&tx.hash.to_string(), false, "reverted", 7));
        assert_eq!((r.status, r.attempts), (RefundStatus::Owed, 2));
        assert_eq!(r.last_error.as_deref(), Some("reverted"));
        assert!(r.tx_hash().is_none());
    }

    #[test]
    fn an_abandoned_claim_without_a_transaction_is_taken_over() {
        let mut r = refund();
        r.claim("h1", 1_000);
        assert!(!r.is_abandoned(1_000 + CLAIM_LEASE_SECS - 1));
        assert_eq!(r.next(1_000 + CLAIM_LEASE_SECS), Next::Send);
        assert!(r.claim("h2", 1_000 + CLAIM_LEASE_SECS));
        assert_eq!(r.holder.as_deref(), Some("h2"));
        // With a transaction recorded it is only ever followed up.
        r.record_submitted("h2", &signed(0), None, 2_000);
        assert!(!r.claim("h3", 1_000_000));
    }

    #[test]
    fn unmineable_owes_again_only_after_a_second_sighting_later() {
        let mut r = refund();
        r.claim("h1", 0);
        let tx = signed(0);
        r.record_submitted("h1", &tx, Some(40), 1);
        let hash = tx.hash.to_string();
        let absent = TransferLogged::Absent;
        assert_eq!(
            r.mark_unmineable("0xother", "e", 10, absent),
            Unmineable::NotOurs
        );
        assert!(!r.confirms_unmineable(&hash, 10));
        assert_eq!(r.mark_unmineable(&hash, "e", 10, absent), Unmineable::Noted);
        assert!(!r.confirms_unmineable(&hash, 10 + CONFIRM_UNMINEABLE_SECS - 1));
        assert_eq!(
            r.mark_unmineable(&hash, "e", 10 + CONFIRM_UNMINEABLE_SECS - 1, absent),
            Unmineable::Waiting
        );
        // The node catches up and knows it after all.
        assert!(r.seen_again(&hash));
        assert_eq!(
            r.mark_unmineable(&hash, "e", 500, absent),
            Unmineable::Noted
        );
        assert!(r.confirms_unmineable(&hash, 500 + CONFIRM_UNMINEABLE_SECS));
        assert_eq!(
            r.mark_unmineable(&hash, "gone", 500 + CONFIRM_UNMINEABLE_SECS, absent),
            Unmineable::OwedAgain
        );
        assert_eq!((r.status, r.attempts), (RefundStatus::Owed, 1));
        assert_eq!(r.sent_at_block, None);
    }

    /// A node with a pruned transaction index answers "unknown" for a mined refund as for a lost one: a
    /// confirming sighting owes the refund again only when the token's logs show no transfer of it; a transfer
    /// found, or a search that could not be made, leaves it submitted (a review found it paid twice).
    #[test]
    fn an_unmineable_refund_whose_transfer_is_logged_stays_submitted() {
        let tx = signed(0);
        let hash = tx.hash.to_string();
        let mut r = refund();
        r.claim("h1", 0);
        r.record_submitted("h1", &tx, Some(5_000), 1);
        assert_eq!(r.sent_at_block, Some(5_000));
        r.mark_unmineable(&hash, "e", 10, TransferLogged::NotSearched);
        let due = 10 + CONFIRM_UNMINEABLE_SECS;
        for logged in [
            TransferLogged::Found(B256::repeat_byte(4)),
            TransferLogged::Unknown,
        ] {
            let mut held = r.clone();
            assert_eq!(
                held.mark_unmineable(&hash, "e", due, logged),
                Unmineable::Held
            );
            assert_eq!(held, r, "unchanged");
        }
        let mut unsearched = r.clone();
        assert_eq!(
            unsearched.mark_unmineable(&hash, "e", due, TransferLogged::NotSearched),
            Unmineable::Waiting
        );
        assert_eq!(unsearched, r);
        // Its own transaction logged the transfer: mined after all, so paid by it (before, held for an operator
        // for ever: the pruned node reads no receipt either).
        let mut mined = r.clone();
        assert_eq!(
            mined.mark_unmineable(&hash, "e", due, TransferLogged::Found(tx.hash)),
            Unmineable::Paid
        );
        assert_eq!(mined.status, RefundStatus::Paid);
        assert_eq!(mined.tx_hash(), Some(tx.hash));
        // Searched from just before the block it was prepared at up to the block that showed it unmineable.
        assert_eq!(
            r.transfer_search(5_100),
            Ok((5_000 - TRANSFER_SEARCH_MARGIN_BLOCKS, 5_100))
        );
        assert_eq!(r.transfer_search(4_900), Ok((4_900, 4_900)));
        // At most TRANSFER_SEARCH_MAX_SPAN_BLOCKS blocks, both ends counted.
        let far = 5_000 - TRANSFER_SEARCH_MARGIN_BLOCKS + TRANSFER_SEARCH_MAX_SPAN_BLOCKS - 1;
        assert!(r.transfer_search(far).is_ok());
        assert!(r.transfer_search(far + 1).is_err());
        let mut old = r.clone();
        old.sent_at_block = None;
        assert!(old.transfer_search(5_100).is_err(), "records from before");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["sent_at_block"], 5_000);
        assert_eq!(serde_json::from_value::<Refund>(json).unwrap(), r);
        // A claim taken over forgets the block with the transaction.
        r.back_to_owed("x", false, 2);
        assert!(r.claim("h2", 3));
        assert_eq!(r.sent_at_block, None);
    }

    /// Nothing found counts as no transfer only from a node whose head covers the search: a lagging node
    /// behind a load balancer answers nothing for blocks it does not have (a review found it paid twice).
    #[test]
    fn no_transfer_is_absent_only_from_a_node_that_has_every_block_searched() {
        let by = B256::repeat_byte(7);
        assert_eq!(logged_verdict(Some(by), 10, 20), TransferLogged::Found(by));
        assert_eq!(logged_verdict(None, 20, 20), TransferLogged::Absent);
        assert_eq!(logged_verdict(None, 25, 20), TransferLogged::Absent);
        assert_eq!(logged_verdict(None, 19, 20), TransferLogged::Unknown);
    }

    #[test]
    fn a_refund_transfer_is_found_among_the_tokens_logs() {
        use crate::evm::receipt::{ChainLog, Log, TRANSFER_TOPIC};
        let (token, treasury, payer) = (
            Address::repeat_byte(0xaa),
            Address::repeat_byte(0xbb),
            Address::repeat_byte(0xcc),
        );
        let log = |to: Address, value: u64, tx: u8| ChainLog {
            log: Log {
                address: token,
                topics: vec![TRANSFER_TOPIC, treasury.into_word(), to.into_word()],
                data: U256::from(value).to_be_bytes::<32>().to_vec().into(),
                removed: false,
            },
            transaction_hash: B256::repeat_byte(tx),
        };
        let amount = U256::from(5_000u64);
        let found = |logs: &[ChainLog]| transfer_logged(logs, token, treasury, payer, amount);
        assert_eq!(found(&[]), None);
        assert_eq!(
            found(&[log(payer, 4_999, 1), log(payer, 5_000, 2)]),
            Some(B256::repeat_byte(2))
        );
        assert_eq!(found(&[log(Address::repeat_byte(0xdd), 5_000, 1)]), None);
        let mut removed = log(payer, 5_000, 1);
        removed.log.removed = true;
        assert_eq!(found(&[removed]), None);
        let mut other_token = log(payer, 5_000, 1);
        other_token.log.address = Address::repeat_byte(0xee);
        assert_eq!(found(&[other_token]), None);
    }

    #[test]
    fn the_queue_rotates_tried_refunds_to_its_tail() {
        let q: Vec<String> = ["a", "b", "c", "d", "a"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        assert_eq!(batch(&q, 3), ["a", "b", "c"]);
        assert_eq!(batch(&q, 100).len(), 4, "distinct ids");
        let tried = vec!["a".to_owned(), "b".to_owned()];
        let gone = vec!["a".to_owned()];
        let next = requeue(&q, &tried, &gone);
        assert_eq!(next, ["c", "d", "b"]);
        assert_eq!(enqueue(next.clone(), "b"), next);
        assert_eq!(enqueue(next, "e").last().map(String::as_str), Some("e"));
        // A refund taken off the queue meanwhile does not come back.
        assert_eq!(requeue(&["c".to_owned()], &tried, &[]), ["c"]);
    }

    #[test]
    fn long_reasons_are_cut_and_ledger_fields_carry_the_amount() {
        let r = Refund::owed(
            "i",
            "p",
            UsdcAmount::from_micros(1),
            "n",
            "a",
            &"x".repeat(900),
            0,
        );
        assert_eq!(r.reason.len(), MAX_REASON_CHARS);
        let f = r.ledger_fields();
        assert_eq!(f.amount, Some(UsdcAmount::from_micros(1)));
        assert_eq!(f.invoice_id.as_deref(), Some("i"));
    }

    #[test]
    fn a_repeat_of_a_refund_event_waits_until_its_recorder_is_done() {
        let mut r = refund();
        r.created_at = 1_000;
        assert!(!r.relog_due(1_000 + RELOG_AFTER_SECS - 1));
        assert!(r.relog_due(1_000 + RELOG_AFTER_SECS));
        r.status = RefundStatus::Paid;
        r.updated_at = 5_000;
        assert!(
            !r.relog_due(1_000 + RELOG_AFTER_SECS),
            "paid later: counted from then"
        );
        assert!(r.relog_due(5_000 + RELOG_AFTER_SECS));
    }

    /// A repeat that finds the refund off the queue (its creator failed between the record and the queue, so
    /// its event was never answered) relogs it at once; one that finds it queued waits as before (a review
    /// found the first case lost its `refund_owed` for good when the retry came within the wait).
    #[test]
    fn a_repeat_that_requeues_a_refund_relogs_it_at_once() {
        let mut r = refund();
        r.created_at = 1_000;
        let stopped = 1_000 + RELOG_REQUEUED_AFTER_SECS;
        assert!(r.relog_on_repeat(stopped, true));
        assert!(!r.relog_on_repeat(stopped, false));
        // Younger: its creator may still be queueing it and logging its event itself (a second review found
        // an at-once relog landing beside that append).
        assert!(!r.relog_on_repeat(stopped - 1, true));
        assert!(r.relog_on_repeat(1_000 + RELOG_AFTER_SECS, false));
        r.status = RefundStatus::Submitted;
        assert!(r.relog_on_repeat(stopped, true));
        r.status = RefundStatus::Paid;
        r.updated_at = 5_000;
        assert!(
            !r.relog_on_repeat(5_001, true),
            "a paid refund is never requeued"
        );
        assert!(r.relog_on_repeat(5_000 + RELOG_AFTER_SECS, false));
    }

    /// A `submitted` settlement may be confirmed on chain already (its confirmation's write failed, the
    /// purchase delivered): reconciled before deciding, never refused (before, `owe-refund` answered a conflict,
    /// which its callers take as final: the refund was never recorded).
    #[test]
    fn a_submitted_settlement_is_reconciled_before_a_refund_is_refused() {
        use crate::settlement::{Record, SentTx, Status};
        let hash = B256::repeat_byte(0x7a);
        let of = |status, sent: Option<B256>| Record {
            status,
            sent: sent.map(SentTx::hash_only).unwrap_or_default(),
            ..Record::claimed(
                "eip155:31337",
                Address::repeat_byte(9),
                "x402/nonce/a".into(),
                "h1".into(),
                Some("inv_1"),
                1,
            )
        };
        assert_eq!(
            settlement_paid(&of(Status::Confirmed, Some(hash))),
            SettlementPaid::Yes
        );
        assert_eq!(
            settlement_paid(&of(Status::Submitted, Some(hash))),
            SettlementPaid::Unsure(hash)
        );
        assert_eq!(
            settlement_paid(&of(Status::Submitted, None)),
            SettlementPaid::No
        );
        assert_eq!(
            settlement_paid(&of(Status::Claimed, None)),
            SettlementPaid::No
        );
        assert_eq!(
            settlement_paid(&of(Status::Failed, Some(hash))),
            SettlementPaid::No
        );
    }

    /// A `submitted` settlement whose reconcile stays pending is asked again only for
    /// [`UNSURE_SETTLEMENT_SECS`] after its claim, then refused for an operator (before this limit, every
    /// `owe-refund` of a settlement left for an operator answered `unavailable` for ever).
    #[test]
    fn an_unsure_settlement_is_asked_again_for_hours_then_left_to_an_operator() {
        use crate::settlement::Record;
        let claimed_at = 1_000;
        let settlement = Record::claimed(
            "eip155:31337",
            Address::repeat_byte(9),
            "x402/nonce/a".into(),
            "h1".into(),
            Some("inv_1"),
            claimed_at,
        );
        assert!(!unsure_for_good(&settlement, claimed_at));
        assert!(!unsure_for_good(
            &settlement,
            claimed_at + UNSURE_SETTLEMENT_SECS - 1
        ));
        assert!(unsure_for_good(
            &settlement,
            claimed_at + UNSURE_SETTLEMENT_SECS
        ));
        // Well past any authorization's validity: its own transaction can no longer move the money.
        const { assert!(UNSURE_SETTLEMENT_SECS > 10 * crate::x402::MAX_TIMEOUT_SECONDS) };
        // A clock behind the claim never gives up.
        assert!(!unsure_for_good(&settlement, 0));
    }
}
