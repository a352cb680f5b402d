//! Lifecycle state machines, pure: the SIM as our customers see it ([`SimState`], changed by [`SimAction`]s),
//! and the profile as the SM-DP+ reports it ([`ProfileState`], advanced by HandleDownloadProgressInfo
//! notifications through [`profile_state_after`]). Both serialise as lower-case strings.

use serde::{Deserialize, Serialize};

use super::es2::ExecutionStatus;

/// A SIM's service state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SimState {
    /// Ordered, not yet in service.
    Pending,
    /// In service.
    Active,
    /// Temporarily out of service.
    Suspended,
    /// Permanently out of service.
    Terminated,
    /// Provisioning failed; nothing more can happen to it.
    Failed,
}

/// A customer's request to change a SIM's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SimAction {
    /// Active → Suspended.
    Suspend,
    /// Suspended → Active.
    Resume,
    /// Pending, Active or Suspended → Terminated.
    Terminate,
}

/// An action the current state does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot {action:?} a SIM that is {from:?}")]
pub struct InvalidTransition {
    /// The state the SIM is in.
    pub from: SimState,
    /// The refused action.
    pub action: SimAction,
}

impl SimState {
    /// The state after `action`. Repeating an action (suspending a suspended SIM) is refused too, so callers
    /// can tell a no-op from a change; Terminated and Failed accept nothing.
    pub fn apply(self, action: SimAction) -> Result<SimState, InvalidTransition> {
        use SimAction as A;
        use SimState as S;
        match (self, action) {
            (S::Active, A::Suspend) => Ok(S::Suspended),
            (S::Suspended, A::Resume) => Ok(S::Active),
            (S::Pending | S::Active | S::Suspended, A::Terminate) => Ok(S::Terminated),
            (from, action) => Err(InvalidTransition { from, action }),
        }
    }
}

/// A profile's state at the SM-DP+ and on the device, as far as we learn it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProfileState {
    /// Released for download (ConfirmOrder with `releaseFlag`, or ReleaseProfile).
    Released,
    /// The Bound Profile Package reached the device.
    Downloaded,
    /// Installed on the eUICC.
    Installed,
    /// Enabled on the device (learned from the device or eIM, not from ES2+).
    Enabled,
    /// Deleted from the eUICC.
    Deleted,
    /// Download or installation failed, or the order expired; terminal.
    Error,
}

impl ProfileState {
    /// Position on the forward path; `None` for the terminal [`ProfileState::Error`].
    fn rank(self) -> Option<u8> {
        match self {
            Self::Released => Some(0),
            Self::Downloaded => Some(1),
            Self::Installed => Some(2),
            Self::Enabled => Some(3),
            Self::Deleted => Some(4),
            Self::Error => None,
        }
    }
}

/// The profile state after a HandleDownloadProgressInfo notification, or `None` when the state does not change.
///
/// - Success (`Executed-Success` or `-WithWarning`) at point 3 (BPP download) → Downloaded, at 4 (installation)
///   → Installed, at 5 (deleted; vendor-specific †) → Deleted; points 1 and 2 and unknown points change nothing.
/// - `Failed` or `Expired` at any point → Error, unless the profile is already Installed or further: a late
///   failure report cannot undo a completed installation.
/// - States never move backwards (a delayed point-3 report after Installed is ignored) and Error is terminal.
pub fn profile_state_after(
    current: ProfileState,
    notification_point_id: u32,
    status: ExecutionStatus,
) -> Option<ProfileState> {
    let rank = current.rank()?;
    let next = if status.is_success() {
        match notification_point_id {
            3 => ProfileState::Downloaded,
            4 => ProfileState::Installed,
            5 => ProfileState::Deleted,
            _ => return None,
        }
    } else if rank < 2 {
        return Some(ProfileState::Error);
    } else {
        return None;
    };
    (next.rank()? > rank).then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ExecutionStatus::{
        ExecutedSuccess as Executed, ExecutedWithWarning as Warning, Expired, Failed,
    };
    use ProfileState as P;
    use SimAction as A;
    use SimState as S;

    const ALL_STATES: [S; 5] = [
        S::Pending,
        S::Active,
        S::Suspended,
        S::Terminated,
        S::Failed,
    ];
    const ALL_ACTIONS: [A; 3] = [A::Suspend, A::Resume, A::Terminate];

    #[test]
    fn sim_transitions() {
        let allowed = [
            (S::Active, A::Suspend, S::Suspended),
            (S::Suspended, A::Resume, S::Active),
            (S::Pending, A::Terminate, S::Terminated),
            (S::Active, A::Terminate, S::Terminated),
            (S::Suspended, A::Terminate, S::Terminated),
        ];
        for from in ALL_STATES {
            for action in ALL_ACTIONS {
                let expected = allowed
                    .iter()
                    .find(|(f, a, _)| *f == from && *a == action)
                    .map(|(_, _, to)| *to)
                    .ok_or(InvalidTransition { from, action });
                assert_eq!(from.apply(action), expected, "{from:?} {action:?}");
            }
        }
        assert_eq!(
            S::Terminated.apply(A::Resume).unwrap_err().to_string(),
            "cannot Resume a SIM that is Terminated"
        );
    }

    #[test]
    fn serde_is_lowercase() {
        assert_eq!(
            serde_json::to_string(&S::Suspended).unwrap(),
            "\"suspended\""
        );
        assert_eq!(
            serde_json::to_string(&A::Terminate).unwrap(),
            "\"terminate\""
        );
        assert_eq!(
            serde_json::to_string(&P::Downloaded).unwrap(),
            "\"downloaded\""
        );
        assert_eq!(serde_json::from_str::<P>("\"error\"").unwrap(), P::Error);
        assert!(serde_json::from_str::<S>("\"Active\"").is_err());
    }

    #[test]
    fn profile_progress() {
        assert_eq!(profile_state_after(P::Released, 1, Executed), None);
        assert_eq!(profile_state_after(P::Released, 2, Executed), None);
        assert_eq!(
            profile_state_after(P::Released, 3, Executed),
            Some(P::Downloaded)
        );
        assert_eq!(
            profile_state_after(P::Downloaded, 4, Warning),
            Some(P::Installed)
        );
        assert_eq!(
            profile_state_after(P::Released, 4, Executed),
            Some(P::Installed)
        );
        assert_eq!(
            profile_state_after(P::Installed, 5, Executed),
            Some(P::Deleted)
        );
        assert_eq!(profile_state_after(P::Released, 99, Executed), None);
    }

    #[test]
    fn profile_failures_and_no_backwards_moves() {
        assert_eq!(profile_state_after(P::Released, 1, Failed), Some(P::Error));
        assert_eq!(
            profile_state_after(P::Downloaded, 4, Failed),
            Some(P::Error)
        );
        assert_eq!(profile_state_after(P::Released, 3, Expired), Some(P::Error));
        assert_eq!(profile_state_after(P::Installed, 3, Failed), None);
        assert_eq!(profile_state_after(P::Installed, 3, Executed), None);
        assert_eq!(profile_state_after(P::Enabled, 4, Executed), None);
        assert_eq!(profile_state_after(P::Downloaded, 3, Executed), None);
        assert_eq!(profile_state_after(P::Error, 4, Executed), None);
        assert_eq!(profile_state_after(P::Error, 1, Failed), None);
    }
}
