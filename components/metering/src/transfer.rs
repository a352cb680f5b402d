//! A switch's move: the old SIM's unused data goes to the new SIM (kernel `Account::transfer_out`, then
//! `Account::take_moved`). The two accounts are two cells, so the move is two updates: the old account gives its
//! data up first (fixed once), then the new one takes it (once per invoice). A new SIM terminated before the
//! move is refused before the old account gives anything up; one terminated between the two updates refuses
//! the credits, and the old account then owes their value back (kernel `Account::bounce`): never a success, and
//! never value left on a terminated SIM.

use esim402_core::esim::iccid::Iccid;
use esim402_core::ledger::{EntryFields, EntryKind};
use esim402_core::store::keys;
use esim402_core::usage::account::{Account, AccountError, revalue};
use esim402_core::{CarrierId, UsdcAmount};
use esim402_guest::convert::{event_to_wit, internal, invalid, kv_err, kv_fault};
use esim402_guest::kv::{self, Change};
use esim402_guest::wit;

use crate::accounts::{
    collect, forward, outstanding, parse_iccid, roaming, settle_hold, to_wit, used,
};
use crate::bindings::exports::esim402::metering::metering as api;

/// Move the old SIM's unused data to `to` (a switch): close the old account (fixed once), then open or top up
/// the new one with the moved credits (each invoice once, so a repeat adds nothing). `conflict` if the new SIM
/// was terminated: before the old account gave its data up, the old SIM keeps it; after, the old account is
/// closed with the moved credits as its refunds (its `close` returns them, to be owed back).
pub async fn transfer(from: &str, to: wit::Sim, now: u64) -> Result<api::Credited, wit::Error> {
    let from = parse_iccid(from)?;
    let to_iccid = parse_iccid(&to.iccid)?;
    let carrier = CarrierId::parse(&to.carrier).map_err(|e| invalid("carrier", e.to_string()))?;
    let policy = roaming(&to)?;
    // With what the SIM `from` replaced still owes it (a second switch), so none of it is stranded. The
    // account as read here is where the move starts (no second read).
    let key = keys::balance(from.as_str());
    let (read, version) = kv::read_json::<Account, wit::Error>(&key)
        .await
        .map_err(kv_err)?;
    let used_old = used(from.as_str())?;
    let used_old = match &read {
        Some(a) => collect(a, used_old).await?,
        None => used_old,
    };
    // Credits moving to another carrier are revalued at its rate after the old account gave them up: a carrier
    // without a usable rate is refused before (the move then fails, and the balance stays on the old SIM).
    let book = &crate::config::get().await?.price_book;
    if read
        .as_ref()
        .and_then(|a| a.carrier.as_ref())
        .is_some_and(|c| *c != carrier)
        && book.bytes_for(&carrier, UsdcAmount::ZERO).is_none()
    {
        return Err(internal(format!(
            "no usable rate for {carrier}: the balance of {from} stays there"
        )));
    }
    // A new SIM whose account is closed or closing (terminated before the move ran; one terminated before it
    // had an account has a closed one) cannot take the credits: refused before the old account gives them up,
    // so they stay where they are. A move that already gave them up goes on: the new account says below whether
    // it holds them (a repeat) or refuses them.
    let to_key = keys::balance(to_iccid.as_str());
    let moved_there = read
        .as_ref()
        .and_then(|a| a.moved_to.as_ref())
        .is_some_and(|(dest, _)| *dest == to_iccid);
    if !moved_there
        && let Some(dest) = kv::get_json::<Account, wit::Error>(&to_key)
            .await
            .map_err(kv_err)?
            .filter(|a| a.closing || a.closed.is_some())
    {
        return Err(wit::Error::Conflict(format!(
            "SIM {} is terminated: the balance of {from} stays there",
            dest.iccid
        )));
    }
    // If the version moved meanwhile the move runs on the newer account with `used_old` as read: older than a
    // fold the newer account may hold, which the kernel allows for (`transfer_out` moves at no less).
    // On another carrier the first move also fixes the rates the old SIM's later usage is handed on at (kernel
    // `LateRate`: by its value, as the moved balance).
    let rate = |c: &CarrierId| book.rate(c).map(|r| r.milli_micros_per_mb);
    let (_, (moved, from_carrier, late_rate), _) =
        kv::change_json_from(&key, Some(version), |cur: Option<Account>| {
            let mut a =
                cur.ok_or_else(|| wit::Error::NotFound(format!("no metered SIM {from}")))?;
            let rates = a
                .carrier
                .as_ref()
                .filter(|c| **c != carrier)
                .and_then(|c| rate(c).zip(rate(&carrier)));
            let moved = a
                .transfer_out_priced(&to_iccid, used_old, now, rates)
                .map_err(|e| wit::Error::Conflict(e.to_string()))?;
            let (carrier, late_rate) = (a.carrier.clone(), a.late_rate);
            Ok((Change::Put(a), (moved, carrier, late_rate)))
        })
        .await
        .map_err(kv_err)?;
    // The balance moves by its value: on another carrier each credit gets the bytes its value buys there
    // (kernel `account::revalue`; the switch itself is charged its fee only).
    let moved = revalue(moved, from_carrier.as_ref() == Some(&carrier), |value| {
        book.bytes_for(&carrier, value)
    })
    .ok_or_else(|| internal(format!("no rate for {carrier} or {from_carrier:?}")))?;
    let used_new = used(to_iccid.as_str())?;
    let taken = kv::update_json_with(&to_key, |cur: Option<Account>| {
        let Some(mut a) = cur else {
            let mut a = Account::opened_with(
                to_iccid.clone(),
                carrier.clone(),
                policy.clone(),
                moved.clone(),
                to.created_at.min(now),
            );
            a.replaces = Some(from.clone());
            return Ok((a, true));
        };
        a.opened_at.get_or_insert(to.created_at.min(now));
        let added = a.take_moved(&from, &moved, used_new)?;
        Ok((a, added))
    })
    .await;
    let (account, new) = match taken {
        Ok(taken) => taken,
        // Terminated since the check above, after the old account gave its data up: owed back from there.
        Err(kv::KvError::Refused(AccountError::Closed(_))) => {
            bounce(&from, &to_iccid).await?;
            return Err(wit::Error::Conflict(format!(
                "SIM {to_iccid} was terminated while the balance of {from} moved to it: that balance is \
                 owed back (the refunds of {from}'s account)"
            )));
        }
        Err(kv::KvError::Refused(e)) => return Err(wit::Error::Conflict(e.to_string())),
        Err(other) => return Err(kv_fault("", other)),
    };
    // What the old SIM charged between the read above and the move is handed on now; what it reports later,
    // by the batches that charge it.
    let used_from = used(from.as_str())?;
    forward(from.as_str(), used_from).await?;
    // What the old SIM reports from now on draws on the new SIM: so do its outstanding grants (once, by the
    // call that moved the credits).
    if new {
        crate::grants::carry(from.as_str(), used_from, to_iccid.as_str(), now, late_rate).await?;
    }
    // The new SIM's hold, with its used counter read now: a release if the moved credits refilled a balance
    // that had run out, or a hold if usage handed on (or charged meanwhile) leaves nothing.
    let used_new = used(to_iccid.as_str())?;
    let hold = settle_hold(&account, used_new).await?;
    let (used_new, reserved) = outstanding(to_iccid.as_str(), used_new, now).await?;
    let balance = to_wit(&account, used_new, reserved);
    let bytes: u64 = moved.iter().map(|c| c.bytes).sum();
    let value: u64 = moved.iter().map(|c| c.paid.micros()).sum();
    let fields = EntryFields::default()
        .amount(UsdcAmount::from_micros(value))
        .detail("iccid", to_iccid.as_str())
        .detail("kind", "transfer")
        .detail("from_iccid", from.as_str())
        .detail("bytes", bytes.to_string())
        .detail("remaining_bytes", balance.remaining_bytes.to_string());
    Ok(api::Credited {
        balance,
        new,
        hold,
        event: event_to_wit(EntryKind::DataCredited, &fields),
    })
}

/// The new SIM `to` refused what `from`'s account moved to it: `from`'s account owes the moved credits back as
/// its refunds (kernel `Account::bounce`; nothing changes if they did not move to `to`).
async fn bounce(from: &Iccid, to: &Iccid) -> Result<(), wit::Error> {
    kv::change_json::<Account, (), wit::Error>(&keys::balance(from.as_str()), |cur| {
        let Some(mut a) = cur else {
            return Ok((Change::Keep, ()));
        };
        let before = a.closed.clone();
        Ok(match a.bounce(to) {
            Some(_) if a.closed != before => (Change::Put(a), ()),
            _ => (Change::Keep, ()),
        })
    })
    .await
    .map_err(kv_err)?;
    Ok(())
}
