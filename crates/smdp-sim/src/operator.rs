//! One operator's account on the simulated SM-DP+: its profile pools, the per-ICCID state machine, MatchingIDs,
//! idempotency on `functionCallIdentifier`, injected faults and call statistics. Pure and synchronous: the
//! HTTP server ([`crate::server`]) keeps each [`Operator`] behind a mutex, calls [`Operator::handle`] for an
//! ES2+ request, and drives the simulated device with the `device_*` methods.
//!
//! States: `Available → Allocated` (DownloadOrder) or `→ Linked` (DownloadOrder with an EID)
//! `→ Confirmed` (ConfirmOrder, `releaseFlag` false) or `→ Released` (ConfirmOrder with `releaseFlag` true, or
//! ReleaseProfile from Confirmed) `→ Downloaded → Installed` (the device), or `→ Error` (failed download).
//! CancelOrder returns a not-yet-downloaded order to `Available` or retires it as `Unavailable`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::config::{ANY_REQUESTER, Faults, MAX_POOL, OperatorConfig, valid_fqdn};
use crate::es2::{Function, StatusCode, failed, reason, subject, success};
use crate::ids;

/// How many answered calls are remembered for idempotency, per operator (oldest forgotten first).
pub const MAX_STORED_CALLS: usize = 100_000;

/// Where a profile is in the SM-DP+'s lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProfileState {
    /// In the pool, free to order.
    Available,
    /// Reserved by DownloadOrder without an EID.
    Allocated,
    /// Reserved by DownloadOrder for one EID.
    Linked,
    /// Confirmed (MatchingID assigned), download not yet allowed.
    Confirmed,
    /// Download allowed; waiting for the device.
    Released,
    /// The device downloaded the Bound Profile Package.
    Downloaded,
    /// The device installed the profile.
    Installed,
    /// The download failed (e.g. attempts exhausted).
    Error,
    /// Retired by CancelOrder (`finalProfileStatusIndicator: Unavailable`).
    Unavailable,
}

impl ProfileState {
    /// All states, in lifecycle order.
    pub const ALL: [ProfileState; 9] = [
        ProfileState::Available,
        ProfileState::Allocated,
        ProfileState::Linked,
        ProfileState::Confirmed,
        ProfileState::Released,
        ProfileState::Downloaded,
        ProfileState::Installed,
        ProfileState::Error,
        ProfileState::Unavailable,
    ];

    /// The state's name as shown by the admin API.
    pub fn name(self) -> &'static str {
        match self {
            ProfileState::Available => "Available",
            ProfileState::Allocated => "Allocated",
            ProfileState::Linked => "Linked",
            ProfileState::Confirmed => "Confirmed",
            ProfileState::Released => "Released",
            ProfileState::Downloaded => "Downloaded",
            ProfileState::Installed => "Installed",
            ProfileState::Error => "Error",
            ProfileState::Unavailable => "Unavailable",
        }
    }

    /// Parses [`ProfileState::name`].
    pub fn from_name(name: &str) -> Option<ProfileState> {
        ProfileState::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// One profile held by the SM-DP+.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// 19-digit ICCID.
    pub iccid: String,
    /// The pool it came from.
    pub profile_type: String,
    /// Lifecycle state.
    pub state: ProfileState,
    /// The EID the order is bound to, once known.
    pub eid: Option<String>,
    /// The MatchingID, once confirmed (a secret: never logged).
    pub matching_id: Option<String>,
    /// Incremented each time the profile is ordered, so a stale device simulation cannot touch a newer order.
    pub order_seq: u64,
}

impl Profile {
    /// The admin view; `with_secret` adds the MatchingID.
    pub fn to_json(&self, with_secret: bool) -> Value {
        let mut v = json!({
            "iccid": self.iccid,
            "profileType": self.profile_type,
            "state": self.state.name(),
        });
        if let Some(eid) = &self.eid {
            v["eid"] = json!(eid);
        }
        if with_secret && let Some(mid) = &self.matching_id {
            v["matchingId"] = json!(mid);
        }
        v
    }
}

/// Counters per ES2+ function (`GET /admin/stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FunctionStats {
    /// Requests received for the function (every outcome below included).
    pub calls: u64,
    /// Executed with `Executed-Success`.
    pub success: u64,
    /// Executed with `Failed`.
    pub failed: u64,
    /// Answered from the idempotency store without executing.
    pub replayed: u64,
    /// Refused at the HTTP level (bad headers or body: 400/413/415).
    pub rejected: u64,
    /// Answered 503 by an injected fault.
    pub http_503: u64,
    /// Held unanswered by the `hang` fault.
    pub hung: u64,
}

