//! The settlement of one authorization on chain, for the holder of its claim (kernel `settlement`): broadcast
//! `transferWithAuthorization` through [`super::send`], wait for the receipt, and record the outcome once.
//! A later call for a `submitted` settlement ([`reconcile`]) first makes sure the transaction is still out
//! there (`rebroadcast::look`: the identical bytes are sent again if the node lost it). If the authorization
//! was used when ours reverted, or was found never to be mined, another transaction used it first:
//! [`super::front_run`] finds which and what it moved. If it was unused, our transaction still published it:
//! the settlement stays pending until the latest block is past its `validBefore`, then fails if it is still
//! unused at that block (no money moved, none can) and is decided like a front-run if not ([`unexecuted`]).

use std::time::{Duration, Instant};

use alloy_primitives::B256;
use esim402_core::evm::TransactionReceipt;
use esim402_core::evm::{SignedTx, SigningKey};
use esim402_core::settlement::{Outcome, Record};
use esim402_core::store::keys;
use esim402_core::x402::InvalidReason;
use esim402_core::x402::exact::{
    SignedAuthorization, TransferAuthorization, settled_authorization, transfer_event_matches,
    transfer_with_authorization_calldata,
};
use esim402_guest::{util, wit};

use super::front_run;
use super::rebroadcast::{self, Look};
use super::unexecuted::unexecuted;
use super::{Call, NotBroadcast, Unsent, send};
use crate::chain::{Chain, Mined};
use crate::claims::{self, Finished};

/// What a settlement holds: where its record is and which keys to release if it never broadcasts.
pub struct Claim {
    /// The record to advance (the authorization's nonce key).
    pub record_key: String,
    /// The record's `claim` (guards every update).
    pub claim: String,
    /// Our holder token (guards the updates before the broadcast).
    pub holder: String,
    /// Every key this settlement inserted, released if nothing was broadcast.
    pub keys: Vec<String>,
    /// The record's cell version as this settlement last wrote it, if it did: the next update starts from it
    /// instead of reading the record (kernel `cell::Update::after`; a stale one costs a read, nothing more).
    pub version: std::cell::Cell<Option<esim402_guest::kv::Stored>>,
    /// The hash whose `txhash/` key this settlement claimed (`claims::finish` need not claim it again).
    pub claimed: std::cell::Cell<Option<B256>>,
}

/// Why a settlement did not broadcast: a verdict on the payment or a fault. Claims are already released.
pub enum NotSent {
    /// The transfer would revert (gas estimation failed with a node answer, the node's revert text here) once
    /// its transaction was recorded: the claims are released.
    Rejected(String),
    /// The transfer would revert (gas estimation failed with a node answer, the node's revert text here) and
    /// nothing was signed: the claims are still held, for the caller to decide why (its authorization may have
    /// been executed by another transaction first) and release them if nothing moved.
    WouldRevert(String),
    /// Anything else.
    Fault(wit::Error),
}

impl Claim {
    /// The claim just made on the authorization record at `key` (its own claim key) by `holder`, written at
    /// `version`: released whole if nothing is sent.
    pub fn made(key: String, holder: String, version: esim402_guest::kv::Stored) -> Self {
        Self {
            record_key: key.clone(),
            claim: key.clone(),
            holder,
            keys: vec![key],
            version: std::cell::Cell::new(Some(version)),
            claimed: std::cell::Cell::new(None),
        }
    }

    /// The claim a `submitted` record holds, to reconcile its transaction (nothing to release with it), once a
    /// nonce gap that transaction may wait behind is filled ([`super::heal_gaps`]: no send may come to fill it)
    /// and the transaction replaced with higher fees if the base fee outgrew it ([`super::bump`]).
    pub async fn reconciling(
        chain: &Chain,
        signer: Option<&SigningKey>,
        record: Record,
        now: u64,
    ) -> Self {
        if let Some(signer) = signer {
            super::heal_gaps(chain, signer, now).await;
            super::bump::settlement(chain, signer, &record, now).await;
        }
        Self {
            record_key: record.claim.clone(),
            claim: record.claim,
            holder: record.holder,
            keys: Vec::new(),
            version: std::cell::Cell::new(None),
            claimed: std::cell::Cell::new(None),
        }
    }

    /// Take over the abandoned claim `record_key` (kernel `Record::take_over`): `None` if it is live or someone
    /// else took it first. An abandoned claim recorded no transaction, so none of it can be out there; an
    /// account nonce it reserved before it died is released as an orphan by a later send of the key
    /// (`NonceState::orphans`), and a `txhash/` key it claimed names a transaction that never left.
    pub async fn take_over(
        record_key: &str,
        claim: &str,
        keys: Vec<String>,
        now: u64,
    ) -> Result<Option<Self>, wit::Error> {
        let holder = util::holder_token().map_err(esim402_guest::convert::internal)?;
        let Some(version) = claims::take_over(record_key, claim, &holder, now).await? else {
            return Ok(None);
        };
        Ok(Some(Self {
            record_key: record_key.to_owned(),
            claim: claim.to_owned(),
            holder,
            keys,
            version: std::cell::Cell::new(Some(version)),
            claimed: std::cell::Cell::new(None),
        }))
    }

