//! EVM plumbing for settlement and tx-hash proofs, all pure: the caller does the HTTP and the storage.
//!
//! - [`rpc`]: JSON-RPC 2.0 requests and typed response decoding for the few `eth_*` methods we use.
//! - [`tx`]: build and sign EIP-1559 transactions with the facilitator's key.
//! - [`erc20`]: ERC-20 `transfer` calldata (refunds paid from the treasury).
//! - [`receipt`]: transaction receipts, ERC-20 `Transfer` logs and the checks behind a tx-hash payment proof.
//! - [`proof_signature`]: the payer's signature binding a tx-hash proof to its invoice.
//! - [`nonce`]: the per-signer nonce bookkeeping kept in key-value storage.
//! - [`rebroadcast`]: what to do about a transaction of ours that no node knows (lost before or after sending).
//! - [`bump`]: when and how to replace a pooled transaction of ours whose fee cap the base fee outgrew.
//! - [`quantity`]: the hex encodings of JSON-RPC quantities, data, hashes and addresses.
//!
//! A settlement reads: `rpc::EthGetTransactionCount` + [`nonce::NonceState::reserve`] → fees from
//! `rpc::EthGetBlockByNumber`/`rpc::EthMaxPriorityFeePerGas` → [`tx::sign_eip1559`] →
//! `rpc::EthSendRawTransaction` → `rpc::EthGetTransactionReceipt` → [`receipt::find_erc20_transfers`].

pub mod bump;
pub mod erc20;
pub mod nonce;
pub mod proof_signature;
pub mod quantity;
pub mod rebroadcast;
pub mod receipt;
pub mod rpc;
pub mod tx;

pub use nonce::{GiveBack, NonceState};
pub use receipt::{
    ProofError, ProofRequirements, TRANSFER_TOPIC, TransactionReceipt, Transfer,
    check_tx_hash_proof, find_erc20_transfers,
};
pub use rpc::{Method, RpcError, RpcRequest, RpcResponse};
pub use tx::{Eip1559Tx, SignedTx, SigningKey, address_of, sign_eip1559};
