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
#[error("cannot {} a SIM that is {}", action.as_str(), from.as_str())]
pub struct InvalidTransition {
    /// The state the SIM is in.
    pub from: SimState,
    /// The refused action.
    pub action: SimAction,
}

impl SimAction {
    /// Its name on the wire (`suspend`, `resume`, `terminate`: the route's last segment).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Suspend => "suspend",
            Self::Resume => "resume",
            Self::Terminate => "terminate",
        }
    }
}

impl SimState {
    /// Its name on the wire (as the SIM's `state` field spells it).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Suspended => "suspended",
            Self::Terminated => "terminated",
            Self::Failed => "failed",
        }
    }

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

/// Why a SIM is suspended: its owner's word, metering's (the balance ran out), or both. Each party lifts only
/// its own hold, and the SIM is in service when neither holds it ([`owner_action`], [`balance_hold`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holds {
    /// The owner suspended it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub owner: bool,
    /// Metering suspended it: the balance ran out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub balance: bool,
    /// The epoch of the last balance hold applied (metering's account counts its hold changes): a change
    /// with an older epoch, arriving late, changes nothing, so the order in which they arrive does not matter.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub balance_epoch: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Holds {
    /// No hold, nothing applied yet.
    pub fn is_none(&self) -> bool {
        *self == Self::default()
    }

    /// The holds of a SIM in `state`: a SIM stored suspended before holds were kept is held by its owner.
    fn effective(self, state: SimState) -> Self {
        if state == SimState::Suspended && !self.owner && !self.balance {
            Self {
                owner: true,
                ..self
            }
        } else {
            self
        }
    }

    /// Whether the SIM's owner holds it (suspended by its owner, whatever the balance says).
    pub fn by_owner(self, state: SimState) -> bool {
        self.effective(state).owner
    }

    /// Whether metering holds the SIM for balance (its balance ran out; a top-up releases it).
    pub fn for_balance(self, state: SimState) -> bool {
        state == SimState::Suspended && self.effective(state).balance
    }

    fn state(self) -> SimState {
        if self.owner || self.balance {
            SimState::Suspended
        } else {
            SimState::Active
        }
    }
}

/// Why an owner's action was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HoldError {
    /// Not a transition the state allows.
    #[error(transparent)]
    Transition(#[from] InvalidTransition),
    /// Suspended because the balance ran out: a top-up resumes it, the owner cannot.
    #[error("the SIM is suspended until its balance is topped up")]
    BalanceHeld,
}

/// The owner's `action` on a SIM in `state` with `holds`: the state and holds after. Suspending puts the
/// owner's hold on (also on a SIM already suspended for balance), resuming lifts it (the SIM stays suspended
/// while the balance holds it); terminating is [`SimState::apply`].
pub fn owner_action(
    state: SimState,
    holds: Holds,
    action: SimAction,
) -> Result<(SimState, Holds), HoldError> {
    let h = holds.effective(state);
    let refused = || {
        HoldError::Transition(InvalidTransition {
            from: state,
            action,
        })
    };
    match (state, action) {
        (SimState::Active, SimAction::Suspend) | (SimState::Suspended, SimAction::Suspend)
            if !h.owner =>
        {
            let h = Holds { owner: true, ..h };
            Ok((h.state(), h))
        }
        (SimState::Suspended, SimAction::Resume) if h.owner => {
            let h = Holds { owner: false, ..h };
            Ok((h.state(), h))
        }
        (SimState::Suspended, SimAction::Resume) => Err(HoldError::BalanceHeld),
        (_, SimAction::Terminate) => Ok((state.apply(action)?, h)),
        _ => Err(refused()),
    }
}

/// Metering's balance hold (`hold`: on or off) of `epoch` on a SIM in `state` with `holds`: the state and holds
/// after, or `None` when it changes nothing (an epoch already applied or older, or a SIM not in service).
pub fn balance_hold(
    state: SimState,
    holds: Holds,
    hold: bool,
    epoch: u64,
) -> Option<(SimState, Holds)> {
    if epoch <= holds.balance_epoch || !matches!(state, SimState::Active | SimState::Suspended) {
        return None;
    }
    let h = Holds {
        balance: hold,
        balance_epoch: epoch,
        ..holds.effective(state)
    };
    Some((h.state(), h))
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
    /// The last download or installation attempt failed, or the order expired. Not terminal by itself: the
    /// SM-DP+ lets the device retry until its retry or confirmation-code limit (only then is its own profile
    /// in Error), so a later success moves on from here. A failure whose status code says that limit was
    /// reached (`crate::esim::failure`) fails the SIM too: then nothing moves it any more.
    Error,
}

