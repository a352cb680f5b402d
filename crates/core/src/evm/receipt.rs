//! Transaction receipts and ERC-20 `Transfer` logs: the evidence behind a settlement and a tx-hash payment proof.
//!
//! [`TransactionReceipt`] is the subset of an `eth_getTransactionReceipt` result we rely on, parsed strictly.
//! [`find_erc20_transfers`] decodes the token's `Transfer(address,address,uint256)` logs, and
//! [`check_tx_hash_proof`] decides whether a mined transaction pays an invoice: it succeeded, moved the right
//! token to the right recipient from the expected payer, for at least the price, and is buried deeply enough.
//! Everything is bound to the token's own `Transfer` logs, never to the transaction's `from`/`to`: a payment
//! may come through a smart wallet or an EIP-3009 relayer, but the money only moves where the token says it did.

use alloy_primitives::{Address, B256, Bytes, U256, b256};
use serde::Deserialize;
use serde_json::Value;

use super::quantity::{self, HexError};

/// `keccak256("Transfer(address,address,uint256)")`, topic 0 of every ERC-20 transfer log.
pub const TRANSFER_TOPIC: B256 =
    b256!("0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef");

/// `keccak256("AuthorizationUsed(address,bytes32)")`, topic 0 of the log an EIP-3009 token emits when it executes
/// an authorization (`transferWithAuthorization`, `receiveWithAuthorization`).
pub const AUTHORIZATION_USED_TOPIC: B256 =
    b256!("0x98de503528ee59b575ef0c0a2576a82497bfc029a5685b209e9ec333479b10a5");

/// The EIP-3009 authorizations (`authorizer`, `nonce`) `token` executed in this receipt, in log order; removed
/// and misshapen logs are skipped. A transfer made by an authorization is an x402 `exact` payment's money if
/// that authorization was presented to us: it pays that payment, never a tx-hash proof too.
pub fn authorizations_used(receipt: &TransactionReceipt, token: Address) -> Vec<(Address, B256)> {
    receipt
        .logs
        .iter()
        .filter(|l| l.address == token && !l.removed)
        .filter_map(|l| match l.topics.as_slice() {
            [topic, authorizer, nonce]
                if *topic == AUTHORIZATION_USED_TOPIC
                    && authorizer[..12].iter().all(|&b| b == 0) =>
            {
                Some((Address::from_word(*authorizer), *nonce))
            }
            _ => None,
        })
        .collect()
}

/// `keccak256("AuthorizationCanceled(address,bytes32)")`, topic 0 of the log an EIP-3009 token emits when its
/// authorizer burns an unused nonce (`cancelAuthorization`): the nonce reads as used, and nothing moved.
pub const AUTHORIZATION_CANCELED_TOPIC: B256 =
    b256!("0x1cdd46ff242716cdaa72d159d339a485b3438398348d68f09d7c8c0a59353d81");

/// What the chain's logs say became of an EIP-3009 authorization that reads as used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorizationFate {
    /// Executed by this transaction (its `AuthorizationUsed` log): what it moved is in its receipt.
    Executed(B256),
    /// Canceled by its authorizer in this transaction: no money moved.
    Canceled(B256),
    /// No log of either in what was searched.
    Unknown,
}

/// The fate of the authorization (`authorizer`, `nonce`) of `token`, from `logs` (an `eth_getLogs` answer for
/// its topics; anything else in it is ignored, as are removed logs). A nonce is used once, so at most one log
/// can be genuine; should a node answer both, the execution wins (it is the one that may have moved money).
pub fn authorization_fate(
    logs: &[ChainLog],
    token: Address,
    authorizer: Address,
    nonce: B256,
) -> AuthorizationFate {
    fate_of(
        logs.iter().map(|l| (&l.log, l.transaction_hash)),
        token,
        authorizer,
        nonce,
    )
}

/// [`authorization_fate`] as `receipt`'s own logs show it: what a log query named, checked against the
/// transaction itself (a node may answer a query from a stale or reorganised view).
pub fn authorization_fate_in(
    receipt: &TransactionReceipt,
    token: Address,
    authorizer: Address,
    nonce: B256,
) -> AuthorizationFate {
    fate_of(
        receipt.logs.iter().map(|l| (l, receipt.transaction_hash)),
        token,
        authorizer,
        nonce,
    )
}

