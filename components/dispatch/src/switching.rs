//! Switching a SIM to another carrier or region (kernel `order::start_switch`, priced with the catalog): the
//! replacement is ordered like any paid order, and the old SIM stays in service until the replacement is
//! installed ([`crate::sims`]'s download-progress callbacks retire it). One switch at a time: the old record is
//! claimed for the switch's invoice before its replacement is ordered (again by the same payment sent again),
//! and names the replacement only while that claim holds (kernel `order::claim_switch`, `order::settle_switch`,
//! each inside the record's cell update).

use esim402_core::esim::{Eid, ProfileState};
use esim402_core::order::{
    self, StoredSim, SwitchError, SwitchStart, SwitchTarget, claim_switch, settle_switch,
    start_switch,
};
use esim402_core::store::keys;
use esim402_core::{CarrierId, DataMb, Region};
use esim402_guest::convert::{internal, invalid, kv_err, message, sim_to_wit};
use esim402_guest::kv::{self, Change};
use esim402_guest::wit;

use crate::config::Config;
use crate::ordering;
use crate::sim_store::{load, parse_iccid};
use crate::sims::{existing, not_sold, retire_replaced_sim};
use crate::spec::{OrderSpec, serving};

fn target(t: &wit::SwitchTarget) -> SwitchTarget {
    match t {
        wit::SwitchTarget::Carrier(c) => SwitchTarget::Carrier(c.clone()),
        wit::SwitchTarget::Region(r) => SwitchTarget::Region(r.clone()),
    }
}

/// A switch the kernel's rules refuse: a bad target is the request's fault, a SIM's state a conflict.
fn refused(e: SwitchError) -> wit::Error {
    match e.field() {
        Some(field) => invalid(field, e.to_string()),
        None => wit::Error::Conflict(e.to_string()),
    }
}

/// The SIM that `sim`'s `replaced_by` names, as stored.
async fn replacement(sim: &StoredSim) -> Result<Option<StoredSim>, wit::Error> {
    match &sim.replaced_by {
        Some(next) => load(&parse_iccid(next)?).await,
        None => Ok(None),
    }
}

/// Where a switch of `sim` to `t` goes in the catalog (the kernel's rules already applied).
fn route(
    cfg: &Config,
    sim: &StoredSim,
    t: &wit::SwitchTarget,
) -> Result<(Region, CarrierId, bool), wit::Error> {
    let here = Region::parse(&sim.region).map_err(|e| internal(e.0))?;
    match t {
        wit::SwitchTarget::Carrier(c) => {
            let c = CarrierId::parse(c).map_err(|e| invalid("carrier", e.0))?;
            serving(cfg, &here, Some(&c), false)?;
            Ok((here, c, false))
        }
        wit::SwitchTarget::Region(r) => {
            let r = Region::parse(r).map_err(|e| invalid("region", e.0))?;
            let first = serving(cfg, &r, None, true)?
                .first()
                .map(|c| c.id.clone())
                .ok_or_else(|| invalid("region", format!("no carrier serves {r}")))?;
            Ok((r, first, true))
        }
    }
}

/// `quote-switch`: the switch charge (kernel pricing).
pub async fn quote_switch(iccid: &str, t: &wit::SwitchTarget) -> Result<wit::Quote, wit::Error> {
    let cfg = crate::config::get().await?;
    let sim = existing(iccid).await?;
    // Quoted as a new switch (no invoice yet): a replacement that never took over does not block it.
    start_switch(&sim, replacement(&sim).await?.as_ref(), &target(t), "").map_err(refused)?;
    let (region, carrier, _) = route(&cfg, &sim, t)?;
    // The fee: the unused balance moves by its value (metering revalues it at the new carrier's rate).
    if cfg.price_book.rate(&carrier).is_none() {
        return Err(not_sold(&carrier));
    }
    let amount = cfg.price_book.switch_charge();
    Ok(wit::Quote {
        carrier: carrier.to_string(),
        region: region.to_string(),
        data_mb: sim.data_mb,
        amount: amount.micros(),
        sealed: None,
    })
}