/// What [`Operator::handle`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallResult {
    /// Executed successfully.
    Success,
    /// Executed (or refused before execution) with this status code.
    Failed(StatusCode),
    /// A repeat of an earlier call: the stored response was returned.
    Replayed,
}

/// The reply to one ES2+ call.
#[derive(Debug, Clone, PartialEq)]
pub struct Es2Outcome {
    /// The JSON body to send (HTTP 200).
    pub response: Value,
    /// What happened.
    pub result: CallResult,
    /// A profile the call released, with its order sequence: the device may now download it.
    pub released: Option<(String, u64)>,
}

/// A `handleDownloadProgressInfo` notification the SM-DP+ owes the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The profile.
    pub iccid: String,
    /// The EID, if known.
    pub eid: Option<String>,
    /// The profile type.
    pub profile_type: String,
    /// 3 = BPP download, 4 = BPP installation.
    pub point: u8,
    /// `None` for `Executed-Success`, else the failure.
    pub failure: Option<StatusCode>,
}

impl Notification {
    /// The request body, signed off as `requester` (the SM-DP+ address) with call id `fci`.
    pub fn to_json(&self, requester: &str, fci: &str, timestamp: &str) -> Value {
        let status = match &self.failure {
            None => json!({ "status": "Executed-Success" }),
            Some(code) => json!({ "status": "Failed", "statusCodeData": code.to_json() }),
        };
        let mut v = json!({
            "header": { "functionRequesterIdentifier": requester, "functionCallIdentifier": fci },
            "iccid": self.iccid,
            "profileType": self.profile_type,
            "timestamp": timestamp,
            "notificationPointId": self.point,
            "notificationPointStatus": status,
        });
        if let Some(eid) = &self.eid {
            v["eid"] = json!(eid);
        }
        v
    }
}

/// Why an admin operation was refused (mapped to HTTP statuses by the server).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// No such ICCID at this operator.
    #[error("unknown ICCID {0}")]
    UnknownIccid(String),
    /// The profile is not in a state that allows the operation.
    #[error("profile {iccid} is {state}, expected {expected}")]
    WrongState {
        /// The profile.
        iccid: String,
        /// Its state.
        state: &'static str,
        /// The state the operation needs.
        expected: &'static str,
    },
    /// A requested pool size is above [`MAX_POOL`].
    #[error("pool size {0} exceeds {MAX_POOL}")]
    TooLarge(u64),
    /// The ICCID prefix has no serials left.
    #[error("no ICCIDs left for prefix {0}")]
    Exhausted(String),
}

#[derive(Debug, Clone)]
struct StoredCall {
    function: Function,
    request: Value,
    response: Value,
}

/// One operator: configuration, profiles, MatchingIDs, idempotency store, faults and statistics.
#[derive(Debug)]
pub struct Operator {
    name: String,
    smdp_address: String,
    requester_ids: Vec<String>,
    iccid_prefix: String,
    callback_url: Option<String>,
    auto_download: bool,
    download_delay: Duration,
    install_delay: Duration,
    /// Faults currently injected into the ES2+ endpoints.
    pub faults: Faults,
    profiles: BTreeMap<String, Profile>,
    /// Profile type → ICCIDs in state Available (every known type has an entry, possibly empty).
    available: BTreeMap<String, BTreeSet<String>>,
    /// MatchingID → ICCID, for uniqueness across the operator.
    matching_ids: HashMap<String, String>,
    next_serial: u64,
    calls: HashMap<(String, String), StoredCall>,
    call_order: VecDeque<(String, String)>,
    stats: BTreeMap<Function, FunctionStats>,
}

type Executed = Result<(Map<String, Value>, Option<(String, u64)>), StatusCode>;

