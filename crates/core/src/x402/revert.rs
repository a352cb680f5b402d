//! What a settlement's revert says: the reason a facilitator answers when the node refuses the
//! `transferWithAuthorization` it was about to send as reverting (its gas estimate), read from the revert text
//! as the references read it (TS `parseEip3009TransferError` in `@x402/evm` `exact/facilitator`, Python
//! `parse_eip3009_transfer_error` in `mechanisms/evm/exact/eip3009_utils.py`), and that text, bounded, as the
//! answer's `errorMessage` (the TS facilitator sends its error's message there).

use super::reason::InvalidReason;

/// The longest `errorMessage` taken from a node's revert text, in characters.
pub const MAX_REVERT_MESSAGE_CHARS: usize = 300;

/// The reason for a settlement transfer that would revert, from the node's revert text (case-insensitive,
/// the first rule that matches, in the TS reference's order; each rule's words in order on one line, as its
/// regular expressions match them):
///
/// | the text says | reason |
/// |---|---|
/// | "authorization … expired" / "authorization … valid before" / `AuthorizationExpired` | `…_authorization_valid_before` |
/// | "authorization … not … valid" / `AuthorizationNotYetValid` | `…_authorization_valid_after` |
/// | "authorization … used" / `AuthorizationAlreadyUsed` / `AuthorizationUsedOrCanceled` | `…_nonce_already_used` |
/// | "transfer … exceeds … balance" / "insufficient … balance" / `ERC20InsufficientBalance` | `…_insufficient_balance` |
/// | "invalid … signature" / `SignerMismatch` / `InvalidSignatureV` / `InvalidSignatureS` | `invalid_exact_evm_signature` |
/// | anything else | `invalid_exact_evm_transaction_failed` (TS; Python's `transaction_failed` is its family) |
pub fn transfer_revert_reason(revert: &str) -> InvalidReason {
    use InvalidReason as R;
    let text = revert.to_lowercase();
    let says = |words: &[&str]| text.lines().any(|line| in_order(line, words));
    let names = |name: &str| text.contains(name);
    if says(&["authorization", "expired"])
        || says(&["authorization", "valid before"])
        || names("authorizationexpired")
    {
        R::ValidBefore
    } else if says(&["authorization", "not", "valid"]) || names("authorizationnotyetvalid") {
        R::ValidAfter
    } else if says(&["authorization", "used"])
        || names("authorizationalreadyused")
        || names("authorizationusedorcanceled")
    {
        R::NonceAlreadyUsed
    } else if says(&["transfer", "exceeds", "balance"])
        || says(&["insufficient", "balance"])
        || names("erc20insufficientbalance")
    {
        R::InsufficientBalance
    } else if says(&["invalid", "signature"])
        || names("signermismatch")
        || names("invalidsignaturev")
        || names("invalidsignatures")
    {
        R::Signature
    } else {
        R::TransactionFailed
    }
}

/// The node's revert text as an `errorMessage`: control characters as spaces, trimmed, at most
/// [`MAX_REVERT_MESSAGE_CHARS`] characters (a node's text, never anything of ours such as an endpoint).
pub fn revert_message(revert: &str) -> String {
    let clean: String = revert
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let clean = clean.trim();
    match clean.char_indices().nth(MAX_REVERT_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}…", &clean[..cut]),
        None => clean.to_owned(),
    }
}

/// Whether `words` occur in `line` in this order, without overlapping (a regular expression `a.*b.*c`).
fn in_order(line: &str, words: &[&str]) -> bool {
    let mut rest = line;
    for word in words {
        match rest.find(word) {
            Some(at) => rest = &rest[at + word.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use InvalidReason as R;

    /// The revert texts of USDC (FiatToken), OpenZeppelin's ERC-20 and our test token, and what the references
    /// answer for each.
    #[test]
    fn revert_texts_map_to_the_references_reasons() {
        let table: &[(&str, InvalidReason)] = &[
            (
                "execution reverted: FiatTokenV2: authorization is expired",
                R::ValidBefore,
            ),
            (
                "execution reverted: authorization is expired",
                R::ValidBefore,
            ),
            (
                "execution reverted: custom error AuthorizationExpired()",
                R::ValidBefore,
            ),
            (
                "execution reverted: FiatTokenV2: authorization is not yet valid",
                R::ValidAfter,
            ),
            ("AuthorizationNotYetValid", R::ValidAfter),
            (
                "execution reverted: FiatTokenV2: authorization is used or canceled",
                R::NonceAlreadyUsed,
            ),
            (
                "Execution Reverted: Authorization Is Used Or Canceled",
                R::NonceAlreadyUsed,
            ),
            ("AuthorizationAlreadyUsed", R::NonceAlreadyUsed),
            ("AuthorizationUsedOrCanceled", R::NonceAlreadyUsed),
            (
                "execution reverted: ERC20: transfer amount exceeds balance",
                R::InsufficientBalance,
            ),
            (
                "execution reverted: insufficient balance",
                R::InsufficientBalance,
            ),
            (
                "execution reverted: ERC20InsufficientBalance(0x70997970…, 0, 10000)",
                R::InsufficientBalance,
            ),
            (
                "execution reverted: FiatTokenV2: invalid signature",
                R::Signature,
            ),
            (
                "execution reverted: EIP2612: invalid signature",
                R::Signature,
            ),
            ("SignerMismatch", R::Signature),
            ("execution reverted", R::TransactionFailed),
            (
                "execution reverted: FiatToken: account is blacklisted",
                R::TransactionFailed,
            ),
            ("", R::TransactionFailed),
            // The words of one rule on two lines are not that rule (the references' `.` stops at a line end).
            ("authorization\nis expired", R::TransactionFailed),
            // Words out of order are not the rule either.
            ("expired authorization", R::TransactionFailed),
        ];
        for (text, want) in table {
            assert_eq!(transfer_revert_reason(text), *want, "{text:?}");
        }
    }

    /// The first rule that matches decides, in the references' order.
    #[test]
    fn the_first_matching_rule_wins() {
        assert_eq!(
            transfer_revert_reason("authorization is expired; invalid signature"),
            R::ValidBefore
        );
        assert_eq!(
            transfer_revert_reason("authorization is used; transfer amount exceeds balance"),
            R::NonceAlreadyUsed
        );
    }

    #[test]
    fn revert_messages_are_clean_and_bounded() {
        assert_eq!(
            revert_message("  execution reverted: FiatTokenV2: authorization is expired\n"),
            "execution reverted: FiatTokenV2: authorization is expired"
        );
        assert_eq!(revert_message("a\nb\tc"), "a b c");
        let long = "é".repeat(MAX_REVERT_MESSAGE_CHARS + 10);
        let cut = revert_message(&long);
        assert_eq!(cut.chars().count(), MAX_REVERT_MESSAGE_CHARS + 1);
        assert!(cut.ends_with('…'));
        let exact = "x".repeat(MAX_REVERT_MESSAGE_CHARS);
        assert_eq!(revert_message(&exact), exact);
    }
}
