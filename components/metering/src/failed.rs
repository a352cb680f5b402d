//! Closing the account of a SIM whose profile can never be installed (kernel `usage::failed`): its own credits'
//! unused data is refunded as a terminate refunds it; a switch's balance goes back to the SIM it replaced.
//!
//! Order (two cells): the failed SIM's account is closed first, leaving out the credits the old account
//! records as moved to it (`Account::returnable_to`, read before the close: a move that lands after that read
//! is refunded with the rest, and does not come back); then, only if the move was seen, the old account takes
//! them back (`Account::take_back`, inside its own cell update, which checks the same again). Between the two
//! the failed account is closed, so nothing draws on the moved credits there. If the old account cannot take them back
//! (the move bounced meanwhile: the new account refused it), it already owes them as its refunds: either way
//! each credit is owed or held once. A repeat finds the close fixed and the data back.

use esim402_core::store::keys;
use esim402_core::usage::account::Account;
use esim402_guest::convert::{internal, kv_err};
use esim402_guest::kv::{self, Change};

use crate::accounts::{close_with, load, parse_iccid, settle_hold, used};
use crate::bindings::exports::esim402::metering::metering as api;
use esim402_guest::wit;

/// `fail`: close `iccid`'s account as a failed SIM's; the switch's balance back on the SIM it replaced.
pub async fn fail(iccid: &str) -> Result<api::FailedAccount, wit::Error> {
    let iccid = parse_iccid(iccid)?;
    let account = load(iccid.as_str()).await?;
    let old = account.as_ref().and_then(|a| a.replaces.clone());
    // The move as seen before the close: only credits left out of the refunds here may go back. A move that
    // lands after this read is in the refunds (owed as a terminate owes it) and stays where it is.
    let returned = match &old {
        Some(old) => load(old.as_str())
            .await?
            .and_then(|o| o.returnable_to(&iccid)),
        None => None,
    };
    let left_out = returned.clone().unwrap_or_default();
    let shares = close_with(&iccid, |a, used| a.close_failed(used, &left_out)).await?;
    let refunds = serde_json::to_string(&shares).map_err(internal)?;
    let Some(old) = old else {
        return Ok(api::FailedAccount {
            refunds,
            restored: None,
            hold: None,
        });
    };
    let key = keys::balance(old.as_str());
    if returned.is_some() {
        kv::change_json::<Account, (), wit::Error>(&key, |cur| {
            let Some(mut a) = cur else {
                return Ok((Change::Keep, ()));
            };
            Ok(if a.take_back(&iccid) {
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
