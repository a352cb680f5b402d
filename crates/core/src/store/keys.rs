//! The key map: every key-value prefix the app writes, the one component that writes it, and what it holds.
//! Components build their keys with these functions only, so a reader can see here who owns what.
//!
//! | prefix | written by | holds |
//! |---|---|---|
//! | `invoice/<invoice id>` | invoices | the payment record of an invoice a payment arrived for (`crate::paid`): the single truth of "paid" |
//! | `payid/<id>` | invoices | a `payment-identifier` id bound to one request |
//! | `x402/v1/<payment fingerprint>` | invoices | the invoice a v1 payment (which names none) was first presented for |
//! | `ledger/<shard>/head`, `ledger/<shard>/entry/<seq>`, `ledger/outbox` | invoices | the hash-chained ledger (`crate::ledger`), one chain per shard; events whose append failed (`crate::ledger::outbox`) |
//! | `secret/invoice-key` | invoices | the invoice MAC key generated on first use when `invoice_secret` is not set |
//! | `secret/invoice-salt` | invoices | the store's random salt, generated on first use when an invoice secret is configured: binds the keys derived from `invoice_secret` to this store (`crate::invoice::keyring`) |
//! | `x402/nonce/<caip2>/<from>/<nonce>` | verifier | the settlement of one EIP-3009 authorization (`crate::settlement`) |
//! | `x402/hold/<caip2>/<asset>/<payer>` | verifier | the holds on a payer's balance while its `exact` payments are driven (`crate::hold`) |
//! | `x402/reported/<caip2>/<from>/<nonce>` | verifier | claim counter: the one `success:true` the facilitator API reports for that authorization's settlement |
//! | `txhash/<hash>` | verifier | a transaction that paid something: a tx-hash proof's claim, or our settlement |
//! | `signer/<caip2>/<address>/nonce` | verifier | the account nonces of a key we sign with (`crate::evm::NonceState`) |
//! | `refund/<invoice id>`, `refund/queue` | verifier | refunds owed and paid (`crate::refund`), and the ids not paid yet |
//! | `order/<invoice id>` | dispatch | the journal of one paid carrier order (`crate::order`) |
//! | `sim/<iccid>` | dispatch | a SIM, with its owner and access-token hash (`crate::auth::SimAccess`) |
//! | `owner/<address>/n`, `owner/<address>/s/<slot>` | dispatch | the owner index (listing, `crate::order::owner_index`): counter of slots reserved, and one slot per SIM a wallet paid for (its ICCID, a plain value) |
//! | `owner/<address>` | dispatch | the same index as one list, from before it had slots: read, never written |
//! | `auth/nonce/<address>/<nonce>` | dispatch | claim counter: a sign-in nonce used (once per wallet) |
//! | `secret/sim-token-key` | dispatch | the access-token key generated on first use when `access_token_secret` is not set |
//! | `cleanup/queue` | dispatch | carrier-side work still owed (cancels) |
//! | `cleanup/resend/<invoice id>`, `cleanup/recheck` | dispatch | an `exact` activation's paid request kept while its order is pending, and the invoices of such orders withdrawn unpaid, whose requests the operator's cleanup run sends again (`crate::order::recheck`) |
//! | `cleanup/unrefunded` | dispatch | terminated SIMs whose unused-data refunds could not be recorded, which the operator's cleanup run records (`crate::store::retry`) |
//! | `cleanup/parked` | dispatch | pending orders to withdraw once their payment can no longer settle (`crate::order::parked`) |
//! | `balance/<iccid>` | metering | a SIM's account: credits with data left, used-up credits folded, suspension flag, closing refunds (`crate::usage::account`) |
//! | `meter/<iccid>/used` | metering | counter: bytes charged to the SIM (only ever incremented) |
//! | `meter/<iccid>/grant` | metering | the SIM's outstanding quota grants: the used-counter mark they reach and when they lapse (`crate::usage::grant`) |
//! | `meter/<iccid>/unsigned` | metering | counter: disputes kept without a valid carrier signature (capped) |
//! | `meter/<iccid>/chunks`, `meter/<iccid>/c/<chunk>` | metering | counter and chunks of the SIM's receipt log: one chunk per batch per SIM (`crate::usage::ingest::LogEntry`, `log_position`) |
//! | `rcpt/<carrier>/<iccid>/<session>/<seq>`, `rcpt/x/<digest>` | metering | claim counters: a receipt charged (per SIM), a dispute kept (once each) |
//! | `rcpt/<carrier>/<session>/<seq>` | metering | claim counters of receipts charged before claims were per SIM: read, never written (`crate::usage::claim`) |
//! | `rcpt/claims-per-sim-since` | metering | when per-SIM receipt claims started (unix seconds, written once): which receipts are also checked against their legacy claim (`crate::usage::claim`) |
//! | `meter/held/<shard>/n`, `meter/held/<shard>/<slot>`, `meter/held/<shard>/low` | metering | a charged receipt batch's ledger events until the ledger has them (`crate::usage::held`): the ring's counter, one write-once slot per batch (deleted once logged), and the recovery's low-water mark |
//!
//! Every value but the counters and the write-once slots (an owner index's slots, a receipt log's chunks, held
//! batch events: each written once, by the `increment` that reserved it) is a versioned cell (`super::cell`), so each such key
//! also has `<key>@v<n>` claim counters and `<key>@v<n>.<token>` proposals beside it.