/// `perform-switch`: order the new profile (paid by `invoice_id`); the old one stays in service until the new
/// one is installed (a failed switch must not leave the device without connectivity). The same invoice again
/// (a payment sent again, an order left pending) drives its own order again (kernel `order::start_switch`).
/// `withdraw`: when its new profile's order is withdrawn if left pending ([`OrderSpec::withdraw`]).
pub async fn perform_switch(
    iccid: &str,
    t: &wit::SwitchTarget,
    invoice_id: &str,
    now: u64,
    withdraw: Option<crate::spec::Withdraw>,
) -> Result<wit::Sim, wit::Error> {
    let cfg = crate::config::get().await?;
    let old = existing(iccid).await?;
    let start = start_switch(
        &old,
        replacement(&old).await?.as_ref(),
        &target(t),
        invoice_id,
    )
    .map_err(refused)?;
    let (region, carrier, failover) = route(&cfg, &old, t)?;
    // A replay claims the SIM too: its order may still fail over from the SIM it named (left pending, then
    // refused), and the SIM it delivers instead is named only under the claim. Best effort for a replay: one
    // refused (the SIM left service, e.g. retired by this switch's replacement) still answers its order.
    let lease = order::lease_secs(cfg.budget.as_secs(), cfg.call_timeout.as_secs());
    let seen = old.replaced_by.as_deref();
    let claimed = change_old(&old.iccid, |sim| {
        claim_switch(sim, seen, invoice_id, now, lease).map_err(refused)
    })
    .await;
    match claimed {
        Err(e) if start == SwitchStart::Order => return Err(e),
        Err(e) => eprintln!(
            "dispatch: the switch of SIM {iccid} (invoice {invoice_id}) is replayed without its claim: {}",
            message(&e)
        ),
        Ok(_) => {}
    }
    let spec = OrderSpec {
        region,
        data_mb: DataMb::new(old.data_mb.into()).map_err(|e| internal(e.0))?,
        carrier: Some(carrier),
        eid: old
            .eid
            .as_deref()
            .map(|e| Eid::parse(e).map_err(internal))
            .transpose()?,
        allow_failover: failover,
        replaces: Some(old.iccid.clone()),
        owner: old.access.owner,
        label: old.label.clone(),
        withdraw,
    };
    let new = match ordering::order(spec, invoice_id, now).await {
        Ok(new) => new,
        Err(e) => {
            // Ordered nothing: the SIM is free for another switch at once, unless this invoice's order is
            // still driven by another call: its claim stays (it runs out with the order's lease).
            if !ordering::driven_elsewhere(&e, invoice_id)
                && let Err(e) =
                    change_old(&old.iccid, |sim| Ok(settle_switch(sim, invoice_id, None))).await
            {
                eprintln!(
                    "dispatch: the switch claim on SIM {iccid} stays until it runs out: {}",
                    message(&e)
                );
            }
            return Err(e);
        }
    };
    // Delivered: naming it is best effort (an error would end the payment as if nothing had been delivered).
    let named = change_old(&old.iccid, |sim| {
        Ok(settle_switch(sim, invoice_id, Some(&new.iccid)))
    })
    .await;
    if !matches!(&named, Ok(sim) if sim.replaced_by.as_deref() == Some(new.iccid.as_str())) {
        let why = named.err().map_or_else(
            || "another switch took that SIM over after this one's claim ran out".to_owned(),
            |e| message(&e),
        );
        eprintln!(
            "dispatch: ALERT: SIM {} replaces SIM {iccid}, which does not name it ({why}): its installation \
             will not retire SIM {iccid}",
            new.iccid
        );
    }
    // The device may have reported the installation before the switch named its SIM (the callback found the
    // replacement still pending, kernel `order::progress_after`): the old SIM leaves service now. Best effort:
    // the replacement is delivered either way.
    // The replacement as stored now, not this order's copy: its owner may have terminated it since.
    let stored = parse_iccid(&new.iccid).ok();
    let fresh = match &stored {
        Some(i) => load(i).await.ok().flatten(),
        None => None,
    };
    if let Some(fresh) = fresh.filter(|f| f.profile_state == Some(ProfileState::Installed))
        && let Err(e) = retire_replaced_sim(&old.iccid, &fresh).await
    {
        eprintln!(
            "dispatch: SIM {} is installed, but SIM {iccid} it replaces is not retired: {}",
            new.iccid,
            message(&e)
        );
    }
    Ok(sim_to_wit(&new))
}

/// Update the old SIM of a switch with `f` (kernel rule; `None`: nothing to write), inside its cell update.
async fn change_old(
    iccid: &str,
    f: impl Fn(&StoredSim) -> Result<Option<StoredSim>, wit::Error>,
) -> Result<StoredSim, wit::Error> {
    let no_sim = || wit::Error::NotFound(format!("no SIM {iccid}"));
    let (sim, ()) = kv::change_json::<StoredSim, (), wit::Error>(&keys::sim(iccid), |current| {
        let current = current.ok_or_else(no_sim)?;
        Ok(match f(&current)? {
            Some(next) => (Change::Put(next), ()),
            None => (Change::Keep, ()),
        })
    })
    .await
    .map_err(kv_err)?;
    sim.ok_or_else(no_sim)
}
