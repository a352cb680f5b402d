//! ES2+ (SGP.22 §5.3 functions, §6.5 JSON binding): the operator ↔ SM-DP+ interface.
//!
//! Every function is `POST https://<smdp><path>` with a flat JSON body: a `header` plus the function's
//! parameters. Replies are HTTP 200 for every functional outcome; the result is in
//! `header.functionExecutionStatus`. A failed call's [`StatusCode`] maps to what the dispatcher should do via
//! [`action`]. Identifiers are typed ([`Iccid`], [`Eid`], [`MatchingId`]), so a peer sending a malformed one
//! fails deserialisation, and `Debug` output of these messages never shows a MatchingID or confirmation code.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::activation_code::{Fqdn, MatchingId};
use super::eid::Eid;
use super::iccid::Iccid;

/// `downloadOrder` path (§5.3.1).
pub const DOWNLOAD_ORDER_PATH: &str = "/gsma/rsp2/es2plus/downloadOrder";
/// `confirmOrder` path (§5.3.2).
pub const CONFIRM_ORDER_PATH: &str = "/gsma/rsp2/es2plus/confirmOrder";
/// `cancelOrder` path (§5.3.3).
pub const CANCEL_ORDER_PATH: &str = "/gsma/rsp2/es2plus/cancelOrder";
/// `releaseProfile` path (§5.3.4).
pub const RELEASE_PROFILE_PATH: &str = "/gsma/rsp2/es2plus/releaseProfile";
/// `handleDownloadProgressInfo` path (§5.3.5): the SM-DP+ calls the operator here; answer 204 No Content.
pub const HANDLE_DOWNLOAD_PROGRESS_INFO_PATH: &str =
    "/gsma/rsp2/es2plus/handleDownloadProgressInfo";

/// The protocol header's name.
pub const ADMIN_PROTOCOL_HEADER: &str = "X-Admin-Protocol";
/// The protocol version we send.
pub const ADMIN_PROTOCOL: &str = "gsma/rsp/v2.5.0";

/// Whether a peer's `X-Admin-Protocol` value is one we speak (any `gsma/rsp/v2.` version).
pub fn is_supported_admin_protocol(value: &str) -> bool {
    value.starts_with("gsma/rsp/v2.")
}

/// Whether an ES2+ call answered with HTTP `status` (not 200) may have been executed by the SM-DP+. Every
/// function's outcome, a refusal included, comes as a 200 (§6.5.1), so another status is the HTTP layer's: a 5xx
/// may come from a proxy in front of the SM-DP+ after it forwarded the request (its connection broke), and a 408,
/// 409, 425, 429 or 499 (nginx: the client went away) from a server that may have started on it, so they may
/// have; any other 4xx refuses the
/// request itself (malformed, unauthenticated, forbidden, no such function, wrong media type) before any
/// function runs. A call that may have run is followed up (a lost DownloadOrder's profile found and given back);
/// before, every non-200 was, so a carrier answering 401 or 404 to every order (a wrong credential or
/// `es2_base`) queued a lost download per order, each replayed later only to allocate and cancel a profile.
pub fn may_have_executed(status: u16) -> bool {
    !(400..500).contains(&status) || matches!(status, 408 | 409 | 425 | 429 | 499)
}

/// A request header (§6.5.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestHeader {
    /// The caller's id as agreed with the SM-DP+.
    pub function_requester_identifier: String,
    /// Unique per call: the idempotency and trace key (see [`FunctionCallId`]).
    pub function_call_identifier: String,
}

/// A function's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecutionStatus {
    /// Done.
    #[serde(rename = "Executed-Success")]
    ExecutedSuccess,
    /// Done, with a warning in `statusCodeData`.
    #[serde(rename = "Executed-WithWarning")]
    ExecutedWithWarning,
    /// Not done; see `statusCodeData`.
    Failed,
    /// Not done in time.
    Expired,
}

impl ExecutionStatus {
    /// Whether the function executed (with or without a warning).
    pub fn is_success(self) -> bool {
        matches!(self, Self::ExecutedSuccess | Self::ExecutedWithWarning)
    }
}

/// Why a function failed or warned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusCodeData {
    /// Subject code, e.g. `8.2.5`.
    pub subject_code: String,
    /// Reason code, e.g. `3.7`.
    pub reason_code: String,
    /// Which object the code is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_identifier: Option<String>,
    /// Human-readable text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl StatusCodeData {
    /// The subject/reason pair.
    pub fn code(&self) -> StatusCode {
        StatusCode {
            subject: Cow::Owned(self.subject_code.clone()),
            reason: Cow::Owned(self.reason_code.clone()),
        }
    }
}