    /// Give the claims back (the payment was refused before anything was signed).
    pub async fn release(&self) {
        claims::release(&self.record_key, &self.holder, &self.keys).await;
    }

    /// Claim `tx`'s hash, then record `tx`, prepared at head block `at_block`, on the settlement record
    /// (`submitted`) while we still hold it (see `claims::record_submitted`).
    async fn record_submitted(
        &self,
        tx: &SignedTx,
        at_block: Option<u64>,
    ) -> Result<(), wit::Error> {
        let recorded = claims::record_submitted(
            &self.record_key,
            self.version.take(),
            &self.claim,
            &self.holder,
            tx,
            at_block,
            util::now_secs(),
        )
        .await?;
        let Some((_, version)) = recorded else {
            return Err(wit::Error::Conflict(
                "already settled: the claim was taken over".into(),
            ));
        };
        self.version.set(Some(version));
        self.claimed.set(Some(tx.hash));
        Ok(())
    }
}

/// Broadcast the settlement of `signed` for the holder of `claim`, then wait up to `timeout` for the receipt.
/// Whatever did not broadcast releases the claims, but a transfer that would revert ([`NotSent::WouldRevert`]).
pub async fn broadcast(
    chain: &Chain,
    signer: &SigningKey,
    signed: &SignedAuthorization,
    claim: &Claim,
    timeout: Duration,
) -> Result<Outcome, NotSent> {
    let call = Call {
        to: chain.network.usdc,
        input: transfer_with_authorization_calldata(&signed.authorization, &signed.signature),
        what: "settlement",
        owner: claim.record_key.clone(),
    };
    match send(chain, signer, &call, async |tx: &SignedTx, at_block| {
        claim.record_submitted(tx, at_block).await
    })
    .await
    {
        Ok(hash) => {
            let deadline = Instant::now() + timeout;
            let executes = Some(&signed.authorization);
            Ok(wait(chain, claim, &[hash], executes, deadline).await.0)
        }
        Err(NotBroadcast {
            why: Unsent::WouldRevert(m),
            recorded: None,
            ..
        }) => {
            eprintln!(
                "verifier: the settlement of {} would revert ({m})",
                claim.record_key
            );
            Err(NotSent::WouldRevert(m))
        }
        Err(not) => {
            let mut keys = claim.keys.clone();
            keys.extend(not.recorded.map(keys::txhash));
            claims::release(&claim.record_key, &claim.holder, &keys).await;
            // Only now, with the record released: no send offers its transaction again meanwhile.
            not.fill_hole(chain, signer).await;
            Err(match not.why {
                Unsent::WouldRevert(m) => NotSent::Rejected(m),
                Unsent::Fault(e) => NotSent::Fault(e),
            })
        }
    }
}

/// Poll for the receipt of any of `hashes` (the recorded transaction, the latest first, and those it replaced:
/// whichever is mined is the settlement's) until `deadline` and record the result on the claim's record. The
/// flag says whether this call recorded it (the first to see a receipt), which the facilitator API needs: a
/// success is reported once.
/// A receipt without the token's `Transfer(from, to, value)` for `executes` (the authorization the transaction
/// carries, when known) is [`Outcome::Unproven`], as the references refuse it.
pub async fn wait(
    chain: &Chain,
    claim: &Claim,
    hashes: &[B256],
    executes: Option<&TransferAuthorization>,
    deadline: Instant,
) -> (Outcome, bool) {
    let latest = hashes.first().copied().unwrap_or_default();
    let asset = chain.network.usdc;
    let shows = |receipt: &TransactionReceipt| {
        executes.is_none_or(|auth| transfer_event_matches(receipt, asset, auth))
    };
    let (hash, mined) = match chain.wait_for(hashes, deadline, shows).await {
        Some((hash, mined)) => (hash, Some(mined)),
        None => (latest, None),
    };
    let outcome = match mined {
        Some(Mined::Succeeded) => Outcome::Confirmed(hash),
        // A revert leaves the authorization unused: one used by the receipt's block was executed by another
        // transaction carrying it (the payer's own, another facilitator's), which decides ([`front_run`]) before
        // anything ends as a failure that withdraws the order. A claim without an authorization (a refund)
        // moved nothing when it reverted.
        Some(Mined::Reverted { block }) => match keys::parse_authorization(&claim.claim) {
            None => Outcome::Reverted(hash),
            Some((from, nonce)) => match chain.authorization_used_at(from, nonce, block).await {
                Ok(false) => {
                    let failed = Outcome::Reverted(hash);
                    match unexecuted(
                        chain,
                        (&claim.record_key, &claim.claim),
                        failed,
                        executes,
                        (from, nonce),
                    )
                    .await
                    {
                        Some(outcome) => outcome,
                        None => return (Outcome::Pending(hash), true),
                    }
                }
                Ok(true) => {
                    let used = front_run::Used {
                        from,
                        nonce,
                        executes,
                        by_block: block,
                        window: None,
                    };
                    let failed = Outcome::Reverted(hash);
                    match front_run::settle(chain, &claim.record_key, &claim.claim, failed, &used)
                        .await
                    {
                        Some(outcome) => outcome,
                        None => return (Outcome::Pending(hash), true),
                    }
                }
                Err(e) => {
                    eprintln!(
                        "verifier: settlement {hash} reverted, but authorizationState is unreadable ({e}); left pending"
                    );
                    return (Outcome::Pending(hash), true);
                }
            },
        },
        Some(Mined::Unproven) => {
            eprintln!(
                "verifier: OPERATOR: settlement {hash} succeeded without the token's Transfer event for its authorization; recorded as failed ({})",
                InvalidReason::TransferEventMismatch
            );
            Outcome::Unproven(hash)
        }
        None => return (Outcome::Pending(hash), true),
    };
    finish(claim, hash, outcome).await
}

