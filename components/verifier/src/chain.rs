//! What the verifier asks the chain: the answers behind the kernel's [`ChainFacts`] (reference checks 13–16),
//! receipts, and that the endpoint really serves the configured chain.
//!
//! Transport failures are `unavailable` (never a verdict on the payment), and so are node errors other than a
//! revert (kernel `rpc::is_revert`: a rate limit is no answer about the token); reverts become facts.

use std::cell::RefCell;
use std::collections::HashSet;

use alloy_primitives::{Address, B256, Bytes, U256};
use esim402_core::evm::rpc::{
    BlockTag, CallRequest, EthBlockNumber, EthCall, EthChainId, is_revert,
};
use esim402_core::x402::ChainFacts;
use esim402_core::x402::NetworkConfig;
use esim402_core::x402::exact::{
    EthGetCode, SignedAuthorization, authorization_state_calldata, balance_of_calldata,
    decode_authorization_state_return, decode_balance_of_return, decode_string_return,
    name_calldata, transfer_with_authorization_calldata, version_calldata,
};

use crate::rpc::{Batch, CallError, Rpc, join_all};

mod mined;

use esim402_guest::wit;
pub use mined::Mined;

std::thread_local! {
    /// The chain ids this instance has seen its endpoints serve: checked once per instance, not per request.
    static CHECKED: RefCell<HashSet<u64>> = RefCell::new(HashSet::new());
    /// The (chain id, asset) pairs this instance has seen deployed: code, once there, does not go away (the
    /// TS reference caches the same answer), so a contract is asked for once per instance.
    static DEPLOYED: RefCell<HashSet<(u64, Address)>> = RefCell::new(HashSet::new());
}

/// The most `authorizationState` reads in one JSON-RPC batch ([`Chain::used_nonces`]): providers cap
/// batches (some at 50 requests).
const NONCES_PER_BATCH: usize = 40;

/// `unavailable`, naming what failed (the message never carries the endpoint).
pub fn unavailable(e: &CallError) -> wit::Error {
    wit::Error::Unavailable(format!("the payment network's RPC failed: {e}"))
}

/// The configured network, reached over JSON-RPC.
pub struct Chain {
    /// The network (with token overrides).
    pub network: NetworkConfig,
    /// The endpoint.
    pub rpc: Rpc,
}

impl Chain {
    /// A chain client; `batch`: whether reads needed together go as one JSON-RPC batch.
    pub fn new(network: NetworkConfig, rpc_url: &str, batch: bool) -> Self {
        Self {
            network,
            rpc: Rpc::new(rpc_url, batch),
        }
    }

    /// Check the endpoint serves the configured chain (once per instance: endpoints are configuration, fixed
    /// while the app runs): reading another chain's state would accept payments that do not exist.
    pub async fn check_chain_id(&self) -> Result<(), wit::Error> {
        let want = self.network.chain_id();
        if CHECKED.with(|c| c.borrow().contains(&want.0)) {
            return Ok(());
        }
        let id = self
            .rpc
            .call(&EthChainId)
            .await
            .map_err(|e| unavailable(&e))?;
        if id != want {
            return Err(wit::Error::Unavailable(format!(
                "the RPC endpoint serves chain {}, not {}",
                id.0, want.0
            )));
        }
        CHECKED.with(|c| c.borrow_mut().insert(want.0));
        Ok(())
    }

    /// An `eth_call` of the network's USDC with `data`, as `from` if given.
    fn usdc_call(&self, data: Vec<u8>, from: Option<Address>) -> EthCall {
        let mut call = CallRequest::new(self.network.usdc, data.into());
        call.from = from;
        EthCall {
            call,
            block: BlockTag::Latest,
        }
    }

    async fn eth_call(&self, data: Vec<u8>, from: Option<Address>) -> Result<Bytes, CallError> {
        self.rpc.call(&self.usdc_call(data, from)).await
    }

    /// Whether this instance has seen `asset` deployed.
    fn seen_deployed(&self, asset: Address) -> bool {
        DEPLOYED.with(|d| d.borrow().contains(&(self.network.chain_id().0, asset)))
    }

