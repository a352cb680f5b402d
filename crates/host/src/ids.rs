//! The identifier rules Spin applies to manifest names (`spin_serde`'s `KebabId`, `SnakeId` and `LowerSnakeId`),
//! so that an app this host loads is one `spin up` loads too: component ids are kebab-case, variable names lower
//! snake case, key-value store labels either.
//!
//! An id is words joined by one delimiter (`-` or `_`); each word is non-empty, starts with an ASCII letter, holds
//! only ASCII letters and digits, and is all lowercase or all UPPERCASE (lowercase only for `LowerSnakeId`).
//! These are the rules the Spin 4.1 binary enforces, observed on it: `a-1` and `a_1` are refused there although
//! some Spin sources let a later word start with a digit. The messages are Spin's.

use thiserror::Error;

/// Why a name is not a valid Spin identifier.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdError {
    /// The name is empty.
    #[error("empty")]
    Empty,
    /// The other delimiter was used (`foo_bar` as a component id).
    #[error("words must be separated with {expected:?}, not {found:?}")]
    WrongDelimiter {
        /// The delimiter this kind of id uses.
        expected: char,
        /// The one found.
        found: char,
    },
    /// Two delimiters in a row, or one at an end.
    #[error("{delim:?}-separated words must not be empty")]
    EmptyWord {
        /// The delimiter.
        delim: char,
    },
    /// A word starts with something other than an ASCII letter.
    #[error("{delim:?}-separated words must start with an ASCII letter; got {found:?}")]
    BadStart {
        /// The delimiter.
        delim: char,
        /// The word's first character.
        found: char,
    },
    /// A word holds something other than ASCII letters and digits.
    #[error("{delim:?}-separated words may only contain alphanumeric ASCII; got {found:?}")]
    BadChar {
        /// The delimiter.
        delim: char,
        /// The offending character.
        found: char,
    },
    /// A word mixes cases (`Foo`).
    #[error("{delim:?}-separated words must be all lowercase or all UPPERCASE; got {word:?}")]
    MixedCase {
        /// The delimiter.
        delim: char,
        /// The word.
        word: String,
    },
    /// An UPPERCASE word where only lowercase is allowed.
    #[error("Lower-case identifiers must be all lowercase; got {id:?}")]
    NotLowercase {
        /// The whole id.
        id: String,
    },
}

/// Check `id` against Spin's rule for ids delimited by `delim`, lowercase-only when `lower`.
fn check(id: &str, delim: char, lower: bool) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    let other = if delim == '-' { '_' } else { '-' };
    if id.contains(other) {
        return Err(IdError::WrongDelimiter {
            expected: delim,
            found: other,
        });
    }
    for word in id.split(delim) {
        let mut chars = word.chars();
        let Some(first) = chars.next() else {
            return Err(IdError::EmptyWord { delim });
        };
        if !first.is_ascii_alphabetic() {
            return Err(IdError::BadStart {
                delim,
                found: first,
            });
        }
        let upper = first.is_ascii_uppercase();
        for c in chars {
            if c.is_ascii_digit() {
                continue;
            }
            if !c.is_ascii_alphanumeric() {
                return Err(IdError::BadChar { delim, found: c });
            }
            if c.is_ascii_uppercase() != upper {
                return Err(IdError::MixedCase {
                    delim,
                    word: word.to_owned(),
                });
            }
        }
        if lower && upper {
            return Err(IdError::NotLowercase { id: id.to_owned() });
        }
    }
    Ok(())
}

/// Spin's `KebabId`: component ids (`gateway`, `my-component`).
pub fn kebab(id: &str) -> Result<(), IdError> {
    check(id, '-', false)
}

/// Spin's `SnakeId` (`my_store`).
pub fn snake(id: &str) -> Result<(), IdError> {
    check(id, '_', false)
}

/// Spin's `LowerSnakeId`: application and component variable names (`rpc_url`).
pub fn lower_snake(id: &str) -> Result<(), IdError> {
    check(id, '_', true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each case as the Spin 4.1 binary answered it (`spin up` on a manifest using the name).
    #[test]
    fn spin_4_1_accepts_and_refuses_these() {
        for ok in ["foo", "foo-bar", "FOO", "FOO-bar", "a1"] {
            kebab(ok).unwrap();
        }
        for (bad, why) in [
            ("a-1", "must start with an ASCII letter; got '1'"),
            ("1a", "must start with an ASCII letter"),
            ("a:b", "may only contain alphanumeric ASCII; got ':'"),
            ("a--b", "must not be empty"),
            ("a-", "must not be empty"),
            ("-a", "must not be empty"),
            ("foo_bar", "words must be separated with '-', not '_'"),
            ("", "empty"),
            ("Foo", "must be all lowercase or all UPPERCASE; got \"Foo\""),
        ] {
            let e = kebab(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        for ok in ["a", "a_b", "a1", "a_b1"] {
            lower_snake(ok).unwrap();
        }
        for (bad, why) in [
            ("a_1", "must start with an ASCII letter; got '1'"),
            ("A", "Lower-case identifiers must be all lowercase"),
            ("A_B", "Lower-case identifiers must be all lowercase"),
            ("a__b", "must not be empty"),
            ("a_", "must not be empty"),
            ("_a", "must not be empty"),
            ("a:b", "alphanumeric ASCII"),
            ("aB", "all lowercase or all UPPERCASE"),
            ("a-b", "words must be separated with '_', not '-'"),
        ] {
            let e = lower_snake(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        snake("MY_STORE").unwrap();
        assert!(snake("a_1").is_err());
    }
}