/// `functionExecutionStatus`; also the shape of `notificationPointStatus`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionExecutionStatus {
    /// The outcome.
    pub status: ExecutionStatus,
    /// Details for failures and warnings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code_data: Option<StatusCodeData>,
}

/// `notificationPointStatus` in HandleDownloadProgressInfo has the same shape as a function's status.
pub type NotificationPointStatus = FunctionExecutionStatus;

/// A response header (§6.5.1.4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResponseHeader {
    /// The outcome.
    pub function_execution_status: FunctionExecutionStatus,
}

impl ResponseHeader {
    /// `Executed-Success`.
    pub fn success() -> Self {
        Self {
            function_execution_status: FunctionExecutionStatus {
                status: ExecutionStatus::ExecutedSuccess,
                status_code_data: None,
            },
        }
    }

    /// `Failed` with `code` and an optional message.
    pub fn failed(code: &StatusCode, message: Option<String>) -> Self {
        Self {
            function_execution_status: FunctionExecutionStatus {
                status: ExecutionStatus::Failed,
                status_code_data: Some(StatusCodeData {
                    subject_code: code.subject.to_string(),
                    reason_code: code.reason.to_string(),
                    subject_identifier: None,
                    message,
                }),
            },
        }
    }

    /// The failure code, if the call failed. `statusCodeData` is optional on the wire: a `Failed` without one
    /// is an execution error at the SM-DP+ ([`StatusCode::EXECUTION_ERROR`]), an `Expired` one a function that
    /// timed out there ([`StatusCode::FUNCTION_EXPIRED`]); either way the function did not execute (before,
    /// both read as a success).
    pub fn failure(&self) -> Option<StatusCode> {
        let s = &self.function_execution_status;
        if s.status.is_success() {
            return None;
        }
        Some(match (&s.status_code_data, s.status) {
            (Some(data), _) => data.code(),
            (None, ExecutionStatus::Expired) => StatusCode::FUNCTION_EXPIRED,
            (None, _) => StatusCode::EXECUTION_ERROR,
        })
    }

    /// Whether the call failed for a reason that may pass (it expired, or the function provider had an
    /// execution error): the function did not execute, and may if sent again later.
    pub fn failed_for_now(&self) -> bool {
        let status = self.function_execution_status.status;
        !status.is_success()
            && (status == ExecutionStatus::Expired
                || self
                    .failure()
                    .is_some_and(|code| code.subject == StatusCode::EXECUTION_ERROR.subject))
    }

    /// What a CancelOrder's answer means for the profile it named.
    pub fn cancel_outcome(&self) -> CancelOutcome {
        let Some(code) = self.failure() else {
            return CancelOutcome::Done;
        };
        if self.failed_for_now() {
            CancelOutcome::Retry(code)
        } else if code == StatusCode::ICCID_IN_USE {
            CancelOutcome::InUse
        } else if [StatusCode::UNKNOWN_ICCID, StatusCode::INVALID_TRANSITION].contains(&code) {
            // Nothing left to return: unknown, or no longer in a state a cancel applies to.
            CancelOutcome::Done
        } else {
            CancelOutcome::Refused(code)
        }
    }
}

/// What a CancelOrder's answer means ([`ResponseHeader::cancel_outcome`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// Cancelled, or nothing is left to cancel.
    Done,
    /// Nothing a cancel can do, sending it again neither (`8.2.1`/`3.3`): the profile was downloaded to a
    /// device, which keeps it. Done for the queue, but the profile is live at the carrier: an operator must ask
    /// it to disable the profile.
    InUse,
    /// Not executed, for a reason that may pass: send it again later, as a new call (a failed call's id
    /// replays its failure).
    Retry(StatusCode),
    /// Refused for good (the request or the requester is wrong): sending it again cannot help; an operator must
    /// look.
    Refused(StatusCode),
}

/// DownloadOrder (§5.3.1): reserve a profile by `iccid` or by `profile_type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DownloadOrderRequest {
    /// Header.
    pub header: RequestHeader,
    /// Bind the order to this eUICC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eid: Option<Eid>,
    /// A specific profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iccid: Option<Iccid>,
    /// Any profile of this type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_type: Option<String>,
}

/// DownloadOrder reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DownloadOrderResponse {
    /// Header.
    pub header: ResponseHeader,
    /// The reserved profile (mandatory on success).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iccid: Option<Iccid>,
}

