//! Refunds owed outside a payment: a terminated SIM's unused data ([`refund_unused`]) and a failed SIM's money
//! (`crate::failed`), through the verifier's `owe-refund` (once per invoice) and the refund job. A refund that
//! cannot be owed now fails the call that asked, so it is asked again; one that no retry changes (an
//! operator's case) is logged `OPERATOR: REFUND NOT RECORDED`.

use esim402_core::ApiError;
use esim402_core::usage::account::RefundShare;
use esim402_guest::wit;
use serde_json::Value;

use crate::{from_wit, metering, now, pay};

/// After a terminate: close the SIM's account and owe back its unused data (at the rate it was bought, once
/// per credit invoice, through the refund job). A SIM without an account has nothing to refund. A refund not
/// recorded now ([`Owed::retry`]) fails the call (503, never a 200 listing fewer): the access token is revoked,
/// so it says to terminate again with the wallet, which owes (once per invoice) what this call did not.
pub async fn refund_unused(iccid: &str) -> Result<Vec<Value>, ApiError> {
    close_and_owe(iccid).await.map(|(recorded, _)| recorded)
}

/// After a terminate (the owner's, or the facilitator's withdrawal): [`refund_unused`], and if that fails (a
/// fault: the access token is already revoked), the SIM listed for the operator's cleanup run, which records
/// the refunds ([`record_unrefunded`]) even if the owner never terminates again with its wallet.
pub async fn finish_terminate(iccid: &str) -> Result<Vec<Value>, ApiError> {
    let refunds = refund_unused(iccid).await;
    if refunds.is_err()
        && let Err(e) = crate::dispatch::list_unrefunded(iccid.to_owned()).await
    {
        eprintln!(
            "gateway: OPERATOR: SIM {iccid}'s refunds are not recorded and it could not be listed for the cleanup \
             run ({e:?}): terminate it again with the owner's wallet"
        );
    }
    refunds
}

/// [`refund_unused`], with how many refunds were owed before too recently to be logged again here
/// ([`Owed::quiet`]).
async fn close_and_owe(iccid: &str) -> Result<(Vec<Value>, usize), ApiError> {
    let shares = match metering::close(iccid.to_owned(), now()).await {
        Ok(s) => s,
        Err(wit::Error::NotFound(_)) => return Ok((Vec::new(), 0)),
        Err(e) => return Err(from_wit(e)),
    };
    let shares: Vec<RefundShare> =
        serde_json::from_str(&shares).map_err(|e| ApiError::internal(e.to_string()))?;
    let owing = shares.into_iter().map(|s| Owing::data(iccid, s)).collect();
    let owed = owe(owing, "terminate the SIM again to retry").await;
    if owed.retry > 0 {
        return Err(ApiError::new(
            esim402_core::ErrorKind::Unavailable,
            format!(
                "SIM {iccid} is terminated, but {} refund(s) of its unused data could not be recorded now: \
                 terminate it again to record them, signed in with the owner's wallet (its access token no \
                 longer works), or the operator's cleanup run records them",
                owed.retry
            ),
        ));
    }
    Ok((owed.recorded, owed.quiet))
}

/// The terminated SIMs whose refunds a terminate could not record (dispatch `cleanup-run.unrefunded`): each
/// one's recorded as its terminate would ([`refund_unused`]), and its entry settled as soon as it is tried, so a
/// run cut short keeps what it did. One whose refund was owed before but too recently to log its event again
/// here stays for a later run, which logs it (once: the ledger keeps repeats once). How many were recorded, and
/// how many are left for a later run.
pub async fn record_unrefunded(iccids: Vec<String>) -> (usize, usize) {
    let (mut recorded, mut left) = (0, 0);
    for iccid in iccids {
        let done = match crate::dispatch::get_sim(iccid.clone()).await {
            Ok(Some(sim)) if sim.state == wit::SimState::Terminated => {
                match close_and_owe(&iccid).await {
                    Ok((_, 0)) => true,
                    Ok(_) => false,
                    Err(e) => {
                        eprintln!(
                            "gateway: the refunds of terminated SIM {iccid} are not recorded yet (a later run \
                             tries again): {}",
                            e.message
                        );
                        false
                    }
                }
            }
            // Listed only once terminated: gone, or another state, there is nothing of a terminate to record.
            Ok(_) => true,
            Err(e) => {
                eprintln!("gateway: reading SIM {iccid} failed (a later run tries again): {e:?}");
                false
            }
        };
        if done {
            recorded += 1;
        } else {
            left += 1;
        }
        if let Err(e) = crate::dispatch::settle_unrefunded(iccid.clone(), done).await {
            eprintln!("gateway: settling the unrefunded entry of SIM {iccid} failed: {e:?}");
        }
    }
    (recorded, left)
}