    /// Whether `code`, `eth_getCode`'s answer for `asset`, shows a contract (remembered if so).
    fn note_code(&self, asset: Address, code: &Bytes) -> bool {
        if !code.is_empty() {
            DEPLOYED.with(|d| d.borrow_mut().insert((self.network.chain_id().0, asset)));
        }
        !code.is_empty()
    }

    /// Whether `asset` has code: `eth_getCode`, unless this instance has seen it deployed.
    async fn deployed(&self, asset: Address) -> Result<bool, CallError> {
        if self.seen_deployed(asset) {
            return Ok(true);
        }
        let code = self
            .rpc
            .call(&EthGetCode {
                address: asset,
                block: BlockTag::Latest,
            })
            .await?;
        Ok(self.note_code(asset, &code))
    }

    /// The facts about an asset that is not the network's USDC: only whether it has code (reference check 13's
    /// first step); nothing else is asked of it.
    pub async fn foreign_asset_facts(&self, asset: Address) -> Result<ChainFacts, wit::Error> {
        match self.deployed(asset).await {
            Ok(deployed) => Ok(ChainFacts::foreign_asset(deployed)),
            Err(e) => Err(unavailable(&e)),
        }
    }

    /// Whether the USDC has code, its nonce state, balance and a simulation of `transferWithAuthorization` sent
    /// by `facilitator`, read in one batch; on a failed simulation also the token's on-chain
    /// `name()`/`version()`.
    pub async fn facts(
        &self,
        signed: &SignedAuthorization,
        facilitator: Option<Address>,
    ) -> Result<ChainFacts, wit::Error> {
        let auth = &signed.authorization;
        let usdc = self.network.usdc;
        let get_code = EthGetCode {
            address: usdc,
            block: BlockTag::Latest,
        };
        let state_call = self.usdc_call(authorization_state_calldata(auth.from, auth.nonce), None);
        let balance_call = self.usdc_call(balance_of_calldata(auth.from), None);
        let simulation_call = self.usdc_call(
            transfer_with_authorization_calldata(auth, &signed.signature),
            facilitator,
        );
        let mut batch = Batch::new();
        let code_slot = (!self.seen_deployed(usdc)).then(|| batch.add(&get_code));
        let state_slot = batch.add(&state_call);
        let balance_slot = batch.add(&balance_call);
        let simulation_slot = batch.add(&simulation_call);
        let mut answers = self.rpc.batch(batch).await;
        let asset_deployed = match code_slot {
            None => true,
            Some(slot) => {
                let code = answers.take(slot, &get_code).map_err(|e| unavailable(&e))?;
                self.note_code(usdc, &code)
            }
        };
        let state = answers.take(state_slot, &state_call);
        let balance = answers.take(balance_slot, &balance_call);
        let simulation = answers.take(simulation_slot, &simulation_call);
        // A revert (of a missing function too) is an answer about the token; any other node error (a rate
        // limit inside the batch, an internal error, a lagging node's "header not found") is no answer, like
        // a transport error: a zero balance or "not EIP-3009" read from it would refuse the payment as final.
        let nonce_used = match state {
            Ok(data) => decode_authorization_state_return(&data).ok(),
            Err(e) if e.is_revert() => None,
            Err(e) => return Err(unavailable(&e)),
        };
        let balance = match balance {
            Ok(data) => decode_balance_of_return(&data).unwrap_or(U256::ZERO),
            Err(e) if e.is_revert() => U256::ZERO,
            Err(e) => return Err(unavailable(&e)),
        };
        let (simulation_ok, revert) = match simulation {
            Ok(_) => (true, None),
            Err(CallError::Node { code, message }) if is_revert(code, &message) => {
                (false, Some(message))
            }
            Err(e) => return Err(unavailable(&e)),
        };
        let mut facts = ChainFacts {
            asset_deployed,
            nonce_used,
            balance,
            simulation_ok,
            token_name: None,
            token_version: None,
            revert,
        };
        if !simulation_ok {
            // Only to name a domain mismatch more precisely; failures leave the generic reason.
            let reads = join_all(vec![
                self.eth_call(name_calldata(), None),
                self.eth_call(version_calldata(), None),
            ])
            .await;
            let mut reads = reads
                .into_iter()
                .map(|r| r.ok().and_then(|d| decode_string_return(&d).ok()));
            facts.token_name = reads.next().flatten();
            facts.token_version = reads.next().flatten();
        }
        Ok(facts)
    }