impl Operator {
    /// Builds an operator from its config and mints its pools. `default_callback` applies when the operator
    /// sets no `callback_url`.
    pub fn new(
        name: &str,
        cfg: &OperatorConfig,
        default_callback: Option<&str>,
    ) -> Result<Self, AdminError> {
        let mut op = Operator {
            name: name.to_owned(),
            smdp_address: cfg.smdp_address.clone(),
            requester_ids: cfg.effective_requester_ids(name),
            iccid_prefix: cfg.iccid_prefix.clone(),
            callback_url: cfg
                .callback_url
                .clone()
                .or_else(|| default_callback.map(str::to_owned)),
            auto_download: cfg.auto_download,
            download_delay: Duration::from_millis(cfg.download_delay_ms),
            install_delay: Duration::from_millis(cfg.install_delay_ms),
            faults: cfg.faults.clone(),
            profiles: BTreeMap::new(),
            available: BTreeMap::new(),
            matching_ids: HashMap::new(),
            next_serial: 1,
            calls: HashMap::new(),
            call_order: VecDeque::new(),
            stats: Function::ALL
                .into_iter()
                .map(|f| (f, FunctionStats::default()))
                .collect(),
        };
        for (profile_type, count) in &cfg.pools {
            op.set_available(profile_type, *count)?;
        }
        Ok(op)
    }

    /// The operator's name (its URL prefix).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The SM-DP+ address (FQDN).
    pub fn smdp_address(&self) -> &str {
        &self.smdp_address
    }
    /// Where download-progress notifications go, if anywhere.
    pub fn callback_url(&self) -> Option<&str> {
        self.callback_url.as_deref()
    }
    /// Whether released profiles are downloaded by a simulated device without an admin trigger.
    pub fn auto_download(&self) -> bool {
        self.auto_download
    }
    /// Delay from Released to Downloaded.
    pub fn download_delay(&self) -> Duration {
        self.download_delay
    }
    /// Delay from Downloaded to Installed.
    pub fn install_delay(&self) -> Duration {
        self.install_delay
    }

    /// Counters of one function.
    pub fn stats_mut(&mut self, function: Function) -> &mut FunctionStats {
        self.stats.entry(function).or_default()
    }

    /// Counters of every function, keyed by function name.
    pub fn stats_json(&self) -> Value {
        let map: Map<String, Value> = self
            .stats
            .iter()
            .map(|(f, s)| (f.name().to_owned(), json!(s)))
            .collect();
        Value::Object(map)
    }

    /// One profile.
    pub fn profile(&self, iccid: &str) -> Option<&Profile> {
        self.profiles.get(iccid)
    }

