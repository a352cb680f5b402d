//! Which keys open an invoice id, and which one seals it. An id lives long after its invoice is paid (payment
//! resumes, refunds, the activation-code route, `GET /v1/invoices/{id}` re-open it), so changing the key must
//! not orphan the ids sealed under the old one: a [`Keyring`] seals with its current key only and opens with
//! every key it holds.
//!
//! Rules a reader must not break:
//! - New ids are sealed with the current key alone: the configured `invoice_secret` bound to the store's salt
//!   (`InvoiceKey::derive_for_store`), else the store's generated key (random per store already).
//! - A configured secret is never used without the store's salt for sealing: two deployments with separate
//!   stores that share a secret must not accept each other's ids (a payment is claimed once per store). The
//!   un-salted key of each configured secret only opens ids sealed before ids were bound to a store.
//! - Keys that only open: the un-salted forms, every `invoice_secret_previous` secret (salted and un-salted),
//!   and the store's generated key when a secret is configured (so moving from the generated key to a
//!   configured one orphans no payment already recorded; the next rule says why only those).
//! - An id that only a legacy key opens ([`Opened::legacy`]) is taken only for a payment this store already
//!   holds a record of (resumes, refunds, reads of a paid invoice), never for a new payment
//!   ([`Opened::ours_at`]). The legacy keys: the un-salted forms (not bound to this store: another deployment
//!   sharing the secret opens their ids too, and a tx-hash transfer mined in time counts however late it is
//!   proven, so "until it expires" would not bound a second purchase elsewhere), and the store's generated key
//!   once `invoice_secret` is set (it sits in the store in plain form: whoever read the store, a backup say,
//!   could seal ids under it with any terms and any `pay_to`; setting a secret must end that).
//! - `invoice_secret` may not contain a comma ([`Secrets::parse`]): rotated, it moves into
//!   `invoice_secret_previous`, a comma-separated list that would split it. A secret with a comma set before
//!   that rule is rotated out with the list's other form, a JSON array of strings (a value starting with `[`):
//!   a new `invoice_secret` without a comma, and `invoice_secret_previous = ["the,old,secret"]`, so its ids
//!   still open. Every entry needs [`MIN_SECRET_LEN`] characters either way, and no error ever shows a value.
//!
//! ```
//! use esim402_core::invoice::keyring::{Keyring, Secrets};
//!
//! let salt = [9; 32];
//! let old = Secrets::parse(Some("the first secret and long enough"), None).unwrap();
//! let new = Secrets::parse(
//!     Some("the second secret and long enough"),
//!     Some("the first secret and long enough"),
//! )
//! .unwrap();
//! let old = Keyring::configured(&old, Some(&salt), None).unwrap();
//! let new = Keyring::configured(&new, Some(&salt), None).unwrap();
//! assert!(new.opens_with(old.current()));
//! assert!(!old.opens_with(new.current()));
//! ```

use std::borrow::Cow;

use super::InvoiceStatus;
use super::token::{self, InvoiceKey, Terms, TokenError};
use crate::ids::InvoiceId;

/// The least length of a configured invoice secret (`invoice_secret` and each `invoice_secret_previous`).
pub const MIN_SECRET_LEN: usize = 16;

/// The configured invoice secrets, checked (never shown: `Debug` prints how many there are).
#[derive(Clone, Default)]
pub struct Secrets<'a> {
    /// `invoice_secret`: seals new ids (bound to the store).
    pub current: Option<&'a str>,
    /// `invoice_secret_previous`: open only (owned when given as a JSON array, whose strings may be escaped).
    pub previous: Vec<Cow<'a, str>>,
}

impl std::fmt::Debug for Secrets<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Secrets(current: {}, previous: {})",
            self.current.is_some(),
            self.previous.len()
        )
    }
}

