//! JSON-RPC 2.0 over HTTP, minus the HTTP: request bodies and typed decoding of the answers.
//!
//! Each `eth_*` method we call is a small struct implementing [`Method`], which knows the method name, its
//! params and how to decode its result. The caller does the POST:
//!
//! ```
//! use esim402_core::evm::rpc::{EthBlockNumber, Method};
//!
//! let request = EthBlockNumber.request(7);
//! let body = request.to_body(); // POST this to the node
//! assert!(body.contains(r#""method":"eth_blockNumber""#));
//! let answer = br#"{"jsonrpc":"2.0","id":7,"result":"0x1b4"}"#;
//! assert_eq!(EthBlockNumber.parse_response(7, answer).unwrap(), 436);
//! ```
//!
//! Node errors (`{"error":{"code":…,"message":…}}`) come back as [`RpcError::Node`]; anything not shaped like a
//! JSON-RPC answer, or a result that is not what the method promises, is a distinct typed error.

use alloy_primitives::{Address, B256, Bytes, U256};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::quantity::{self, HexError, encode_data, encode_quantity, encode_u64};
use super::receipt::{ChainLog, TransactionReceipt};
use crate::chain::ChainId;

/// One JSON-RPC 2.0 request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RpcRequest {
    /// Always `"2.0"`.
    pub jsonrpc: &'static str,
    /// Echoed back in the response; pick a fresh one per request.
    pub id: u64,
    /// Method name, e.g. `eth_chainId`.
    pub method: String,
    /// Positional params (a JSON array).
    pub params: Value,
}

impl RpcRequest {
    /// A request for `method` with `params` (a JSON array; `Value::Null` is sent as `[]`).
    pub fn new(id: u64, method: impl Into<String>, params: Value) -> Self {
        let params = if params.is_null() { json!([]) } else { params };
        Self {
            jsonrpc: "2.0",
            id,
            method: method.into(),
            params,
        }
    }

    /// The request as a JSON value.
    pub fn to_json(&self) -> Value {
        json!({ "jsonrpc": self.jsonrpc, "id": self.id, "method": self.method, "params": self.params })
    }

    /// The request body to POST (compact JSON).
    pub fn to_body(&self) -> String {
        self.to_json().to_string()
    }
}

/// The `error` member of a JSON-RPC response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpcErrorObject {
    /// Error code (`-32000` for most node errors, `3` for reverts with data).
    pub code: i64,
    /// Human-readable message (`"nonce too low"`, `"execution reverted"`).
    pub message: String,
    /// Extra data, e.g. revert bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// Why an RPC call did not produce a usable result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// The body is not a JSON-RPC 2.0 response.
    #[error("malformed JSON-RPC response: {0}")]
    Malformed(String),
    /// The response answers another request.
    #[error("JSON-RPC response id {found} does not match request id {expected}")]
    IdMismatch {
        /// The id we sent.
        expected: u64,
        /// The id that came back.
        found: String,
    },
    /// The node answered with an error object.
    #[error("node error {code}: {message}")]
    Node {
        /// Error code.
        code: i64,
        /// Error message.
        message: String,
        /// Extra data, e.g. revert bytes.
        data: Option<Value>,
    },
    /// A hex field in the result is malformed or out of range.
    #[error("{method}: bad hex in {field}: {source}")]
    BadHex {
        /// The method whose result it was.
        method: &'static str,
        /// The field (`result` for a bare value).
        field: &'static str,
        /// What was wrong.
        source: HexError,
    },
    /// The result has the wrong shape for the method.
    #[error("{method}: unexpected result: {reason}")]
    UnexpectedResult {
        /// The method whose result it was.
        method: &'static str,
        /// What was wrong.
        reason: String,
    },
}

impl From<RpcErrorObject> for RpcError {
    fn from(e: RpcErrorObject) -> Self {
        Self::Node {
            code: e.code,
            message: e.message,
            data: e.data,
        }
    }
}

/// A parsed JSON-RPC response: the echoed id and either the result or the error object.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcResponse<T> {
    /// The id the node echoed.
    pub id: Value,
    /// The `result` member, or the `error` member.
    pub outcome: Result<T, RpcErrorObject>,
}

impl<T: DeserializeOwned> RpcResponse<T> {
    /// Parse a response body. `result: null` is a valid result (a receipt not yet available), so `T` should be
    /// an `Option` wherever the method may return null.
    pub fn parse(body: &[u8]) -> Result<Self, RpcError> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| RpcError::Malformed(e.to_string()))?;
        Self::from_value(value)
    }

    /// [`Self::parse`] of an answer already parsed as JSON (one member of a batch answer).
    pub fn from_value(value: Value) -> Result<Self, RpcError> {
        let Value::Object(mut obj) = value else {
            return Err(RpcError::Malformed("not a JSON object".into()));
        };
        if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return Err(RpcError::Malformed("jsonrpc must be \"2.0\"".into()));
        }
        let id = obj.remove("id").unwrap_or(Value::Null);
        let outcome = match (obj.remove("error"), obj.remove("result")) {
            (Some(err), _) if !err.is_null() => Err(serde_json::from_value::<RpcErrorObject>(err)
                .map_err(|e| RpcError::Malformed(format!("bad error object: {e}")))?),
            (_, Some(result)) => Ok(serde_json::from_value::<T>(result)
                .map_err(|e| RpcError::Malformed(format!("bad result: {e}")))?),
            _ => {
                return Err(RpcError::Malformed(
                    "neither result nor error present".into(),
                ));
            }
        };
        Ok(Self { id, outcome })
    }

    /// Check the response answers request `expected`.
    pub fn check_id(&self, expected: u64) -> Result<(), RpcError> {
        if self.id.as_u64() == Some(expected) {
            Ok(())
        } else {
            Err(RpcError::IdMismatch {
                expected,
                found: self.id.to_string(),
            })
        }
    }

    /// The result, or the node's error as [`RpcError::Node`].
    pub fn into_result(self) -> Result<T, RpcError> {
        self.outcome.map_err(RpcError::from)
    }
}

/// One JSON-RPC method: its name, params and result decoding.
pub trait Method {
    /// The decoded result.
    type Output;
    /// The JSON-RPC method name.
    const NAME: &'static str;

    /// The positional params.
    fn params(&self) -> Value;

    /// Decode the `result` member.
    fn decode(&self, result: Value) -> Result<Self::Output, RpcError>;

    /// The request with id `id`.
    fn request(&self, id: u64) -> RpcRequest {
        RpcRequest::new(id, Self::NAME, self.params())
    }

