//! EIP-1559 transactions signed with the facilitator's secp256k1 key.
//!
//! [`SigningKey`] wraps the 32-byte private key; its `Debug` shows only the address, and it has no `Display`,
//! so it cannot end up in a log by accident. [`sign_eip1559`] signs an [`Eip1559Tx`] (RFC 6979 deterministic
//! nonce, low-s, as every Ethereum node requires) and returns the raw bytes for `eth_sendRawTransaction`
//! (`0x02 ‖ rlp(fields, y_parity, r, s)`) and the transaction hash (`keccak256(raw)`).
//!
//! RLP, the signing hash and the 2718 envelope come from `alloy-consensus` (`TxEip1559`), not from hand-written
//! encoding; signing is `k256`.

use std::fmt;

use alloy_consensus::{SignableTransaction, TxEip1559};
use alloy_primitives::{Address, B256, Bytes, Signature, TxKind, U256, keccak256};
use k256::ecdsa;
use k256::elliptic_curve::zeroize::Zeroize;

use crate::chain::ChainId;

/// Why a private key was refused. The messages never contain key material.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not 64 hex digits (optionally `0x`-prefixed).
    #[error("private key must be 32 bytes of hex")]
    Malformed,
    /// Zero, or not below the secp256k1 group order.
    #[error("private key is not a valid secp256k1 scalar")]
    OutOfRange,
}

/// Why a transaction could not be signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    /// The tip exceeds the fee cap; nodes reject such transactions.
    #[error("max_priority_fee_per_gas {tip} exceeds max_fee_per_gas {cap}")]
    TipAboveFeeCap {
        /// `max_priority_fee_per_gas`.
        tip: u128,
        /// `max_fee_per_gas`.
        cap: u128,
    },
    /// The signer failed (practically unreachable with a valid key).
    #[error("signing failed")]
    Signing,
}

/// A secp256k1 private key. Zeroed on drop; `Debug` prints only the address.
#[derive(Clone)]
pub struct SigningKey {
    inner: ecdsa::SigningKey,
    address: Address,
}

impl SigningKey {
    /// A key from its 32 big-endian bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        let inner =
            ecdsa::SigningKey::from_bytes(bytes.into()).map_err(|_| KeyError::OutOfRange)?;
        let address = public_key_address(inner.verifying_key());
        Ok(Self { inner, address })
    }

    /// A key from 64 hex digits, `0x` optional, surrounding whitespace ignored (as a Spin variable holds it).
    pub fn from_hex(s: &str) -> Result<Self, KeyError> {
        let s = s.trim();
        let digits = s.strip_prefix("0x").unwrap_or(s);
        let mut bytes = [0u8; 32];
        let decoded = hex::decode_to_slice(digits, &mut bytes).map_err(|_| KeyError::Malformed);
        let key = decoded.and_then(|()| Self::from_bytes(&bytes));
        bytes.zeroize();
        key
    }

    /// The key's Ethereum address.
    pub fn address(&self) -> Address {
        self.address
    }

    /// Sign a 32-byte prehash: RFC 6979 deterministic, low-s, with the y-parity needed for recovery.
    pub fn sign_hash(&self, hash: &B256) -> Result<Signature, TxError> {
        let (sig, recid) = self
            .inner
            .sign_prehash_recoverable(hash.as_slice())
            .map_err(|_| TxError::Signing)?;
        let (r, s) = sig.split_bytes();
        Ok(Signature::from_scalars_and_parity(
            B256::from_slice(&r),
            B256::from_slice(&s),
            recid.is_y_odd(),
        ))
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("address", &self.address)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// `keccak256(uncompressed public key without its 0x04 prefix)[12..]`.
fn public_key_address(key: &ecdsa::VerifyingKey) -> Address {
    let point = key.to_encoded_point(false);
    let hash = keccak256(&point.as_bytes()[1..]);
    Address::from_slice(&hash[12..])
}

/// The Ethereum address of `key`.
pub fn address_of(key: &SigningKey) -> Address {
    key.address()
}

/// An unsigned EIP-1559 (type 2) transaction with an empty access list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eip1559Tx {
    /// Chain the transaction is valid on (EIP-155 replay protection).
    pub chain_id: ChainId,
    /// The sender's nonce.
    pub nonce: u64,
    /// Tip per gas, in wei.
    pub max_priority_fee_per_gas: u128,
    /// Fee cap per gas (base fee + tip at most), in wei.
    pub max_fee_per_gas: u128,
    /// Gas limit.
    pub gas_limit: u64,
    /// The called address (contract creation is not supported).
    pub to: Address,
    /// Wei sent along.
    pub value: U256,
    /// Calldata.
    pub input: Bytes,
}

