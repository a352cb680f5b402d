//! Terminal download failures: which failed HandleDownloadProgressInfo notifications say a profile can never be
//! installed ([`terminal_failure`]), and what becomes of the SIM that paid for it ([`state_after_terminal`]).
//! Pure; dispatch applies it inside the SIM record's cell update (kernel `order::after_progress`), and the
//! gateway then gives the SIM's money back (kernel `usage::failed`).
//!
//! Invariants:
//! - **Only the SM-DP+'s own limits are terminal** (`reference/esim.md` §3: the SM-DP+ puts its profile in
//!   Error at its retry or confirmation-code limit, or when the order expires): `8.8.5/6.4` (download attempts
//!   exhausted), `8.2.7/6.4` (confirmation-code attempts exhausted) and `8.8.5/4.10` (the order's time to live
//!   expired), reported as `Failed` or `Expired` at a standard notification point (1–4). Every other failure —
//!   no status code, another code, a vendor-specific point (5 and above, or 0) — is one attempt the device may
//!   retry: the profile goes to Error and a later success moves on from it (`esim::profile_state_after`).
//!   A failed eligibility check names one device (`8.1.1`, `8.1.4`, …): another may still download a profile
//!   not linked to an EID, so it is not terminal here.
//! - **A profile the device installed is past failing**: a terminal report after Installed (or Enabled,
//!   Deleted) changes nothing, as any late failure report does.
//! - **Only a SIM in service fails** (active or suspended: delivered and paid): a pending SIM is its order's,
//!   which is still confirming it; a terminated or failed SIM takes nothing.

use super::es2::{NotificationPointStatus, StatusCode};
use super::sim::{ProfileState, SimState, retire_on_terminate};

/// The status codes that end a download for good (see the module's invariants).
pub const TERMINAL_DOWNLOAD_FAILURES: [StatusCode; 3] = [
    StatusCode::DOWNLOAD_ATTEMPTS_EXHAUSTED,
    StatusCode::CC_ATTEMPTS_EXHAUSTED,
    StatusCode::ORDER_EXPIRED,
];

/// The status code of a notification (at `point`, with `status`) that says the profile can never be installed,
/// or `None` when it does not (a success, a retryable failure, a vendor-specific point).
pub fn terminal_failure(point: u32, status: &NotificationPointStatus) -> Option<StatusCode> {
    if status.status.is_success() || !(1..=4).contains(&point) {
        return None;
    }
    let code = status.status_code_data.as_ref()?.code();
    TERMINAL_DOWNLOAD_FAILURES.contains(&code).then_some(code)
}

/// The state of a SIM in `state` whose profile is in `profile` (`None`: not reported yet) after a terminal
/// failure: [`SimState::Failed`] for a SIM in service whose profile was never installed, `None` (no change)
/// otherwise: a pending, terminated or failed SIM, or a profile installed, enabled or deleted.
pub fn state_after_terminal(state: SimState, profile: Option<ProfileState>) -> Option<SimState> {
    // "Never installed" is what a terminate retires at the SM-DP+ for: the same profile states.
    (matches!(state, SimState::Active | SimState::Suspended) && retire_on_terminate(profile))
        .then_some(SimState::Failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::esim::es2::{ExecutionStatus, FunctionExecutionStatus, StatusCodeData};
    use ProfileState as P;
    use SimState as S;

    fn status(status: ExecutionStatus, code: Option<(&str, &str)>) -> NotificationPointStatus {
        FunctionExecutionStatus {
            status,
            status_code_data: code.map(|(s, r)| StatusCodeData {
                subject_code: s.to_owned(),
                reason_code: r.to_owned(),
                subject_identifier: None,
                message: None,
            }),
        }
    }

    #[test]
    fn the_sm_dp_limits_are_terminal_at_every_standard_point() {
        for (s, r) in [("8.8.5", "6.4"), ("8.2.7", "6.4"), ("8.8.5", "4.10")] {
            for point in 1..=4 {
                for st in [ExecutionStatus::Failed, ExecutionStatus::Expired] {
                    assert_eq!(
                        terminal_failure(point, &status(st, Some((s, r)))),
                        Some(StatusCode {
                            subject: s.to_owned().into(),
                            reason: r.to_owned().into(),
                        }),
                        "{s}/{r} at {point} {st:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn other_failures_successes_and_vendor_points_are_not_terminal() {
        use ExecutionStatus::{ExecutedSuccess, ExecutedWithWarning, Expired, Failed};
        let cases = [
            // Retryable: no code, another code, an eligibility code naming one device.
            (3, status(Failed, None)),
            (3, status(Expired, None)),
            (2, status(Failed, Some(("8.2.7", "2.1")))),
            (1, status(Failed, Some(("8.1.4", "6.1")))),
            (1, status(Failed, Some(("8.1.1", "3.10")))),
            (4, status(Failed, Some(("1.2", "4.2")))),
            (3, status(Failed, Some(("8.8.5", "6.3")))),
            // A terminal code at a vendor-specific or unknown point says nothing about the download.
            (0, status(Failed, Some(("8.8.5", "6.4")))),
            (5, status(Failed, Some(("8.8.5", "6.4")))),
            (101, status(Expired, Some(("8.8.5", "4.10")))),
            // A success (a warning carrying the code) is no failure.
            (3, status(ExecutedSuccess, None)),
            (4, status(ExecutedWithWarning, Some(("8.8.5", "6.4")))),
        ];
        for (point, st) in cases {
            assert_eq!(terminal_failure(point, &st), None, "{point} {st:?}");
        }
    }

    #[test]
    fn a_sim_in_service_whose_profile_never_installed_fails() {
        for state in [S::Active, S::Suspended] {
            for profile in [None, Some(P::Released), Some(P::Downloaded), Some(P::Error)] {
                assert_eq!(
                    state_after_terminal(state, profile),
                    Some(S::Failed),
                    "{state:?} {profile:?}"
                );
            }
            // Installed (or further): a late failure report cannot undo it.
            for profile in [P::Installed, P::Enabled, P::Deleted] {
                assert_eq!(state_after_terminal(state, Some(profile)), None);
            }
        }
        // A pending SIM is its order's; a terminated or failed one takes nothing.
        for state in [S::Pending, S::Terminated, S::Failed] {
            for profile in [None, Some(P::Released), Some(P::Error)] {
                assert_eq!(state_after_terminal(state, profile), None, "{state:?}");
            }
        }
    }
}