    /// Parse the response body to the request with id `id`: id checked, node errors surfaced, result decoded.
    fn parse_response(&self, id: u64, body: &[u8]) -> Result<Self::Output, RpcError> {
        self.parse_answer(id, RpcResponse::<Value>::parse(body)?)
    }

    /// [`Self::parse_response`] of one member of a batch answer (see [`split_batch`]).
    fn parse_value(&self, id: u64, answer: Value) -> Result<Self::Output, RpcError> {
        self.parse_answer(id, RpcResponse::<Value>::from_value(answer)?)
    }

    /// Decode a parsed answer to the request with id `id`.
    fn parse_answer(
        &self,
        id: u64,
        response: RpcResponse<Value>,
    ) -> Result<Self::Output, RpcError> {
        response.check_id(id)?;
        self.decode(response.into_result()?)
    }
}

/// The body of a JSON-RPC batch: `requests` as one JSON array, answered by one array (JSON-RPC 2.0 §6).
/// Several reads the caller needs together cost one HTTP exchange instead of one each.
pub fn batch_body(requests: &[RpcRequest]) -> String {
    Value::Array(requests.iter().map(RpcRequest::to_json).collect()).to_string()
}

/// Why a batch answer cannot be split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The node did not answer the batch as a batch (a single error object such as "batch requests are not
    /// supported", or any other non-array): send the requests one by one instead.
    #[error("the node did not answer the batch as a batch: {0}")]
    NotABatch(String),
    /// The body is not JSON.
    #[error("malformed JSON-RPC batch answer: {0}")]
    Malformed(String),
}

/// What a node's HTTP answer to a batch means.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchReply {
    /// Each request's answer, in the order asked (see [`split_batch`]).
    Answers(Vec<Option<Value>>),
    /// The node does not take batches: a 200 whose body is not an array, or a 4xx other than 429 (too many
    /// requests is about the rate, not the batch). Send the calls one by one.
    Refused,
    /// No usable answer (a 5xx, a 429, a body that is not JSON): the outcome of every call is unknown.
    Failed(String),
}

/// Read a node's answer (`status`, and `body` for a 200) to the batch of requests with `ids`.
pub fn read_batch_reply(status: u16, body: &[u8], ids: &[u64]) -> BatchReply {
    match status {
        200 => match split_batch(body, ids) {
            Ok(answers) => BatchReply::Answers(answers),
            Err(BatchError::NotABatch(_)) => BatchReply::Refused,
            Err(e) => BatchReply::Failed(e.to_string()),
        },
        429 => BatchReply::Failed("HTTP 429".into()),
        400..=499 => BatchReply::Refused,
        other => BatchReply::Failed(format!("HTTP {other}")),
    }
}

/// Split a batch answer into each request's answer, in the order of `ids` (nodes may answer in any order;
/// members are matched by their `id`). A request the array does not answer gets `None`; members with ids
/// that were not asked, or asked twice, are ignored.
pub fn split_batch(body: &[u8], ids: &[u64]) -> Result<Vec<Option<Value>>, BatchError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| BatchError::Malformed(e.to_string()))?;
    let Value::Array(members) = value else {
        // At most 200 characters of it (by character: node messages need not be ASCII).
        let shown = value.to_string().chars().take(200).collect();
        return Err(BatchError::NotABatch(shown));
    };
    let mut out: Vec<Option<Value>> = vec![None; ids.len()];
    for member in members {
        let Some(id) = member.get("id").and_then(Value::as_u64) else {
            continue;
        };
        if let Some(i) = ids.iter().position(|&want| want == id)
            && out[i].is_none()
        {
            out[i] = Some(member);
        }
    }
    Ok(out)
}

/// Which block a read refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BlockTag {
    /// The latest mined block.
    #[default]
    Latest,
    /// Latest plus the node's mempool (for nonces).
    Pending,
    /// The latest safe block.
    Safe,
    /// The latest finalized block.
    Finalized,
    /// A block by number.
    Number(u64),
}

impl BlockTag {
    /// The JSON param.
    pub fn to_json(self) -> Value {
        Value::String(match self {
            Self::Latest => "latest".into(),
            Self::Pending => "pending".into(),
            Self::Safe => "safe".into(),
            Self::Finalized => "finalized".into(),
            Self::Number(n) => encode_u64(n),
        })
    }
}

/// The call object for `eth_call` and `eth_estimateGas`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CallRequest {
    /// Sender (matters for `msg.sender` checks and gas estimation).
    pub from: Option<Address>,
    /// The contract called.
    pub to: Address,
    /// Calldata.
    pub data: Bytes,
    /// Wei sent along.
    pub value: Option<U256>,
    /// Gas allowance.
    pub gas: Option<u64>,
}

impl CallRequest {
    /// A call of `to` with `data`, sender unspecified.
    pub fn new(to: Address, data: Bytes) -> Self {
        Self {
            to,
            data,
            ..Self::default()
        }
    }

    /// Set the sender.
    pub fn from(mut self, from: Address) -> Self {
        self.from = Some(from);
        self
    }

    /// The JSON object. Calldata goes in `data`, the field every node accepts (newer ones also take `input`).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        if let Some(from) = self.from {
            m.insert("from".into(), encode_data(from.as_slice()).into());
        }
        m.insert("to".into(), encode_data(self.to.as_slice()).into());
        m.insert("data".into(), encode_data(&self.data).into());
        if let Some(value) = self.value {
            m.insert("value".into(), encode_quantity(value).into());
        }
        if let Some(gas) = self.gas {
            m.insert("gas".into(), encode_u64(gas).into());
        }
        Value::Object(m)
    }
}

fn as_str<'v>(method: &'static str, v: &'v Value) -> Result<&'v str, RpcError> {
    v.as_str().ok_or_else(|| RpcError::UnexpectedResult {
        method,
        reason: format!("expected a hex string, got {v}"),
    })
}

fn hex_field<T>(
    method: &'static str,
    field: &'static str,
    v: &Value,
    parse: impl FnOnce(&str) -> Result<T, HexError>,
) -> Result<T, RpcError> {
    parse(as_str(method, v)?).map_err(|source| RpcError::BadHex {
        method,
        field,
        source,
    })
}

/// `eth_chainId` → the chain id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthChainId;

impl Method for EthChainId {
    type Output = ChainId;
    const NAME: &'static str = "eth_chainId";
    fn params(&self) -> Value {
        json!([])
    }
    fn decode(&self, result: Value) -> Result<ChainId, RpcError> {
        hex_field(Self::NAME, "result", &result, quantity::parse_u64).map(ChainId)
    }
}

/// `eth_blockNumber` → the latest block number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthBlockNumber;

