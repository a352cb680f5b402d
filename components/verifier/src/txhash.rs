//! `tx-hash` proofs (the seed flow): the payer already sent USDC and presents the transaction hash. The kernel's
//! `check_tx_hash_proof` decides from the receipt's token `Transfer` logs, bound to the invoice's `payer`,
//! `payTo`, price and the network's confirmations; the transaction must also be mined after the invoice was
//! issued. A transaction pays at most one thing: `txhash/<hash>` is claimed with insert-if-absent (our own
//! settlement transactions are claimed there too). Nothing is broadcast, so nothing is ever released.

use alloy_primitives::{Address, B256, U256};
use esim402_core::InvoiceId;
use esim402_core::chain::parse_address;
use esim402_core::evm::quantity::parse_b256;
use esim402_core::evm::receipt::mined_after_invoice;
use esim402_core::evm::rpc::{BlockTag, EthBlockNumber, EthGetBlockByNumber};
use esim402_core::evm::{ProofError, ProofRequirements, check_tx_hash_proof};
use esim402_core::invoice::{Invoice, Purchase};
use esim402_core::x402::InvalidReason;
use esim402_core::x402::exact::parse_decimal_u256;

use crate::chain::{Chain, unavailable};
use crate::config::Config;
use crate::invoice::{check_open, load, parse_id};
use crate::records::{self, Record, Status, settlement_key, txhash_key};
use crate::rpc::CALL_TIMEOUT;
use crate::{invalid, now_secs, rejected, wit};

/// What the chain says about a presented transaction.
enum Proof {
    /// It pays the invoice.
    Paid,
    /// Not mined yet, or not buried deeply enough: ask again later.
    NotYet,
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
        Purchase::Activation { payer, .. } => payer.as_deref(),
        _ => None,
    }
    .or(invoice.payer.as_deref())
    .ok_or_else(|| {
        invalid(
            "payer",
            "a tx-hash proof needs the invoice to name its payer (activation request `payer`)",
        )
    })?;
    parse_address(declared).map_err(|e| invalid("payer", e.0))
}

struct Context {
    chain: Chain,
    id: InvoiceId,
    invoice: Invoice,
    hash: B256,
    payer: Address,
    now: u64,
}

impl Context {
    async fn load(invoice_id: &str, hash: &str) -> Result<Self, wit::Error> {
        let id = parse_id(invoice_id)?;
        let hash = parse_b256(hash.trim()).map_err(|e| invalid("tx_hash", e.to_string()))?;
        let cfg = Config::load().await?;
        let invoice = load(&id).await?;
        let payer = payer_of(&invoice)?;
        // The transfer is looked for on the invoice's preferred network (its first option).
        let network = invoice
            .accepts
            .first()
            .map(|o| o.network.to_string())
            .ok_or_else(|| wit::Error::Internal(format!("invoice {id} has no payment option")))?;
        Ok(Self {
            chain: cfg.chain(&network)?,
            id,
            invoice,
            hash,
            payer,
            now: now_secs(),
        })
    }

    /// This invoice's settlement record, if it is for this transaction.
    async fn own_record(&self) -> Result<Option<Record>, wit::Error> {
        Ok(records::load(&settlement_key(&self.id))
            .await?
            .filter(|r| r.claim == txhash_key(self.hash)))
    }

    /// Whether this transaction already paid something else.
    async fn used_elsewhere(&self) -> Result<bool, wit::Error> {
        Ok(records::load(&txhash_key(self.hash))
            .await?
            .is_some_and(|r| {
                r.invoice.as_deref() != Some(self.id.as_str()) || r.claim != txhash_key(self.hash)
            }))
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
        let receipt = match self.chain.receipt(self.hash, CALL_TIMEOUT).await {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(Proof::NotYet),
            Err(e) => return Err(unavailable(&e)),
        };
        let head = if network.confirmations > 1 {
            self.chain
                .rpc
                .call(&EthBlockNumber)
                .await
                .map_err(|e| unavailable(&e))?
        } else {
            receipt.block_number
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
        // A transfer made before the invoice existed pays for something else.
        let block = self
            .chain
            .rpc
            .call(&EthGetBlockByNumber {
                block: BlockTag::Number(receipt.block_number),
            })
            .await
            .map_err(|e| unavailable(&e))?;
        match block {
            Some(b) if mined_after_invoice(b.timestamp, self.invoice.created_at) => Ok(Proof::Paid),
            Some(_) => Ok(Proof::Refused(InvalidReason::InvalidTransactionState)),
            None => Ok(Proof::NotYet),
        }
    }
}

fn already_settled() -> wit::Error {
    wit::Error::Conflict("already settled".into())
}

/// `verify` of a tx-hash proof: the payer, checksummed.
pub async fn verify(invoice_id: &str, hash: &str) -> Result<String, wit::Error> {
    let c = Context::load(invoice_id, hash).await?;
    let payer = c.payer.to_checksum(None);
    if c.own_record()
        .await?
        .is_some_and(|r| r.status == Status::Confirmed)
    {
        return Ok(payer);
    }
    check_open(&c.invoice, c.now)?;
    if c.used_elsewhere().await? {
        return Err(already_settled());
    }
    match c.prove().await? {
        Proof::Paid => Ok(payer),
        Proof::NotYet => Err(rejected(InvalidReason::InvalidTransactionState)),
        Proof::Refused(reason) => Err(rejected(reason)),
    }
}

/// `settle` of a tx-hash proof: claim the transaction for the invoice once it is proven.
pub async fn settle(invoice_id: &str, hash: &str) -> Result<wit::Settlement, wit::Error> {
    let c = Context::load(invoice_id, hash).await?;
    let tx = c.hash.to_string();
    if let Some(r) = records::load(&settlement_key(&c.id)).await? {
        if r.claim == txhash_key(c.hash) && r.status == Status::Confirmed {
            return Ok(wit::Settlement::Settled(tx));
        }
        if r.status != Status::Failed {
            return Err(already_settled());
        }
    }
    check_open(&c.invoice, c.now)?;
    if c.used_elsewhere().await? {
        return Err(already_settled());
    }
    match c.prove().await? {
        Proof::Paid => {}
        // Money already moved (or is moving); nothing is claimed until it is final.
        Proof::NotYet => return Ok(wit::Settlement::Pending(tx)),
        Proof::Refused(reason) => return Err(rejected(reason)),
    }
    let key = txhash_key(c.hash);
    let mut record = Record::claimed(
        &c.chain.network,
        c.payer,
        key.clone(),
        records::new_holder()?,
        Some(&c.id),
        c.now,
    );
    record.status = Status::Confirmed;
    record.sent.transaction = Some(tx.clone());
    if let Some(existing) = records::insert_if_absent(&key, &record).await? {
        return if existing.invoice.as_deref() == Some(c.id.as_str()) && existing.claim == key {
            Ok(wit::Settlement::Settled(tx))
        } else {
            Err(already_settled())
        };
    }
    match records::claim_invoice(&settlement_key(&c.id), &record).await? {
        None => Ok(wit::Settlement::Settled(tx)),
        Some(existing) if existing.claim == key => Ok(wit::Settlement::Settled(tx)),
        Some(_) => {
            records::delete(&[key]).await;
            Err(already_settled())
        }
    }
}
