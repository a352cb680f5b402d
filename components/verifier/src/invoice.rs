//! `verify` and `settle` of x402 proofs (`PAYMENT-SIGNATURE` / `X-PAYMENT` values) against a stored invoice.
//!
//! The requirements are rebuilt from the invoice (`requirements_v2`), never taken from the client; the
//! payload must match one of them (`select_requirements`). Settlement is idempotent **per invoice and
//! payment**: a repeat of the same authorization for the same invoice answers the stored result (and
//! reconciles a `pending` one against its recorded hash); any other payment of a settled invoice, or this
//! authorization for another invoice, is `conflict("already settled")`. A failed settlement (reverted, no money
//! moved) leaves the invoice open to a different payment.

use std::time::Instant;

use esim402_core::InvoiceId;
use esim402_core::invoice::{Invoice, InvoiceStatus};
use esim402_core::x402::exact::SignedAuthorization;
use esim402_core::x402::requirements::{requirements_v2, select_requirements};
use esim402_core::x402::{
    InvalidReason, PaymentPayload, PaymentRequirements, decode_payment_signature_header,
    decode_x_payment_header,
};
use esim402_guest::kv;

use crate::chain::Chain;
use crate::config::Config;
use crate::payment::{self, Checked};
use crate::records::{self, Record, Status, kv_err, nonce_key, settlement_key};
use crate::settle::{self, Claim, NotSent, Outcome};
use crate::{invalid, now_secs, rejected, wit};

/// Parse an invoice id (`invalid-input` on `invoice_id`).
pub fn parse_id(id: &str) -> Result<InvoiceId, wit::Error> {
    InvoiceId::parse(id).map_err(|e| invalid("invoice_id", e.0))
}

/// The stored invoice (`not-found` if unknown).
pub async fn load(id: &InvoiceId) -> Result<Invoice, wit::Error> {
    kv::get_json::<Invoice, wit::Error>(&format!("invoice/{id}"))
        .await
        .map_err(kv_err)?
        .ok_or_else(|| wit::Error::NotFound(format!("no invoice {id}")))
}

/// Only an open invoice takes a new payment.
pub fn check_open(invoice: &Invoice, now: u64) -> Result<(), wit::Error> {
    let id = &invoice.invoice_id;
    match invoice.status_at(now) {
        InvoiceStatus::Open => Ok(()),
        InvoiceStatus::Expired => Err(wit::Error::Expired(format!("invoice {id} has expired"))),
        other => Err(wit::Error::Conflict(
            format!("invoice {id} is {other:?}").to_lowercase(),
        )),
    }
}

/// Decode the header value (`invalid-input` naming the header on bad base64, JSON or shape: never a fault).
fn decode(proof: &wit::PaymentProof) -> Result<PaymentPayload, wit::Error> {
    let decoded = match proof {
        wit::PaymentProof::X402V2(value) => decode_payment_signature_header(value),
        wit::PaymentProof::X402V1(value) => decode_x_payment_header(value),
        wit::PaymentProof::TxHash(_) => {
            return Err(wit::Error::Internal(
                "tx-hash proofs are not x402 payloads".into(),
            ));
        }
    };
    decoded.map_err(|e| invalid(e.header(), e.to_string()))
}

/// One request's view: configuration, the chain, the invoice, the payload and the requirement it pays.
struct Payment {
    cfg: Config,
    chain: Chain,
    now: u64,
    id: InvoiceId,
    invoice: Invoice,
    payload: PaymentPayload,
    requirements: PaymentRequirements,
}

impl Payment {
    async fn load(invoice_id: &str, proof: &wit::PaymentProof) -> Result<Self, wit::Error> {
        let id = parse_id(invoice_id)?;
        let payload = decode(proof)?;
        let cfg = Config::load().await?;
        let invoice = load(&id).await?;
        let accepts = requirements_v2(&invoice);
        let requirements = select_requirements(&accepts, &payload)
            .cloned()
            .ok_or_else(|| rejected(InvalidReason::InvalidPaymentRequirements))?;
        let chain = cfg.chain(&requirements.network)?;
        Ok(Self {
            cfg,
            chain,
            now: now_secs(),
            id,
            invoice,
            payload,
            requirements,
        })
    }

    fn settlement_key(&self) -> String {
        settlement_key(&self.id)
    }

    /// The authorization's claim key, if the payload parses that far.
    fn nonce_key(&self) -> Option<String> {
        let signed = SignedAuthorization::parse(self.payload.exact()).ok()?;
        let a = &signed.authorization;
        Some(nonce_key(&self.chain.network, a.from, a.nonce))
    }

    /// The invoice's settlement record, split by whether it is this very payment: same authorization, and
    /// the payload still passes the chain-free checks as of the claim (so a forged signature over a known
    /// nonce does not replay someone else's result).
    async fn existing(&self) -> Result<Existing, wit::Error> {
        let Some(record) = records::load(&self.settlement_key()).await? else {
            return Ok(Existing::None);
        };
        if self.nonce_key().as_deref() == Some(record.claim.as_str())
            && let Ok(checked) = payment::check(
                &self.chain,
                &self.payload,
                &self.requirements,
                record.claimed_at,
            )
        {
            return Ok(Existing::Same(record, Box::new(checked)));
        }
        Ok(Existing::Other(record))
    }

    fn claim_keys(&self, nonce_key: &str) -> Vec<String> {
        vec![nonce_key.to_owned(), self.settlement_key()]
    }
}

enum Existing {
    None,
    Same(Record, Box<Checked>),
    Other(Record),
}