/// A later call for a `submitted` settlement (a replay): see the module docs.
pub async fn reconcile(
    chain: &Chain,
    claim: &Claim,
    hash: B256,
    deadline: Instant,
) -> (Outcome, bool) {
    match lost_for_good(chain, claim, hash).await {
        // Dropped, its published authorization still executable: nothing to wait for.
        Some(Outcome::Pending(hash)) => return (Outcome::Pending(hash), true),
        Some(outcome) => return finish(claim, hash, outcome).await,
        None => {}
    }
    // What the recorded transaction executes, from its own bytes (records from before they were kept: unknown),
    // and every hash of its nonce (one may have been replaced with higher fees meanwhile: `super::bump`).
    let (executes, hashes) = match claims::load(&claim.record_key).await {
        Ok(Some(r)) if r.sent.is_ours(hash) => (
            r.submitted_tx()
                .and_then(|tx| settled_authorization(&tx.raw)),
            r.sent.hashes(),
        ),
        _ => (None, vec![hash]),
    };
    wait(chain, claim, &hashes, executes.as_ref(), deadline).await
}

/// How the claim's transaction `hash` ended if it can never be mined: dropped (its authorization unused: no
/// money moved), or what the transaction that used the authorization first decides ([`front_run::settle`]);
/// `None` while it may still be mined or nothing is settled yet.
async fn lost_for_good(chain: &Chain, claim: &Claim, hash: B256) -> Option<Outcome> {
    let record = match claims::load(&claim.record_key).await {
        Ok(Some(r)) if r.claim == claim.claim && r.sent.is_ours(hash) => r,
        _ => return None,
    };
    // Records from before the signed bytes were kept cannot be sent again; they only wait.
    let tx = record.submitted_tx()?;
    let Look::Unmineable { at } =
        rebroadcast::look(chain, &tx, "settlement", util::now_secs()).await
    else {
        return None;
    };
    let Some((from, nonce)) = keys::parse_authorization(&record.claim) else {
        eprintln!(
            "verifier: settlement {hash} can never be mined, but its record names no authorization; left pending"
        );
        return None;
    };
    match chain.authorization_used_at(from, nonce, at).await {
        Ok(false) => {
            eprintln!(
                "verifier: settlement {hash} can never be mined (nonce {} of {} was used by another transaction by block {at}) and the authorization is unused",
                tx.nonce, tx.signer
            );
            let executes = settled_authorization(&tx.raw);
            let failed = Outcome::Dropped(hash);
            let decided = unexecuted(
                chain,
                (&claim.record_key, &claim.claim),
                failed,
                executes.as_ref(),
                (from, nonce),
            )
            .await;
            Some(decided.unwrap_or(Outcome::Pending(hash)))
        }
        Ok(true) => {
            let executes = settled_authorization(&tx.raw);
            let used = front_run::Used {
                from,
                nonce,
                executes: executes.as_ref(),
                by_block: at,
                window: None,
            };
            let failed = Outcome::Dropped(hash);
            front_run::settle(chain, &claim.record_key, &claim.claim, failed, &used).await
        }
        Err(e) => {
            eprintln!(
                "verifier: settlement {hash} can never be mined, but authorizationState is unreadable ({e}); left pending"
            );
            None
        }
    }
}

/// Record `outcome` (not pending) on the claim's record; the flag says whether this call recorded it.
async fn finish(claim: &Claim, hash: B256, outcome: Outcome) -> (Outcome, bool) {
    let start = claim.version.take();
    match claims::finish(
        &claim.record_key,
        start,
        &claim.claim,
        outcome,
        claim.claimed.get(),
        util::now_secs(),
    )
    .await
    {
        Ok(Finished::Record(_, true)) => (outcome, true),
        // Someone else recorded an outcome first: report theirs, as recorded.
        Ok(Finished::Record(r, false)) if r.is_terminal() => (r.settled_outcome(hash), false),
        Ok(Finished::Record(_, false) | Finished::NoRecord) => (outcome, false),
        // Its transaction pays another invoice: left for an operator (logged).
        Ok(Finished::PaysAnother) => (Outcome::Pending(hash), true),
        Err(e) => {
            // The chain is the truth; a later call reads it again.
            eprintln!("verifier: cannot record the outcome of {hash}: {e:?}");
            (outcome, true)
        }
    }
}