use crate::chain::Address;
use crate::ids::InvoiceId;

/// An invoice's payment record.
pub fn invoice(id: &str) -> String {
    format!("invoice/{id}")
}

/// A `payment-identifier` binding.
pub fn payment_id(id: &str) -> String {
    format!("payid/{id}")
}

/// The invoice a v1 payment was first presented for.
pub fn v1_payment(fingerprint: &str) -> String {
    format!("x402/v1/{fingerprint}")
}

/// A ledger shard's head.
pub fn ledger_head(shard: u16) -> String {
    format!("ledger/{shard:02}/head")
}

/// The ledger's outbox: events whose append failed, until a drain appends them (`crate::ledger::outbox`).
pub fn ledger_outbox() -> String {
    "ledger/outbox".to_owned()
}

/// A ledger shard's entry `seq`.
pub fn ledger_entry(shard: u16, seq: u64) -> String {
    format!("ledger/{shard:02}/entry/{seq:020}")
}

/// The generated invoice MAC key.
pub const INVOICE_KEY: &str = "secret/invoice-key";

/// The store's invoice salt: the invoice keys derived from configured secrets are bound to it.
pub const INVOICE_SALT: &str = "secret/invoice-salt";

/// The settlement of one authorization on `caip2`.
pub fn authorization(caip2: &str, from: Address, nonce: alloy_primitives::B256) -> String {
    format!("x402/nonce/{caip2}/{from:#x}/{nonce}")
}

/// The claim of the one success reported for the settlement recorded under `authorization_key` (an
/// [`authorization`] key).
pub fn settlement_reported(authorization_key: &str) -> String {
    let named = authorization_key
        .strip_prefix("x402/nonce/")
        .unwrap_or(authorization_key);
    format!("x402/reported/{named}")
}

/// The authorizer and nonce an [`authorization`] key names, if `key` is one.
pub fn parse_authorization(key: &str) -> Option<(Address, alloy_primitives::B256)> {
    let mut parts = key.strip_prefix("x402/nonce/")?.split('/');
    let (_network, from, nonce) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    Some((from.parse().ok()?, nonce.parse().ok()?))
}

/// The holds on `payer`'s balance of `asset` on `caip2` while its `exact` payments are driven
/// (`crate::hold`).
pub fn holds(caip2: &str, asset: Address, payer: Address) -> String {
    format!("x402/hold/{caip2}/{asset:#x}/{payer:#x}")
}

/// A transaction that paid something.
pub fn txhash(hash: alloy_primitives::B256) -> String {
    format!("txhash/{hash}")
}

/// The nonce state of a key we sign with.
pub fn signer_nonces(caip2: &str, signer: Address) -> String {
    format!("signer/{caip2}/{signer:#x}/nonce")
}

/// A refund.
pub fn refund(invoice: &InvoiceId) -> String {
    format!("refund/{invoice}")
}

/// The ids of refunds not paid yet.
pub const REFUND_QUEUE: &str = "refund/queue";

/// Whether `key` is a refund record's (and not the queue's).
pub fn is_refund(key: &str) -> bool {
    key.starts_with("refund/") && key != REFUND_QUEUE
}

/// An order journal.
pub fn order(invoice_id: &str) -> String {
    format!("order/{invoice_id}")
}

/// A SIM.
pub fn sim(iccid: &str) -> String {
    format!("sim/{iccid}")
}

/// The claim of one sign-in nonce of one wallet.
pub fn auth_nonce(address: Address, nonce: &str) -> String {
    format!("auth/nonce/{address:#x}/{nonce}")
}

/// The generated access-token key.
pub const SIM_TOKEN_KEY: &str = "secret/sim-token-key";

/// The ICCIDs a wallet paid for, oldest first, as one list: the owner index before it had slots (read only).
pub fn owner_sims(address: Address) -> String {
    format!("owner/{address:#x}")
}

/// The counter of a wallet's owner index: slots reserved so far.
pub fn owner_slots(address: Address) -> String {
    format!("owner/{address:#x}/n")
}

/// One slot of a wallet's owner index: the ICCID of one SIM it paid for.
pub fn owner_slot(address: Address, slot: u64) -> String {
    format!("owner/{address:#x}/s/{slot}")
}

/// Carrier cleanups still owed.
pub const CLEANUP_QUEUE: &str = "cleanup/queue";

/// Pending orders to withdraw once their payment can no longer settle (`crate::order::parked::Parked`). A key
/// of its own, not items of [`CLEANUP_QUEUE`]: a dispatch of an earlier build could not read them.
pub const CLEANUP_PARKED: &str = "cleanup/parked";

/// Pending orders of payments whose money moved (tx-hash), withdrawn and owed back by the operator's cleanup run
/// only (`crate::order::parked::Parked::paid`). A key of its own: an earlier build, which rewrites
/// [`CLEANUP_PARKED`] whole, would drop their `paid` mark and withdraw them owing nothing.
pub const CLEANUP_PARKED_PAID: &str = "cleanup/parked-paid";

