//! Errors of the agent, and the exit code the CLI answers each with.
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | done |
//! | 1 | local problem: no or bad wallet key, unreadable state or policy file, a payment for the same purchase pending with another facilitator, a SIM list past its bounds (100 000 SIMs, 10 000 pages) |
//! | 2 | usage: bad arguments (clap: among them an `--iccid` that is not an ICCID, a data size outside 1 to 100 000 MB), no SIM to act on (none, or all terminated), a SIM just collected that a command without `--iccid` would change or pay for |
//! | 3 | refused by the spend policy: nothing was signed or paid |
//! | 4 | refused by the facilitator: payment refused, or a 4xx answer (not found, conflict, …); a redirect or a 4xx that is not the facilitator's own refusal to a payment whose authorization expired over 60 s ago (its spend kept counted, the request no longer held back by it); a 413, 414 or 431 that is not the facilitator's (never reached it: nothing charged) |
//! | 5 | a local clock more than 60 s off the facilitator's `Date` (nothing signed; tried again once NTP sets it), facilitator unreachable, 5xx, a 408/429/499 or an answer with `Retry-After`, an answer over 4 MiB, a paid 2xx that is not JSON, a redirect or a 4xx that is not the facilitator's own refusal to a paid request while its authorization can still be settled (until its `validBefore` plus 60 s), settlement still pending, a paid answer that could not be saved, or a new payment refused while one for the same purchase is pending with this facilitator: a payment in flight is kept; run the same command (or any command) again later; only as a last resort, one that can never be collected: `esim402-agent pending --forget <payment-id>` (`--force` while its authorization is valid): forgetting it may pay twice for the same purchase if it was charged |

use crate::policy::PolicyRefusal;

/// The CLI's documented exit codes (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    /// Done.
    Ok = 0,
    /// A local problem (key, state, policy file).
    Local = 1,
    /// Bad arguments.
    Usage = 2,
    /// The spend policy refused the offer; nothing signed.
    Policy = 3,
    /// The facilitator refused.
    Refused = 4,
    /// The facilitator is unreachable or failed; a payment in flight is kept for the next run.
    Unavailable = 5,
}

/// Everything that can go wrong in the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Configuration (wallet key, URL).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The state directory or the policy file.
    #[error("{0}")]
    Local(String),
    /// The caller asked for something impossible (no SIM known, …).
    #[error("{0}")]
    Usage(String),
    /// The spend policy refused the offer.
    #[error("spend policy refused the payment: {0}")]
    Policy(#[from] PolicyRefusal),
    /// The facilitator answered with a refusal.
    #[error("facilitator refused ({status}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The error message of the answer (or its body).
        message: String,
    },
    /// The facilitator could not be reached or failed; `pending` says whether a payment is kept.
    #[error("{message}{}", if *.pending { "; the signed payment is kept: run the same command again to collect it (it is never paid twice)" } else { "" })]
    Unavailable {
        /// What happened.
        message: String,
        /// A payment is kept pending in the state directory.
        pending: bool,
    },
}

impl AgentError {
    /// The exit code the CLI answers with.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::Config(_) | Self::Local(_) => ExitCode::Local,
            Self::Usage(_) => ExitCode::Usage,
            Self::Policy(_) => ExitCode::Policy,
            Self::Refused { .. } => ExitCode::Refused,
            Self::Unavailable { .. } => ExitCode::Unavailable,
        }
    }
}
