//! SIMs (`sim/<iccid>`, stored by [`crate::sim_store`]): reading them, and an invoice's ordered SIM (no side
//! effects; an order left pending is finished by [`resume_order`], a POST), the lifecycle state machine
//! (kernel `esim::owner_action` for the owner, `esim::balance_hold` for metering: each lifts only its own
//! hold; an invalid transition is a conflict), and the SM-DP+'s download-progress callbacks (kernel
//! `order::after_progress`: none for a SIM terminated or failed; only from the carrier that issued the SIM,
//! kernel `auth::callback`), which also retire the SIM a live replacement replaces once it is installed, if
//! that SIM still names it (kernel `order::retire_replaced`). A terminal download failure (kernel
//! `esim::failure`) fails a SIM whose profile never installed and retires that profile at the SM-DP+ as a
//! terminate does, again on each repeat of such a notification (queued if it cannot be sent now; the sweep
//! cancels only while `order::sweep_may_cancel` allows); its money is the gateway's (kernel `usage::failed`).
//! Switching is [`crate::switching`]'s. Terminating revokes the SIM's access token; failing keeps it, so the
//! owner still reads the SIM.

use esim402_core::auth::callback::check_issuer;
use esim402_core::esim::es2::HandleDownloadProgressInfoRequest;
use esim402_core::esim::{
    Eid, Iccid, ProfileState, SimAction, SimState, owner_action, retire_after_terminate,
    retire_on_terminate, top_up_refused,
};
use esim402_core::join::join_all;
use esim402_core::order::{self, StoredSim, after_progress, retire_replaced};
use esim402_core::store::keys;
use esim402_core::usage::account::TOP_UP_SIZES_MB;
use esim402_core::{CarrierId, DataMb, Region, UsdcAmount};
use esim402_guest::convert::{self, internal, invalid, kv_err, sim_to_wit};
use esim402_guest::kv::{self, Change};
use esim402_guest::{util, wit};

use crate::bindings::exports::esim402::dispatch::dispatch::SimPage;
use crate::ordering;
use crate::sim_store::{load, parse_iccid};
use crate::spec::OrderSpec;

/// The stored SIM, `not-found` if there is none.
pub async fn existing(iccid: &str) -> Result<StoredSim, wit::Error> {
    load(&parse_iccid(iccid)?)
        .await?
        .ok_or_else(|| wit::Error::NotFound(format!("no SIM {iccid}")))
}

/// `get-sim`: the SIM as stored.
pub async fn get(iccid: &str) -> Result<Option<wit::Sim>, wit::Error> {
    Ok(load(&parse_iccid(iccid)?).await?.map(|s| sim_to_wit(&s)))
}

/// `ordered-sim`: the SIM the order of `invoice_id` delivered or is confirming (kernel `order::ordered`),
/// without ordering anything; `conflict` while a live order has not allocated one yet.
pub async fn ordered_sim(invoice_id: &str, now: u64) -> Result<Option<StoredSim>, wit::Error> {
    let journal = kv::get_json::<order::Order, wit::Error>(&keys::order(invoice_id))
        .await
        .map_err(kv_err)?;
    let in_progress =
        || wit::Error::Conflict(format!("an order for invoice {invoice_id} is in progress"));
    match order::ordered(journal.as_ref(), now) {
        order::Ordered::Nothing => Ok(None),
        order::Ordered::InProgress => Err(in_progress()),
        // Allocated but its SIM record not stored yet (a crash between the two): the order's next driver
        // stores it; until then it is in progress.
        order::Ordered::Sim(iccid) => {
            match load(&parse_iccid(&iccid)?).await? {
                Some(sim) if order::belongs_to(&sim, invoice_id) => Ok(Some(sim)),
                // The profile went back to the pool and is another order's now: nothing of this one's is left.
                Some(_) => Ok(None),
                None => Err(in_progress()),
            }
        }
    }
}

