//! The x402 facilitator API (reference §6): `VerifyRequest` JSON in, `VerifyResponse` / `SettleResponse` /
//! `SupportedResponse` JSON out. The requirements come with the request (resolved against the enabled
//! network, whose USDC is the only asset we verify or pay gas for).
//!
//! Protocol rejections are answers (`isValid:false` / `success:false` with the reason, `payer` and `network`
//! filled whenever known), including a payload that lacks a field (as the references answer it: HTTP 200 and a
//! reason); only a body that is not JSON or lacks `paymentPayload`/`paymentRequirements` is `invalid-input`
//! (400), and an unreachable chain `unavailable`.
//! Duplicates follow reference §5: a success is reported once; a repeat is `invalid_exact_evm_nonce_already_used`,
//! except that a `settlement_pending` answer is reconciled against its recorded hash (the same signed bytes
//! are sent again if the node lost them), never settled by a second transaction. `settlement_pending` always
//! carries that hash (the reference resource servers retry it only with one): a repeat while another call's
//! claim has sent nothing yet waits for it ([`replay`]), and answers `duplicate_settlement` if it does not send
//! in time. A transfer the node refuses as reverting is answered with the reason its revert text gives (kernel
//! `x402::revert`) and that text as `errorMessage`, as the references answer it.

use alloy_primitives::{Address, B256};
use esim402_core::x402::exact::{claimed_payer, resolve_network};
use esim402_core::x402::revert::{revert_message, transfer_revert_reason};
use esim402_core::x402::wire::FacilitatorRequest;
use esim402_core::x402::{
    InvalidReason, PaymentRequirements, SettleResponse, SupportedResponse, VerifyRequest,
    VerifyResponse,
};
use serde::Serialize;

use esim402_core::settlement::{Outcome, Record, Status};
use esim402_core::store::keys;
use esim402_guest::convert::{internal, invalid};
use esim402_guest::{kv, util, wit};

use crate::chain::Chain;
use crate::claims;
use crate::config::{self, Config};
use crate::schemes::payment;
use crate::sender::receipts::{self, Claim, NotSent};

mod replay;

use replay::{follow, replay};

fn to_json(value: &impl Serialize) -> Result<String, wit::Error> {
    serde_json::to_string(value).map_err(internal)
}

/// A parsed request, or the verdict on a body whose objects are there but malformed inside (kernel
/// [`FacilitatorRequest`]): answered with HTTP 200 like the references, never refused as bad input.
fn parse(body: &str) -> Result<FacilitatorRequest, wit::Error> {
    FacilitatorRequest::parse(body.as_bytes()).map_err(|e| invalid("body", e.to_string()))
}

/// Everything a request resolves to before the chain is asked.
struct Request {
    cfg: std::rc::Rc<Config>,
    chain: Chain,
    request: VerifyRequest,
    requirements: PaymentRequirements,
    payer: Option<Address>,
}

/// A request resolved against the enabled network, or refused before the chain is asked.
enum Loaded {
    Ready(Box<Request>),
    Refused {
        reason: InvalidReason,
        payer: Option<Address>,
        network: String,
    },
}

impl Request {
    async fn load(request: VerifyRequest) -> Result<Loaded, wit::Error> {
        let cfg = config::get().await?;
        let requirements = request.payment_requirements.to_v2();
        let payer = claimed_payer(&request.payment_payload);
        if let Err(reason) = resolve_network(&request, &cfg.networks()) {
            return Ok(Loaded::Refused {
                reason,
                payer,
                network: requirements.network,
            });
        }
        let chain = match cfg.chain(&requirements.network) {
            Ok(chain) => chain,
            Err(wit::Error::PaymentRequired(_)) => {
                return Ok(Loaded::Refused {
                    reason: InvalidReason::InvalidNetwork,
                    payer,
                    network: requirements.network,
                });
            }
            Err(e) => return Err(e),
        };
        Ok(Loaded::Ready(Box::new(Self {
            cfg,
            chain,
            request,
            requirements,
            payer,
        })))
    }

    fn failure(&self, reason: InvalidReason, tx: Option<B256>) -> SettleResponse {
        SettleResponse::failure(reason, self.payer, tx, self.requirements.network.clone())
    }

