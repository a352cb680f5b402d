//! Whether a presented transaction pays its invoice: asked of each chain the invoice offers, judged from the
//! receipt's token `Transfer` logs (kernel `check_tx_hash_proof`) and the block it was mined in.

use alloy_primitives::U256;
use esim402_core::chain::parse_address;
use esim402_core::evm::receipt::{self, Mined};
use esim402_core::evm::rpc::{BlockTag, EthGetBlockByNumber};
use esim402_core::evm::{ProofError, ProofRequirements, check_tx_hash_proof};
use esim402_core::store::keys;
use esim402_core::x402::InvalidReason;
use esim402_core::x402::exact::parse_decimal_u256;
use esim402_guest::wit;

use super::Context;
use crate::chain::{Chain, unavailable};
use crate::rpc::CALL_TIMEOUT;

/// The least a short transfer must move (micro-USDC, $0.01) to be claimed and owed back: below it, a refund's
/// gas is not worth it, and dust transfers would make the treasury pay gas at will.
const MIN_SHORT_REFUND: u64 = 10_000;

/// What the chain says about a presented transaction.
pub(super) enum Proof {
    /// It pays the invoice, on this network (CAIP-2), moving this much (at least the invoice's amount; `None`
    /// when the transaction also executes EIP-3009 authorizations, whose transfers may be other payments').
    Paid(String, Option<U256>),
    /// Not mined yet, or not buried deeply enough: ask again later.
    NotYet,
    /// Not mined by the invoice's deadline (no chain knows it ten minutes past it).
    Late,
    /// A transfer that would pay the invoice, mined after its deadline on this network (CAIP-2), moving this
    /// much (as for `Paid`): it pays nothing, and is owed back.
    LateMined(String, Option<U256>),
    /// A transfer from the payer to the recipient mined while the invoice was open and buried deeply enough, but
    /// of less than its amount, on this network (CAIP-2), moving this much: it pays nothing, and is owed back.
    Short(String, U256),
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

/// What one chain says about a presented transaction.
enum Found {
    /// It knows the transaction: this is the answer.
    Decided(Proof),
    /// It knows the transaction, and the answer is this error (a transfer that belongs to another payment).
    Final(wit::Error),
    /// It does not know the transaction.
    Unknown,
    /// The invoice's terms for this chain do not match the deployment's token: not asked.
    TermsMismatch,
    /// It could not be asked, or could not say.
    Unreachable(wit::Error),
}

impl Context {
    /// Whether the transaction pays the invoice, and on which chain it was found: the first chain that knows
    /// it decides (a transaction hash names one transaction on one chain). Found nowhere: a chain that could
    /// not be asked may still hold it (its error); one of the invoice's networks disabled since may hold it when
    /// no other was asked or the grace for a late mining is past (503 naming them); else not yet or late by the
    /// clock; with no chain to ask (or
    /// only chains whose invoice terms no longer match the deployment's token), refused.
    pub(super) async fn prove(&self) -> Result<Proof, wit::Error> {
        let mut unreachable = None;
        let mut asked = false;
        for chain in &self.chains {
            match self.prove_on(chain).await {
                Found::Decided(proof) => return Ok(proof),
                Found::Final(e) => return Err(e),
                Found::Unknown => asked = true,
                Found::TermsMismatch => {}
                Found::Unreachable(e) => {
                    unreachable.get_or_insert(e);
                }
            }
        }
        if let Some(e) = unreachable {
            return Err(e);
        }
        let proof = if !self.disabled.is_empty()
            && (!asked || !receipt::can_still_be_mined_in_time(self.now, self.invoice.expires_at))
        {
            // It may have been mined in time there: not late by the clock, and not refused, but not decidable
            // until the operator enables the network again.
            return Err(wit::Error::Unavailable(format!(
                "transaction {:#x} is on none of this invoice's enabled networks; it also offers {}, no longer \
                 enabled here, where it is not looked for: send the same proof again once it is",
                self.hash,
                self.disabled.join(", ")
            )));
        } else if !asked && self.chains.is_empty() {
            Proof::Refused(InvalidReason::InvalidNetwork)
        } else if !asked {
            Proof::Refused(InvalidReason::InvalidPaymentRequirements)
        } else if receipt::can_still_be_mined_in_time(self.now, self.invoice.expires_at) {
            Proof::NotYet
        } else {
            Proof::Late
        };
        Ok(proof)
    }