impl Method for EthBlockNumber {
    type Output = u64;
    const NAME: &'static str = "eth_blockNumber";
    fn params(&self) -> Value {
        json!([])
    }
    fn decode(&self, result: Value) -> Result<u64, RpcError> {
        hex_field(Self::NAME, "result", &result, quantity::parse_u64)
    }
}

/// `eth_getTransactionCount` → the account's nonce count at `block` (use [`BlockTag::Pending`] for the next
/// nonce to send).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthGetTransactionCount {
    /// The account.
    pub address: Address,
    /// The block.
    pub block: BlockTag,
}

impl EthGetTransactionCount {
    /// The count including the node's mempool: the next nonce the chain expects.
    pub fn pending(address: Address) -> Self {
        Self {
            address,
            block: BlockTag::Pending,
        }
    }
}

impl Method for EthGetTransactionCount {
    type Output = u64;
    const NAME: &'static str = "eth_getTransactionCount";
    fn params(&self) -> Value {
        json!([encode_data(self.address.as_slice()), self.block.to_json()])
    }
    fn decode(&self, result: Value) -> Result<u64, RpcError> {
        hex_field(Self::NAME, "result", &result, quantity::parse_u64)
    }
}

/// `eth_gasPrice` → the legacy gas price in wei.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthGasPrice;

impl Method for EthGasPrice {
    type Output = u128;
    const NAME: &'static str = "eth_gasPrice";
    fn params(&self) -> Value {
        json!([])
    }
    fn decode(&self, result: Value) -> Result<u128, RpcError> {
        hex_field(Self::NAME, "result", &result, quantity::parse_u128)
    }
}

/// `eth_maxPriorityFeePerGas` → a suggested tip in wei.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthMaxPriorityFeePerGas;

impl Method for EthMaxPriorityFeePerGas {
    type Output = u128;
    const NAME: &'static str = "eth_maxPriorityFeePerGas";
    fn params(&self) -> Value {
        json!([])
    }
    fn decode(&self, result: Value) -> Result<u128, RpcError> {
        hex_field(Self::NAME, "result", &result, quantity::parse_u128)
    }
}

/// The fields of a block header we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSummary {
    /// Block number.
    pub number: u64,
    /// Block timestamp, unix seconds.
    pub timestamp: u64,
    /// EIP-1559 base fee in wei; `None` on chains without EIP-1559.
    pub base_fee_per_gas: Option<u128>,
}

/// `eth_getBlockByNumber(block, false)` → the block's header summary, or `None` if the node has no such block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthGetBlockByNumber {
    /// The block.
    pub block: BlockTag,
}

impl EthGetBlockByNumber {
    /// The latest block (for its base fee).
    pub fn latest() -> Self {
        Self {
            block: BlockTag::Latest,
        }
    }
}

impl Method for EthGetBlockByNumber {
    type Output = Option<BlockSummary>;
    const NAME: &'static str = "eth_getBlockByNumber";
    fn params(&self) -> Value {
        json!([self.block.to_json(), false])
    }
    fn decode(&self, result: Value) -> Result<Option<BlockSummary>, RpcError> {
        if result.is_null() {
            return Ok(None);
        }
        let field = |name: &'static str| {
            result.get(name).ok_or_else(|| RpcError::UnexpectedResult {
                method: Self::NAME,
                reason: format!("block has no {name}"),
            })
        };
        let number = hex_field(Self::NAME, "number", field("number")?, quantity::parse_u64)?;
        let timestamp = hex_field(
            Self::NAME,
            "timestamp",
            field("timestamp")?,
            quantity::parse_u64,
        )?;
        let base_fee_per_gas = match result.get("baseFeePerGas") {
            None | Some(Value::Null) => None,
            Some(v) => Some(hex_field(
                Self::NAME,
                "baseFeePerGas",
                v,
                quantity::parse_u128,
            )?),
        };
        Ok(Some(BlockSummary {
            number,
            timestamp,
            base_fee_per_gas,
        }))
    }
}

/// `eth_estimateGas(call)` → gas units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EthEstimateGas {
    /// The call to estimate.
    pub call: CallRequest,
}

impl Method for EthEstimateGas {
    type Output = u64;
    const NAME: &'static str = "eth_estimateGas";
    fn params(&self) -> Value {
        json!([self.call.to_json()])
    }
    fn decode(&self, result: Value) -> Result<u64, RpcError> {
        hex_field(Self::NAME, "result", &result, quantity::parse_u64)
    }
}

/// `eth_call(call, block)` → the return data. A revert is a [`RpcError::Node`] (revert bytes in `data`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EthCall {
    /// The call.
    pub call: CallRequest,
    /// The block to run it against.
    pub block: BlockTag,
}

impl Method for EthCall {
    type Output = Bytes;
    const NAME: &'static str = "eth_call";
    fn params(&self) -> Value {
        json!([self.call.to_json(), self.block.to_json()])
    }
    fn decode(&self, result: Value) -> Result<Bytes, RpcError> {
        hex_field(Self::NAME, "result", &result, quantity::parse_data)
    }
}

/// `eth_sendRawTransaction(raw)` → the transaction hash the node computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EthSendRawTransaction {
    /// The signed transaction (`0x02 ‖ rlp` for EIP-1559).
    pub raw: Bytes,
}

impl Method for EthSendRawTransaction {
    type Output = B256;
    const NAME: &'static str = "eth_sendRawTransaction";
    fn params(&self) -> Value {
        json!([encode_data(&self.raw)])
    }
    fn decode(&self, result: Value) -> Result<B256, RpcError> {
        hex_field(Self::NAME, "result", &result, quantity::parse_b256)
    }
}

/// What a node's error answer to [`EthSendRawTransaction`] says about the transaction ([`send_refusal`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendRefusal {
    /// The node already has it ("already known"): the transaction is out.
    Known,
    /// The node refused it for a reason it names (a transaction-pool or validation rule, a malformed
    /// request, a rate limit): nothing was broadcast.
    Refused,
    /// Anything else, e.g. an internal or upstream error of a provider that may have forwarded the
    /// transaction before failing: the outcome is unknown, as when the answer is lost.
    Unknown,
}

/// Refusals that name what is wrong with the transaction, as geth, reth, anvil, erigon, Nethermind and Besu
/// word them, compared with spaces, underscores and case ignored (Besu's `NONCE_TOO_LOW`, Nethermind's
/// `OldNonce`).
const REFUSALS: &[&str] = &[
    "noncetoolow",
    "noncetoohigh",
    "oldnonce",
    "insufficientfunds",
    "intrinsicgastoolow",
    "exceedsblockgaslimit",
    "underpriced",
    "feetoolow",
    "lessthanblockbasefee",
    "higherthanmaxfeepergas",
    "tiphigherthanfeecap",
    "tipabovefeecap",
    "invalidsender",
    "invalidsignature",
    "onlyreplayprotected",
    "invalidchainid",
    "txpoolisfull",
    "oversizeddata",
    "exceedstheconfiguredcap",
    "typenotsupported",
    "gasuint64overflow",
];

