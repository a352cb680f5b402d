//! Paid requests: an invoice paid with an x402 `exact` payment (`PAYMENT-SIGNATURE` v2, `X-PAYMENT` v1) or a
//! tx-hash proof (`X-Payment-Proof`, signed by the payer in `X-Payment-Proof-Signature`), and the purchase it
//! buys delivered.
//!
//! Order of effects (`reference/x402.md` §7, settle-before-execution is not used):
//! - `exact`: verify → claim → order the profile → settle → 200 with the activation code and
//!   `PAYMENT-RESPONSE`. If the order fails, the authorization is never settled: no money moves. If the
//!   settlement fails, or a resumed payment no longer verifies (its authorization expired after its order),
//!   the profile is withdrawn ([`withdraw`]) and the invoice ends.
//! - tx-hash: the money already moved, so verify → claim the transaction (settle) → order → 200; if the order
//!   fails, a refund is owed (`verifier.owe-refund`, paid by `POST /admin/refunds/run`).
//!
//! At most once: the invoice's payment record (invoices component, kernel `paid`) is claimed before any
//! effect, so racing duplicates get a terminal 409 "already settled" while one request works; the verifier's
//! claims on the authorization nonce and the transaction hash stand behind it. Every step that has an effect
//! is idempotent per invoice (dispatch journals the order, the verifier replays its settlement), so an
//! interrupted payment (pending settlement, pending order, an upstream fault) is continued by the same
//! payment sent again. `payment-identifier`: same id and same request → the stored answer; same id and a
//! different request → 409.
//!
//! The payment header is decoded once, in [`proof`] ([`Proof::from_headers`]); the components get the payload JSON,
//! and `settle` gets what `verify` established instead of asking the chain again.

mod answers;
mod attempt;
mod invoice;
pub(crate) mod proof;
mod withdraw;

use esim402_core::ledger::EntryKind;
use esim402_core::paid::StoredResponse;
use esim402_core::{ApiError, ErrorKind};
use esim402_guest::convert;
use esim402_guest::wit;

use crate::{dispatch, from_wit, invoices, now};
use answers::Answers;
use attempt::Attempt;
pub use invoice::{
    invoice_for, invoice_header, load_invoice, named_invoice, refused_unpaid, refused_unpaid_for,
    untouched,
};
pub use proof::{Kind, Proof};

/// Whether `stored` is the answer of an `exact` payment whose order the carrier has not confirmed yet (nothing
/// charged; the same payment sent again continues it).
pub fn is_order_pending(stored: &StoredResponse) -> bool {
    let pending = answers::order_pending();
    (stored.status, &stored.body) == (pending.status, &pending.body)
}

/// What a paid request buys, as the route understood it; the invoice must be for exactly this.
pub enum Order {
    /// A new SIM; `label` is the agent's `X-Agent-ID` (not part of the invoice).
    Activation {
        request: wit::ActivationRequest,
        label: Option<String>,
    },
    Switch {
        iccid: String,
        target: wit::SwitchTarget,
        /// The request signed in with the owner's wallet (not an access token).
        by_wallet: bool,
        /// The SIM's owner.
        owner: Option<String>,
    },
    /// More data for a SIM; `quota` is the grant the retried quota request asks for (not part of the
    /// invoice: the answer after payment is that grant).
    TopUp {
        iccid: String,
        data_mb: u32,
        payer: Option<String>,
        quota: Option<u64>,
        /// The request carried the SIM owner's or carrier's credential: the answer may show the balance and
        /// the grant. Anyone may pay for a top-up; a stranger's answer says what was bought, nothing more.
        show_balance: bool,
        /// The SIM's carrier asked: the grant is reserved (metering `grant`).
        by_carrier: bool,
    },
}

impl Order {
    fn purchase(&self) -> wit::Purchase {
        match self {
            Order::Activation { request, .. } => wit::Purchase::Activation(request.clone()),
            Order::Switch { iccid, target, .. } => wit::Purchase::Switch(wit::SwitchRequest {
                iccid: iccid.clone(),
                target: target.clone(),
            }),
            Order::TopUp {
                iccid,
                data_mb,
                payer,
                ..
            } => wit::Purchase::TopUp(wit::TopUpRequest {
                iccid: iccid.clone(),
                data_mb: *data_mb,
                payer: payer.clone(),
            }),
        }
    }

