//! x402 `exact` payments of an invoice (the payload as the gateway decoded it from `PAYMENT-SIGNATURE` or
//! `X-PAYMENT`). The requirements are rebuilt from the invoice (`requirements_v2`), never taken from the
//! client; the payload must match one of them (`select_requirements`).
//!
//! Settlement is at most once **per authorization**: its record (`x402/nonce/…`, kernel `settlement`) is
//! claimed before anything is signed and names the invoice, so a repeat of the same authorization for the
//! same invoice answers the stored result (and reconciles a pending one against its recorded hash), and the
//! same authorization for another invoice is `conflict("already settled")`. That no *other* payment settles
//! an invoice being paid is the invoice's payment record's job (invoices component), checked before this runs.
//! `settle` does not read the chain facts again: `verify` did, the claim stops a second use, and the
//! broadcast's gas estimate simulates the transfer once more.

use std::time::Instant;

use esim402_core::settlement::{self, Outcome, Record, Replay};
use esim402_core::x402::exact::{SignedAuthorization, requirement_asset, valid_before_in_reach};
use esim402_core::x402::requirements::{requirements_v2, select_requirements};
use esim402_core::x402::{InvalidReason, PaymentPayload, PaymentRequirements};
use esim402_guest::convert::{internal, invalid};
use esim402_guest::{util, wit};

use super::payment::{self, Checked};
use super::{Scheme, already_settled, check_open, invoice, used_first};
use crate::chain::Chain;
use crate::config::{self, Config};
use crate::rejected;
use crate::sender::receipts::{self, Claim, NotSent};

/// The x402 `exact` scheme.
pub struct Exact;

/// One request's view: configuration, the chain, the invoice, the payload and the requirement it pays.
struct Payment {
    cfg: std::rc::Rc<Config>,
    chain: Chain,
    now: u64,
    id: String,
    invoice: esim402_core::invoice::Invoice,
    payload: PaymentPayload,
    /// The payload's fingerprint (kernel `paid::fingerprint` of its JSON).
    fingerprint: String,
    requirements: PaymentRequirements,
}

impl Payment {
    /// The token the selected requirement pays in.
    fn asset(&self) -> alloy_primitives::Address {
        requirement_asset(&self.requirements).unwrap_or(self.chain.network.usdc)
    }

    async fn load(inv: &wit::Invoice, payload: &str) -> Result<Self, wit::Error> {
        let (id, invoice) = invoice(inv)?;
        let fingerprint = esim402_core::paid::fingerprint(payload.as_bytes());
        let payload = PaymentPayload::from_json(payload.as_bytes())
            .map_err(|e| invalid("payment", e.to_string()))?;
        let cfg = config::get().await?;
        let accepts = requirements_v2(&invoice);
        let requirements = select_requirements(&accepts, &payload)
            .cloned()
            .ok_or_else(|| rejected(InvalidReason::InvalidPaymentRequirements))?;
        let chain = cfg.chain(&requirements.network)?;
        Ok(Self {
            cfg,
            chain,
            now: util::now_secs(),
            id: id.to_string(),
            invoice,
            payload,
            fingerprint,
            requirements,
        })
    }

    /// This payload's settlement record, if its authorization was claimed: `Same` when it was claimed for this
    /// invoice and the payload still passes the chain-free checks as of the claim (so a forged signature over a
    /// known nonce does not replay someone else's result), `Other` otherwise.
    async fn existing(&self) -> Result<Existing, wit::Error> {
        let Some(key) = payment::nonce_key(&self.chain, &self.payload) else {
            return Ok(Existing::None);
        };
        let Some(record) = crate::claims::load(&key).await? else {
            return Ok(Existing::None);
        };
        if settlement::same_invoice(&record, Some(&self.id))
            && let Ok(checked) = payment::check(
                &self.chain,
                &self.payload,
                &self.requirements,
                record.claimed_at,
                None,
            )
        {
            return Ok(Existing::Same(Box::new(record), Box::new(checked)));
        }
        Ok(Existing::Other)
    }
}

enum Existing {
    None,
    Same(Box<Record>, Box<Checked>),
    Other,
}

