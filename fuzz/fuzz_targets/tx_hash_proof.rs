//! Tx-hash payment proofs: the `X-Payment-Proof` value (a transaction hash) and the node's JSON-RPC answers the
//! verifier decides on: `eth_getTransactionReceipt` (the receipt and its ERC-20 `Transfer` logs, checked by
//! `check_tx_hash_proof` against fixed requirements), `eth_blockNumber` and `eth_getBlockByNumber`.
#![no_main]

use alloy_primitives::{B256, U256, address};
use esim402_core::evm::quantity::parse_b256;
use esim402_core::evm::receipt::{ProofRequirements, TransactionReceipt, check_tx_hash_proof};
use esim402_core::evm::rpc::{
    EthBlockNumber, EthGetBlockByNumber, EthGetTransactionReceipt, Method, RpcResponse,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// The seed receipt's parties, so mutations reach the later checks.
const REQUIREMENTS: ProofRequirements = ProofRequirements {
    token: address!("0x5FbDB2315678afecb367f032d93F642f64180aa3"),
    recipient: address!("0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"),
    min_amount: U256::from_limbs([420_000, 0, 0, 0]),
    payer: address!("0x70997970C51812dc3A010C7d01b50e0d17dc79C8"),
    min_confirmations: 2,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_b256(text.trim());
    }
    let _ = EthBlockNumber.parse_response(1, data);
    let _ = EthGetBlockByNumber::latest().parse_response(1, data);
    let _ = EthGetTransactionReceipt { hash: B256::ZERO }.parse_response(1, data);
    let Ok(response) = RpcResponse::<Value>::parse(data) else {
        return;
    };
    let Ok(result) = response.outcome else {
        return;
    };
    let Ok(receipt) = TransactionReceipt::from_json(result) else {
        return;
    };
    let hash = receipt.transaction_hash;
    assert!(
        EthGetTransactionReceipt { hash }
            .parse_response(1, data)
            .is_ok_and(|r| r.is_some())
            || response.id.as_u64() != Some(1),
        "a receipt that parses is accepted for its own hash"
    );
    for head in [
        0,
        receipt.block_number,
        receipt.block_number.saturating_add(1),
        u64::MAX,
    ] {
        let _ = receipt.confirmations(head);
        let _ = check_tx_hash_proof(&receipt, &REQUIREMENTS, head);
    }
});