/// A confirmation code: a secret the device user types in. `Debug` redacts it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConfirmationCode(pub String);

impl fmt::Debug for ConfirmationCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConfirmationCode(<redacted>)")
    }
}

/// ConfirmOrder (§5.3.2): fix the MatchingID and optionally release the profile for download.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfirmOrderRequest {
    /// Header.
    pub header: RequestHeader,
    /// The profile from DownloadOrder.
    pub iccid: Iccid,
    /// Bind to this eUICC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eid: Option<Eid>,
    /// Our MatchingID; the SM-DP+ generates one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matching_id: Option<MatchingId>,
    /// Require this confirmation code at download.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmation_code: Option<ConfirmationCode>,
    /// Register the order at this SM-DS (needs `eid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smds_address: Option<Fqdn>,
    /// `true`: Released (downloadable now); `false`: Confirmed (needs ReleaseProfile).
    pub release_flag: bool,
}

/// The MatchingID of a successful ConfirmOrder, as the activation code it goes into can use it for an order
/// placed for `ordered_eid` (the EID the order named, if any): an empty one (`1$<smdp>$`, valid in ES2+) is
/// found only by the eUICC itself, through an SM-DS or its default SM-DP+ (`reference/esim.md` §2), which needs
/// the order bound to that eUICC. For an order that named no EID the code downloads nothing: refused as an
/// unusable answer (the profile is given back and the order fails over), never delivered as a SIM.
pub fn usable_matching_id(
    matching_id: MatchingId,
    ordered_eid: Option<&Eid>,
) -> Result<MatchingId, &'static str> {
    if matching_id.is_empty() && ordered_eid.is_none() {
        return Err(
            "ConfirmOrder answered an empty matchingId, which only an order naming an EID can use",
        );
    }
    Ok(matching_id)
}

/// ConfirmOrder reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfirmOrderResponse {
    /// Header.
    pub header: ResponseHeader,
    /// The bound eUICC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eid: Option<Eid>,
    /// The order's MatchingID (mandatory on success).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matching_id: Option<MatchingId>,
    /// The SM-DP+ address to put in the activation code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smdp_address: Option<Fqdn>,
}

/// What happens to a cancelled profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FinalProfileStatus {
    /// Back to the pool.
    Available,
    /// Retired.
    Unavailable,
}

/// CancelOrder (§5.3.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CancelOrderRequest {
    /// Header.
    pub header: RequestHeader,
    /// The profile.
    pub iccid: Iccid,
    /// The bound eUICC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eid: Option<Eid>,
    /// The order's MatchingID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matching_id: Option<MatchingId>,
    /// Pool or retire.
    pub final_profile_status_indicator: FinalProfileStatus,
}

/// ReleaseProfile (§5.3.4): Confirmed → Released.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseProfileRequest {
    /// Header.
    pub header: RequestHeader,
    /// The profile.
    pub iccid: Iccid,
}

/// The reply of functions that return only a header (CancelOrder, ReleaseProfile).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderOnlyResponse {
    /// Header.
    pub header: ResponseHeader,
}

/// HandleDownloadProgressInfo (§5.3.5): the SM-DP+ reports progress to us.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HandleDownloadProgressInfoRequest {
    /// Header (some SM-DP+s omit it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<RequestHeader>,
    /// The eUICC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eid: Option<Eid>,
    /// The profile.
    pub iccid: Iccid,
    /// The profile's type.
    pub profile_type: String,
    /// When, as `YYYY-MM-DDThh:mm:ssTZD` (kept as text: the kernel has no clock).
    pub timestamp: String,
    /// 1 eligibility, 2 confirmation failure, 3 BPP download, 4 BPP installation; higher values vary by vendor.
    /// Read from a JSON number or a decimal string (`"3"`: some SM-DP+s send one, and a refusal would make
    /// them retry for ever); written as a number.
    #[serde(deserialize_with = "number_or_decimal")]
    pub notification_point_id: u32,
    /// The outcome at that point.
    pub notification_point_status: NotificationPointStatus,
    /// Base64 DER ProfileInstallationResult.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_data: Option<String>,
}

/// A `u32` from a JSON number or a string of decimal digits (no sign, no spaces).
fn number_or_decimal<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = u32;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a non-negative integer, as a number or a decimal string")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u32, E> {
            u32::try_from(v).map_err(|_| E::custom("out of range"))
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u32, E> {
            u32::try_from(v).map_err(|_| E::custom("out of range"))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<u32, E> {
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(E::invalid_value(serde::de::Unexpected::Str(v), &self));
            }
            v.parse().map_err(|_| E::custom("out of range"))
        }
    }
    d.deserialize_any(V)
}