/// What `verify` established; `claimed`: the settlement of this payment for this invoice was claimed already.
fn verified(payer: alloy_primitives::Address, p: &Payment, claimed: bool) -> wit::Verified {
    wit::Verified {
        payer: payer.to_checksum(None),
        network: p.chain.network.caip2(),
        at: p.now,
        proof: p.fingerprint.clone(),
        transferred: None,
        claimed,
    }
}

/// A payment of our invoice expires within its requirement's `maxTimeoutSeconds` (kernel
/// `valid_before_in_reach`): a failed settlement stays pending until its authorization expires, so one signed
/// never to expire would keep the order pending for ever. The facilitator API keeps the references' answers.
fn in_reach(p: &Payment, checked: &Checked) -> Result<(), wit::Error> {
    let valid_before = checked.signed.authorization.valid_before;
    if valid_before_in_reach(valid_before, p.requirements.max_timeout_seconds, p.now) {
        Ok(())
    } else {
        Err(rejected(InvalidReason::ValidBefore))
    }
}

/// The payer `verify` recovered for this very payload (same fingerprint, same network), if `verified` says so.
fn signer_known(verified: &wit::Verified, p: &Payment) -> Option<alloy_primitives::Address> {
    (verified.proof == p.fingerprint && verified.network == p.chain.network.caip2())
        .then(|| verified.payer.parse().ok())
        .flatten()
}

impl Scheme for Exact {
    type Proof = str;

    async fn verify(&self, inv: &wit::Invoice, payload: &str) -> Result<wit::Verified, wit::Error> {
        let p = Payment::load(inv, payload).await?;
        // A payment already being settled for this invoice verifies as of its claim: the chain now shows its
        // nonce used, and the caller's next step is `settle`, which answers from the record.
        let other = match p.existing().await? {
            Existing::Same(record, checked) => {
                return match settlement::replay(&record, p.now) {
                    Replay::Failed(reason) => Err(wit::Error::PaymentRequired(reason)),
                    Replay::Settled(_) => Ok(verified(checked.payer, &p, true)),
                    // Still being settled: its hold is kept on (a slow settlement's would lapse), whatever the
                    // balance now (its money is part of it until mined). A refusal (lapsed, and the authorization
                    // held for another invoice since) changes nothing: this invoice's settlement is claimed.
                    _ => {
                        let auth = &checked.signed.authorization;
                        let _ = crate::holds::place(&p.chain, p.asset(), auth, None, &p.id, p.now)
                            .await;
                        Ok(verified(checked.payer, &p, true))
                    }
                };
            }
            Existing::Other => true,
            Existing::None => false,
        };
        check_open(&p.invoice, p.now)?;
        // A payment nobody here can settle (no facilitator key, or a malformed one: readiness says so too) is
        // refused before the gateway orders a profile it would only give back: 503 until the operator fixes it.
        if let Err(e) = p.cfg.signer() {
            return Err(wit::Error::Unavailable(format!(
                "payments cannot be settled here now: {}",
                esim402_guest::convert::message(&e)
            )));
        }
        let signer = p.cfg.signer_address();
        // An authorization claimed for another invoice is refused for its reason once the chain shows it (nonce
        // used), and as `already settled` while that settlement is still on its way.
        match payment::verify(&p.chain, signer, &p.payload, &p.requirements, p.now).await? {
            Ok(_) if other => Err(already_settled()),
            Ok(checked) => {
                in_reach(&p, &checked)?;
                // Before the gateway orders anything: the authorization is this invoice's alone, and the
                // payer's balance covers it on top of its other payments in flight (kernel `hold`).
                let auth = &checked.signed.authorization;
                crate::holds::place(&p.chain, p.asset(), auth, checked.balance, &p.id, p.now)
                    .await?;
                // Looked at again once held: the facilitator API claims an authorization before it looks for
                // a hold (`facilitator::settle_request`), so one of the two sees the other, and it is never
                // settled there while this invoice's order is placed. Unreadable, the hold is ended too (else
                // it would count against the payer's balance and refuse `/settle` until it lapses).
                match p.existing().await {
                    Ok(Existing::Other) => {
                        crate::holds::release(&p.chain, p.asset(), auth, &p.id, p.now).await?;
                        Err(already_settled())
                    }
                    Err(e) => {
                        let _ =
                            crate::holds::release(&p.chain, p.asset(), auth, &p.id, p.now).await;
                        Err(e)
                    }
                    Ok(_) => Ok(verified(checked.payer, &p, false)),
                }
            }
            Err(reason) => Err(rejected(reason)),
        }
    }

