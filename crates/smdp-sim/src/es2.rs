//! The ES2+ JSON binding as the simulator speaks it (SGP.22 §6.5): function names, the response envelope, and
//! the subject/reason status codes it answers with.
//!
//! Every functional outcome is HTTP 200; success or failure lives in
//! `header.functionExecutionStatus`. Build replies with [`success`] and [`failed`].

use serde_json::{Map, Value, json};

/// The `X-Admin-Protocol` value the simulator sends.
pub const ADMIN_PROTOCOL: &str = "gsma/rsp/v2.5.0";
/// Requests must carry an `X-Admin-Protocol` starting with this.
pub const ADMIN_PROTOCOL_PREFIX: &str = "gsma/rsp/v2.";
/// Path of the ES2+ functions below an operator's prefix.
pub const ES2PLUS_PATH: &str = "gsma/rsp2/es2plus";

/// The ES2+ functions an SM-DP+ serves to the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Function {
    /// SGP.22 §5.3.1: reserve a profile.
    DownloadOrder,
    /// SGP.22 §5.3.2: confirm the order, get the MatchingID.
    ConfirmOrder,
    /// SGP.22 §5.3.3: cancel a pending order.
    CancelOrder,
    /// SGP.22 §5.3.4: allow the download of a confirmed order.
    ReleaseProfile,
}

impl Function {
    /// All functions, in protocol order.
    pub const ALL: [Function; 4] = [
        Function::DownloadOrder,
        Function::ConfirmOrder,
        Function::CancelOrder,
        Function::ReleaseProfile,
    ];

    /// The function's URL segment (`downloadOrder`, …).
    pub fn name(self) -> &'static str {
        match self {
            Function::DownloadOrder => "downloadOrder",
            Function::ConfirmOrder => "confirmOrder",
            Function::CancelOrder => "cancelOrder",
            Function::ReleaseProfile => "releaseProfile",
        }
    }

    /// Parses a URL segment.
    pub fn from_name(name: &str) -> Option<Function> {
        Function::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// `statusCodeData` of a Failed outcome: subject code, reason code, the offending element and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusCode {
    /// Subject code, e.g. `8.2.5` (profile type).
    pub subject: &'static str,
    /// Reason code, e.g. `3.7` (unavailable).
    pub reason: &'static str,
    /// Which element the code is about (a field name or value).
    pub subject_identifier: String,
    /// Human-readable explanation.
    pub message: String,
}

impl StatusCode {
    /// A status code about `subject_identifier`.
    pub fn new(
        subject: &'static str,
        reason: &'static str,
        subject_identifier: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        StatusCode {
            subject,
            reason,
            subject_identifier: subject_identifier.into(),
            message: message.into(),
        }
    }

    /// `subject/reason`, for logs and tests.
    pub fn code(&self) -> String {
        format!("{}/{}", self.subject, self.reason)
    }

    /// The `statusCodeData` JSON object.
    pub fn to_json(&self) -> Value {
        json!({
            "subjectCode": self.subject,
            "reasonCode": self.reason,
            "subjectIdentifier": self.subject_identifier,
            "message": self.message,
        })
    }
}

/// Subject codes (SGP.22 error code table).
pub mod subject {
    /// Function requester.
    pub const FUNCTION_REQUESTER: &str = "1.1";
    /// Function provider.
    pub const FUNCTION_PROVIDER: &str = "1.2";
    /// EID.
    pub const EID: &str = "8.1.1";
    /// ICCID.
    pub const ICCID: &str = "8.2.1";
    /// Profile type.
    pub const PROFILE_TYPE: &str = "8.2.5";
    /// MatchingID.
    pub const MATCHING_ID: &str = "8.2.6";
    /// Confirmation code.
    pub const CONFIRMATION_CODE: &str = "8.2.7";
    /// Download order (the simulator's choice for `releaseFlag` and `finalProfileStatusIndicator` too).
    pub const DOWNLOAD_ORDER: &str = "8.8.5";
    /// SM-DS.
    pub const SMDS: &str = "8.9";
}

/// Reason codes (SGP.22 error code table).
pub mod reason {
    /// Not allowed (authorisation).
    pub const NOT_ALLOWED: &str = "1.2";
    /// Invalid.
    pub const INVALID: &str = "2.1";
    /// Mandatory element missing.
    pub const MISSING: &str = "2.2";
    /// Already in use.
    pub const ALREADY_IN_USE: &str = "3.3";
    /// Invalid transition.
    pub const INVALID_TRANSITION: &str = "3.5";
    /// Unavailable.
    pub const UNAVAILABLE: &str = "3.7";
    /// Unknown.
    pub const UNKNOWN: &str = "3.9";
    /// Invalid association.
    pub const INVALID_ASSOCIATION: &str = "3.10";
    /// Execution error.
    pub const EXECUTION_ERROR: &str = "4.2";
    /// Maximum number of attempts exceeded.
    pub const MAX_ATTEMPTS: &str = "6.4";
}

/// `{"header":{"functionExecutionStatus":{"status":"Executed-Success"}}, …fields}`.
pub fn success(fields: Map<String, Value>) -> Value {
    let mut body = fields;
    body.insert(
        "header".into(),
        json!({ "functionExecutionStatus": { "status": "Executed-Success" } }),
    );
    Value::Object(body)
}

/// `{"header":{"functionExecutionStatus":{"status":"Failed","statusCodeData":{…}}}}`.
pub fn failed(code: &StatusCode) -> Value {
    json!({
        "header": { "functionExecutionStatus": { "status": "Failed", "statusCodeData": code.to_json() } }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_names_round_trip() {
        for f in Function::ALL {
            assert_eq!(Function::from_name(f.name()), Some(f));
        }
        assert_eq!(Function::from_name("handleDownloadProgressInfo"), None);
    }

    #[test]
    fn envelopes() {
        let mut m = Map::new();
        m.insert("iccid".into(), json!("8944478600003770170"));
        let ok = success(m);
        assert_eq!(
            ok["header"]["functionExecutionStatus"]["status"],
            "Executed-Success"
        );
        assert_eq!(ok["iccid"], "8944478600003770170");
        let code = StatusCode::new(
            subject::PROFILE_TYPE,
            reason::UNAVAILABLE,
            "x",
            "pool empty",
        );
        let f = failed(&code);
        let st = &f["header"]["functionExecutionStatus"];
        assert_eq!(st["status"], "Failed");
        assert_eq!(st["statusCodeData"]["subjectCode"], "8.2.5");
        assert_eq!(st["statusCodeData"]["reasonCode"], "3.7");
        assert_eq!(code.code(), "8.2.5/3.7");
    }
}