/// A subject/reason status code pair such as `8.2.5/3.7`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StatusCode {
    /// Subject code (what the code is about).
    pub subject: Cow<'static, str>,
    /// Reason code (what is wrong with it).
    pub reason: Cow<'static, str>,
}

impl StatusCode {
    /// A code from static text.
    pub const fn new(subject: &'static str, reason: &'static str) -> Self {
        Self {
            subject: Cow::Borrowed(subject),
            reason: Cow::Borrowed(reason),
        }
    }

    /// "Mandatory element missing" (reason `2.2`) for the element identified by `subject`.
    pub const fn missing(subject: &'static str) -> Self {
        Self::new(subject, "2.2")
    }

    /// `8.2.5/3.7`: no more profiles of this type (pool empty).
    pub const POOL_EMPTY: Self = Self::new("8.2.5", "3.7");
    /// `8.2.5/3.9`: unknown profile type.
    pub const UNKNOWN_PROFILE_TYPE: Self = Self::new("8.2.5", "3.9");
    /// `8.2.1/3.3`: ICCID not available (already in use or downloaded).
    pub const ICCID_IN_USE: Self = Self::new("8.2.1", "3.3");
    /// `8.2.1/3.9`: unknown ICCID.
    pub const UNKNOWN_ICCID: Self = Self::new("8.2.1", "3.9");
    /// `8.2.1/3.5`: the profile's state does not allow this function.
    pub const INVALID_TRANSITION: Self = Self::new("8.2.1", "3.5");
    /// `8.2.1/2.2`: ICCID missing (a mandatory element).
    pub const ICCID_MISSING: Self = Self::missing("8.2.1");
    /// `8.2.1/2.1`: ICCID invalid.
    pub const ICCID_INVALID: Self = Self::new("8.2.1", "2.1");
    /// `8.1.1/3.10`: the ICCID is bound to a different EID.
    pub const EID_MISMATCH: Self = Self::new("8.1.1", "3.10");
    /// `8.1.1/2.2`: EID missing (SM-DS flow or empty MatchingID).
    pub const EID_MISSING: Self = Self::missing("8.1.1");
    /// `8.1.1/2.1`: EID invalid.
    pub const EID_INVALID: Self = Self::new("8.1.1", "2.1");
    /// `8.1.4/6.1`: EID outside the range of the EUM certificate.
    pub const EID_OUT_OF_RANGE: Self = Self::new("8.1.4", "6.1");
    /// `8.2.6/3.3`: MatchingID already in use.
    pub const MATCHING_ID_CONFLICT: Self = Self::new("8.2.6", "3.3");
    /// `8.2.7/6.4`: confirmation code attempts exhausted.
    pub const CC_ATTEMPTS_EXHAUSTED: Self = Self::new("8.2.7", "6.4");
    /// `8.8.1/3.8`: SM-DP+ address refused.
    pub const SMDP_ADDRESS_REFUSED: Self = Self::new("8.8.1", "3.8");
    /// `8.8.5/6.4`: download attempts exhausted.
    pub const DOWNLOAD_ATTEMPTS_EXHAUSTED: Self = Self::new("8.8.5", "6.4");
    /// `8.8.5/4.10`: the order's time to live expired (†).
    pub const ORDER_EXPIRED: Self = Self::new("8.8.5", "4.10");
    /// `8.9/5.1`: SM-DS inaccessible.
    pub const SMDS_UNREACHABLE: Self = Self::new("8.9", "5.1");
    /// `1.1/1.2`: the function requester is not allowed.
    pub const REQUESTER_NOT_ALLOWED: Self = Self::new("1.1", "1.2");
    /// `1.2/4.2`: execution error at the function provider.
    pub const EXECUTION_ERROR: Self = Self::new("1.2", "4.2");
    /// `1.2/4.10`: the function's time to live expired at the function provider (status `Expired`).
    pub const FUNCTION_EXPIRED: Self = Self::new("1.2", "4.10");
}

impl fmt::Display for StatusCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.subject, self.reason)
    }
}

/// Why the dispatcher refuses a request outright (the client's input is at fault, not the carrier).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    /// The profile is bound to another eUICC.
    #[error("the profile is bound to a different eUICC (EID)")]
    WrongDevice,
    /// The SM-DP+ does not accept this EID.
    #[error("the EID is outside the range the carrier's SM-DP+ accepts")]
    EidOutOfRange,
}

