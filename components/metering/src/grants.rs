//! Quota grants (kernel `usage::grant`): each reserves its bytes in the SIM's `meter/<iccid>/grant` cell until
//! usage reports them or the grant lapses, so grants asked at once never hand out the same bytes; a terminate's
//! refunds count what is still outstanding as used.

use esim402_core::store::keys;
use esim402_core::usage::account::LateRate;
use esim402_core::usage::grant::{self, Grant, Reservation};
use esim402_guest::convert::kv_err;
use esim402_guest::kv::{self, Change};
use esim402_guest::wit;

use crate::accounts::{collect, load, parse_iccid, reservation, to_wit, used};
use crate::bindings::exports::esim402::metering::metering as api;

/// Grant up to `quota` bytes (kernel `grant::decide`). With `reserve` (the carrier asked) the grant is reserved
/// by compare-and-swap on the SIM's reservation, and a reserved grant is handed out: a terminate seals the
/// reservation when it reads it for its refunds (`crate::accounts::seal`), so a grant stored before the seal is left out of
/// the refunds, and one after it is refused (the kernel's `decide` on a sealed reservation). A switch does not
/// seal: the account is read again after the write, and one moved meanwhile hands nothing out (the move may
/// have carried the SIM's grants to the new SIM before this one landed; its bytes stay reserved here until it
/// lapses). Without `reserve`, the reservation is only read.
pub async fn grant(
    iccid: &str,
    quota: Option<u64>,
    reserve: bool,
    now: u64,
) -> Result<api::Granted, wit::Error> {
    let iccid = parse_iccid(iccid)?;
    let not_found = || wit::Error::NotFound(format!("no metered SIM {iccid}"));
    let account = load(iccid.as_str())
        .await?
        .filter(|a| !a.is_unopened())
        .ok_or_else(not_found)?;
    let used = collect(&account, used(iccid.as_str())?).await?;
    if !reserve {
        let current = reservation(iccid.as_str()).await?;
        let (used, reserved) = grant::counted(current.as_ref(), used, now);
        let (bytes, valid_until) =
            grant::decide(&account, used, current.as_ref(), quota, now).granted();
        return Ok(api::Granted {
            balance: to_wit(&account, used, reserved),
            bytes,
            valid_until,
        });
    }
    // Each try reads the counter again (a plain `increment(0)`): usage reported while it retried is not granted.
    let (stored, (decision, used)) = kv::change_json::<Reservation, (Grant, u64), wit::Error>(
        &keys::meter_grant(iccid.as_str()),
        |cur| {
            let used = crate::accounts::used(iccid.as_str()).map_or(used, |now| now.max(used));
            let d = grant::decide(&account, used, cur.as_ref(), quota, now);
            Ok(match &d {
                Grant::Granted { reservation, .. } => (Change::Put(reservation.clone()), (d, used)),
                Grant::Closed | Grant::Low { .. } => (Change::Keep, (d, used)),
            })
        },
    )
    .await
    .map_err(kv_err)?;
    let (used, reserved) = grant::counted(stored.as_ref(), used, now);
    let (bytes, valid_until) = decision.granted();
    if bytes > 0 {
        let now_account = load(iccid.as_str()).await?.ok_or_else(not_found)?;
        if now_account.moved_to.is_some() {
            return Ok(api::Granted {
                balance: to_wit(&now_account, used, reserved),
                bytes: 0,
                valid_until: 0,
            });
        }
    }
    Ok(api::Granted {
        balance: to_wit(&account, used, reserved),
        bytes,
        valid_until,
    })
}

/// A switch moved `from`'s data to `to`: what `from` still reports is charged to `to`, so `to` takes on the
/// grants `from` has outstanding (kernel `Reservation::carry`). Called once per move (by the call that moved
/// the credits); a crash before it leaves them unreserved on `to`. On another carrier each grant reserves what
/// its bytes are worth there (`late_rate`: kernel `Reservation::carry`).
pub async fn carry(
    from: &str,
    used_from: u64,
    to: &str,
    now: u64,
    late_rate: Option<LateRate>,
) -> Result<(), wit::Error> {
    let Some(old) = reservation(from).await? else {
        return Ok(());
    };
    let bytes = old.outstanding(used_from, now);
    if bytes == 0 {
        return Ok(());
    }
    let live = old.at(used_from, now).grants;
    let used_to = used(to)?;
    kv::change_json::<Reservation, (), wit::Error>(&keys::meter_grant(to), |cur| {
        let carried = Reservation::carry(cur.as_ref(), used_to, &live, late_rate.as_ref(), now);
        Ok((Change::Put(carried), ()))
    })
    .await
    .map_err(kv_err)?;
    Ok(())
}
