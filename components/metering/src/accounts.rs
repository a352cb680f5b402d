//! Accounts: opened by the activation's credit, topped up once per invoice, closed when the SIM is
//! terminated. The account is a cell (rare writes); usage is the `meter/<iccid>/used` counter, read here.

use esim402_core::esim::iccid::Iccid;
use esim402_core::esim::plmn::{Plmn, RoamingPolicy};
use esim402_core::ledger::{EntryFields, EntryKind};
use esim402_core::store::keys;
use esim402_core::usage::account::{
    Account, AccountError, Credit, CreditKind, HandedOn, Quota, RefundShare, decide_quota,
};
use esim402_core::usage::grant::{self, Reservation};
use esim402_core::{CarrierId, UsdcAmount};
use esim402_guest::convert::{event_to_wit, internal, invalid, kv_err, kv_fault};
use esim402_guest::kv::{self, Change};
use esim402_guest::wit;

use crate::bindings::exports::esim402::metering::metering as api;

pub fn parse_iccid(iccid: &str) -> Result<Iccid, wit::Error> {
    Iccid::parse(iccid).map_err(|e| invalid("iccid", e.to_string()))
}

/// Bytes charged so far (the counter; absent = 0). Reading it with `increment(0)` keeps the counter rule:
/// a counter key is only ever touched through `increment`.
pub fn used(iccid: &str) -> Result<u64, wit::Error> {
    let n = kv::increment::<wit::Error>(&keys::meter_used(iccid), 0).map_err(kv_err)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// The SIM's quota-grant reservation as stored (`None`: no grant yet; kernel `usage::grant`, written by
/// `crate::grants`).
pub async fn reservation(iccid: &str) -> Result<Option<Reservation>, wit::Error> {
    kv::get_json::<Reservation, wit::Error>(&keys::meter_grant(iccid))
        .await
        .map_err(kv_err)
}

/// Seal `iccid`'s reservation for its terminate at the used counter `used` (kernel `Reservation::sealed`): the
/// grants as sealed, which the refunds leave out. A repeat (a terminate sent again) reads the same grants.
pub async fn seal(iccid: &str, used: u64) -> Result<Option<Reservation>, wit::Error> {
    let (stored, ()) =
        kv::change_json::<Reservation, (), wit::Error>(&keys::meter_grant(iccid), |cur| {
            Ok(match cur {
                Some(r) if r.sealed => (Change::Keep, ()),
                cur => (Change::Put(Reservation::sealed(cur.as_ref(), used)), ()),
            })
        })
        .await
        .map_err(kv_err)?;
    Ok(stored)
}

/// The SIM's used counter and the bytes granted beyond it and still reserved at `now` (kernel
/// `usage::grant::counted`).
pub async fn outstanding(iccid: &str, used: u64, now: u64) -> Result<(u64, u64), wit::Error> {
    Ok(grant::counted(
        reservation(iccid).await?.as_ref(),
        used,
        now,
    ))
}

pub async fn load(iccid: &str) -> Result<Option<Account>, wit::Error> {
    kv::get_json::<Account, wit::Error>(&keys::balance(iccid))
        .await
        .map_err(kv_err)
}

/// `a`'s balance at the used counter `used`, with `reserved` bytes granted and not reported yet (counted in
/// `low`: kernel `usage::grant`).
pub fn to_wit(a: &Account, used: u64, reserved: u64) -> wit::Balance {
    // A switched-away SIM's data (and its grants) moved on with it: shown on the new SIM only.
    let switched_to = a.moved_to.as_ref().map(|(to, _)| to.to_string());
    // A terminated SIM's usage beyond what its close counted is absorbed, not the payer's (kernel
    // `Account::counted`): the balance does not drop for it.
    let (remaining, reserved) = if switched_to.is_some() {
        (0, 0)
    } else {
        (a.remaining(a.counted(used)), reserved)
    };
    let grantable = remaining - i128::from(reserved);
    wit::Balance {
        iccid: a.iccid.to_string(),
        credited_bytes: a.credited(),
        // What the payer pays for (before, it counted absorbed bytes too: credited less used was not remaining).
        used_bytes: a.counted(used),
        remaining_bytes: i64::try_from(remaining).unwrap_or(if remaining < 0 {
            i64::MIN
        } else {
            i64::MAX
        }),
        reserved_bytes: reserved,
        low: a.suspended_for_balance || matches!(decide_quota(grantable, None), Quota::Low { .. }),
        suspended_for_balance: a.suspended_for_balance,
        closed: a.closed.is_some() || a.closing,
        switched_to,
    }
}

pub fn roaming(sim: &wit::Sim) -> Result<RoamingPolicy, wit::Error> {
    let plmns = |l: &[String]| {
        l.iter()
            .map(|p| Plmn::parse(p).map_err(|e| internal(format!("SIM roaming policy: {e}"))))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(RoamingPolicy {
        allow: plmns(&sim.roaming.allow)?,
        deny: plmns(&sim.roaming.deny)?,
        countries: sim.roaming.countries.clone(),
    })
}

/// Credit `sim` with what `c` bought (opening the account with the activation's credit).
pub async fn credit(
    sim: wit::Sim,
    c: api::DataCredit,
    now: u64,
) -> Result<api::Credited, wit::Error> {
    let iccid = parse_iccid(&sim.iccid)?;
    let carrier = CarrierId::parse(&sim.carrier).map_err(|e| invalid("carrier", e.to_string()))?;
    let kind = match c.kind.as_str() {
        "activation" => CreditKind::Activation,
        "top-up" => CreditKind::TopUp,
        other => return Err(invalid("kind", format!("unknown credit kind {other:?}"))),
    };
    let credit = Credit {
        invoice: c.invoice_id.clone(),
        kind,
        bytes: c.bytes,
        paid: UsdcAmount::from_micros(c.paid),
        payer: c.payer.clone(),
        tx: c.transaction.clone(),
        network: c.network.clone(),
        at: now,
    };
    let policy = roaming(&sim)?;
    let used = used(iccid.as_str())?;
    let key = keys::balance(iccid.as_str());
    let (account, new) = kv::update_json_with(&key, |cur: Option<Account>| {
        let Some(mut a) = cur else {
            let a = Account::open(
                iccid.clone(),
                carrier.clone(),
                policy.clone(),
                credit.clone(),
                sim.created_at.min(now),
            );
            return Ok((a, true));
        };
        // (An account closed before it opened has no carrier: the credit below refuses it as closed.)
        if let Some(actual) = a.carrier.as_ref().filter(|c| **c != carrier) {
            return Err(AccountError::CarrierMismatch {
                iccid: a.iccid.to_string(),
                claimed: carrier.to_string(),
                actual: actual.to_string(),
            });
        }
        // An account opened before the SIM's order time was kept learns it now (its receipts are checked
        // against it from here on).
        a.opened_at.get_or_insert(sim.created_at.min(now));
        // A credit that refills a balance that ran out lifts the hold (the account's next hold epoch).
        match a.credit(credit.clone(), used) {
            Ok(_) => Ok((a, true)),
            Err(AccountError::AlreadyCredited(_)) => Ok((a, false)),
            Err(e) => Err(e),
        }
    })
    .await
    .map_err(|e| match e {
        kv::KvError::Refused(e @ AccountError::Closed(_)) => wit::Error::Conflict(e.to_string()),
        kv::KvError::Refused(e) => internal(e),
        other => kv_fault("", other),
    })?;
    // Usage a batch charged between the read above and the credit may have used the balance up again (the batch
    // read the account before the credit, so its hold is older than this credit's release): read again, and
    // hold the SIM with the next epoch if nothing is left, as the batch would have.
    let used = self::used(iccid.as_str())?;
    let hold = settle_hold(&account, used).await?;
    // An account this call opened has had no grant yet.
    let (used, reserved) = if new && kind == CreditKind::Activation {
        (used, 0)
    } else {
        outstanding(iccid.as_str(), used, now).await?
    };
    let balance = to_wit(&account, used, reserved);
    let fields = EntryFields::default()
        .invoice(c.invoice_id)
        .amount(UsdcAmount::from_micros(c.paid))
        .network(c.network)
        .tx_hash(c.transaction)
        .payer(c.payer)
        .detail("iccid", iccid.as_str())
        .detail("kind", c.kind)
        .detail("bytes", c.bytes.to_string())
        .detail("remaining_bytes", balance.remaining_bytes.to_string());
    Ok(api::Credited {
        balance,
        new,
        hold,
        event: event_to_wit(EntryKind::DataCredited, &fields),
    })
}

pub async fn balance(iccid: &str) -> Result<wit::Balance, wit::Error> {
    let iccid = parse_iccid(iccid)?;
    // An account closed before it opened is no metered SIM (as before it existed).
    let account = load(iccid.as_str())
        .await?
        .filter(|a| !a.is_unopened())
        .ok_or_else(|| wit::Error::NotFound(format!("no metered SIM {iccid}")))?;
    let used = collect(&account, used(iccid.as_str())?).await?;
    let (used, reserved) =
        outstanding(iccid.as_str(), used, esim402_guest::util::now_secs()).await?;
    Ok(to_wit(&account, used, reserved))
}

/// `account`'s used counter, `used` as read, after what the SIM it replaced still has to hand on (kernel
/// `Account::collects_from`): usage a batch charged to the old SIM while the switch moved its data, which no
/// later batch of the old SIM may come to forward.
pub async fn collect(account: &Account, used: u64) -> Result<u64, wit::Error> {
    let Some(old) = account.collects_from() else {
        return Ok(used);
    };
    let old_used = self::used(old.as_str())?;
    Ok(match forward(old.as_str(), old_used).await? {
        Some((handed, after)) if handed.to == account.iccid => after,
        _ => used,
    })
}

/// Usage of the moved SIM `from` reached `used`: hand what is beyond its mark on to the SIM it moved to (kernel
/// `Account::forward_from`: the mark advances in the old account's cell, then the new SIM's counter grows, so
/// each byte is handed on once; a crash in between loses it, in the payer's favour). What was handed on and the
/// new SIM's used counter after, if anything was.
pub async fn forward(from: &str, used: u64) -> Result<Option<(HandedOn, u64)>, wit::Error> {
    let (_, handed) =
        kv::change_json::<Account, Option<HandedOn>, wit::Error>(&keys::balance(from), |cur| {
            let Some(mut a) = cur else {
                return Ok((Change::Keep, None));
            };
            Ok(match a.forward_from(used) {
                Some(handed) => (Change::Put(a), Some(handed)),
                None => (Change::Keep, None),
            })
        })
        .await
        .map_err(kv_err)?;
    let Some(handed) = handed else {
        return Ok(None);
    };
    let delta = i64::try_from(handed.bytes).map_err(internal)?;
    let used_to = kv::increment::<wit::Error>(&keys::meter_used(handed.to.as_str()), delta)
        .map_err(kv_err)?;
    Ok(Some((handed, u64::try_from(used_to).unwrap_or(0))))
}

/// Usage of `iccid` reached `used`: its balance hold if the balance is out (kernel `Account::exhausted` sets it
/// the first time, with a new epoch; later it is the same hold again); nothing is written otherwise.
pub async fn exhaust(iccid: &str, used: u64) -> Result<Option<wit::BalanceHold>, wit::Error> {
    let (_, hold) =
        kv::change_json::<Account, Option<(bool, u64)>, wit::Error>(&keys::balance(iccid), |cur| {
            let Some(mut a) = cur else {
                return Ok((Change::Keep, None));
            };
            if a.exhausted(used) {
                let hold = a.hold();
                return Ok((Change::Put(a), hold));
            }
            Ok((Change::Keep, a.hold().filter(|(held, _)| *held)))
        })
        .await
        .map_err(kv_err)?;
    Ok(hold.map(|h| balance_hold(iccid, h)))
}

/// The moved SIM `iccid` drew on the SIM it moved to, whose balance is now out (held at epoch `past`): its own
/// hold (kernel `Account::follow`, with its own account's next epoch the first time; later the same hold again,
/// so one that was not applied is applied by a later batch). Never the new SIM's hold renamed: dispatch orders
/// each SIM's holds by that SIM's epochs.
pub async fn follow(iccid: &str, past: u64) -> Result<Option<wit::BalanceHold>, wit::Error> {
    let (_, hold) =
        kv::change_json::<Account, Option<(bool, u64)>, wit::Error>(&keys::balance(iccid), |cur| {
            let Some(mut a) = cur else {
                return Ok((Change::Keep, None));
            };
            let changed = a.follow(true, past);
            let hold = a.hold().filter(|(held, _)| *held);
            Ok((
                if changed {
                    Change::Put(a)
                } else {
                    Change::Keep
                },
                hold,
            ))
        })
        .await
        .map_err(kv_err)?;
    Ok(hold.map(|h| balance_hold(iccid, h)))
}

/// The balance hold of `account` after a credit or a move landed on it, with its used counter read after that:
/// the hold as it stands (a release if the credit lifted it: applied idempotently by dispatch, so a release that
/// was not applied is applied when the same payment is sent again), or, if usage has used the balance up again
/// meanwhile, the exhaustion's hold ([`exhaust`], a new epoch after the release).
pub async fn settle_hold(
    account: &Account,
    used: u64,
) -> Result<Option<wit::BalanceHold>, wit::Error> {
    let iccid = account.iccid.as_str();
    if account.closed.is_none() && !account.closing && account.remaining(used) <= 0 {
        return exhaust(iccid, used).await;
    }
    Ok(account.hold().map(|h| balance_hold(iccid, h)))
}

/// `iccid`'s balance hold for dispatch, from the account's `(held, epoch)` (kernel `Account::hold`).
pub fn balance_hold(iccid: &str, (hold, epoch): (bool, u64)) -> wit::BalanceHold {
    wit::BalanceHold {
        iccid: iccid.to_owned(),
        hold,
        epoch,
    }
}

/// Close the account of a terminated SIM at `now`: the unused-data refund shares (JSON), fixed by the first
/// close. The account is marked closing first and the used counter read and the SIM's grants sealed after that
/// ([`seal`]), so every charge made before the close is in the shares, every grant handed out is left out
/// of them, and no grant is made after the seal (`grants::grant`).
/// What grants still outstanding let the device use is not refunded (kernel `usage::grant::close_at`): it is
/// charged when reported. A SIM without an account (terminated before its first credit) gets a closed one with
/// no refunds (kernel `Account::closed_unopened`), so a top-up or a switch's move that lands after the
/// terminate is refused rather than opening a live account on it.
pub async fn close(iccid: &str, now: u64) -> Result<String, wit::Error> {
    let iccid = parse_iccid(iccid)?;
    let shares = close_with(&iccid, |a, used, grants| {
        a.terminate(grant::close_at(used, grants, now), now)
    })
    .await?;
    serde_json::to_string(&shares).map_err(internal)
}

/// [`close`]'s steps, the account closed at the used counter by `close` (kernel `Account::close`, or
/// `Account::close_failed` for a SIM whose profile can never be installed).
pub async fn close_with(
    iccid: &Iccid,
    close: impl Fn(&mut Account, u64, Option<&Reservation>) -> Vec<RefundShare>,
) -> Result<Vec<RefundShare>, wit::Error> {
    let key = keys::balance(iccid.as_str());
    let (closing, ()) = kv::change_json::<Account, (), wit::Error>(&key, |cur| match cur {
        None => Ok((Change::Put(Account::closed_unopened(iccid.clone())), ())),
        Some(mut a) => Ok(if a.begin_close() {
            (Change::Put(a), ())
        } else {
            (Change::Keep, ())
        }),
    })
    .await
    .map_err(kv_err)?;
    if closing.as_ref().is_none_or(Account::is_unopened) {
        return Ok(Vec::new());
    }
    // With what the SIM it replaced still owes it, so the refunds leave those bytes out.
    let used = used(iccid.as_str())?;
    let used = match &closing {
        Some(a) => collect(a, used).await?,
        None => used,
    };
    // Sealed, not only read, while the account is closing: a grant reserving after this is refused, and one
    // before it is in `grants`. An account closed otherwise (moved away by a switch, which a failed switch can
    // take back, or closed already) takes no grant anyway, and its reservation is only read.
    let grants = if closing.as_ref().is_some_and(|a| a.closing) {
        seal(iccid.as_str(), used).await?
    } else {
        reservation(iccid.as_str()).await?
    };
    let (_, shares) = kv::update_json_with(&key, |cur: Option<Account>| match cur {
        None => Err(wit::Error::NotFound(format!("no metered SIM {iccid}"))),
        Some(mut a) => {
            let shares = close(&mut a, used, grants.as_ref());
            Ok((a, shares))
        }
    })
    .await
    .map_err(kv_err)?;
    Ok(shares)
}