    /// `from`'s USDC balance and which of `nonces` its EIP-3009 authorizations have used, read together at one
    /// block (batches of at most [`NONCES_PER_BATCH`] calls, the balance in the first). Every read must
    /// answer; an answer that does not decode as "used" counts as unused (the caller then holds more).
    pub async fn used_nonces(
        &self,
        from: Address,
        nonces: &[B256],
    ) -> Result<(U256, Vec<B256>), wit::Error> {
        // Every read at one block: a balance read before a payment was mined beside its nonce read after it
        // would drop that payment's hold while the balance still counts its money.
        let block = self
            .rpc
            .call(&EthBlockNumber)
            .await
            .map_err(|e| unavailable(&e))?;
        // Behind a load balancer the node asked for the head may be ahead of the one answering the reads,
        // which then refuses that block (any of the reads): once more, one block back.
        let read = match self.used_nonces_at(from, nonces, block).await {
            Err(e) if e.is_node() && block > 0 => {
                self.used_nonces_at(from, nonces, block - 1).await
            }
            other => other,
        };
        read.map_err(|e| unavailable(&e))
    }

    /// [`Chain::used_nonces`] at `block`. The balance must be read (a node error, such as a provider's rate
    /// limit inside the batch, is not a zero balance: the payment would be refused as final).
    async fn used_nonces_at(
        &self,
        from: Address,
        nonces: &[B256],
        block: u64,
    ) -> Result<(U256, Vec<B256>), CallError> {
        let at = |data: Vec<u8>| EthCall {
            call: CallRequest::new(self.network.usdc, data.into()),
            block: BlockTag::Number(block),
        };
        let balance_call = at(balance_of_calldata(from));
        let mut balance = U256::ZERO;
        let mut used = Vec::new();
        let mut chunks: Vec<&[B256]> = nonces.chunks(NONCES_PER_BATCH).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        for (i, chunk) in chunks.into_iter().enumerate() {
            let mut batch = Batch::new();
            let balance_slot = (i == 0).then(|| batch.add(&balance_call));
            let calls: Vec<_> = chunk
                .iter()
                .map(|n| at(authorization_state_calldata(from, *n)))
                .collect();
            let slots: Vec<_> = calls.iter().map(|c| batch.add(c)).collect();
            let mut answers = self.rpc.batch(batch).await;
            if let Some(slot) = balance_slot {
                let data = answers.take(slot, &balance_call)?;
                balance = decode_balance_of_return(&data)
                    .map_err(|e| CallError::Transport(format!("balanceOf: {e}")))?;
            }
            for ((slot, call), nonce) in slots.into_iter().zip(&calls).zip(chunk) {
                match answers.take(slot, call) {
                    Ok(data) if decode_authorization_state_return(&data).unwrap_or(false) => {
                        used.push(*nonce);
                    }
                    Ok(_) => {}
                    // A refusal (a lagging node behind a load balancer) is no answer: taken for "unused" it
                    // would count a mined payment twice, beside a balance that no longer holds its money.
                    Err(e) => return Err(e),
                }
            }
        }
        Ok((balance, used))
    }

    /// Whether the EIP-3009 authorization `(from, nonce)` was used as of `block` (`authorizationState`).
    /// An answer that does not decode is an error: the caller cannot tell.
    pub async fn authorization_used_at(
        &self,
        from: Address,
        nonce: B256,
        block: u64,
    ) -> Result<bool, CallError> {
        let data = self
            .rpc
            .call(&EthCall {
                call: CallRequest::new(
                    self.network.usdc,
                    authorization_state_calldata(from, nonce).into(),
                ),
                block: BlockTag::Number(block),
            })
            .await?;
        decode_authorization_state_return(&data)
            .map_err(|e| CallError::Transport(format!("authorizationState: {e}")))
    }
}
