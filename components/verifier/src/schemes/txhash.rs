//! `tx-hash` proofs (the seed flow): the payer already sent USDC and presents the transaction hash, signed
//! (kernel `evm::proof_signature`: the invoice's `payer` signs the invoice id and the hash, so nobody who merely
//! saw the transfer can present it first). The kernel's `check_tx_hash_proof` decides from the receipt's token
//! `Transfer` logs, bound to that `payer`, `payTo`, price and the network's confirmations; the transaction
//! must also be mined while the invoice was open: after it was issued and by its deadline, judged by the block,
//! so a transfer made in time pays even if its proof arrives after the deadline.
//!
//! A transaction pays at most one thing: `txhash/<hash>` is claimed with insert-if-absent (our own settlement
//! transactions are claimed there too), and a transaction that executes an EIP-3009 authorization whose `exact`
//! payment we sent a settlement for (`x402/nonce/…`) is that payment's, whoever sent it. Nothing is broadcast, so
//! nothing is ever released.

use alloy_primitives::{Address, B256, U256};
use esim402_core::chain::parse_address;
use esim402_core::evm::proof_signature::{self, ProofSignatureError};
use esim402_core::evm::quantity::parse_b256;
use esim402_core::evm::receipt::{self, Mined};
use esim402_core::evm::rpc::{BlockTag, EthGetBlockByNumber};
use esim402_core::evm::{ProofError, ProofRequirements, check_tx_hash_proof};
use esim402_core::invoice::{Invoice, Purchase};
use esim402_core::settlement::{Record, SentTx, Status};
use esim402_core::store::keys;
use esim402_core::x402::InvalidReason;
use esim402_core::x402::exact::parse_decimal_u256;
use esim402_guest::convert::{internal, invalid};
use esim402_guest::{util, wit};

use super::{Scheme, already_settled, check_not_ended, invoice};
use crate::chain::{Chain, unavailable};
use crate::rejected;
use crate::rpc::CALL_TIMEOUT;

/// The tx-hash scheme.
pub struct TxHash;

/// What the chain says about a presented transaction.
enum Proof {
    /// It pays the invoice.
    Paid,
    /// Not mined yet, or not buried deeply enough: ask again later.
    NotYet,
    /// Mined after the invoice's deadline, or not mined by it.
    Late,
    /// It does not pay the invoice.
    Refused(InvalidReason),
}

fn reason(e: &ProofError) -> InvalidReason {
    match e {
        ProofError::Malformed(_) | ProofError::NoTokenTransfer { .. } => {
            InvalidReason::InvalidPayload
        }
        ProofError::Reverted { .. } => InvalidReason::TransactionFailed,
        ProofError::WrongRecipient { .. } => InvalidReason::RecipientMismatch,
        ProofError::PayerMismatch { .. } => InvalidReason::InvalidTransactionState,
        ProofError::Underpaid { .. } => InvalidReason::InsufficientFunds,
        // Retryable; mapped to `Proof::NotYet` before this is reached.
        ProofError::NotEnoughConfirmations { .. } => InvalidReason::SettlementPending,
    }
}

/// The wallet that must have paid: the activation request's `payer`, else the invoice's.
fn payer_of(invoice: &Invoice) -> Result<Address, wit::Error> {
    let declared = match &invoice.purchase {
        Purchase::Activation { payer, .. } | Purchase::TopUp { payer, .. } => payer.as_deref(),
        Purchase::Switch { .. } => None,
    }
    .or(invoice.payer.as_deref())
    .ok_or_else(|| {
        invalid(
            "payer",
            "a tx-hash proof needs the invoice to name its payer (the activation's or top-up's `payer`)",
        )
    })?;
    parse_address(declared).map_err(|e| invalid("payer", e.0))
}

struct Context {
    chain: Chain,
    id: String,
    invoice: Invoice,
    hash: B256,
    payer: Address,
    now: u64,
}

