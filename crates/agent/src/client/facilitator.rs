//! Where a pending payment can be sent: the facilitator it is pending with ([`Facilitator`]), what to tell the
//! user about one pending elsewhere, and the warning every suggestion to give one up carries. Shared by the paid
//! walk (`paid`) and the collection pass (`collect`), which both import it (neither imports the other's).

use std::fmt;

/// What every message that mentions forgetting a pending payment says: a payment forgotten stops holding back
/// a new one for the same purchase, so if it was charged (its reply lost, or collected later by hand), the
/// purchase is paid twice.
pub const FORGET_WARNING: &str = "forgetting it may pay twice for the same purchase if it was charged (a new \
     payment for it is no longer held back)";

/// The facilitator a payment is pending with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Facilitator {
    /// The origin its key names (`scheme://host[:port]`, spelled as the agent that signed it kept it).
    Origin(String),
    /// The host (`host[:port]`) the signature of an earlier agent's payment names (its key names no origin).
    Host(String),
    /// An earlier agent's payment whose signature names no facilitator: it can be sent nowhere.
    Unknown,
}

impl Facilitator {
    /// The origin or host, if known.
    pub fn name(&self) -> Option<&str> {
        match self {
            Self::Origin(s) | Self::Host(s) => Some(s),
            Self::Unknown => None,
        }
    }

    /// What to do about the payment `id` pending there, when it is not this agent's facilitator: how to collect
    /// it, or, as a last resort, to give up on it (saying that this may pay twice).
    pub fn advice(&self, id: &str) -> String {
        let forget = format!(
            "as a last resort, `esim402-agent pending --forget {id}` stops sending it (its spend stays counted); \
             {FORGET_WARNING}"
        );
        match self {
            Self::Origin(o) => format!("run a command with --url {o} to collect it; {forget}"),
            Self::Host(h) => format!(
                "run a command with --url https://{h} (http://{h} if it is this machine) to collect it; {forget}"
            ),
            Self::Unknown => format!("it cannot be sent anywhere: {forget}"),
        }
    }
}

impl fmt::Display for Facilitator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Origin(o) => write!(f, "the facilitator {o}"),
            Self::Host(h) => write!(
                f,
                "the facilitator at {h} (a payment of an earlier esim402-agent)"
            ),
            Self::Unknown => write!(
                f,
                "an unknown facilitator (a payment of an earlier esim402-agent whose signature names none)"
            ),
        }
    }
}

/// How the proxy's operator gives up the payment `id` (as a last resort: it may have been charged). Told to a
/// device too, so it names no path of the proxy's machine.
pub(super) fn forget_hint(id: &str) -> String {
    format!(
        "if it can never be collected, the proxy's operator can give it up (`esim402-agent --state-dir \
         <proxy state dir>/devices/<device id> --url <facilitator> pending --forget {id} --force`; it may have been \
         charged: its spend stays counted)"
    )
}
