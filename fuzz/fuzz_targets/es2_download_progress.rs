//! The HandleDownloadProgressInfo callback (SGP.22 §5.3.5), which any SM-DP+ can POST to the dispatcher: parsed
//! as the dispatch component parses it, round-tripped, and its notification applied to every profile state.
#![no_main]

use esim402_core::esim::es2::HandleDownloadProgressInfoRequest;
use esim402_core::esim::{ProfileState, profile_state_after};
use esim402_fuzz::assert_json_roundtrip;
use libfuzzer_sys::fuzz_target;

const STATES: [ProfileState; 6] = [
    ProfileState::Released,
    ProfileState::Downloaded,
    ProfileState::Installed,
    ProfileState::Enabled,
    ProfileState::Deleted,
    ProfileState::Error,
];

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(info) = serde_json::from_str::<HandleDownloadProgressInfoRequest>(body) else {
        return;
    };
    assert_json_roundtrip(&info);
    for state in STATES {
        let _ = profile_state_after(
            state,
            info.notification_point_id,
            info.notification_point_status.status,
        );
    }
});