    fn matches(&self, purchase: &wit::Purchase) -> bool {
        convert::purchase(&self.purchase()) == convert::purchase(purchase)
    }

    /// What an earlier attempt's delivery of this purchase left, ordering nothing (for a payment whose
    /// settlement that attempt claimed): the SIM an activation's or a switch's order journal holds (`None` if
    /// it holds none), or the SIM a top-up is for, whatever its state now (the credit decides). `conflict`
    /// while the order is still being allocated.
    async fn delivered_before(&self, invoice_id: &str) -> Result<Option<wit::Sim>, wit::Error> {
        match self {
            Order::TopUp { iccid, .. } => dispatch::get_sim(iccid.clone())
                .await?
                .map(Some)
                .ok_or_else(|| wit::Error::NotFound(format!("no SIM {iccid}"))),
            Order::Activation { .. } | Order::Switch { .. } => {
                dispatch::ordered_sim(invoice_id.to_owned(), now()).await
            }
        }
    }

    /// Deliver the purchase, paid with money that moved already (a tx-hash proof): [`Order::deliver_until`];
    /// an order left pending is withdrawn only by the operator's cleanup run, after `paid_order_pending_secs`,
    /// which owes the payment back (`crate::admin::run_cleanup`).
    async fn deliver(&self, invoice_id: &str, payer: &str) -> Result<wit::Sim, wit::Error> {
        self.deliver_until(invoice_id, payer, Some(dispatch::Withdrawal::Paid))
            .await
    }

    /// Deliver the purchase. A top-up's data is credited once the money is final
    /// ([`attempt::Attempt::credit`]); here it only checks that the SIM can still take data. `payer` becomes
    /// a new SIM's owner (a switch's new SIM keeps the old one's owner). `withdraw`: when an order
    /// left pending is withdrawn by dispatch (its profile retired): an `exact` payment's once its authorization's
    /// `validBefore` has passed (nothing can pay for it any more), a tx-hash payment's by the operator's run.
    async fn deliver_until(
        &self,
        invoice_id: &str,
        payer: &str,
        withdraw: Option<dispatch::Withdrawal>,
    ) -> Result<wit::Sim, wit::Error> {
        match self {
            Order::TopUp { iccid, .. } => {
                let sim = dispatch::get_sim(iccid.clone())
                    .await?
                    .ok_or_else(|| wit::Error::NotFound(format!("no SIM {iccid}")))?;
                let switched_to = switched_to(iccid).await?;
                let state = esim402_guest::convert::sim_state(sim.state);
                if let Some(why) =
                    esim402_core::esim::top_up_refused(iccid, state, switched_to.is_some())
                {
                    return Err(wit::Error::Conflict(why));
                }
                Ok(sim)
            }
            Order::Activation { request, label } => {
                dispatch::order_profile(
                    request.clone(),
                    invoice_id.to_owned(),
                    payer.to_owned(),
                    label.clone(),
                    now(),
                    withdraw,
                )
                .await
            }
            Order::Switch { iccid, target, .. } => {
                dispatch::perform_switch(
                    iccid.clone(),
                    target.clone(),
                    invoice_id.to_owned(),
                    now(),
                    withdraw,
                )
                .await
            }
        }
    }
}

