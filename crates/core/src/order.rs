//! Carrier orders, as dispatch keeps them: the journal of one paid order (`order/<invoice id>`), the SIM it
//! produced (`sim/<iccid>`), the failover plan across a region's carriers, the rules of switching a SIM, the
//! carrier-side cleanups still owed, and the owner index (the SIMs a wallet paid for, [`owner_index`]). Dispatch loads, calls a function here, and writes the result with a
//! versioned-cell update; every rule is here and tested natively.
//!
//! An order is driven by one caller at a time: [`claim`] hands the journal to a new driver (a random token,
//! with a lease) when it is new or its lease ran out, and reports `Done`/`Failed`/`Busy` otherwise, so a repeat
//! returns (or resumes) the same order instead of ordering twice. Every journal write checks the token
//! ([`Order::journal`]): a driver whose lease was taken over writes nothing. The journal records the carrier
//! step (ICCID and the ConfirmOrder call id) *before* confirming, so an order interrupted after allocation
//! resumes with the same call id ([`Plan::resume`]).

use serde::{Deserialize, Serialize};

use crate::esim::{ProfileState, RoamingPolicy, SimState};

pub mod parked;
pub mod recheck;

/// Where an order is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    /// Being driven (or abandoned mid-way, until its lease runs out).
    Ordering,
    /// Delivered: `iccid` is the SIM.
    Done,
    /// Failed for good: `error` says why.
    Failed,
}

/// A profile allocated by a carrier whose order is not finished yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// The carrier.
    pub carrier: String,
    /// The allocated ICCID.
    pub iccid: String,
    /// Sent again verbatim on resume: the SM-DP+ is idempotent on it, so a confirm that succeeded unseen
    /// replays its MatchingID instead of failing on the profile's new state.
    pub confirm_fci: String,
}

/// The journal of one paid order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// The invoice that paid for it.
    pub invoice_id: String,
    /// Status.
    pub status: OrderStatus,
    /// Who drives the order, and until when (unix seconds); another call may take over after that.
    pub token: String,
    /// End of the driver's lease.
    pub lease_until: u64,
    /// The allocated profile being confirmed.
    pub step: Option<Step>,
    /// The SIM, once done.
    pub iccid: Option<String>,
    /// Carriers skipped so far, as `carrier: reason`.
    pub failovers: Vec<String>,
    /// Why it failed, once failed.
    pub error: Option<String>,
}

/// What a caller wanting to drive an order gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Write this journal and drive it.
    Drive(Order),
    /// Delivered before: the SIM.
    Done(String),
    /// Failed before: why.
    Failed(String),
    /// Someone else drives it now (the ICCID of its allocated profile, if any).
    Busy(Option<String>),
}

/// The lease of one driver: the cleanup sweep before the order (one call timeout, [`SWEEP_CALL_TIMEOUTS`]),
/// the dispatch budget, two call timeouts (a cancel after the budget, with its same-id retry) and slack.
pub fn lease_secs(budget_secs: u64, call_timeout_secs: u64) -> u64 {
    budget_secs
        .saturating_add(call_timeout_secs.saturating_mul(2 + SWEEP_CALL_TIMEOUTS))
        .saturating_add(5)
}

/// Whether an order configured with `budget_secs` and ES2+ calls of `call_timeout_ms` fits the part of a
/// payment's lease an order may take ([`crate::paid::MAX_DISPATCH_BUDGET_SECS`]): its whole time is its
/// [`lease_secs`] (the sweep and a cancel after the budget come on top of the budget). Otherwise a payment
/// sent again after the payment lease takes it over while the first attempt is still ordering.
pub fn fits_payment_lease(budget_secs: u64, call_timeout_ms: u64) -> bool {
    lease_secs(budget_secs, call_timeout_ms.div_ceil(1000)) <= crate::paid::MAX_DISPATCH_BUDGET_SECS
}

/// `(budget_secs, call_timeout_ms)` lowered to fit the payment lease ([`fits_payment_lease`]), unchanged if they
/// do: the call timeout first to at most a fifth of the room, then the budget to what is left.
/// A configuration that did not fit is served lowered (with a warning), not refused: deployments set within the
/// old limits keep working.
pub fn fit_to_payment_lease(budget_secs: u64, call_timeout_ms: u64) -> (u64, u64) {
    if fits_payment_lease(budget_secs, call_timeout_ms) {
        return (budget_secs, call_timeout_ms);
    }
    let calls = 2 + SWEEP_CALL_TIMEOUTS;
    let room = crate::paid::MAX_DISPATCH_BUDGET_SECS.saturating_sub(5);
    // Calls of at most a fifth of the room leave the budget at least two of them (a try and a failover).
    let call_secs = call_timeout_ms.div_ceil(1000).min(room / 5).max(1);
    let call_ms = call_timeout_ms.min(call_secs * 1000);
    let budget = budget_secs
        .min(room.saturating_sub(call_secs * calls))
        .max(1);
    (budget, call_ms)
}

/// The time an order spends sweeping queued cleanups before it starts, in call timeouts: the whole sweep
/// shares it, and what it does not reach stays queued, so a slow carrier cannot take an order past its lease.
pub const SWEEP_CALL_TIMEOUTS: u64 = 1;

/// Decide, at `now`, whether a new driver `token` takes the order of `invoice_id` (`current`: its journal).
pub fn claim(
    current: Option<&Order>,
    invoice_id: &str,
    token: &str,
    now: u64,
    lease: u64,
) -> Claim {
    match current {
        None => Claim::Drive(Order {
            invoice_id: invoice_id.to_owned(),
            status: OrderStatus::Ordering,
            token: token.to_owned(),
            lease_until: now.saturating_add(lease),
            step: None,
            iccid: None,
            failovers: Vec::new(),
            error: None,
        }),
        Some(o) if o.status == OrderStatus::Ordering && o.lease_until <= now => {
            let mut o = o.clone();
            o.token = token.to_owned();
            o.lease_until = now.saturating_add(lease);
            Claim::Drive(o)
        }
        Some(o) => match o.status {
            OrderStatus::Done => Claim::Done(o.iccid.clone().unwrap_or_default()),
            OrderStatus::Failed => Claim::Failed(o.error.clone().unwrap_or_default()),
            OrderStatus::Ordering => Claim::Busy(o.step.as_ref().map(|s| s.iccid.clone())),
        },
    }
}

/// Why a journal write was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    /// The journal is gone.
    #[error("the order journal vanished")]
    Vanished,
    /// Another driver took the order over.
    #[error("the order for invoice {0} was taken over by another request")]
    TakenOver(String),
}

impl Order {
    /// Apply `f` if `token` still drives this order.
    pub fn journal(
        current: Option<Order>,
        token: &str,
        f: impl FnOnce(&mut Order),
    ) -> Result<Order, JournalError> {
        let mut o = current.ok_or(JournalError::Vanished)?;
        if o.token != token {
            return Err(JournalError::TakenOver(o.invoice_id));
        }
        f(&mut o);
        Ok(o)
    }

    /// The journal of a delivered order.
    pub fn complete(&mut self, iccid: &str, failovers: Vec<String>) {
        self.status = OrderStatus::Done;
        self.iccid = Some(iccid.to_owned());
        self.step = None;
        self.failovers = failovers;
    }

    /// The journal of a driver that stops without finishing, its step's outcome unknown (its SIM record could
    /// not be read or stored): still ordering, with its step, but its lease over, so the next call drives it
    /// at once ([`claim`]) instead of finding it busy.
    pub fn hand_over(&mut self) {
        self.lease_until = 0;
    }

    /// The journal of an order that failed for good.
    pub fn fail(&mut self, error: &str, failovers: Vec<String>) {
        self.status = OrderStatus::Failed;
        self.error = Some(error.to_owned());
        self.step = None;
        self.failovers = failovers;
    }
}

/// The carriers an order tries, in order, and where a resumed order picks up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Carrier ids, first choice first.
    pub carriers: Vec<String>,
}

impl Plan {
    /// A plan over `carriers` (from the catalog: the requested or default carrier first).
    pub fn new(carriers: Vec<String>) -> Self {
        Self { carriers }
    }

    /// The carriers still to try after an interrupted attempt at `tried` failed: the ones after it. `None`:
    /// every carrier is still to try.
    pub fn after(&self, tried: Option<&str>) -> Vec<String> {
        match tried {
            None => self.carriers.clone(),
            Some(t) => self
                .carriers
                .iter()
                .skip_while(|c| c.as_str() != t)
                .skip(1)
                .cloned()
                .collect(),
        }
    }

    /// How an order resumes from its journal: confirm the recorded step first (same carrier, same call id).
    pub fn resume(order: &Order) -> Option<&Step> {
        order.step.as_ref()
    }
}

/// A SIM as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(
    missing_docs,
    reason = "the fields are the SIM's public shape, documented in the WIT `sim` record"
)]
pub struct StoredSim {
    pub iccid: String,
    pub carrier: String,
    pub region: String,
    pub state: SimState,
    /// `None` until the carrier released the profile.
    pub profile_state: Option<ProfileState>,
    /// The activation code (`1$…$…`, without the QR prefix). A secret.
    pub activation_code: Option<String>,
    pub eid: Option<String>,
    pub roaming: RoamingPolicy,
    pub data_mb: u32,
    pub invoice_id: String,
    pub created_at: u64,
    #[serde(default)]
    pub failovers: Vec<String>,
    #[serde(default)]
    pub replaces: Option<String>,
    #[serde(default)]
    pub replaced_by: Option<String>,
    /// Who may manage it (`crate::auth`).
    #[serde(default)]
    pub access: crate::auth::SimAccess,
    /// The agent's label (`X-Agent-ID`, [`parse_agent_label`]).
    #[serde(default)]
    pub label: Option<String>,
    /// Why it is suspended, if it is (`crate::esim::Holds`).
    #[serde(default, skip_serializing_if = "crate::esim::Holds::is_none")]
    pub holds: crate::esim::Holds,
    /// The switch ordering its replacement, until `replaced_by` names it ([`claim_switch`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switching: Option<SwitchClaim>,
    /// The status code (`subject/reason`) of the download-progress notification that failed this SIM for good:
    /// its profile can never be installed ([`after_progress`]), so its payment is owed back ([`owes_back`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download_failure: Option<String>,
}

impl StoredSim {
    /// Whether the SIM failed because its profile can never be installed (a terminal download failure,
    /// [`after_progress`]) after it was delivered (its activation code handed out): its account is closed and its
    /// payment owed back (kernel `usage::failed`). Only such a record: a SIM failed by its order (the carrier
    /// refused the confirm, or the SM-DP+ reported the profile dead while the order was left pending,
    /// [`after_confirm`]) never delivered, and its invoice may have paid for another carrier's SIM since; a
    /// repeat of the notification that killed it must not owe that invoice back.
    pub fn owes_back(&self) -> bool {
        self.state == SimState::Failed
            && self.download_failure.is_some()
            && self.activation_code.is_some()
    }
}

/// A switch's hold on the SIM it replaces while the replacement is ordered ([`claim_switch`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchClaim {
    /// The invoice paying for the switch.
    pub invoice_id: String,
    /// Unix seconds: a claim its switch never settled (its driver stopped) holds until then, an order's lease.
    pub until: u64,
}

/// What a driver's ConfirmOrder came to ([`after_confirm`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmation<'a> {
    /// The profile is released for download under this activation code.
    Released(&'a str),
    /// The carrier refused, or the call failed: nothing was released.
    Refused,
}