/// What the dispatcher does after a failed ES2+ call (esim.md §3 table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DispatchAction {
    /// Try the next carrier in the region's order (on an abort, CancelOrder(`Available`) first).
    FailOver,
    /// A configuration error at this carrier: fail over and alert an operator.
    FailOverAndAlert,
    /// The ICCID is taken: order again (another ICCID / by profile type).
    OrderAgain,
    /// Retry ConfirmOrder with a new MatchingID.
    RetryNewMatchingId,
    /// Refuse the client's request.
    RejectRequest(RejectReason),
    /// The flow needs an EID: ask the client for one.
    AskForEid,
    /// Transient SM-DS trouble: retry later, or fail over.
    RetryLaterOrFailOver,
    /// Cancel the order and order again.
    CancelAndReorder,
}

impl DispatchAction {
    /// The action for a transport error or timeout: fail over (and CancelOrder(`Available`) on abort so the
    /// profile returns to the pool).
    pub const ON_TRANSPORT_ERROR: Self = Self::FailOver;
}

/// The dispatcher's action for a failed call's status code. Unknown codes fail over with an alert: the
/// customer has paid, so another carrier is tried, and an operator looks at the unexpected code.
pub fn action(code: &StatusCode) -> DispatchAction {
    use DispatchAction as A;
    let table = [
        (StatusCode::POOL_EMPTY, A::FailOver),
        (StatusCode::UNKNOWN_PROFILE_TYPE, A::FailOverAndAlert),
        (StatusCode::ICCID_IN_USE, A::OrderAgain),
        (StatusCode::UNKNOWN_ICCID, A::FailOverAndAlert),
        (
            StatusCode::EID_MISMATCH,
            A::RejectRequest(RejectReason::WrongDevice),
        ),
        (StatusCode::MATCHING_ID_CONFLICT, A::RetryNewMatchingId),
        (StatusCode::EID_MISSING, A::AskForEid),
        (StatusCode::SMDS_UNREACHABLE, A::RetryLaterOrFailOver),
        (StatusCode::DOWNLOAD_ATTEMPTS_EXHAUSTED, A::CancelAndReorder),
        (
            StatusCode::EID_OUT_OF_RANGE,
            A::RejectRequest(RejectReason::EidOutOfRange),
        ),
    ];
    table
        .into_iter()
        .find(|(c, _)| c == code)
        .map_or(A::FailOverAndAlert, |(_, a)| a)
}

/// The request field at fault, and why, when a carrier refuses a call (DownloadOrder or ConfirmOrder alike)
/// because of the client's input: the EID. No other carrier would do better, so the order is refused with a
/// 400 on that field instead of failing over.
pub fn client_fault(code: &StatusCode, carrier: &str) -> Option<(&'static str, String)> {
    match action(code) {
        DispatchAction::RejectRequest(reason) => Some(("eid", reason.to_string())),
        DispatchAction::AskForEid => Some((
            "eid",
            format!("carrier {carrier} needs the device's EID for this order"),
        )),
        _ => None,
    }
}

/// A `functionCallIdentifier`: `<prefix>-<unix seconds>-<hex>`, e.g. `FCI-1764000000-1`. Pure: the caller
/// supplies the time and a counter or random number, and keeps the combination unique.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FunctionCallId(String);

impl FunctionCallId {
    /// `FunctionCallId::new("FCI", 1764000000, 0x2a)` → `FCI-1764000000-2a`.
    pub fn new(prefix: &str, unix_secs: u64, counter_or_random: u64) -> Self {
        Self(format!("{prefix}-{unix_secs}-{counter_or_random:x}"))
    }

    /// The identifier.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FunctionCallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<FunctionCallId> for String {
    fn from(v: FunctionCallId) -> Self {
        v.0
    }
}

#[cfg(test)]
mod tests {
    /// An empty MatchingID is usable only for an order bound to an eUICC (an EID): without one, its code
    /// (`1$<smdp>$`) leads no device to the profile. Before, it was accepted and delivered as a SIM.
    #[test]
    fn an_empty_matching_id_needs_an_eid() {
        use super::{Eid, MatchingId, usable_matching_id};
        let eid = Eid::parse("89049032123451234512345678901235").unwrap();
        let empty = MatchingId::parse("").unwrap();
        assert!(usable_matching_id(empty.clone(), None).is_err());
        assert_eq!(usable_matching_id(empty.clone(), Some(&eid)), Ok(empty));
        let mid = MatchingId::parse("AB-12").unwrap();
        assert_eq!(usable_matching_id(mid.clone(), None), Ok(mid.clone()));
        assert_eq!(usable_matching_id(mid.clone(), Some(&eid)), Ok(mid));
    }