/// `list-sims`: one page of the SIMs the signed-in wallet paid for (its owner index,
/// [`crate::sim_store::owned`]), only `label`'s if given, and only records the wallet owns: an ICCID indexed
/// for it may be recorded for another payer since (a profile given back to the pool and handed out again),
/// and that SIM is not listed. The page is checked before the wallet's nonce is used,
/// and the nonce is claimed only when the page lists something: any wallet may ask, and one that paid for
/// nothing must not make the store keep its nonces.
pub async fn list(
    wallet: &wit::WalletProof,
    label: Option<&str>,
    after: u64,
    limit: u32,
) -> Result<SimPage, wit::Error> {
    if !(1..=esim402_core::order::MAX_PAGE).contains(&limit) {
        return Err(invalid(
            "limit",
            format!("limit must be 1-{}", esim402_core::order::MAX_PAGE),
        ));
    }
    let owner = crate::access::wallet_address(wallet)?;
    let (owned, next) = crate::sim_store::owned(owner, after, limit).await?;
    if owned.is_empty() {
        return Ok(SimPage {
            sims: Vec::new(),
            next,
        });
    }
    crate::access::claim_wallet(wallet)?;
    let mut sims = Vec::new();
    for chunk in owned.chunks(crate::sim_store::READ_AHEAD) {
        let iccids = chunk
            .iter()
            .map(|i| parse_iccid(i))
            .collect::<Result<Vec<_>, _>>()?;
        for sim in join_all(iccids.iter().map(load)).await {
            if let Some(sim) = sim?
                && sim.access.owner == Some(owner)
                && label.is_none_or(|l| sim.label.as_deref() == Some(l))
            {
                sims.push(sim_to_wit(&sim));
            }
        }
    }
    Ok(SimPage { sims, next })
}

/// `resume-order`: finish the order that left the SIM pending (same invoice, same carrier, same confirm call
/// id); a SIM that is not pending is returned as it is.
pub async fn resume_order(iccid: &str) -> Result<wit::Sim, wit::Error> {
    let sim = existing(iccid).await?;
    if sim.state != SimState::Pending {
        return Ok(sim_to_wit(&sim));
    }
    let spec = OrderSpec {
        region: Region::parse(&sim.region).map_err(|e| internal(e.0))?,
        data_mb: DataMb::new(sim.data_mb.into()).map_err(|e| internal(e.0))?,
        carrier: Some(CarrierId::parse(&sim.carrier).map_err(|e| internal(e.0))?),
        eid: sim.eid.as_deref().and_then(|e| Eid::parse(e).ok()),
        allow_failover: false,
        replaces: sim.replaces.clone(),
        owner: sim.access.owner,
        label: sim.label.clone(),
        // Parked, if its payment can expire, by the order that left it pending.
        withdraw: None,
    };
    ordering::order(spec, &sim.invoice_id, util::now_secs())
        .await
        .map(|s| sim_to_wit(&s))
}

/// `quote-top-ups`: more data for a live SIM at its carrier's rate (kernel `PriceBook::top_up_offers`).
pub async fn quote_top_ups(
    iccid: &str,
    asked: Option<u32>,
    at_least_mb: u32,
) -> Result<Vec<wit::Quote>, wit::Error> {
    let cfg = crate::config::get().await?;
    let sim = existing(iccid).await?;
    // Where the balance is (a switch moved it) is metering's to say: the gateway asks before it sells one.
    if let Some(why) = top_up_refused(iccid, sim.state, false) {
        return Err(wit::Error::Conflict(why));
    }
    let asked = asked
        .map(|mb| DataMb::new(mb.into()).map_err(|e| invalid("top_up_mb", e.0)))
        .transpose()?;
    let carrier = CarrierId::parse(&sim.carrier).map_err(|e| internal(e.0))?;
    let offers = cfg
        .price_book
        .top_up_offers(&carrier, asked, &TOP_UP_SIZES_MB, at_least_mb)
        .ok_or_else(|| not_sold(&carrier))?;
    Ok(offers
        .into_iter()
        .map(|(mb, amount)| wit::Quote {
            carrier: sim.carrier.clone(),
            region: sim.region.clone(),
            data_mb: mb.get(),
            amount: amount.micros(),
            sealed: None,
        })
        .collect())
}

/// `data-value`: the data of an activation paid `paid` (kernel `PriceBook::sealed_data_value` with the
/// invoice's quote, `PriceBook::paid_data_value` for an invoice sealed without one).
pub async fn data_value(
    carrier: &str,
    data_mb: u32,
    paid: u64,
    quoted: Option<&wit::SealedQuote>,
) -> Result<u64, wit::Error> {
    let cfg = crate::config::get().await?;
    let mb = DataMb::new(data_mb.into()).map_err(|e| invalid("data_mb", e.0))?;
    let carrier = CarrierId::parse(carrier).map_err(|e| invalid("carrier", e.0))?;
    let paid = UsdcAmount::from_micros(paid);
    let book = &cfg.price_book;
    Ok(match quoted {
        Some(q) => {
            let q = convert::quote(q).ok_or_else(|| invalid("quoted", "not a carrier id"))?;
            book.sealed_data_value(&carrier, mb, paid, &q)
        }
        None => book.paid_data_value(&carrier, mb, paid),
    }
    .micros())
}