    /// Number of profiles per state (every state present).
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts: BTreeMap<&'static str, usize> =
            ProfileState::ALL.iter().map(|s| (s.name(), 0)).collect();
        for p in self.profiles.values() {
            *counts.entry(p.state.name()).or_default() += 1;
        }
        counts
    }

    /// Profiles (without MatchingIDs), optionally filtered by state and type.
    pub fn list(&self, state: Option<ProfileState>, profile_type: Option<&str>) -> Vec<Value> {
        self.profiles
            .values()
            .filter(|p| state.is_none_or(|s| p.state == s))
            .filter(|p| profile_type.is_none_or(|t| p.profile_type == t))
            .map(|p| p.to_json(false))
            .collect()
    }

    /// Number of Available profiles per known profile type.
    pub fn pools(&self) -> BTreeMap<String, usize> {
        self.available
            .iter()
            .map(|(t, set)| (t.clone(), set.len()))
            .collect()
    }

    /// Sets the number of Available profiles of `profile_type` (creating the type if new): surplus Available
    /// profiles are removed, missing ones minted with fresh ICCIDs. Returns the new count.
    pub fn set_available(&mut self, profile_type: &str, target: u64) -> Result<u64, AdminError> {
        if target > MAX_POOL {
            return Err(AdminError::TooLarge(target));
        }
        let set = self.available.entry(profile_type.to_owned()).or_default();
        // `target` ≤ MAX_POOL, which fits in usize on every supported platform.
        let target_len = usize::try_from(target).map_err(|_| AdminError::TooLarge(target))?;
        while set.len() > target_len {
            if let Some(iccid) = set.pop_last() {
                self.profiles.remove(&iccid);
            }
        }
        while set.len() < target_len {
            let iccid = ids::mint_iccid(&self.iccid_prefix, self.next_serial)
                .ok_or_else(|| AdminError::Exhausted(self.iccid_prefix.clone()))?;
            self.next_serial += 1;
            set.insert(iccid.clone());
            self.profiles.insert(
                iccid.clone(),
                Profile {
                    iccid,
                    profile_type: profile_type.to_owned(),
                    state: ProfileState::Available,
                    eid: None,
                    matching_id: None,
                    order_seq: 0,
                },
            );
        }
        Ok(target)
    }

    /// Answers one ES2+ call whose body parsed as JSON: checks the header and requester, replays a repeated
    /// `functionCallIdentifier`, or executes the function and remembers the answer.
    pub fn handle(&mut self, function: Function, body: &Value) -> Es2Outcome {
        let (requester, fci) = match self.check_header(body) {
            Ok(pair) => pair,
            Err(code) => {
                self.stats_mut(function).failed += 1;
                return Es2Outcome {
                    response: failed(&code),
                    result: CallResult::Failed(code),
                    released: None,
                };
            }
        };
        let key = (requester, fci);
        if let Some(stored) = self.calls.get(&key) {
            if stored.function == function && stored.request == *body {
                let response = stored.response.clone();
                self.stats_mut(function).replayed += 1;
                return Es2Outcome {
                    response,
                    result: CallResult::Replayed,
                    released: None,
                };
            }
            let code = StatusCode::new(
                subject::FUNCTION_PROVIDER,
                reason::ALREADY_IN_USE,
                key.1.clone(),
                "functionCallIdentifier already used for a different request",
            );
            self.stats_mut(function).failed += 1;
            return Es2Outcome {
                response: failed(&code),
                result: CallResult::Failed(code),
                released: None,
            };
        }
        let params = body.as_object().cloned().unwrap_or_default();
        let executed = match function {
            Function::DownloadOrder => self.download_order(&params),
            Function::ConfirmOrder => self.confirm_order(&params),
            Function::CancelOrder => self.cancel_order(&params),
            Function::ReleaseProfile => self.release_profile(&params),
        };
        let (response, result, released) = match executed {
            Ok((fields, released)) => {
                self.stats_mut(function).success += 1;
                (success(fields), CallResult::Success, released)
            }
            Err(code) => {
                self.stats_mut(function).failed += 1;
                (failed(&code), CallResult::Failed(code), None)
            }
        };
        self.remember(
            key,
            StoredCall {
                function,
                request: body.clone(),
                response: response.clone(),
            },
        );
        Es2Outcome {
            response,
            result,
            released,
        }
    }

    fn remember(&mut self, key: (String, String), call: StoredCall) {
        if self.call_order.len() >= MAX_STORED_CALLS
            && let Some(oldest) = self.call_order.pop_front()
        {
            self.calls.remove(&oldest);
        }
        self.call_order.push_back(key.clone());
        self.calls.insert(key, call);
    }

    /// The requester and call identifier, if present and the requester is accepted.
    fn check_header(&self, body: &Value) -> Result<(String, String), StatusCode> {
        let missing = |field: &str| {
            StatusCode::new(
                subject::FUNCTION_REQUESTER,
                reason::MISSING,
                field,
                format!("{field} is missing"),
            )
        };
        let header = body
            .get("header")
            .and_then(Value::as_object)
            .ok_or_else(|| missing("header"))?;
        let text = |field: &str| {
            header
                .get(field)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| missing(field))
        };
        let requester = text("functionRequesterIdentifier")?;
        let fci = text("functionCallIdentifier")?;
        let allowed = self
            .requester_ids
            .iter()
            .any(|r| r == ANY_REQUESTER || *r == requester);
        if !allowed {
            return Err(StatusCode::new(
                subject::FUNCTION_REQUESTER,
                reason::NOT_ALLOWED,
                requester,
                "function requester not allowed for this operator",
            ));
        }
        Ok((requester, fci))
    }

    fn download_order(&mut self, params: &Map<String, Value>) -> Executed {
        let eid = eid_param(params)?;
        let iccid = iccid_param(params, false)?;
        let profile_type = str_param(params, "profileType", subject::PROFILE_TYPE)?;
        let iccid = match (iccid, profile_type) {
            (Some(iccid), wanted_type) => {
                let p = self
                    .profiles
                    .get(&iccid)
                    .ok_or_else(|| unknown_iccid(&iccid))?;
                if let Some(t) = wanted_type
                    && t != p.profile_type
                {
                    return Err(StatusCode::new(
                        subject::PROFILE_TYPE,
                        reason::INVALID_ASSOCIATION,
                        t,
                        "the ICCID belongs to another profile type",
                    ));
                }
                if p.state != ProfileState::Available {
                    return Err(StatusCode::new(
                        subject::ICCID,
                        reason::ALREADY_IN_USE,
                        iccid,
                        "profile not available",
                    ));
                }
                iccid
            }
            (None, Some(t)) => {
                let pool = self.available.get(t).ok_or_else(|| {
                    StatusCode::new(
                        subject::PROFILE_TYPE,
                        reason::UNKNOWN,
                        t,
                        "unknown profile type",
                    )
                })?;
                pool.first().cloned().ok_or_else(|| {
                    StatusCode::new(
                        subject::PROFILE_TYPE,
                        reason::UNAVAILABLE,
                        t,
                        "pool empty: no more profiles of this type",
                    )
                })?
            }
            (None, None) => {
                return Err(StatusCode::new(
                    subject::ICCID,
                    reason::MISSING,
                    "iccid",
                    "either iccid or profileType is required",
                ));
            }
        };
        let state = if eid.is_some() {
            ProfileState::Linked
        } else {
            ProfileState::Allocated
        };
        let p = self.transition(&iccid, state)?;
        p.eid = eid;
        p.matching_id = None;
        p.order_seq += 1;
        let mut out = Map::new();
        out.insert("iccid".into(), json!(iccid));
        Ok((out, None))
    }

    fn confirm_order(&mut self, params: &Map<String, Value>) -> Executed {
        let iccid = iccid_param(params, true)?.unwrap_or_default();
        let release = bool_param(params, "releaseFlag", subject::DOWNLOAD_ORDER)?;
        let eid = eid_param(params)?;
        let matching_id = str_param(params, "matchingId", subject::MATCHING_ID)?;
        // Accepted but not enforced: the simulated device never presents a confirmation code.
        str_param(params, "confirmationCode", subject::CONFIRMATION_CODE)?;
        let smds = str_param(params, "smdsAddress", subject::SMDS)?;
        if let Some(s) = smds
            && !valid_fqdn(s)
        {
            return Err(StatusCode::new(
                subject::SMDS,
                reason::INVALID,
                "smdsAddress",
                "smdsAddress must be an FQDN",
            ));
        }
        if let Some(m) = matching_id
            && !ids::valid_matching_id(m)
        {
            return Err(StatusCode::new(
                subject::MATCHING_ID,
                reason::INVALID,
                "matchingId",
                "matchingId must be 1-64 of [0-9A-Za-z-]",
            ));
        }
        let p = self
            .profiles
            .get(&iccid)
            .ok_or_else(|| unknown_iccid(&iccid))?;
        if !matches!(p.state, ProfileState::Allocated | ProfileState::Linked) {
            return Err(invalid_transition(&iccid, p.state, "confirmed"));
        }
        if let (Some(bound), Some(given)) = (&p.eid, &eid)
            && bound != given
        {
            return Err(StatusCode::new(
                subject::EID,
                reason::INVALID_ASSOCIATION,
                given.clone(),
                "the order is linked to a different EID",
            ));
        }
        let eid = eid.or_else(|| p.eid.clone());
        if smds.is_some() && eid.is_none() {
            return Err(StatusCode::new(
                subject::EID,
                reason::MISSING,
                "eid",
                "an SM-DS event needs the EID",
            ));
        }
        let matching_id = match matching_id {
            Some(m) if self.matching_ids.contains_key(m) => {
                return Err(StatusCode::new(
                    subject::MATCHING_ID,
                    reason::ALREADY_IN_USE,
                    "matchingId",
                    "matchingId already in use",
                ));
            }
            Some(m) => m.to_owned(),
            None => self.fresh_matching_id()?,
        };
        let state = if release {
            ProfileState::Released
        } else {
            ProfileState::Confirmed
        };
        self.matching_ids.insert(matching_id.clone(), iccid.clone());
        let p = self.transition(&iccid, state)?;
        p.eid.clone_from(&eid);
        p.matching_id = Some(matching_id.clone());
        let seq = p.order_seq;
        let mut out = Map::new();
        out.insert("matchingId".into(), json!(matching_id));
        out.insert("smdpAddress".into(), json!(self.smdp_address));
        if let Some(eid) = eid {
            out.insert("eid".into(), json!(eid));
        }
        Ok((out, release.then_some((iccid, seq))))
    }

    fn fresh_matching_id(&self) -> Result<String, StatusCode> {
        for _ in 0..16 {
            let id = ids::generate_matching_id().map_err(|e| {
                StatusCode::new(
                    subject::FUNCTION_PROVIDER,
                    reason::EXECUTION_ERROR,
                    "matchingId",
                    format!("no randomness: {e}"),
                )
            })?;
            if !self.matching_ids.contains_key(&id) {
                return Ok(id);
            }
        }
        Err(StatusCode::new(
            subject::FUNCTION_PROVIDER,
            reason::EXECUTION_ERROR,
            "matchingId",
            "could not generate a unique matchingId",
        ))
    }

    fn cancel_order(&mut self, params: &Map<String, Value>) -> Executed {
        let iccid = iccid_param(params, true)?.unwrap_or_default();
        let final_state = match str_param(
            params,
            "finalProfileStatusIndicator",
            subject::DOWNLOAD_ORDER,
        )? {
            Some("Available") => ProfileState::Available,
            Some("Unavailable") => ProfileState::Unavailable,
            Some(_) => {
                return Err(StatusCode::new(
                    subject::DOWNLOAD_ORDER,
                    reason::INVALID,
                    "finalProfileStatusIndicator",
                    "finalProfileStatusIndicator must be Available or Unavailable",
                ));
            }
            None => {
                return Err(missing(
                    subject::DOWNLOAD_ORDER,
                    "finalProfileStatusIndicator",
                ));
            }
        };
        let eid = eid_param(params)?;
        let matching_id = str_param(params, "matchingId", subject::MATCHING_ID)?;
        let p = self
            .profiles
            .get(&iccid)
            .ok_or_else(|| unknown_iccid(&iccid))?;
        let cancellable = matches!(
            p.state,
            ProfileState::Allocated
                | ProfileState::Linked
                | ProfileState::Confirmed
                | ProfileState::Released
                | ProfileState::Error
        );
        if !cancellable {
            return Err(invalid_transition(&iccid, p.state, "cancelled"));
        }
        if let (Some(bound), Some(given)) = (&p.eid, &eid)
            && bound != given
        {
            return Err(StatusCode::new(
                subject::EID,
                reason::INVALID_ASSOCIATION,
                given.clone(),
                "the order is linked to a different EID",
            ));
        }
        if let Some(given) = matching_id
            && p.matching_id.as_deref() != Some(given)
        {
            return Err(StatusCode::new(
                subject::MATCHING_ID,
                reason::INVALID_ASSOCIATION,
                "matchingId",
                "matchingId does not belong to this order",
            ));
        }
        if let Some(mid) = &p.matching_id {
            self.matching_ids.remove(mid);
        }
        let p = self.transition(&iccid, final_state)?;
        p.eid = None;
        p.matching_id = None;
        Ok((Map::new(), None))
    }

    fn release_profile(&mut self, params: &Map<String, Value>) -> Executed {
        let iccid = iccid_param(params, true)?.unwrap_or_default();
        let p = self
            .profiles
            .get(&iccid)
            .ok_or_else(|| unknown_iccid(&iccid))?;
        if p.state != ProfileState::Confirmed {
            return Err(invalid_transition(&iccid, p.state, "released"));
        }
        let p = self.transition(&iccid, ProfileState::Released)?;
        let seq = p.order_seq;
        Ok((Map::new(), Some((iccid, seq))))
    }

    /// Moves a profile to `to`, keeping the Available index in step.
    fn transition(&mut self, iccid: &str, to: ProfileState) -> Result<&mut Profile, StatusCode> {
        let p = self
            .profiles
            .get_mut(iccid)
            .ok_or_else(|| unknown_iccid(iccid))?;
        let pool = self.available.entry(p.profile_type.clone()).or_default();
        if p.state == ProfileState::Available {
            pool.remove(iccid);
        }
        if to == ProfileState::Available {
            pool.insert(iccid.to_owned());
        }
        p.state = to;
        Ok(p)
    }

    /// The order sequence of a Released profile, for an admin-triggered download.
    pub fn released_order(&self, iccid: &str) -> Result<u64, AdminError> {
        let p = self
            .profiles
            .get(iccid)
            .ok_or_else(|| AdminError::UnknownIccid(iccid.to_owned()))?;
        if p.state != ProfileState::Released {
            return Err(AdminError::WrongState {
                iccid: iccid.to_owned(),
                state: p.state.name(),
                expected: ProfileState::Released.name(),
            });
        }
        Ok(p.order_seq)
    }

    /// The simulated device downloads order `seq` of `iccid`: Released → Downloaded, notification point 3.
    /// `None` if the order was cancelled or re-ordered meanwhile.
    pub fn device_download(&mut self, iccid: &str, seq: u64) -> Option<Notification> {
        self.device_step(
            iccid,
            seq,
            ProfileState::Released,
            ProfileState::Downloaded,
            3,
            None,
        )
    }

    /// The simulated device installs order `seq` of `iccid`: Downloaded → Installed, notification point 4.
    pub fn device_install(&mut self, iccid: &str, seq: u64) -> Option<Notification> {
        self.device_step(
            iccid,
            seq,
            ProfileState::Downloaded,
            ProfileState::Installed,
            4,
            None,
        )
    }

    /// The download of a Released profile fails: → Error, notification point 3 `Failed` with `8.8.5/6.4`.
    pub fn device_fail(&mut self, iccid: &str) -> Result<Notification, AdminError> {
        let seq = self.released_order(iccid)?;
        let failure = StatusCode::new(
            subject::DOWNLOAD_ORDER,
            reason::MAX_ATTEMPTS,
            iccid,
            "maximum number of download attempts exceeded",
        );
        self.device_step(
            iccid,
            seq,
            ProfileState::Released,
            ProfileState::Error,
            3,
            Some(failure),
        )
        .ok_or_else(|| AdminError::UnknownIccid(iccid.to_owned()))
    }

    fn device_step(
        &mut self,
        iccid: &str,
        seq: u64,
        from: ProfileState,
        to: ProfileState,
        point: u8,
        failure: Option<StatusCode>,
    ) -> Option<Notification> {
        let p = self.profiles.get(iccid)?;
        if p.state != from || p.order_seq != seq {
            return None;
        }
        let p = self.transition(iccid, to).ok()?;
        Some(Notification {
            iccid: p.iccid.clone(),
            eid: p.eid.clone(),
            profile_type: p.profile_type.clone(),
            point,
            failure,
        })
    }
}