    async fn settle(
        &self,
        inv: &wit::Invoice,
        payload: &str,
        verified: &wit::Verified,
    ) -> Result<wit::Settlement, wit::Error> {
        let p = Payment::load(inv, payload).await?;
        match p.existing().await? {
            Existing::Same(record, _) => return replay(&p, *record).await,
            Existing::Other => return Err(already_settled()),
            Existing::None => {}
        }
        check_open(&p.invoice, p.now)?;
        // Settlement needs the facilitator key; without one, nothing is claimed.
        p.cfg.signer()?;
        // The chain-free checks again (the window may have closed while the profile was ordered), without
        // recovering the signature `verify` recovered from this very payload; the chain facts were read by
        // `verify`, and the broadcast's gas estimate simulates the transfer once more.
        let known = signer_known(verified, &p);
        let checked = payment::check(&p.chain, &p.payload, &p.requirements, p.now, known)
            .map_err(rejected)?;
        in_reach(&p, &checked)?;
        let key = checked.nonce_key(&p.chain);
        let holder = util::holder_token().map_err(internal)?;
        let record = Record::claimed(
            p.chain.network.caip2(),
            checked.payer,
            key.clone(),
            holder.clone(),
            Some(&p.id),
            p.now,
        );
        let Ok(version) = crate::claims::claim(&key, &record).await? else {
            return match p.existing().await? {
                Existing::Same(record, _) => replay(&p, *record).await,
                _ => Err(already_settled()),
            };
        };
        let claim = Claim::made(key, holder, version);
        drive(&p, &checked, &claim).await
    }
}

impl Exact {
    /// End the hold `verify` placed for this payload and invoice: the gateway's payment of it ended without
    /// moving money (its order failed, its settlement was refused). A payload that does not parse holds
    /// nothing.
    pub async fn release_hold(&self, inv: &wit::Invoice, payload: &str) -> Result<(), wit::Error> {
        let p = Payment::load(inv, payload).await?;
        let Ok(signed) = SignedAuthorization::parse(p.payload.exact()) else {
            return Ok(());
        };
        crate::holds::release(&p.chain, p.asset(), &signed.authorization, &p.id, p.now).await
    }
}

