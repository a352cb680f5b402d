//! Wallet sign-in, as the x402 `sign-in-with-x` extension defines it for EVM wallets: the client sends a
//! CAIP-122 proof as base64 JSON in the `SIGN-IN-WITH-X` header; the server rebuilds the EIP-4361 (SIWE)
//! message from its fields and recovers the EIP-191 signer.
//!
//! Checks, cheapest first: form (size, base64, JSON, version `1`, an `eip155:<n>` chain, type `eip191`, a nonce of
//! 8–64 letters and digits), binding (`domain` is this server's host, `uri` starts with its origin), time
//! (`issuedAt` at most [`MAX_AGE_SECS`] old and not in the future beyond [`CLOCK_SKEW_SECS`], `expirationTime`
//! in the future, `notBefore` past), then the signature (65-byte EOA signatures only; smart-contract wallets,
//! EIP-1271/6492, are not accepted). The nonce's single use is the caller's to enforce (it needs storage):
//! [`Verified::nonce`] and [`Verified::expires_at`] are what it needs.

use alloy_primitives::{Address, eip191_hash_message};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use k256::ecdsa::SigningKey;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::AuthError;
use crate::chain::{Network, parse_address};
use crate::x402::exact::{address_of, recover_signer, sign_prehash};

/// The request header (HTTP header names are case-insensitive).
pub const HEADER: &str = "sign-in-with-x";
/// Oldest accepted `issuedAt`, and the longest a proof lives whatever its `expirationTime` says.
pub const MAX_AGE_SECS: u64 = 300;
/// Tolerated clock difference for `issuedAt` in the future.
pub const CLOCK_SKEW_SECS: u64 = 60;
/// Largest accepted header value.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;

/// A `sign-in-with-x` proof (the header's JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(
    missing_docs,
    reason = "the fields are the extension's, documented there"
)]
pub struct SiwxProof {
    pub domain: String,
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement: Option<String>,
    pub uri: String,
    pub version: String,
    pub chain_id: String,
    #[serde(rename = "type", default = "eip191")]
    pub kind: String,
    pub nonce: String,
    pub issued_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_scheme: Option<String>,
    pub signature: String,
}

fn eip191() -> String {
    "eip191".to_owned()
}

/// What this server expects of a proof.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    /// The request's host (`host[:port]`), which `domain` must equal.
    pub domain: &'a str,
    /// `scheme://host[:port]`, which `uri` must start with.
    pub origin: &'a str,
    /// The request's path (its query and fragment aside), which `uri`'s path must equal when given: a
    /// sign-in opens the route it was made for, not the same SIM's other routes.
    pub path: Option<&'a str>,
    /// Unix seconds.
    pub now: u64,
}

/// A proof that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The signer.
    pub address: Address,
    /// Its nonce (to be claimed once).
    pub nonce: String,
    /// When the proof stops being accepted (unix seconds): the nonce need not be remembered longer.
    pub expires_at: u64,
}

fn invalid(msg: impl Into<String>) -> AuthError {
    AuthError::Invalid(format!("sign-in-with-x: {}", msg.into()))
}

/// Unix seconds of an RFC 3339 timestamp.
pub fn parse_time(field: &str, s: &str) -> Result<u64, AuthError> {
    let t = OffsetDateTime::parse(s, &Rfc3339)
        .map_err(|_| invalid(format!("{field} is not an RFC 3339 timestamp")))?;
    u64::try_from(t.unix_timestamp()).map_err(|_| invalid(format!("{field} is before 1970")))
}

/// RFC 3339 (UTC, milliseconds) of unix seconds, as the x402 SDKs write `issuedAt`.
pub fn format_time(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .map(|t| {
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.000Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        })
        .unwrap_or_default()
}

/// The path of an absolute URL, without its query or fragment (`/` for none): the route a sign-in is used on.
pub fn path_of(url: &str) -> &str {
    let rest = origin_of(url).map_or(url, |(origin, _)| &url[origin.len()..]);
    match rest.split(['?', '#']).next() {
        Some(p) if !p.is_empty() => p,
        _ => "/",
    }
}

/// `scheme://host[:port]` and `host[:port]` of an absolute URL (what a proof's `uri` and `domain` must match).
pub fn origin_of(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest
        .split(['/', '?', '#'])
        .next()
        .filter(|h| !h.is_empty())?;
    Some((&url[..scheme.len() + 3 + host.len()], host))
}