/// The invoices of `exact` activations withdrawn unpaid whose kept requests the cleanup run sends again
/// (`crate::order::recheck`).
pub const CLEANUP_RECHECK: &str = "cleanup/recheck";

/// Terminated SIMs (ICCIDs) whose unused-data refunds are not recorded yet: listed before the terminate, left
/// once the gateway recorded them (by the terminate's own call, or the operator's cleanup run).
pub const CLEANUP_UNREFUNDED: &str = "cleanup/unrefunded";

/// An `exact` activation's paid request kept while its order is pending (`crate::order::recheck::Resend`).
pub fn cleanup_resend(invoice: &str) -> String {
    format!("cleanup/resend/{invoice}")
}

/// A SIM's balance.
pub fn balance(iccid: &str) -> String {
    format!("balance/{iccid}")
}

/// The counter of bytes charged to a SIM.
pub fn meter_used(iccid: &str) -> String {
    format!("meter/{iccid}/used")
}

/// `meter/<iccid>/grant`: the SIM's outstanding quota grants (`crate::usage::grant::Reservation`).
pub fn meter_grant(iccid: &str) -> String {
    format!("meter/{iccid}/grant")
}

/// The counter of a SIM's receipt log: chunks reserved so far.
pub fn meter_chunks(iccid: &str) -> String {
    format!("meter/{iccid}/chunks")
}

/// The counter of a SIM's disputes without a valid carrier signature (capped, see
/// `crate::usage::receipt::MAX_UNSIGNED_DISPUTES_PER_SIM`).
pub fn meter_unsigned(iccid: &str) -> String {
    format!("meter/{iccid}/unsigned")
}

/// Chunk `chunk` (from 1) of a SIM's receipt log: the entries one batch added, as a JSON array.
pub fn meter_chunk(iccid: &str, chunk: u64) -> String {
    format!("meter/{iccid}/c/{chunk:012}")
}

/// The counter of a ring of held batch events (`crate::usage::held`): slots reserved so far.
pub fn meter_held_slots(shard: u16) -> String {
    format!("meter/held/{shard:02}/n")
}

/// One held slot: a charged batch's ledger events (`crate::usage::held::Held`), written once, deleted once
/// logged.
pub fn meter_held(slot: crate::usage::held::SlotId) -> String {
    format!("meter/held/{:02}/{:012}", slot.shard, slot.slot)
}

/// A ring's recovery record (`crate::usage::held::Recovery`).
pub fn meter_held_low(shard: u16) -> String {
    format!("meter/held/{shard:02}/low")
}

/// The claim of one receipt, by its dedup identity `(carrier, iccid, session, seq)` (`crate::usage::claim`).
pub fn receipt_claim(carrier: &str, iccid: &str, session: &str, seq: u64) -> String {
    format!("rcpt/{carrier}/{iccid}/{session}/{seq}")
}

/// The claim of one receipt charged before claims were per SIM, by `(carrier, session, seq)`: read, never
/// written (`crate::usage::claim`).
pub fn legacy_receipt_claim(carrier: &str, session: &str, seq: u64) -> String {
    format!("rcpt/{carrier}/{session}/{seq}")
}

/// When per-SIM receipt claims started in this store (a cell holding unix seconds, inserted once).
pub const RECEIPT_CLAIMS_SINCE: &str = "rcpt/claims-per-sim-since";

/// The claim of one disputed receipt, by its EIP-712 digest. A dispute refused before its signature was known
/// good (`signed == false`) claims apart from carrier-signed ones: a forged copy of a receipt (same fields, any
/// signature) must not take the claim of the carrier's own disputed receipt.
pub fn dispute_claim(digest: alloy_primitives::B256, signed: bool) -> String {
    if signed {
        format!("rcpt/x/{digest}")
    } else {
        format!("rcpt/xu/{digest}")
    }
}

#[cfg(test)]
mod tests {
    use alloy_primitives::B256;

    use super::*;

    #[test]
    fn authorization_keys_round_trip() {
        let from = Address::repeat_byte(0xab);
        let nonce = B256::repeat_byte(7);
        let key = authorization("eip155:31337", from, nonce);
        assert!(key.starts_with("x402/nonce/eip155:31337/0xabab"));
        assert_eq!(parse_authorization(&key), Some((from, nonce)));
        assert_eq!(parse_authorization("x402/nonce/a/b"), None);
        assert_eq!(parse_authorization(&format!("{key}/x")), None);
    }

    #[test]
    fn ledger_keys_sort_by_shard_then_seq() {
        assert!(ledger_entry(1, 9) < ledger_entry(1, 10));
        assert!(ledger_entry(1, 99_999) < ledger_entry(2, 0));
        assert_eq!(ledger_head(3), "ledger/03/head");
    }

    #[test]
    fn the_refund_queue_is_not_a_refund() {
        assert!(!is_refund(REFUND_QUEUE));
        assert!(is_refund("refund/inv_x.y"));
    }
}
