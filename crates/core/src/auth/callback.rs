//! Carrier credentials: each carrier presents its own secret (`Authorization: Bearer …`) on its SM-DP+'s
//! `HandleDownloadProgressInfo` callbacks and when its charging side asks for a SIM's quota (online charging). Configured as one secret variable, `carrier=secret` pairs separated by commas
//! (the SM-DP+ simulator takes the same string). Empty: every callback is refused.

use crate::CarrierId;

/// The parsed credentials (secrets: never logged, `Debug` shows the carriers only).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct CallbackCredentials(Vec<(CarrierId, String)>);

impl std::fmt::Debug for CallbackCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(c, _)| c))
            .finish()
    }
}

/// Shortest accepted secret.
pub const MIN_SECRET_LEN: usize = 16;

/// Why a callback is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
    /// No credential configured at all.
    #[error("carrier callbacks are disabled: set the carrier_callback_credentials variable")]
    Disabled,
    /// Missing, or no carrier's.
    #[error("missing or unknown carrier callback credential")]
    Unknown,
    /// An authenticated carrier reports on a profile it did not issue.
    #[error("carrier {carrier} did not issue ICCID {iccid}")]
    NotIssuer {
        /// The authenticated carrier.
        carrier: String,
        /// The ICCID reported on.
        iccid: String,
    },
}

impl CallbackCredentials {
    /// Parse `carrier=secret,…` (whitespace around items ignored). The error names the item, never a secret.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for (i, item) in s
            .split(',')
            .map(str::trim)
            .filter(|i| !i.is_empty())
            .enumerate()
        {
            let (c, secret) = item
                .split_once('=')
                .ok_or_else(|| format!("item {} is not carrier=secret", i + 1))?;
            let c = CarrierId::parse(c.trim()).map_err(|e| format!("item {}: {}", i + 1, e.0))?;
            let secret = secret.trim();
            // Named by its place, not its carrier: a secret with a comma in it splits into items, and what
            // follows the comma (up to an `=`) would be read as a carrier id and shown.
            if secret.len() < MIN_SECRET_LEN {
                return Err(format!(
                    "item {}: the secret is shorter than {MIN_SECRET_LEN} characters",
                    i + 1
                ));
            }
            if out.iter().any(|(d, _)| d == &c) {
                return Err(format!(
                    "item {}: its carrier is listed twice (a secret may not contain a comma)",
                    i + 1
                ));
            }
            out.push((c, secret.to_owned()));
        }
        Ok(Self(out))
    }

    /// Which carrier presented `credential` (every secret compared in constant time, all of them always).
    pub fn carrier_of(&self, credential: Option<&str>) -> Result<&CarrierId, CallbackError> {
        if self.0.is_empty() {
            return Err(CallbackError::Disabled);
        }
        let presented = credential.unwrap_or("").as_bytes();
        let mut found = None;
        for (c, secret) in &self.0 {
            if super::secret_eq(presented, secret.as_bytes()) {
                found = Some(c);
            }
        }
        found.ok_or(CallbackError::Unknown)
    }

    /// The secret `carrier` presents (for the simulators that play carriers).
    pub fn secret_of(&self, carrier: &CarrierId) -> Option<&str> {
        self.0
            .iter()
            .find(|(c, _)| c == carrier)
            .map(|(_, s)| s.as_str())
    }

    /// The carriers configured.
    pub fn carriers(&self) -> impl Iterator<Item = &CarrierId> {
        self.0.iter().map(|(c, _)| c)
    }
}

/// `carrier` may report on a SIM of `issuer`.
pub fn check_issuer(carrier: &CarrierId, issuer: &str, iccid: &str) -> Result<(), CallbackError> {
    if carrier.as_str() == issuer {
        Ok(())
    } else {
        Err(CallbackError::NotIssuer {
            carrier: carrier.to_string(),
            iccid: iccid.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_identify() {
        let c =
            CallbackCredentials::parse(" verizon = aaaaaaaaaaaaaaaa1 , tmobile=bbbbbbbbbbbbbbbb2,")
                .unwrap();
        assert_eq!(
            c.carrier_of(Some("aaaaaaaaaaaaaaaa1")).unwrap().as_str(),
            "verizon"
        );
        assert_eq!(
            c.carrier_of(Some("bbbbbbbbbbbbbbbb2")).unwrap().as_str(),
            "tmobile"
        );
        assert_eq!(
            c.carrier_of(Some("aaaaaaaaaaaaaaaa")),
            Err(CallbackError::Unknown)
        );
        assert_eq!(c.carrier_of(None), Err(CallbackError::Unknown));
        assert!(!format!("{c:?}").contains("aaaa"));
        assert_eq!(c.carriers().count(), 2);
        let v = CarrierId::parse("verizon").unwrap();
        assert_eq!(c.secret_of(&v), Some("aaaaaaaaaaaaaaaa1"));
        assert_eq!(c.secret_of(&CarrierId::parse("att").unwrap()), None);
    }

    #[test]
    fn bad_configs_are_named_without_the_secret() {
        assert_eq!(
            CallbackCredentials::parse("")
                .unwrap()
                .carrier_of(Some("x")),
            Err(CallbackError::Disabled)
        );
        let short = CallbackCredentials::parse("verizon=short").unwrap_err();
        assert!(
            short.contains("item 1") && !short.contains("short "),
            "{short}"
        );
        // A secret with a comma in it: what follows the comma is no carrier's name to show.
        for split in [
            "verizon=aaaaaaaaaaaaaaaa,k3y-part=xyz",
            "verizon=aaaaaaaaaaaaaaaa,verizon=bbbbbbbbbbbbbbbbbbbb",
        ] {
            let e = CallbackCredentials::parse(split).unwrap_err();
            assert!(
                e.starts_with("item 2:") && !e.contains("k3y") && !e.contains("verizon"),
                "{e}"
            );
        }
        assert!(CallbackCredentials::parse("verizon").is_err());
        assert!(CallbackCredentials::parse("Bad Id=aaaaaaaaaaaaaaaaaaaa").is_err());
        assert!(
            CallbackCredentials::parse("att=aaaaaaaaaaaaaaaaaa,att=bbbbbbbbbbbbbbbbbb").is_err()
        );
    }

    #[test]
    fn issuer_rule() {
        let v = CarrierId::parse("verizon").unwrap();
        assert!(check_issuer(&v, "verizon", "1").is_ok());
        assert!(matches!(
            check_issuer(&v, "att", "1"),
            Err(CallbackError::NotIssuer { .. })
        ));
    }
}