/// The URL a 402 names as its `resource`: `request_url` (as the server saw it: its origin from the client's Host
/// header) when `configured` (the `public_origins` variable) is unset or names that origin, else the same path
/// and query on the first origin it names. The Host header is the client's to choose: a deployment that says
/// where it is reached never describes itself by another client-chosen name (in an answer a cache could keep).
pub fn public_url(configured: Option<&str>, request_url: &str) -> String {
    let Some(list) = configured else {
        return request_url.to_owned();
    };
    let origins: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter_map(|e| origin_of(e).map(|(origin, _)| origin))
        .collect();
    let Some((own, _)) = origin_of(request_url) else {
        return request_url.to_owned();
    };
    match origins.first() {
        Some(first) if !origins.iter().any(|o| o.eq_ignore_ascii_case(own)) => {
            format!("{first}{}", &request_url[own.len()..])
        }
        _ => request_url.to_owned(),
    }
}

/// What is wrong with a `public_origins` value, for readiness: every entry that is not a bare origin
/// (`scheme://host[:port]`, no path), which [`expected_origins`] skips (so a typo silently refuses the
/// sign-ins made for it), and a list naming no origin at all (every sign-in refused). Empty when usable.
pub fn origin_problems(list: &str) -> Vec<String> {
    let entries: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .collect();
    let mut problems: Vec<String> = entries
        .iter()
        .filter(|e| origin_of(e).is_none_or(|(origin, _)| origin.len() != e.len()))
        .map(|e| format!("public_origins entry {e:?} is not scheme://host[:port]"))
        .collect();
    if entries.iter().all(|e| origin_of(e).is_none()) {
        problems.push("public_origins names no origin: every wallet sign-in is refused".into());
    }
    problems
}

/// The `(origin, domain)` pairs a wallet sign-in may name on this service. With `configured` (the
/// `public_origins` variable: comma-separated `scheme://host[:port]`), exactly those: the request's own Host
/// header is the client's to choose, so it cannot say which site a signature was made for (a signature a
/// wallet gave another site would open SIMs here). Without it, only a request to a loopback host *from* a
/// loopback address (`client`: the peer's `ip:port`, Spin's `spin-client-addr`) may use its own origin
/// (development): the Host header alone is the client's to choose, so a public deployment would otherwise take
/// a signature its owner gave a local app. Anywhere else sign-ins are refused until the variable is set.
/// `configured` is `Err` (why, naming the variable) when the variable's provider failed: nothing is checked
/// then ([`AuthError::Unavailable`]), never the loopback fallback, which is for a variable that is unset (a
/// reverse proxy on the same machine sends loopback requests from a loopback address).
pub fn expected_origins<'a>(
    configured: Result<Option<&'a str>, String>,
    request_url: &'a str,
    client: Option<&str>,
) -> Result<Vec<(&'a str, &'a str)>, AuthError> {
    let configured = configured
        .map_err(|why| AuthError::Unavailable(format!("wallet sign-in is unavailable: {why}")))?;
    if let Some(list) = configured {
        let origins: Vec<_> = list
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .filter_map(origin_of)
            .collect();
        if origins.is_empty() {
            return Err(invalid(
                "public_origins names no origin (scheme://host[:port], comma-separated)",
            ));
        }
        return Ok(origins);
    }
    // An IPv4 client of a dual-stack (`[::]`) listener is seen as `::ffff:127.0.0.1`: the same machine.
    let from_loopback = client
        .and_then(|c| c.parse::<std::net::SocketAddr>().ok())
        .is_some_and(|a| a.ip().to_canonical().is_loopback());
    match origin_of(request_url) {
        Some((origin, domain)) if from_loopback && is_loopback(domain) => {
            Ok(vec![(origin, domain)])
        }
        _ => Err(invalid(
            "wallet sign-in needs this service's public origin: set the public_origins variable",
        )),
    }
}

