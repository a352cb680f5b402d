//! The payer's signature on a tx-hash proof: without it, anyone who sees a USDC transfer to `payTo` (in the
//! mempool or a block) could make an invoice naming the transfer's sender as `payer` and present the hash
//! before the sender does. The payer signs, with EIP-191 `personal_sign`, the [`message`] binding the invoice
//! id to the transaction hash; [`check`] recovers the signer and requires the invoice's payer. The receipt
//! check (`receipt::check_tx_hash_proof`) then requires the transfer to come from that payer, so only the wallet
//! that paid can spend its transfer, and only on the invoice it signed for.
//!
//! Only 65-byte ECDSA signatures are taken (an externally owned payer), low-s as everywhere else.

use alloy_primitives::{Address, B256, eip191_hash_message};

use super::quantity;
use crate::x402::exact::{SignatureError, recover_signer};

/// Why a tx-hash proof's signature does not vouch for its payer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofSignatureError {
    /// Not `0x` + hex.
    #[error("the signature is not 0x-prefixed hex: {0}")]
    Hex(String),
    /// Not a recoverable 65-byte signature.
    #[error("{0}")]
    Signature(#[from] SignatureError),
    /// Someone else signed.
    #[error("the proof is signed by {signer}, not by the invoice's payer {payer}")]
    NotPayer {
        /// Who signed.
        signer: Address,
        /// Who must have.
        payer: Address,
    },
}

/// The text the payer signs (EIP-191 `personal_sign`) to present `tx` as the payment of `invoice_id`:
///
/// ```text
/// esim402 payment proof
/// invoice: <invoice id as issued>
/// transaction: 0x<hash, lower-case hex>
/// ```
pub fn message(invoice_id: &str, tx: B256) -> String {
    format!("esim402 payment proof\ninvoice: {invoice_id}\ntransaction: {tx:#x}")
}

/// The digest the payer's key signs: EIP-191 over [`message`].
pub fn digest(invoice_id: &str, tx: B256) -> B256 {
    eip191_hash_message(message(invoice_id, tx))
}

/// Check that `signature` (0x + 130 hex) is `payer`'s over [`message`]`(invoice_id, tx)`.
pub fn check(
    invoice_id: &str,
    tx: B256,
    signature: &str,
    payer: Address,
) -> Result<(), ProofSignatureError> {
    let bytes = quantity::parse_data(signature.trim())
        .map_err(|e| ProofSignatureError::Hex(e.to_string()))?;
    let signer = recover_signer(digest(invoice_id, tx), &bytes)?;
    if signer == payer {
        Ok(())
    } else {
        Err(ProofSignatureError::NotPayer { signer, payer })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x402::exact::{address_of, sign_prehash};
    use alloy_primitives::keccak256;
    use k256::ecdsa::SigningKey;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_slice(&[n; 32]).unwrap()
    }

    fn sign(key: &SigningKey, invoice_id: &str, tx: B256) -> String {
        format!(
            "0x{}",
            alloy_primitives::hex::encode(sign_prehash(key, digest(invoice_id, tx)).unwrap())
        )
    }

    #[test]
    fn the_message_binds_the_invoice_and_the_transaction() {
        let tx = keccak256("t");
        assert_eq!(
            message("inv_1", tx),
            format!("esim402 payment proof\ninvoice: inv_1\ntransaction: {tx:#x}")
        );
        assert_ne!(digest("inv_1", tx), digest("inv_2", tx));
        assert_ne!(digest("inv_1", tx), digest("inv_1", keccak256("u")));
    }

    #[test]
    fn only_the_payers_signature_over_this_invoice_and_transaction_passes() {
        let (payer, thief) = (key(7), key(8));
        let payer_address = address_of(payer.verifying_key());
        let tx = keccak256("the payer's transfer");
        let good = sign(&payer, "inv_1", tx);
        assert_eq!(check("inv_1", tx, &good, payer_address), Ok(()));
        assert_eq!(
            check("inv_1", tx, &format!(" {good} "), payer_address),
            Ok(())
        );

        // Another wallet's signature, or the payer's over another invoice or transaction, does not pass.
        let stolen = sign(&thief, "inv_1", tx);
        assert_eq!(
            check("inv_1", tx, &stolen, payer_address),
            Err(ProofSignatureError::NotPayer {
                signer: address_of(thief.verifying_key()),
                payer: payer_address
            })
        );
        for (invoice, hash) in [("inv_2", tx), ("inv_1", keccak256("another transfer"))] {
            assert!(matches!(
                check(invoice, hash, &good, payer_address),
                Err(ProofSignatureError::NotPayer { .. })
            ));
        }
    }

    #[test]
    fn malformed_signatures_are_named() {
        let tx = keccak256("t");
        let payer = Address::repeat_byte(1);
        assert!(matches!(
            check("inv_1", tx, "zz", payer),
            Err(ProofSignatureError::Hex(_))
        ));
        assert_eq!(
            check("inv_1", tx, "0x1234", payer),
            Err(ProofSignatureError::Signature(SignatureError::Length(2)))
        );
        let mut v = [0u8; 65];
        v[64] = 29;
        assert_eq!(
            check(
                "inv_1",
                tx,
                &format!("0x{}", alloy_primitives::hex::encode(v)),
                payer
            ),
            Err(ProofSignatureError::Signature(SignatureError::V(29)))
        );
    }
}
