//! Refunds: a confirmed payment whose purchase then failed goes back to its payer as one USDC `transfer` from
//! the treasury key (`treasury_private_key`), sent at most once.
//!
//! - [`owe`] (`owe-refund`) records `refund/<invoice>` with insert-if-absent, only for an invoice whose
//!   settlement is `confirmed`, queues the id in `refund/queue` and appends `refund_owed` to the ledger. A
//!   repeat answers the stored record and appends nothing.
//! - [`run`] (`run-refunds`) pays up to `limit` queued refunds through the settlement send path
//!   ([`settle::send`]): claim, reserve a treasury nonce, sign, record the hash, broadcast, wait for receipts
//!   (all of the batch at once, within `settlement_timeout_ms`).
//!
//! A refund's life: `owed` → `submitted` (claimed by a holder token; then the hash and the signed bytes are
//! recorded before the broadcast) → `paid`. A reverted transfer (the treasury lacks USDC or gas) goes back to
//! `owed` with `last_error` and `attempts + 1`: no money moved, so a later run may send a new transaction. A
//! send that failed before the broadcast goes back to `owed` too. A `submitted` refund with a hash is only
//! ever reconciled against that hash; one without a hash is a claim in flight, taken over once it went quiet
//! for [`CLAIM_LEASE_SECS`] (such a claim never reserved a nonce, see [`settle::send`]).
//!
//! Reconciling a refund without a receipt first asks whether the node still has its transaction
//! ([`rebroadcast::look`]): if not, and its nonce is free, the identical bytes go out again. If the treasury's
//! nonce was used by another transaction, ours can never be mined, so the refund goes back to `owed` (a new
//! transfer may be sent) – but only when a run at least [`CONFIRM_UNMINEABLE_SECS`] after the first one still
//! sees it so: there is no on-chain marker of a plain `transfer` to read at a fixed block, and a lagging node
//! behind a load balancer could otherwise hide a mined refund and pay it twice.

use std::collections::HashSet;
use std::time::Instant;

use alloy_primitives::{Address, B256, U256};
use esim402_core::chain::parse_address;
use esim402_core::evm::erc20::transfer_calldata;
use esim402_core::evm::{SignedTx, SigningKey};
use esim402_core::ledger::{EntryFields, EntryKind};
use esim402_core::x402::exact::parse_decimal_u256;
use esim402_core::{InvoiceId, UsdcAmount};
use esim402_guest::kv::{self, KvError};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::chain::{Chain, Mined};
use crate::config::Config;
use crate::invoice::parse_id;
use crate::rebroadcast::{self, Look, OurTx, SentTx};
use crate::records::{
    self, CLAIM_LEASE_SECS, REFUND_QUEUE_KEY, Status, refund_key, settlement_key,
};
use crate::rpc::join_all;
use crate::settle::{self, Call, NotBroadcast, Unsent};
use crate::{invalid, wit};

/// The most refunds one run pays: each costs a handful of RPC calls, all made concurrently.
const MAX_REFUNDS_PER_RUN: usize = 20;
/// The longest `reason` kept (it lands in the ledger).
const MAX_REASON_CHARS: usize = 500;
/// How long a refund transaction must keep looking unmineable (its nonce used by another transaction, itself
/// unknown) before the refund is owed again: long enough for any node behind the endpoint to catch up.
pub const CONFIRM_UNMINEABLE_SECS: u64 = 120;

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
    /// Who gets the money back (the settlement record's payer), checksummed.
    pub payer: String,
    /// Atomic USDC units (the invoice's `amount_atomic`).
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
    /// Last change of status or transaction (unix seconds): for a `submitted` refund with a transaction, when
    /// it was recorded.
    pub updated_at: u64,
}

impl Refund {
    fn tx_hash(&self) -> Option<B256> {
        self.sent.hash()
    }

    /// The transaction of a `submitted` refund, as signed.
    fn submitted_tx(&self) -> Option<OurTx> {
        if self.status != RefundStatus::Submitted {
            return None;
        }
        self.sent.our_tx(self.updated_at)
    }

