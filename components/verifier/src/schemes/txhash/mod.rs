//! `tx-hash` proofs (the seed flow): the payer already sent USDC and presents the transaction hash, signed
//! (kernel `evm::proof_signature`: the invoice's `payer` signs the invoice id and the hash, so nobody who merely
//! saw the transfer can present it first). The kernel's `check_tx_hash_proof` decides from the receipt's token
//! `Transfer` logs, bound to that `payer`, `payTo`, price and the network's confirmations; the transaction
//! must also be mined while the invoice was open: after it was issued and by its deadline, judged by the block,
//! so a transfer made in time pays even if its proof arrives after the deadline.
//!
//! The transfer is looked for on every network the invoice offers that is still enabled, preferred first (a
//! transaction hash names one transaction on one chain), or on the one `verify` found it on.
//!
//! A transfer that would pay the invoice but was mined after its deadline pays nothing: it is claimed for the
//! invoice as a late transfer (kernel `Record::late_transfer`: confirmed, so the gateway can owe it back, but
//! never delivering), and refused with a 410.
//!
//! A transaction pays at most one thing: `txhash/<hash>` is claimed with insert-if-absent (our own settlement
//! transactions are claimed there too), and a transaction that executes an EIP-3009 authorization whose `exact`
//! payment we sent a settlement for (`x402/nonce/…`) is that payment's, whoever sent it. Nothing is broadcast, so
//! nothing is ever released.

use alloy_primitives::{Address, B256, U256};
use esim402_core::UsdcAmount;
use esim402_core::chain::parse_address;
use esim402_core::evm::proof_signature::{self, ProofSignatureError};
use esim402_core::evm::quantity::parse_b256;
use esim402_core::invoice::Invoice;
use esim402_core::settlement::{Record, SentTx, Status};
use esim402_core::store::keys;
use esim402_core::x402::InvalidReason;
use esim402_guest::convert::{internal, invalid};
use esim402_guest::{util, wit};

mod prove;

use prove::Proof;

use super::{Scheme, already_settled, check_not_ended, invoice};
use crate::chain::Chain;
use crate::rejected;

/// The tx-hash scheme.
pub struct TxHash;

/// The wallet that must have paid: the activation request's `payer`, else the invoice's.
fn payer_of(invoice: &Invoice) -> Result<Address, wit::Error> {
    let declared = invoice.proof_payer().ok_or_else(|| {
        invalid(
            "payer",
            "a tx-hash proof needs the invoice to name its payer (the activation's or top-up's `payer`)",
        )
    })?;
    parse_address(declared).map_err(|e| invalid("payer", e.0))
}

struct Context {
    /// The chains the transfer may be on: the invoice's networks that are enabled, preferred first.
    chains: Vec<Chain>,
    /// The invoice's networks disabled since it was issued (CAIP-2): the transfer is not looked for there.
    disabled: Vec<String>,
    id: String,
    invoice: Invoice,
    hash: B256,
    payer: Address,
    now: u64,
}