    #[test]
    fn only_a_4xx_that_refuses_the_request_says_nothing_ran() {
        for status in [400, 401, 403, 404, 405, 413, 415, 422] {
            assert!(!super::may_have_executed(status), "{status}");
        }
        for status in [204, 302, 408, 409, 425, 429, 499, 500, 502, 503, 504] {
            assert!(super::may_have_executed(status), "{status}");
        }
    }

    use super::*;
    use serde_json::{Value, json};

    fn header() -> RequestHeader {
        RequestHeader {
            function_requester_identifier: "esim402-tmo".into(),
            function_call_identifier: FunctionCallId::new("FCI", 1_764_000_000, 1).into(),
        }
    }

    fn iccid() -> Iccid {
        Iccid::parse("8944478600003770170").unwrap()
    }

    #[test]
    fn confirm_order_matches_the_reference_json() {
        let req = ConfirmOrderRequest {
            header: header(),
            iccid: iccid(),
            eid: None,
            matching_id: None,
            confirmation_code: None,
            smds_address: None,
            release_flag: true,
        };
        let expected = json!({"header": {"functionRequesterIdentifier": "esim402-tmo",
            "functionCallIdentifier": "FCI-1764000000-1"}, "iccid": "8944478600003770170", "releaseFlag": true});
        assert_eq!(serde_json::to_value(&req).unwrap(), expected);
        assert_eq!(
            serde_json::from_value::<ConfirmOrderRequest>(expected).unwrap(),
            req
        );
    }