    /// A `submitted` refund whose holder went quiet before recording a transaction.
    fn is_abandoned(&self, now: u64) -> bool {
        self.status == RefundStatus::Submitted
            && self.sent.transaction.is_none()
            && self.updated_at.saturating_add(CLAIM_LEASE_SECS) <= now
    }

    /// Back to `owed` after an attempt that moved no money.
    fn back_to_owed(&mut self, error: &str, attempted: bool, now: u64) {
        self.status = RefundStatus::Owed;
        self.sent = SentTx::default();
        self.holder = None;
        self.unmineable_since = None;
        self.last_error = Some(error.to_owned());
        if attempted {
            self.attempts = self.attempts.saturating_add(1);
        }
        self.updated_at = now;
    }

    fn ledger_fields(&self) -> EntryFields {
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

fn to_json(value: &impl Serialize) -> Result<String, wit::Error> {
    serde_json::to_string(value).map_err(|e| wit::Error::Internal(e.to_string()))
}

async fn load(key: &str) -> Result<Option<Refund>, wit::Error> {
    kv::get_json::<Refund, wit::Error>(key)
        .await
        .map_err(records::kv_err)
}

/// The transaction of the refund at `key` if it is `submitted` with one (for [`rebroadcast::fill_gaps`]).
pub async fn submitted_tx(key: &str) -> Option<OurTx> {
    load(key).await.ok().flatten()?.submitted_tx()
}

/// Compare-and-swap the refund at `key`: `update` says whether it changed it. Returns the refund after the
/// attempt that was written and that answer (`None` if there is no refund).
async fn update(
    key: &str,
    update: impl Fn(&mut Refund) -> bool,
) -> Result<Option<(Refund, bool)>, wit::Error> {
    let r = kv::update_json_with::<Refund, bool, &'static str>(key, |cur| {
        let mut r = cur.ok_or("absent")?;
        let changed = update(&mut r);
        Ok((r, changed))
    });
    match r.await {
        Ok(r) => Ok(Some(r)),
        Err(KvError::Refused("absent")) => Ok(None),
        Err(e) => Err(wit::Error::Internal(e.to_string())),
    }
}

/// Put `id` on the queue unless it is there.
async fn enqueue(id: &str) -> Result<(), wit::Error> {
    let queue = kv::get_json::<Vec<String>, wit::Error>(REFUND_QUEUE_KEY)
        .await
        .map_err(records::kv_err)?;
    if queue.is_some_and(|q| q.iter().any(|i| i == id)) {
        return Ok(());
    }
    kv::update_json::<Vec<String>, wit::Error>(REFUND_QUEUE_KEY, |q| {
        let mut q = q.unwrap_or_default();
        if !q.iter().any(|i| i == id) {
            q.push(id.to_owned());
        }
        Ok(q)
    })
    .await
    .map_err(records::kv_err)?;
    Ok(())
}