impl Context {
    /// The proof's context; `on`: the one network to look on (where `verify` found the transfer), if known.
    async fn load(
        inv: &wit::Invoice,
        proof: &wit::TxHashProof,
        on: Option<&str>,
    ) -> Result<Self, wit::Error> {
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
        let mut chains = Vec::with_capacity(invoice.accepts.len());
        let mut disabled = Vec::new();
        for option in &invoice.accepts {
            match cfg.chain(&option.network.to_string()) {
                Ok(chain) if on.is_none_or(|n| n == chain.network.caip2()) => chains.push(chain),
                Ok(_) => {}
                // Disabled since the invoice was issued: the transfer is not looked for there.
                Err(wit::Error::PaymentRequired(_)) => disabled.push(option.network.to_string()),
                // Enabled without an endpoint (configuration allows it for networks other than the first):
                // it cannot be asked, and must not keep the others from being asked.
                Err(e) => eprintln!(
                    "verifier: tx-hash proofs are not looked for on {}: {e:?}",
                    option.network
                ),
            }
        }
        Ok(Self {
            chains,
            disabled,
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
}

enum Existing {
    None,
    Own(Box<Record>),
    Elsewhere,
}

/// What a claimed transfer pays.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pays {
    /// The invoice.
    Invoice,
    /// Nothing: mined after the invoice's deadline (owed back; the invoice stays open).
    Nothing,
    /// Nothing: mined in time, but short of the invoice's amount (owed back; the answer ends the invoice).
    NothingShort,
}

impl Context {
    /// 410: the transfer was not mined while the invoice was open.
    fn late(&self) -> wit::Error {
        wit::Error::Expired(format!(
            "invoice {} expired before transaction {:#x} was mined",
            self.id, self.hash
        ))
    }

    /// Claim the transaction for the invoice (insert-if-absent at `txhash/<hash>`): confirmed on `network`,
    /// having moved `paid`, as a [`Record::late_transfer`] if it pays nothing (`Pays::Nothing`), mined in time
    /// but short if `Pays::NothingShort` ([`Record::short_transfer`]). `true` if this call claimed it, `false` if
    /// it already was, for this invoice by a proof; `already settled` if it pays something else.
    async fn claim(
        &self,
        network: String,
        paid: Option<U256>,
        pays: Pays,
    ) -> Result<bool, wit::Error> {
        let key = keys::txhash(self.hash);
        let mut record = Record::claimed(
            network,
            self.payer,
            key.clone(),
            util::holder_token().map_err(internal)?,
            Some(&self.id),
            self.now,
        )
        .with_paid_amount(paid);
        record.status = Status::Confirmed;
        record.sent = SentTx::hash_only(self.hash);
        record.late_transfer = pays != Pays::Invoice;
        record.short_transfer = (pays != Pays::Invoice).then_some(pays == Pays::NothingShort);
        match crate::claims::insert(&key, &record).await? {
            None => Ok(true),
            Some(existing)
                if existing.invoice.as_deref() == Some(self.id.as_str())
                    && existing.claim == key =>
            {
                Ok(false)
            }
            Some(_) => Err(already_settled()),
        }
    }

    /// A transfer of `paid` mined late on `network`: claim it for the invoice as a late transfer (confirmed,
    /// paying nothing), so it pays no other invoice and its money can be owed back; the answer is the 410 (or
    /// the error that kept it from being claimed).
    async fn claim_late(&self, network: String, paid: Option<U256>) -> wit::Error {
        match self.claim(network, paid, Pays::Nothing).await {
            Ok(new) => {
                if new {
                    eprintln!(
                        "verifier: transaction {:#x} pays invoice {} but was mined after its deadline: claimed as a late transfer, to be owed back",
                        self.hash, self.id
                    );
                }
                self.late()
            }
            Err(e) => e,
        }
    }

    /// A transfer of `paid`, less than the invoice's amount, mined in time on `network`: claimed for the invoice as
    /// a transfer that pays nothing ([`Record::late_transfer`], [`Record::short_transfer`]), so it pays no other
    /// invoice and its money is owed back (the gateway records the refund on `insufficient_funds`, and its answer
    /// ends the invoice: refunds are once per invoice); the answer is that refusal (or the error that kept it
    /// from being claimed).
    async fn claim_short(&self, network: String, paid: U256) -> wit::Error {
        match self.claim(network, Some(paid), Pays::NothingShort).await {
            Ok(new) => {
                if new {
                    eprintln!(
                        "verifier: transaction {:#x} moved {paid} toward invoice {}, less than its amount: claimed as \
                         a short transfer, to be owed back",
                        self.hash, self.id
                    );
                }
                rejected(InvalidReason::InsufficientFunds)
            }
            Err(e) => e,
        }
    }

    /// The answer for a transfer claimed for this invoice as one that pays nothing, the same as its first: short
    /// (mined in time, less than the invoice's amount), or late (whatever it moved: a late transfer that was
    /// also short is answered late, so sending its proof again never ends the invoice a transfer mined in time
    /// may still pay).
    fn owed_back(&self, r: &Record) -> wit::Error {
        if r.is_short_transfer(self.invoice.amount_usdc) {
            rejected(InvalidReason::InsufficientFunds)
        } else {
            self.late()
        }
    }

    /// What `verify` established: the transfer pays the invoice on `network`, moving `transferred` (when known).
    fn verified(&self, network: String, transferred: Option<UsdcAmount>) -> wit::Verified {
        wit::Verified {
            payer: self.payer.to_checksum(None),
            network,
            at: self.now,
            proof: fingerprint(self.hash),
            transferred: transferred.map(UsdcAmount::micros),
            claimed: false,
        }
    }
}

/// What a [`wit::Verified`] of a tx-hash proof carries as its proof: the hash's fingerprint.
fn fingerprint(hash: B256) -> String {
    esim402_core::paid::fingerprint(format!("{hash:#x}").as_bytes())
}

/// The network `verified` found the transfer on, if it is about this very transaction.
fn found_on(verified: &wit::Verified, proof: &wit::TxHashProof) -> Option<String> {
    let hash = parse_b256(proof.hash.trim()).ok()?;
    (verified.proof == fingerprint(hash)).then(|| verified.network.clone())
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
        let c = Context::load(inv, proof, None).await?;
        match c.existing().await? {
            Existing::Own(r) if r.pays_invoice() => {
                return Ok(c.verified(r.network, r.paid_amount));
            }
            Existing::Own(r) if r.late_transfer => return Err(c.owed_back(&r)),
            Existing::Own(_) | Existing::None => {}
            Existing::Elsewhere => return Err(already_settled()),
        }
        check_not_ended(&c.invoice)?;
        match c.prove().await? {
            Proof::Paid(network, paid) => {
                let transferred = Record::default_paid_amount(paid);
                Ok(c.verified(network, transferred))
            }
            // Not final: the same proof sent again once the transfer is mined and buried pays.
            Proof::NotYet => Err(rejected(InvalidReason::SettlementPending)),
            Proof::Late => Err(c.late()),
            Proof::LateMined(network, paid) => Err(c.claim_late(network, paid).await),
            Proof::Short(network, paid) => Err(c.claim_short(network, paid).await),
            Proof::Refused(reason) => Err(rejected(reason)),
        }
    }

    /// Claim the transaction for the invoice once it is proven (nothing is broadcast, so nothing is released).
    async fn settle(
        &self,
        inv: &wit::Invoice,
        proof: &wit::TxHashProof,
        verified: &wit::Verified,
    ) -> Result<wit::Settlement, wit::Error> {
        let c = Context::load(inv, proof, found_on(verified, proof).as_deref()).await?;
        let tx = c.hash.to_string();
        match c.existing().await? {
            Existing::Own(r) if r.pays_invoice() => {
                return Ok(wit::Settlement::Settled(tx));
            }
            Existing::Own(r) if r.late_transfer => return Err(c.owed_back(&r)),
            Existing::Own(_) | Existing::None => {}
            Existing::Elsewhere => return Err(already_settled()),
        }
        check_not_ended(&c.invoice)?;
        let (network, paid) = match c.prove().await? {
            Proof::Paid(network, paid) => (network, paid),
            // Money already moved (or is moving); nothing is claimed until it is final.
            Proof::NotYet => return Ok(wit::Settlement::Pending(tx)),
            Proof::Late => return Err(c.late()),
            Proof::LateMined(network, paid) => return Err(c.claim_late(network, paid).await),
            Proof::Short(network, paid) => return Err(c.claim_short(network, paid).await),
            Proof::Refused(reason) => return Err(rejected(reason)),
        };
        c.claim(network, paid, Pays::Invoice).await?;
        Ok(wit::Settlement::Settled(tx))
    }
}
