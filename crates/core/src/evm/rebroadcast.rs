//! Transactions of ours that no node seems to have: how to ask (`eth_getTransactionByHash`) and what to do
//! with the answer.
//!
//! A signed transaction can vanish before it is mined: the request that sent it was cancelled before the bytes
//! left, the node restarted, or its pool evicted the transaction. Its hash is on record, so no receipt ever
//! comes. The caller keeps the signed bytes with the record; when the receipt is missing it asks the node
//! whether it knows the hash ([`EthGetTransactionByHash`]), and if not reads the sender's mined count *at a
//! block number* and lets [`fate`] decide:
//!
//! - the nonce is still free: send the identical bytes again ([`Fate::Resend`]). The hash is the same, so this
//!   is never a second transaction; "already known" and "nonce too low" are answers, not failures. A record
//!   younger than [`RESEND_AFTER_SECS`] is left alone ([`Fate::Wait`]): its own send may still be on the way.
//! - the nonce was used by another transaction: ours can never be mined ([`Fate::Unmineable`]). "Ours" is every
//!   hash the record keeps for the nonce (a transaction replaced with higher fees, kernel `bump`, and its
//!   replacements): the caller asks about each, and only when the node knows none of them is this asked;
//!   one of them mined is never "another transaction". Whether money
//!   moved anyway is a question for the contract (EIP-3009 `authorizationState` at that same block), never
//!   answered here.
//!
//! The count is read at a fixed block so that the follow-up contract read sees the same state: a node behind
//! that block fails the read instead of answering from an older state.

use alloy_primitives::{Address, B256};
use serde_json::{Value, json};

use super::quantity::{self, encode_data};
use super::rpc::{Method, RpcError};
use crate::settlement::SentTx;

/// How long after recording a transaction we leave it to its own send before sending it again: that send
/// takes at most one RPC timeout, and re-sending bytes whose first send the node is about to refuse could
/// broadcast a transaction whose claim is being given back.
pub const RESEND_AFTER_SECS: u64 = 30;

/// At most this many of our stored transactions are looked at (and re-sent) before one new send.
pub const MAX_RESENDS_PER_SEND: usize = 16;

/// What a node says about a transaction it knows, pending or mined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeenTx {
    /// The sender.
    pub from: Address,
    /// The sender's nonce.
    pub nonce: u64,
    /// The block it was mined in; `None` while it waits in a pool.
    pub block_number: Option<u64>,
}

/// `eth_getTransactionByHash(hash)` → the transaction if the node knows it (pending or mined), else `None`.
/// An answer about another hash is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthGetTransactionByHash {
    /// The transaction hash.
    pub hash: B256,
}

fn unexpected(reason: impl Into<String>) -> RpcError {
    RpcError::UnexpectedResult {
        method: EthGetTransactionByHash::NAME,
        reason: reason.into(),
    }
}

fn hex<T>(
    result: &Value,
    field: &'static str,
    parse: impl FnOnce(&str) -> Result<T, quantity::HexError>,
) -> Result<T, RpcError> {
    let s = result
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| unexpected(format!("transaction has no {field}")))?;
    parse(s).map_err(|source| RpcError::BadHex {
        method: EthGetTransactionByHash::NAME,
        field,
        source,
    })
}

impl Method for EthGetTransactionByHash {
    type Output = Option<SeenTx>;
    const NAME: &'static str = "eth_getTransactionByHash";
    fn params(&self) -> Value {
        json!([encode_data(self.hash.as_slice())])
    }
    fn decode(&self, result: Value) -> Result<Option<SeenTx>, RpcError> {
        if result.is_null() {
            return Ok(None);
        }
        let hash = hex(&result, "hash", quantity::parse_b256)?;
        if hash != self.hash {
            return Err(unexpected(format!(
                "transaction is {hash}, not {}",
                self.hash
            )));
        }
        let block_number = match result.get("blockNumber") {
            None | Some(Value::Null) => None,
            Some(_) => Some(hex(&result, "blockNumber", quantity::parse_u64)?),
        };
        Ok(Some(SeenTx {
            from: hex(&result, "from", quantity::parse_address)?,
            nonce: hex(&result, "nonce", quantity::parse_u64)?,
            block_number,
        }))
    }
}

/// What to do about a transaction of ours that has no receipt and that the node does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Its nonce is free but it was recorded moments ago: its own send may still be under way.
    Wait,
    /// Its nonce is free: send the identical bytes again.
    Resend,
    /// Its sender's mined count is past its nonce: another transaction used the nonce, so it can never be
    /// mined.
    Unmineable,
}

/// The fate of an unknown transaction with `nonce`, recorded at `recorded_at` (unix seconds), when its sender's
/// mined count (`eth_getTransactionCount` at a block, not `pending`) is `mined_count` and the time is `now`.
pub fn fate(mined_count: u64, nonce: u64, recorded_at: u64, now: u64) -> Fate {
    if mined_count > nonce {
        Fate::Unmineable
    } else if may_resend(recorded_at, now) {
        Fate::Resend
    } else {
        Fate::Wait
    }
}