/// A configured secret that cannot be used: the variable and why (never its value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("variable {variable} is invalid: {reason}")]
pub struct SecretError {
    /// The variable.
    pub variable: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl<'a> Secrets<'a> {
    /// `invoice_secret` and `invoice_secret_previous`, as read (`None`: unset or blank). Every secret needs
    /// [`MIN_SECRET_LEN`] characters. `invoice_secret_previous` is a comma-separated list (blank entries are
    /// skipped), or, starting with `[`, a JSON array of strings (each trimmed, as the secret was when it was
    /// read): the one way to list a secret with a comma in it. Errors name the variable and the rule (and the
    /// entry), never any part of a value.
    pub fn parse(current: Option<&'a str>, previous: Option<&'a str>) -> Result<Self, SecretError> {
        if current.is_some_and(|s| s.len() < MIN_SECRET_LEN) {
            return Err(SecretError {
                variable: "invoice_secret",
                reason: format!("use at least {MIN_SECRET_LEN} characters"),
            });
        }
        // Rotating moves the secret into `invoice_secret_previous`, usually a comma-separated list: a comma would
        // split it into two keys there, neither the one its ids were sealed under. A secret with a comma set
        // before this check is rotated out with the list's JSON form.
        if current.is_some_and(|s| s.contains(',')) {
            return Err(SecretError {
                variable: "invoice_secret",
                reason: "must not contain a comma (a comma-separated invoice_secret_previous would split it \
                         when rotated). To rotate such a secret out without orphaning its ids: set \
                         invoice_secret to a new secret without a comma, and list the old one in \
                         invoice_secret_previous as a JSON array of strings, e.g. [\"<old secret>\"]"
                    .into(),
            });
        }
        let previous = previous.map(str::trim).unwrap_or_default();
        let entries: Vec<Cow<'a, str>> = if previous.starts_with('[') {
            json_list(previous)?
        } else {
            previous
                .split(',')
                .map(|e| Cow::Borrowed(e.trim()))
                .collect()
        };
        let mut listed = Vec::new();
        for (i, entry) in entries.into_iter().enumerate() {
            if entry.is_empty() {
                continue;
            }
            if entry.len() < MIN_SECRET_LEN {
                return Err(SecretError {
                    variable: "invoice_secret_previous",
                    reason: format!(
                        "entry {} is shorter than {MIN_SECRET_LEN} characters",
                        i + 1
                    ),
                });
            }
            listed.push(entry);
        }
        Ok(Self {
            current,
            previous: listed,
        })
    }

    /// No secret configured: the store's generated key alone, no salt needed.
    pub fn is_empty(&self) -> bool {
        self.current.is_none() && self.previous.is_empty()
    }
}

/// `invoice_secret_previous` in its JSON form: an array of strings, each trimmed. A value that is not one is
/// refused naming the rule only: a parser's message may quote part of the value, a secret.
fn json_list(value: &str) -> Result<Vec<Cow<'_, str>>, SecretError> {
    let entries: Vec<String> = serde_json::from_str(value).map_err(|_| SecretError {
        variable: "invoice_secret_previous",
        reason: "starts with '[' but is not a JSON array of strings (write it as \
                 [\"<secret>\", \"<secret>\"], or as a comma-separated list not starting with '[')"
            .into(),
    })?;
    Ok(entries
        .into_iter()
        .map(|e| Cow::Owned(e.trim().to_owned()))
        .collect())
}

/// Why a keyring cannot be made (a bug of its caller, not a configuration error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    /// No `invoice_secret` and no generated key: nothing to seal with.
    #[error("no invoice key: neither invoice_secret nor a generated key")]
    NoKey,
    /// Secrets configured, but the store's salt was not given.
    #[error("the store's invoice salt is needed with configured invoice secrets")]
    NoSalt,
}

/// The keys of a deployment: the first seals, all open. Its `Debug` shows only how many.
#[derive(Clone)]
pub struct Keyring {
    /// Keys bound to the store, the current one first: never empty.
    bound: Vec<InvoiceKey>,
    /// Keys that open only for a payment the store holds (module docs: the un-salted forms of configured
    /// secrets, the generated key once a secret is set). No key is in either list twice.
    legacy: Vec<InvoiceKey>,
}