/// What becomes of a SIM record once its profile's ConfirmOrder is answered ([`after_confirm`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterConfirm {
    /// Store this record: the SIM delivered (active, with its code) or, the confirm refused, failed (the driver
    /// gives its profile back to the pool and tries the next carrier).
    Store(StoredSim),
    /// The SIM was delivered before (by a driver whose journal write was lost): the order ends with it, as it
    /// stands (failed since by its download, if so: [`StoredSim::owes_back`]).
    Delivered(StoredSim),
    /// The owner terminated the SIM before it was delivered: the record stays terminated, the order ends
    /// without a SIM (nothing was delivered, so no payment is kept), and a profile this confirm released is
    /// retired at the carrier (nobody ever gets its code).
    Withdrawn {
        /// The record as it stays.
        sim: StoredSim,
        /// Retire the profile at the carrier.
        retire: bool,
    },
    /// An earlier driver gave the SIM up (and queued its profile's cancel): try the next carrier.
    GivenUp,
}

/// Decide what a driver that confirmed `pending`'s profile writes, from the record as stored now
/// (`current`): only a SIM still pending (or not stored yet) takes the outcome; one terminated, delivered or
/// given up meanwhile keeps its state. Run inside the record's cell update, so a terminate racing the
/// confirm is never written over.
pub fn after_confirm(
    current: Option<&StoredSim>,
    pending: &StoredSim,
    outcome: Confirmation<'_>,
) -> AfterConfirm {
    match current.map(|c| c.state) {
        None | Some(SimState::Pending) => {
            let mut sim = pending.clone();
            // The SM-DP+ reported the profile dead (a terminal download failure, [`after_progress`]) while the
            // record was still pending: this confirm's "released" (a replay of the one that ran before the
            // order was left pending) would deliver a profile that can never be installed. Refused instead:
            // the profile is given back (CancelOrder to `Available`: the SM-DP+ decides whether a profile its
            // limits ended can be issued again; a delivered one is retired instead, as its payer holds its
            // code), and the order fails over or fails (nothing kept for it).
            let dead = current.is_some_and(|c| c.download_failure.is_some());
            match outcome {
                Confirmation::Released(code) if !dead => {
                    sim.state = SimState::Active;
                    sim.profile_state = Some(ProfileState::Released);
                    sim.activation_code = Some(code.to_owned());
                }
                Confirmation::Released(_) | Confirmation::Refused => sim.state = SimState::Failed,
            }
            // A progress callback may land before this write (the device downloads as soon as the SM-DP+
            // releases the profile, [`progress_after`]): the state it recorded is further along, and kept.
            if let Some(ahead) = current.and_then(|c| c.profile_state).filter(|p| {
                matches!(
                    p,
                    ProfileState::Downloaded
                        | ProfileState::Installed
                        | ProfileState::Enabled
                        | ProfileState::Deleted
                )
            }) {
                sim.profile_state = Some(ahead);
            }
            AfterConfirm::Store(sim)
        }
        Some(SimState::Terminated) => AfterConfirm::Withdrawn {
            sim: current.cloned().unwrap_or_else(|| pending.clone()),
            retire: matches!(outcome, Confirmation::Released(_)),
        },
        Some(SimState::Active | SimState::Suspended) => {
            AfterConfirm::Delivered(current.cloned().unwrap_or_else(|| pending.clone()))
        }
        // Failed with an activation code: delivered (by a driver whose journal write was lost), then failed by
        // its download ([`after_progress`]; its payment is owed back). The order ended with it: trying the next
        // carrier would deliver a second SIM on the same invoice.
        Some(SimState::Failed) if current.is_some_and(|c| c.activation_code.is_some()) => {
            AfterConfirm::Delivered(current.cloned().unwrap_or_else(|| pending.clone()))
        }
        Some(SimState::Failed) => AfterConfirm::GivenUp,
    }
}

/// Whether a resumed order still confirms its SIM, stored as `current`: `None` if it is pending (confirm it
/// with the journal's call id), else what the order comes to without calling the carrier (a terminate has
/// already retired the profile).
pub fn settled_before_confirm(current: &StoredSim) -> Option<AfterConfirm> {
    (current.state != SimState::Pending)
        .then(|| after_confirm(Some(current), current, Confirmation::Refused))
}

/// Whether the profile a carrier just allocated (its DownloadOrder answer) may be recorded as `pending`, the
/// record under its ICCID being `current`: only over no record, or over a failed one of the same carrier (a
/// profile whose confirm was refused, given back to the pool and handed out again). Any other record is
/// someone else's SIM, or was: a live one (pending, active, suspended) has an owner, and writing over it would
/// hand this order its owner's SIM (owner, invoice, state, token); a terminated one was delivered (or
/// withdrawn) and its profile retired, and its payer may still hold its access token (before tokens were bound
/// to their invoice, `crate::auth::token`, one derived from the ICCID alone would open the new record). So is a failed one that was delivered (an activation
/// code was handed out, or a download callback failed it after delivery: [`StoredSim::owes_back`]): its payer
/// holds its token, and its ICCID's metering account is closed, so the new SIM could take no data. Refused,
/// the carrier's answer is a failed step: the profile is neither confirmed nor cancelled (both would act on
/// the other SIM), and the order fails over. Run inside the record's cell update.
pub fn may_record_allocation(current: Option<&StoredSim>, pending: &StoredSim) -> bool {
    current.is_none_or(|c| {
        c.carrier == pending.carrier
            && c.state == SimState::Failed
            && c.activation_code.is_none()
            && c.download_failure.is_none()
    })
}

/// What becomes of the profile of `pending` when its record's write ([`may_record_allocation`]) failed, the
/// record now being `current`: the write may have landed with its reply lost. `(write, give_back)`: our own
/// pending record (it landed) is written `Failed` (left pending, it would refuse the profile when the carrier
/// hands it out again, and nothing would ever end it), and the profile given back; so it is over no record or
/// one the allocation could have been written over (the write did not land). Any other record is someone
/// else's SIM under the ICCID the carrier named: not written, and the profile, not ours, kept (an operator
/// checks the carrier's pool). Run inside the record's cell update.
pub fn after_lost_allocation(
    current: Option<&StoredSim>,
    pending: &StoredSim,
) -> (Option<StoredSim>, bool) {
    match current {
        Some(c)
            if c.state == SimState::Pending
                && belongs_to(c, &pending.invoice_id)
                && c.carrier == pending.carrier =>
        {
            let failed = StoredSim {
                state: SimState::Failed,
                ..c.clone()
            };
            (Some(failed), true)
        }
        _ => (None, may_record_allocation(current, pending)),
    }
}

/// Whether the cleanup sweep may send a queued CancelOrder (or the cancel a lost DownloadOrder's replay just
/// learned of) for a profile whose SIM record is `current`, read just before; `invoice`: the invoice whose SIM
/// the profile was, when the item names it. Every cancel is queued after its record was ended (failed,
/// terminated) or for a profile never recorded, so a *live* record (pending, active, suspended) under that
/// ICCID is another order's SIM (the carrier expired the first and issued the profile again, and
/// [`may_record_allocation`] took it over a failed record): the cancel would take that order's SIM, so it is
/// dropped and logged instead. A *pending* record of the item's own invoice is that order's, whose failed mark
/// did not land (best effort before a cancel): cancelled. An active or suspended one of the same invoice was
/// delivered since (a later attempt of the order got the profile again): never cancelled.
pub fn sweep_may_cancel(current: Option<&StoredSim>, invoice: Option<&str>) -> bool {
    current.is_none_or(|c| {
        matches!(c.state, SimState::Failed | SimState::Terminated)
            || (c.state == SimState::Pending && invoice.is_some_and(|i| c.invoice_id == i))
    })
}

/// The profile state of `sim` after a download-progress notification (point `point`, `status`), or `None`
/// when nothing changes: a SIM out of service for good (terminated, failed) takes no progress (a late or
/// repeated notification for a withdrawn SIM must not move it, nor retire what it replaced); otherwise
/// `crate::esim::profile_state_after`. A live SIM without a profile state (its confirm not recorded yet: the
/// device may report before the ConfirmOrder's answer is written, and the SM-DP+ never sends a 204'd
/// notification again) moves as if from Released on a success at point 3 or 4 (only a released profile
/// can be downloaded); anything else (a failure, points 1 and 2, vendor points 5 and above) changes nothing on it.
pub fn progress_after(
    sim: &StoredSim,
    point: u32,
    status: crate::esim::es2::ExecutionStatus,
) -> Option<ProfileState> {
    if matches!(sim.state, SimState::Terminated | SimState::Failed) {
        return None;
    }
    let current = match sim.profile_state {
        Some(current) => current,
        // Points 3 and 4 only: 5 and above are vendor-specific (`reference/esim.md` †).
        None if status.is_success() && (3..=4).contains(&point) => ProfileState::Released,
        None => return None,
    };
    crate::esim::profile_state_after(current, point, status)
}

/// The SIM record after a download-progress notification (point `point`, `status`), or `None` when nothing
/// changes. A terminal failure (`crate::esim::terminal_failure`: the SM-DP+'s retry, confirmation-code or
/// order-time limit) on a SIM in service whose profile was never installed fails the SIM
/// (`crate::esim::state_after_terminal`): failed, its profile in Error, the code kept in `download_failure`
/// ([`StoredSim::owes_back`]); dispatch then retires the profile at the SM-DP+ and the gateway owes the money
/// back. On a SIM still pending (its confirm ran at the SM-DP+, as only a released profile is downloaded, but
/// its answer was never recorded: the order was left pending) the code is kept, the SIM left pending to its
/// order, whose confirm, resumed, then refuses to deliver it ([`after_confirm`]); before, the failure was
/// dropped (the SM-DP+ never sends a notification we answered again) and the resumed order delivered the dead
/// profile as released. Anything else moves the profile only, as [`progress_after`] says (a failed SIM takes
/// nothing more, so a repeated notification writes nothing).
pub fn after_progress(
    sim: &StoredSim,
    point: u32,
    status: &crate::esim::es2::NotificationPointStatus,
) -> Option<StoredSim> {
    if let Some(code) = crate::esim::terminal_failure(point, status) {
        if let Some(state) = crate::esim::state_after_terminal(sim.state, sim.profile_state) {
            return Some(StoredSim {
                state,
                profile_state: Some(ProfileState::Error),
                download_failure: Some(code.to_string()),
                ..sim.clone()
            });
        }
        if sim.state == SimState::Pending {
            return sim.download_failure.is_none().then(|| StoredSim {
                profile_state: Some(ProfileState::Error),
                download_failure: Some(code.to_string()),
                ..sim.clone()
            });
        }
    }
    progress_after(sim, point, status.status).map(|next| StoredSim {
        profile_state: Some(next),
        ..sim.clone()
    })
}

/// The old SIM of a switch, stored as `old`, once its replacement `new` reports its profile installed: taken
/// out of service (terminated, its access token revoked), or `None` (nothing written) unless `new` is live
/// (active or suspended) and is the replacement `old` names: its `replaced_by`, or, before that is written,
/// its switch claim by `new`'s invoice ([`claim_switch`]; a device may install a released profile before the
/// switch's last write). A withdrawn or failed replacement, or one a later switch of the old SIM replaced,
/// reporting late, never takes a working SIM out of service. Run inside the old record's cell update.
pub fn retire_replaced(old: &StoredSim, new: &StoredSim) -> Option<StoredSim> {
    let names_it = old.replaced_by.as_deref() == Some(new.iccid.as_str())
        || old
            .switching
            .as_ref()
            .is_some_and(|c| c.invoice_id == new.invoice_id);
    if !names_it || !matches!(new.state, SimState::Active | SimState::Suspended) {
        return None;
    }
    let (state, holds) =
        crate::esim::owner_action(old.state, old.holds, crate::esim::SimAction::Terminate).ok()?;
    let mut retired = old.clone();
    (retired.state, retired.holds) = (state, holds);
    retired.access.token = None;
    Some(retired)
}

/// What an invoice's order journal holds for someone who must not order anything (a payment that will not
/// settle, withdrawing what an earlier attempt of it ordered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ordered {
    /// Nothing was allocated: no journal, a failed order, or one whose driver stopped before allocating.
    Nothing,
    /// The SIM of this ICCID was delivered, or is being confirmed.
    Sim(String),
    /// A live driver has not allocated a profile yet: ask again later.
    InProgress,
}

