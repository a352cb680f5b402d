//! ES2+ bodies (SGP.22 §6.5): the requests the simulated SM-DP+ receives and the responses the dispatcher
//! receives from a carrier's SM-DP+. The first byte picks the message, the rest is its JSON; whatever parses
//! must survive a JSON round trip, and a failed response's status code maps to a dispatch action.
#![no_main]

use esim402_core::esim::es2::{
    CancelOrderRequest, ConfirmOrderRequest, ConfirmOrderResponse, DownloadOrderRequest,
    DownloadOrderResponse, HeaderOnlyResponse, ReleaseProfileRequest, ResponseHeader, action,
    is_supported_admin_protocol,
};
use esim402_fuzz::json_roundtrip;
use libfuzzer_sys::fuzz_target;

fn dispatch(header: &ResponseHeader) {
    if let Some(code) = header.failure() {
        let _ = action(&code);
        let _ = code.to_string();
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    match selector % 8 {
        0 => drop(json_roundtrip::<DownloadOrderRequest>(body)),
        1 => drop(json_roundtrip::<ConfirmOrderRequest>(body)),
        2 => drop(json_roundtrip::<CancelOrderRequest>(body)),
        3 => drop(json_roundtrip::<ReleaseProfileRequest>(body)),
        4 => {
            if let Some(r) = json_roundtrip::<DownloadOrderResponse>(body) {
                dispatch(&r.header);
            }
        }
        5 => {
            if let Some(r) = json_roundtrip::<ConfirmOrderResponse>(body) {
                dispatch(&r.header);
            }
        }
        6 => {
            if let Some(r) = json_roundtrip::<HeaderOnlyResponse>(body) {
                dispatch(&r.header);
            }
        }
        _ => {
            if let Ok(value) = std::str::from_utf8(body) {
                let _ = is_supported_admin_protocol(value);
            }
        }
    }
});