/// Whether `authority` (`host[:port]`) names this machine: `localhost`, 127.0.0.0/8, `[::1]` or 127.0.0.0/8
/// mapped into IPv6 (`[::ffff:127.0.0.1]`, which the agent takes for loopback too: a fresh-user trial).
fn is_loopback(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// The chain id of `eip155:<chain id>`, by the network parser's rule (digits only, no sign, no leading zero),
/// so that one chain has one spelling.
fn chain_number(chain_id: &str) -> Result<u64, AuthError> {
    chain_id
        .starts_with("eip155:")
        .then(|| Network::parse(chain_id).ok())
        .flatten()
        .map(|n| n.chain_id().0)
        .filter(|n| *n > 0)
        .ok_or_else(|| invalid("chainId must be eip155:<chain id> (EVM wallets only)"))
}

impl SiwxProof {
    /// Decode the header value (standard or URL-safe base64 of the JSON proof).
    pub fn from_header(value: &str) -> Result<Self, AuthError> {
        let value = value.trim();
        if value.len() > MAX_HEADER_BYTES {
            return Err(invalid(format!("header exceeds {MAX_HEADER_BYTES} bytes")));
        }
        let raw = STANDARD
            .decode(value)
            .or_else(|_| URL_SAFE_NO_PAD.decode(value.trim_end_matches('=')))
            .map_err(|_| invalid("header is not base64"))?;
        // Not an object: said in the proof's words, not serde's (`expected struct SiwxProof with 15 elements`
        // for an array, a fresh-user trial). A field missing or mistyped is named by serde's message.
        let json: serde_json::Value = serde_json::from_slice(&raw)
            .map_err(|_| invalid("header is not a proof: its base64 is not JSON"))?;
        if !json.is_object() {
            return Err(invalid(
                "header is not a proof: expected a JSON object {domain, address, uri, version, chainId, type, \
                 nonce, issuedAt, signature, ...}",
            ));
        }
        serde_json::from_value(json).map_err(|e| invalid(format!("header is not a proof: {e}")))
    }

    /// The header value (standard base64 of the JSON).
    pub fn to_header(&self) -> String {
        STANDARD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    /// The EIP-4361 message these fields describe (what the wallet signed).
    pub fn message(&self) -> Result<String, AuthError> {
        let chain = chain_number(&self.chain_id)?;
        let mut lines = vec![
            format!(
                "{} wants you to sign in with your Ethereum account:",
                self.domain
            ),
            self.address.clone(),
            String::new(),
        ];
        if let Some(s) = &self.statement {
            lines.push(s.clone());
        }
        lines.push(String::new());
        lines.push(format!("URI: {}", self.uri));
        lines.push(format!("Version: {}", self.version));
        lines.push(format!("Chain ID: {chain}"));
        lines.push(format!("Nonce: {}", self.nonce));
        lines.push(format!("Issued At: {}", self.issued_at));
        if let Some(t) = &self.expiration_time {
            lines.push(format!("Expiration Time: {t}"));
        }
        if let Some(t) = &self.not_before {
            lines.push(format!("Not Before: {t}"));
        }
        if let Some(r) = &self.request_id {
            lines.push(format!("Request ID: {r}"));
        }
        if !self.resources.is_empty() {
            lines.push("Resources:".to_owned());
            lines.extend(self.resources.iter().map(|r| format!("- {r}")));
        }
        Ok(lines.join("\n"))
    }

    /// [`Self::verify`] for a service reached at any of `origins` (`(origin, domain)` pairs,
    /// [`expected_origins`]) on the route `path` at `now`: the signer for the first that passes, else the
    /// first's refusal.
    pub fn verify_for(
        &self,
        origins: &[(&str, &str)],
        path: &str,
        now: u64,
    ) -> Result<Verified, AuthError> {
        let mut first_refusal = None;
        for &(origin, domain) in origins {
            match self.verify(&Expect {
                domain,
                origin,
                path: Some(path),
                now,
            }) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    first_refusal.get_or_insert(e);
                }
            }
        }
        Err(first_refusal.unwrap_or(AuthError::Missing))
    }

    /// Every check of the module docs; the signer if all pass.
    pub fn verify(&self, expect: &Expect<'_>) -> Result<Verified, AuthError> {
        if self.version != "1" {
            return Err(invalid("version must be \"1\""));
        }
        if self.kind != "eip191" {
            return Err(invalid("type must be eip191 (EVM wallets only)"));
        }
        chain_number(&self.chain_id)?;
        if !(8..=64).contains(&self.nonce.len())
            || !self.nonce.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(invalid("nonce must be 8-64 letters and digits"));
        }
        let multi_line = |s: &str| s.contains('\n') || s.contains('\r');
        if [&self.domain, &self.uri, &self.address, &self.issued_at]
            .into_iter()
            .chain(&self.statement)
            .chain(&self.request_id)
            .chain(&self.resources)
            .any(|s| multi_line(s))
        {
            return Err(invalid("fields must be single lines"));
        }
        let address = parse_address(&self.address)
            .map_err(|_| invalid("address must be a 0x-prefixed 20-byte EVM address"))?;
        if self.domain != expect.domain {
            return Err(invalid(format!(
                "domain must be this server's host, {}",
                expect.domain
            )));
        }
        let origin = expect.origin.trim_end_matches('/');
        let rest = self.uri.strip_prefix(origin);
        if !rest.is_some_and(|r| r.is_empty() || r.starts_with('/')) {
            return Err(invalid(format!("uri must start with {origin}")));
        }
        if let (Some(want), Some(rest)) = (expect.path, rest) {
            let signed = rest.split(['?', '#']).next().unwrap_or_default();
            let signed = if signed.is_empty() { "/" } else { signed };
            if signed != want {
                return Err(invalid(format!(
                    "uri must name the route it is used on, {origin}{want}"
                )));
            }
        }
        let issued = parse_time("issuedAt", &self.issued_at)?;
        if issued > expect.now.saturating_add(CLOCK_SKEW_SECS) {
            return Err(invalid("issuedAt is in the future"));
        }
        let mut expires_at = issued.saturating_add(MAX_AGE_SECS);
        if let Some(t) = &self.expiration_time {
            expires_at = expires_at.min(parse_time("expirationTime", t)?);
        }
        if expect.now >= expires_at {
            return Err(invalid(format!(
                "the proof has expired (proofs live at most {MAX_AGE_SECS} s from issuedAt)"
            )));
        }
        if let Some(t) = &self.not_before
            && parse_time("notBefore", t)? > expect.now
        {
            return Err(invalid("notBefore is in the future"));
        }
        let sig = hex::decode(self.signature.trim_start_matches("0x"))
            .map_err(|_| invalid("signature is not hex"))?;
        let hash = eip191_hash_message(self.message()?);
        let signer = recover_signer(hash, &sig).map_err(|e| invalid(format!("signature: {e}")))?;
        if signer != address {
            return Err(invalid(
                "the signature is not the address's (smart-contract wallets are not supported)",
            ));
        }
        Ok(Verified {
            address,
            nonce: self.nonce.clone(),
            expires_at,
        })
    }
}