fn fate_of<'a>(
    logs: impl Iterator<Item = (&'a Log, B256)> + Clone,
    token: Address,
    authorizer: Address,
    nonce: B256,
) -> AuthorizationFate {
    let of = |topic: B256| {
        logs.clone()
            .find(|(log, _)| {
                log.address == token
                    && !log.removed
                    && log.topics.as_slice() == [topic, authorizer.into_word(), nonce]
            })
            .map(|(_, tx)| tx)
    };
    match (
        of(AUTHORIZATION_USED_TOPIC),
        of(AUTHORIZATION_CANCELED_TOPIC),
    ) {
        (Some(tx), _) => AuthorizationFate::Executed(tx),
        (None, Some(tx)) => AuthorizationFate::Canceled(tx),
        (None, None) => AuthorizationFate::Unknown,
    }
}

/// One log of an `eth_getLogs` answer: the log and the transaction that emitted it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawChainLog")]
pub struct ChainLog {
    /// The log.
    pub log: Log,
    /// The transaction that emitted it.
    pub transaction_hash: B256,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawChainLog {
    #[serde(flatten)]
    log: RawLog,
    transaction_hash: String,
}

impl TryFrom<RawChainLog> for ChainLog {
    type Error = ReceiptError;
    fn try_from(raw: RawChainLog) -> Result<Self, ReceiptError> {
        Ok(Self {
            log: Log::try_from(raw.log)?,
            transaction_hash: field(
                "transactionHash",
                &raw.transaction_hash,
                quantity::parse_b256,
            )?,
        })
    }
}

/// A receipt that does not have the shape of an `eth_getTransactionReceipt` result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed receipt: {0}")]
pub struct ReceiptError(pub String);

fn field<T>(
    name: &str,
    s: &str,
    parse: impl FnOnce(&str) -> Result<T, HexError>,
) -> Result<T, ReceiptError> {
    parse(s).map_err(|e| ReceiptError(format!("{name}: {e}")))
}

/// One log entry of a receipt.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawLog")]
pub struct Log {
    /// The contract that emitted it.
    pub address: Address,
    /// Indexed topics; topic 0 is the event signature hash.
    pub topics: Vec<B256>,
    /// Non-indexed data.
    pub data: Bytes,
    /// Set when a reorg removed the log; such logs prove nothing.
    pub removed: bool,
}

#[derive(Deserialize)]
struct RawLog {
    address: String,
    topics: Vec<String>,
    data: String,
    #[serde(default)]
    removed: bool,
}

impl TryFrom<RawLog> for Log {
    type Error = ReceiptError;
    fn try_from(raw: RawLog) -> Result<Self, ReceiptError> {
        Ok(Self {
            address: field("log address", &raw.address, quantity::parse_address)?,
            topics: raw
                .topics
                .iter()
                .map(|t| field("log topic", t, quantity::parse_b256))
                .collect::<Result<_, _>>()?,
            data: field("log data", &raw.data, quantity::parse_data)?,
            removed: raw.removed,
        })
    }
}

/// The part of a transaction receipt we use.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawReceipt")]
pub struct TransactionReceipt {
    /// `true` if the transaction succeeded (`status: "0x1"`), `false` if it reverted.
    pub status: bool,
    /// The block it was mined in.
    pub block_number: u64,
    /// Its hash.
    pub transaction_hash: B256,
    /// The transaction's sender (for a relayed payment: the relayer, not the payer).
    pub from: Address,
    /// The called address; `None` for contract creation.
    pub to: Option<Address>,
    /// Logs, in order.
    pub logs: Vec<Log>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawReceipt {
    status: Option<String>,
    block_number: Option<String>,
    transaction_hash: String,
    from: String,
    to: Option<String>,
    logs: Vec<RawLog>,
}

impl TryFrom<RawReceipt> for TransactionReceipt {
    type Error = ReceiptError;
    fn try_from(raw: RawReceipt) -> Result<Self, ReceiptError> {
        let status = match raw.status.as_deref() {
            Some(s) => match field("status", s, quantity::parse_u64)? {
                0 => false,
                1 => true,
                n => return Err(ReceiptError(format!("status must be 0x0 or 0x1, got {n}"))),
            },
            None => return Err(ReceiptError("no status (pre-Byzantium receipt)".into())),
        };
        let block_number = raw
            .block_number
            .as_deref()
            .ok_or_else(|| ReceiptError("no blockNumber (not mined)".into()))?;
        Ok(Self {
            status,
            block_number: field("blockNumber", block_number, quantity::parse_u64)?,
            transaction_hash: field(
                "transactionHash",
                &raw.transaction_hash,
                quantity::parse_b256,
            )?,
            from: field("from", &raw.from, quantity::parse_address)?,
            to: raw
                .to
                .as_deref()
                .map(|t| field("to", t, quantity::parse_address))
                .transpose()?,
            logs: raw
                .logs
                .into_iter()
                .map(Log::try_from)
                .collect::<Result<_, _>>()?,
        })
    }
}

impl TransactionReceipt {
    /// Parse the `result` of `eth_getTransactionReceipt` (not null: a missing receipt is the caller's `None`).
    pub fn from_json(value: Value) -> Result<Self, ReceiptError> {
        serde_json::from_value(value).map_err(|e| {
            let msg = e.to_string();
            ReceiptError(
                msg.strip_prefix("malformed receipt: ")
                    .unwrap_or(&msg)
                    .to_owned(),
            )
        })
    }