/// [`Ordered`] from the journal `current` at `now`.
pub fn ordered(current: Option<&Order>, now: u64) -> Ordered {
    let Some(o) = current else {
        return Ordered::Nothing;
    };
    match (o.status, &o.iccid, &o.step) {
        (OrderStatus::Done, Some(iccid), _) => Ordered::Sim(iccid.clone()),
        (OrderStatus::Ordering, _, Some(step)) => Ordered::Sim(step.iccid.clone()),
        (OrderStatus::Ordering, _, None) if o.lease_until > now => Ordered::InProgress,
        _ => Ordered::Nothing,
    }
}

/// Whether the SIM record the journal's ICCID names is the order's (`invoice_id`'s): a profile given back to
/// the carrier's pool (its confirm failed, or the order moved on) keeps its ICCID, and the carrier may hand it
/// to another order, whose record then sits under the same key. A journal step or a delivered ICCID whose
/// record names another invoice is not this order's SIM: never confirmed, delivered or withdrawn on its behalf.
pub fn belongs_to(sim: &StoredSim, invoice_id: &str) -> bool {
    sim.invoice_id == invoice_id
}

/// Whether an order placed earlier for an invoice (its SIM `ordered`) answers a repeat that orders for `owner`:
/// only if the SIM is that owner's. An invoice is paid by one payer, but should its payment record ever free it
/// for another payment, the order journal would otherwise hand that payer the first one's SIM.
pub fn replay_for(
    ordered: &StoredSim,
    owner: Option<&crate::chain::Address>,
) -> Result<(), String> {
    match (ordered.access.owner.as_ref(), owner) {
        (Some(had), Some(asks)) if had != asks => Err(format!(
            "invoice {}'s profile was ordered for another payer; request a new invoice",
            ordered.invoice_id
        )),
        _ => Ok(()),
    }
}

/// An agent label (the `X-Agent-ID` header, or a listing's `agent_id` filter): 1–64 letters, digits and `._:-`.
/// The error names no field: the caller's does.
pub fn parse_agent_label(s: &str) -> Result<String, String> {
    if (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b))
    {
        Ok(s.to_owned())
    } else {
        Err("an agent label must be 1-64 letters, digits and . _ : -".to_owned())
    }
}

/// Why a SIM cannot switch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SwitchError {
    /// Only active or suspended SIMs switch.
    #[error("SIM {iccid} is {state} and cannot switch")]
    NotSwitchable {
        /// The SIM.
        iccid: String,
        /// Its state, lower-case.
        state: String,
    },
    /// A replacement is already on its way.
    #[error("SIM {iccid} is already being replaced by {next}")]
    AlreadyReplaced {
        /// The SIM.
        iccid: String,
        /// Its replacement.
        next: String,
    },
    /// The target is where the SIM already is (`field` is `carrier` or `region`).
    #[error("SIM is already {0}")]
    SameTarget(String, &'static str),
}

impl SwitchError {
    /// The request field at fault, for input errors (`None` for state conflicts).
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::SameTarget(_, field) => Some(field),
            _ => None,
        }
    }
}

/// Where a switch wants a SIM to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwitchTarget {
    /// Another carrier in the same region.
    Carrier(String),
    /// Another region (its carriers, with failover).
    Region(String),
}

/// Check that `sim` may switch to `target`.
pub fn check_switch(sim: &StoredSim, target: &SwitchTarget) -> Result<(), SwitchError> {
    if !matches!(sim.state, SimState::Active | SimState::Suspended) {
        return Err(SwitchError::NotSwitchable {
            iccid: sim.iccid.clone(),
            state: format!("{:?}", sim.state).to_lowercase(),
        });
    }
    if let Some(next) = &sim.replaced_by {
        return Err(SwitchError::AlreadyReplaced {
            iccid: sim.iccid.clone(),
            next: next.clone(),
        });
    }
    match target {
        SwitchTarget::Carrier(c) if *c == sim.carrier => {
            Err(SwitchError::SameTarget(format!("on {c}"), "carrier"))
        }
        SwitchTarget::Region(r) if *r == sim.region => {
            Err(SwitchError::SameTarget(format!("in {r}"), "region"))
        }
        _ => Ok(()),
    }
}

/// How a paid switch of a SIM starts ([`start_switch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchStart {
    /// Order the replacement.
    Order,
    /// The same invoice already ordered the replacement (the same payment sent again, or an order left
    /// pending): drive that order again, which answers with the SIM it delivered or resumes it.
    Replay,
}

/// Whether a switch of `sim` to `target`, paid by `invoice_id`, may start, given `replacement`: the SIM its
/// `replaced_by` names, as stored (`None` if it has none, or the record is gone). A replacement this invoice
/// ordered is replayed, so a retried payment meets its own switch instead of a conflict; one that never took
/// over (terminated or failed: a withdrawn or failed switch) does not block a new switch; any other is
/// [`SwitchError::AlreadyReplaced`].
pub fn start_switch(
    sim: &StoredSim,
    replacement: Option<&StoredSim>,
    target: &SwitchTarget,
    invoice_id: &str,
) -> Result<SwitchStart, SwitchError> {
    match replacement {
        Some(next) if next.invoice_id == invoice_id => Ok(SwitchStart::Replay),
        Some(next) if matches!(next.state, SimState::Terminated | SimState::Failed) => {
            let free = StoredSim {
                replaced_by: None,
                ..sim.clone()
            };
            check_switch(&free, target).map(|()| SwitchStart::Order)
        }
        _ => check_switch(sim, target).map(|()| SwitchStart::Order),
    }
}

/// Claim `sim`, as stored now (inside its cell update), for the switch paid by `invoice_id` at `now` for `lease`
/// seconds, [`start_switch`] having allowed it with `seen` as the SIM's `replaced_by`: the record to write
/// (`None`: this invoice holds the claim already, for long enough). Refused while another invoice's claim
/// holds, if `replaced_by` changed since it was checked (a switch finished meanwhile), or if the SIM left
/// service meanwhile: two payments checked at once cannot both order a replacement.
pub fn claim_switch(
    sim: &StoredSim,
    seen: Option<&str>,
    invoice_id: &str,
    now: u64,
    lease: u64,
) -> Result<Option<StoredSim>, SwitchError> {
    let busy = |next: String| SwitchError::AlreadyReplaced {
        iccid: sim.iccid.clone(),
        next,
    };
    if !matches!(sim.state, SimState::Active | SimState::Suspended) {
        return Err(SwitchError::NotSwitchable {
            iccid: sim.iccid.clone(),
            state: format!("{:?}", sim.state).to_lowercase(),
        });
    }
    if sim.replaced_by.as_deref() != seen {
        return Err(busy(sim.replaced_by.clone().unwrap_or_default()));
    }
    let until = now.saturating_add(lease);
    match &sim.switching {
        Some(c) if c.invoice_id == invoice_id && c.until >= until => Ok(None),
        Some(c) if c.invoice_id != invoice_id && c.until > now => {
            Err(busy(format!("the switch paid by invoice {}", c.invoice_id)))
        }
        _ => Ok(Some(StoredSim {
            switching: Some(SwitchClaim {
                invoice_id: invoice_id.to_owned(),
                until,
            }),
            ..sim.clone()
        })),
    }
}

/// The old SIM once the switch paid by `invoice_id` ended, with its replacement `new` (`None`: it ordered
/// nothing): naming `new` and its claim released, if the switch still holds its claim; `None` (nothing to
/// write) if the claim is not this switch's (it ran out and another switch took the SIM over: this one's
/// replacement never retires it). A payment sent again claims the SIM anew ([`SwitchStart::Replay`]): its
/// order may fail over from the SIM it named (left pending, then refused), and the SIM it delivers instead is
/// named here.
pub fn settle_switch(old: &StoredSim, invoice_id: &str, new: Option<&str>) -> Option<StoredSim> {
    let ours = old
        .switching
        .as_ref()
        .is_some_and(|c| c.invoice_id == invoice_id);
    if !ours {
        return None;
    }
    let mut settled = old.clone();
    settled.switching = None;
    if let Some(new) = new {
        settled.replaced_by = Some(new.to_owned());
    }
    Some(settled)
}

/// Carrier-side work still owed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Cleanup {
    /// CancelOrder this ICCID with the given final status.
    Cancel {
        /// The carrier.
        carrier: String,
        /// The profile.
        iccid: String,
        /// Retire it (`Unavailable`) instead of returning it to the pool.
        retire: bool,
        /// The call id of the CancelOrder already tried: sent again with it, the SM-DP+ replays its answer
        /// if it did execute it (a new call id would cancel again whatever the ICCID is by then, e.g. the
        /// same profile handed to another order). Absent in items queued by earlier builds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fci: Option<String>,
        /// The invoice whose SIM the profile was ([`sweep_may_cancel`]: its own record may still read live
        /// when marking it failed did not land). Absent in items queued by earlier builds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        invoice: Option<String>,
    },
    /// A DownloadOrder whose answer was lost: replay its call id to learn the ICCID, then cancel it.
    LostDownload {
        /// The carrier.
        carrier: String,
        /// The lost call's id.
        fci: String,
        /// The profile type ordered.
        profile_type: String,
        /// The EID ordered for.
        eid: Option<String>,
    },
}

impl Cleanup {
    /// Whether `other` is the same work: equal, or a cancel retiring the same profile for the same invoice
    /// under another call id (a failed SIM's profile is retired by each repeat of its failure notification). A
    /// retired profile is never handed out again, so whichever call runs first retires it and the other finds
    /// nothing left to cancel: one of them queued is enough. Cancels returning a profile to the pool keep their
    /// call ids apart (a new call could cancel the profile's next order).
    pub fn same_work(&self, other: &Cleanup) -> bool {
        match (self, other) {
            (
                Cleanup::Cancel {
                    carrier,
                    iccid,
                    retire: true,
                    invoice,
                    ..
                },
                Cleanup::Cancel {
                    carrier: c,
                    iccid: i,
                    retire: true,
                    invoice: inv,
                    ..
                },
            ) => (carrier, iccid, invoice) == (c, i, inv),
            _ => self == other,
        }
    }
}

/// A queued cleanup, how many sweeps have tried it and failed, and since when. Stored flat
/// (`{"kind": …, …, "tries": n, "since": t}`), so items queued before these were kept read with none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    /// The work.
    #[serde(flatten)]
    pub item: Cleanup,
    /// Sweeps that tried it and failed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tries: u32,
    /// When it first failed (unix seconds; 0: unknown, an item queued before this was kept).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub since: u64,
    /// A sweep took it and holds it until then (unix seconds; 0: free). The item stays queued while it is
    /// worked on, so a sweep that stops before it is done with it (a crash) loses nothing: once this has
    /// passed, the next sweep takes it again ([`take`], [`settle`]).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub taken_until: u64,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

/// How many sweeps must have tried a cleanup, and failed, before it may be given up (logged for an operator).
pub const MAX_CLEANUP_TRIES: u32 = 50;

/// How long a cleanup must have been failing before it may be given up: a carrier down for maintenance fails
/// every sweep of a busy hour, and its profiles must still be returned once it is back.
pub const MIN_CLEANUP_AGE_SECS: u64 = 24 * 3600;

/// Whether a cleanup that failed `tries` times, the first at `since`, is given up at `now` instead of queued
/// again: a carrier that answers nothing usable for it (a permanent 4xx, a reply the client cannot read)
/// would otherwise keep it in the queue, and in every order's sweep, for good. Both bounds must be passed: many
/// tries, over a day.
pub fn gives_up(tries: u32, since: u64, now: u64) -> bool {
    tries >= MAX_CLEANUP_TRIES && since != 0 && now >= since.saturating_add(MIN_CLEANUP_AGE_SECS)
}