/// The SIM a switch moved `iccid`'s balance to, as its metering account says (`None`: not switched away, or no
/// account yet).
pub async fn switched_to(iccid: &str) -> Result<Option<String>, wit::Error> {
    match crate::metering::get_balance(iccid.to_owned()).await {
        Ok(b) => Ok(b.switched_to),
        Err(wit::Error::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Pay `invoice` (already matched to the request by the caller) with `proof` and deliver `order`.
pub async fn pay(
    invoice: wit::Invoice,
    order: Order,
    proof: Proof,
    resource_url: &str,
    request_fingerprint: String,
) -> Result<StoredResponse, ApiError> {
    if !order.matches(&invoice.purchase) {
        // An x402 v1 payment names no invoice (its binding found it), and anyone can rebuild it from its
        // settlement's calldata: its invoice, whose terms name the purchase, is not told.
        let which = match proof.kind {
            Kind::V1 => "the invoice this payment is bound to".to_owned(),
            _ => format!("invoice {}", invoice.id),
        };
        // Refused before the payment is looked at: `charged: false` when that is sure (`refused_unpaid_for`:
        // a v2 payment whose invoice no payment has touched; a fresh-user trial found the 409 without it).
        let e = ApiError::new(
            ErrorKind::Conflict,
            format!("{which} pays for a different request; send the request it was issued for"),
        );
        return refused_unpaid_for(&proof, Some(&invoice), e);
    }
    if !proof.signed_by_payer(&invoice)? {
        let answers = Answers {
            invoice: &invoice,
            proof: &proof,
            url: resource_url,
            found_on: std::cell::RefCell::new(None),
            overpaid: std::cell::Cell::new(None),
        };
        return Ok(answers.challenge(esim402_core::x402::InvalidReason::Signature.as_str()));
    }
    let replay_allowed = match proof.payment_id()? {
        Some(id) => invoices::bind_payment_id(
            id.as_str().to_owned(),
            request_fingerprint,
            invoice.id.clone(),
        )
        .await
        .map_err(from_wit)?,
        None => false,
    };
    let begun = invoices::begin_payment(
        invoice.id.clone(),
        proof.fingerprint.clone(),
        replay_allowed,
        now(),
    )
    .await
    .map_err(from_wit)?;
    let driver = match begun {
        wit::Begin::Drive(d) => d,
        wit::Begin::Replay(stored) => return Ok(convert::response(&stored)),
        // Still being driven by its first sending: not final, so it says when to send it again (the text
        // starts with the constant clients match).
        wit::Begin::Conflict(msg) if msg == esim402_core::paid::IN_PROGRESS => {
            let err = ApiError::new(
                ErrorKind::Conflict,
                format!(
                    "{msg}; its first sending still holds it, nothing more is charged: send the same payment \
                     again shortly for its answer (a sending cut off, as by a facilitator restart, holds it up to \
                     {} s before the same payment resumes it; a payer may also list the SIMs it paid for at GET \
                     /v1/esim with its wallet sign-in)",
                    esim402_core::paid::LEASE_SECS
                ),
            );
            return Ok(answers::stored(
                409,
                vec![answers::retry_after()],
                err.to_json(),
            ));
        }
        wit::Begin::Conflict(msg) => return Err(ApiError::new(ErrorKind::Conflict, msg)),
    };
    // The invoice was read before the claim; what the claim found decides its status from here on.
    let mut invoice = invoice;
    convert::held_by_driver(&mut invoice, driver.resumed);
    let attempt = Attempt::new(
        Answers {
            invoice: &invoice,
            proof: &proof,
            url: resource_url,
            found_on: std::cell::RefCell::new(None),
            overpaid: std::cell::Cell::new(None),
        },
        &driver,
    );
    if driver.first || driver.resumed {
        // The invoice becomes a money event when its first payment arrives (an unpaid one is stored nowhere).
        // A resumed attempt logs it again in case the interrupted one never did (a repeat is left out).
        attempt.note(EntryKind::InvoiceIssued, attempt.fields());
    }
    let (end, response) = match proof.kind {
        Kind::TxHash => attempt.prepaid(&order).await,
        Kind::V2 | Kind::V1 => attempt.exact(&order).await,
    };
    attempt.flush().await;
    let end = attempt.end(end);
    if let Err(e) = invoices::finish_payment(
        invoice.id.clone(),
        driver.holder,
        end,
        convert::response_to_wit(&response),
    )
    .await
    {
        eprintln!(
            "gateway: payment record of {} not updated: {e:?}",
            invoice.id
        );
    }
    Ok(response)
}

/// Append events (a payment attempt's, refunds owed or paid); `resumed`: a resumed attempt's, which may repeat
/// what an interrupted one logged (the invoices component leaves those out). Money already moved must not be
/// un-answered because a log write failed, so a failure is logged loudly, not returned; whether they were
/// logged (appended, or parked for the next drain).
pub async fn log_events(events: Vec<wit::LedgerEvent>, resumed: bool) -> bool {
    log_events_at(now(), events, resumed).await
}

/// [`log_events`] with the time the events happened at.
pub async fn log_events_at(at: u64, events: Vec<wit::LedgerEvent>, resumed: bool) -> bool {
    if events.is_empty() {
        return true;
    }
    let kinds: Vec<String> = events.iter().map(|e| e.kind.clone()).collect();
    match invoices::log_events(at, events, resumed).await {
        Ok(()) => true,
        Err(e) => {
            eprintln!("gateway: LEDGER APPEND FAILED ({kinds:?}): {e:?}");
            false
        }
    }
}