    /// Another settlement of this authorization holds its claim and sent nothing in time (kernel
    /// `SettleResponse::in_progress`).
    fn in_progress(&self) -> SettleResponse {
        SettleResponse::in_progress(self.payer, self.requirements.network.clone())
    }

    /// The node refused our transfer as reverting with `revert`: the reason that text gives, and the text.
    fn reverted(&self, revert: &str) -> SettleResponse {
        self.failure(transfer_revert_reason(revert), None)
            .with_message(revert_message(revert))
    }
}

/// `POST /verify`.
pub async fn verify(body: &str) -> Result<String, wit::Error> {
    let request = match parse(body)? {
        FacilitatorRequest::Request(r) => *r,
        FacilitatorRequest::Refused {
            reason,
            message,
            payer,
            ..
        } => return to_json(&VerifyResponse::invalid(reason, payer).with_message(message)),
    };
    let r = match Request::load(request).await? {
        Loaded::Ready(r) => r,
        Loaded::Refused { reason, payer, .. } => {
            return to_json(&VerifyResponse::invalid(reason, payer));
        }
    };
    let verdict = payment::verify_explained(
        &r.chain,
        r.cfg.signer_address(),
        &r.request.payment_payload,
        &r.requirements,
        util::now_secs(),
    )
    .await?;
    to_json(&match verdict {
        Ok(checked) => VerifyResponse::valid(checked.payer),
        Err((reason, None)) => VerifyResponse::invalid(reason, r.payer),
        // Like the references: the failed simulation's revert as `invalidMessage`.
        Err((reason, Some(message))) => {
            VerifyResponse::invalid(reason, r.payer).with_message(message)
        }
    })
}

/// `POST /settle`.
pub async fn settle(body: &str) -> Result<String, wit::Error> {
    let request = match parse(body)? {
        FacilitatorRequest::Request(r) => *r,
        FacilitatorRequest::Refused {
            reason,
            message,
            network,
            payer,
        } => {
            return to_json(
                &SettleResponse::failure(reason, payer, None, network).with_message(message),
            );
        }
    };
    let r = match Request::load(request).await? {
        Loaded::Ready(r) => r,
        Loaded::Refused {
            reason,
            payer,
            network,
        } => return to_json(&SettleResponse::failure(reason, payer, None, network)),
    };
    to_json(&settle_request(&r).await?)
}

async fn settle_request(r: &Request) -> Result<SettleResponse, wit::Error> {
    let now = util::now_secs();
    let payload = &r.request.payment_payload;
    let checked = match payment::check(&r.chain, payload, &r.requirements, now, None) {
        Ok(c) => c,
        Err(reason) => {
            // A repeat after the authorization's window closed still deserves the stored outcome, a claim still
            // in progress too when this is its payment (the payload passes its checks at the claim's time: a
            // retry late in the window). Any other payload failing its own checks is answered its own reason,
            // not made to wait on (or take over) the claim it names (a review: it followed a live claim for the
            // whole settle timeout, then answered `duplicate_settlement`).
            if let Some(record) = stored(r).await?.filter(|rec| {
                rec.status != Status::Claimed
                    || payment::check(&r.chain, payload, &r.requirements, rec.claimed_at, None)
                        .is_ok()
            }) {
                return replay(r, record, now).await;
            }
            return Ok(r.failure(reason, None));
        }
    };
    let key = checked.nonce_key(&r.chain);
    if let Some(record) = claims::load(&key).await? {
        return replay(r, record, now).await;
    }
    let signer = r.cfg.signer()?;
    let verdict = payment::verify(
        &r.chain,
        Some(signer.address()),
        payload,
        &r.requirements,
        now,
    )
    .await?;
    let checked = match verdict {
        Ok(c) => c,
        Err(reason) => return Ok(r.failure(reason, None)),
    };
    let holder = util::holder_token().map_err(internal)?;
    let record = Record::claimed(
        r.chain.network.caip2(),
        checked.payer,
        key.clone(),
        holder.clone(),
        None,
        now,
    );
    let version = match claims::claim(&key, &record).await? {
        Ok(version) => version,
        Err(existing) => return replay(r, existing, now).await,
    };
    let claim = Claim::made(key, holder, version);
    drive_unless_held(r, &checked, &claim, now).await
}