/// Answers meaning the node has the transaction already.
const KNOWN: &[&str] = &["alreadyknown", "knowntransaction", "alreadyimported"];

/// JSON-RPC codes of a request refused before it was acted on: parse error, invalid request, method not
/// found, invalid params (JSON-RPC 2.0), transaction rejected and limit exceeded (EIP-1474).
const REFUSAL_CODES: &[i64] = &[-32700, -32600, -32601, -32602, -32003, -32005];

/// Classify a node's error answer (`code`, `message`) to `eth_sendRawTransaction`. Only a refusal the node
/// names is [`SendRefusal::Refused`]: the caller gives the nonce back on it, and a transaction that went out
/// after all would then share its nonce with the next one. Whatever is not recognised is
/// [`SendRefusal::Unknown`] and kept like a lost answer.
pub fn send_refusal(code: i64, message: &str) -> SendRefusal {
    let compact = compact(message);
    if KNOWN.iter().any(|k| compact.contains(k)) {
        SendRefusal::Known
    } else if REFUSAL_CODES.contains(&code) || REFUSALS.iter().any(|r| compact.contains(r)) {
        SendRefusal::Refused
    } else {
        SendRefusal::Unknown
    }
}

/// `message` as the refusal lists are written: lowercase, without spaces, underscores or dashes.
fn compact(message: &str) -> String {
    message
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

/// Refusals of a transaction for its fees (compared as in [`REFUSALS`]): geth's, reth's and erigon's
/// "(replacement) transaction underpriced", Besu's `REPLACEMENT_UNDERPRICED` and `GAS_PRICE_TOO_LOW`,
/// Nethermind's `FeeTooLow`, "max fee per gas less than block base fee" (geth, anvil).
const FEE_REFUSALS: &[&str] = &[
    "underpriced",
    "feetoolow",
    "gaspricetoolow",
    "lessthanblockbasefee",
];

/// Whether a node's error answer (`code`, `message`) to `eth_sendRawTransaction` refuses the transaction for
/// its fees, naming them (not "already known"): what the same bytes will be answered again, so only higher
/// fees can help ([`outbid_unreached`]).
pub fn refused_for_fees(code: i64, message: &str) -> bool {
    let compact = compact(message);
    send_refusal(code, message) != SendRefusal::Known
        && FEE_REFUSALS.iter().any(|r| compact.contains(r))
}

/// Whether to outbid our latest replacement, which the node does not know while an earlier hash of its nonce
/// waits in its pool, once its identical bytes were offered again and the node answered `refusal` (its error
/// answer to that send, `(code, message)`; `None`: it took them, or the answer was lost). Only a refusal of
/// its fees ([`refused_for_fees`]: a pool asking more than `bump::REPLACEMENT_PERCENT`, a base fee that outgrew
/// it) is answered the same way every time, so only then is it replaced (`bump::decide_unreached`). Anything
/// else, it may well be pooled where the node's lookup did not see it (a load-balanced provider answers from
/// another backend than the one its send reached), or its send was lost: it is offered again, same bytes, and
/// the fees never climb on a lookup's miss.
pub fn outbid_unreached(refusal: Option<(i64, &str)>) -> bool {
    refusal.is_some_and(|(code, message)| refused_for_fees(code, message))
}

/// Whether a node's error answer (`code`, `message`) to `eth_call` or `eth_estimateGas` says the call itself
/// reverts: code 3 (EIP-1474's execution error, the one that carries revert data) or a message naming a revert
/// (geth's `execution reverted` without data, Besu's `Execution reverted`, Hardhat's `reverted with reason
/// string`). Only that is an answer about the call; anything else (a rate limit, `-32603 internal error`,
/// `header not found` from a lagging node behind a load balancer) is the node failing to answer, never a
/// verdict on a payment.
pub fn is_revert(code: i64, message: &str) -> bool {
    code == 3 || message.to_ascii_lowercase().contains("revert")
}

/// EIP-1559 fee cap when the chain has no base fee (a block without `baseFeePerGas`): 1 gwei.
pub const FALLBACK_MAX_FEE: u128 = 1_000_000_000;
/// Tip when the node gives none (`eth_maxPriorityFeePerGas` unsupported): 0.1 gwei.
pub const FALLBACK_TIP: u128 = 100_000_000;

/// Why [`fees`] gives no fees for a transaction sent now: it is not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoFees {
    /// The latest block could not be read (or the node had none): the base fee is unknown, not small.
    #[error("the latest block's base fee is unknown")]
    NoBlock,
    /// The next block may charge more than [`super::bump::MAX_FEE_PER_GAS`]: a transaction capped there may
    /// never be mined, and no replacement may raise its cap.
    #[error(
        "the next block's base fee may reach {next} wei, above the fee ceiling of {} wei",
        super::bump::MAX_FEE_PER_GAS
    )]
    AboveCeiling {
        /// The most the next block's base fee can be ([`super::bump::next_base_fee`]).
        next: u128,
    },
}

/// `(tip, fee cap)` in wei for a transaction sent now, from the latest block as read (`None`: the read failed
/// or the node had no block) and the node's suggested tip (`None`: [`FALLBACK_TIP`]). The fee cap is twice the
/// base fee plus the tip, which survives several full blocks of base-fee growth, and never above the ceiling
/// every replacement keeps to ([`super::bump::MAX_FEE_PER_GAS`]); the tip never above the cap. So whatever the
/// node suggests, no transaction of ours starts above the ceiling, and each one can be replaced while the base
/// fee stays below it. A base fee whose next block may reach the ceiling is [`NoFees::AboveCeiling`]: the send
/// fails as a fault before anything is signed (nothing to reconcile, the claim released, a retry decides),
/// rather than leaving a transaction that may never be mined, holding its nonce with its authorization public.
/// An unknown base fee is [`NoFees::NoBlock`]: a flat fallback cap may sit below the chain's base fee and
/// leave the transaction unmineable in the pool. Only a block that shows no base fee (a chain without
/// EIP-1559) gets the fallback cap, raised to the suggested tip (its gas price) when that is higher, within the
/// ceiling.
pub fn fees(block: Option<&BlockSummary>, tip: Option<u128>) -> Result<(u128, u128), NoFees> {
    use super::bump::{MAX_FEE_PER_GAS, next_base_fee};
    let tip = tip.unwrap_or(FALLBACK_TIP);
    let block = block.ok_or(NoFees::NoBlock)?;
    Ok(match block.base_fee_per_gas {
        Some(base) => {
            let next = next_base_fee(base);
            if next > MAX_FEE_PER_GAS {
                return Err(NoFees::AboveCeiling { next });
            }
            // Twice the base fee covers the next block's (× 1.125), so the cap stays mineable when clamped.
            let max_fee = base
                .saturating_mul(2)
                .saturating_add(tip)
                .min(MAX_FEE_PER_GAS);
            (tip.min(max_fee), max_fee)
        }
        // No base fee to double: at least the fallback cap, and as much as the tip the node suggests (a legacy
        // chain's going gas price may be above 1 gwei), within the ceiling.
        None => {
            let max_fee = FALLBACK_MAX_FEE.max(tip).min(MAX_FEE_PER_GAS);
            (tip.min(max_fee), max_fee)
        }
    })
}