impl Context {
    async fn load(inv: &wit::Invoice, proof: &wit::TxHashProof) -> Result<Self, wit::Error> {
        let (id, invoice) = invoice(inv)?;
        let hash = parse_b256(proof.hash.trim()).map_err(|e| invalid("tx_hash", e.to_string()))?;
        let payer = payer_of(&invoice)?;
        match proof_signature::check(id.as_str(), hash, &proof.signature, payer) {
            Ok(()) => {}
            Err(e @ ProofSignatureError::Hex(_)) => {
                return Err(invalid("X-Payment-Proof-Signature", e.to_string()));
            }
            Err(e) => {
                eprintln!("verifier: tx-hash proof {hash:#x} for invoice {id} refused: {e}");
                return Err(rejected(InvalidReason::Signature));
            }
        }
        let cfg = crate::config::get().await?;
        // The transfer is looked for on the invoice's preferred network (its first option).
        let network = invoice
            .accepts
            .first()
            .map(|o| o.network.to_string())
            .ok_or_else(|| internal(format!("invoice {id} has no payment option")))?;
        Ok(Self {
            chain: cfg.chain(&network)?,
            id: id.to_string(),
            invoice,
            hash,
            payer,
            now: util::now_secs(),
        })
    }

    /// The transaction's claim, split by whether it paid this invoice (and is this proof's own, not our
    /// settlement of something else).
    async fn existing(&self) -> Result<Existing, wit::Error> {
        let key = keys::txhash(self.hash);
        Ok(match crate::claims::load(&key).await? {
            None => Existing::None,
            Some(r) if r.invoice.as_deref() == Some(self.id.as_str()) && r.claim == key => {
                Existing::Own(Box::new(r))
            }
            Some(_) => Existing::Elsewhere,
        })
    }

    async fn prove(&self) -> Result<Proof, wit::Error> {
        let network = &self.chain.network;
        let Some(option) = self
            .invoice
            .accepts
            .iter()
            .find(|o| o.network == network.network)
        else {
            return Ok(Proof::Refused(InvalidReason::InvalidNetwork));
        };
        let token = parse_address(&option.asset)
            .ok()
            .filter(|a| *a == network.usdc);
        let recipient = parse_address(&option.pay_to).ok();
        let amount = parse_decimal_u256(&option.amount_atomic).filter(|a| *a > U256::ZERO);
        let (Some(token), Some(recipient), Some(min_amount)) = (token, recipient, amount) else {
            return Ok(Proof::Refused(InvalidReason::InvalidPaymentRequirements));
        };
        self.chain.check_chain_id().await?;
        let (receipt, head) = self
            .chain
            .receipt_and_head(self.hash, network.confirmations > 1, CALL_TIMEOUT)
            .await;
        let receipt = match receipt {
            Ok(Some(r)) => r,
            Ok(None) if receipt::can_still_be_mined_in_time(self.now, self.invoice.expires_at) => {
                return Ok(Proof::NotYet);
            }
            Ok(None) => return Ok(Proof::Late),
            Err(e) => return Err(unavailable(&e)),
        };
        let head = match head {
            Some(head) => head.map_err(|e| unavailable(&e))?,
            None => receipt.block_number,
        };
        let requirements = ProofRequirements {
            token,
            recipient,
            min_amount,
            payer: self.payer,
            min_confirmations: u64::from(network.confirmations),
        };
        match check_tx_hash_proof(&receipt, &requirements, head) {
            Ok(_) => {}
            Err(e) if e.is_retryable() => return Ok(Proof::NotYet),
            Err(e) => return Ok(Proof::Refused(reason(&e))),
        }
        // A transfer made by an authorization whose x402 payment we sent a settlement for is that payment's
        // money (the payer, or anyone, sent it before our settlement did): it pays no tx-hash invoice as well
        // (kernel `Record::owns_executions`).
        for (authorizer, nonce) in receipt::authorizations_used(&receipt, token) {
            let key = keys::authorization(&network.caip2(), authorizer, nonce);
            if crate::claims::load(&key)
                .await?
                .is_some_and(|r| r.owns_executions())
            {
                return Err(wit::Error::Conflict(format!(
                    "already settled: transaction {:#x} executes an authorization presented here as an x402 \
                     payment; it pays that payment only",
                    self.hash
                )));
            }
        }
        // A transfer made before the invoice existed pays for something else; one made after its deadline,
        // nothing.
        let block = self
            .chain
            .rpc
            .call(&EthGetBlockByNumber {
                block: BlockTag::Number(receipt.block_number),
            })
            .await
            .map_err(|e| unavailable(&e))?;
        let Some(b) = block else {
            return Ok(Proof::NotYet);
        };
        Ok(
            match receipt::mined(
                b.timestamp,
                self.invoice.created_at,
                self.invoice.expires_at,
            ) {
                Mined::InTime => Proof::Paid,
                Mined::BeforeInvoice => Proof::Refused(InvalidReason::InvalidTransactionState),
                Mined::Late => Proof::Late,
            },
        )
    }
}