/// `owe-refund`: record that the confirmed payment of `invoice_id` is owed back; idempotent per invoice.
pub async fn owe(invoice_id: &str, reason: &str, now: u64) -> Result<String, wit::Error> {
    let id = parse_id(invoice_id)?;
    let reason: String = reason.trim().chars().take(MAX_REASON_CHARS).collect();
    if reason.is_empty() {
        return Err(invalid("reason", "say why the refund is owed"));
    }
    let key = refund_key(&id);
    if let Some(existing) = load(&key).await? {
        // A repeat; also heals a first call that stopped between the record and the queue.
        if existing.status != RefundStatus::Paid {
            enqueue(id.as_str()).await?;
        }
        return to_json(&existing);
    }
    let settlement = records::load(&settlement_key(&id))
        .await?
        .ok_or_else(|| wit::Error::Conflict(format!("nothing was paid for invoice {id}")))?;
    if settlement.status != Status::Confirmed {
        let status = format!("{:?}", settlement.status).to_lowercase();
        return Err(wit::Error::Conflict(format!(
            "nothing was paid for invoice {id}: its settlement is {status}, not confirmed"
        )));
    }
    let cfg = Config::load().await?;
    let network = match cfg.chain(&settlement.network) {
        Ok(chain) => chain.network,
        Err(wit::Error::PaymentRequired(_)) => {
            return Err(wit::Error::Conflict(format!(
                "invoice {id} was paid on {}, which is no longer enabled",
                settlement.network
            )));
        }
        Err(e) => return Err(e),
    };
    let invoice = crate::invoice::load(&id).await?;
    let amount = UsdcAmount::parse_atomic(&invoice.amount_atomic)
        .map_err(|e| wit::Error::Internal(format!("invoice {id} has a bad amount: {e}")))?;
    let refund = Refund {
        invoice: id.as_str().to_owned(),
        payer: settlement.payer.clone(),
        amount: invoice.amount_atomic.clone(),
        network: settlement.network.clone(),
        asset: network.usdc.to_checksum(None),
        reason: reason.clone(),
        status: RefundStatus::Owed,
        created_at: now,
        sent: SentTx::default(),
        attempts: 0,
        last_error: None,
        holder: None,
        unmineable_since: None,
        updated_at: now,
    };
    let bytes = serde_json::to_vec(&refund).map_err(|e| wit::Error::Internal(e.to_string()))?;
    match kv::insert_if_absent::<wit::Error>(&key, &bytes).await {
        Ok(()) => {}
        // A concurrent first call won: its record is the answer, and it logs.
        Err(KvError::Exists) => {
            let existing = load(&key)
                .await?
                .ok_or_else(|| wit::Error::Internal(format!("refund record {key} vanished")))?;
            return to_json(&existing);
        }
        Err(e) => return Err(records::kv_err(e)),
    }
    enqueue(id.as_str()).await?;
    // After the insert, so concurrent first calls log once. An instance lost between the insert and here
    // leaves the refund unlogged (a repeat still queues it): a missing line, never a doubled one.
    esim402_guest::ledger::append(
        now,
        EntryKind::RefundOwed,
        EntryFields::default()
            .invoice(id.as_str())
            .amount(amount)
            .payer(settlement.payer)
            .network(settlement.network)
            .detail("reason", reason),
    )
    .await
    .map_err(|e| wit::Error::Internal(format!("ledger: {e}")))?;
    to_json(&refund)
}

/// What one run did with one queued refund.
enum Step {
    /// This run saw its transfer confirmed.
    Paid(B256),
    /// In flight: its transaction (if recorded) is not mined yet, or another run is sending it.
    Pending(Option<B256>),
    /// Not paid this time; it stays owed (or could not be tried).
    Failed(String),
    /// Nothing to do and nothing to report (another run holds the result).
    Quiet,
    /// Paid before, or no longer there: it leaves the queue.
    Gone,
}

/// What a refund transfer needs, checked before it is claimed.
struct Transfer {
    to: Address,
    amount: U256,
}

fn transfer_of(refund: &Refund, chain: &Chain) -> Result<Transfer, String> {
    if refund.network != chain.network.caip2() {
        return Err(format!(
            "the refund is owed on {}, which is not the enabled network",
            refund.network
        ));
    }
    if parse_address(&refund.asset).ok() != Some(chain.network.usdc) {
        return Err(format!(
            "the refund is owed in {}, which is not the network's USDC",
            refund.asset
        ));
    }
    let to = parse_address(&refund.payer).map_err(|e| format!("bad payer: {}", e.0))?;
    let amount = parse_decimal_u256(&refund.amount)
        .filter(|a| *a > U256::ZERO)
        .ok_or_else(|| format!("bad amount {:?}", refund.amount))?;
    Ok(Transfer { to, amount })
}