impl ProfileState {
    /// Position on the forward path; [`ProfileState::Error`] (a failed attempt before installation) sits
    /// below every success, so any later success report moves on from it.
    const fn rank(self) -> u8 {
        match self {
            Self::Error => 0,
            Self::Released => 1,
            Self::Downloaded => 2,
            Self::Installed => 3,
            Self::Enabled => 4,
            Self::Deleted => 5,
        }
    }
}

/// Whether terminating a SIM whose profile is in `state` (`None`: never released) must retire the profile at
/// the SM-DP+ (CancelOrder `Unavailable`), so nobody can download it after the owner gave it up. Only a profile
/// the device installed (Installed, Enabled) or deleted is past that: the SM-DP+ cannot take it back. A
/// Downloaded profile is not installed yet, and one we saw in Error may still be Released at the SM-DP+ (it
/// reaches Error only at its retry limit, a single failure report does not): both are retired. A cancel the
/// SM-DP+ answers with "invalid transition" is done; one answered "in use" (the device downloaded it meanwhile)
/// is done too, with an operator alert: the profile is live at the carrier (`es2::ResponseHeader::cancel_outcome`).
pub fn retire_on_terminate(state: Option<ProfileState>) -> bool {
    !matches!(
        state,
        Some(ProfileState::Installed | ProfileState::Enabled | ProfileState::Deleted)
    )
}

/// Whether the owner's `action`, refused on a SIM in `state` ([`owner_action`]), still retires its profile at the
/// SM-DP+ as a terminate does ([`retire_on_terminate`] decides on its profile state): a Terminate repeated on a
/// SIM terminated already. The first terminate's write may have committed while its caller was answered an
/// error (the store failed after the write took), so its retirement never ran; the repeat, answered the same
/// conflict as before, is the owner's only way to finish it. Idempotent: a retired profile is never handed out
/// again, the cleanup queue keeps one retiring cancel per profile (`order::Cleanup::same_work`), and the SM-DP+
/// answers a cancel of a profile retired already as nothing left to do.
pub fn retire_after_terminate(state: SimState, action: SimAction) -> bool {
    (state, action) == (SimState::Terminated, SimAction::Terminate)
}

/// Why SIM `iccid`, switched to another SIM, takes no top-up. The new SIM is not named: a top-up may be asked
/// and paid by anyone, and its ICCID would link the device's old and new SIMs for a stranger (its owner reads
/// it in the old SIM's balance, `switched_to`, or finds it with a wallet sign-in at `GET /v1/esim`).
pub fn switched_away(iccid: &str) -> String {
    format!(
        "SIM {iccid} was switched to another SIM: its balance moved there, and it takes no top-up (its owner \
         finds the new SIM in this SIM's balance, `switched_to`)"
    )
}

/// Why SIM `iccid` in `state` takes no top-up, or `None` when it does. `switched`: a switch moved its
/// balance to another SIM (its metering account says so, not the SIM records: a replacement still being ordered has not
/// taken the balance yet). A terminated or failed SIM takes no data; a pending one may yet be withdrawn (its
/// payment never completed), and nothing would give a top-up back; a switched-away one's account is closed
/// (the payment would be settled and then owed back).
pub fn top_up_refused(iccid: &str, state: SimState, switched: bool) -> Option<String> {
    match (state, switched) {
        (SimState::Terminated | SimState::Failed, _) => Some(format!(
            "SIM {iccid} is {}: it takes no more data",
            format!("{state:?}").to_lowercase()
        )),
        (SimState::Pending, _) => Some(format!(
            "SIM {iccid} is still being ordered: top it up once it is active"
        )),
        (_, true) => Some(switched_away(iccid)),
        (SimState::Active | SimState::Suspended, false) => None,
    }
}