impl Exact {
    /// A resumed payment of this invoice that `verify` now refuses (its authorization used, or past its
    /// `validBefore`) while the order an earlier attempt placed waited: if another transaction executed the
    /// authorization (the payer's own, another facilitator's) and moved its money to `payTo`, this invoice's
    /// settlement is claimed and confirmed by that transaction ([`used_first::claim_used`]) and the payment
    /// verifies as claimed; `None` when nothing of it moved (unused, cancelled, another invoice's or the
    /// facilitator API's claim), so the gateway withdraws the order as before.
    pub async fn executed(
        &self,
        inv: &wit::Invoice,
        payload: &str,
    ) -> Result<Option<wit::Verified>, wit::Error> {
        let p = match Payment::load(inv, payload).await {
            Ok(p) => p,
            Err(wit::Error::PaymentRequired(_) | wit::Error::InvalidInput(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        match p.existing().await? {
            Existing::Same(record, checked) => {
                return match settlement::replay(&record, p.now) {
                    Replay::Settled(_) => Ok(Some(verified(checked.payer, &p, true))),
                    Replay::Failed(_) => Ok(None),
                    _ => Err(wit::Error::Conflict(settlement::IN_PROGRESS.into())),
                };
            }
            Existing::Other => return Ok(None),
            Existing::None => {}
        }
        let Ok(signed) = SignedAuthorization::parse(p.payload.exact()) else {
            return Ok(None);
        };
        let at = settlement::used_claimed_at(signed.authorization.valid_before, p.now);
        let Ok(checked) = payment::check(&p.chain, &p.payload, &p.requirements, at, None) else {
            return Ok(None);
        };
        let used = used_first::claim_used(&p.chain, &checked, &p.id, at).await?;
        Ok(used.then(|| verified(checked.payer, &p, true)))
    }
}

async fn drive(
    p: &Payment,
    checked: &Checked,
    claim: &Claim,
) -> Result<wit::Settlement, wit::Error> {
    let signer = p.cfg.signer()?;
    let sent = receipts::broadcast(
        &p.chain,
        signer,
        &checked.signed,
        claim,
        p.cfg.settlement_timeout,
    )
    .await;
    match sent {
        Ok(outcome) => answer(outcome),
        // Its authorization may have been executed by another transaction first: decided by what moved.
        Err(NotSent::WouldRevert(_)) => {
            let auth = &checked.signed.authorization;
            used_first::decide(&p.chain, claim, auth, InvalidReason::SimulationFailed).await
        }
        Err(NotSent::Rejected(_)) => Err(rejected(InvalidReason::SimulationFailed)),
        // Our claim was taken over before we signed: its new holder drives the settlement.
        Err(NotSent::Fault(wit::Error::Conflict(_))) => {
            Err(wit::Error::Conflict(settlement::IN_PROGRESS.into()))
        }
        Err(NotSent::Fault(e)) => Err(e),
    }
}

fn answer(outcome: Outcome) -> Result<wit::Settlement, wit::Error> {
    match outcome {
        Outcome::Confirmed(tx) => Ok(wit::Settlement::Settled(tx.to_string())),
        Outcome::Pending(tx) => Ok(wit::Settlement::Pending(tx.to_string())),
        Outcome::Reverted(_) | Outcome::Dropped(_) => {
            Err(rejected(InvalidReason::TransactionFailed))
        }
        Outcome::Unproven(_) => Err(rejected(InvalidReason::TransferEventMismatch)),
    }
}

/// A repeat of this invoice's own settlement (kernel `settlement::replay`): the stored result, a
/// reconciliation of a pending one, or (for a claim abandoned before broadcast) a takeover.
async fn replay(p: &Payment, record: Record) -> Result<wit::Settlement, wit::Error> {
    match settlement::replay(&record, p.now) {
        Replay::Settled(tx) => Ok(wit::Settlement::Settled(tx)),
        Replay::Failed(reason) => Err(wit::Error::PaymentRequired(reason)),
        Replay::Corrupt => Err(internal("a submitted settlement has no transaction hash")),
        Replay::Reconcile(hash) => {
            let claim = Claim::reconciling(&p.chain, p.cfg.signer().ok(), record, p.now).await;
            let deadline = Instant::now() + p.cfg.settlement_timeout;
            answer(
                receipts::reconcile(&p.chain, &claim, hash, deadline)
                    .await
                    .0,
            )
        }
        Replay::InProgress => Err(wit::Error::Conflict(settlement::IN_PROGRESS.into())),
        Replay::TakeOver => {
            let signer = p.cfg.signer()?;
            let keys = vec![record.claim.clone()];
            let Some(claim) = Claim::take_over(&record.claim, &record.claim, keys, p.now).await?
            else {
                return Err(wit::Error::Conflict(settlement::IN_PROGRESS.into()));
            };
            // Taken over after a long pause: check it all again, the chain included.
            let verified = payment::verify(
                &p.chain,
                Some(signer.address()),
                &p.payload,
                &p.requirements,
                p.now,
            )
            .await;
            match verified {
                Ok(Ok(checked)) => drive(p, &checked, &claim).await,
                // The authorization may have been executed meanwhile by another transaction: decided by
                // what that moved, while the claim is held.
                Ok(Err(reason)) => match SignedAuthorization::parse(p.payload.exact()) {
                    Ok(signed) => {
                        used_first::decide(&p.chain, &claim, &signed.authorization, reason).await
                    }
                    Err(_) => {
                        claim.release().await;
                        Err(rejected(reason))
                    }
                },
                Err(e) => {
                    claim.release().await;
                    Err(e)
                }
            }
        }
    }
}
