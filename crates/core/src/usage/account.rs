//! A SIM's metered account: credits (the activation's data and every top-up, each once per invoice) against
//! the bytes its accepted receipts used. The account record changes rarely (a credit, a suspension, closing),
//! so it is a cell updated with [`Account::credit`] / [`Account::exhausted`] / [`Account::close`]; usage is
//! the hot path and never touches it: it is one atomic counter (`meter/<iccid>/used`, bytes) that only grows.
//! So `remaining = credited − used` never needs a read-modify-write of a shared value.
//!
//! Invariants:
//! - **A credit lands once per invoice** ([`Account::credit`] refuses a second one for the same invoice), and a
//!   closed account takes none (a top-up racing a terminate is refused before money is kept; a SIM terminated
//!   before it had an account gets a closed one, [`Account::closed_unopened`], so this holds for it too). A
//!   switch's credits the new SIM refuses after the old account gave them up are owed back by the old account
//!   ([`Account::bounce`]).
//! - **Units**: data in bytes, `1 MB = 1 000 000 bytes`, `1 KB = 1 000 bytes` (decimal, as carriers bill);
//!   money in micro-USDC.
//! - **Unused data is refunded at the rate it was bought**: used bytes are taken from the oldest credit first,
//!   so what is left sits in the newest credits, and each is refunded `paid × unused ÷ bytes`, rounded down.
//! - **A SIM's balance holds count in its own epochs** ([`Account::hold`]): dispatch applies a SIM's hold only
//!   if its epoch is newer than the last one it applied to that SIM, so a hold for one SIM never carries another
//!   account's epoch. A SIM switched away draws on the new SIM's balance ([`Account::forward`]) and is held
//!   with it, but with its own account's next epoch ([`Account::follow`]); taking its data back (kernel
//!   `usage::failed`, `Account::take_back`) decides its hold afresh (released if that leaves a balance) at an
//!   epoch past the failed replacement's too, which an earlier build's holds for this SIM carried.
//! - **The record stays small however often a SIM tops up**: a credit used up entirely has nothing left to
//!   refund or move, so [`Account::credit`] folds such credits out of `credits` into [`Spent`] (their bytes,
//!   and a 128-bit digest of each invoice, which is all "once per invoice" needs). Every receipt batch reads
//!   the account; without folding it would grow by a full credit record (~300 bytes) per top-up.

use serde::{Deserialize, Serialize};

use crate::esim::iccid::Iccid;
use crate::esim::plmn::RoamingPolicy;
use crate::ids::{CarrierId, DataMb};
use crate::money::UsdcAmount;
use crate::usage::receipt::SimTerms;

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Bytes in a megabyte.
pub const BYTES_PER_MB: u64 = 1_000_000;
/// Bytes in a kilobyte.
pub const BYTES_PER_KB: u64 = 1_000;
/// The last bytes of a balance, never granted (100 KB: Twilio's metering granularity, and enough for a few
/// telemetry messages): with this many left or fewer, a quota request is answered with a top-up 402
/// ([`decide_quota`]), so the network stops before the balance runs out, not after.
pub const LOW_WATER_BYTES: u64 = 100_000;
/// The quota granted when the request names none (1 MB).
pub const DEFAULT_GRANT_BYTES: u64 = 1_000_000;
/// The top-up sizes offered in a low-balance 402 (MB).
pub const TOP_UP_SIZES_MB: [u32; 3] = [10, 50, 100];

/// The whole MB a top-up must bring for a SIM with `remaining` bytes (negative: in debt) of which `reserved`
/// are held by grants, to be granted a full default grant ([`DEFAULT_GRANT_BYTES`]) above the low-water mark
/// after it ([`decide_quota`]), so the next quota request is granted quota worth having rather than answered
/// with another 402 (or a grant of a few bytes: a fresh-user trial, whose 29 MB top-up of a SIM in debt left a
/// 500-byte grant). At least 1; at most [`DataMb::MAX`].
pub fn top_up_needed_mb(remaining: i64, reserved: u64) -> u32 {
    let short =
        i128::from(LOW_WATER_BYTES) + i128::from(DEFAULT_GRANT_BYTES) + i128::from(reserved)
            - i128::from(remaining);
    let mb = short
        .max(1)
        .unsigned_abs()
        .div_ceil(u128::from(BYTES_PER_MB));
    u32::try_from(mb).unwrap_or(u32::MAX).min(DataMb::MAX)
}

/// Bytes in `mb` megabytes.
pub fn mb_to_bytes(mb: DataMb) -> u64 {
    u64::from(mb.get()) * BYTES_PER_MB
}

/// Why a credit is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CreditKind {
    /// The data bought with the activation.
    Activation,
    /// A paid top-up.
    TopUp,
}

/// One credit: what an invoice bought.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credit {
    /// The paying invoice.
    pub invoice: String,
    /// Activation or top-up.
    pub kind: CreditKind,
    /// Bytes credited.
    pub bytes: u64,
    /// What the data part cost (micro-USDC, fees excluded): the refund rate.
    pub paid: UsdcAmount,
    /// Who paid (refunds go back there).
    pub payer: String,
    /// The settlement transaction.
    pub tx: String,
    /// The network it was paid on (CAIP-2).
    pub network: String,
    /// When (unix seconds).
    pub at: u64,
}

/// The refund of one credit's unused part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundShare {
    /// The credit's invoice.
    pub invoice: String,
    /// Unused bytes of that credit.
    pub bytes: u64,
    /// Money owed back.
    pub amount: UsdcAmount,
    /// To whom.
    pub payer: String,
    /// The transaction that paid it.
    pub tx: String,
    /// Its network.
    pub network: String,
    /// None of the credit's bytes were used: the share is the credit whole (kernel `usage::failed` owes the
    /// whole payment of a failed SIM's own invoice only then).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub untouched: bool,
}

/// Credits used up entirely, folded out of an account's `credits` (oldest first: usage takes the oldest credit
/// first, so only a prefix of the credits can be used up).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spent {
    /// Their bytes.
    pub bytes: u64,
    /// The digest of each one's invoice ([`invoice_digest`]): an invoice credits an account once, even after
    /// its credit was folded.
    pub invoices: Vec<String>,
}

impl Spent {
    fn is_empty(&self) -> bool {
        self.bytes == 0 && self.invoices.is_empty()
    }
}

/// The first 128 bits of `keccak256(invoice)`, hex: how a folded credit's invoice is remembered.
pub fn invoice_digest(invoice: &str) -> String {
    alloy_primitives::hex::encode(&alloy_primitives::keccak256(invoice.as_bytes())[..16])
}

/// A SIM's account record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// The SIM.
    pub iccid: Iccid,
    /// Its carrier (receipts must come from this carrier's signer). `None` for an account closed before anything
    /// opened it ([`Account::closed_unopened`]): no receipt is metered against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carrier: Option<CarrierId>,
    /// Its roaming policy (receipts from other networks are disputed).
    pub roaming: RoamingPolicy,
    /// Credits not used up yet, oldest first.
    pub credits: Vec<Credit>,
    /// Credits used up, folded out of `credits`.
    #[serde(default, skip_serializing_if = "Spent::is_empty")]
    pub spent: Spent,
    /// Suspended by metering because the balance ran out (resumed by the next credit).
    #[serde(default)]
    pub suspended_for_balance: bool,
    /// How often `suspended_for_balance` changed: the epoch of the balance hold dispatch applies
    /// ([`Account::hold`]), so a suspension and a resumption arriving out of order still end as the last one.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub hold_epoch: u64,
    /// Closed (the SIM was terminated): the refunds of unused data, fixed once.
    #[serde(default)]
    pub closed: Option<Vec<RefundShare>>,
    /// Switched away: the SIM the unused data moved to and the credits it moved as (fixed once). A moved
    /// account is also closed, with no refunds (the refund value moved with the data).
    #[serde(default)]
    pub moved_to: Option<(Iccid, Vec<Credit>)>,
    /// Being closed ([`Account::begin_close`]): takes no credit and suspends nothing while the close reads the
    /// used counter, so every charge made before that read is in the refunds, none after it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub closing: bool,
    /// A moved account: the used-counter value up to which its usage is settled. Usage the old SIM reports
    /// after the move draws on the new SIM's balance: [`Account::forward`] hands each byte beyond this mark to
    /// the new SIM once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarded_up_to: Option<u64>,
    /// The SIM whose data moved here (a switch). What it still reports is handed on here by the batches that
    /// charge it; a batch that was charging it while the switch moved its data charged after the move's own
    /// hand-on, so a charge or balance read of *this* account hands on what is pending too
    /// ([`Account::collects_from`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<Iccid>,
    /// When [`Account::transfer_out`] moved the data (unix seconds): the SIM is retired from then on
    /// ([`Account::terms`]). Accounts moved before this field existed take it from the moved credits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_at: Option<u64>,
    /// When the SIM was ordered (its record's `created_at`, unix seconds), fixed at opening: its receipts
    /// may not end long before it ([`Account::terms`]). Not the first credit's time: a credit can land long
    /// after delivery (a resumed payment), and spent credits are folded away. `None` for accounts opened
    /// before this field existed, until their next credit or move fills it in (not checked meanwhile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opened_at: Option<u64>,
    /// Opened since receipts are claimed per SIM (`crate::usage::claim`): none of its receipts was ever
    /// claimed under a legacy key, so none is looked up there. `false` for accounts opened before (their
    /// records lack it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub claims_per_sim: bool,
    /// When a terminate closed the account ([`Account::terminate`], unix seconds): the SIM is retired from then
    /// on ([`Account::terms`]), as a switched-away one is. Also set when the owner terminates a SIM whose data
    /// a switch moved away: its data then never comes back to it ([`Account::returnable_to`]). `None` for
    /// accounts closed before this field existed (their receipts stay accepted) and for those closed otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_at: Option<u64>,
    /// The used counter a terminate's refunds counted as used ([`Account::terminate`]: the counter then, with
    /// the carrier's grants still outstanding): the payer paid for usage up to it, and no further. Usage the
    /// carrier reports beyond it is real, but nobody pays for it: the facilitator absorbs it
    /// ([`Account::payer_share`]). `None` for an account not closed by a terminate (or closed before this field
    /// existed): every byte reported is the payer's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_used: Option<u64>,
    /// A moved account whose data went to another carrier: the rates its later usage is handed on at
    /// ([`LateRate`], fixed by the move). `None` on the same carrier, for a carrier the price book no longer
    /// prices, and for accounts moved before this field existed: byte for byte.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late_rate: Option<LateRate>,
}