/// The most items the cleanup queue holds ([`enqueue_new`]). The queue is one value every order reads and
/// several of its steps rewrite: unbounded (a carrier failing every order for an hour queued one lost download
/// per order), it grew until its writes lost their races and cleanups were dropped unseen.
pub const MAX_QUEUED: usize = 4_096;

/// The cleanup queue already holds [`MAX_QUEUED`] items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the carrier cleanup queue is full ({MAX_QUEUED} items)")]
pub struct QueueFull;

/// [`enqueue`] of new work (no tries yet), refused while the queue holds [`MAX_QUEUED`] items: the caller
/// reports it for an operator (a profile to give back by hand). Work already queued is not refused.
pub fn enqueue_new(queue: Vec<Queued>, item: &Cleanup) -> Result<Vec<Queued>, QueueFull> {
    if queue.len() >= MAX_QUEUED && !queue.iter().any(|q| q.item.same_work(item)) {
        return Err(QueueFull);
    }
    Ok(enqueue(queue, item, 0, 0))
}

/// The cleanup queue with `item` at its end after `tries` failed tries, failing since `since` (unchanged if it
/// or the same work is there, [`Cleanup::same_work`]).
pub fn enqueue(mut queue: Vec<Queued>, item: &Cleanup, tries: u32, since: u64) -> Vec<Queued> {
    if !queue.iter().any(|q| q.item.same_work(item)) {
        queue.push(Queued {
            item: item.clone(),
            tries,
            since,
            taken_until: 0,
        });
    }
    queue
}

/// Seconds a sweep holds what it took beyond its own deadline ([`sweep_lease_until`]): its last store writes,
/// and clocks of instances that disagree by a little.
pub const SWEEP_LEASE_MARGIN_SECS: u64 = 60;

/// Until when a sweep at `now` with `secs` left before its deadline holds the items and parked orders it takes.
pub fn sweep_lease_until(now: u64, secs: u64) -> u64 {
    now.saturating_add(secs)
        .saturating_add(SWEEP_LEASE_MARGIN_SECS)
}

/// Take up to `max` free items from the front of the queue, held until `lease_until`: `(queue to store,
/// taken)`. The taken items stay in the queue, marked, and are returned as marked (how [`settle`] finds
/// them); an item another sweep holds (its `taken_until` after `now`) is passed over.
///
/// A cancel without a call id (queued by a try that was not executed, or by an earlier build) is given one
/// from `fresh` here, stored with the held item: a sweep that sends it and stops before it settles (a crash, a
/// lost write) leaves the call id in the queue, so the next sweep after the hold sends the same call and the
/// SM-DP+ replays its answer instead of cancelling whatever the ICCID is by then. Once `fresh` runs out, such
/// a cancel is passed over (left free for the next sweep) rather than sent under an id nobody kept.
pub fn take(
    mut queue: Vec<Queued>,
    max: usize,
    now: u64,
    lease_until: u64,
    fresh: impl IntoIterator<Item = String>,
) -> (Vec<Queued>, Vec<Queued>) {
    let mut fresh = fresh.into_iter();
    let mut taken = Vec::new();
    for q in &mut queue {
        if taken.len() >= max {
            break;
        }
        if q.taken_until > now {
            continue;
        }
        if let Cleanup::Cancel {
            fci: fci @ None, ..
        } = &mut q.item
        {
            let Some(id) = fresh.next() else {
                continue;
            };
            *fci = Some(id);
        }
        q.taken_until = lease_until;
        taken.push(q.clone());
    }
    (queue, taken)
}

/// What a sweep did with an item it took ([`settle`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// Done (or dropped, or given up): it leaves the queue.
    Done,
    /// Not reached in the sweep's time: free again where it stands, not counted as a try.
    Untried,
    /// Still owed: this work (the item, or the cancel a lost DownloadOrder's replay just learned of) goes to
    /// the back of the queue after `tries` failed tries, failing since `since` (once: [`enqueue`]).
    Again(Cleanup, u32, u64),
}

/// The queue once the sweep that took `taken` ([`take`]) is done with it; `None` when there is nothing to write
/// because it is no longer that sweep's: another sweep took it once the hold ran out (and works it), or it left
/// the queue.
///
/// The item is found by its work, tries and since, held by this sweep or free: during a rolling upgrade an
/// earlier build's write of the queue drops every `taken_until` (a field it does not know), and the item it
/// leaves free is still this sweep's to settle (matched exactly, a done item stayed queued, done again).
pub fn settle(mut queue: Vec<Queued>, taken: &Queued, outcome: Settle) -> Option<Vec<Queued>> {
    let at = queue.iter().position(|q| {
        (&q.item, q.tries, q.since) == (&taken.item, taken.tries, taken.since)
            && (q.taken_until == taken.taken_until || q.taken_until == 0)
    })?;
    match outcome {
        Settle::Done => {
            queue.remove(at);
        }
        Settle::Untried => queue[at].taken_until = 0,
        Settle::Again(item, tries, since) => {
            queue.remove(at);
            queue = enqueue(queue, &item, tries, since);
        }
    }
    Some(queue)
}

/// The call id of the CancelOrder of the profile a lost DownloadOrder's replay (call id `lost_fci`) names: the
/// same for every replay, so a sweep that sent it and stopped before it settled (a crash, a lost write) is
/// followed by the same call, which the SM-DP+ replays, not by a second cancel of whatever the ICCID is by
/// then. Distinct from `lost_fci` (an ES2+ call id names one request) and from every fresh id (`FCI-…`); one
/// of ours (`FCI-<unix seconds>-<hex>`) keeps that form under the prefix `FCC`, anything else is kept whole
/// after `FCC-x-` (never of that form, so no two lost ids give the same cancel id).
pub fn learned_cancel_fci(lost_fci: &str) -> String {
    let ours = lost_fci.strip_prefix("FCI-").filter(|rest| {
        rest.split_once('-').is_some_and(|(secs, hex)| {
            !secs.is_empty()
                && !hex.is_empty()
                && secs.bytes().all(|b| b.is_ascii_digit())
                && hex.bytes().all(|b| b.is_ascii_hexdigit())
        })
    });
    match ours {
        Some(rest) => format!("FCC-{rest}"),
        None => format!("FCC-x-{lost_fci}"),
    }
}

/// The most SIMs one listing page covers.
pub const MAX_PAGE: u32 = 1_000;

/// Which positions of a wallet's owner index one listing page covers ([`owner_page`]).
///
/// The owner index lists a wallet's SIMs oldest first: the list kept under `owner/<address>` before the index
/// had slots (read, never written again), then one slot per SIM. Each SIM a wallet pays for takes the next
/// slot: one `increment` reserves it, one write fills it, so indexing costs the same for a wallet's first SIM
/// and its ten-thousandth, and two of its orders never wait for each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerPage {
    /// Positions in the old list.
    pub legacy: std::ops::Range<usize>,
    /// Slots (numbered from 1; empty when the page ends inside the old list).
    pub slots: std::ops::Range<u64>,
    /// The `after` of the next page; `None` after the last.
    pub next: Option<u64>,
}

/// The page of `limit` positions after the first `after` (1 to [`MAX_PAGE`]; the caller validates), of an
/// index holding `legacy_len` old entries and `slots` reserved slots.
pub fn owner_page(legacy_len: usize, slots: u64, after: u64, limit: u32) -> OwnerPage {
    let legacy_len = u64::try_from(legacy_len).unwrap_or(u64::MAX);
    let total = legacy_len.saturating_add(slots);
    let start = after.min(total);
    let end = start.saturating_add(u64::from(limit)).min(total);
    let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    let legacy = to_usize(start.min(legacy_len))..to_usize(end.min(legacy_len));
    // Position p >= legacy_len is slot p - legacy_len + 1 (slot counters are `increment`s: below 2^63).
    let slot = |p: u64| {
        p.max(legacy_len)
            .saturating_sub(legacy_len)
            .saturating_add(1)
    };
    let slots = slot(start)..slot(end);
    OwnerPage {
        legacy,
        slots,
        next: (end < total).then_some(end),
    }
}