fn missing(subject: &'static str, field: &str) -> StatusCode {
    StatusCode::new(
        subject,
        reason::MISSING,
        field,
        format!("mandatory element {field} is missing"),
    )
}

fn unknown_iccid(iccid: &str) -> StatusCode {
    StatusCode::new(subject::ICCID, reason::UNKNOWN, iccid, "unknown ICCID")
}

fn invalid_transition(iccid: &str, state: ProfileState, verb: &str) -> StatusCode {
    StatusCode::new(
        subject::ICCID,
        reason::INVALID_TRANSITION,
        iccid,
        format!("profile is {} and cannot be {verb}", state.name()),
    )
}

/// A string parameter; absent, `null` and `""` all count as not given.
fn str_param<'a>(
    params: &'a Map<String, Value>,
    field: &str,
    subject: &'static str,
) -> Result<Option<&'a str>, StatusCode> {
    match params.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(StatusCode::new(
            subject,
            reason::INVALID,
            field,
            format!("{field} must be a string"),
        )),
    }
}

fn bool_param(
    params: &Map<String, Value>,
    field: &str,
    subject: &'static str,
) -> Result<bool, StatusCode> {
    match params.get(field) {
        Some(Value::Bool(b)) => Ok(*b),
        None | Some(Value::Null) => Err(missing(subject, field)),
        Some(_) => Err(StatusCode::new(
            subject,
            reason::INVALID,
            field,
            format!("{field} must be a boolean"),
        )),
    }
}

fn iccid_param(params: &Map<String, Value>, required: bool) -> Result<Option<String>, StatusCode> {
    match str_param(params, "iccid", subject::ICCID)? {
        None if required => Err(missing(subject::ICCID, "iccid")),
        None => Ok(None),
        Some(raw) => ids::normalize_iccid(raw).map(Some).ok_or_else(|| {
            StatusCode::new(
                subject::ICCID,
                reason::INVALID,
                raw,
                "iccid must be 18-20 digits with a valid Luhn check digit",
            )
        }),
    }
}

fn eid_param(params: &Map<String, Value>) -> Result<Option<String>, StatusCode> {
    match str_param(params, "eid", subject::EID)? {
        None => Ok(None),
        Some(eid) if ids::eid_valid(eid) => Ok(Some(eid.to_owned())),
        Some(eid) => Err(StatusCode::new(
            subject::EID,
            reason::INVALID,
            eid,
            "eid must be 32 digits passing the ISO/IEC 7064 MOD 97-10 check",
        )),
    }
}

#[cfg(test)]
#[path = "operator_tests.rs"]
mod tests;