/// What one [`Account::forward_from`] handed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandedOn {
    /// The SIM it draws on.
    pub to: Iccid,
    /// Bytes added to that SIM's used counter (its carrier's bytes, [`LateRate`]).
    pub bytes: u64,
    /// The old SIM's own bytes they stand for (its counter's range).
    pub own: u64,
}

impl HandedOn {
    /// Of `part` of the bytes handed on (the new SIM's units: those a terminate of it left unpaid), the old
    /// SIM's own bytes they stand for, rounded up (absorbed, in the payer's favour), at most [`HandedOn::own`].
    pub fn own_part(&self, part: u64) -> u64 {
        if self.bytes == 0 {
            return 0;
        }
        let own = (u128::from(part.min(self.bytes)) * u128::from(self.own))
            .div_ceil(u128::from(self.bytes));
        u64::try_from(own).unwrap_or(u64::MAX).min(self.own)
    }
}

/// How a switched-away SIM's usage reported after the move draws on the new SIM when that SIM is on another
/// carrier: by its value at the old carrier's rate, as the bytes that value buys at the new carrier's (the moved
/// balance is revalued so too, [`revalue`]). The worth is counted from the move's mark, not hand-on by hand-on,
/// so rounding down loses at most one byte in all, never one per batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LateRate {
    /// The old SIM's used counter the worth counts from (the move's mark, [`Account::forward`]).
    pub from: u64,
    /// The old carrier's rate (milli-micro-USDC per MB).
    pub old: u64,
    /// The new carrier's rate (same unit, not 0).
    pub new: u64,
}

impl LateRate {
    /// The rates of a move from a carrier priced `old` to one priced `new` (milli-micro-USDC per MB), counted
    /// from the old SIM's counter at `from`: `None` (byte for byte) if they are equal or `new` is 0.
    pub fn between_carriers(from: u64, old: u64, new: u64) -> Option<Self> {
        (old != new && new != 0).then_some(Self { from, old, new })
    }

    /// `bytes` of the old carrier's data as bytes of the new carrier's, rounded down.
    pub fn worth(&self, bytes: u64) -> u64 {
        let b = u128::from(bytes) * u128::from(self.old) / u128::from(self.new.max(1));
        u64::try_from(b).unwrap_or(u64::MAX)
    }

    /// The new carrier's bytes worth the old SIM's usage between its counters `a` and `b` (`a ≤ b`), as the
    /// difference of what each counter is worth from the mark.
    pub fn handed_on(&self, a: u64, b: u64) -> u64 {
        let at = |used: u64| self.worth(used.saturating_sub(self.from));
        at(b).saturating_sub(at(a))
    }
}

/// Why an account refused a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// The SIM was terminated: no more credits.
    #[error("SIM {0} is terminated; its account takes no more credit")]
    Closed(String),
    /// The invoice already credited this account (not an error for the caller: it is idempotence).
    #[error("invoice {0} already credited this account")]
    AlreadyCredited(String),
    /// The account was opened for another carrier (a stale or forged open).
    #[error("account {iccid} belongs to carrier {actual}, not {claimed}")]
    CarrierMismatch {
        /// SIM.
        iccid: String,
        /// Claimed.
        claimed: String,
        /// Actual.
        actual: String,
    },
}

impl Account {
    /// A new account with its first credit, for a SIM ordered at `ordered_at`.
    pub fn open(
        iccid: Iccid,
        carrier: CarrierId,
        roaming: RoamingPolicy,
        first: Credit,
        ordered_at: u64,
    ) -> Self {
        Self {
            iccid,
            carrier: Some(carrier),
            roaming,
            credits: vec![first],
            spent: Spent::default(),
            suspended_for_balance: false,
            hold_epoch: 0,
            closed: None,
            moved_to: None,
            closing: false,
            forwarded_up_to: None,
            replaces: None,
            moved_at: None,
            opened_at: Some(ordered_at),
            claims_per_sim: true,
            closed_at: None,
            closed_used: None,
            late_rate: None,
        }
    }

    /// A new account opened with credits moved from another SIM ([`Account::transfer_out`]), for a SIM
    /// ordered at `ordered_at`.
    pub fn opened_with(
        iccid: Iccid,
        carrier: CarrierId,
        roaming: RoamingPolicy,
        credits: Vec<Credit>,
        ordered_at: u64,
    ) -> Self {
        Self {
            iccid,
            carrier: Some(carrier),
            roaming,
            credits,
            spent: Spent::default(),
            suspended_for_balance: false,
            hold_epoch: 0,
            closed: None,
            moved_to: None,
            closing: false,
            forwarded_up_to: None,
            replaces: None,
            moved_at: None,
            opened_at: Some(ordered_at),
            claims_per_sim: true,
            closed_at: None,
            closed_used: None,
            late_rate: None,
        }
    }

    /// The account of a SIM terminated before any credit or move opened one (its close found nothing): closed,
    /// with no refunds, so a credit or a switch's move that arrives later is refused (a top-up paid meanwhile is
    /// owed back; a move leaves the balance on the old SIM) instead of opening a live account on a terminated
    /// SIM. It has no carrier and meters nothing ([`Account::terms`] is `None`).
    pub fn closed_unopened(iccid: Iccid) -> Self {
        Self {
            iccid,
            carrier: None,
            roaming: RoamingPolicy::default(),
            credits: Vec::new(),
            spent: Spent::default(),
            suspended_for_balance: false,
            hold_epoch: 0,
            closed: Some(Vec::new()),
            moved_to: None,
            closing: false,
            forwarded_up_to: None,
            replaces: None,
            moved_at: None,
            opened_at: None,
            claims_per_sim: true,
            closed_at: None,
            closed_used: None,
            late_rate: None,
        }
    }

    /// Whether this is an account closed before it was opened ([`Account::closed_unopened`]).
    pub fn is_unopened(&self) -> bool {
        self.carrier.is_none()
    }