/// What a client signs: the server's challenge fields.
#[derive(Debug, Clone)]
pub struct Challenge<'a> {
    /// Server host (`host[:port]`).
    pub domain: &'a str,
    /// The resource URI.
    pub uri: &'a str,
    /// EVM chain id of the wallet.
    pub chain_id: u64,
    /// 8–64 letters and digits.
    pub nonce: &'a str,
    /// Unix seconds.
    pub issued_at: u64,
    /// Lifetime in seconds (at most [`MAX_AGE_SECS`] is honoured).
    pub expires_in: u64,
    /// Optional human-readable statement.
    pub statement: Option<&'a str>,
}

/// Sign `challenge` with `key` (agents, tests): the proof to send in the header.
pub fn sign(key: &SigningKey, challenge: &Challenge<'_>) -> Result<SiwxProof, AuthError> {
    let address = address_of(key.verifying_key()).to_checksum(None);
    let mut proof = SiwxProof {
        domain: challenge.domain.to_owned(),
        address,
        statement: challenge.statement.map(str::to_owned),
        uri: challenge.uri.to_owned(),
        version: "1".to_owned(),
        chain_id: format!("eip155:{}", challenge.chain_id),
        kind: eip191(),
        nonce: challenge.nonce.to_owned(),
        issued_at: format_time(challenge.issued_at),
        expiration_time: Some(format_time(challenge.issued_at + challenge.expires_in)),
        not_before: None,
        request_id: None,
        resources: Vec::new(),
        signature_scheme: Some(eip191()),
        signature: String::new(),
    };
    let sig = sign_prehash(key, eip191_hash_message(proof.message()?))
        .map_err(|e| invalid(format!("signing: {e}")))?;
    proof.signature = format!("0x{}", hex::encode(sig));
    Ok(proof)
}

#[cfg(test)]
#[path = "siwx_tests.rs"]
mod tests;