/// The ICCIDs of one page, in index order: `legacy` is the whole old list, `page` the page, `slots` what its
/// slots hold (`None`: reserved by an order that crashed before filling it, skipped). An order resumed after a
/// crash may index its SIM again; a SIM is listed at its first place on the page and never again after the
/// old list lists it (a slot on a later page than the SIM's first slot can still repeat it).
pub fn owner_index(
    legacy: &[String],
    page: &OwnerPage,
    slots: impl IntoIterator<Item = Option<String>>,
) -> Vec<String> {
    // One set of the old list per page, not a scan of it per slot: a fleet wallet's old list may be long.
    let in_legacy: std::collections::HashSet<&str> = legacy.iter().map(String::as_str).collect();
    let mut seen = std::collections::HashSet::new();
    legacy[page.legacy.clone()]
        .iter()
        .cloned()
        .chain(
            slots
                .into_iter()
                .flatten()
                .filter(|i| !in_legacy.contains(i.as_str())),
        )
        .filter(|iccid| seen.insert(iccid.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_with_its_sweep_and_last_cancel_fits_the_payment_lease() {
        // The defaults: 60 s and 10 s calls take at most 95 s.
        assert!(fits_payment_lease(60, 10_000));
        assert!(fits_payment_lease(1, 600));
        assert!(fits_payment_lease(65, 10_000));
        // The largest budget leaves no room for the calls around it; long calls eat the budget's room.
        assert!(!fits_payment_lease(100, 10_000));
        assert!(!fits_payment_lease(60, 120_000));
        assert!(!fits_payment_lease(66, 10_000));
        // Part of a second counts as one.
        assert!(!fits_payment_lease(65, 10_001));
        // What does not fit is lowered: the budget first, long calls too.
        assert_eq!(fit_to_payment_lease(60, 10_000), (60, 10_000));
        assert_eq!(fit_to_payment_lease(100, 10_000), (65, 10_000));
        assert_eq!(fit_to_payment_lease(60, 12_000), (59, 12_000));
        // Long calls are cut to a fifth of the room, leaving the budget two of them.
        assert_eq!(fit_to_payment_lease(60, 120_000), (38, 19_000));
        assert_eq!(fit_to_payment_lease(60, 30_000), (38, 19_000));
        assert_eq!(fit_to_payment_lease(1, 120_000), (1, 19_000));
        for (budget, call) in [
            (100, 10_000),
            (60, 120_000),
            (100, 10_001),
            (1, 120_000),
            (100, 1),
        ] {
            let (b, c) = fit_to_payment_lease(budget, call);
            assert!(fits_payment_lease(b, c), "{budget} {call} -> {b} {c}");
        }
    }

    fn order(status: OrderStatus, lease_until: u64) -> Order {
        Order {
            invoice_id: "inv_1".into(),
            status,
            token: "t0".into(),
            lease_until,
            step: None,
            iccid: Some("8901".into()),
            failovers: vec![],
            error: Some("no carrier".into()),
        }
    }

    #[test]
    fn a_new_order_is_driven_with_a_lease_and_repeats_get_its_result() {
        let Claim::Drive(o) = claim(None, "inv_1", "t1", 100, 85) else {
            panic!()
        };
        assert_eq!(
            (o.token.as_str(), o.lease_until, o.status),
            ("t1", 185, OrderStatus::Ordering)
        );
        assert_eq!(
            claim(Some(&order(OrderStatus::Done, 0)), "inv_1", "t2", 1, 85),
            Claim::Done("8901".into())
        );
        assert_eq!(
            claim(Some(&order(OrderStatus::Failed, 0)), "inv_1", "t2", 1, 85),
            Claim::Failed("no carrier".into())
        );
        assert_eq!(lease_secs(60, 10), 95, "sweep, budget, two calls, slack");
    }

    #[test]
    fn a_live_order_is_busy_and_an_expired_one_is_taken_over_with_its_step() {
        let mut live = order(OrderStatus::Ordering, 200);
        live.step = Some(Step {
            carrier: "tmobile".into(),
            iccid: "8901260000000000014".into(),
            confirm_fci: "fci-1".into(),
        });
        assert_eq!(
            claim(Some(&live), "inv_1", "t2", 199, 85),
            Claim::Busy(Some("8901260000000000014".into()))
        );
        let Claim::Drive(taken) = claim(Some(&live), "inv_1", "t2", 200, 85) else {
            panic!()
        };
        assert_eq!((taken.token.as_str(), taken.lease_until), ("t2", 285));
        assert_eq!(
            Plan::resume(&taken),
            live.step.as_ref(),
            "resumes with the same call id"
        );
    }

    #[test]
    fn only_the_current_driver_writes_the_journal() {
        let o = order(OrderStatus::Ordering, 100);
        assert_eq!(
            Order::journal(Some(o.clone()), "other", |_| {}),
            Err(JournalError::TakenOver("inv_1".into()))
        );
        assert_eq!(
            Order::journal(None, "t0", |_| {}),
            Err(JournalError::Vanished)
        );
        let done = Order::journal(Some(o), "t0", |o| {
            o.complete("8902", vec!["att: pool empty".into()])
        })
        .unwrap();
        assert_eq!(
            (done.status, done.iccid.as_deref()),
            (OrderStatus::Done, Some("8902"))
        );
        let mut f = order(OrderStatus::Ordering, 0);
        f.step = Some(Step {
            carrier: "x".into(),
            iccid: "y".into(),
            confirm_fci: "z".into(),
        });
        f.fail("budget exhausted", vec![]);
        assert_eq!((f.status, f.step.is_none()), (OrderStatus::Failed, true));
    }

    #[test]
    fn a_resumed_order_fails_over_to_the_carriers_after_the_one_that_failed() {
        let plan = Plan::new(vec!["tmobile".into(), "verizon".into(), "att".into()]);
        assert_eq!(plan.after(None), ["tmobile", "verizon", "att"]);
        assert_eq!(plan.after(Some("tmobile")), ["verizon", "att"]);
        assert_eq!(plan.after(Some("att")), Vec::<String>::new());
        assert_eq!(plan.after(Some("unknown")), Vec::<String>::new());
    }

    /// A SIM record for kernel tests (also `order::parked`'s).
    pub(crate) fn sim(state: SimState) -> StoredSim {
        StoredSim {
            iccid: "8901".into(),
            carrier: "tmobile".into(),
            region: "us-west".into(),
            state,
            profile_state: None,
            activation_code: None,
            eid: None,
            roaming: RoamingPolicy::default(),
            data_mb: 100,
            invoice_id: "inv_1".into(),
            created_at: 0,
            failovers: vec![],
            replaces: None,
            replaced_by: None,
            access: crate::auth::SimAccess::default(),
            label: None,
            holds: Default::default(),
            switching: None,
            download_failure: None,
        }
    }

    #[test]
    fn what_an_order_holds_is_read_without_ordering() {
        assert_eq!(ordered(None, 0), Ordered::Nothing);
        assert_eq!(
            ordered(Some(&order(OrderStatus::Done, 0)), 0),
            Ordered::Sim("8901".into())
        );
        assert_eq!(
            ordered(Some(&order(OrderStatus::Failed, 0)), 0),
            Ordered::Nothing
        );
        let mut o = order(OrderStatus::Ordering, 100);
        o.iccid = None;
        assert_eq!(ordered(Some(&o), 99), Ordered::InProgress, "a live driver");
        assert_eq!(
            ordered(Some(&o), 100),
            Ordered::Nothing,
            "its lease is over"
        );
        o.step = Some(Step {
            carrier: "tmobile".into(),
            iccid: "8902".into(),
            confirm_fci: "f".into(),
        });
        assert_eq!(
            ordered(Some(&o), 100),
            Ordered::Sim("8902".into()),
            "allocated"
        );
    }

    #[test]
    fn an_order_replays_only_to_its_own_payer() {
        let first: crate::chain::Address = "0xa0Ee7A142d267C1f36714E4a8F75612F20a79720"
            .parse()
            .unwrap();
        let second: crate::chain::Address = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
            .parse()
            .unwrap();
        let mut ordered = sim(SimState::Active);
        ordered.access.owner = Some(first);
        assert_eq!(replay_for(&ordered, Some(&first)), Ok(()));
        let err = replay_for(&ordered, Some(&second)).unwrap_err();
        assert!(
            err.contains("another payer") && err.contains("inv_1"),
            "{err}"
        );
        // A switch orders for the old SIM's owner, which may be none (a SIM bought before owners were kept).
        assert_eq!(replay_for(&ordered, None), Ok(()));
        ordered.access.owner = None;
        assert_eq!(replay_for(&ordered, Some(&second)), Ok(()));
    }

    #[test]
    fn a_confirm_outcome_lands_only_on_a_sim_still_pending() {
        let pending = sim(SimState::Pending);
        for current in [None, Some(&pending)] {
            let AfterConfirm::Store(active) =
                after_confirm(current, &pending, Confirmation::Released("1$smdp$MID"))
            else {
                panic!()
            };
            assert_eq!(
                (
                    active.state,
                    active.profile_state,
                    active.activation_code.as_deref()
                ),
                (
                    SimState::Active,
                    Some(ProfileState::Released),
                    Some("1$smdp$MID")
                )
            );
            let AfterConfirm::Store(failed) =
                after_confirm(current, &pending, Confirmation::Refused)
            else {
                panic!()
            };
            assert_eq!(
                (failed.state, failed.activation_code),
                (SimState::Failed, None)
            );
        }

        // The owner terminated it while it was being confirmed: it stays terminated, and a profile the confirm
        // released is retired.
        let mut terminated = sim(SimState::Terminated);
        terminated.label = Some("kept".into());
        assert_eq!(
            after_confirm(Some(&terminated), &pending, Confirmation::Released("c")),
            AfterConfirm::Withdrawn {
                sim: terminated.clone(),
                retire: true
            }
        );
        assert_eq!(
            after_confirm(Some(&terminated), &pending, Confirmation::Refused),
            AfterConfirm::Withdrawn {
                sim: terminated.clone(),
                retire: false
            }
        );

        // Delivered by an earlier driver (and maybe suspended since): never written over.
        for state in [SimState::Active, SimState::Suspended] {
            let mut delivered = sim(state);
            delivered.activation_code = Some("first".into());
            for outcome in [Confirmation::Released("second"), Confirmation::Refused] {
                assert_eq!(
                    after_confirm(Some(&delivered), &pending, outcome),
                    AfterConfirm::Delivered(delivered.clone())
                );
            }
        }
        assert_eq!(
            after_confirm(
                Some(&sim(SimState::Failed)),
                &pending,
                Confirmation::Released("c")
            ),
            AfterConfirm::GivenUp
        );
    }

    /// An allocation whose record's write failed: our record, if it landed, is failed and the profile given
    /// back; over nothing (or a record it could have replaced) only given back; someone else's SIM is left alone.
    #[test]
    fn a_lost_allocation_write_fails_only_its_own_record() {
        let pending = sim(SimState::Pending);
        let (write, give_back) = after_lost_allocation(Some(&pending), &pending);
        assert_eq!(write.map(|s| s.state), Some(SimState::Failed));
        assert!(give_back);
        assert_eq!(after_lost_allocation(None, &pending), (None, true));
        let given_back = sim(SimState::Failed);
        assert_eq!(
            after_lost_allocation(Some(&given_back), &pending),
            (None, true)
        );
        let mut other = sim(SimState::Pending);
        other.invoice_id = "inv_2".into();
        for state in [SimState::Pending, SimState::Active, SimState::Terminated] {
            other.state = state;
            assert_eq!(
                after_lost_allocation(Some(&other), &pending),
                (None, false),
                "{state:?}"
            );
        }
        let mut delivered = sim(SimState::Active);
        delivered.activation_code = Some("c".into());
        assert_eq!(
            after_lost_allocation(Some(&delivered), &pending),
            (None, false)
        );
    }

    #[test]
    fn a_resumed_order_confirms_only_a_pending_sim() {
        assert_eq!(settled_before_confirm(&sim(SimState::Pending)), None);
        let terminated = sim(SimState::Terminated);
        assert_eq!(
            settled_before_confirm(&terminated),
            Some(AfterConfirm::Withdrawn {
                sim: terminated,
                retire: false
            })
        );
        assert_eq!(
            settled_before_confirm(&sim(SimState::Failed)),
            Some(AfterConfirm::GivenUp)
        );
        // Failed by its download once delivered (it holds a code): the order ended with it, never fails over
        // to a second SIM on the same invoice. One failed by its order (a dead pending profile) is given up.
        let delivered_then_failed = StoredSim {
            activation_code: Some("1$smdp.example$CODE".into()),
            download_failure: Some("8.8.5/4.10".into()),
            ..sim(SimState::Failed)
        };
        assert_eq!(
            settled_before_confirm(&delivered_then_failed),
            Some(AfterConfirm::Delivered(delivered_then_failed.clone()))
        );
        let dead_before_delivery = StoredSim {
            activation_code: None,
            ..delivered_then_failed
        };
        assert_eq!(
            settled_before_confirm(&dead_before_delivery),
            Some(AfterConfirm::GivenUp)
        );
        let active = sim(SimState::Active);
        assert_eq!(
            settled_before_confirm(&active),
            Some(AfterConfirm::Delivered(active))
        );
    }

    #[test]
    fn an_allocated_profile_is_recorded_only_over_nothing_or_a_failed_sim_of_its_carrier() {
        let pending = sim(SimState::Pending);
        assert!(may_record_allocation(None, &pending));
        let mut given_back = sim(SimState::Failed);
        given_back.invoice_id = "inv_0".into();
        assert!(may_record_allocation(Some(&given_back), &pending));
        // Someone else's SIM, live or once delivered (its payer may hold its token): never written over.
        for state in [
            SimState::Pending,
            SimState::Active,
            SimState::Suspended,
            SimState::Terminated,
        ] {
            let mut theirs = sim(state);
            theirs.invoice_id = "inv_0".into();
            assert!(!may_record_allocation(Some(&theirs), &pending), "{state:?}");
        }
        // A failed one that was delivered: its payer holds its token (and its account is closed).
        let mut delivered = given_back.clone();
        delivered.activation_code = Some("1$smdp.example$CODE".into());
        assert!(!may_record_allocation(Some(&delivered), &pending));
        let mut download_failed = given_back.clone();
        download_failed.download_failure = Some("8.8.5/4.10".into());
        assert!(!may_record_allocation(Some(&download_failed), &pending));
        // Another carrier's, even failed.
        given_back.carrier = "verizon".into();
        assert!(!may_record_allocation(Some(&given_back), &pending));
    }

    #[test]
    fn the_sweep_cancels_only_profiles_no_live_sim_of_another_order_holds() {
        assert!(sweep_may_cancel(None, None));
        for state in [SimState::Failed, SimState::Terminated] {
            assert!(sweep_may_cancel(Some(&sim(state)), None), "{state:?}");
        }
        for state in [SimState::Pending, SimState::Active, SimState::Suspended] {
            let live = sim(state);
            assert!(!sweep_may_cancel(Some(&live), None), "{state:?}");
            assert!(
                !sweep_may_cancel(Some(&live), Some("inv_other")),
                "{state:?}"
            );
            // Its own order's record: pending, its failed mark did not land (cancelled); delivered since by a
            // later attempt of the same order (never cancelled).
            assert_eq!(
                sweep_may_cancel(Some(&live), Some(&live.invoice_id)),
                state == SimState::Pending,
                "{state:?}"
            );
        }
    }

    #[test]
    fn progress_moves_only_a_sim_in_service_or_on_its_way() {
        use crate::esim::es2::ExecutionStatus::ExecutedSuccess as Ok;
        let mut s = sim(SimState::Active);
        s.profile_state = Some(ProfileState::Released);
        assert_eq!(progress_after(&s, 4, Ok), Some(ProfileState::Installed));
        s.state = SimState::Suspended;
        assert_eq!(progress_after(&s, 3, Ok), Some(ProfileState::Downloaded));
        for dead in [SimState::Terminated, SimState::Failed] {
            s.state = dead;
            assert_eq!(progress_after(&s, 4, Ok), None, "{dead:?}");
        }
    }

    fn notification(
        status: crate::esim::es2::ExecutionStatus,
        code: Option<&crate::esim::es2::StatusCode>,
    ) -> crate::esim::es2::NotificationPointStatus {
        crate::esim::es2::FunctionExecutionStatus {
            status,
            status_code_data: code.map(|c| crate::esim::es2::StatusCodeData {
                subject_code: c.subject.to_string(),
                reason_code: c.reason.to_string(),
                subject_identifier: None,
                message: None,
            }),
        }
    }

    /// A terminal download failure (the SM-DP+'s retry, confirmation-code or order-time limit) fails a SIM in
    /// service whose profile never installed, and keeps its code; repeated, it writes nothing more.
    #[test]
    fn a_terminal_download_failure_fails_a_sim_whose_profile_never_installed() {
        use crate::esim::es2::ExecutionStatus::Failed;
        use crate::esim::es2::StatusCode as C;
        for code in [
            C::DOWNLOAD_ATTEMPTS_EXHAUSTED,
            C::CC_ATTEMPTS_EXHAUSTED,
            C::ORDER_EXPIRED,
        ] {
            for (state, profile) in [
                (SimState::Active, Some(ProfileState::Released)),
                (SimState::Active, Some(ProfileState::Error)),
                (SimState::Suspended, Some(ProfileState::Downloaded)),
                (SimState::Active, None),
            ] {
                let s = StoredSim {
                    profile_state: profile,
                    activation_code: Some("1$smdp.example$CODE".into()),
                    ..sim(state)
                };
                assert!(!s.owes_back());
                let failed = after_progress(&s, 3, &notification(Failed, Some(&code)))
                    .expect("a terminal failure changes the record");
                assert_eq!(
                    (failed.state, failed.profile_state),
                    (SimState::Failed, Some(ProfileState::Error)),
                    "{code} {state:?} {profile:?}"
                );
                assert_eq!(failed.download_failure.as_deref(), Some(&*code.to_string()));
                assert!(failed.owes_back());
                assert_eq!(
                    StoredSim {
                        download_failure: None,
                        state,
                        profile_state: profile,
                        ..failed.clone()
                    },
                    s,
                    "nothing else changes"
                );
                // Sent again (or any later report): a failed SIM takes nothing.
                assert_eq!(
                    after_progress(&failed, 3, &notification(Failed, Some(&code))),
                    None
                );
                let ok = notification(crate::esim::es2::ExecutionStatus::ExecutedSuccess, None);
                assert_eq!(after_progress(&failed, 4, &ok), None);
            }
        }
    }

    /// A pending SIM's order was left pending after its confirm ran at the SM-DP+: the device's terminal failure
    /// is kept on the record (still pending, not owed back: nothing was delivered), once, and the order resumed
    /// later refuses the profile its confirm's replay calls released.
    #[test]
    fn a_terminal_failure_on_a_pending_sim_stops_its_resumed_order_delivering_it() {
        use crate::esim::es2::ExecutionStatus::Failed;
        use crate::esim::es2::StatusCode as C;
        let pending = sim(SimState::Pending);
        for code in [C::DOWNLOAD_ATTEMPTS_EXHAUSTED, C::ORDER_EXPIRED] {
            let kept = after_progress(&pending, 3, &notification(Failed, Some(&code)))
                .expect("the failure is kept");
            assert_eq!(
                (
                    kept.state,
                    kept.profile_state,
                    kept.download_failure.as_deref()
                ),
                (
                    SimState::Pending,
                    Some(ProfileState::Error),
                    Some(&*code.to_string())
                )
            );
            assert!(!kept.owes_back(), "nothing was delivered");
            assert_eq!(
                after_progress(&kept, 3, &notification(Failed, Some(&code))),
                None,
                "sent again, it writes nothing"
            );
            let AfterConfirm::Store(after) =
                after_confirm(Some(&kept), &pending, Confirmation::Released("1$smdp$MID"))
            else {
                panic!()
            };
            assert_eq!(
                (after.state, after.activation_code, after.download_failure),
                (SimState::Failed, None, None),
                "not delivered; its profile may be handed out again once given back"
            );
        }
        // A retryable failure on a pending SIM still changes nothing (the device tries again).
        assert_eq!(
            after_progress(&pending, 3, &notification(Failed, None)),
            None
        );
    }

    /// The resumed order stores the dead profile's own record failed (its `download_failure` kept, no code): it
    /// was never delivered, so it owes nothing back, however often the SM-DP+ sends its terminal notification
    /// again (the order failed over, and its invoice may have paid for another carrier's SIM since). Before, the
    /// record read as a delivered SIM failed by its download, and the repeat owed the whole invoice back.
    #[test]
    fn a_dead_pending_profile_failed_by_its_order_owes_nothing_back() {
        use crate::esim::es2::ExecutionStatus::Failed;
        let expired = notification(Failed, Some(&crate::esim::es2::StatusCode::ORDER_EXPIRED));
        let pending = sim(SimState::Pending);
        let kept = after_progress(&pending, 3, &expired).expect("the failure is kept");
        // As the resume confirms it: the stored record is its own pending one.
        let AfterConfirm::Store(failed) =
            after_confirm(Some(&kept), &kept, Confirmation::Released("1$smdp$MID"))
        else {
            panic!()
        };
        assert_eq!(
            (
                failed.state,
                failed.activation_code.as_deref(),
                failed.download_failure.as_deref()
            ),
            (SimState::Failed, None, Some("8.8.5/4.10"))
        );
        assert!(!failed.owes_back(), "never delivered");
        assert_eq!(after_progress(&failed, 3, &expired), None);
    }

    /// A terminal failure after the profile installed changes nothing; a
    /// retryable failure keeps today's rule (Error, the SIM in service, a later success moves on).
    #[test]
    fn other_failures_keep_the_sim_in_service() {
        use crate::esim::es2::ExecutionStatus::{ExecutedSuccess, Failed};
        let exhausted = notification(
            Failed,
            Some(&crate::esim::es2::StatusCode::DOWNLOAD_ATTEMPTS_EXHAUSTED),
        );
        let installed = StoredSim {
            profile_state: Some(ProfileState::Installed),
            ..sim(SimState::Active)
        };
        assert_eq!(after_progress(&installed, 4, &exhausted), None);
        let released = StoredSim {
            profile_state: Some(ProfileState::Released),
            ..sim(SimState::Active)
        };
        for retryable in [
            notification(Failed, None),
            notification(
                Failed,
                Some(&crate::esim::es2::StatusCode::EID_OUT_OF_RANGE),
            ),
        ] {
            let after = after_progress(&released, 3, &retryable).unwrap();
            assert_eq!(
                (
                    after.state,
                    after.profile_state,
                    after.download_failure.as_deref()
                ),
                (SimState::Active, Some(ProfileState::Error), None)
            );
            assert!(!after.owes_back());
            let retried = after_progress(&after, 4, &notification(ExecutedSuccess, None)).unwrap();
            assert_eq!(retried.profile_state, Some(ProfileState::Installed));
        }
        // A SIM its order failed owes nothing back here (its invoice may have paid for another SIM).
        assert!(!sim(SimState::Failed).owes_back());
    }

    /// A callback that arrives before the confirm is recorded (the record still pending, or live without a
    /// profile state) is not thrown away: a success at point 3 or 4 moves it as if from Released (the SM-DP+
    /// never resends a notification we answered 204). Failures and points 1, 2 change nothing on it.
    #[test]
    fn progress_before_the_confirm_is_recorded_moves_as_if_released() {
        use crate::esim::es2::ExecutionStatus::{ExecutedSuccess as Ok, Failed};
        for state in [SimState::Pending, SimState::Active, SimState::Suspended] {
            let s = sim(state);
            assert_eq!(s.profile_state, None);
            assert_eq!(
                progress_after(&s, 3, Ok),
                Some(ProfileState::Downloaded),
                "{state:?}"
            );
            assert_eq!(
                progress_after(&s, 4, Ok),
                Some(ProfileState::Installed),
                "{state:?}"
            );
            for point in [1, 2, 5, 101] {
                assert_eq!(progress_after(&s, point, Ok), None, "{state:?} {point}");
            }
            for point in [1, 3, 4] {
                assert_eq!(progress_after(&s, point, Failed), None, "{state:?} {point}");
            }
        }
        for dead in [SimState::Terminated, SimState::Failed] {
            assert_eq!(progress_after(&sim(dead), 4, Ok), None, "{dead:?}");
        }
    }

    /// The confirm's write keeps a profile state a callback recorded first: the driver's copy of the record
    /// (pending, no profile state) must not put an installed profile back to Released.
    #[test]
    fn a_confirm_recorded_after_the_devices_callback_keeps_its_profile_state() {
        let pending = sim(SimState::Pending);
        for ahead in [ProfileState::Downloaded, ProfileState::Installed] {
            let mut current = pending.clone();
            current.profile_state = Some(ahead);
            let AfterConfirm::Store(active) = after_confirm(
                Some(&current),
                &pending,
                Confirmation::Released("1$smdp$MID"),
            ) else {
                panic!()
            };
            assert_eq!(
                (active.state, active.profile_state),
                (SimState::Active, Some(ahead))
            );
            assert_eq!(active.activation_code.as_deref(), Some("1$smdp$MID"));
        }
        // A failed attempt reported first is not "further along": the confirm's Released stands.
        let mut current = pending.clone();
        current.profile_state = Some(ProfileState::Error);
        let AfterConfirm::Store(active) =
            after_confirm(Some(&current), &pending, Confirmation::Released("c"))
        else {
            panic!()
        };
        assert_eq!(active.profile_state, Some(ProfileState::Released));
    }

    #[test]
    fn an_installed_replacement_retires_only_the_sim_that_names_it() {
        let mut old = sim(SimState::Active);
        old.replaced_by = Some("8902".into());
        old.access.token = Some(crate::auth::TokenState {
            generation: 0,
            hash: Default::default(),
        });
        old.holds.balance_epoch = 3;
        let mut new = sim(SimState::Active);
        new.iccid = "8902".into();
        let retired = retire_replaced(&old, &new).unwrap();
        assert_eq!(
            (
                retired.state,
                retired.access.token,
                retired.holds.balance_epoch
            ),
            (SimState::Terminated, None, 3)
        );
        new.state = SimState::Suspended;
        assert!(retire_replaced(&old, &new).is_some());
        // A withdrawn or failed replacement, or one that never took over, leaves the old SIM in service.
        for state in [SimState::Terminated, SimState::Failed, SimState::Pending] {
            new.state = state;
            assert_eq!(retire_replaced(&old, &new), None, "{state:?}");
        }
        // A later switch names another replacement (or none): a late report of this one changes nothing.
        new.state = SimState::Active;
        for other in [Some("8903".to_owned()), None] {
            old.replaced_by = other;
            assert_eq!(retire_replaced(&old, &new), None);
        }
        // Installed before its switch named it: its invoice's claim names it (another invoice's does not).
        for (invoice, retires) in [("inv_1", true), ("inv_other", false)] {
            old.switching = Some(SwitchClaim {
                invoice_id: invoice.into(),
                until: 0,
            });
            assert_eq!(retire_replaced(&old, &new).is_some(), retires, "{invoice}");
        }
        old.switching = None;
        // Already out of service: nothing to write.
        old.replaced_by = Some("8902".into());
        old.state = SimState::Terminated;
        assert_eq!(retire_replaced(&old, &new), None);
    }

    #[test]
    fn agent_labels() {
        assert_eq!(
            parse_agent_label("pump-17:eu.west_2"),
            Ok("pump-17:eu.west_2".into())
        );
        assert!(parse_agent_label("").is_err());
        assert!(parse_agent_label("has space").is_err());
        assert!(parse_agent_label(&"a".repeat(65)).is_err());
    }

    #[test]
    fn switching_rules() {
        let to_verizon = SwitchTarget::Carrier("verizon".into());
        assert!(check_switch(&sim(SimState::Active), &to_verizon).is_ok());
        assert!(
            check_switch(
                &sim(SimState::Suspended),
                &SwitchTarget::Region("eu-central".into())
            )
            .is_ok()
        );
        for state in [SimState::Pending, SimState::Terminated, SimState::Failed] {
            let e = check_switch(&sim(state), &to_verizon).unwrap_err();
            assert!(
                matches!(e, SwitchError::NotSwitchable { .. }) && e.field().is_none(),
                "{e}"
            );
        }
        let e = check_switch(
            &sim(SimState::Active),
            &SwitchTarget::Carrier("tmobile".into()),
        )
        .unwrap_err();
        assert_eq!(
            (e.to_string().as_str(), e.field()),
            ("SIM is already on tmobile", Some("carrier"))
        );
        let e = check_switch(
            &sim(SimState::Active),
            &SwitchTarget::Region("us-west".into()),
        )
        .unwrap_err();
        assert_eq!(e.field(), Some("region"));
        let mut replaced = sim(SimState::Active);
        replaced.replaced_by = Some("8902".into());
        assert!(matches!(
            check_switch(&replaced, &to_verizon),
            Err(SwitchError::AlreadyReplaced { .. })
        ));
    }

    #[test]
    fn a_switch_paid_again_replays_and_a_dead_replacement_frees_the_sim() {
        let to_verizon = SwitchTarget::Carrier("verizon".into());
        let mut old = sim(SimState::Active);
        old.replaced_by = Some("8902".into());
        let mut next = sim(SimState::Pending);
        next.iccid = "8902".into();
        next.invoice_id = "inv_switch".into();
        // The payment that ordered the replacement, sent again: its order is driven again.
        assert_eq!(
            start_switch(&old, Some(&next), &to_verizon, "inv_switch"),
            Ok(SwitchStart::Replay)
        );
        // The same, even if the old SIM has since been taken out of service by the new one's installation.
        let mut retired = old.clone();
        retired.state = SimState::Terminated;
        assert_eq!(
            start_switch(&retired, Some(&next), &to_verizon, "inv_switch"),
            Ok(SwitchStart::Replay)
        );
        // Another invoice meets a replacement on its way.
        assert!(matches!(
            start_switch(&old, Some(&next), &to_verizon, "inv_other"),
            Err(SwitchError::AlreadyReplaced { .. })
        ));
        // A replacement that never took over does not block the SIM for good.
        for dead in [SimState::Terminated, SimState::Failed] {
            next.state = dead;
            assert_eq!(
                start_switch(&old, Some(&next), &to_verizon, "inv_other"),
                Ok(SwitchStart::Order)
            );
        }
        // Without a replacement, the usual rules.
        assert_eq!(
            start_switch(&sim(SimState::Active), None, &to_verizon, "inv_x"),
            Ok(SwitchStart::Order)
        );
        assert!(start_switch(&sim(SimState::Pending), None, &to_verizon, "inv_x").is_err());
    }

    #[test]
    fn one_switch_at_a_time_claims_a_sim_and_names_its_replacement() {
        let old = sim(SimState::Active);
        let claimed = claim_switch(&old, None, "inv_s1", 100, 95)
            .unwrap()
            .unwrap();
        assert_eq!(
            claimed.switching,
            Some(SwitchClaim {
                invoice_id: "inv_s1".into(),
                until: 195
            })
        );
        // The same payment again holds it already (its claim renewed); another is refused while it holds.
        assert_eq!(claim_switch(&claimed, None, "inv_s1", 100, 95), Ok(None));
        let renewed = claim_switch(&claimed, None, "inv_s1", 150, 95)
            .unwrap()
            .unwrap();
        assert_eq!(renewed.switching.unwrap().until, 245);
        let e = claim_switch(&claimed, None, "inv_s2", 194, 95).unwrap_err();
        assert!(
            matches!(e, SwitchError::AlreadyReplaced { .. }) && e.to_string().contains("inv_s1"),
            "{e}"
        );
        // A claim never settled (its driver stopped) runs out.
        let taken = claim_switch(&claimed, None, "inv_s2", 195, 95)
            .unwrap()
            .unwrap();
        assert_eq!(taken.switching.unwrap().invoice_id, "inv_s2");
        // A switch that finished after the SIM was checked: refused.
        let mut named = old.clone();
        named.replaced_by = Some("8902".into());
        assert!(claim_switch(&named, None, "inv_s2", 100, 95).is_err());
        assert!(
            claim_switch(&named, Some("8902"), "inv_s2", 100, 95)
                .unwrap()
                .is_some(),
            "checked with its (dead) replacement"
        );

        // A SIM that left service since it was checked.
        let mut gone = old.clone();
        gone.state = SimState::Terminated;
        assert!(matches!(
            claim_switch(&gone, None, "inv_s2", 100, 95),
            Err(SwitchError::NotSwitchable { .. })
        ));

        // Settled: the replacement named and the claim released; by its claim's holder only.
        let done = settle_switch(&claimed, "inv_s1", Some("8903")).unwrap();
        assert_eq!(
            (done.replaced_by.as_deref(), done.switching.as_ref()),
            (Some("8903"), None)
        );
        assert_eq!(settle_switch(&done, "inv_s1", Some("8903")), None);
        assert_eq!(settle_switch(&claimed, "inv_s2", Some("8904")), None);
        let released = settle_switch(&claimed, "inv_s1", None).unwrap();
        assert_eq!((released.replaced_by, released.switching), (None, None));
        // The same payment sent again claims the SIM anew: a replay answering the SIM already named releases
        // its claim; one whose order failed over from the SIM it named (left pending, then refused) names the
        // SIM it delivered instead.
        let replayed = claim_switch(&done, Some("8903"), "inv_s1", 300, 95)
            .unwrap()
            .unwrap();
        let same = settle_switch(&replayed, "inv_s1", Some("8903")).unwrap();
        assert_eq!(
            (same.replaced_by.as_deref(), same.switching.as_ref()),
            (Some("8903"), None)
        );
        let failed_over = settle_switch(&replayed, "inv_s1", Some("8905")).unwrap();
        assert_eq!(
            (failed_over.replaced_by.as_deref(), failed_over.switching),
            (Some("8905"), None)
        );
        // Stored without a claim, the record reads and writes as before.
        let json = serde_json::to_value(&old).unwrap();
        assert!(json.get("switching").is_none(), "{json}");
    }

    /// A taken item stays queued, held, until its sweep settles it: done, free again where it stood (not
    /// reached), or to the back as still owed. A sweep that never settles it (a crash) loses nothing: after
    /// the hold the next sweep takes it again, and the first one, late, then writes nothing.
    #[test]
    fn a_taken_cleanup_stays_queued_until_its_sweep_settles_it() {
        let cancel = |iccid: &str| Cleanup::Cancel {
            carrier: "att".into(),
            iccid: iccid.into(),
            retire: false,
            fci: Some(format!("FCI-1-{iccid}")),
            invoice: None,
        };
        let take = |q, max, now, lease_until| take(q, max, now, lease_until, None::<String>);
        let (a, b, c) = (cancel("1"), cancel("2"), cancel("3"));
        let q = [&a, &b, &c]
            .into_iter()
            .fold(vec![], |q, item| enqueue(q, item, 0, 0));
        let (stored, taken) = take(q, 2, 10, 100);
        assert_eq!(taken.len(), 2);
        assert!(taken.iter().all(|t| t.taken_until == 100));
        // Another sweep meanwhile passes over the held items.
        let (_, other) = take(stored.clone(), 9, 50, 200);
        assert_eq!(other.iter().map(|q| &q.item).collect::<Vec<_>>(), vec![&c]);
        let items = |q: &[Queued]| {
            q.iter()
                .map(|q| (q.item.clone(), q.tries, q.taken_until))
                .collect::<Vec<_>>()
        };
        // Done: it leaves. Not reached: free where it stands. Failed: to the back, counted.
        let done = settle(stored.clone(), &taken[0], Settle::Done).unwrap();
        assert_eq!(items(&done), vec![(b.clone(), 0, 100), (c.clone(), 0, 0)]);
        let untried = settle(stored.clone(), &taken[0], Settle::Untried).unwrap();
        assert_eq!(items(&untried)[0], (a.clone(), 0, 0));
        let again = settle(stored.clone(), &taken[0], Settle::Again(a.clone(), 1, 10)).unwrap();
        assert_eq!(
            items(&again),
            vec![(b.clone(), 0, 100), (c.clone(), 0, 0), (a.clone(), 1, 0)]
        );
        // The sweep crashed: after the hold another takes them again; the first one's late settle is refused.
        let (retaken, second) = take(stored, 9, 100, 400);
        assert_eq!(second.len(), 3);
        assert_eq!(settle(retaken.clone(), &taken[0], Settle::Done), None);
        assert_eq!(
            settle(retaken, &second[0], Settle::Done).map(|q| q.len()),
            Some(2)
        );
        assert_eq!(
            sweep_lease_until(1_000, 30),
            1_000 + 30 + SWEEP_LEASE_MARGIN_SECS
        );
    }

    /// New work is refused once the queue holds `MAX_QUEUED` items (the caller reports it); work already queued,
    /// and a sweep's re-queue of what it took, still go in.
    #[test]
    fn a_full_cleanup_queue_refuses_new_work_only() {
        let item = |n: usize| Cleanup::LostDownload {
            carrier: "att".into(),
            fci: format!("FCI-{n}"),
            profile_type: "p".into(),
            eid: None,
        };
        let mut q = Vec::new();
        for n in 0..MAX_QUEUED {
            q = enqueue_new(q, &item(n)).expect("room");
        }
        assert_eq!(q.len(), MAX_QUEUED);
        assert_eq!(enqueue_new(q.clone(), &item(MAX_QUEUED)), Err(QueueFull));
        assert_eq!(
            enqueue_new(q.clone(), &item(7)).map(|q| q.len()),
            Ok(MAX_QUEUED)
        );
        let (held, taken) = take(q, 1, 10, 100, None::<String>);
        let again = settle(held, &taken[0], Settle::Again(item(0), 1, 10)).expect("its own");
        assert_eq!(again.len(), MAX_QUEUED);
        assert!(again.iter().any(|q| q.item == item(0) && q.tries == 1));
    }

    /// During a rolling upgrade an earlier build's write of the queue drops `taken_until`: the sweep that took the
    /// item still settles it (before, matched exactly, it found nothing and a done item stayed queued, done
    /// again). One another sweep took since is still not its to settle.
    #[test]
    fn a_taken_cleanup_settles_after_an_earlier_build_dropped_its_hold() {
        let item = |iccid: &str| Cleanup::Cancel {
            carrier: "att".into(),
            iccid: iccid.into(),
            retire: false,
            fci: Some(format!("FCI-1-{iccid}")),
            invoice: None,
        };
        let q = enqueue(enqueue(vec![], &item("1"), 2, 5), &item("2"), 0, 0);
        let (stored, taken) = take(q, 9, 10, 100, None::<String>);
        let dropped: Vec<Queued> = stored
            .iter()
            .map(|q| Queued {
                taken_until: 0,
                ..q.clone()
            })
            .collect();
        let done = settle(dropped.clone(), &taken[0], Settle::Done).unwrap();
        assert_eq!(done, vec![dropped[1].clone()]);
        let again = settle(dropped.clone(), &taken[0], Settle::Again(item("1"), 3, 5)).unwrap();
        assert_eq!(
            again.iter().map(|q| (&q.item, q.tries)).collect::<Vec<_>>(),
            vec![(&item("2"), 0), (&item("1"), 3)]
        );
        // Free again, then taken by another sweep: not this one's any more.
        let (retaken, _) = take(dropped, 9, 20, 300, None::<String>);
        assert_eq!(settle(retaken, &taken[0], Settle::Done), None);
        // Work, tries and since must still match.
        let other = vec![Queued {
            tries: 3,
            taken_until: 0,
            ..taken[0].clone()
        }];
        assert_eq!(settle(other, &taken[0], Settle::Done), None);
    }

    /// A cancel queued without a call id is given one as it is taken, kept with the held item: a sweep that sent
    /// it and stopped before settling leaves the same call for the next (before, each try made a new one, and a
    /// redo cancelled again). The taken copy carries it too, so it still settles; with no id left it is passed
    /// over, not sent under an id nobody kept.
    #[test]
    fn a_cancel_without_a_call_id_gets_one_kept_with_the_held_item() {
        let cancel = |iccid: &str, fci: Option<&str>| Cleanup::Cancel {
            carrier: "att".into(),
            iccid: iccid.into(),
            retire: false,
            fci: fci.map(str::to_owned),
            invoice: None,
        };
        let lost = Cleanup::LostDownload {
            carrier: "att".into(),
            fci: "FCI-1-1".into(),
            profile_type: "p".into(),
            eid: None,
        };
        let q = [
            cancel("1", None),
            lost.clone(),
            cancel("2", Some("FCI-1-2")),
            cancel("3", None),
        ]
        .iter()
        .fold(vec![], |q, item| enqueue(q, item, 0, 0));
        let ids = ["FCI-9-a".to_owned()];
        let (stored, taken) = take(q, 9, 10, 100, ids);
        assert_eq!(
            taken.iter().map(|q| q.item.clone()).collect::<Vec<_>>(),
            vec![
                cancel("1", Some("FCI-9-a")),
                lost,
                cancel("2", Some("FCI-1-2"))
            ]
        );
        assert_eq!(stored[..3], taken[..]);
        assert_eq!(
            (&stored[3].item, stored[3].taken_until),
            (&cancel("3", None), 0)
        );
        let done = settle(stored, &taken[0], Settle::Done).unwrap();
        assert_eq!(done.len(), 3);
        // Not reached: free again, its call id kept for the next try (never sent, so still new to the SM-DP+).
        let (stored, taken) = take(done, 1, 200, 300, ["FCI-9-b".to_owned()]);
        let untried = settle(stored, &taken[0], Settle::Untried).unwrap();
        assert_eq!(
            (&untried[0].item, untried[0].taken_until),
            (&taken[0].item, 0)
        );
    }

    /// The cancel a lost DownloadOrder's replay learns goes under a call id derived from the lost call's: the same
    /// on every replay (a redo after a stopped sweep replays it), never the lost call's own or a fresh one.
    #[test]
    fn a_learned_cancel_has_one_call_id_per_lost_download() {
        let fresh = crate::esim::es2::FunctionCallId::new("FCI", 1_764_000_000, 0x2a).to_string();
        let id = learned_cancel_fci(&fresh);
        assert_eq!(id, "FCC-1764000000-2a");
        assert_eq!(learned_cancel_fci(&fresh), id);
        assert_ne!(id, fresh);
        assert!(!id.starts_with("FCI-"));
        assert_ne!(learned_cancel_fci("FCI-1764000000-2b"), id);
        // Ids not of our form are kept whole, apart from any of ours.
        assert_eq!(learned_cancel_fci("legacy-7"), "FCC-x-legacy-7");
        assert_ne!(learned_cancel_fci("1764000000-2a"), id);
        assert_ne!(learned_cancel_fci("FCI-x-1"), learned_cancel_fci("x-1"));
    }

    #[test]
    fn cleanups_queue_once_and_are_taken_from_the_front() {
        let a = Cleanup::Cancel {
            carrier: "att".into(),
            iccid: "1".into(),
            retire: false,
            fci: Some("FCI-1".into()),
            invoice: None,
        };
        let b = Cleanup::LostDownload {
            carrier: "att".into(),
            fci: "f".into(),
            profile_type: "p".into(),
            eid: None,
        };
        let add = |q: Vec<Queued>, item: &Cleanup, tries| enqueue(q, item, tries, 0);
        let q = add(add(add(vec![], &a, 0), &b, 3), &a, 1);
        assert_eq!(q.len(), 2);
        let take = |q, max, now, lease_until| take(q, max, now, lease_until, None::<String>);
        let (rest, taken) = take(q, 1, 10, 100);
        let queued = |item: &Cleanup, tries, taken_until| Queued {
            item: item.clone(),
            tries,
            since: 0,
            taken_until,
        };
        assert_eq!(
            (rest, taken),
            (
                vec![queued(&a, 0, 100), queued(&b, 3, 0)],
                vec![queued(&a, 0, 100)]
            )
        );
        assert_eq!(take(vec![], 4, 10, 100), (vec![], vec![]));
        // Given up only after many tries over a day (a carrier down for an hour fails every sweep of it).
        let day = MIN_CLEANUP_AGE_SECS;
        assert!(gives_up(MAX_CLEANUP_TRIES, 1_000, 1_000 + day));
        assert!(!gives_up(MAX_CLEANUP_TRIES - 1, 1_000, 1_000 + day));
        assert!(!gives_up(MAX_CLEANUP_TRIES, 1_000, 1_000 + day - 1));
        assert!(!gives_up(u32::MAX, 0, u64::MAX), "since unknown: not yet");
        // Stored flat; the counts are left out at zero and read as zero from items queued before they were kept.
        let flat = serde_json::to_value(Queued {
            since: 7,
            ..queued(&b, 3, 0)
        })
        .unwrap();
        assert_eq!(
            (
                flat["kind"].as_str(),
                flat["tries"].as_u64(),
                flat["since"].as_u64()
            ),
            (Some("lost_download"), Some(3), Some(7))
        );
        let fresh = serde_json::to_value(queued(&a, 0, 0)).unwrap();
        assert!(
            fresh.get("tries").is_none()
                && fresh.get("since").is_none()
                && fresh.get("taken_until").is_none(),
            "{fresh}"
        );
        let before: Queued = serde_json::from_value(serde_json::json!(
            {"kind": "cancel", "carrier": "c", "iccid": "i", "retire": false, "fci": "F"}
        ))
        .unwrap();
        assert_eq!((before.since, before.tries, before.taken_until), (0, 0, 0));
        let json = serde_json::to_value(Cleanup::Cancel {
            carrier: "c".into(),
            iccid: "i".into(),
            retire: true,
            fci: Some("FCI-7".into()),
            invoice: Some("inv_7".into()),
        })
        .unwrap();
        assert_eq!(json["kind"], "cancel");
        assert_eq!(json["fci"], "FCI-7");
        assert_eq!(json["invoice"], "inv_7");
        // An item queued before call ids were kept still reads (and is sent with a new one).
        let old: Cleanup = serde_json::from_value(
            serde_json::json!({"kind": "cancel", "carrier": "c", "iccid": "i", "retire": false}),
        )
        .unwrap();
        assert!(matches!(
            old,
            Cleanup::Cancel {
                fci: None,
                invoice: None,
                ..
            }
        ));
    }

    #[test]
    fn owner_pages_cover_the_old_list_then_the_slots() {
        let page = |legacy, slots, after, limit| owner_page(legacy, slots, after, limit);
        let p = |legacy: std::ops::Range<usize>, slots: std::ops::Range<u64>, next| OwnerPage {
            legacy,
            slots,
            next,
        };
        // Slots only: 5 slots, pages of 2.
        assert_eq!(page(0, 5, 0, 2), p(0..0, 1..3, Some(2)));
        assert_eq!(page(0, 5, 2, 2), p(0..0, 3..5, Some(4)));
        assert_eq!(page(0, 5, 4, 2), p(0..0, 5..6, None));
        // Past the end, or nothing at all: an empty page, the last.
        assert!(page(0, 5, 9, 2).slots.is_empty());
        assert_eq!(page(0, 5, 9, 2).next, None);
        assert!(page(0, 0, 0, 100).slots.is_empty());
        // An old list of 3, then 4 slots: a page inside the list, one across the boundary, one in the slots.
        assert_eq!(page(3, 4, 0, 2), p(0..2, 1..1, Some(2)));
        assert_eq!(page(3, 4, 2, 3), p(2..3, 1..3, Some(5)));
        assert_eq!(page(3, 4, 5, 100), p(3..3, 3..5, None));
        // Huge cursors and limits do not overflow.
        assert_eq!(page(3, 4, u64::MAX, MAX_PAGE).next, None);
        assert_eq!(
            page(usize::MAX, u64::MAX, u64::MAX - 1, MAX_PAGE).next,
            None
        );
        let top = u64::try_from(i64::MAX).unwrap();
        assert_eq!(page(0, top, top - 1, MAX_PAGE), p(0..0, top..top + 1, None));
    }

    #[test]
    fn the_owner_index_keeps_first_places_and_skips_empty_slots() {
        let s = |v: &str| v.to_owned();
        let legacy = vec![s("8901"), s("8902")];
        let whole = owner_page(2, 5, 0, MAX_PAGE);
        assert_eq!(
            owner_index(
                &legacy,
                &whole,
                [
                    Some(s("8903")),
                    None,
                    Some(s("8902")),
                    Some(s("8904")),
                    Some(s("8903"))
                ],
            ),
            vec![s("8901"), s("8902"), s("8903"), s("8904")],
            "old list first; an unfilled slot skipped; a re-indexed SIM at its first place"
        );
        let second = owner_page(2, 5, 3, 2);
        assert_eq!(
            owner_index(&legacy, &second, [None, Some(s("8902"))]),
            Vec::<String>::new(),
            "a slot repeating the old list is skipped on any page"
        );
        assert_eq!(
            owner_index(&[], &owner_page(0, 2, 0, 10), [Some(s("b")), Some(s("a"))]),
            vec![s("b"), s("a")],
            "slot order, not sorted"
        );
    }

    /// A failed SIM's profile is retired by each repeat of its failure notification: a retiring cancel of the
    /// same profile for the same invoice is queued once, whatever call id each try used; a cancel returning a
    /// profile to the pool, another profile's or another invoice's, stays apart.
    #[test]
    fn a_retiring_cancel_is_queued_once_whatever_its_call_id() {
        let cancel =
            |retire: bool, fci: Option<&str>, iccid: &str, invoice: &str| Cleanup::Cancel {
                carrier: "tmobile".into(),
                iccid: iccid.into(),
                retire,
                fci: fci.map(Into::into),
                invoice: Some(invoice.into()),
            };
        let first = cancel(true, Some("FCI-1"), "8901", "inv-1");
        let mut q = enqueue(vec![], &first, 0, 0);
        for again in [
            cancel(true, Some("FCI-2"), "8901", "inv-1"),
            cancel(true, None, "8901", "inv-1"),
        ] {
            assert!(first.same_work(&again));
            q = enqueue(q, &again, 0, 0);
        }
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].item, first, "the first try's call id is kept");
        for other in [
            cancel(false, Some("FCI-2"), "8901", "inv-1"),
            cancel(true, Some("FCI-2"), "8902", "inv-1"),
            cancel(true, Some("FCI-2"), "8901", "inv-2"),
        ] {
            assert!(!first.same_work(&other), "{other:?}");
        }
        let pool = cancel(false, Some("FCI-1"), "8901", "inv-1");
        assert!(!pool.same_work(&cancel(false, Some("FCI-2"), "8901", "inv-1")));
        assert!(pool.same_work(&pool.clone()));
    }
}