    #[test]
    fn failed_response_header_parses_and_maps_to_an_action() {
        let body = r#"{"header": {"functionExecutionStatus": {"status": "Failed",
            "statusCodeData": {"subjectCode": "8.2.5", "reasonCode": "3.7", "subjectIdentifier": "x", "message": "m"}}}}"#;
        let resp: DownloadOrderResponse = serde_json::from_str(body).unwrap();
        assert!(resp.iccid.is_none());
        let code = resp.header.failure().unwrap();
        assert_eq!(code, StatusCode::POOL_EMPTY);
        assert_eq!(code.to_string(), "8.2.5/3.7");
        assert_eq!(action(&code), DispatchAction::FailOver);
        let built = ResponseHeader::failed(&StatusCode::POOL_EMPTY, Some("m".into()));
        assert_eq!(built.failure(), Some(StatusCode::POOL_EMPTY));
        assert!(ResponseHeader::success().failure().is_none());
    }

    #[test]
    fn execution_statuses_use_the_spec_spelling() {
        for (status, text) in [
            (ExecutionStatus::ExecutedSuccess, "Executed-Success"),
            (ExecutionStatus::ExecutedWithWarning, "Executed-WithWarning"),
            (ExecutionStatus::Failed, "Failed"),
            (ExecutionStatus::Expired, "Expired"),
        ] {
            assert_eq!(serde_json::to_value(status).unwrap(), text);
        }
        assert!(serde_json::from_str::<ExecutionStatus>("\"Success\"").is_err());
        assert!(ExecutionStatus::ExecutedWithWarning.is_success());
        assert!(!ExecutionStatus::Expired.is_success());
    }

    #[test]
    fn a_failure_without_a_code_is_still_a_failure_and_a_cancel_says_whether_to_retry() {
        let header = |status: &str, code: Option<(&str, &str)>| -> ResponseHeader {
            let mut v = serde_json::json!({"functionExecutionStatus": {"status": status}});
            if let Some((subject, reason)) = code {
                v["functionExecutionStatus"]["statusCodeData"] =
                    serde_json::json!({"subjectCode": subject, "reasonCode": reason});
            }
            serde_json::from_value(v).unwrap()
        };
        assert_eq!(
            header("Failed", None).failure(),
            Some(StatusCode::EXECUTION_ERROR)
        );
        assert_eq!(
            header("Expired", None).failure(),
            Some(StatusCode::FUNCTION_EXPIRED)
        );
        assert_eq!(header("Executed-WithWarning", None).failure(), None);
        assert_eq!(
            header("Executed-Success", None).cancel_outcome(),
            CancelOutcome::Done
        );
        for done in [("8.2.1", "3.9"), ("8.2.1", "3.5")] {
            assert_eq!(
                header("Failed", Some(done)).cancel_outcome(),
                CancelOutcome::Done
            );
        }
        // Downloaded: nothing to retry, but not gone (a review: it counted as done without a word).
        assert_eq!(
            header("Failed", Some(("8.2.1", "3.3"))).cancel_outcome(),
            CancelOutcome::InUse
        );
        assert_eq!(
            header("Failed", Some(("1.2", "4.2"))).cancel_outcome(),
            CancelOutcome::Retry(StatusCode::EXECUTION_ERROR)
        );
        assert_eq!(
            header("Expired", None).cancel_outcome(),
            CancelOutcome::Retry(StatusCode::FUNCTION_EXPIRED)
        );
        assert_eq!(
            header("Failed", None).cancel_outcome(),
            CancelOutcome::Retry(StatusCode::EXECUTION_ERROR)
        );
        assert_eq!(
            header("Failed", Some(("1.1", "1.2"))).cancel_outcome(),
            CancelOutcome::Refused(StatusCode::REQUESTER_NOT_ALLOWED)
        );
        // `Expired` is never executed, whatever its code.
        assert_eq!(
            header("Expired", Some(("8.8.5", "4.10"))).cancel_outcome(),
            CancelOutcome::Retry(StatusCode::ORDER_EXPIRED)
        );
    }

    #[test]
    fn optional_fields_are_omitted_and_camel_cased() {
        let req = DownloadOrderRequest {
            header: header(),
            eid: None,
            iccid: None,
            profile_type: Some("tmo-iot-data".into()),
        };
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(v["profileType"], "tmo-iot-data");
        assert!(v.get("eid").is_none() && v.get("iccid").is_none());

        let cancel = CancelOrderRequest {
            header: header(),
            iccid: iccid(),
            eid: None,
            matching_id: Some(MatchingId::parse("AB-12").unwrap()),
            final_profile_status_indicator: FinalProfileStatus::Available,
        };
        let v = serde_json::to_value(&cancel).unwrap();
        assert_eq!(v["finalProfileStatusIndicator"], "Available");
        assert_eq!(v["matchingId"], "AB-12");

        let release = ReleaseProfileRequest {
            header: header(),
            iccid: iccid(),
        };
        assert_eq!(
            serde_json::to_value(&release).unwrap()["iccid"],
            "8944478600003770170"
        );
        let ok: HeaderOnlyResponse = serde_json::from_str(
            r#"{"header":{"functionExecutionStatus":{"status":"Executed-Success"}}}"#,
        )
        .unwrap();
        assert!(ok.header.failure().is_none());
    }

    #[test]
    fn confirm_order_response_is_typed_and_redacted() {
        let body = r#"{"header":{"functionExecutionStatus":{"status":"Executed-Success"}},
            "matchingId":"SECRET-1","smdpAddress":"SMDP.example.com","eid":"89049032123451234512345678901235"}"#;
        let resp: ConfirmOrderResponse = serde_json::from_str(body).unwrap();
        assert_eq!(
            resp.smdp_address.as_ref().unwrap().as_str(),
            "smdp.example.com"
        );
        assert!(!format!("{resp:?}").contains("SECRET"));
        let cc = ConfirmationCode("1234".into());
        assert!(!format!("{cc:?}").contains("1234"));
        assert!(
            serde_json::from_str::<ConfirmOrderResponse>(&body.replace("SECRET-1", "BAD$"))
                .is_err()
        );
    }

    #[test]
    fn download_progress_info_round_trips() {
        let body = json!({"iccid": "8944478600003770170", "profileType": "tmo-iot-data",
            "timestamp": "2025-11-24T12:00:00Z", "notificationPointId": 4,
            "notificationPointStatus": {"status": "Executed-Success"}, "resultData": "MAA="});
        let info: HandleDownloadProgressInfoRequest = serde_json::from_value(body.clone()).unwrap();
        assert_eq!(info.notification_point_id, 4);
        assert!(info.header.is_none() && info.eid.is_none());
        assert_eq!(serde_json::to_value(&info).unwrap(), body);
        let bad: Value = json!({"iccid": "8944478600003770170"});
        assert!(serde_json::from_value::<HandleDownloadProgressInfoRequest>(bad).is_err());
    }

    /// Some SM-DP+s send `notificationPointId` as a decimal string: read like the number (a 400 would make the
    /// SM-DP+ retry for ever), written back as a number; anything else that is not a u32 is still refused.
    #[test]
    fn a_notification_point_id_sent_as_a_decimal_string_is_read() {
        let body = |id: Value| {
            json!({"iccid": "8944478600003770170", "profileType": "tmo-iot-data",
                "timestamp": "2025-11-24T12:00:00Z", "notificationPointId": id,
                "notificationPointStatus": {"status": "Executed-Success"}})
        };
        for (id, want) in [(json!("3"), 3), (json!("101"), 101), (json!(4), 4)] {
            let info: HandleDownloadProgressInfoRequest =
                serde_json::from_value(body(id.clone())).unwrap();
            assert_eq!(info.notification_point_id, want, "{id}");
            assert_eq!(
                serde_json::to_value(&info).unwrap()["notificationPointId"],
                json!(want)
            );
        }
        for id in [
            json!(""),
            json!("-3"),
            json!("+3"),
            json!(" 3"),
            json!("3.0"),
            json!("x"),
            json!("4294967296"),
            json!(-1),
            json!(3.5),
            json!(null),
        ] {
            assert!(
                serde_json::from_value::<HandleDownloadProgressInfoRequest>(body(id.clone()))
                    .is_err(),
                "{id}"
            );
        }
    }

    #[test]
    fn every_table_code_has_its_action() {
        use DispatchAction as A;
        for (code, expected) in [
            (StatusCode::POOL_EMPTY, A::FailOver),
            (StatusCode::UNKNOWN_PROFILE_TYPE, A::FailOverAndAlert),
            (StatusCode::ICCID_IN_USE, A::OrderAgain),
            (StatusCode::UNKNOWN_ICCID, A::FailOverAndAlert),
            (
                StatusCode::EID_MISMATCH,
                A::RejectRequest(RejectReason::WrongDevice),
            ),
            (StatusCode::MATCHING_ID_CONFLICT, A::RetryNewMatchingId),
            (StatusCode::EID_MISSING, A::AskForEid),
            (StatusCode::SMDS_UNREACHABLE, A::RetryLaterOrFailOver),
            (StatusCode::DOWNLOAD_ATTEMPTS_EXHAUSTED, A::CancelAndReorder),
            (
                StatusCode::EID_OUT_OF_RANGE,
                A::RejectRequest(RejectReason::EidOutOfRange),
            ),
            (StatusCode::REQUESTER_NOT_ALLOWED, A::FailOverAndAlert),
            (StatusCode::new("9.9", "9.9"), A::FailOverAndAlert),
        ] {
            assert_eq!(action(&code), expected, "{code}");
        }
        let owned = StatusCodeData {
            subject_code: "8.2.6".into(),
            reason_code: "3.3".into(),
            subject_identifier: None,
            message: None,
        };
        assert_eq!(action(&owned.code()), A::RetryNewMatchingId);
        assert_eq!(DispatchAction::ON_TRANSPORT_ERROR, A::FailOver);
        assert_eq!(StatusCode::EID_MISSING, StatusCode::new("8.1.1", "2.2"));
    }

    #[test]
    fn only_eid_refusals_are_the_clients_fault() {
        assert_eq!(
            client_fault(&StatusCode::EID_MISMATCH, "tmobile"),
            Some(("eid", RejectReason::WrongDevice.to_string()))
        );
        assert_eq!(
            client_fault(&StatusCode::EID_OUT_OF_RANGE, "tmobile"),
            Some(("eid", RejectReason::EidOutOfRange.to_string()))
        );
        let (field, why) = client_fault(&StatusCode::EID_MISSING, "verizon").unwrap();
        assert_eq!(field, "eid");
        assert!(why.contains("verizon"), "{why}");
        for code in [
            StatusCode::POOL_EMPTY,
            StatusCode::INVALID_TRANSITION,
            StatusCode::SMDS_UNREACHABLE,
            StatusCode::new("9.9", "9.9"),
        ] {
            assert_eq!(client_fault(&code, "tmobile"), None, "{code}");
        }
    }

    #[test]
    fn paths_protocol_and_call_ids() {
        assert_eq!(CONFIRM_ORDER_PATH, "/gsma/rsp2/es2plus/confirmOrder");
        assert!(HANDLE_DOWNLOAD_PROGRESS_INFO_PATH.ends_with("/handleDownloadProgressInfo"));
        assert!(is_supported_admin_protocol(ADMIN_PROTOCOL));
        assert!(is_supported_admin_protocol("gsma/rsp/v2.2.0"));
        assert!(!is_supported_admin_protocol("gsma/rsp/v3.0.0"));
        assert_eq!(
            FunctionCallId::new("FCI", 1_764_000_000, 0x2a).as_str(),
            "FCI-1764000000-2a"
        );
        assert_eq!(FunctionCallId::new("FCI", 1, 1).to_string(), "FCI-1-1");
    }
}
