//! EVM plumbing for settlement and tx-hash proofs (being written): JSON-RPC shapes, EIP-1559 transactions,
//! receipts and ERC-20 `Transfer` logs.