enum Existing {
    None,
    Own(Box<Record>),
    Elsewhere,
}

impl Context {
    /// 410: the transfer was not mined while the invoice was open.
    fn late(&self) -> wit::Error {
        wit::Error::Expired(format!(
            "invoice {} expired before transaction {:#x} was mined",
            self.id, self.hash
        ))
    }

    fn verified(&self) -> wit::Verified {
        wit::Verified {
            payer: self.payer.to_checksum(None),
            network: self.chain.network.caip2(),
            at: self.now,
            proof: esim402_core::paid::fingerprint(format!("{:#x}", self.hash).as_bytes()),
        }
    }
}

impl Scheme for TxHash {
    type Proof = wit::TxHashProof;

    /// The transfer pays the invoice: signed for it by its payer, from that payer, to its recipient, enough,
    /// mined after the invoice.
    async fn verify(
        &self,
        inv: &wit::Invoice,
        proof: &wit::TxHashProof,
    ) -> Result<wit::Verified, wit::Error> {
        let c = Context::load(inv, proof).await?;
        match c.existing().await? {
            Existing::Own(r) if r.status == Status::Confirmed => return Ok(c.verified()),
            Existing::Own(_) | Existing::None => {}
            Existing::Elsewhere => return Err(already_settled()),
        }
        check_not_ended(&c.invoice)?;
        match c.prove().await? {
            Proof::Paid => Ok(c.verified()),
            // Not final: the same proof sent again once the transfer is mined and buried pays.
            Proof::NotYet => Err(rejected(InvalidReason::SettlementPending)),
            Proof::Late => Err(c.late()),
            Proof::Refused(reason) => Err(rejected(reason)),
        }
    }

    /// Claim the transaction for the invoice once it is proven (nothing is broadcast, so nothing is released).
    async fn settle(
        &self,
        inv: &wit::Invoice,
        proof: &wit::TxHashProof,
        _verified: &wit::Verified,
    ) -> Result<wit::Settlement, wit::Error> {
        let c = Context::load(inv, proof).await?;
        let tx = c.hash.to_string();
        match c.existing().await? {
            Existing::Own(r) if r.status == Status::Confirmed => {
                return Ok(wit::Settlement::Settled(tx));
            }
            Existing::Own(_) | Existing::None => {}
            Existing::Elsewhere => return Err(already_settled()),
        }
        check_not_ended(&c.invoice)?;
        match c.prove().await? {
            Proof::Paid => {}
            // Money already moved (or is moving); nothing is claimed until it is final.
            Proof::NotYet => return Ok(wit::Settlement::Pending(tx)),
            Proof::Late => return Err(c.late()),
            Proof::Refused(reason) => return Err(rejected(reason)),
        }
        let key = keys::txhash(c.hash);
        let mut record = Record::claimed(
            c.chain.network.caip2(),
            c.payer,
            key.clone(),
            util::holder_token().map_err(internal)?,
            Some(&c.id),
            c.now,
        );
        record.status = Status::Confirmed;
        record.sent = SentTx::hash_only(c.hash);
        match crate::claims::insert(&key, &record).await? {
            None => Ok(wit::Settlement::Settled(tx)),
            Some(existing)
                if existing.invoice.as_deref() == Some(c.id.as_str()) && existing.claim == key =>
            {
                Ok(wit::Settlement::Settled(tx))
            }
            Some(_) => Err(already_settled()),
        }
    }
}
