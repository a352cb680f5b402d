//! Closing the account of a SIM whose profile can never be installed (kernel `usage::failed`): its own credits'
//! unused data is refunded as a terminate refunds it; a switch's balance goes back to the SIM it replaced.
//!
//! Order (two cells):
//! 1. The failed SIM's account is closed, leaving out the credits the old account records as moved to it
//!    (`Account::returnable_to`, read before the close: a move that lands here after that read is refunded
//!    with the rest, and does not come back), at the SIM's own use (kernel `Returnable::own_use`, with the old
//!    SIM's counter read after this one's: a byte the old SIM handed on is charged once, there).
//! 2. The old account takes the moved credits back (`Account::take_back`, inside its own cell update, which
//!    checks the same again) if the close left them out, or if the failed account never took them (the failure
//!    landed between the move's two updates: the closed account refuses the rest of the move now). Never from
//!    a failed SIM that moved on itself (switched again): its balance, the old SIM's with it, is on the next SIM.
//!    An old SIM terminated since the move (before step 1 or between the steps) takes no data back: the moved
//!    credits become its refunds (kernel `Account::take_back`), which the gateway then owes through the old
//!    SIM's `close` (`refund_unused`). A retry after a failure between the steps finds the move untouched and
//!    does step 2 again.
//!
//! Between the two the failed account is closed, so nothing draws on the moved credits there. If the old
//! account cannot take them back (the move bounced meanwhile: the new account refused it), it already owes them
//! as its refunds: either way each credit is owed or held once. A repeat finds the close fixed and the data
//! back.

use esim402_core::esim::iccid::Iccid;
use esim402_core::store::keys;
use esim402_core::usage::account::Account;
use esim402_guest::convert::{internal, kv_err};
use esim402_guest::kv::{self, Change};

use crate::accounts::{close_with, load, parse_iccid, settle_hold, used};
use crate::bindings::exports::esim402::metering::metering as api;
use esim402_guest::wit;

/// `fail`: close `iccid`'s account as a failed SIM's; the switch's balance back on the SIM it replaced
/// (`replaces`, the SIM record's, for a move not landed here yet; the account's own record of it first).
pub async fn fail(iccid: &str, replaces: Option<&str>) -> Result<api::FailedAccount, wit::Error> {
    let iccid = parse_iccid(iccid)?;
    let account = load(iccid.as_str()).await?;
    let old = match account.as_ref().and_then(|a| a.replaces.clone()) {
        Some(old) => Some(old),
        None => replaces.map(parse_iccid).transpose()?,
    };
    // The move as seen before the close: only credits left out of the refunds here may go back. A move that
    // lands here after this read is in the refunds (owed as a terminate owes it) and stays where it is.
    let returned = match &old {
        Some(old) => load(old.as_str())
            .await?
            .and_then(|o| o.returnable_to(&iccid)),
        None => None,
    };
    let left_out = returned
        .as_ref()
        .map(|r| r.invoices.clone())
        .unwrap_or_default();
    // The old SIM's counter before the close: the fallback for a read that fails inside it.
    let old_before = match (&old, &returned) {
        (Some(old), Some(_)) => used(old.as_str())?,
        _ => 0,
    };
    let shares = close_with(&iccid, |a, used_new, _grants| {
        let own = match (&old, &returned) {
            // The old SIM's counter read now, after `used_new` (a read, `increment(0)`: a rerun is harmless).
            (Some(old), Some(r)) => r.own_use(used_new, used(old.as_str()).unwrap_or(old_before)),
            _ => used_new,
        };
        a.close_failed(own, &left_out)
    })
    .await?;
    let refunds = serde_json::to_string(&shares).map_err(internal)?;
    let Some(old) = old else {
        return Ok(api::FailedAccount {
            refunds,
            restored: None,
            hold: None,
        });
    };
    if let Some(past) = goes_back(&iccid, &old, returned.is_some()).await? {
        // Its counter read before the take-back, so a hold that followed the replacement's balance is lifted only
        // if the balance back leaves some at a reading the SIM has reached (a later one is settled below). The
        // hold is decided afresh past the replacement's epoch `past` (kernel `Account::take_back`): an earlier
        // build sent the old SIM the replacement's holds, in the replacement's epochs.
        let used_old = used(old.as_str())?;
        kv::change_json::<Account, (), wit::Error>(&keys::balance(old.as_str()), |cur| {
            let Some(mut a) = cur else {
                return Ok((Change::Keep, ()));
            };
            Ok(if a.take_back(&iccid, used_old, past) {
                (Change::Put(a), ())
            } else {
                (Change::Keep, ())
            })
        })
        .await
        .map_err(kv_err)?;
    }
    // The old SIM's account as it stands now: holding its balance (back, or never moved), with its hold (a
    // release, or a hold if its usage since used the balance up).
    let live = load(old.as_str())
        .await?
        .filter(|a| a.moved_to.is_none() && a.closed.is_none() && !a.is_unopened());
    let hold = match &live {
        Some(a) => settle_hold(a, used(old.as_str())?).await?,
        None => None,
    };
    Ok(api::FailedAccount {
        refunds,
        restored: live.map(|a| a.iccid.to_string()),
        hold,
    })
}

/// Whether what `old` moved to the failed SIM `failed`, now closed, goes back to `old`: the close left it out
/// (`left_out`), or the failed account never took it (it does not name `old`: the move stopped between its two
/// updates, and a closed account refuses the rest), unless that account moved on itself (switched again). If it
/// goes back: the failed account's hold epoch as the close left it (0 without an account; a closed account's
/// holds change no more), which the old SIM's hold must pass.
async fn goes_back(failed: &Iccid, old: &Iccid, left_out: bool) -> Result<Option<u64>, wit::Error> {
    let closed = load(failed.as_str()).await?;
    if closed.as_ref().is_some_and(|a| a.moved_to.is_some()) {
        return Ok(None);
    }
    let past = closed.as_ref().map_or(0, |a| a.hold_epoch);
    let back = left_out || closed.is_none_or(|a| a.replaces.as_ref() != Some(old));
    Ok(back.then_some(past))
}