/// Apply the owner's lifecycle action (kernel `esim::owner_action`, a cell update); an invalid transition, or
/// resuming a SIM its balance holds, is a conflict. A terminate repeated on a terminated SIM writes nothing and
/// comes back with its conflict beside the SIM (kernel `esim::retire_after_terminate`: its profile is retired
/// again before the conflict is answered).
async fn transition(
    iccid: &Iccid,
    action: SimAction,
    by: Option<&wit::Credential>,
) -> Result<(StoredSim, Option<wit::Error>), wit::Error> {
    let no_sim = || wit::Error::NotFound(format!("no SIM {iccid}"));
    let (sim, repeat) =
        kv::change_json::<StoredSim, _, wit::Error>(&keys::sim(iccid.as_str()), |current| {
            let mut sim = current.ok_or_else(no_sim)?;
            if let Some(by) = by {
                crate::access::still_opens(&sim, by)?;
            }
            let refused = |e| wit::Error::Conflict(format!("SIM {iccid}: {e}"));
            match owner_action(sim.state, sim.holds, action) {
                Ok((state, holds)) => {
                    (sim.state, sim.holds) = (state, holds);
                    if sim.state == SimState::Terminated {
                        sim.access.token = None;
                    }
                    Ok((Change::Put(sim), None))
                }
                Err(e) if retire_after_terminate(sim.state, action) => {
                    Ok((Change::Keep, Some(refused(e))))
                }
                Err(e) => Err(refused(e)),
            }
        })
        .await
        .map_err(kv_err)?;
    Ok((sim.ok_or_else(no_sim)?, repeat))
}

/// `balance-hold`: metering's hold (kernel `esim::balance_hold`: in epoch order; a stale or repeated one writes
/// nothing).
pub async fn balance_hold(hold: &wit::BalanceHold) -> Result<wit::Sim, wit::Error> {
    let iccid = parse_iccid(&hold.iccid)?;
    let (sim, ()) =
        kv::change_json::<StoredSim, (), wit::Error>(&keys::sim(iccid.as_str()), |current| {
            let mut sim = current.ok_or_else(|| wit::Error::NotFound(format!("no SIM {iccid}")))?;
            Ok(
                match esim402_core::esim::balance_hold(sim.state, sim.holds, hold.hold, hold.epoch)
                {
                    Some((state, holds)) => {
                        (sim.state, sim.holds) = (state, holds);
                        (Change::Put(sim), ())
                    }
                    None => (Change::Keep, ()),
                },
            )
        })
        .await
        .map_err(kv_err)?;
    sim.map(|s| sim_to_wit(&s))
        .ok_or_else(|| wit::Error::NotFound(format!("no SIM {iccid}")))
}

/// `lifecycle`: suspend, resume or terminate; a terminated profile the device has not installed is retired at
/// the SM-DP+ so nobody can download it.
pub async fn lifecycle(
    iccid: &str,
    action: wit::LifecycleAction,
    by: Option<&wit::Credential>,
) -> Result<wit::Sim, wit::Error> {
    let iccid = parse_iccid(iccid)?;
    let action = match action {
        wit::LifecycleAction::Suspend => SimAction::Suspend,
        wit::LifecycleAction::Resume => SimAction::Resume,
        wit::LifecycleAction::Terminate => SimAction::Terminate,
    };
    let (sim, repeat) = transition(&iccid, action, by).await?;
    // Also on a repeat: the first terminate's write may have committed with an error answered, its
    // retirement never run. The repeat is still answered its conflict whatever the retirement does (the gateway
    // reads the SIM then, and finishes the terminate's refunds: a review).
    if action == SimAction::Terminate {
        match (retire_profile(&iccid, &sim).await, &repeat) {
            (Err(e), Some(_)) => eprintln!("dispatch: SIM {iccid}: retiring again failed: {e:?}"),
            (retired, _) => retired?,
        }
    }
    repeat.map_or_else(|| Ok(sim_to_wit(&sim)), Err)
}

/// The profile of `sim`, just terminated, retired at the SM-DP+ (CancelOrder `Unavailable`, queued if it
/// cannot be sent now) unless the device installed it (kernel `esim::retire_on_terminate`).
async fn retire_profile(iccid: &Iccid, sim: &StoredSim) -> Result<(), wit::Error> {
    if !retire_on_terminate(sim.profile_state) {
        return Ok(());
    }
    let cfg = crate::config::get().await?;
    // The SIM is terminated either way; a carrier gone from the catalog since cannot be called.
    match cfg.carrier(&sim.carrier) {
        Ok(carrier) => crate::calls::cancel(&cfg, carrier, iccid, true, &sim.invoice_id).await,
        Err(e) => eprintln!(
            "dispatch: SIM {iccid} is terminated, but its profile is not cancelled at the SM-DP+ (cancel it there by hand): {e:?}"
        ),
    }
    Ok(())
}