/// An id opened by a [`Keyring`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// Its terms.
    pub terms: Terms,
    /// Only a legacy key opened it (module docs): good for a payment this store holds a record of, not for a
    /// new one.
    pub legacy: bool,
}

impl Opened {
    /// Whether this store takes the id while its payment record says `status`: an id a legacy key opened only
    /// for a payment the store holds (pending, paid or refunded), not for an open or expired invoice (nothing
    /// held, or an attempt released with nothing taken; nor for one a failed payment ended, as before that
    /// status existed). Asked on every read and again inside the claim of a
    /// payment, so a record released between the two cannot let a new payment in.
    pub fn ours_at(&self, status: InvoiceStatus) -> bool {
        !self.legacy
            || matches!(
                status,
                InvoiceStatus::Pending | InvoiceStatus::Paid | InvoiceStatus::Refunded
            )
    }
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keyring({} keys)", self.bound.len() + self.legacy.len())
    }
}

impl Keyring {
    /// A keyring of `current` alone.
    pub fn new(current: InvoiceKey) -> Self {
        Self {
            bound: vec![current],
            legacy: Vec::new(),
        }
    }

    /// Also open ids sealed under `key`, a legacy key ([`Opened::legacy`]).
    fn accept_legacy(&mut self, key: InvoiceKey) {
        if !self.opens_with(&key) {
            self.legacy.push(key);
        }
    }

    /// Also open ids sealed under `key` (once: a key already held is not added again).
    pub fn accept(&mut self, key: InvoiceKey) {
        if !self.opens_with(&key) {
            self.bound.push(key);
        }
    }

    /// The deployment's keyring (module docs): `salt` is the store's (needed when any secret is configured),
    /// `generated` the store's generated key if it exists (needed when `invoice_secret` is not set).
    pub fn configured(
        secrets: &Secrets<'_>,
        salt: Option<&[u8; 32]>,
        generated: Option<InvoiceKey>,
    ) -> Result<Self, KeyringError> {
        let salt = match salt {
            Some(salt) => salt,
            None if secrets.is_empty() => &[0; 32],
            None => return Err(KeyringError::NoSalt),
        };
        let mut ring = match (secrets.current, &generated) {
            (Some(secret), _) => {
                let mut ring = Self::new(InvoiceKey::derive_for_store(secret.as_bytes(), salt));
                ring.accept_legacy(InvoiceKey::derive(secret.as_bytes()));
                ring
            }
            (None, Some(key)) => Self::new(key.clone()),
            (None, None) => return Err(KeyringError::NoKey),
        };
        for secret in &secrets.previous {
            ring.accept(InvoiceKey::derive_for_store(secret.as_bytes(), salt));
            ring.accept_legacy(InvoiceKey::derive(secret.as_bytes()));
        }
        // With a secret set the generated key only opens what a payment of this store is recorded for (module
        // docs: it is readable from the store); without one it is the current key already and adds nothing.
        if let Some(key) = generated {
            ring.accept_legacy(key);
        }
        Ok(ring)
    }

    /// The key new ids are sealed with.
    pub fn current(&self) -> &InvoiceKey {
        &self.bound[0]
    }

    /// Whether ids sealed under `key` open.
    pub fn opens_with(&self, key: &InvoiceKey) -> bool {
        self.bound.contains(key) || self.legacy.contains(key)
    }

    /// Seal `terms` under the current key.
    pub fn seal(&self, terms: &Terms) -> Result<InvoiceId, TokenError> {
        token::seal(terms, self.current())
    }

    /// Open an id sealed under any key of the ring, saying whether only a legacy key did ([`Opened::legacy`]).
    pub fn open(&self, id: &InvoiceId) -> Result<Opened, TokenError> {
        match token::open_any(id, &self.bound) {
            Ok(terms) => Ok(Opened {
                terms,
                legacy: false,
            }),
            Err(TokenError::BadMac) if !self.legacy.is_empty() => token::open_any(id, &self.legacy)
                .map(|terms| Opened {
                    terms,
                    legacy: true,
                }),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
#[path = "keyring_tests.rs"]
mod tests;