/// [`drive`] the settlement of `claim`, unless an invoice's payment holds its authorization: looked for once
/// claimed (an invoice's `verify` looks for this claim once it holds), by a fresh claim and a taken-over one
/// alike. An authorization an invoice's payment holds is that invoice's to settle, or the invoice would be
/// withdrawn as unpaid while its money moved. Refused, or the hold unreadable, the claim is released.
async fn drive_unless_held(
    r: &Request,
    checked: &payment::Checked,
    claim: &Claim,
    now: u64,
) -> Result<SettleResponse, wit::Error> {
    match held_for_an_invoice(r, &checked.signed.authorization, now).await {
        Ok(false) => drive(r, checked, claim).await,
        Ok(true) => {
            claim.release().await;
            Ok(r.failure(InvalidReason::NonceAlreadyUsed, None))
        }
        Err(e) => {
            claim.release().await;
            Err(e)
        }
    }
}

/// Whether an invoice's payment holds `authorization` at `now` (kernel `settlement::api_may_settle`).
async fn held_for_an_invoice(
    r: &Request,
    authorization: &esim402_core::x402::exact::TransferAuthorization,
    now: u64,
) -> Result<bool, wit::Error> {
    let asset = esim402_core::x402::exact::requirement_asset(&r.requirements)
        .unwrap_or(r.chain.network.usdc);
    crate::holds::holds_nonce(
        &r.chain.network.caip2(),
        asset,
        authorization.from,
        authorization.nonce,
        now,
    )
    .await
}

/// The record of this request's authorization, if the payload names one.
async fn stored(r: &Request) -> Result<Option<Record>, wit::Error> {
    match payment::nonce_key(&r.chain, &r.request.payment_payload) {
        Some(key) => claims::load(&key).await,
        None => Ok(None),
    }
}

async fn drive(
    r: &Request,
    checked: &payment::Checked,
    claim: &Claim,
) -> Result<SettleResponse, wit::Error> {
    let signer = r.cfg.signer()?;
    let sent = receipts::broadcast(
        &r.chain,
        signer,
        &checked.signed,
        claim,
        r.cfg.settlement_timeout,
    )
    .await;
    match sent {
        Ok(outcome) => Ok(answer(r, checked.payer, outcome, &claim.record_key)),
        Err(NotSent::WouldRevert(revert)) => {
            claim.release().await;
            Ok(r.reverted(&revert))
        }
        Err(NotSent::Rejected(revert)) => Ok(r.reverted(&revert)),
        // Our claim was taken over before we signed: its new holder drives the settlement, this call follows it.
        Err(NotSent::Fault(wit::Error::Conflict(_))) => {
            let deadline = std::time::Instant::now() + r.cfg.settlement_timeout;
            follow(r, &claim.record_key, deadline).await
        }
        Err(NotSent::Fault(e)) => Err(e),
    }
}

/// The answer for `outcome` of the settlement recorded under `record_key`. A confirmed one is a success for one
/// answer only, whichever call sees it confirmed first (the broadcaster, or a repeat that reconciled or
/// replayed it: a claim decides); a claim that cannot be made answers "pending", and the next repeat tries
/// again.
fn answer(r: &Request, payer: Address, outcome: Outcome, record_key: &str) -> SettleResponse {
    let network = r.requirements.network.clone();
    match outcome {
        Outcome::Confirmed(tx) => match kv::claim::<()>(&keys::settlement_reported(record_key)) {
            Ok(true) => SettleResponse::success(payer, tx, network),
            Ok(false) => r.failure(InvalidReason::NonceAlreadyUsed, Some(tx)),
            Err(e) => {
                eprintln!("verifier: cannot claim the success of {tx}: {e}");
                r.failure(InvalidReason::SettlementPending, Some(tx))
            }
        },
        Outcome::Reverted(tx) | Outcome::Dropped(tx) => {
            r.failure(InvalidReason::TransactionFailed, Some(tx))
        }
        Outcome::Unproven(tx) => r.failure(InvalidReason::TransferEventMismatch, Some(tx)),
        Outcome::Pending(tx) => r.failure(InvalidReason::SettlementPending, Some(tx)),
    }
}

/// `GET /supported`: `exact` on the enabled network (v2 and v1 kinds), signed by the facilitator's address.
pub async fn supported() -> Result<String, wit::Error> {
    let cfg = config::get().await?;
    let signers: Vec<Address> = cfg.signer_address().into_iter().collect();
    to_json(&SupportedResponse::exact_evm(&cfg.networks(), &signers))
}