impl Eip1559Tx {
    fn to_alloy(&self) -> TxEip1559 {
        TxEip1559 {
            chain_id: self.chain_id.0,
            nonce: self.nonce,
            gas_limit: self.gas_limit,
            max_fee_per_gas: self.max_fee_per_gas,
            max_priority_fee_per_gas: self.max_priority_fee_per_gas,
            to: TxKind::Call(self.to),
            value: self.value,
            access_list: Default::default(),
            input: self.input.clone(),
        }
    }

    /// The hash the sender signs: `keccak256(0x02 ‖ rlp(fields))`.
    pub fn signing_hash(&self) -> B256 {
        self.to_alloy().signature_hash()
    }
}

/// A signed transaction, ready for `eth_sendRawTransaction`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedTx {
    /// `0x02 ‖ rlp(chain_id, nonce, tip, fee cap, gas, to, value, input, access_list, y_parity, r, s)`.
    pub raw: Bytes,
    /// The transaction hash, `keccak256(raw)`: what the node returns and receipts are looked up by.
    pub hash: B256,
    /// The signer.
    pub from: Address,
    /// The nonce used (to release it if the broadcast never happens).
    pub nonce: u64,
}

/// Sign `tx` with `key`. Deterministic: the same inputs give the same bytes.
pub fn sign_eip1559(tx: &Eip1559Tx, key: &SigningKey) -> Result<SignedTx, TxError> {
    if tx.max_priority_fee_per_gas > tx.max_fee_per_gas {
        return Err(TxError::TipAboveFeeCap {
            tip: tx.max_priority_fee_per_gas,
            cap: tx.max_fee_per_gas,
        });
    }
    let unsigned = tx.to_alloy();
    let signature = key.sign_hash(&unsigned.signature_hash())?;
    let signed = unsigned.into_signed(signature);
    let mut raw = Vec::with_capacity(signed.eip2718_encoded_length());
    signed.eip2718_encode(&mut raw);
    Ok(SignedTx {
        hash: *signed.hash(),
        raw: raw.into(),
        from: key.address(),
        nonce: tx.nonce,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_consensus::Signed;
    use alloy_primitives::{address, bytes, hex};

    /// Anvil's (and Hardhat's) well-known dev account #0.
    const ANVIL_KEY_0: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
    const ANVIL_ADDR_0: Address = address!("0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266");

    fn key() -> SigningKey {
        SigningKey::from_hex(ANVIL_KEY_0).unwrap()
    }

    fn usdc_transfer() -> Eip1559Tx {
        Eip1559Tx {
            chain_id: ChainId(31337),
            nonce: 7,
            max_priority_fee_per_gas: 1_000_000_000,
            max_fee_per_gas: 3_000_000_000,
            gas_limit: 100_000,
            to: address!("0x5FbDB2315678afecb367f032d93F642f64180aa3"),
            value: U256::ZERO,
            // transfer(0x7099…79C8, 10000)
            input: bytes!(
                "a9059cbb00000000000000000000000070997970c51812dc3a010c7d01b50e0d17dc79c80000000000000000000000000000000000000000000000000000000000002710"
            ),
        }
    }

    #[test]
    fn anvil_account_0_address() {
        assert_eq!(address_of(&key()), ANVIL_ADDR_0);
        let no_prefix = SigningKey::from_hex(&format!(" {}\n", &ANVIL_KEY_0[2..])).unwrap();
        assert_eq!(no_prefix.address(), ANVIL_ADDR_0);
    }

    #[test]
    fn debug_never_shows_the_key() {
        let shown = format!("{:?} {:#?}", key(), key());
        assert!(
            !shown.to_lowercase().contains("ac0974bec39a17e3"),
            "{shown}"
        );
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn bad_keys_are_refused() {
        assert_eq!(
            SigningKey::from_hex("0x1234").unwrap_err(),
            KeyError::Malformed
        );
        assert_eq!(
            SigningKey::from_hex(&"zz".repeat(32)).unwrap_err(),
            KeyError::Malformed
        );
        assert_eq!(
            SigningKey::from_bytes(&[0; 32]).unwrap_err(),
            KeyError::OutOfRange
        );
        assert_eq!(
            SigningKey::from_bytes(&[0xff; 32]).unwrap_err(),
            KeyError::OutOfRange
        );
    }

    #[test]
    fn signed_tx_decodes_recovers_to_the_signer_and_hashes_to_its_bytes() {
        let tx = usdc_transfer();
        let signed = sign_eip1559(&tx, &key()).unwrap();
        assert_eq!(signed.raw[0], 0x02);
        assert_eq!(signed.hash, keccak256(&signed.raw));
        assert_eq!(signed.from, ANVIL_ADDR_0);

        let mut buf = &signed.raw[..];
        let decoded = Signed::<TxEip1559>::eip2718_decode(&mut buf).unwrap();
        assert!(buf.is_empty());
        assert_eq!(decoded.tx(), &tx.to_alloy());
        assert_eq!(*decoded.hash(), signed.hash);
        assert_eq!(decoded.recover_signer().unwrap(), ANVIL_ADDR_0);
        assert_eq!(decoded.signature_hash(), tx.signing_hash());

        let s = decoded.signature().s();
        let half_n = U256::from_be_slice(&hex!(
            "7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0"
        ));
        assert!(s <= half_n, "low-s");
    }

    /// Produced by anvil 1.7.1 (`eth_signTransaction` from dev account #0 with the fields of [`usdc_transfer`]),
    /// an independent signer (alloy-signer, RFC 6979): equal bytes mean equal encoding *and* equal signature.
    const ANVIL_SIGNED: &str = "0x02f8b2827a6907843b9aca0084b2d05e00830186a0945fbdb2315678afecb367f032d93f642f64180aa380b844a9059cbb00000000000000000000000070997970c51812dc3a010c7d01b50e0d17dc79c80000000000000000000000000000000000000000000000000000000000002710c001a067ffa6db97a4400839d74aedd1068e7c1375bfb5231306064948cf589bbc1ef2a00bda6d64222b188e784ae62ca62d7a526b001bac070459ca2898309d7703edea";

    #[test]
    fn matches_anvils_signature_byte_for_byte() {
        let signed = sign_eip1559(&usdc_transfer(), &key()).unwrap();
        assert_eq!(format!("0x{}", hex::encode(&signed.raw)), ANVIL_SIGNED);
    }

    #[test]
    fn signing_is_deterministic_and_covers_every_field() {
        let tx = usdc_transfer();
        let a = sign_eip1559(&tx, &key()).unwrap();
        assert_eq!(a, sign_eip1559(&tx, &key()).unwrap());
        let variants = [
            Eip1559Tx {
                chain_id: ChainId(1),
                ..tx.clone()
            },
            Eip1559Tx {
                nonce: 8,
                ..tx.clone()
            },
            Eip1559Tx {
                max_priority_fee_per_gas: 2,
                ..tx.clone()
            },
            Eip1559Tx {
                max_fee_per_gas: 3_000_000_001,
                ..tx.clone()
            },
            Eip1559Tx {
                gas_limit: 1,
                ..tx.clone()
            },
            Eip1559Tx {
                to: ANVIL_ADDR_0,
                ..tx.clone()
            },
            Eip1559Tx {
                value: U256::from(1),
                ..tx.clone()
            },
            Eip1559Tx {
                input: Bytes::new(),
                ..tx.clone()
            },
        ];
        for v in variants {
            assert_ne!(v.signing_hash(), tx.signing_hash(), "{v:?}");
            assert_ne!(sign_eip1559(&v, &key()).unwrap().hash, a.hash);
        }
    }

    #[test]
    fn tip_above_cap_is_refused() {
        let tx = Eip1559Tx {
            max_priority_fee_per_gas: 5,
            max_fee_per_gas: 4,
            ..usdc_transfer()
        };
        assert_eq!(
            sign_eip1559(&tx, &key()),
            Err(TxError::TipAboveFeeCap { tip: 5, cap: 4 })
        );
    }
}