    /// Confirmations at chain head `head_block`: the mining block counts as one; 0 if the node is behind it.
    pub fn confirmations(&self, head_block: u64) -> u64 {
        head_block
            .checked_sub(self.block_number)
            .map_or(0, |d| d.saturating_add(1))
    }
}

/// One ERC-20 transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    /// Tokens left this address.
    pub from: Address,
    /// Tokens arrived at this address.
    pub to: Address,
    /// Atomic token units.
    pub value: U256,
}

/// `None` if `log` is not an ERC-20 `Transfer` event; `Some(Err)` if it claims to be one but is misshapen
/// (wrong topic count, data not one word, or address topics with non-zero padding).
fn decode_transfer(log: &Log) -> Option<Result<Transfer, ReceiptError>> {
    if log.removed || log.topics.first() != Some(&TRANSFER_TOPIC) {
        return None;
    }
    let address_topic = |t: &B256| {
        if t[..12].iter().all(|&b| b == 0) {
            Ok(Address::from_word(*t))
        } else {
            Err(ReceiptError("Transfer topic is not an address".into()))
        }
    };
    Some(match (log.topics.as_slice(), log.data.len()) {
        ([_, from, to], 32) => address_topic(from).and_then(|from| {
            Ok(Transfer {
                from,
                to: address_topic(to)?,
                value: U256::from_be_slice(&log.data),
            })
        }),
        _ => Err(ReceiptError(format!(
            "Transfer log with {} topics and {} data bytes",
            log.topics.len(),
            log.data.len()
        ))),
    })
}

/// The `Transfer` events emitted by `token` in this receipt, in log order. Logs from other contracts, removed
/// logs and misshapen `Transfer` logs are skipped.
pub fn find_erc20_transfers(receipt: &TransactionReceipt, token: Address) -> Vec<Transfer> {
    receipt
        .logs
        .iter()
        .filter(|l| l.address == token)
        .filter_map(decode_transfer)
        .filter_map(Result::ok)
        .collect()
}

/// How far a block's timestamp may lag the clock that dated an invoice. Chains and nodes keep their own time:
/// anvil dates a block by its start time plus whole elapsed seconds (up to a second behind), and L1 blocks
/// carry their slot's start time. A transfer mined at most this long "before" its invoice is still taken to
/// pay it; one made earlier paid for something else.
pub const BLOCK_CLOCK_SKEW_SECS: u64 = 15;

/// Whether a transfer in a block dated `block_timestamp` can pay an invoice created at `invoice_created_at`
/// (unix seconds), allowing [`BLOCK_CLOCK_SKEW_SECS`] of clock skew.
pub fn mined_after_invoice(block_timestamp: u64, invoice_created_at: u64) -> bool {
    block_timestamp.saturating_add(BLOCK_CLOCK_SKEW_SECS) >= invoice_created_at
}

/// When a transfer was mined, against its invoice's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mined {
    /// Before the invoice existed: it paid for something else.
    BeforeInvoice,
    /// While the invoice was open: it pays it, whenever its proof arrives.
    InTime,
    /// After the invoice's deadline.
    Late,
}

/// When a transfer in a block dated `block_timestamp` was mined for an invoice open from `created_at` until
/// `expires_at` (unix seconds), allowing [`BLOCK_CLOCK_SKEW_SECS`] at both ends. The deadline is judged by the
/// block, not by when the proof arrives: a payer whose transfer made it in time has paid, even if its proof
/// comes later (the transfer waited for its confirmations, or the client retried late), and the money already
/// moved, so refusing it would keep it for nothing.
pub fn mined(block_timestamp: u64, created_at: u64, expires_at: u64) -> Mined {
    if !mined_after_invoice(block_timestamp, created_at) {
        Mined::BeforeInvoice
    } else if block_timestamp > expires_at.saturating_add(BLOCK_CLOCK_SKEW_SECS) {
        Mined::Late
    } else {
        Mined::InTime
    }
}