/// `run-refunds`: pay up to `limit` queued refunds from the treasury; a JSON summary of what happened.
pub async fn run(now: u64, limit: u32) -> Result<String, wit::Error> {
    let cfg = Config::load().await?;
    let treasury = cfg.treasury()?;
    let queue = kv::get_json::<Vec<String>, wit::Error>(REFUND_QUEUE_KEY)
        .await
        .map_err(records::kv_err)?
        .unwrap_or_default();
    let take = usize::try_from(limit).map_or(MAX_REFUNDS_PER_RUN, |l| l.min(MAX_REFUNDS_PER_RUN));
    let mut seen = HashSet::new();
    let batch: Vec<String> = queue
        .iter()
        .filter(|id| seen.insert(id.as_str()))
        .take(take)
        .cloned()
        .collect();
    if batch.is_empty() {
        return to_json(&summary(&[], queue.len()));
    }
    let deadline = Instant::now() + cfg.settlement_timeout;
    let steps = join_all(
        batch
            .iter()
            .map(|id| pay_one(&cfg, treasury, id, now, deadline))
            .collect(),
    )
    .await;
    let results: Vec<(String, Step)> = batch.into_iter().zip(steps).collect();
    let remaining = requeue(&results).await.unwrap_or_else(|e| {
        eprintln!("verifier: cannot update the refund queue: {e:?}");
        queue.len()
    });
    to_json(&summary(&results, remaining))
}

/// Drop the refunds that left the queue and move the rest of the batch to its tail, so a refund that keeps
/// failing does not starve the ones behind it. Returns the queue's length.
async fn requeue(results: &[(String, Step)]) -> Result<usize, wit::Error> {
    let gone: HashSet<&str> = results
        .iter()
        .filter(|(_, s)| matches!(s, Step::Paid(_) | Step::Gone))
        .map(|(id, _)| id.as_str())
        .collect();
    let rotated: Vec<&str> = results
        .iter()
        .map(|(id, _)| id.as_str())
        .filter(|id| !gone.contains(id))
        .collect();
    let queue = kv::update_json::<Vec<String>, wit::Error>(REFUND_QUEUE_KEY, |q| {
        let q = q.unwrap_or_default();
        let present: HashSet<&str> = q.iter().map(String::as_str).collect();
        let mut next: Vec<String> = q
            .iter()
            .filter(|id| !gone.contains(id.as_str()) && !rotated.contains(&id.as_str()))
            .cloned()
            .collect();
        next.extend(
            rotated
                .iter()
                .filter(|id| present.contains(*id))
                .map(|id| (*id).to_owned()),
        );
        Ok(next)
    })
    .await
    .map_err(records::kv_err)?;
    Ok(queue.len())
}

fn summary(results: &[(String, Step)], remaining: usize) -> serde_json::Value {
    let mut paid = Vec::new();
    let mut pending = Vec::new();
    let mut failed = Vec::new();
    for (invoice, step) in results {
        match step {
            Step::Paid(tx) => paid.push(json!({"invoice": invoice, "transaction": tx.to_string()})),
            Step::Pending(tx) => {
                pending.push(json!({"invoice": invoice, "transaction": tx.map(|t| t.to_string())}))
            }
            Step::Failed(error) => failed.push(json!({"invoice": invoice, "error": error})),
            Step::Quiet | Step::Gone => {}
        }
    }
    json!({"paid": paid, "pending": pending, "failed": failed, "remaining": remaining})
}

