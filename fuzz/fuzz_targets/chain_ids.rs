//! The scalar values clients and peers send: networks (CAIP-2 or v1 names), addresses, USDC amounts (decimal and
//! atomic), invoice ids, region and carrier slugs, payment identifiers, decimal and hex quantities. Values with a
//! printed form must parse back equal from it.
#![no_main]

use esim402_core::chain::parse_address;
use esim402_core::evm::quantity;
use esim402_core::ids::{CarrierId, InvoiceId, Region};
use esim402_core::x402::exact::parse_decimal_u256;
use esim402_core::x402::payment_id::PaymentId;
use esim402_core::{Network, UsdcAmount};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(network) = Network::parse(text) {
        assert_eq!(Network::parse(&network.to_string()), Ok(network));
        if let Some(name) = network.v1_name() {
            assert_eq!(Network::parse(name), Ok(network));
        }
    }
    if let Ok(address) = parse_address(text) {
        assert_eq!(parse_address(&address.to_checksum(None)), Ok(address));
    }
    if let Ok(amount) = UsdcAmount::parse_usdc(text) {
        assert_eq!(UsdcAmount::parse_usdc(&amount.to_string()), Ok(amount));
    }
    if let Ok(amount) = UsdcAmount::parse_atomic(text) {
        assert_eq!(
            UsdcAmount::parse_atomic(&amount.micros().to_string()),
            Ok(amount)
        );
    }
    if let Ok(id) = InvoiceId::parse(text) {
        assert_eq!(InvoiceId::parse(id.as_str()).as_ref(), Ok(&id));
        let _ = id.token();
    }
    if let Ok(region) = Region::parse(text) {
        assert_eq!(Region::parse(region.as_str()).as_ref(), Ok(&region));
    }
    if let Ok(carrier) = CarrierId::parse(text) {
        assert_eq!(CarrierId::parse(carrier.as_str()).as_ref(), Ok(&carrier));
    }
    let _ = PaymentId::parse(text);
    if let Some(n) = parse_decimal_u256(text) {
        assert_eq!(parse_decimal_u256(&n.to_string()), Some(n));
    }
    let _ = quantity::parse_u64(text);
    let _ = quantity::parse_u128(text);
    let _ = quantity::parse_data(text);
    let _ = quantity::parse_address(text);
    if let Ok(n) = quantity::parse_u256(text) {
        assert_eq!(quantity::parse_u256(&quantity::encode_quantity(n)), Ok(n));
    }
});