/// Whether a transaction recorded at `recorded_at` is old enough to be sent again (see [`RESEND_AFTER_SECS`]).
pub fn may_resend(recorded_at: u64, now: u64) -> bool {
    recorded_at.saturating_add(RESEND_AFTER_SECS) <= now
}

/// Whether a record's transaction `sent` is `signer`'s transaction at account `nonce`, whatever the record's
/// status: a confirmed or failed record names its transaction as much as a `submitted` one, so its nonce was
/// used (or is about to be) and must never be released as an orphan and handed out again, even while a
/// lagging node's pending count still sits at or below it. A replacement (kernel `bump`) keeps the signer and
/// nonce, so a record names its nonce whichever of its hashes is the latest.
pub fn names_nonce(sent: &SentTx, signer: Address, nonce: u64) -> bool {
    sent.signer_nonce == Some(nonce)
        && sent
            .signer
            .as_deref()
            .and_then(|s| s.parse::<Address>().ok())
            == Some(signer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::address;

    const FROM: Address = address!("0x70997970C51812dc3A010C7d01b50e0d17dc79C8");

    fn parse(hash: B256, result: Value) -> Result<Option<SeenTx>, RpcError> {
        let m = EthGetTransactionByHash { hash };
        let body = json!({"jsonrpc": "2.0", "id": 7, "result": result}).to_string();
        m.parse_response(7, body.as_bytes())
    }

    #[test]
    fn request_names_the_hash() {
        let hash = B256::repeat_byte(0xab);
        let r = EthGetTransactionByHash { hash }.request(1).to_json();
        assert_eq!(r["method"], "eth_getTransactionByHash");
        assert_eq!(r["params"], json!([hash.to_string()]));
    }

    #[test]
    fn unknown_pending_and_mined_transactions() {
        let hash = B256::repeat_byte(1);
        assert_eq!(parse(hash, Value::Null).unwrap(), None);
        let pending = json!({"hash": hash.to_string(), "from": FROM.to_string(), "nonce": "0x7",
                             "blockNumber": null, "blockHash": null});
        assert_eq!(
            parse(hash, pending).unwrap(),
            Some(SeenTx {
                from: FROM,
                nonce: 7,
                block_number: None
            })
        );
        let mined = json!({"hash": hash.to_string(), "from": FROM.to_string(), "nonce": "0x7",
                           "blockNumber": "0x11"});
        assert_eq!(parse(hash, mined).unwrap().unwrap().block_number, Some(17));
    }

    #[test]
    fn an_answer_about_another_transaction_is_refused() {
        let other = json!({"hash": B256::repeat_byte(2).to_string(), "from": FROM.to_string(),
                           "nonce": "0x7"});
        assert!(matches!(
            parse(B256::repeat_byte(1), other),
            Err(RpcError::UnexpectedResult { .. })
        ));
        let no_nonce = json!({"hash": B256::repeat_byte(1).to_string(), "from": FROM.to_string()});
        assert!(parse(B256::repeat_byte(1), no_nonce).is_err());
    }

    #[test]
    fn a_free_nonce_is_resent_once_the_record_is_old_enough() {
        // Mined count 7: nonce 7 is the next one the chain will take.
        assert_eq!(fate(7, 7, 1_000, 1_000 + RESEND_AFTER_SECS), Fate::Resend);
        assert_eq!(fate(7, 7, 1_000, 1_000 + RESEND_AFTER_SECS - 1), Fate::Wait);
        // A transaction queued behind a gap is free too.
        assert_eq!(fate(5, 7, 0, 1_000), Fate::Resend);
    }

    #[test]
    fn a_used_nonce_is_unmineable_however_young_the_record() {
        assert_eq!(fate(8, 7, 1_000, 1_000), Fate::Unmineable);
        assert_eq!(fate(u64::MAX, 7, 0, 0), Fate::Unmineable);
    }

    #[test]
    fn a_record_names_its_nonce_in_any_status() {
        let sent = SentTx {
            transaction: Some(B256::repeat_byte(1).to_string()),
            signer: Some(FROM.to_checksum(None)),
            signer_nonce: Some(5),
            // Kept or not, the bytes do not matter: the nonce and signer do.
            raw_transaction: None,
            replaced: Vec::new(),
        };
        assert!(names_nonce(&sent, FROM, 5));
        assert!(!names_nonce(&sent, FROM, 6));
        assert!(!names_nonce(&sent, Address::repeat_byte(9), 5));
        assert!(!names_nonce(&SentTx::default(), FROM, 5));
        assert!(!names_nonce(
            &SentTx::hash_only(B256::repeat_byte(1)),
            FROM,
            5
        ));
    }
}