/// How long after an invoice's deadline a transfer its node does not know yet may still turn out to have been
/// mined in time: a node lagging the chain, a load-balanced endpoint whose backend is behind, a chain clock
/// behind ours. Past it, a transaction the node does not know is taken as not mined by the deadline.
pub const UNSEEN_GRACE_SECS: u64 = 600;

/// Whether a transfer the node does not know at `now` can still have paid an invoice expiring at `expires_at`
/// ([`UNSEEN_GRACE_SECS`] after the deadline and the skew).
pub fn can_still_be_mined_in_time(now: u64, expires_at: u64) -> bool {
    now <= expires_at
        .saturating_add(BLOCK_CLOCK_SKEW_SECS)
        .saturating_add(UNSEEN_GRACE_SECS)
}

/// What a tx-hash payment proof must show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProofRequirements {
    /// The token contract (USDC on the invoice's network).
    pub token: Address,
    /// Who must receive the tokens (the invoice's `payTo`).
    pub recipient: Address,
    /// The least acceptable total, in atomic units.
    pub min_amount: U256,
    /// Who must have paid: binds the payment to the payer presenting it.
    pub payer: Address,
    /// Confirmations required (the mining block counts as one; 0 or 1 accept any mined receipt).
    pub min_confirmations: u64,
}

/// Why a receipt does not prove the payment. Only [`ProofError::NotEnoughConfirmations`] may change with time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The receipt did not parse, or the token emitted a misshapen `Transfer` log.
    #[error(transparent)]
    Malformed(#[from] ReceiptError),
    /// The transaction reverted (status 0).
    #[error("transaction {tx_hash} reverted")]
    Reverted {
        /// The transaction.
        tx_hash: B256,
    },
    /// The token contract emitted no `Transfer`: wrong token, or not a token transfer at all.
    #[error("no Transfer of token {token} in the transaction")]
    NoTokenTransfer {
        /// The token required.
        token: Address,
    },
    /// The token moved, but not to the recipient.
    #[error("tokens went to {found:?}, not to {expected}")]
    WrongRecipient {
        /// The recipient required.
        expected: Address,
        /// Where the token's transfers went.
        found: Vec<Address>,
    },
    /// Tokens reached the recipient, but from someone other than the payer.
    #[error("tokens came from {found:?}, not from the payer {expected}")]
    PayerMismatch {
        /// The payer required.
        expected: Address,
        /// Who sent the transfers to the recipient.
        found: Vec<Address>,
    },
    /// The payer sent the recipient less than the price.
    #[error("paid {paid}, but {required} is required")]
    Underpaid {
        /// Total paid (atomic units).
        paid: U256,
        /// Required (atomic units).
        required: U256,
    },
    /// Valid, but not yet buried deeply enough: ask again later.
    #[error("{have} confirmations, {need} required")]
    NotEnoughConfirmations {
        /// Confirmations so far.
        have: u64,
        /// Confirmations required.
        need: u64,
    },
}

impl ProofError {
    /// `true` when waiting may turn the failure into a success.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::NotEnoughConfirmations { .. })
    }
}