/// Drive one queued refund as far as this run can.
async fn pay_one(
    cfg: &Config,
    treasury: &SigningKey,
    id: &str,
    now: u64,
    deadline: Instant,
) -> Step {
    let Ok(id) = InvoiceId::parse(id) else {
        eprintln!("verifier: dropping a malformed id from the refund queue");
        return Step::Gone;
    };
    let key = refund_key(&id);
    let refund = match load(&key).await {
        Ok(Some(r)) => r,
        Ok(None) => return Step::Gone,
        Err(e) => return Step::Failed(message(&e)),
    };
    if refund.status == RefundStatus::Paid {
        return Step::Gone;
    }
    // The refund is paid on the network that was paid; a wrong endpoint must not change its state.
    let chain = match cfg.chain(&refund.network) {
        Ok(chain) => chain,
        Err(e) => return Step::Failed(message(&e)),
    };
    if let Err(e) = chain.check_chain_id().await {
        return Step::Failed(message(&e));
    }
    let chain = &chain;
    match refund.status {
        RefundStatus::Paid => return Step::Gone,
        RefundStatus::Submitted => {
            if let Some(hash) = refund.tx_hash() {
                return follow_up(chain, &key, &refund, hash, now, deadline).await;
            }
            if !refund.is_abandoned(now) {
                return Step::Pending(None);
            }
        }
        RefundStatus::Owed => {}
    }
    let transfer = match transfer_of(&refund, chain) {
        Ok(t) => t,
        Err(e) => return Step::Failed(e),
    };
    let holder = match records::new_holder() {
        Ok(h) => h,
        Err(e) => return Step::Failed(message(&e)),
    };
    let claimed = update(&key, |r| {
        if r.status != RefundStatus::Owed && !r.is_abandoned(now) {
            return false;
        }
        r.status = RefundStatus::Submitted;
        r.holder = Some(holder.clone());
        r.sent = SentTx::default();
        r.unmineable_since = None;
        r.updated_at = now;
        true
    });
    match claimed.await {
        Ok(Some((_, true))) => {}
        // Someone else claimed it first (or it vanished): theirs to report.
        Ok(Some((r, false))) => {
            return match (r.status, r.tx_hash()) {
                (RefundStatus::Paid, _) => Step::Gone,
                (RefundStatus::Submitted, tx) => Step::Pending(tx),
                (RefundStatus::Owed, _) => Step::Quiet,
            };
        }
        Ok(None) => return Step::Gone,
        Err(e) => return Step::Failed(message(&e)),
    }
    let call = Call {
        to: chain.network.usdc,
        input: transfer_calldata(transfer.to, transfer.amount),
        what: "refund",
        owner: key.clone(),
    };
    let record = async |tx: &SignedTx| record_submitted(&key, &holder, tx, now).await;
    match settle::send(chain, treasury, &call, record).await {
        Ok(hash) => reconcile(chain, &key, hash, now, deadline).await,
        Err(NotBroadcast { why, .. }) => {
            let (error, attempted) = match why {
                Unsent::WouldRevert(m) => (format!("the refund transfer would revert: {m}"), true),
                Unsent::Fault(e) => (message(&e), false),
            };
            // Held by us and not broadcast: back to owed for a later run.
            let released = update(&key, |r| {
                if r.status != RefundStatus::Submitted || r.holder.as_deref() != Some(&holder) {
                    return false;
                }
                r.back_to_owed(&error, attempted, now);
                true
            });
            if let Err(e) = released.await {
                eprintln!("verifier: cannot release refund {key}: {e:?}");
            }
            Step::Failed(error)
        }
    }
}

/// Record the signed refund on its record while `holder` still holds it; before the broadcast.
async fn record_submitted(
    key: &str,
    holder: &str,
    tx: &SignedTx,
    now: u64,
) -> Result<(), wit::Error> {
    let recorded = update(key, |r| {
        if r.status != RefundStatus::Submitted
            || r.holder.as_deref() != Some(holder)
            || r.sent.transaction.is_some()
        {
            return false;
        }
        r.sent = SentTx::signed(tx);
        r.unmineable_since = None;
        r.updated_at = now;
        true
    })
    .await?;
    match recorded {
        Some((_, true)) => Ok(()),
        _ => Err(wit::Error::Conflict(format!(
            "refund {key} was taken over before it was sent"
        ))),
    }
}

/// A refund already `submitted` with `hash`, seen again by a later run: make sure the node still has its
/// transaction (see the module docs), then [`reconcile`].
async fn follow_up(
    chain: &Chain,
    key: &str,
    refund: &Refund,
    hash: B256,
    now: u64,
    deadline: Instant,
) -> Step {
    if let Some(tx) = refund.submitted_tx() {
        match rebroadcast::look(chain, &tx, "refund", now).await {
            Look::Unmineable { at } => return unmineable(key, &tx, at, now).await,
            Look::Known if refund.unmineable_since.is_some() => {
                // A node that had not caught up: the transaction is there after all.
                let recorded = hash.to_string();
                let cleared = update(key, |r| {
                    let ours = r.sent.transaction.as_deref() == Some(recorded.as_str());
                    ours && r.unmineable_since.take().is_some()
                });
                if let Err(e) = cleared.await {
                    eprintln!("verifier: cannot update refund {key}: {e:?}");
                }
            }
            Look::Known | Look::Resent | Look::Waiting => {}
        }
    }
    reconcile(chain, key, hash, now, deadline).await
}