/// The profile state after a HandleDownloadProgressInfo notification, or `None` when the state does not change.
///
/// - Success (`Executed-Success` or `-WithWarning`) at point 3 (BPP download) → Downloaded, at 4 (installation)
///   → Installed, at 5 (deleted; vendor-specific †) → Deleted; points 1 and 2 and unknown points change nothing.
/// - `Failed` or `Expired` at points 1–4 → Error, unless the profile is already Installed or further: a late
///   failure report cannot undo a completed installation. A failure at a vendor-specific point (5 and above,
///   e.g. 101/102: `reference/esim.md` §3 †) or an unknown one (0) says nothing about the download: no change.
/// - Error is not terminal (`reference/esim.md` §3: the SM-DP+ reaches Error only past its retry or
///   confirmation-code limit, failed eligibility or an expired order; a failed attempt at points 1–3 below
///   those limits may be retried): a later success (the retried download, the installation) moves on from it.
/// - Otherwise states never move backwards (a delayed point-3 report after Installed is ignored).
pub fn profile_state_after(
    current: ProfileState,
    notification_point_id: u32,
    status: ExecutionStatus,
) -> Option<ProfileState> {
    let next = if status.is_success() {
        match notification_point_id {
            3 => ProfileState::Downloaded,
            4 => ProfileState::Installed,
            5 => ProfileState::Deleted,
            _ => return None,
        }
    } else if (1..=4).contains(&notification_point_id) {
        ProfileState::Error
    } else {
        return None;
    };
    let moves = match next {
        ProfileState::Error => current.rank() < ProfileState::Installed.rank(),
        _ => next.rank() > current.rank(),
    };
    (moves && next != current).then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refused transition reads as the API spells its words (a fresh-user trial saw `cannot Suspend a SIM that
    /// is Suspended`), and the names are the wire's.
    #[test]
    fn a_refused_transition_is_told_in_the_apis_words() {
        let e = SimState::Suspended.apply(SimAction::Suspend).unwrap_err();
        assert_eq!(e.to_string(), "cannot suspend a SIM that is suspended");
        for s in [
            SimState::Pending,
            SimState::Active,
            SimState::Suspended,
            SimState::Terminated,
            SimState::Failed,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for a in [SimAction::Suspend, SimAction::Resume, SimAction::Terminate] {
            assert_eq!(serde_json::to_value(a).unwrap(), a.as_str());
        }
    }

    /// A switched-away SIM takes no top-up (before, it was sold, settled and owed back, its account being
    /// closed), and the refusal, which anyone may be answered, does not name the new SIM.
    #[test]
    fn only_a_sim_in_service_and_not_switched_away_takes_a_top_up() {
        assert_eq!(top_up_refused("8901", SimState::Active, false), None);
        assert_eq!(top_up_refused("8901", SimState::Suspended, false), None);
        let moved = top_up_refused("8901", SimState::Active, true).unwrap();
        assert!(moved.contains("switched to another SIM"), "{moved}");
        for s in [SimState::Terminated, SimState::Failed, SimState::Pending] {
            assert!(top_up_refused("8901", s, false).is_some(), "{s:?}");
        }
    }
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
    fn terminate_sends_cancel_order_unless_the_device_installed_the_profile() {
        for (state, retires) in [
            (None, true),
            (Some(P::Released), true),
            (Some(P::Downloaded), true),
            (Some(P::Error), true),
            (Some(P::Installed), false),
            (Some(P::Enabled), false),
            (Some(P::Deleted), false),
        ] {
            assert_eq!(retire_on_terminate(state), retires, "{state:?}");
        }
    }

    /// A terminate repeated on a terminated SIM is refused (the answer stays a conflict) but retires the profile
    /// again: the first one's retirement may never have run. Nothing else refused retires anything.
    #[test]
    fn a_repeated_terminate_retires_again() {
        for state in ALL_STATES {
            for action in ALL_ACTIONS {
                let again = retire_after_terminate(state, action);
                // Only ever a refused terminate: an accepted action retires by its own transition, if at all.
                if again {
                    assert!(owner_action(state, Holds::default(), action).is_err());
                    assert_eq!(action, A::Terminate, "{state:?}");
                }
            }
            // Wherever a terminate leads, the next one retires again.
            if let Ok((after, _)) = owner_action(state, Holds::default(), A::Terminate) {
                assert!(retire_after_terminate(after, A::Terminate), "{state:?}");
            }
        }
        // A SIM failed by its order was never terminated: its profile is retired by the failure, not here.
        assert!(!retire_after_terminate(S::Failed, A::Terminate));
    }

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
            "cannot resume a SIM that is terminated"
        );
    }

    #[test]
    fn owner_and_balance_holds_are_lifted_each_by_its_own_party() {
        let none = Holds::default();
        // The balance runs out: suspended; the owner cannot resume it, a top-up (a later epoch) does.
        let (s, h) = balance_hold(S::Active, none, true, 1).unwrap();
        assert_eq!((s, h.balance, h.owner), (S::Suspended, true, false));
        assert!(!h.by_owner(s), "held for balance only");
        assert_eq!(owner_action(s, h, A::Resume), Err(HoldError::BalanceHeld));
        // The owner suspends it too; the top-up then leaves it suspended until the owner resumes.
        let (s, h) = owner_action(s, h, A::Suspend).unwrap();
        assert!(h.owner && h.balance && s == S::Suspended);
        assert!(h.by_owner(s));
        // A SIM stored suspended before holds were kept is its owner's.
        assert!(none.by_owner(S::Suspended));
        assert!(!none.by_owner(S::Active));
        assert_eq!(
            owner_action(s, h, A::Suspend),
            Err(HoldError::Transition(InvalidTransition {
                from: S::Suspended,
                action: A::Suspend
            }))
        );
        let (s, h) = balance_hold(s, h, false, 2).unwrap();
        assert_eq!((s, h.balance_epoch), (S::Suspended, 2));
        let (s, h) = owner_action(s, h, A::Resume).unwrap();
        assert_eq!(
            (s, h),
            (
                S::Active,
                Holds {
                    balance_epoch: 2,
                    ..none
                }
            )
        );
        assert!(
            owner_action(s, h, A::Resume).is_err(),
            "resume an active SIM"
        );
        let (s, _) = owner_action(s, h, A::Terminate).unwrap();
        assert_eq!(s, S::Terminated);
    }

    #[test]
    fn balance_holds_apply_in_epoch_order_whatever_order_they_arrive_in() {
        let none = Holds::default();
        // Exhausted at epoch 1, topped up at epoch 2; the top-up's release arrives first.
        let (s, h) = balance_hold(S::Active, none, false, 2).unwrap();
        assert_eq!(s, S::Active);
        assert_eq!(balance_hold(s, h, true, 1), None, "older: changes nothing");
        assert_eq!(balance_hold(s, h, false, 2), None, "applied already");
        // Not in service: nothing to hold.
        for state in [S::Pending, S::Terminated, S::Failed] {
            assert_eq!(balance_hold(state, none, true, 1), None);
        }
    }

    #[test]
    fn a_sim_suspended_before_holds_were_kept_is_held_by_its_owner() {
        let none = Holds::default();
        let (s, h) = owner_action(S::Suspended, none, A::Resume).unwrap();
        assert_eq!((s, h), (S::Active, none));
        let (s, h) = balance_hold(S::Suspended, none, false, 1).unwrap();
        assert!(
            h.owner && s == S::Suspended,
            "a release does not lift the owner's hold"
        );
        let h: Holds = serde_json::from_str("{}").unwrap();
        assert!(h.is_none());
        assert_eq!(serde_json::to_string(&Holds::default()).unwrap(), "{}");
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
        // Error is not terminal (reference/esim.md §3): a success after a failed attempt moves on.
        assert_eq!(
            profile_state_after(P::Error, 4, Executed),
            Some(P::Installed)
        );
        assert_eq!(profile_state_after(P::Error, 1, Failed), None);
    }

    /// Points 5 and above are vendor-specific (`reference/esim.md` §3 †): a failure reported there (e.g. a
    /// vendor's 101/102) is not a failed download or installation, and never puts the profile in Error.
    #[test]
    fn a_failure_at_a_vendor_specific_point_changes_nothing() {
        for current in [P::Released, P::Downloaded, P::Error] {
            for point in [0, 5, 6, 101, 102] {
                for status in [Failed, Expired] {
                    assert_eq!(
                        profile_state_after(current, point, status),
                        None,
                        "{current:?} {point} {status:?}"
                    );
                }
            }
        }
        for point in 1..=4 {
            assert_eq!(
                profile_state_after(P::Released, point, Failed),
                Some(P::Error),
                "{point}"
            );
        }
    }

    #[test]
    fn a_retried_download_after_a_failed_attempt_is_recorded() {
        // A wrong confirmation code (point 2) or a failed BPP download (point 3) is an attempt the SM-DP+ lets
        // the device retry until its limit: the retried download and the installation that follow count.
        for point in [1, 2, 3] {
            let after_failure = profile_state_after(P::Released, point, Failed).unwrap();
            assert_eq!(after_failure, P::Error, "point {point}");
            assert_eq!(
                profile_state_after(after_failure, 3, Executed),
                Some(P::Downloaded),
                "point {point}"
            );
            assert_eq!(
                profile_state_after(after_failure, 4, Warning),
                Some(P::Installed),
                "point {point}"
            );
        }
        // A failed installation after a download, then a retried one that succeeds.
        let failed = profile_state_after(P::Downloaded, 4, Failed).unwrap();
        assert_eq!(profile_state_after(failed, 4, Executed), Some(P::Installed));
        // Repeated failures change nothing more; an unknown point's success moves nothing.
        assert_eq!(profile_state_after(P::Error, 3, Failed), None);
        assert_eq!(profile_state_after(P::Error, 3, Expired), None);
        assert_eq!(profile_state_after(P::Error, 2, Executed), None);
    }
}