    /// What receipts for this SIM are checked against (kernel `usage::receipt::verify`): its carrier and
    /// roaming, when it was ordered and when a switch retired it. `None` for an account closed before it was
    /// opened (no SIM metered here, as if there were no account).
    pub fn terms(&self) -> Option<SimTerms<'_>> {
        Some(SimTerms {
            carrier: self.carrier.as_ref()?,
            roaming: &self.roaming,
            opened_at: self.opened_at,
            retired_at: self
                .moved_to
                .as_ref()
                .and_then(|(_, moved)| self.moved_at.or_else(|| moved.iter().map(|c| c.at).max()))
                .or(self.closed_at),
        })
    }

    /// Move what is left at `used` to the SIM `to` (a switch): closes this account with no refunds and
    /// returns the credits the new account takes — each credit's unused bytes with its unused value, under its
    /// own invoice (so the new account still takes each invoice once, and a later refund pays each once).
    /// Fixed by the first call: a repeat for the same `to` returns the same credits; a closed account, or one
    /// moved elsewhere, refuses.
    ///
    /// `used` may be older than the account (read before a credit folded used-up credits away): the move is
    /// made at no less than the folded bytes, which the counter had reached when they were folded. Below them,
    /// the bytes in between would count twice: as used by the folded credits (the move takes the rest whole),
    /// and again as usage after the move ([`Account::forward`] hands on everything beyond the mark).
    pub fn transfer_out(
        &mut self,
        to: &Iccid,
        used: u64,
        now: u64,
    ) -> Result<Vec<Credit>, AccountError> {
        if let Some((dest, moved)) = &self.moved_to {
            return if dest == to {
                Ok(moved.clone())
            } else {
                Err(AccountError::Closed(self.iccid.to_string()))
            };
        }
        if self.closed.is_some() {
            return Err(AccountError::Closed(self.iccid.to_string()));
        }
        let used = used.max(self.spent.bytes);
        let moved: Vec<Credit> = unused_parts(&self.credits, self.unspent_use(used))
            .into_iter()
            .map(|(c, left, value)| Credit {
                bytes: left,
                paid: value,
                at: now,
                ..c.clone()
            })
            .collect();
        self.moved_to = Some((to.clone(), moved.clone()));
        self.moved_at = Some(now);
        self.closed = Some(Vec::new());
        // Marked at no more than was credited: an overdrawn account's debt (usage beyond its credits, real
        // usage) is handed on to the new SIM by the move's own `forward`, as usage there, not left behind on a
        // closed account (a paid switch wiped an overdrawn SIM's debt).
        self.forwarded_up_to = Some(used.min(self.credited()));
        Ok(moved)
    }

    /// [`Account::transfer_out`], to a SIM on another carrier whose rate and this SIM's carrier's are `rates`
    /// (`(old, new)`, milli-micro-USDC per MB; `None` if either is unknown): the first move also fixes the
    /// rates this SIM's later usage is handed on at ([`Account::late_rate`]).
    pub fn transfer_out_priced(
        &mut self,
        to: &Iccid,
        used: u64,
        now: u64,
        rates: Option<(u64, u64)>,
    ) -> Result<Vec<Credit>, AccountError> {
        let first = self.moved_to.is_none();
        let moved = self.transfer_out(to, used, now)?;
        if first {
            self.late_rate = rates
                .zip(self.forwarded_up_to)
                .and_then(|((old, new), from)| LateRate::between_carriers(from, old, new));
        }
        Ok(moved)
    }

    /// Take the credits a switch moved here from the SIM `from` ([`Account::transfer_out`]), each invoice once,
    /// with this account's used counter at `used`: `true` if any landed (a repeat adds nothing). A closed or
    /// closing account refuses credits it does not hold yet ([`AccountError::Closed`]), and nothing changes.
    /// The account remembers `from` ([`Account::collects_from`]).
    pub fn take_moved(
        &mut self,
        from: &Iccid,
        moved: &[Credit],
        used: u64,
    ) -> Result<bool, AccountError> {
        let fresh: Vec<&Credit> = moved
            .iter()
            .filter(|c| !self.has_credit(&c.invoice))
            .collect();
        if !fresh.is_empty() && (self.closed.is_some() || self.closing) {
            return Err(AccountError::Closed(self.iccid.to_string()));
        }
        self.replaces = Some(from.clone());
        for c in &fresh {
            self.credit((*c).clone(), used)?;
        }
        Ok(!fresh.is_empty())
    }

    /// The SIM `to` refused the credits this account moved to it ([`Account::transfer_out`]): it was terminated
    /// after the move began. The moved credits are owed back instead, as this account's refunds (each at the
    /// value it moved with), so their value is neither lost nor kept; the account stays closed (moved). Fixed by
    /// the first call: a repeat returns the same shares. `None` if this account's data did not move to `to`.
    ///
    /// Refunds already fixed are kept, whoever fixed them: a SIM terminated since its switch, whose replacement
    /// failed, owes the moved credits less what it used since the move ([`Account::take_back`]); a bounce after
    /// that (the switch's move resumed, the failed replacement refusing it) owes no more.
    pub fn bounce(&mut self, to: &Iccid) -> Option<Vec<RefundShare>> {
        let (dest, moved) = self.moved_to.as_ref()?;
        if dest != to {
            return None;
        }
        if let Some(fixed) = self.closed.as_ref().filter(|c| !c.is_empty()) {
            return Some(fixed.clone());
        }
        let shares: Vec<RefundShare> = moved
            .iter()
            .filter(|c| c.paid != UsdcAmount::ZERO)
            .map(|c| RefundShare {
                invoice: c.invoice.clone(),
                bytes: c.bytes,
                amount: c.paid,
                payer: c.payer.clone(),
                tx: c.tx.clone(),
                network: c.network.clone(),
                untouched: false,
            })
            .collect();
        self.closed = Some(shares.clone());
        Some(shares)
    }

    /// The SIM whose pending usage a charge or balance read of this account hands on first: the one it
    /// replaced, unless this account moved on itself (then its own batches forward to its successor).
    ///
    /// Not once this account is closed: its close collected what was pending (a close reads the counter after
    /// it), and what the old SIM reports later is handed on by the old SIM's own batches, which learn what of
    /// it the close left unpaid ([`Account::payer_share`]), rather than by a balance read nobody reports.
    pub fn collects_from(&self) -> Option<&Iccid> {
        self.replaces
            .as_ref()
            .filter(|_| self.moved_to.is_none() && self.closed.is_none())
    }

    /// Usage reached `used` on a moved account: the bytes beyond what was already handed on, and the SIM they
    /// draw on now (the mark advances, so each byte is handed on once, whoever calls first: the batch that
    /// charged it, a later batch, or the switch itself right after the move). `None` when there is nothing to
    /// hand on, or the account was not moved (or moved before the mark existed).
    ///
    /// On another carrier the bytes handed on are what the old SIM's usage is worth there ([`LateRate`]): while
    /// that is nothing yet (a few bytes on a much cheaper old carrier), the mark stays, so nothing is lost.
    pub fn forward(&mut self, used: u64) -> Option<(Iccid, u64)> {
        self.forward_from(used).map(|h| (h.to, h.bytes))
    }

    /// [`Account::forward`], with the old SIM's own bytes the hand-on covers (its counter's range from the
    /// mark to `used`): what its payer was charged for them, in this SIM's units.
    pub fn forward_from(&mut self, used: u64) -> Option<HandedOn> {
        let (to, _) = self.moved_to.as_ref()?;
        let mark = self.forwarded_up_to.as_mut()?;
        let own = used.checked_sub(*mark).filter(|b| *b > 0)?;
        let bytes = match &self.late_rate {
            Some(rate) => rate.handed_on(*mark, used),
            None => own,
        };
        if bytes == 0 {
            return None;
        }
        *mark = used;
        Some(HandedOn {
            to: to.clone(),
            bytes,
            own,
        })
    }

    /// Start closing (a terminate): from now on no credit lands and nothing is suspended for balance; the
    /// caller then reads the used counter and [`Account::close`]s at it. `false` if it was closing or closed.
    pub fn begin_close(&mut self) -> bool {
        if self.closing || self.closed.is_some() {
            return false;
        }
        self.closing = true;
        true
    }

    /// Bytes credited in all.
    pub fn credited(&self) -> u64 {
        self.credits
            .iter()
            .fold(self.spent.bytes, |sum, c| sum.saturating_add(c.bytes))
    }

    /// The part of `used` taken from `credits` (the rest used up the folded ones).
    fn unspent_use(&self, used: u64) -> u64 {
        used.saturating_sub(self.spent.bytes)
    }

    /// Fold the credits `used` has used up entirely into [`Spent`].
    fn fold_spent(&mut self, used: u64) {
        let mut left = self.unspent_use(used);
        let spent = self
            .credits
            .iter()
            .take_while(|c| {
                let used_up = c.bytes <= left;
                if used_up {
                    left -= c.bytes;
                }
                used_up
            })
            .count();
        for c in self.credits.drain(..spent) {
            self.spent.bytes = self.spent.bytes.saturating_add(c.bytes);
            self.spent.invoices.push(invoice_digest(&c.invoice));
        }
    }

    /// Bytes left after `used` (negative: usage reported beyond the credit, which the carrier cap prevents
    /// except for reports already in flight).
    pub fn remaining(&self, used: u64) -> i128 {
        i128::from(self.credited()) - i128::from(used)
    }

    /// Whether `invoice` already credited this account.
    pub fn has_credit(&self, invoice: &str) -> bool {
        self.credits.iter().any(|c| c.invoice == invoice)
            || (!self.spent.invoices.is_empty()
                && self.spent.invoices.contains(&invoice_digest(invoice)))
    }

    /// Add `credit` (once per invoice), folding the credits already used up. With `used` (the counter's
    /// current value, or any earlier one: it only grows): `true` if the SIM was suspended for want of balance
    /// and now has some, so it should be resumed (the flag is cleared).
    pub fn credit(&mut self, credit: Credit, used: u64) -> Result<bool, AccountError> {
        // An invoice that credited the account before it closed is a repeat, not a credit refused (which would
        // owe its whole payment back although its data was credited).
        if self.has_credit(&credit.invoice) {
            return Err(AccountError::AlreadyCredited(credit.invoice));
        }
        if self.closed.is_some() || self.closing {
            return Err(AccountError::Closed(self.iccid.to_string()));
        }
        self.fold_spent(used);
        self.credits.push(credit);
        Ok(self.resume(used))
    }

    /// The balance grew (a credit): with the used counter at `used` (any value read
    /// before: it only grows), `true` if the SIM was suspended for want of balance and now has some, so it
    /// should be resumed (the flag is cleared, with the next hold epoch).
    pub(crate) fn resume(&mut self, used: u64) -> bool {
        let resume = self.suspended_for_balance && self.remaining(used) > 0;
        if resume {
            self.suspended_for_balance = false;
            self.hold_epoch += 1;
        }
        resume
    }

    /// A moved account's SIM still reports usage, which draws on the SIM it moved to ([`Account::forward`]):
    /// it is held for want of balance while that SIM's balance is out (`held`). The change counts in this
    /// account's own hold epochs ([`Account::hold`]: dispatch orders a SIM's holds by its own epochs, never by
    /// another SIM's), past `past` too: the new SIM's epoch, which holds sent for this SIM before carried (a
    /// SIM record holding one of those would otherwise ignore this account's next epochs). `true` if it
    /// changed; `false` for an account that did not move.
    pub fn follow(&mut self, held: bool, past: u64) -> bool {
        if self.moved_to.is_none() || self.suspended_for_balance == held {
            return false;
        }
        self.suspended_for_balance = held;
        self.hold_epoch = self.hold_epoch.max(past) + 1;
        true
    }

    /// Usage reached `used`: `true` if the SIM must now be suspended (balance exhausted, not suspended by us
    /// already, not closed); the flag is set so exactly one caller suspends it.
    pub fn exhausted(&mut self, used: u64) -> bool {
        if self.closed.is_some()
            || self.closing
            || self.suspended_for_balance
            || self.remaining(used) > 0
        {
            return false;
        }
        self.suspended_for_balance = true;
        self.hold_epoch += 1;
        true
    }

    /// The balance hold as metering last decided it: `(suspended, epoch)` for dispatch (kernel
    /// `esim::balance_hold`), or `None` before the first decision.
    pub fn hold(&self) -> Option<(bool, u64)> {
        (self.hold_epoch > 0).then_some((self.suspended_for_balance, self.hold_epoch))
    }

    /// The hold a receipt batch that names this SIM but charges it nothing (all duplicates: a carrier resending
    /// a batch whose hold was not applied) reports again: the SIM's own account held for balance, open and not
    /// moved away. A batch that charges it decides anew ([`Account::exhausted`]); a stale hold is harmless
    /// (dispatch keeps the latest epoch).
    pub fn standing_hold(&self) -> Option<(bool, u64)> {
        let open = self.closed.is_none() && !self.closing && self.moved_to.is_none();
        self.hold().filter(|(held, _)| *held && open)
    }

    /// A terminate: [`Account::close`] at `used` (which counts the grants still outstanding, kernel
    /// `usage::grant::close_at`), the SIM retired at `now` by the first close: its receipts for windows starting
    /// more than a day later are refused (what it reports until then is charged to the closed account, within
    /// the bytes its refunds left out).
    ///
    /// The first close also fixes `used` as what the payer paid for ([`Account::closed_used`]): what the
    /// carrier reports beyond it is absorbed, not charged ([`Account::payer_share`]).
    pub fn terminate(&mut self, used: u64, now: u64) -> Vec<RefundShare> {
        if self.closed.is_none() || (self.moved_to.is_some() && self.closed_at.is_none()) {
            self.closed_at = Some(now);
        }
        if self.closed.is_none() {
            self.closed_used = Some(used);
        }
        self.close(used)
    }

    /// Of `bytes` a batch added to this SIM's used counter, taking it to `used` (the `increment`'s answer, so
    /// the batch's bytes are the counter's range `used - bytes .. used`, which no other batch shares), the
    /// bytes the payer pays for: all of them, unless a terminate's close fixed what it counted as used
    /// ([`Account::closed_used`]), when only the part of the range at or below it. The rest is carrier usage
    /// reported after the close beyond what the refunds left out: the facilitator absorbs it.
    pub fn payer_share(&self, used: u64, bytes: u64) -> u64 {
        let Some(paid_up_to) = self.closed_used else {
            return bytes;
        };
        let from = used.saturating_sub(bytes);
        used.min(paid_up_to).saturating_sub(from)
    }

    /// The used counter `used` as the balance counts it: capped at what a terminate's close counted
    /// ([`Account::closed_used`]), since usage beyond it was not the payer's.
    pub fn counted(&self, used: u64) -> u64 {
        self.closed_used.map_or(used, |c| used.min(c))
    }

    /// Close the account at `used`: the refunds of unused data (fixed by the first close; a repeat returns
    /// the same shares).
    pub fn close(&mut self, used: u64) -> Vec<RefundShare> {
        if let Some(done) = &self.closed {
            return done.clone();
        }
        let shares = unused_shares(&self.credits, self.unspent_use(used));
        self.closed = Some(shares.clone());
        self.closing = false;
        shares
    }
}