/// One refund to owe: of `invoice`'s payment, `amount` (`None`: all of it), returning the payment made in `tx`
/// (`None`: the invoice's settlement transaction), for `reason`.
pub struct Owing {
    pub invoice: String,
    pub tx: Option<String>,
    pub amount: Option<u64>,
    pub reason: String,
}

impl Owing {
    /// The unused data of SIM `iccid` in `share`, at its value.
    pub fn data(iccid: &str, share: RefundShare) -> Self {
        Self {
            reason: format!("unused data: {} bytes of SIM {iccid}", share.bytes),
            invoice: share.invoice,
            tx: Some(share.tx),
            amount: Some(share.amount.micros()),
        }
    }
}

/// What [`owe`] did.
pub struct Owed {
    /// The refunds as recorded.
    pub recorded: Vec<Value>,
    /// How many could not be owed now and may be on a retry (a store or verifier fault; not an operator's
    /// case, which no retry changes), or were owed but their `refund_owed` could be neither appended nor
    /// parked (the ledger's store failed): the caller is to be asked again.
    pub retry: usize,
    /// How many were owed before, too recently to be logged again here (`relog` false): whether their
    /// `refund_owed` reached the ledger was the recording call's to see to. A caller that must know (the cleanup
    /// run, which forgets what it owed) asks again later; past the verifier's relog delay a repeat logs it.
    pub quiet: usize,
}

/// Owe `owing` back (the verifier's `owe-refund`: once per invoice, so owing the same again records nothing
/// new) and log the `refund_owed` events of the new ones. One that cannot be owed now does not stop the
/// others: it is reported, with how to retry it (`retry`), and counted in [`Owed::retry`], like an owed one
/// whose event could not be logged.
pub async fn owe(owing: Vec<Owing>, retry: &str) -> Owed {
    let mut out = Vec::new();
    let mut left = 0;
    let mut quiet = 0;
    let mut events = Vec::new();
    // Refunds owed before (a terminate repeated) long enough ago that their first owing is done: their events
    // again, which the ledger keeps once, in case that call stopped before logging them.
    let mut repeats = Vec::new();
    for item in owing {
        let invoice = match pay::load_invoice(&item.invoice).await {
            Ok(invoice) => invoice,
            // No key of this deployment opens it (its secret left `invoice_secret_previous`): an operator's
            // case, which no retry changes (counted, every terminate of the SIM would answer 503 for good).
            Err(e) if e.status() == 404 => {
                eprintln!(
                    "gateway: OPERATOR: REFUND NOT RECORDED for {}: {}",
                    item.invoice, e.message
                );
                continue;
            }
            Err(e) => {
                eprintln!(
                    "gateway: REFUND NOT RECORDED for {} ({retry}): {e:?}",
                    item.invoice
                );
                left += 1;
                continue;
            }
        };
        let Some(tx) = item.tx.or_else(|| invoice.transaction.clone()) else {
            eprintln!(
                "gateway: OPERATOR: REFUND NOT RECORDED for {}: the invoice names no settlement transaction",
                item.invoice
            );
            continue;
        };
        match crate::verifier::owe_refund(invoice, tx, item.amount, item.reason, now()).await {
            Ok(owed) => {
                if owed.new {
                    events.push(owed.event);
                } else if owed.relog {
                    repeats.push(owed.event);
                } else {
                    quiet += 1;
                }
                out.push(serde_json::from_str(&owed.refund).unwrap_or(Value::String(owed.refund)));
            }
            // The invoice's one refund returns another payment of it (a late transfer), or its transaction took
            // nothing (not claimed): an operator's case, which no retry changes.
            Err(wit::Error::Conflict(why) | wit::Error::NotFound(why)) => eprintln!(
                "gateway: OPERATOR: REFUND NOT RECORDED for {}: {why}",
                item.invoice
            ),
            Err(e) => {
                eprintln!(
                    "gateway: REFUND NOT RECORDED for {} ({retry}): {e:?}",
                    item.invoice
                );
                left += 1;
            }
        }
    }
    // A `refund_owed` neither appended nor parked is lost unless the caller is asked again: counted as a retry
    // (the repeat logs it again once its owing is old enough to be re-logged, and the ledger keeps it once).
    let (new, again) = (events.len(), repeats.len());
    if !crate::pay::log_events(events, false).await {
        left += new;
    }
    if !crate::pay::log_events(repeats, true).await {
        left += again;
    }
    Owed {
        recorded: out,
        retry: left,
        quiet,
    }
}