/// `eth_getLogs` for the logs of one contract whose topics match, between two blocks (both included). Each
/// entry of `topics` matches one position: `None` anything, otherwise any of the listed values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EthGetLogs {
    /// The contract.
    pub address: Address,
    /// The topic filter, by position.
    pub topics: Vec<Option<Vec<B256>>>,
    /// The first block searched.
    pub from_block: u64,
    /// The last block searched.
    pub to_block: u64,
}

impl Method for EthGetLogs {
    type Output = Vec<ChainLog>;
    const NAME: &'static str = "eth_getLogs";
    fn params(&self) -> Value {
        let topics: Vec<Value> = self
            .topics
            .iter()
            .map(|t| match t {
                None => Value::Null,
                Some(any) => any.iter().map(|b| json!(b.to_string())).collect(),
            })
            .collect();
        json!([{
            "address": self.address.to_string(),
            "topics": topics,
            "fromBlock": encode_u64(self.from_block),
            "toBlock": encode_u64(self.to_block),
        }])
    }
    fn decode(&self, result: Value) -> Result<Vec<ChainLog>, RpcError> {
        serde_json::from_value(result).map_err(|e| RpcError::UnexpectedResult {
            method: Self::NAME,
            reason: e.to_string(),
        })
    }
}

/// `eth_getTransactionReceipt(hash)` → the receipt, or `None` while the transaction is not mined.
/// A receipt for a different hash than the one asked for is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthGetTransactionReceipt {
    /// The transaction hash.
    pub hash: B256,
}

impl Method for EthGetTransactionReceipt {
    type Output = Option<TransactionReceipt>;
    const NAME: &'static str = "eth_getTransactionReceipt";
    fn params(&self) -> Value {
        json!([encode_data(self.hash.as_slice())])
    }
    fn decode(&self, result: Value) -> Result<Option<TransactionReceipt>, RpcError> {
        if result.is_null() {
            return Ok(None);
        }
        let receipt =
            TransactionReceipt::from_json(result).map_err(|e| RpcError::UnexpectedResult {
                method: Self::NAME,
                reason: e.to_string(),
            })?;
        if receipt.transaction_hash != self.hash {
            return Err(RpcError::UnexpectedResult {
                method: Self::NAME,
                reason: format!(
                    "receipt is for {}, not {}",
                    receipt.transaction_hash, self.hash
                ),
            });
        }
        Ok(Some(receipt))
    }
}

#[cfg(test)]
mod tests {

    /// Only a node's refusal of a replacement's fees outbids it (before, any replacement the node did not show
    /// a minute on was outbid, and a load-balanced provider made each replay pay 10 % more): not an answer
    /// lost, "already known", a rate limit, a nonce refusal or an internal error.
    #[test]
    fn an_unseen_replacement_is_outbid_only_once_refused_for_its_fees() {
        for refused in [
            (-32000, "replacement transaction underpriced"),
            (-32000, "transaction underpriced"),
            (-32000, "max fee per gas less than block base fee"),
            (-32010, "FeeTooLow, MaxFeePerGas too low"),
            (-32000, "REPLACEMENT_UNDERPRICED"),
            (-32003, "Transaction gas price too low"),
        ] {
            assert!(outbid_unreached(Some(refused)), "{refused:?}");
        }
        for offered in [
            None,
            Some((-32000, "already known")),
            Some((-32000, "ALREADY_KNOWN underpriced")),
            Some((-32005, "rate limit exceeded")),
            Some((-32000, "nonce too low")),
            Some((-32603, "internal error")),
        ] {
            assert!(!outbid_unreached(offered), "{offered:?}");
        }
    }

    use super::*;
    use alloy_primitives::address;

    const ACCOUNT: Address = address!("0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266");