/// Take `used` bytes from the oldest credits first: each credit with bytes left, those bytes and their value at
/// the credit's own rate (rounded down).
fn unused_parts(credits: &[Credit], used: u64) -> Vec<(&Credit, u64, UsdcAmount)> {
    let mut to_take = used;
    let mut out = Vec::new();
    for c in credits {
        let taken = to_take.min(c.bytes);
        to_take -= taken;
        let left = c.bytes - taken;
        if left == 0 {
            continue;
        }
        let amount = u128::from(c.paid.micros()) * u128::from(left) / u128::from(c.bytes);
        out.push((
            c,
            left,
            UsdcAmount::from_micros(u64::try_from(amount).unwrap_or(u64::MAX)),
        ));
    }
    out
}

/// The credits a switch moved ([`Account::transfer_out`]) as the new SIM holds them when its carrier is another:
/// each keeps its value (`paid`, the refund rate) and gets the bytes that value buys there (`bytes_for`,
/// rounded down; one that buys none is dropped). `None` if a rate is unknown. On the same carrier they move as
/// they are.
pub fn revalue(
    moved: Vec<Credit>,
    same_carrier: bool,
    bytes_for: impl Fn(UsdcAmount) -> Option<u64>,
) -> Option<Vec<Credit>> {
    if same_carrier {
        return Some(moved);
    }
    let mut out = Vec::with_capacity(moved.len());
    for c in moved {
        let bytes = bytes_for(c.paid)?;
        if bytes > 0 {
            out.push(Credit { bytes, ..c });
        }
    }
    Some(out)
}

/// Take `used` bytes from the oldest credits first; refund what each credit has left at its own rate.
pub fn unused_shares(credits: &[Credit], used: u64) -> Vec<RefundShare> {
    let mut out = Vec::new();
    for (c, left, amount) in unused_parts(credits, used) {
        if amount == UsdcAmount::ZERO {
            continue;
        }
        out.push(RefundShare {
            invoice: c.invoice.clone(),
            bytes: left,
            amount,
            payer: c.payer.clone(),
            tx: c.tx.clone(),
            network: c.network.clone(),
            untouched: left == c.bytes,
        });
    }
    out
}

/// The answer to a quota request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    /// Grant this many bytes.
    Grant {
        /// Bytes granted (`≤ remaining`).
        bytes: u64,
        /// Bytes left before the grant is used.
        remaining: u64,
    },
    /// At the low-water mark or below: top up first (HTTP 402).
    Low {
        /// Bytes left (0 when overdrawn).
        remaining: u64,
    },
}