    /// What `chain` says about the transaction.
    async fn prove_on(&self, chain: &Chain) -> Found {
        let network = &chain.network;
        let Some(option) = self
            .invoice
            .accepts
            .iter()
            .find(|o| o.network == network.network)
        else {
            return Found::TermsMismatch;
        };
        let token = parse_address(&option.asset)
            .ok()
            .filter(|a| *a == network.usdc);
        let recipient = parse_address(&option.pay_to).ok();
        let amount = parse_decimal_u256(&option.amount_atomic).filter(|a| *a > U256::ZERO);
        let (Some(token), Some(recipient), Some(min_amount)) = (token, recipient, amount) else {
            eprintln!(
                "verifier: invoice {} offers {} in terms the deployment's token no longer matches; not looked for there",
                self.id,
                network.caip2()
            );
            return Found::TermsMismatch;
        };
        if let Err(e) = chain.check_chain_id().await {
            return Found::Unreachable(e);
        }
        let (receipt, head) = chain
            .receipt_and_head(self.hash, network.confirmations > 1, CALL_TIMEOUT)
            .await;
        let receipt = match receipt {
            Ok(Some(r)) => r,
            Ok(None) => return Found::Unknown,
            Err(e) => return Found::Unreachable(unavailable(&e)),
        };
        let requirements = ProofRequirements {
            token,
            recipient,
            min_amount,
            payer: self.payer,
            min_confirmations: u64::from(network.confirmations),
        };
        match self.judge(chain, &requirements, receipt, head).await {
            Ok(proof) => Found::Decided(proof),
            // The transaction is known here: what could not be read about it keeps the question open.
            Err(e @ wit::Error::Unavailable(_)) => Found::Unreachable(e),
            Err(e) => Found::Final(e),
        }
    }

    /// Whether the mined transaction `receipt` on `chain` pays the invoice as `requirements` say.
    async fn judge(
        &self,
        chain: &Chain,
        requirements: &ProofRequirements,
        receipt: esim402_core::evm::TransactionReceipt,
        head: Option<Result<u64, crate::rpc::CallError>>,
    ) -> Result<Proof, wit::Error> {
        let network = &chain.network;
        let head = match head {
            Some(head) => head.map_err(|e| unavailable(&e))?,
            None => receipt.block_number,
        };
        let checked = match check_tx_hash_proof(&receipt, requirements, head) {
            Err(e) if e.is_retryable() => return Ok(Proof::NotYet),
            // Not final yet: nothing is decided about it (below, a final 409 or a claim) until it is buried.
            Err(ProofError::Underpaid { .. })
                if receipt.confirmations(head) < requirements.min_confirmations =>
            {
                return Ok(Proof::NotYet);
            }
            Err(e @ ProofError::Underpaid { .. }) => Err(e),
            Err(e) => return Ok(Proof::Refused(reason(&e))),
            Ok(transfer) => Ok(transfer),
        };
        // A transfer made by an authorization of an x402 payment presented here is that payment's money (the
        // payer, or anyone, sent it before our settlement did): it pays no tx-hash invoice as well, whether we
        // sent a settlement for it (kernel `Record::owns_executions`) or an invoice's payment holds it (`verify`
        // passed and its order may be on its way: that invoice's settlement finds the execution and takes it,
        // kernel `settlement::api_may_settle`). Asked first, so a short transfer of it is told so too.
        let authorizations = receipt::authorizations_used(&receipt, requirements.token);
        for &(authorizer, nonce) in &authorizations {
            let key = keys::authorization(&network.caip2(), authorizer, nonce);
            let settled = crate::claims::load(&key)
                .await?
                .is_some_and(|r| r.owns_executions());
            if settled
                || crate::holds::holds_nonce(
                    &network.caip2(),
                    requirements.token,
                    authorizer,
                    nonce,
                    self.now,
                )
                .await?
            {
                return Err(wit::Error::Conflict(format!(
                    "already settled: transaction {:#x} executes an authorization presented here as an x402 \
                     payment; it pays that payment only",
                    self.hash
                )));
            }
        }
        // Too little: still the payer's money at the recipient, owed back once it is final (claimed below like a
        // late transfer), unless it cannot be told apart from other payments' (it executes authorizations).
        let (paid, short) = match checked {
            Ok(transfer) => (transfer.value, false),
            // Too little to be worth a refund's gas (or nothing): refused, nothing claimed.
            Err(ProofError::Underpaid { paid, .. }) if paid < U256::from(MIN_SHORT_REFUND) => {
                return Ok(Proof::Refused(InvalidReason::InsufficientFunds));
            }
            Err(ProofError::Underpaid { paid, .. }) => (paid, true),
            Err(e) => return Ok(Proof::Refused(reason(&e))),
        };
        // What the transaction moved is this payment's only if it executes no authorization: one it executes
        // may be another invoice's `exact` payment (claimed, not yet sent), whose transfer the sum includes.
        if short && !authorizations.is_empty() {
            return Ok(Proof::Refused(InvalidReason::InsufficientFunds));
        }
        let paid = authorizations.is_empty().then_some(paid);
        // A transfer made before the invoice existed pays for something else; one made after its deadline,
        // nothing.
        let block = chain
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
                Mined::InTime if short => Proof::Short(network.caip2(), paid.unwrap_or_default()),
                Mined::InTime => Proof::Paid(network.caip2(), paid),
                Mined::BeforeInvoice => Proof::Refused(InvalidReason::InvalidTransactionState),
                Mined::Late => Proof::LateMined(network.caip2(), paid),
            },
        )
    }
}