/// 409: the SIM's carrier (or the one asked for) is no longer sold here (gone from the catalog since, or
/// without a rate): a configuration change, not a fault of the store or of the request's form.
pub fn not_sold(carrier: &CarrierId) -> wit::Error {
    wit::Error::Conflict(format!(
        "carrier {carrier} is no longer sold here (not priced in the catalog)"
    ))
}

/// `download-progress`: a HandleDownloadProgressInfo body from an SM-DP+, authenticated by `credential` (checked
/// before the body is even parsed: an unauthenticated caller gets no detail and changes nothing). The SIM if
/// the notification is a terminal failure and the SIM stands failed by one ([`StoredSim::owes_back`]): the
/// gateway owes its money back.
pub async fn download_progress(
    body: &str,
    credential: Option<&str>,
) -> Result<Option<wit::Sim>, wit::Error> {
    let cfg = crate::config::get().await?;
    let carrier = cfg
        .callbacks
        .carrier_of(credential)
        .map_err(|e| wit::Error::Unauthorized(e.to_string()))?
        .clone();
    let info: HandleDownloadProgressInfoRequest = serde_json::from_str(body).map_err(|e| {
        invalid(
            "body",
            format!("not a HandleDownloadProgressInfo request: {e}"),
        )
    })?;
    let status = &info.notification_point_status;
    let point = info.notification_point_id;
    let no_sim = || wit::Error::NotFound(format!("no SIM {}", info.iccid.as_str()));
    // A notification that moves nothing (an earlier point, a repeat of a delivered one, any point for a SIM
    // terminated or failed: kernel `order::after_progress`) writes nothing.
    let (sim, failed_now) = kv::change_json::<StoredSim, bool, wit::Error>(
        &keys::sim(info.iccid.as_str()),
        |current| {
            let sim = current.ok_or_else(no_sim)?;
            // Another carrier's SIM is answered as no SIM: a carrier must not learn which of its competitors'
            // ICCIDs are ours (as `access::authorize` answers a credential that does not open a SIM).
            check_issuer(&carrier, &sim.carrier, &sim.iccid).map_err(|_| no_sim())?;
            Ok(match after_progress(&sim, point, status) {
                Some(next) => {
                    let failed_now = next.owes_back() && !sim.owes_back();
                    (Change::Put(next), failed_now)
                }
                None => (Change::Keep, false),
            })
        },
    )
    .await
    .map_err(kv_err)?;
    let sim = sim.ok_or_else(no_sim)?;
    let terminal = esim402_core::esim::terminal_failure(point, status).is_some();
    if failed_now {
        eprintln!(
            "dispatch: SIM {} failed: its profile can never be installed ({}); retiring it at {}",
            sim.iccid,
            sim.download_failure.as_deref().unwrap_or_default(),
            sim.carrier
        );
    }
    // By every terminal notification of a SIM failed by one, not only the call that failed it: that call may
    // have stopped after its write (the SM-DP+ then sends it again, and nothing else would cancel the profile).
    // A cancel that cannot be sent now is queued (once), and the sweep sends it while the record is still this
    // failed SIM's; one sent again finds the profile retired already, which the SM-DP+ answers as nothing left
    // to cancel (kernel `CancelOutcome::Done`).
    if terminal && sim.owes_back() {
        retire_profile(&info.iccid, &sim).await?;
    }
    // A repeat retries a retirement that failed (and finds nothing to do once it is done).
    if sim.profile_state == Some(ProfileState::Installed)
        && let Some(old) = &sim.replaces
    {
        retire_replaced_sim(old, &sim).await?;
    }
    Ok((terminal && sim.owes_back()).then(|| sim_to_wit(&sim)))
}

/// The replacement `new` is installed: the SIM it replaces, `old`, leaves service if it still names `new` as
/// its replacement and `new` is live (kernel `order::retire_replaced`, inside the old record's cell update),
/// and its profile is retired at the SM-DP+ as a terminate's is.
pub async fn retire_replaced_sim(old: &str, new: &StoredSim) -> Result<(), wit::Error> {
    let Ok(old) = Iccid::parse(old) else {
        return Ok(());
    };
    let (_, retired) =
        kv::change_json::<StoredSim, _, wit::Error>(&keys::sim(old.as_str()), |current| {
            Ok(match current.and_then(|c| retire_replaced(&c, new)) {
                Some(retired) => (Change::Put(retired.clone()), Some(retired)),
                None => (Change::Keep, None),
            })
        })
        .await
        .map_err(kv_err)?;
    // Terminated like an owner's terminate: a profile never installed (bought, then switched) is retired too.
    match retired {
        Some(retired) => retire_profile(&old, &retired).await,
        None => Ok(()),
    }
}