/// Decide a quota request for `requested` bytes (`None`: [`DEFAULT_GRANT_BYTES`]) with `remaining` bytes
/// left: at [`LOW_WATER_BYTES`] or below (or on a suspended-for-balance SIM) it is a top-up 402; otherwise the
/// grant is what was asked for, capped at what is left above the low-water mark (those last bytes are never
/// granted: before, a grant could take all that was left, so the network ran the balance to zero).
pub fn decide_quota(remaining: i128, requested: Option<u64>) -> Quota {
    let left = u64::try_from(remaining.max(0)).unwrap_or(u64::MAX);
    let grantable = left.saturating_sub(LOW_WATER_BYTES);
    if grantable == 0 {
        return Quota::Low { remaining: left };
    }
    let want = requested.unwrap_or(DEFAULT_GRANT_BYTES).max(1);
    Quota::Grant {
        bytes: want.min(grantable),
        remaining: left,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credit(invoice: &str, mb: u64, paid: u64) -> Credit {
        Credit {
            invoice: invoice.into(),
            kind: CreditKind::TopUp,
            bytes: mb * BYTES_PER_MB,
            paid: UsdcAmount::from_micros(paid),
            payer: "0xpayer".into(),
            tx: format!("0xtx{invoice}"),
            network: "eip155:31337".into(),
            at: 1,
        }
    }

    fn account() -> Account {
        Account::open(
            Iccid::with_check_digit("894401000000000001").unwrap(),
            CarrierId::parse("tmobile").unwrap(),
            RoamingPolicy::default(),
            credit("inv_a", 10, 30_000),
            0,
        )
    }

    #[test]
    fn moved_credits_keep_their_value_on_another_carrier() {
        let moved = vec![credit("inv_a", 10, 30_000), credit("inv_b", 1, 0)];
        // $0.0035/MB on the new carrier: 30 000 micro-USDC buy 8.571428 MB; a credit worth nothing is dropped.
        let rate = 3_500_000u128;
        let bytes_for =
            |v: UsdcAmount| Some((u128::from(v.micros()) * 1_000_000_000 / rate) as u64);
        let got = revalue(moved.clone(), false, bytes_for).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].bytes, got[0].paid), (8_571_428, moved[0].paid));
        assert_eq!(got[0].invoice, "inv_a");
        // Same carrier: as they are. Unknown rate: no move.
        assert_eq!(revalue(moved.clone(), true, |_| None), Some(moved.clone()));
        assert_eq!(revalue(moved, false, |_| None), None);
    }

    #[test]
    fn credits_land_once_per_invoice() {
        let mut a = account();
        assert_eq!(a.credited(), 10 * BYTES_PER_MB);
        assert_eq!(a.credit(credit("inv_b", 5, 15_000), 0), Ok(false));
        assert_eq!(a.credited(), 15 * BYTES_PER_MB);
        assert_eq!(
            a.credit(credit("inv_b", 5, 15_000), 0),
            Err(AccountError::AlreadyCredited("inv_b".into()))
        );
        assert_eq!(a.credited(), 15 * BYTES_PER_MB, "a repeat adds nothing");
    }

    #[test]
    fn remaining_goes_negative_when_reports_overshoot() {
        let a = account();
        assert_eq!(a.remaining(4 * BYTES_PER_MB), 6_000_000);
        assert_eq!(a.remaining(11 * BYTES_PER_MB), -1_000_000);
    }

    #[test]
    fn exhaustion_suspends_once_and_a_credit_resumes() {
        let mut a = account();
        assert!(!a.exhausted(9 * BYTES_PER_MB), "still 1 MB left");
        assert!(a.exhausted(10 * BYTES_PER_MB), "at zero: suspend");
        assert!(!a.exhausted(11 * BYTES_PER_MB), "already suspended: once");
        // A credit that leaves the SIM still overdrawn does not resume it.
        let mut tiny = credit("inv_t", 0, 1);
        tiny.bytes = 500_000;
        assert_eq!(a.credit(tiny, 11 * BYTES_PER_MB), Ok(false));
        assert!(a.suspended_for_balance);
        assert_eq!(
            a.credit(credit("inv_b", 5, 15_000), 11 * BYTES_PER_MB),
            Ok(true)
        );
        assert!(!a.suspended_for_balance);
    }

    #[test]
    fn closed_accounts_take_no_credit_and_refund_once() {
        let mut a = account();
        a.credit(credit("inv_b", 10, 40_000), 0).unwrap();
        // 12 MB used: inv_a fully, 2 MB of inv_b → 8 MB of inv_b left at 4 000 µ/MB.
        let shares = a.close(12 * BYTES_PER_MB);
        assert_eq!(shares.len(), 1);
        assert_eq!(shares[0].invoice, "inv_b");
        assert_eq!(shares[0].bytes, 8 * BYTES_PER_MB);
        assert_eq!(shares[0].amount, UsdcAmount::from_micros(32_000));
        assert_eq!(a.close(0), shares, "the first close fixes the refund");
        assert!(matches!(
            a.credit(credit("inv_c", 1, 1), 0),
            Err(AccountError::Closed(_))
        ));
        assert!(!a.exhausted(u64::MAX), "a closed SIM is not suspended");
        assert_eq!(
            a.credit(credit("inv_b", 10, 40_000), 0),
            Err(AccountError::AlreadyCredited("inv_b".into())),
            "a repeat of a credit made before the close is a repeat"
        );
    }

    /// What a top-up must bring to be granted quota again (a fresh-user trial, thirty-first session: a SIM
    /// 968 MB in debt was offered 16, 50 and 100 MB, none of which would let it be granted anything).
    #[test]
    fn a_top_up_needed_clears_the_debt_and_the_low_water_mark() {
        assert_eq!(
            top_up_needed_mb(50_000, 0),
            2,
            "a low SIM: the mark and a grant"
        );
        assert_eq!(top_up_needed_mb(10_000_000, 0), 1);
        assert_eq!(top_up_needed_mb(-967_954_000, 0), 970);
        assert_eq!(
            top_up_needed_mb(-900_000, 0),
            2,
            "2 MB: the debt, the mark and a full grant"
        );
        assert_eq!(top_up_needed_mb(-900_001, 0), 3, "a byte more: 3 MB");
        assert_eq!(
            top_up_needed_mb(0, 1_900_000),
            3,
            "reserved bytes are spoken for"
        );
        // Whatever the debt, the size offered leaves a full default grant after it.
        for debt in [0, 1, 499_999, 28_899_500, 28_900_000, 58_999_999] {
            let mb = top_up_needed_mb(-debt, 0);
            let left = i128::from(mb) * i128::from(BYTES_PER_MB) - i128::from(debt);
            assert_eq!(
                decide_quota(left, None),
                Quota::Grant {
                    bytes: DEFAULT_GRANT_BYTES,
                    remaining: u64::try_from(left).unwrap()
                },
                "{debt}"
            );
        }
        assert_eq!(top_up_needed_mb(i64::MIN, u64::MAX), DataMb::MAX);
    }

    #[test]
    fn every_hold_change_has_its_own_epoch() {
        let mut a = account();
        assert_eq!(a.hold(), None);
        assert!(a.exhausted(10 * BYTES_PER_MB));
        assert_eq!(a.hold(), Some((true, 1)));
        assert!(!a.exhausted(11 * BYTES_PER_MB), "once");
        assert_eq!(a.hold(), Some((true, 1)));
        assert_eq!(a.credit(credit("inv_b", 5, 1), 11 * BYTES_PER_MB), Ok(true));
        assert_eq!(a.hold(), Some((false, 2)));
        assert!(a.exhausted(15 * BYTES_PER_MB));
        assert_eq!(a.hold(), Some((true, 3)));
    }

    /// A batch of duplicates charges nothing, yet reports the hold again while the SIM is held for balance (a
    /// review, thirty-first session: a carrier resending the batch whose hold failed to apply left the SIM in
    /// service); never for a released, closing, closed or moved account.
    #[test]
    fn a_standing_hold_is_reported_while_held_and_open() {
        let mut a = account();
        assert_eq!(a.standing_hold(), None, "never held");
        assert!(a.exhausted(10 * BYTES_PER_MB));
        assert_eq!(a.standing_hold(), Some((true, 1)));
        let mut moved = a.clone();
        moved.moved_to = Some((
            crate::esim::Iccid::parse("8901260000000000022").unwrap(),
            vec![],
        ));
        assert_eq!(moved.standing_hold(), None);
        let mut closing = a.clone();
        closing.closing = true;
        assert_eq!(closing.standing_hold(), None);
        assert_eq!(a.credit(credit("inv_b", 5, 1), 10 * BYTES_PER_MB), Ok(true));
        assert_eq!(a.standing_hold(), None, "released");
    }

    /// A switched-away SIM is held with the SIM it moved to, in its own epochs: after its own hold (1) and
    /// release (2), the hold that follows the new SIM's (1) is 3; past a newer epoch of the new SIM's.
    #[test]
    fn a_moved_sim_follows_the_new_sims_hold_in_its_own_epochs() {
        let mut a = account();
        assert!(!a.follow(true, 0), "not moved: its own balance decides");
        assert!(a.exhausted(10 * BYTES_PER_MB));
        assert_eq!(a.credit(credit("inv_b", 5, 1), 10 * BYTES_PER_MB), Ok(true));
        assert_eq!(a.hold(), Some((false, 2)));
        let to = Iccid::with_check_digit("894401000000000002").unwrap();
        a.transfer_out(&to, 10 * BYTES_PER_MB, 9).unwrap();
        assert!(!a.follow(false, 0), "not held: nothing to release");
        assert!(a.follow(true, 1));
        assert_eq!(a.hold(), Some((true, 3)), "its own next epoch");
        assert!(!a.follow(true, 1), "once");
        // Past the new SIM's epoch (7), which an older hold of this SIM may have carried.
        assert!(a.follow(false, 7));
        assert_eq!(a.hold(), Some((false, 8)));
    }

    #[test]
    fn a_closing_account_takes_no_credit_and_suspends_nothing_until_it_closes() {
        let mut a = account();
        assert!(a.begin_close());
        assert!(!a.begin_close(), "once");
        assert!(matches!(
            a.credit(credit("inv_b", 1, 1), 0),
            Err(AccountError::Closed(_))
        ));
        assert!(!a.exhausted(u64::MAX));
        // Closed at the used counter read after `begin_close`: 4 MB of 10 used, 6 MB (18 000) owed back.
        let shares = a.close(4 * BYTES_PER_MB);
        assert_eq!(shares[0].amount, UsdcAmount::from_micros(18_000));
        assert!(!a.closing);
        assert!(!a.begin_close(), "closed");
        assert_eq!(a.close(9 * BYTES_PER_MB), shares);
    }

    /// A switch that read the used counter (5 MB) before a top-up folded the activation away (at 10 MB) moves
    /// on that newer account with its older reading: the 5 MB between were used up by the folded credit, so
    /// they must not be handed on to the new SIM again. Before, the move took the top-up whole and marked 5 MB
    /// handed on: the next hand-on charged the new SIM 5 MB the old SIM's own credit had already paid for.
    #[test]
    fn a_move_with_a_reading_older_than_a_fold_hands_on_nothing_twice() {
        let mut a = account(); // inv_a: 10 MB for 30 000
        assert_eq!(
            a.credit(credit("inv_t", 10, 30_000), 10 * BYTES_PER_MB),
            Ok(false)
        );
        assert_eq!(a.spent.bytes, 10 * BYTES_PER_MB, "inv_a folded");
        let to = Iccid::with_check_digit("894401000000000002").unwrap();
        let moved = a.transfer_out(&to, 5 * BYTES_PER_MB, 9).unwrap();
        let moved_bytes: u64 = moved.iter().map(|c| c.bytes).sum();
        let handed_on = a.forward(10 * BYTES_PER_MB).map_or(0, |(_, b)| b);
        assert_eq!(
            moved_bytes - handed_on,
            10 * BYTES_PER_MB,
            "the new SIM holds the whole unused top-up"
        );
        assert_eq!(a.forwarded_up_to, Some(10 * BYTES_PER_MB));
        // What goes back if the new SIM fails agrees with the mark.
        assert_eq!(
            a.returnable_to(&to).unwrap().used_at_move,
            Some(10 * BYTES_PER_MB)
        );
    }

    /// A SIM terminated after a switch moved its data takes none of it back if the new SIM fails (a review: the
    /// data came back to a terminated SIM, refunded by nothing); its own refunds owe it instead (kernel
    /// `usage::failed`, `Account::take_back`). Its receipts still end a day after the move.
    #[test]
    fn a_sim_terminated_after_its_switch_takes_no_data_back() {
        let mut a = account();
        let to = Iccid::with_check_digit("894401000000000002").unwrap();
        a.transfer_out(&to, 3 * BYTES_PER_MB, 9).unwrap();
        assert!(a.returnable_to(&to).is_some());
        assert_eq!(
            a.terminate(3 * BYTES_PER_MB, 20),
            Vec::new(),
            "no refunds here"
        );
        assert_eq!(a.closed_at, Some(20));
        assert_eq!(
            a.closed_used, None,
            "a moved account's usage is the new SIM's"
        );
        assert!(a.take_back(&to, 3 * BYTES_PER_MB, 0));
        assert!(a.moved_to.is_some(), "no data back");
        assert_eq!(a.close(3 * BYTES_PER_MB).len(), 1, "owed as its refund");
        assert_eq!(
            a.terms().unwrap().retired_at,
            Some(9),
            "retired at the move"
        );
        assert_eq!(
            a.terminate(3 * BYTES_PER_MB, 30).len(),
            1,
            "the same refund"
        );
        assert_eq!(a.closed_at, Some(20), "the first terminate's");
    }

    /// A trial: a SIM terminated with its refund fixed, then a receipt reported for a window before the
    /// terminate, was charged (`usage_charged 500000`, `remaining_bytes` dropping) although the payer had been
    /// refunded those bytes: a charge nobody paid. The close now fixes what it counted as used (the counter,
    /// with the grants outstanding): the payer pays the part of a batch's counter range within it (a grant's
    /// late usage), the rest is absorbed; the balance counts no more than that either.
    #[test]
    fn usage_after_a_terminate_beyond_what_its_close_counted_is_absorbed() {
        let mb = BYTES_PER_MB;
        let mut a = account(); // inv_a: 10 MB
        assert_eq!(
            a.payer_share(9 * mb, mb),
            mb,
            "open: every byte the payer's"
        );
        assert_eq!(a.counted(9 * mb), 9 * mb);
        // Terminated at 4 MB used with 1 MB granted and not reported: counted 5 MB, 5 MB refunded.
        let shares = a.terminate(5 * mb, 100);
        assert_eq!(shares[0].bytes, 5 * mb);
        assert_eq!(a.closed_used, Some(5 * mb));
        // The grant's usage (the counter 4 → 5 MB) is the payer's; a batch straddling the close pays its part.
        assert_eq!(a.payer_share(5 * mb, mb), mb);
        assert_eq!(a.payer_share(5 * mb + 500_000, mb), 500_000);
        assert_eq!(
            a.payer_share(6 * mb, 500_000),
            0,
            "after the close: absorbed"
        );
        assert_eq!(a.payer_share(0, 0), 0);
        assert_eq!(a.counted(6 * mb), 5 * mb);
        assert_eq!(a.remaining(a.counted(6 * mb)), 5 * i128::from(mb));
        // Fixed by the first close; kept across a round trip.
        a.terminate(9 * mb, 200);
        let back: Account = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(back.closed_used, Some(5 * mb));
        // A close that is not a terminate (a switch's move) fixes nothing: the new SIM's close decides.
        let mut moved = account();
        let to = Iccid::with_check_digit("894401000000000002").unwrap();
        moved.transfer_out(&to, mb, 9).unwrap();
        moved.terminate(2 * mb, 20);
        assert_eq!(moved.payer_share(3 * mb, mb), mb);
    }

    /// A closed account collects nothing from the SIM it replaced (its close collected what was pending): the
    /// old SIM's later usage is handed on by its own batches, which learn what the close left unpaid.
    #[test]
    fn a_closed_account_collects_nothing() {
        let old = Iccid::with_check_digit("894401000000000001").unwrap();
        let mut a = account();
        a.replaces = Some(old.clone());
        assert!(a.begin_close());
        assert_eq!(a.collects_from(), Some(&old), "closing: its close collects");
        a.terminate(0, 1);
        assert_eq!(a.collects_from(), None);
    }

    /// An overdrawn account's debt follows its data: a switch moves no credit (none is left) and hands the
    /// usage beyond the credits on to the new SIM, where it is owed like any usage (a review: the debt was left
    /// on the closed account, and a $0.12 switch wiped out ~$2.90 of real usage).
    #[test]
    fn a_switch_hands_an_overdrawn_sims_debt_on() {
        let mut a = account(); // inv_a: 10 MB
        let to = Iccid::with_check_digit("894401000000000002").unwrap();
        let used = 25 * BYTES_PER_MB;
        assert_eq!(a.transfer_out(&to, used, 9).unwrap(), Vec::new());
        assert_eq!(a.forwarded_up_to, Some(10 * BYTES_PER_MB));
        assert_eq!(a.forward(used), Some((to.clone(), 15 * BYTES_PER_MB)));
        assert_eq!(a.forward(used), None, "once");
        // Taken back (the new SIM failed): its own use leaves out the debt handed on, which the old counter holds.
        let back = a.returnable_to(&to).unwrap();
        assert_eq!(back.used_at_move, Some(10 * BYTES_PER_MB));
        assert_eq!(back.own_use(15 * BYTES_PER_MB + 7, used), 7);
    }

    #[test]
    fn usage_after_a_switch_draws_on_the_new_sim_once_per_byte() {
        let mut a = account();
        let to = Iccid::with_check_digit("894401000000000002").unwrap();
        a.transfer_out(&to, 3 * BYTES_PER_MB, 9).unwrap();
        assert_eq!(a.forwarded_up_to, Some(3 * BYTES_PER_MB));
        assert_eq!(a.forward(3 * BYTES_PER_MB), None, "nothing after the move");
        // Two batches after the move, seen in any order: each byte is handed on once.
        assert_eq!(a.forward(3 * BYTES_PER_MB + 700), Some((to.clone(), 700)));
        assert_eq!(a.forward(3 * BYTES_PER_MB + 500), None, "an older reading");
        assert_eq!(a.forward(3 * BYTES_PER_MB + 1_000), Some((to.clone(), 300)));
        // The mark survives a round trip; an account moved before the mark existed hands on nothing.
        let mut back: Account = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(back.forward(3 * BYTES_PER_MB + 1_001), Some((to, 1)));
        back.forwarded_up_to = None;
        assert_eq!(back.forward(u64::MAX), None);
        assert_eq!(account().forward(u64::MAX), None, "not moved");
    }

    /// Usage the old SIM reports after a switch to another carrier draws on the new SIM by its value: at the
    /// old carrier's rate, as bytes of the new carrier's (a review: it was handed on byte for byte, so a switch to
    /// a dearer carrier charged the late usage up to ~17 % more). Counted from the move, so rounding loses at
    /// most a byte in all however many batches report it.
    #[test]
    fn late_usage_after_a_switch_to_another_carrier_is_handed_on_by_its_value() {
        let to = Iccid::with_check_digit("894401000000000002").unwrap();
        // $0.003/MB to $0.0035/MB: 6/7 of a byte per byte.
        let (old, new) = (3_000_000, 3_500_000);
        let mut a = account();
        a.transfer_out_priced(&to, 3 * BYTES_PER_MB, 9, Some((old, new)))
            .unwrap();
        assert_eq!(
            a.late_rate,
            Some(LateRate {
                from: 3 * BYTES_PER_MB,
                old,
                new
            })
        );
        let at = |b: u64| 3 * BYTES_PER_MB + b;
        assert_eq!(a.forward(at(7_000_000)), Some((to.clone(), 6_000_000)));
        // Seven batches of one byte each: 6/7 of a byte is worth nothing yet, so the mark stays until the
        // worth reaches a byte; in all, the seven are worth six.
        let mut handed = 0;
        for b in 1..=7 {
            if let Some((_, bytes)) = a.forward(at(7_000_000 + b)) {
                handed += bytes;
            }
        }
        assert_eq!(handed, 6);
        assert_eq!(a.forward(at(7_000_007)), None, "once");
        // The other way (to a cheaper carrier) hands on more; the rates survive a round trip; a repeated move
        // does not change them.
        let mut cheap = account();
        cheap
            .transfer_out_priced(&to, 0, 9, Some((new, old)))
            .unwrap();
        let mut back: Account =
            serde_json::from_str(&serde_json::to_string(&cheap).unwrap()).unwrap();
        assert_eq!(back.forward(6_000_000), Some((to.clone(), 7_000_000)));
        back.transfer_out_priced(&to, 0, 9, None).unwrap();
        assert!(back.late_rate.is_some());
        // Equal rates, an unknown one, or the same carrier: byte for byte.
        for rates in [Some((old, old)), Some((old, 0)), None] {
            let mut same = account();
            same.transfer_out_priced(&to, 0, 9, rates).unwrap();
            assert_eq!(same.late_rate, None);
            assert_eq!(same.forward(5), Some((to.clone(), 5)));
        }
        // A failed replacement's own use leaves out what was handed on, at the same worth.
        let r = a.returnable_to(&to).unwrap();
        assert_eq!(r.used_at_move, Some(3 * BYTES_PER_MB));
        assert_eq!(r.own_use(6_000_006 + 11, at(7_000_007)), 11);
        // What a hand-on covers in the old SIM's own bytes, for what of it the new SIM's payer does not pay (a
        // review: that part was counted in the new SIM's units against the old SIM's charge).
        let mut b = account();
        b.transfer_out_priced(&to, 0, 9, Some((old, new))).unwrap();
        let h = b.forward_from(7_000_000).unwrap();
        assert_eq!((h.bytes, h.own), (6_000_000, 7_000_000));
        assert_eq!(h.own_part(6_000_000), 7_000_000);
        assert_eq!(h.own_part(u64::MAX), 7_000_000);
        assert_eq!(h.own_part(3_000_000), 3_500_000);
        assert_eq!(h.own_part(1), 2, "rounded up");
        assert_eq!(h.own_part(0), 0);
        // Taken back, the SIM's usage is its own again.
        assert!(a.take_back(&to, at(7_000_007), 0));
        assert_eq!(a.late_rate, None);
    }

    /// The new SIM collects what the one it replaced still owes it, until it moves on itself.
    #[test]
    fn a_replacing_account_collects_from_the_sim_it_replaced() {
        let old = Iccid::with_check_digit("894401000000000001").unwrap();
        let mut a = account();
        assert_eq!(a.collects_from(), None);
        a.replaces = Some(old.clone());
        assert_eq!(a.collects_from(), Some(&old));
        let back: Account = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(back.collects_from(), Some(&old));
        let next = Iccid::with_check_digit("894401000000000003").unwrap();
        a.transfer_out(&next, 0, 9).unwrap();
        assert_eq!(a.collects_from(), None, "moved on: its own batches forward");
    }

    #[test]
    fn unused_shares_round_down_and_skip_empty() {
        let credits = [credit("inv_a", 3, 10_000), credit("inv_b", 3, 10_000)];
        let s = unused_shares(&credits, 1);
        assert_eq!(s.len(), 2);
        // 2 999 999 / 3 000 000 of 10 000 = 9 999.99… → 9 999.
        assert_eq!(s[0].amount, UsdcAmount::from_micros(9_999));
        assert_eq!(s[1].amount, UsdcAmount::from_micros(10_000));
        assert!(unused_shares(&credits, 6 * BYTES_PER_MB).is_empty());
        assert!(unused_shares(&credits, u64::MAX).is_empty());
    }

    #[test]
    fn a_switch_moves_the_unused_data_once() {
        let mut a = account();
        a.credit(
            Credit {
                at: 5,
                ..credit("inv_b", 10, 40_000)
            },
            0,
        )
        .unwrap();
        let to = Iccid::with_check_digit("894401000000000002").unwrap();
        // 12 MB used: inv_a gone, 8 MB of inv_b (worth 32 000) moves.
        assert_eq!(
            a.terms().unwrap().opened_at,
            Some(0),
            "when the SIM was ordered, not a credit"
        );
        let mut before_the_field = a.clone();
        before_the_field.opened_at = None;
        assert_eq!(
            before_the_field.terms().unwrap().opened_at,
            None,
            "not guessed"
        );
        assert_eq!(a.terms().unwrap().retired_at, None, "not switched away");
        let moved = a.transfer_out(&to, 12 * BYTES_PER_MB, 9).unwrap();
        assert_eq!(
            a.terms().unwrap().retired_at,
            Some(9),
            "retired when its data moved"
        );
        let mut before_the_field = a.clone();
        before_the_field.moved_at = None;
        assert_eq!(
            before_the_field.terms().unwrap().retired_at,
            Some(9),
            "an account moved before the field existed: from its moved credits"
        );
        assert_eq!(moved.len(), 1);
        assert_eq!(
            (moved[0].invoice.as_str(), moved[0].bytes),
            ("inv_b", 8 * BYTES_PER_MB)
        );
        assert_eq!(moved[0].paid, UsdcAmount::from_micros(32_000));
        assert_eq!(
            a.transfer_out(&to, 0, 10).unwrap(),
            moved,
            "fixed by the first call"
        );
        let elsewhere = Iccid::with_check_digit("894401000000000003").unwrap();
        assert!(matches!(
            a.transfer_out(&elsewhere, 0, 10),
            Err(AccountError::Closed(_))
        ));
        assert!(
            a.close(0).is_empty(),
            "no refund: the value moved with the data"
        );
        let b = Account::opened_with(
            to,
            a.carrier.clone().unwrap(),
            RoamingPolicy::default(),
            moved,
            9,
        );
        assert_eq!(b.terms().unwrap().opened_at, Some(9));
        assert_eq!(b.remaining(0), 8_000_000);
        let mut closed = account();
        closed.close(0);
        assert!(matches!(
            closed.transfer_out(&elsewhere, 0, 1),
            Err(AccountError::Closed(_))
        ));
    }

    /// A SIM terminated before anything opened its account: a later credit or move finds it closed.
    #[test]
    fn an_account_closed_before_it_opened_takes_nothing_and_meters_nothing() {
        let iccid = Iccid::with_check_digit("894401000000000009").unwrap();
        let mut a = Account::closed_unopened(iccid.clone());
        assert!(a.is_unopened() && !account().is_unopened());
        assert_eq!(a.terms(), None, "no SIM metered");
        assert!(matches!(
            a.credit(credit("inv_t", 1, 1), 0),
            Err(AccountError::Closed(_))
        ));
        let from = Iccid::with_check_digit("894401000000000001").unwrap();
        assert!(matches!(
            a.take_moved(&from, &[credit("inv_a", 1, 1)], 0),
            Err(AccountError::Closed(_))
        ));
        assert_eq!(a.replaces, None, "unchanged");
        assert!(a.close(0).is_empty() && !a.begin_close());
        assert!(!a.exhausted(u64::MAX));
        let json = serde_json::to_value(&a).unwrap();
        assert!(json.get("carrier").is_none(), "{json}");
        assert_eq!(serde_json::from_value::<Account>(json).unwrap(), a);
    }

    /// A move the new SIM refused after the old account gave its data up is owed back from the old account.
    #[test]
    fn a_move_the_new_sim_refused_is_owed_back_by_the_old_account() {
        let mut a = account(); // 10 MB for 30 000
        let to = Iccid::with_check_digit("894401000000000002").unwrap();
        let moved = a.transfer_out(&to, 4 * BYTES_PER_MB, 9).unwrap();
        let mut b = Account::opened_with(
            to.clone(),
            CarrierId::parse("tmobile").unwrap(),
            RoamingPolicy::default(),
            vec![credit("inv_b", 1, 1_000)],
            0,
        );
        b.close(0);
        let from = a.iccid.clone();
        assert!(matches!(
            b.take_moved(&from, &moved, 0),
            Err(AccountError::Closed(_))
        ));
        let elsewhere = Iccid::with_check_digit("894401000000000003").unwrap();
        assert_eq!(a.bounce(&elsewhere), None, "not moved there");
        let shares = a.bounce(&to).unwrap();
        assert_eq!(shares.len(), 1);
        assert_eq!(
            (
                shares[0].invoice.as_str(),
                shares[0].bytes,
                shares[0].amount
            ),
            ("inv_a", 6 * BYTES_PER_MB, UsdcAmount::from_micros(18_000))
        );
        assert_eq!(a.close(0), shares, "owed back by the old SIM's close");
        assert_eq!(a.bounce(&to).unwrap(), shares, "once");
        assert_eq!(a.transfer_out(&to, 0, 10).unwrap(), moved, "still moved");
        assert_eq!(account().bounce(&to), None);
        // A live account takes them once; a closed one that holds them already is a repeat, not a refusal.
        let mut d = Account::opened_with(
            to,
            CarrierId::parse("tmobile").unwrap(),
            RoamingPolicy::default(),
            vec![credit("inv_b", 1, 1_000)],
            0,
        );
        assert_eq!(d.take_moved(&from, &moved, 0), Ok(true));
        assert_eq!(d.replaces, Some(from.clone()));
        d.close(0);
        assert_eq!(d.take_moved(&from, &moved, 0), Ok(false));
    }

    /// A SIM terminated since its switch, whose replacement failed, owes the moved credits less what it used
    /// since the move (`take_back`); a bounce after that (the switch's move resumed and refused) keeps those
    /// refunds. Before, it overwrote them with the whole moved value: owed again for bytes the SIM used.
    #[test]
    fn a_bounce_keeps_the_refunds_a_take_back_fixed() {
        let mut a = account(); // 10 MB for 30 000
        let to = Iccid::with_check_digit("894401000000000002").unwrap();
        a.transfer_out(&to, 4 * BYTES_PER_MB, 9).unwrap(); // 6 MB moved
        a.terminate(5 * BYTES_PER_MB, 20);
        assert!(a.take_back(&to, 5 * BYTES_PER_MB, 0));
        let fixed = a.close(5 * BYTES_PER_MB);
        let owed = |s: &[RefundShare]| -> Vec<(u64, u64)> {
            s.iter().map(|s| (s.bytes, s.amount.micros())).collect()
        };
        assert_eq!(
            owed(&fixed),
            vec![(5 * BYTES_PER_MB, 15_000)],
            "1 MB used since"
        );
        assert_eq!(
            a.bounce(&to).unwrap(),
            fixed,
            "the refunds the take-back fixed"
        );
        assert_eq!(a.close(5 * BYTES_PER_MB), fixed, "owed once, as fixed");
        // Untouched (nothing fixed yet): the bounce owes the whole moved value.
        let mut b = account();
        b.transfer_out(&to, 4 * BYTES_PER_MB, 9).unwrap();
        b.terminate(5 * BYTES_PER_MB, 20);
        assert_eq!(
            owed(&b.bounce(&to).unwrap()),
            vec![(6 * BYTES_PER_MB, 18_000)]
        );
    }

    #[test]
    fn quota_grants_above_the_low_water_mark() {
        assert_eq!(
            decide_quota(5_000_000, None),
            Quota::Grant {
                bytes: DEFAULT_GRANT_BYTES,
                remaining: 5_000_000
            }
        );
        // The last 100 KB are never granted (a fresh-user trial: the carrier was granted the whole balance).
        assert_eq!(
            decide_quota(500_000, Some(2_000_000)),
            Quota::Grant {
                bytes: 400_000,
                remaining: 500_000
            }
        );
        assert_eq!(
            decide_quota(i128::from(LOW_WATER_BYTES) + 1, None),
            Quota::Grant {
                bytes: 1,
                remaining: LOW_WATER_BYTES + 1
            }
        );
        for left in [LOW_WATER_BYTES, LOW_WATER_BYTES - 1] {
            assert_eq!(
                decide_quota(i128::from(left), None),
                Quota::Low { remaining: left }
            );
        }
        assert_eq!(decide_quota(-7, None), Quota::Low { remaining: 0 });
    }

    #[test]
    fn used_up_credits_fold_and_their_invoices_still_credit_once() {
        let mut a = account(); // inv_a: 10 MB
        assert_eq!(a.credit(credit("inv_b", 5, 15_000), 0), Ok(false));
        let used = 12 * BYTES_PER_MB; // inv_a used up, 2 MB of inv_b used
        assert_eq!(a.credit(credit("inv_c", 10, 30_000), used), Ok(false));
        assert_eq!(
            a.credits
                .iter()
                .map(|c| c.invoice.as_str())
                .collect::<Vec<_>>(),
            ["inv_b", "inv_c"]
        );
        assert_eq!(
            a.spent,
            Spent {
                bytes: 10 * BYTES_PER_MB,
                invoices: vec![invoice_digest("inv_a")],
            }
        );
        assert_eq!(invoice_digest("inv_a").len(), 32);
        assert_eq!(a.credited(), 25 * BYTES_PER_MB);
        assert_eq!(a.remaining(used), i128::from(13 * BYTES_PER_MB));
        assert!(a.has_credit("inv_a"));
        assert_eq!(
            a.credit(credit("inv_a", 10, 30_000), used),
            Err(AccountError::AlreadyCredited("inv_a".into()))
        );
        assert_eq!(a.credited(), 25 * BYTES_PER_MB, "nothing credited twice");
        // The unused 3 MB of inv_b and all of inv_c are refunded at their own rates.
        let shares = a.clone().close(used);
        assert_eq!(
            shares
                .iter()
                .map(|s| (s.invoice.as_str(), s.bytes, s.amount.micros()))
                .collect::<Vec<_>>(),
            [
                ("inv_b", 3 * BYTES_PER_MB, 9_000),
                ("inv_c", 10 * BYTES_PER_MB, 30_000)
            ]
        );
    }

    /// An account opened now says its receipts were never claimed the legacy way; one stored before (no
    /// field) reads as an older account, whose receipts may have been (`usage::claim`).
    #[test]
    fn accounts_opened_now_claim_per_sim_and_older_ones_do_not() {
        let a = account();
        assert!(a.claims_per_sim);
        let mut json = serde_json::to_value(&a).unwrap();
        assert_eq!(json["claims_per_sim"], true, "{json}");
        assert_eq!(serde_json::from_value::<Account>(json.clone()).unwrap(), a);
        json.as_object_mut().unwrap().remove("claims_per_sim");
        let older: Account = serde_json::from_value(json).unwrap();
        assert!(!older.claims_per_sim);
        let json = serde_json::to_value(&older).unwrap();
        assert!(
            json.get("claims_per_sim").is_none(),
            "stored as before: {json}"
        );
    }

    #[test]
    fn an_account_without_folded_credits_is_stored_as_before() {
        let a = account();
        let json = serde_json::to_value(&a).unwrap();
        assert!(json.get("spent").is_none(), "{json}");
        let back: Account = serde_json::from_value(json).unwrap();
        assert_eq!(back, a);
        let mut folded = account();
        folded
            .credit(credit("inv_b", 1, 1), 10 * BYTES_PER_MB)
            .unwrap();
        let json = serde_json::to_value(&folded).unwrap();
        assert_eq!(json["spent"]["bytes"], 10 * BYTES_PER_MB, "{json}");
        assert_eq!(serde_json::from_value::<Account>(json).unwrap(), folded);
    }

    proptest::proptest! {
        /// Folding changes nothing a caller sees: against the same credits kept unfolded, the balance, the
        /// refunds on closing, the credits a switch moves, and which invoices are taken stay the same.
        #[test]
        fn folding_is_invisible(
            steps in proptest::collection::vec((0u64..40, 1u64..20, 0u64..50_000, 0u8..6), 1..40),
        ) {
            let mut a = account();
            let mut all = a.credits.clone();
            let mut used = 0u64;
            for (i, (use_mb, mb, paid, repeat)) in steps.into_iter().enumerate() {
                used += use_mb * BYTES_PER_MB / 4;
                // Now and then the same invoice again (a retried top-up).
                let invoice = if repeat == 0 && i > 0 { format!("inv_{}", i - 1) } else { format!("inv_{i}") };
                let fresh = !all.iter().any(|c| c.invoice == invoice);
                let r = a.credit(credit(&invoice, mb, paid), used);
                proptest::prop_assert_eq!(r.is_ok(), fresh, "{:?}", r);
                if fresh {
                    all.push(credit(&invoice, mb, paid));
                }
                let credited: u64 = all.iter().map(|c| c.bytes).sum();
                proptest::prop_assert_eq!(a.credited(), credited);
                proptest::prop_assert_eq!(a.remaining(used), i128::from(credited) - i128::from(used));
                proptest::prop_assert_eq!(a.clone().close(used), unused_shares(&all, used));
                let to = Iccid::with_check_digit("894401000000000002").unwrap();
                let moved = a.clone().transfer_out(&to, used, 9).unwrap();
                let expected: Vec<(String, u64)> = unused_parts(&all, used)
                    .into_iter()
                    .map(|(c, left, _)| (c.invoice.clone(), left))
                    .collect();
                proptest::prop_assert_eq!(
                    moved.into_iter().map(|c| (c.invoice, c.bytes)).collect::<Vec<_>>(),
                    expected
                );
                for c in &all {
                    proptest::prop_assert!(a.has_credit(&c.invoice));
                }
            }
        }
    }
}