/// Check that `receipt` pays `req` with chain head at `head_block`. On success returns the payment as one
/// transfer from the payer to the recipient, for the sum of all such transfers in the transaction.
///
/// Checks, in order: succeeded; the token emitted well-formed `Transfer`s; one reaches the recipient; from the
/// payer; the total covers `min_amount`; enough confirmations. Terminal failures are reported before the
/// retryable confirmation count.
pub fn check_tx_hash_proof(
    receipt: &TransactionReceipt,
    req: &ProofRequirements,
    head_block: u64,
) -> Result<Transfer, ProofError> {
    if !receipt.status {
        return Err(ProofError::Reverted {
            tx_hash: receipt.transaction_hash,
        });
    }
    let transfers: Vec<Transfer> = receipt
        .logs
        .iter()
        .filter(|l| l.address == req.token)
        .filter_map(decode_transfer)
        .collect::<Result<_, _>>()?;
    if transfers.is_empty() {
        return Err(ProofError::NoTokenTransfer { token: req.token });
    }
    let to_recipient: Vec<&Transfer> = transfers.iter().filter(|t| t.to == req.recipient).collect();
    if to_recipient.is_empty() {
        return Err(ProofError::WrongRecipient {
            expected: req.recipient,
            found: transfers.iter().map(|t| t.to).collect(),
        });
    }
    let from_payer: Vec<&&Transfer> = to_recipient
        .iter()
        .filter(|t| t.from == req.payer)
        .collect();
    if from_payer.is_empty() {
        return Err(ProofError::PayerMismatch {
            expected: req.payer,
            found: to_recipient.iter().map(|t| t.from).collect(),
        });
    }
    let paid = from_payer
        .iter()
        .fold(U256::ZERO, |sum, t| sum.saturating_add(t.value));
    if paid < req.min_amount {
        return Err(ProofError::Underpaid {
            paid,
            required: req.min_amount,
        });
    }
    let have = receipt.confirmations(head_block);
    if have < req.min_confirmations {
        return Err(ProofError::NotEnoughConfirmations {
            have,
            need: req.min_confirmations,
        });
    }
    Ok(Transfer {
        from: req.payer,
        to: req.recipient,
        value: paid,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_block_may_lag_the_invoice_clock_by_the_skew_only() {
        assert!(mined_after_invoice(1_000, 1_000));
        assert!(mined_after_invoice(1_001, 1_000));
        // anvil's block clock a second behind ours: the same payment.
        assert!(mined_after_invoice(999, 1_000));
        assert!(mined_after_invoice(1_000 - BLOCK_CLOCK_SKEW_SECS, 1_000));
        // Made well before the invoice existed: it paid for something else.
        assert!(!mined_after_invoice(
            1_000 - BLOCK_CLOCK_SKEW_SECS - 1,
            1_000
        ));
        assert!(mined_after_invoice(0, 0));
    }

    #[test]
    fn the_authorizations_a_token_executed_are_read_from_its_logs() {
        assert_eq!(
            AUTHORIZATION_USED_TOPIC,
            alloy_primitives::keccak256(b"AuthorizationUsed(address,bytes32)")
        );
        let token = Address::repeat_byte(0x11);
        let authorizer = Address::repeat_byte(0x22);
        let nonce = B256::repeat_byte(0x33);
        let log = |address: Address, topics: Vec<B256>, removed: bool| Log {
            address,
            topics,
            data: Bytes::new(),
            removed,
        };
        let used = vec![AUTHORIZATION_USED_TOPIC, authorizer.into_word(), nonce];
        let mut receipt = receipt("0x1", vec![]);
        receipt.logs = vec![
            log(token, used.clone(), false),
            // Another contract's, a removed one, a misshapen one: none count.
            log(Address::repeat_byte(0x44), used.clone(), false),
            log(token, used.clone(), true),
            log(
                token,
                vec![AUTHORIZATION_USED_TOPIC, B256::repeat_byte(0xff), nonce],
                false,
            ),
            log(
                token,
                vec![TRANSFER_TOPIC, authorizer.into_word(), nonce],
                false,
            ),
        ];
        assert_eq!(authorizations_used(&receipt, token), [(authorizer, nonce)]);
    }

    #[test]
    fn an_authorizations_fate_is_read_from_the_logs_of_its_topics() {
        assert_eq!(
            AUTHORIZATION_CANCELED_TOPIC,
            alloy_primitives::keccak256(b"AuthorizationCanceled(address,bytes32)")
        );
        let token = Address::repeat_byte(0x11);
        let authorizer = Address::repeat_byte(0x22);
        let nonce = B256::repeat_byte(0x33);
        let entry = |topic: B256, address: Address, nonce: B256, removed: bool, tx: u8| {
            serde_json::json!({
                "address": address.to_string(),
                "topics": [topic.to_string(), authorizer.into_word().to_string(), nonce.to_string()],
                "data": "0x",
                "removed": removed,
                "blockNumber": "0x7",
                "transactionHash": B256::repeat_byte(tx).to_string(),
                "logIndex": "0x0",
            })
        };
        let parse = |entries: Vec<serde_json::Value>| -> Vec<ChainLog> {
            serde_json::from_value(serde_json::Value::Array(entries)).unwrap()
        };
        let fate = |entries| authorization_fate(&parse(entries), token, authorizer, nonce);
        let used = AUTHORIZATION_USED_TOPIC;
        let canceled = AUTHORIZATION_CANCELED_TOPIC;
        assert_eq!(
            fate(vec![entry(used, token, nonce, false, 0xa1)]),
            AuthorizationFate::Executed(B256::repeat_byte(0xa1))
        );
        assert_eq!(
            fate(vec![entry(canceled, token, nonce, false, 0xa2)]),
            AuthorizationFate::Canceled(B256::repeat_byte(0xa2))
        );
        // Another token's, another nonce's, a removed one, none at all: nothing known.
        assert_eq!(
            fate(vec![
                entry(used, Address::repeat_byte(0x44), nonce, false, 1),
                entry(used, token, B256::repeat_byte(0x55), false, 2),
                entry(used, token, nonce, true, 3),
            ]),
            AuthorizationFate::Unknown
        );
        assert_eq!(fate(vec![]), AuthorizationFate::Unknown);
        // Both answered (a node cannot genuinely have both): the execution, which may have moved money.
        assert_eq!(
            fate(vec![
                entry(canceled, token, nonce, false, 0xa2),
                entry(used, token, nonce, false, 0xa1),
            ]),
            AuthorizationFate::Executed(B256::repeat_byte(0xa1))
        );
        // The same, read from a receipt's own logs.
        let logs = parse(vec![entry(canceled, token, nonce, false, 0xa2)]);
        let mut receipt = receipt("0x1", vec![]);
        receipt.transaction_hash = B256::repeat_byte(0xa2);
        receipt.logs = logs.into_iter().map(|l| l.log).collect();
        assert_eq!(
            authorization_fate_in(&receipt, token, authorizer, nonce),
            AuthorizationFate::Canceled(B256::repeat_byte(0xa2))
        );
        assert_eq!(
            authorization_fate_in(&receipt, token, authorizer, B256::ZERO),
            AuthorizationFate::Unknown
        );
        // A log without its transaction hash does not parse.
        let mut bad = entry(used, token, nonce, false, 1);
        bad.as_object_mut().unwrap().remove("transactionHash");
        assert!(serde_json::from_value::<ChainLog>(bad).is_err());
    }

    #[test]
    fn a_transfer_pays_an_invoice_if_mined_while_it_was_open() {
        let (created, expires) = (1_000, 1_900);
        assert_eq!(mined(1_000, created, expires), Mined::InTime);
        assert_eq!(mined(1_900, created, expires), Mined::InTime);
        // A block dated within the skew of either end still counts.
        assert_eq!(
            mined(1_000 - BLOCK_CLOCK_SKEW_SECS, created, expires),
            Mined::InTime
        );
        assert_eq!(
            mined(1_900 + BLOCK_CLOCK_SKEW_SECS, created, expires),
            Mined::InTime
        );
        assert_eq!(
            mined(1_000 - BLOCK_CLOCK_SKEW_SECS - 1, created, expires),
            Mined::BeforeInvoice
        );
        assert_eq!(
            mined(1_900 + BLOCK_CLOCK_SKEW_SECS + 1, created, expires),
            Mined::Late
        );
        let last = 1_900 + BLOCK_CLOCK_SKEW_SECS + UNSEEN_GRACE_SECS;
        assert!(can_still_be_mined_in_time(
            1_900 + BLOCK_CLOCK_SKEW_SECS + 1,
            expires
        ));
        assert!(can_still_be_mined_in_time(last, expires));
        assert!(!can_still_be_mined_in_time(last + 1, expires));
        assert!(can_still_be_mined_in_time(u64::MAX, u64::MAX));
    }

    use super::*;
    use alloy_primitives::{address, keccak256};
    use serde_json::json;

    const USDC: Address = address!("0x036CbD53842c5426634e7929541eC2318f3dCF7e");
    const OTHER_TOKEN: Address = address!("0x5425890298aed601595a70AB815c96711a31Bc65");
    const PAYER: Address = address!("0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266");
    const PAY_TO: Address = address!("0x209693Bc6afc0C5328bA36FaF03C514EF312287C");
    const STRANGER: Address = address!("0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC");
    const RELAYER: Address = address!("0x70997970C51812dc3A010C7d01b50e0d17dc79C8");

    fn transfer_log(token: Address, from: Address, to: Address, value: u64) -> Value {
        json!({
            "address": token.to_string(),
            "topics": [TRANSFER_TOPIC.to_string(), from.into_word().to_string(), to.into_word().to_string()],
            "data": B256::from(U256::from(value)).to_string(),
            "blockNumber": "0x64", "logIndex": "0x0", "removed": false
        })
    }

    fn receipt_json(status: &str, logs: Vec<Value>) -> Value {
        json!({
            "status": status, "blockNumber": "0x64", "transactionHash": B256::repeat_byte(0xaa).to_string(),
            "from": RELAYER.to_string(), "to": USDC.to_string(), "logs": logs,
            "gasUsed": "0xb5c8", "cumulativeGasUsed": "0xb5c8", "type": "0x2",
            "effectiveGasPrice": "0x3b9aca00", "contractAddress": null, "logsBloom": "0x00"
        })
    }

    fn receipt(status: &str, logs: Vec<Value>) -> TransactionReceipt {
        TransactionReceipt::from_json(receipt_json(status, logs)).unwrap()
    }

    fn req() -> ProofRequirements {
        ProofRequirements {
            token: USDC,
            recipient: PAY_TO,
            min_amount: U256::from(10_000u64),
            payer: PAYER,
            min_confirmations: 3,
        }
    }

    const HEAD: u64 = 0x64 + 2; // three confirmations

    #[test]
    fn transfer_topic_is_the_event_signature_hash() {
        assert_eq!(
            TRANSFER_TOPIC,
            keccak256("Transfer(address,address,uint256)")
        );
    }

    #[test]
    fn parses_a_node_receipt() {
        let r = receipt("0x1", vec![transfer_log(USDC, PAYER, PAY_TO, 10_000)]);
        assert!(r.status);
        assert_eq!(r.block_number, 100);
        assert_eq!(r.transaction_hash, B256::repeat_byte(0xaa));
        assert_eq!(r.from, RELAYER);
        assert_eq!(r.to, Some(USDC));
        assert_eq!(r.logs.len(), 1);
        assert_eq!(r.logs[0].topics[0], TRANSFER_TOPIC);
        let via_serde: TransactionReceipt =
            serde_json::from_value(receipt_json("0x1", vec![])).unwrap();
        assert!(via_serde.logs.is_empty());
        assert_eq!(r.confirmations(100), 1);
        assert_eq!(r.confirmations(HEAD), 3);
        assert_eq!(r.confirmations(99), 0);
    }

    #[test]
    fn finds_only_the_tokens_transfers() {
        let mut removed = transfer_log(USDC, STRANGER, PAY_TO, 5);
        removed["removed"] = json!(true);
        let approval = json!({"address": USDC.to_string(),
            "topics": [keccak256("Approval(address,address,uint256)").to_string(), PAYER.into_word().to_string(), PAY_TO.into_word().to_string()],
            "data": B256::ZERO.to_string()});
        let r = receipt(
            "0x1",
            vec![
                transfer_log(OTHER_TOKEN, PAYER, PAY_TO, 1),
                approval,
                transfer_log(USDC, PAYER, PAY_TO, 7),
                removed,
                transfer_log(USDC, PAY_TO, STRANGER, 3),
            ],
        );
        assert_eq!(
            find_erc20_transfers(&r, USDC),
            vec![
                Transfer {
                    from: PAYER,
                    to: PAY_TO,
                    value: U256::from(7)
                },
                Transfer {
                    from: PAY_TO,
                    to: STRANGER,
                    value: U256::from(3)
                },
            ]
        );
        assert_eq!(find_erc20_transfers(&r, OTHER_TOKEN).len(), 1);
        assert!(find_erc20_transfers(&r, STRANGER).is_empty());
    }

    #[test]
    fn a_good_proof_passes_and_sums_the_payers_transfers() {
        let r = receipt(
            "0x1",
            vec![
                transfer_log(USDC, PAYER, PAY_TO, 6_000),
                transfer_log(USDC, STRANGER, PAY_TO, 50_000),
                transfer_log(USDC, PAYER, PAY_TO, 4_000),
            ],
        );
        assert_eq!(
            check_tx_hash_proof(&r, &req(), HEAD),
            Ok(Transfer {
                from: PAYER,
                to: PAY_TO,
                value: U256::from(10_000)
            })
        );
    }

    #[test]
    fn reverted() {
        let r = receipt("0x0", vec![]);
        assert_eq!(
            check_tx_hash_proof(&r, &req(), HEAD),
            Err(ProofError::Reverted {
                tx_hash: B256::repeat_byte(0xaa)
            })
        );
    }

    #[test]
    fn wrong_token() {
        let r = receipt(
            "0x1",
            vec![transfer_log(OTHER_TOKEN, PAYER, PAY_TO, 10_000)],
        );
        assert_eq!(
            check_tx_hash_proof(&r, &req(), HEAD),
            Err(ProofError::NoTokenTransfer { token: USDC })
        );
    }

    #[test]
    fn wrong_recipient() {
        let r = receipt("0x1", vec![transfer_log(USDC, PAYER, STRANGER, 10_000)]);
        assert_eq!(
            check_tx_hash_proof(&r, &req(), HEAD),
            Err(ProofError::WrongRecipient {
                expected: PAY_TO,
                found: vec![STRANGER]
            })
        );
    }

    #[test]
    fn payer_mismatch() {
        // The transaction's sender being the payer does not help: the token must have moved the payer's funds.
        let mut json = receipt_json("0x1", vec![transfer_log(USDC, STRANGER, PAY_TO, 10_000)]);
        json["from"] = json!(PAYER.to_string());
        let r = TransactionReceipt::from_json(json).unwrap();
        assert_eq!(
            check_tx_hash_proof(&r, &req(), HEAD),
            Err(ProofError::PayerMismatch {
                expected: PAYER,
                found: vec![STRANGER]
            })
        );
    }

    #[test]
    fn underpaid() {
        let r = receipt("0x1", vec![transfer_log(USDC, PAYER, PAY_TO, 9_999)]);
        assert_eq!(
            check_tx_hash_proof(&r, &req(), HEAD),
            Err(ProofError::Underpaid {
                paid: U256::from(9_999),
                required: U256::from(10_000)
            })
        );
    }

    #[test]
    fn not_enough_confirmations_is_the_only_retryable_error() {
        let r = receipt("0x1", vec![transfer_log(USDC, PAYER, PAY_TO, 10_000)]);
        let err = check_tx_hash_proof(&r, &req(), HEAD - 1).unwrap_err();
        assert_eq!(err, ProofError::NotEnoughConfirmations { have: 2, need: 3 });
        assert!(err.is_retryable());
        assert_eq!(
            check_tx_hash_proof(&r, &req(), 50),
            Err(ProofError::NotEnoughConfirmations { have: 0, need: 3 })
        );
        let any_mined = ProofRequirements {
            min_confirmations: 0,
            ..req()
        };
        assert!(check_tx_hash_proof(&r, &any_mined, 0).is_ok());
        assert!(
            !ProofError::Reverted {
                tx_hash: B256::ZERO
            }
            .is_retryable()
        );
        // Terminal failures win over the retryable one.
        let under = receipt("0x1", vec![transfer_log(USDC, PAYER, PAY_TO, 1)]);
        assert!(matches!(
            check_tx_hash_proof(&under, &req(), 0),
            Err(ProofError::Underpaid { .. })
        ));
    }

    #[test]
    fn malformed_receipts() {
        type Edit = fn(&mut Value);
        let cases: [(&str, Edit); 9] = [
            ("status", |r| r["status"] = json!("0x2")),
            ("status", |r| r["status"] = json!("1")),
            ("pre-Byzantium", |r| {
                r.as_object_mut().unwrap().remove("status");
            }),
            ("not mined", |r| r["blockNumber"] = Value::Null),
            ("transactionHash", |r| {
                r["transactionHash"] = json!("0x1234")
            }),
            ("from", |r| r["from"] = json!("nope")),
            ("log topic", |r| r["logs"][0]["topics"][1] = json!("0x12")),
            ("log data", |r| r["logs"][0]["data"] = json!("0x1")),
            ("expected a sequence", |r| r["logs"] = json!("none")),
        ];
        for (what, edit) in cases {
            let mut json = receipt_json("0x1", vec![transfer_log(USDC, PAYER, PAY_TO, 10_000)]);
            edit(&mut json);
            let err = TransactionReceipt::from_json(json).unwrap_err();
            assert!(err.to_string().contains(what), "{what}: {err}");
            assert!(matches!(ProofError::from(err), ProofError::Malformed(_)));
        }
    }

    #[test]
    fn misshapen_transfer_from_the_token_is_malformed() {
        let mut bad = transfer_log(USDC, PAYER, PAY_TO, 10_000);
        bad["data"] = json!("0x");
        let r = receipt("0x1", vec![bad, transfer_log(USDC, PAYER, PAY_TO, 10_000)]);
        assert!(matches!(
            check_tx_hash_proof(&r, &req(), HEAD),
            Err(ProofError::Malformed(_))
        ));
        let mut dirty = transfer_log(USDC, PAYER, PAY_TO, 10_000);
        dirty["topics"][1] = json!(B256::repeat_byte(0xff).to_string());
        let r = receipt("0x1", vec![dirty]);
        assert!(matches!(
            check_tx_hash_proof(&r, &req(), HEAD),
            Err(ProofError::Malformed(_))
        ));
        assert!(find_erc20_transfers(&r, USDC).is_empty());
    }
}