fn already_settled() -> wit::Error {
    wit::Error::Conflict("already settled".into())
}

/// `verify`: the payer, checksummed.
pub async fn verify(invoice_id: &str, proof: &wit::PaymentProof) -> Result<String, wit::Error> {
    let p = Payment::load(invoice_id, proof).await?;
    // A payment already being settled for this invoice verifies as of its claim: the chain now shows its
    // nonce used, and the caller's next step is `settle`, which answers from the record.
    match p.existing().await? {
        Existing::Same(record, checked) => {
            return match (record.status, record.reason) {
                (Status::Failed, reason) => {
                    Err(wit::Error::PaymentRequired(reason.unwrap_or_else(|| {
                        InvalidReason::TransactionFailed.as_str().to_owned()
                    })))
                }
                _ => Ok(checked.payer.to_checksum(None)),
            };
        }
        // Another payment holds the invoice (only a failed one leaves it open to others).
        Existing::Other(record) if record.status != Status::Failed => {
            return Err(already_settled());
        }
        Existing::Other(_) | Existing::None => {}
    }
    check_open(&p.invoice, p.now)?;
    let signer = p.cfg.signer_address();
    match payment::verify(&p.chain, signer, &p.payload, &p.requirements, p.now).await? {
        Ok(checked) => Ok(checked.payer.to_checksum(None)),
        Err(reason) => Err(rejected(reason)),
    }
}

/// `settle`: verify again, claim the authorization and the invoice, broadcast, wait for the receipt.
pub async fn settle(
    invoice_id: &str,
    proof: &wit::PaymentProof,
) -> Result<wit::Settlement, wit::Error> {
    let p = Payment::load(invoice_id, proof).await?;
    match p.existing().await? {
        Existing::Same(record, _) => return replay(&p, record).await,
        Existing::Other(record) if record.status != Status::Failed => {
            return Err(already_settled());
        }
        Existing::Other(_) | Existing::None => {}
    }
    check_open(&p.invoice, p.now)?;
    let signer = p.cfg.signer()?;
    let checked = payment::verify(
        &p.chain,
        Some(signer.address()),
        &p.payload,
        &p.requirements,
        p.now,
    )
    .await?
    .map_err(rejected)?;

    // Claim the authorization, then the invoice. Nothing awaits in between, so within this instance the
    // winner holds both before anyone else looks.
    let nonce_key = checked.nonce_key(&p.chain);
    let holder = records::new_holder()?;
    let record = Record::claimed(
        &p.chain.network,
        checked.payer,
        nonce_key.clone(),
        holder.clone(),
        Some(&p.id),
        p.now,
    );
    if records::insert_if_absent(&nonce_key, &record)
        .await?
        .is_some()
    {
        return match p.existing().await? {
            Existing::Same(record, _) => replay(&p, record).await,
            _ => Err(already_settled()),
        };
    }
    if records::claim_invoice(&p.settlement_key(), &record)
        .await?
        .is_some()
    {
        records::delete(std::slice::from_ref(&nonce_key)).await;
        return Err(already_settled());
    }
    let claim = Claim {
        record_key: p.settlement_key(),
        claim: nonce_key.clone(),
        holder,
        keys: p.claim_keys(&nonce_key),
    };
    drive(&p, &checked, &claim).await
}

async fn drive(
    p: &Payment,
    checked: &Checked,
    claim: &Claim,
) -> Result<wit::Settlement, wit::Error> {
    let signer = p.cfg.signer()?;
    let sent = settle::broadcast(
        &p.chain,
        signer,
        &checked.signed,
        claim,
        p.cfg.settlement_timeout,
    )
    .await;
    match sent {
        Ok(outcome) => answer(outcome),
        Err(NotSent::Rejected(reason)) => Err(rejected(reason)),
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
    }
}

/// A repeat of this invoice's own settlement: the stored result, a reconciliation of a pending one, or (for
/// a claim abandoned before broadcast) a takeover.
async fn replay(p: &Payment, record: Record) -> Result<wit::Settlement, wit::Error> {
    match record.status {
        Status::Confirmed => Ok(wit::Settlement::Settled(
            record.sent.transaction.unwrap_or_default(),
        )),
        Status::Failed => {
            Err(wit::Error::PaymentRequired(record.reason.unwrap_or_else(
                || InvalidReason::TransactionFailed.as_str().to_owned(),
            )))
        }
        Status::Submitted => {
            let hash = record.tx_hash().ok_or_else(|| {
                wit::Error::Internal("a submitted settlement has no transaction hash".into())
            })?;
            let claim = Claim {
                record_key: p.settlement_key(),
                claim: record.claim,
                holder: record.holder,
                keys: Vec::new(),
            };
            let deadline = Instant::now() + p.cfg.settlement_timeout;
            answer(settle::reconcile(&p.chain, &claim, hash, deadline).await.0)
        }
        Status::Claimed if record.is_abandoned(p.now) => {
            let signer = p.cfg.signer()?;
            let keys = p.claim_keys(&record.claim);
            let Some(claim) = Claim::take_over(&p.settlement_key(), &record, keys, p.now).await?
            else {
                return Err(wit::Error::Conflict(
                    "already settled: settlement in progress".into(),
                ));
            };
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
                Ok(Err(reason)) => {
                    claim.release().await;
                    Err(rejected(reason))
                }
                Err(e) => {
                    claim.release().await;
                    Err(e)
                }
            }
        }
        Status::Claimed => Err(wit::Error::Conflict(
            "already settled: settlement in progress".into(),
        )),
    }
}
