//! The balance holds a receipt batch reports (kernel `Account::exhausted`, `Account::standing_hold`): every SIM
//! it ran out of balance, and every SIM it named but charged nothing (a batch sent again) that is still held.
//! Each hold is read from the account again, never as the batch read it: a top-up that landed since released
//! the hold with a later epoch, which a hold as read would not override (dispatch keeps the latest).

use std::collections::HashMap;

use esim402_core::usage::account::Account;
use esim402_guest::wit;

use crate::accounts;
use crate::charge::Charged;

/// What the batch's charges (`charged`: each SIM, its used counter after, and for a switched-away SIM what its
/// hand-on did, `crate::charge`) do to the accounts as the batch read them, and the standing holds of the SIMs
/// its verified receipts named without charging (`resent`).
pub async fn settle(
    accounts: &HashMap<String, Option<Account>>,
    charged: &[Charged<'_>],
    resent: &[&String],
) -> Result<Vec<wit::BalanceHold>, wit::Error> {
    let mut holds = Vec::new();
    for c in charged {
        let iccid = c.iccid;
        let Some(account) = accounts.get(iccid).and_then(Option::as_ref) else {
            continue;
        };
        let used = accounts::collect(account, c.used).await?;
        if let Some((moved_to, _)) = &account.moved_to {
            // Switched away: its data moved to the new SIM, and so does what it still uses. If the new SIM's
            // balance is out, both are held (the old one draws on it until it is replaced), each in its own
            // account's epochs. Whether or not this batch handed its bytes on: a balance read of the new SIM
            // may have collected them first (`accounts::collect`), and the hold must not be missed then (it
            // was: the batch's own hand-on found nothing and looked no further); the new SIM's counter is read.
            let (to, used_to) = match &c.forwarded {
                Some((to, used_to)) => (to.clone(), *used_to),
                None => (moved_to.clone(), accounts::used(moved_to.as_str())?),
            };
            if let Some(hold) = accounts::exhaust(to.as_str(), used_to).await? {
                holds.extend(accounts::follow(iccid, hold.epoch).await?);
                holds.push(hold);
            }
            continue;
        }
        // Out of balance: the hold, every batch (a hold that was not applied is applied by a later batch). The
        // account as read decides whether to look (credits only grow).
        if account.closed.is_none() && !account.closing && account.remaining(used) <= 0 {
            holds.extend(accounts::exhaust(iccid, used).await?);
        }
    }
    // Sent again (all duplicates): the hold, if the account as read was held, as the account says now (its
    // first report may not have been applied). Only SIMs its verified receipts named: a stranger's forged
    // receipts naming held SIMs cost no hold calls.
    for iccid in resent {
        let Some(account) = accounts.get(*iccid).and_then(Option::as_ref) else {
            continue;
        };
        if account.standing_hold().is_some() {
            let used = accounts::collect(account, accounts::used(iccid)?).await?;
            holds.extend(accounts::exhaust(iccid, used).await?);
        }
    }
    Ok(holds)
}