/// The refund's transaction `tx` can never be mined (its nonce was used by block `at`): note when this was
/// first seen, and once it has been so for [`CONFIRM_UNMINEABLE_SECS`], owe the refund again.
async fn unmineable(key: &str, tx: &OurTx, at: u64, now: u64) -> Step {
    let hash = tx.hash.to_string();
    let error = format!(
        "refund transaction {hash} was never mined and never will be (treasury nonce {} was used by another transaction by block {at}); no money moved",
        tx.nonce
    );
    let r = update(key, |r| {
        if r.status != RefundStatus::Submitted
            || r.sent.transaction.as_deref() != Some(hash.as_str())
        {
            return false;
        }
        match r.unmineable_since {
            None => {
                r.unmineable_since = Some(now);
                true
            }
            Some(since) if since.saturating_add(CONFIRM_UNMINEABLE_SECS) <= now => {
                r.back_to_owed(&error, true, now);
                true
            }
            Some(_) => false,
        }
    });
    match r.await {
        Ok(Some((r, _))) if r.status == RefundStatus::Paid => Step::Gone,
        Ok(Some((r, true))) if r.status == RefundStatus::Owed => {
            eprintln!("verifier: {error}: refund {key} is owed again");
            Step::Failed(error)
        }
        Ok(Some((r, _))) if r.status == RefundStatus::Submitted => {
            eprintln!(
                "verifier: refund {key}: transaction {hash} looks unmineable (treasury nonce {} used by block {at}); it stays submitted until a run {CONFIRM_UNMINEABLE_SECS} s after the first sighting still sees it so",
                tx.nonce
            );
            Step::Pending(Some(tx.hash))
        }
        Ok(Some(_)) => Step::Quiet,
        Ok(None) => Step::Gone,
        Err(e) => {
            eprintln!("verifier: cannot update refund {key}: {e:?}");
            Step::Pending(Some(tx.hash))
        }
    }
}

/// Wait for the refund transaction `hash` until `deadline` and record what the chain says; only the run that
/// records the outcome reports it.
async fn reconcile(chain: &Chain, key: &str, hash: B256, now: u64, deadline: Instant) -> Step {
    let tx = hash.to_string();
    let mined = match chain.wait_for(hash, deadline).await {
        Some(mined) => mined,
        None => return Step::Pending(Some(hash)),
    };
    let error =
        format!("refund transaction {tx} reverted (does the treasury hold enough USDC and gas?)");
    let recorded = update(key, |r| {
        if r.status != RefundStatus::Submitted || r.sent.transaction.as_deref() != Some(tx.as_str())
        {
            return false;
        }
        match mined {
            Mined::Succeeded => {
                r.status = RefundStatus::Paid;
                r.holder = None;
                r.last_error = None;
                r.updated_at = now;
            }
            Mined::Reverted => r.back_to_owed(&error, true, now),
        }
        true
    });
    let refund = match recorded.await {
        Ok(Some((r, true))) => r,
        Ok(Some((r, false))) if r.status == RefundStatus::Paid => return Step::Gone,
        Ok(_) => return Step::Quiet,
        Err(e) => {
            // The chain is the truth; a later run reads it again.
            eprintln!("verifier: cannot record the outcome of refund {tx}: {e:?}");
            return Step::Pending(Some(hash));
        }
    };
    if mined == Mined::Reverted {
        return Step::Failed(error);
    }
    let fields = refund.ledger_fields().tx_hash(tx.clone());
    if let Err(e) = esim402_guest::ledger::append(now, EntryKind::RefundPaid, fields).await {
        eprintln!("verifier: refund {tx} paid but not logged: {e}");
    }
    Step::Paid(hash)
}

/// A WIT error as a line of the summary.
fn message(e: &wit::Error) -> String {
    match e {
        wit::Error::InvalidInput(f) => format!("{}: {}", f.field, f.message),
        wit::Error::NotFound(m)
        | wit::Error::Conflict(m)
        | wit::Error::Expired(m)
        | wit::Error::PaymentRequired(m)
        | wit::Error::Unavailable(m)
        | wit::Error::Internal(m) => m.clone(),
    }
}
