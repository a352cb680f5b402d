//! What a delivered purchase credits: an activation's or a top-up's data (metering), or, for a switch, the old
//! SIM's balance moved to the new one.

use esim402_core::usage::account::BYTES_PER_MB;
use esim402_guest::wit;

use super::super::Order;
use super::Attempt;
use crate::{dispatch, metering, now, verifier};

impl Attempt<'_> {
    /// Credit what `order` bought: an activation's data (refund rate: its value at the rate it was bought at) or
    /// a top-up's (the whole invoice). `None` for a switch (its bundle is not metered again; the old SIM's
    /// balance moves to it).
    pub(super) async fn credit(
        &self,
        order: &Order,
        sim: &wit::Sim,
        tx: &str,
        payer: &str,
    ) -> Result<Option<wit::Balance>, wit::Error> {
        let (kind, data_mb, paid) = match order {
            Order::Activation { request, .. } => (
                "activation",
                sim.data_mb,
                self.bought_at(request, sim).await?,
            ),
            Order::TopUp { data_mb, .. } => ("top-up", *data_mb, self.invoice.amount),
            Order::Switch { .. } => {
                self.move_balance(sim).await?;
                return Ok(None);
            }
        };
        let credit = metering::DataCredit {
            invoice_id: self.invoice.id.clone(),
            kind: kind.into(),
            bytes: u64::from(data_mb) * BYTES_PER_MB,
            paid,
            payer: payer.to_owned(),
            transaction: tx.to_owned(),
            network: self.network(),
        };
        let credited = match metering::credit(sim.clone(), credit, now()).await {
            Ok(credited) => credited,
            // The SIM was terminated before its activation's data was credited (its account closed first): the
            // data's value is owed back, as that terminate would have owed it had the credit landed first. (A
            // top-up refused so is owed back whole, by the caller.)
            Err(wit::Error::Conflict(why)) if kind == "activation" => {
                self.owe_uncredited(sim, tx, paid, &why).await?;
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        if self.logs(credited.new) {
            self.pending.borrow_mut().push(credited.event);
        }
        if let Some(hold) = credited.hold
            && let Err(e) = dispatch::set_balance_hold(hold).await
        {
            eprintln!(
                "gateway: the balance hold of {} after a top-up was not applied: {e:?}",
                sim.iccid
            );
        }
        Ok(Some(credited.balance))
    }

    /// The value of an activation's data: what the quote its invoice sealed valued it at, or the delivering
    /// carrier's rate today when a failover makes that less (dispatch `data-value`). An invoice sealed by an
    /// earlier build has no quote: at the delivering carrier's rate, but never above the rate of the carrier
    /// the invoice is priced at today (a failover may deliver from a dearer one: the data was bought at the
    /// quoted rate) nor above what was paid; a carrier no longer priced gets an estimate of what was paid for
    /// data, so an activation settled after its carrier left the catalog is still credited.
    async fn bought_at(
        &self,
        request: &wit::ActivationRequest,
        sim: &wit::Sim,
    ) -> Result<u64, wit::Error> {
        let paid = self.invoice.amount;
        let quoted = self.invoice.quoted.clone();
        let sealed = quoted.is_some();
        let delivered =
            dispatch::data_value(sim.carrier.clone(), sim.data_mb, paid, quoted).await?;
        if sealed {
            return Ok(delivered);
        }
        // Without a failover the first carrier of the plan delivered: the one the invoice was priced at, unless
        // the catalog changed since the quote (this invoice, sealed by an earlier build, has no quote).
        if sim.failovers.is_empty() {
            return Ok(delivered);
        }
        let quoted = match &request.carrier {
            Some(carrier) => carrier.clone(),
            None => match dispatch::price(request.clone()).await {
                Ok(quote) => quote.carrier,
                // The region is no longer priced: the delivering carrier's value.
                Err(wit::Error::InvalidInput(_) | wit::Error::NotFound(_)) => return Ok(delivered),
                Err(e) => return Err(e),
            },
        };
        if quoted == sim.carrier {
            return Ok(delivered);
        }
        Ok(delivered.min(dispatch::data_value(quoted, sim.data_mb, paid, None).await?))
    }

    /// A switch delivered a new SIM: what is left of the old one's balance moves to it (idempotent), and the new
    /// SIM's balance hold as the move left it reaches dispatch (as a credit's does). A failure does not undo the
    /// switch, nor end the payment: the attempt stays resumable, and the same payment sent again moves it (the
    /// old SIM's account gone, or closed or moved already, is final). A move the new SIM refused (terminated
    /// meanwhile) leaves the balance on the old SIM, or, if the old account had given it up already, leaves it
    /// owed back there: owed now ([`Attempt::owe_bounced`]).
    async fn move_balance(&self, sim: &wit::Sim) -> Result<(), wit::Error> {
        let Some(old) = &sim.replaces else {
            return Ok(());
        };
        match metering::transfer(old.clone(), sim.clone(), now()).await {
            // Logged under the switch's invoice, so a resumed attempt logs it again (the move may have landed
            // before an earlier attempt failed: `new` is then false) and the repeat check keeps it once.
            Ok(moved) => {
                if self.logs(moved.new) {
                    let mut event = moved.event;
                    event.invoice = Some(self.invoice.id.clone());
                    self.pending.borrow_mut().push(event);
                }
                if let Some(hold) = moved.hold
                    && let Err(e) = dispatch::set_balance_hold(hold).await
                {
                    eprintln!(
                        "gateway: the balance hold of {} after a switch's move was not applied: {e:?}",
                        sim.iccid
                    );
                }
                Ok(())
            }
            Err(wit::Error::Conflict(why)) => self.owe_bounced(old, &why).await,
            Err(wit::Error::NotFound(_)) => Ok(()),
            Err(e) => {
                eprintln!(
                    "gateway: moving the balance of {old} to {} failed: {e:?}",
                    sim.iccid
                );
                Err(e)
            }
        }
    }

    /// Owe back `paid`, the value of an activation's data its SIM refused (`why`: terminated first), once per
    /// invoice. A refund that could not be recorded fails the credit, so the same payment sent again owes it.
    async fn owe_uncredited(
        &self,
        sim: &wit::Sim,
        tx: &str,
        paid: u64,
        why: &str,
    ) -> Result<(), wit::Error> {
        if paid == 0 {
            return Ok(());
        }
        let reason = format!(
            "unused data: SIM {} was terminated before its data was credited ({why})",
            sim.iccid
        );
        match verifier::owe_refund(
            self.invoice.clone(),
            tx.to_owned(),
            Some(paid),
            reason,
            now(),
        )
        .await
        {
            Ok(owed) => {
                if self.logs(owed.new) {
                    self.pending.borrow_mut().push(owed.event);
                } else if owed.relog {
                    // Recorded by an earlier call whose event may not have landed: a repeat, kept once.
                    crate::pay::log_events(vec![owed.event], true).await;
                }
                Ok(())
            }
            // The invoice's one refund returns another payment of it (a late transfer), or its transaction took
            // nothing (not claimed): an operator's case.
            Err(wit::Error::Conflict(why) | wit::Error::NotFound(why)) => {
                eprintln!(
                    "gateway: OPERATOR: REFUND OF UNUSED DATA NOT RECORDED for {}: {why}",
                    self.invoice.id
                );
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The move was refused (`why`). If the old account is closed, its refunds are owed now (gateway
    /// `refund_unused`, idempotent per invoice): what a move the new SIM refused after the old account gave its
    /// data up left there (otherwise nothing: a move to another SIM, or a terminate that owed them already).
    /// An old account still open kept its balance: nothing to do. A close that fails, or a share that cannot be
    /// owed now, fails the move, so the same payment sent again owes them (once per invoice).
    async fn owe_bounced(&self, old: &str, why: &str) -> Result<(), wit::Error> {
        match metering::get_balance(old.to_owned()).await {
            Ok(b) if b.closed => {}
            Ok(_) | Err(wit::Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        }
        eprintln!("gateway: the balance of {old} did not move ({why}); its refunds are owed");
        crate::owing::refund_unused(old)
            .await
            .map(drop)
            .map_err(|e| {
                wit::Error::Unavailable(format!("owing back the balance of {old}: {}", e.message))
            })
    }
}