    fn ok(id: u64, result: &str) -> Vec<u8> {
        format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{result}}}"#).into_bytes()
    }

    #[test]
    fn requests_are_json_rpc_2() {
        let req = RpcRequest::new(1, "eth_foo", Value::Null);
        assert_eq!(
            req.to_json(),
            json!({"jsonrpc": "2.0", "id": 1, "method": "eth_foo", "params": []})
        );
        assert_eq!(serde_json::to_value(&req).unwrap(), req.to_json());
        assert_eq!(
            EthGetTransactionCount::pending(ACCOUNT)
                .request(2)
                .to_json(),
            json!({"jsonrpc": "2.0", "id": 2, "method": "eth_getTransactionCount",
                   "params": ["0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266", "pending"]})
        );
        assert_eq!(
            EthGetBlockByNumber::latest().request(3).params,
            json!(["latest", false])
        );
        assert_eq!(
            EthGetBlockByNumber {
                block: BlockTag::Number(255)
            }
            .params(),
            json!(["0xff", false])
        );
        let call = CallRequest::new(ACCOUNT, Bytes::from(vec![0x70, 0xa0, 0x82, 0x31]));
        assert_eq!(
            EthCall {
                call: call.clone(),
                block: BlockTag::Latest
            }
            .params(),
            json!([{"to": "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266", "data": "0x70a08231"}, "latest"])
        );
        let full = CallRequest {
            value: Some(U256::from(16)),
            gas: Some(21_000),
            ..call.from(Address::ZERO)
        };
        assert_eq!(
            EthEstimateGas { call: full }.params(),
            json!([{"from": format!("0x{}", "0".repeat(40)), "to": "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266",
                    "data": "0x70a08231", "value": "0x10", "gas": "0x5208"}])
        );
        assert_eq!(
            EthSendRawTransaction {
                raw: Bytes::from(vec![2, 0xab])
            }
            .params(),
            json!(["0x02ab"])
        );
        for (name, req) in [
            ("eth_chainId", EthChainId.request(1)),
            ("eth_gasPrice", EthGasPrice.request(1)),
            (
                "eth_maxPriorityFeePerGas",
                EthMaxPriorityFeePerGas.request(1),
            ),
        ] {
            assert_eq!(req.method, name);
            assert_eq!(req.params, json!([]));
        }
    }

    #[test]
    fn quantities_decode() {
        assert_eq!(
            EthChainId.parse_response(1, &ok(1, r#""0x14a34""#)),
            Ok(ChainId(84532))
        );
        assert_eq!(
            EthGetTransactionCount::pending(ACCOUNT).parse_response(5, &ok(5, r#""0x2a""#)),
            Ok(42)
        );
        assert_eq!(
            EthGasPrice.parse_response(1, &ok(1, r#""0x3b9aca00""#)),
            Ok(1_000_000_000)
        );
        assert_eq!(
            EthMaxPriorityFeePerGas.parse_response(1, &ok(1, r#""0x5f5e100""#)),
            Ok(100_000_000)
        );
        assert_eq!(
            EthEstimateGas {
                call: CallRequest::new(ACCOUNT, Bytes::new())
            }
            .parse_response(1, &ok(1, r#""0x5208""#)),
            Ok(21_000)
        );
        assert_eq!(
            EthCall {
                call: CallRequest::new(ACCOUNT, Bytes::new()),
                block: BlockTag::Latest
            }
            .parse_response(1, &ok(1, r#""0x0001""#)),
            Ok(Bytes::from(vec![0, 1]))
        );
        let hash = B256::repeat_byte(0x11);
        assert_eq!(
            EthSendRawTransaction { raw: Bytes::new() }
                .parse_response(1, &ok(1, &format!("\"{hash}\""))),
            Ok(hash)
        );
    }

    #[test]
    fn malformed_hex_is_a_typed_error() {
        assert_eq!(
            EthBlockNumber.parse_response(1, &ok(1, r#""1b4""#)),
            Err(RpcError::BadHex {
                method: "eth_blockNumber",
                field: "result",
                source: HexError::MissingPrefix
            })
        );
        assert!(matches!(
            EthBlockNumber.parse_response(1, &ok(1, r#""0xzz""#)),
            Err(RpcError::BadHex {
                source: HexError::InvalidDigit,
                ..
            })
        ));
        assert!(matches!(
            EthBlockNumber.parse_response(1, &ok(1, r#""0x10000000000000000""#)),
            Err(RpcError::BadHex {
                source: HexError::Overflow { bits: 64 },
                ..
            })
        ));
        assert!(matches!(
            EthBlockNumber.parse_response(1, &ok(1, "436")),
            Err(RpcError::UnexpectedResult { .. })
        ));
        assert!(matches!(
            EthSendRawTransaction { raw: Bytes::new() }.parse_response(1, &ok(1, r#""0x1234""#)),
            Err(RpcError::BadHex {
                source: HexError::WrongLength {
                    expected: 32,
                    found: 2
                },
                ..
            })
        ));
        assert!(matches!(
            EthCall {
                call: CallRequest::default(),
                block: BlockTag::Latest
            }
            .parse_response(1, &ok(1, r#""0x123""#)),
            Err(RpcError::BadHex {
                source: HexError::OddLength,
                ..
            })
        ));
    }

    #[test]
    fn envelope_errors() {
        let node_err = br#"{"jsonrpc":"2.0","id":4,"error":{"code":3,"message":"execution reverted","data":"0x08c379a0"}}"#;
        assert_eq!(
            EthCall {
                call: CallRequest::default(),
                block: BlockTag::Latest
            }
            .parse_response(4, node_err),
            Err(RpcError::Node {
                code: 3,
                message: "execution reverted".into(),
                data: Some(json!("0x08c379a0"))
            })
        );
        assert_eq!(
            EthBlockNumber.parse_response(1, &ok(2, r#""0x1""#)),
            Err(RpcError::IdMismatch {
                expected: 1,
                found: "2".into()
            })
        );
        for bad in [
            &b"not json"[..],
            b"[]",
            br#"{"id":1,"result":"0x1"}"#,
            br#"{"jsonrpc":"1.0","id":1,"result":"0x1"}"#,
            br#"{"jsonrpc":"2.0","id":1}"#,
            br#"{"jsonrpc":"2.0","id":1,"error":{"message":"no code"}}"#,
        ] {
            assert!(
                matches!(
                    EthBlockNumber.parse_response(1, bad),
                    Err(RpcError::Malformed(_))
                ),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // `error: null` next to a result is tolerated.
        assert_eq!(
            EthBlockNumber.parse_response(
                1,
                br#"{"jsonrpc":"2.0","id":1,"error":null,"result":"0x1"}"#
            ),
            Ok(1)
        );
    }

    #[test]
    fn typed_generic_response() {
        let r = RpcResponse::<Option<String>>::parse(&ok(9, "null")).unwrap();
        assert_eq!(r.check_id(9), Ok(()));
        assert_eq!(r.into_result(), Ok(None));
        let r = RpcResponse::<u64>::parse(&ok(9, r#""0x1""#));
        assert!(matches!(r, Err(RpcError::Malformed(_))));
    }

    #[test]
    fn latest_block_base_fee() {
        let block =
            r#"{"number":"0x10","timestamp":"0x65f0a1b2","baseFeePerGas":"0x7","hash":"0x00"}"#;
        assert_eq!(
            EthGetBlockByNumber::latest().parse_response(1, &ok(1, block)),
            Ok(Some(BlockSummary {
                number: 16,
                timestamp: 0x65f0_a1b2,
                base_fee_per_gas: Some(7)
            }))
        );
        let legacy = r#"{"number":"0x10","timestamp":"0x1"}"#;
        assert_eq!(
            EthGetBlockByNumber::latest()
                .parse_response(1, &ok(1, legacy))
                .unwrap()
                .unwrap()
                .base_fee_per_gas,
            None
        );
        assert_eq!(
            EthGetBlockByNumber::latest().parse_response(1, &ok(1, "null")),
            Ok(None)
        );
        assert!(matches!(
            EthGetBlockByNumber::latest().parse_response(1, &ok(1, r#"{"number":"0x10"}"#)),
            Err(RpcError::UnexpectedResult { .. })
        ));
        assert!(matches!(
            EthGetBlockByNumber::latest().parse_response(
                1,
                &ok(
                    1,
                    r#"{"number":"0x10","timestamp":"0x1","baseFeePerGas":"7"}"#
                )
            ),
            Err(RpcError::BadHex {
                field: "baseFeePerGas",
                ..
            })
        ));
    }

    #[test]
    fn receipts_are_checked_against_the_hash_asked_for() {
        let hash = B256::repeat_byte(0x22);
        let receipt = json!({
            "status": "0x1", "blockNumber": "0x5", "transactionHash": hash.to_string(),
            "from": "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266", "to": null, "logs": []
        });
        let method = EthGetTransactionReceipt { hash };
        assert_eq!(method.params(), json!([format!("0x{}", "22".repeat(32))]));
        let got = method
            .parse_response(1, &ok(1, &receipt.to_string()))
            .unwrap()
            .unwrap();
        assert_eq!(got.block_number, 5);
        assert_eq!(method.parse_response(1, &ok(1, "null")), Ok(None));
        let other = EthGetTransactionReceipt {
            hash: B256::repeat_byte(0x33),
        };
        assert!(matches!(
            other.parse_response(1, &ok(1, &receipt.to_string())),
            Err(RpcError::UnexpectedResult { .. })
        ));
        assert!(matches!(
            method.parse_response(1, &ok(1, r#"{"status":"0x1"}"#)),
            Err(RpcError::UnexpectedResult { .. })
        ));
    }

    #[test]
    fn a_batch_is_one_array_and_its_answer_splits_by_id_in_any_order() {
        let requests = [EthBlockNumber.request(7), EthChainId.request(8)];
        let body: Value = serde_json::from_str(&batch_body(&requests)).unwrap();
        assert_eq!(
            body,
            json!([
                {"jsonrpc": "2.0", "id": 7, "method": "eth_blockNumber", "params": []},
                {"jsonrpc": "2.0", "id": 8, "method": "eth_chainId", "params": []}
            ])
        );
        // Answered out of order, with one node error, an unasked id and a repeated one.
        let answer = br#"[
            {"jsonrpc":"2.0","id":8,"error":{"code":-32601,"message":"no such method"}},
            {"jsonrpc":"2.0","id":99,"result":"0x1"},
            {"jsonrpc":"2.0","id":7,"result":"0x1b4"},
            {"jsonrpc":"2.0","id":7,"result":"0x0"}
        ]"#;
        let mut split = split_batch(answer, &[7, 8]).unwrap().into_iter();
        let (Some(Some(first)), Some(Some(second))) = (split.next(), split.next()) else {
            panic!("both requests are answered");
        };
        assert_eq!(EthBlockNumber.parse_value(7, first.clone()), Ok(436));
        assert!(matches!(
            EthChainId.parse_value(8, second),
            Err(RpcError::Node { code: -32601, .. })
        ));
        // A member handed to the wrong request is caught by its id, as a single answer is.
        assert!(matches!(
            EthBlockNumber.parse_value(8, first),
            Err(RpcError::IdMismatch { expected: 8, .. })
        ));
    }

    #[test]
    fn a_batch_answer_that_is_not_an_array_says_so_and_missing_answers_are_none() {
        // What nodes without batch support answer: one error object.
        let refused = br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"batch requests are not supported"}}"#;
        assert!(matches!(
            split_batch(refused, &[1, 2]),
            Err(BatchError::NotABatch(m)) if m.contains("not supported")
        ));
        assert!(matches!(
            split_batch(b"<html>", &[1]),
            Err(BatchError::Malformed(_))
        ));
        // A long refusal in a non-ASCII language is cut by character, not mid-character.
        let long = format!(r#"{{"text":"{}"}}"#, "é".repeat(300)); // byte 200 falls inside an é
        assert!(matches!(
            split_batch(long.as_bytes(), &[1]),
            Err(BatchError::NotABatch(m)) if m.chars().count() == 200
        ));
        let partial = br#"[{"jsonrpc":"2.0","id":2,"result":"0x1"}, "junk", {"id":"1"}]"#;
        let split = split_batch(partial, &[1, 2]).unwrap();
        assert_eq!(split[0], None);
        assert_eq!(
            EthBlockNumber.parse_value(2, split[1].clone().unwrap()),
            Ok(1)
        );
        assert_eq!(
            split_batch(b"[]", &[]).unwrap(),
            Vec::<Option<Value>>::new()
        );
    }

    #[test]
    fn a_batch_reply_is_answers_a_refusal_or_a_failure() {
        let ids = [3, 4];
        let array =
            br#"[{"jsonrpc":"2.0","id":4,"result":"0x2"},{"jsonrpc":"2.0","id":3,"result":"0x1"}]"#;
        let BatchReply::Answers(answers) = read_batch_reply(200, array, &ids) else {
            panic!("an array answers the batch");
        };
        assert_eq!(
            EthBlockNumber.parse_value(3, answers[0].clone().unwrap()),
            Ok(1)
        );
        assert_eq!(
            EthBlockNumber.parse_value(4, answers[1].clone().unwrap()),
            Ok(2)
        );
        let single = br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"batch not supported"}}"#;
        assert_eq!(read_batch_reply(200, single, &ids), BatchReply::Refused);
        for status in [400, 404, 405, 413, 415] {
            assert_eq!(
                read_batch_reply(status, b"", &ids),
                BatchReply::Refused,
                "{status}"
            );
        }
        assert_eq!(
            read_batch_reply(429, b"", &ids),
            BatchReply::Failed("HTTP 429".into())
        );
        assert_eq!(
            read_batch_reply(503, b"", &ids),
            BatchReply::Failed("HTTP 503".into())
        );
        assert!(matches!(
            read_batch_reply(200, b"<html>", &ids),
            BatchReply::Failed(m) if m.contains("malformed")
        ));
    }

    #[test]
    fn only_a_revert_is_a_verdict_on_a_call() {
        for (code, message) in [
            (
                3,
                "execution reverted: FiatTokenV2: authorization is used or canceled",
            ),
            (3, "execution reverted"),
            (-32000, "execution reverted"),
            (-32000, "Execution reverted"),
            (
                -32603,
                "Error: VM Exception while processing transaction: reverted with reason string 'x'",
            ),
        ] {
            assert!(is_revert(code, message), "{code} {message}");
        }
        for (code, message) in [
            (-32005, "rate limited"),
            (-32005, "limit exceeded"),
            (-32603, "internal error"),
            (-32000, "header not found"),
            (-32000, "missing trie node"),
            (429, "Too Many Requests"),
        ] {
            assert!(!is_revert(code, message), "{code} {message}");
        }
    }

    #[test]
    fn fees_need_the_base_fee_of_a_block_that_was_read() {
        let block = |base| BlockSummary {
            number: 1,
            timestamp: 0,
            base_fee_per_gas: base,
        };
        let gwei = 1_000_000_000;
        assert_eq!(
            fees(Some(&block(Some(30 * gwei))), Some(2 * gwei)),
            Ok((2 * gwei, 62 * gwei))
        );
        // No tip suggested: the fallback tip on the real base fee.
        assert_eq!(
            fees(Some(&block(Some(30 * gwei))), None),
            Ok((FALLBACK_TIP, 60 * gwei + FALLBACK_TIP))
        );
        // A block that shows no base fee: a chain without EIP-1559, the flat fallback.
        assert_eq!(
            fees(Some(&block(None)), None),
            Ok((FALLBACK_TIP, FALLBACK_MAX_FEE))
        );
        // The block could not be read: the base fee is unknown, not small. No fees, no send.
        assert_eq!(fees(None, Some(2 * gwei)), Err(NoFees::NoBlock));
        assert_eq!(fees(None, None), Err(NoFees::NoBlock));
    }

    /// A chain without EIP-1559 whose gas price is above the 1 gwei fallback: the suggested tip is paid, as the
    /// cap too (an intermediate version clamped both to 1 gwei, underpricing such a chain), within the ceiling.
    #[test]
    fn a_chain_without_a_base_fee_pays_the_suggested_tip_up_to_the_ceiling() {
        use crate::evm::bump::MAX_FEE_PER_GAS;
        let legacy = BlockSummary {
            number: 1,
            timestamp: 0,
            base_fee_per_gas: None,
        };
        let gwei = 1_000_000_000;
        assert_eq!(
            fees(Some(&legacy), Some(5 * gwei)),
            Ok((5 * gwei, 5 * gwei))
        );
        assert_eq!(
            fees(Some(&legacy), Some(gwei / 2)),
            Ok((gwei / 2, FALLBACK_MAX_FEE))
        );
        assert_eq!(
            fees(Some(&legacy), Some(10_000 * gwei)),
            Ok((MAX_FEE_PER_GAS, MAX_FEE_PER_GAS))
        );
    }

    /// Before, the cap was twice the base fee plus whatever tip the node suggested, unbounded: a transaction
    /// could start above the ceiling replacements keep to, and then never be replaced.
    #[test]
    fn fees_never_start_above_the_replacement_ceiling() {
        use crate::evm::bump::{MAX_FEE_PER_GAS, next_base_fee};
        let block = |base| BlockSummary {
            number: 1,
            timestamp: 0,
            base_fee_per_gas: Some(base),
        };
        let gwei = 1_000_000_000;
        // A node suggesting an absurd tip: cap and tip clamped to the ceiling.
        assert_eq!(
            fees(Some(&block(30 * gwei)), Some(10_000 * gwei)),
            Ok((MAX_FEE_PER_GAS, MAX_FEE_PER_GAS))
        );
        // Twice a high base fee: clamped, still above what the next block may charge.
        let (tip, cap) = fees(Some(&block(300 * gwei)), Some(2 * gwei)).unwrap();
        assert_eq!((tip, cap), (2 * gwei, MAX_FEE_PER_GAS));
        assert!(cap >= next_base_fee(300 * gwei));
        // Fees that fit are left alone.
        assert_eq!(
            fees(Some(&block(200 * gwei)), Some(gwei)),
            Ok((gwei, 401 * gwei))
        );
        // The next block may charge more than the ceiling: no fees, no send.
        let high = 450 * gwei;
        assert_eq!(
            fees(Some(&block(high)), Some(gwei)),
            Err(NoFees::AboveCeiling {
                next: next_base_fee(high)
            })
        );
        assert!(fees(Some(&block(444 * gwei)), Some(gwei)).is_ok());
    }

    #[test]
    fn send_refusals_are_classified_by_what_the_node_names() {
        use SendRefusal as R;
        for (code, message, expected) in [
            (-32000, "already known", R::Known),
            (
                -32010,
                "Transaction with the same hash was already imported.",
                R::Known,
            ),
            (-32000, "TRANSACTION_ALREADY_KNOWN", R::Known),
            (
                -32000,
                "nonce too low: next nonce 7, tx nonce 6",
                R::Refused,
            ),
            (-32000, "NONCE_TOO_LOW", R::Refused),
            (-32000, "OldNonce", R::Refused),
            (
                -32000,
                "insufficient funds for gas * price + value",
                R::Refused,
            ),
            (-32000, "replacement transaction underpriced", R::Refused),
            (
                -32000,
                "max fee per gas less than block base fee",
                R::Refused,
            ),
            (-32000, "intrinsic gas too low", R::Refused),
            (-32000, "invalid sender", R::Refused),
            (-32000, "txpool is full", R::Refused),
            (
                -32602,
                "invalid argument 0: hex string has odd length",
                R::Refused,
            ),
            (
                -32005,
                "daily request count exceeded, request rate limited",
                R::Refused,
            ),
            (
                -32601,
                "the method eth_sendRawTransaction does not exist",
                R::Refused,
            ),
            (-32000, "upstream request timeout", R::Unknown),
            (-32603, "internal error", R::Unknown),
            (-32000, "", R::Unknown),
            (1, "header not found", R::Unknown),
        ] {
            assert_eq!(send_refusal(code, message), expected, "{code} {message}");
        }
    }

    #[test]
    fn get_logs_filters_by_contract_topics_and_blocks() {
        let method = EthGetLogs {
            address: Address::repeat_byte(0x11),
            topics: vec![
                Some(vec![B256::repeat_byte(1), B256::repeat_byte(2)]),
                None,
                Some(vec![B256::repeat_byte(3)]),
            ],
            from_block: 16,
            to_block: 255,
        };
        assert_eq!(
            method.params(),
            json!([{
                "address": Address::repeat_byte(0x11).to_string(),
                "topics": [
                    [B256::repeat_byte(1).to_string(), B256::repeat_byte(2).to_string()],
                    null,
                    [B256::repeat_byte(3).to_string()],
                ],
                "fromBlock": "0x10",
                "toBlock": "0xff",
            }])
        );
        let answer = json!([{
            "address": Address::repeat_byte(0x11).to_string(),
            "topics": [B256::repeat_byte(1).to_string()],
            "data": "0x",
            "blockNumber": "0x20",
            "transactionHash": B256::repeat_byte(9).to_string(),
            "logIndex": "0x0",
            "removed": false,
        }]);
        let logs = method
            .parse_response(1, &ok(1, &answer.to_string()))
            .unwrap();
        assert_eq!(logs.len(), 1);
        assert_eq!(logs[0].transaction_hash, B256::repeat_byte(9));
        assert_eq!(method.parse_response(1, &ok(1, "[]")).unwrap(), vec![]);
        // Not a list of logs: a typed error, never an empty answer.
        assert!(matches!(
            method.parse_response(1, &ok(1, "null")),
            Err(RpcError::UnexpectedResult { .. })
        ));
        assert!(matches!(
            method.parse_response(1, &ok(1, r#"[{"address":"0x11"}]"#)),
            Err(RpcError::UnexpectedResult { .. })
        ));
    }
}
