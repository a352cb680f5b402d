use super::*;
use crate::config::SimConfig;
use serde_json::json;

const EID: &str = "89049032123451234512345678901235";
const OTHER_EID: &str = "89049032123451234512345678901332";
const TYPE: &str = "tmo-iot-data";

fn operator(pool: u64) -> Operator {
    let mut cfg = SimConfig::default().operators["tmobile"].clone();
    cfg.pools = BTreeMap::from([(TYPE.to_owned(), pool)]);
    Operator::new("tmobile", &cfg, None).unwrap()
}

fn call(op: &mut Operator, f: Function, fci: &str, params: Value) -> Es2Outcome {
    let mut body = params;
    body["header"] =
        json!({ "functionRequesterIdentifier": "esim402-tmobile", "functionCallIdentifier": fci });
    op.handle(f, &body)
}

fn code(out: &Es2Outcome) -> String {
    match &out.result {
        CallResult::Failed(c) => c.code(),
        other => format!("{other:?}"),
    }
}

fn order(op: &mut Operator, fci: &str) -> String {
    let out = call(
        op,
        Function::DownloadOrder,
        fci,
        json!({ "profileType": TYPE }),
    );
    assert_eq!(out.result, CallResult::Success, "{}", out.response);
    out.response["iccid"].as_str().unwrap().to_owned()
}

fn state(op: &Operator, iccid: &str) -> ProfileState {
    op.profile(iccid).unwrap().state
}

#[test]
fn eid_fixture_is_valid() {
    assert!(ids::eid_valid(EID));
    assert!(ids::eid_valid(OTHER_EID));
}

#[test]
fn pools_are_minted_with_distinct_valid_iccids() {
    let op = operator(50);
    assert_eq!(op.counts()["Available"], 50);
    let listed = op.list(None, None);
    let iccids: BTreeSet<&str> = listed
        .iter()
        .map(|p| p["iccid"].as_str().unwrap())
        .collect();
    assert_eq!(iccids.len(), 50);
    assert!(
        iccids
            .iter()
            .all(|i| i.len() == 19 && i.starts_with("8901260") && ids::luhn_valid(i))
    );
    assert!(listed.iter().all(|p| p.get("matchingId").is_none()));
}

#[test]
fn happy_path_download_confirm_release_device() {
    let mut op = operator(3);
    let iccid = order(&mut op, "1");
    assert_eq!(state(&op, &iccid), ProfileState::Allocated);
    let out = call(
        &mut op,
        Function::ConfirmOrder,
        "2",
        json!({ "iccid": iccid, "releaseFlag": true, "eid": EID }),
    );
    assert_eq!(out.result, CallResult::Success, "{}", out.response);
    let mid = out.response["matchingId"].as_str().unwrap();
    assert!(ids::valid_matching_id(mid));
    assert_eq!(out.response["smdpAddress"], "smdp.tmobile.esim402.test");
    assert_eq!(out.response["eid"], EID);
    let (rel, seq) = out.released.clone().unwrap();
    assert_eq!(rel, iccid);
    assert_eq!(state(&op, &iccid), ProfileState::Released);
    assert_eq!(
        op.profile(&iccid).unwrap().matching_id.as_deref(),
        Some(mid)
    );

    let n3 = op.device_download(&iccid, seq).unwrap();
    assert_eq!((n3.point, n3.failure.is_none()), (3, true));
    assert_eq!(state(&op, &iccid), ProfileState::Downloaded);
    assert!(
        op.device_download(&iccid, seq).is_none(),
        "no second download"
    );
    let n4 = op.device_install(&iccid, seq).unwrap();
    assert_eq!(n4.point, 4);
    assert_eq!(state(&op, &iccid), ProfileState::Installed);
    let body = n4.to_json("smdp.tmobile.esim402.test", "cb-1", "2025-11-24T16:00:00Z");
    assert_eq!(body["notificationPointId"], 4);
    assert_eq!(body["eid"], EID);
    assert_eq!(body["profileType"], TYPE);
    assert_eq!(
        body["notificationPointStatus"]["status"],
        "Executed-Success"
    );
    assert_eq!(
        body["header"]["functionRequesterIdentifier"],
        "smdp.tmobile.esim402.test"
    );

    // Installed profiles cannot be cancelled.
    let out = call(
        &mut op,
        Function::CancelOrder,
        "3",
        json!({ "iccid": iccid, "finalProfileStatusIndicator": "Available" }),
    );
    assert_eq!(code(&out), "8.2.1/3.5");
}

#[test]
fn confirm_then_release_profile() {
    let mut op = operator(1);
    let iccid = order(&mut op, "1");
    let out = call(
        &mut op,
        Function::ConfirmOrder,
        "2",
        json!({ "iccid": iccid, "releaseFlag": false }),
    );
    assert_eq!(out.result, CallResult::Success);
    assert!(out.released.is_none());
    assert!(out.response.get("eid").is_none());
    assert_eq!(state(&op, &iccid), ProfileState::Confirmed);
    let out = call(
        &mut op,
        Function::ReleaseProfile,
        "3",
        json!({ "iccid": iccid }),
    );
    assert_eq!(out.result, CallResult::Success);
    assert_eq!(
        out.released.as_ref().map(|r| r.0.as_str()),
        Some(iccid.as_str())
    );
    assert_eq!(state(&op, &iccid), ProfileState::Released);
    let out = call(
        &mut op,
        Function::ReleaseProfile,
        "4",
        json!({ "iccid": iccid }),
    );
    assert_eq!(code(&out), "8.2.1/3.5");
}

#[test]
fn pool_empty_and_unknown_type() {
    let mut op = operator(1);
    order(&mut op, "1");
    let out = call(
        &mut op,
        Function::DownloadOrder,
        "2",
        json!({ "profileType": TYPE }),
    );
    assert_eq!(code(&out), "8.2.5/3.7");
    assert_eq!(
        out.response["header"]["functionExecutionStatus"]["status"],
        "Failed"
    );
    let out = call(
        &mut op,
        Function::DownloadOrder,
        "3",
        json!({ "profileType": "nope" }),
    );
    assert_eq!(code(&out), "8.2.5/3.9");
    let out = call(&mut op, Function::DownloadOrder, "4", json!({}));
    assert_eq!(code(&out), "8.2.1/2.2");
}

#[test]
fn order_by_iccid() {
    let mut op = operator(2);
    let first = op.list(None, None)[1]["iccid"].as_str().unwrap().to_owned();
    let out = call(
        &mut op,
        Function::DownloadOrder,
        "1",
        json!({ "iccid": first, "eid": EID }),
    );
    assert_eq!(out.result, CallResult::Success);
    assert_eq!(state(&op, &first), ProfileState::Linked);
    let out = call(
        &mut op,
        Function::DownloadOrder,
        "2",
        json!({ "iccid": first }),
    );
    assert_eq!(code(&out), "8.2.1/3.3");
    let out = call(
        &mut op,
        Function::DownloadOrder,
        "3",
        json!({ "iccid": "8944478600003770170" }),
    );
    assert_eq!(code(&out), "8.2.1/3.9");
    let out = call(
        &mut op,
        Function::DownloadOrder,
        "4",
        json!({ "iccid": "8944478600003770171" }),
    );
    assert_eq!(code(&out), "8.2.1/2.1");
    let out = call(
        &mut op,
        Function::DownloadOrder,
        "5",
        json!({ "profileType": TYPE, "eid": "123" }),
    );
    assert_eq!(code(&out), "8.1.1/2.1");
}

#[test]
fn confirm_order_checks() {
    let mut op = operator(3);
    // Linked to one EID; another EID is refused.
    let out = call(
        &mut op,
        Function::DownloadOrder,
        "1",
        json!({ "profileType": TYPE, "eid": EID }),
    );
    let linked = out.response["iccid"].as_str().unwrap().to_owned();
    let out = call(
        &mut op,
        Function::ConfirmOrder,
        "2",
        json!({ "iccid": linked, "releaseFlag": false, "eid": OTHER_EID }),
    );
    assert_eq!(code(&out), "8.1.1/3.10");
    let out = call(
        &mut op,
        Function::ConfirmOrder,
        "3",
        json!({ "iccid": linked, "releaseFlag": false, "eid": "1234" }),
    );
    assert_eq!(code(&out), "8.1.1/2.1");
    let out = call(
        &mut op,
        Function::ConfirmOrder,
        "4",
        json!({ "iccid": linked }),
    );
    assert_eq!(code(&out), "8.8.5/2.2");
    let out = call(
        &mut op,
        Function::ConfirmOrder,
        "5",
        json!({ "releaseFlag": true }),
    );
    assert_eq!(code(&out), "8.2.1/2.2");
    let out = call(
        &mut op,
        Function::ConfirmOrder,
        "6",
        json!({ "iccid": "8944478600003770170", "releaseFlag": true }),
    );
    assert_eq!(code(&out), "8.2.1/3.9");
    // Linked order confirmed without repeating the EID keeps it.
    let out = call(
        &mut op,
        Function::ConfirmOrder,
        "7",
        json!({ "iccid": linked, "releaseFlag": false, "matchingId": "MY-ID-1" }),
    );
    assert_eq!(out.result, CallResult::Success, "{}", out.response);
    assert_eq!(out.response["matchingId"], "MY-ID-1");
    assert_eq!(out.response["eid"], EID);
    // Wrong state now.
    let out = call(
        &mut op,
        Function::ConfirmOrder,
        "8",
        json!({ "iccid": linked, "releaseFlag": true }),
    );
    assert_eq!(code(&out), "8.2.1/3.5");
    // MatchingID conflict across the operator.
    let other = order(&mut op, "9");
    let out = call(
        &mut op,
        Function::ConfirmOrder,
        "10",
        json!({ "iccid": other, "releaseFlag": false, "matchingId": "MY-ID-1" }),
    );
    assert_eq!(code(&out), "8.2.6/3.3");
    assert_eq!(state(&op, &other), ProfileState::Allocated);
    let out = call(
        &mut op,
        Function::ConfirmOrder,
        "11",
        json!({ "iccid": other, "releaseFlag": false, "matchingId": "bad id!" }),
    );
    assert_eq!(code(&out), "8.2.6/2.1");
    // SM-DS without an EID.
    let out = call(
        &mut op,
        Function::ConfirmOrder,
        "12",
        json!({ "iccid": other, "releaseFlag": true, "smdsAddress": "lpa.ds.example" }),
    );
    assert_eq!(code(&out), "8.1.1/2.2");
}

#[test]
fn cancel_returns_to_pool_or_retires() {
    let mut op = operator(2);
    let a = order(&mut op, "1");
    let out = call(
        &mut op,
        Function::ConfirmOrder,
        "2",
        json!({ "iccid": a, "releaseFlag": false, "matchingId": "MID-A" }),
    );
    assert_eq!(out.result, CallResult::Success);
    let out = call(
        &mut op,
        Function::CancelOrder,
        "3",
        json!({ "iccid": a, "finalProfileStatusIndicator": "Available", "matchingId": "WRONG" }),
    );
    assert_eq!(code(&out), "8.2.6/3.10");
    let out = call(
        &mut op,
        Function::CancelOrder,
        "4",
        json!({ "iccid": a, "finalProfileStatusIndicator": "Maybe" }),
    );
    assert_eq!(code(&out), "8.8.5/2.1");
    let out = call(&mut op, Function::CancelOrder, "5", json!({ "iccid": a }));
    assert_eq!(code(&out), "8.8.5/2.2");
    let out = call(
        &mut op,
        Function::CancelOrder,
        "6",
        json!({ "iccid": a, "finalProfileStatusIndicator": "Available" }),
    );
    assert_eq!(out.result, CallResult::Success);
    assert_eq!(state(&op, &a), ProfileState::Available);
    assert!(op.profile(&a).unwrap().matching_id.is_none());
    assert_eq!(op.pools()[TYPE], 2);
    // The MatchingID is free again.
    let b = order(&mut op, "7");
    assert_eq!(b, a, "the lowest Available ICCID is handed out first");
    let out = call(
        &mut op,
        Function::ConfirmOrder,
        "8",
        json!({ "iccid": b, "releaseFlag": false, "matchingId": "MID-A" }),
    );
    assert_eq!(out.result, CallResult::Success);
    // Cancelling an Available profile is an invalid transition.
    let c = op.list(Some(ProfileState::Available), None)[0]["iccid"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = call(
        &mut op,
        Function::CancelOrder,
        "9",
        json!({ "iccid": c, "finalProfileStatusIndicator": "Available" }),
    );
    assert_eq!(code(&out), "8.2.1/3.5");
    // Retire.
    let out = call(
        &mut op,
        Function::CancelOrder,
        "10",
        json!({ "iccid": b, "finalProfileStatusIndicator": "Unavailable" }),
    );
    assert_eq!(out.result, CallResult::Success);
    assert_eq!(state(&op, &b), ProfileState::Unavailable);
    assert_eq!(op.counts()["Unavailable"], 1);
    assert_eq!(op.pools()[TYPE], 1);
}

#[test]
fn cancel_makes_a_pending_device_step_stale() {
    let mut op = operator(1);
    let a = order(&mut op, "1");
    let out = call(
        &mut op,
        Function::ConfirmOrder,
        "2",
        json!({ "iccid": a, "releaseFlag": true }),
    );
    let (_, seq) = out.released.unwrap();
    let out = call(
        &mut op,
        Function::CancelOrder,
        "3",
        json!({ "iccid": a, "finalProfileStatusIndicator": "Available" }),
    );
    assert_eq!(out.result, CallResult::Success);
    let again = order(&mut op, "4");
    assert_eq!(again, a);
    let out = call(
        &mut op,
        Function::ConfirmOrder,
        "5",
        json!({ "iccid": a, "releaseFlag": true }),
    );
    let (_, seq2) = out.released.unwrap();
    assert_ne!(seq, seq2);
    assert!(
        op.device_download(&a, seq).is_none(),
        "the old order's device must not act"
    );
    assert!(op.device_download(&a, seq2).is_some());
}

#[test]
fn idempotent_on_function_call_identifier() {
    let mut op = operator(5);
    let first = call(
        &mut op,
        Function::DownloadOrder,
        "FCI-1",
        json!({ "profileType": TYPE }),
    );
    let again = call(
        &mut op,
        Function::DownloadOrder,
        "FCI-1",
        json!({ "profileType": TYPE }),
    );
    assert_eq!(again.result, CallResult::Replayed);
    assert_eq!(again.response, first.response);
    assert_eq!(
        op.counts()["Allocated"],
        1,
        "the repeat did not allocate a second profile"
    );
    // Same FCI, different body.
    let clash = call(
        &mut op,
        Function::DownloadOrder,
        "FCI-1",
        json!({ "profileType": TYPE, "eid": EID }),
    );
    assert_eq!(code(&clash), "1.2/3.3");
    // Same FCI for another function is a different request too.
    let iccid = first.response["iccid"].as_str().unwrap();
    let clash = call(
        &mut op,
        Function::ReleaseProfile,
        "FCI-1",
        json!({ "iccid": iccid }),
    );
    assert_eq!(code(&clash), "1.2/3.3");
    // Failures are remembered as well.
    let f1 = call(
        &mut op,
        Function::DownloadOrder,
        "FCI-2",
        json!({ "profileType": "nope" }),
    );
    let f2 = call(
        &mut op,
        Function::DownloadOrder,
        "FCI-2",
        json!({ "profileType": "nope" }),
    );
    assert_eq!(code(&f1), "8.2.5/3.9");
    assert_eq!(f2.result, CallResult::Replayed);
    assert_eq!(f1.response, f2.response);
    // A replayed release does not release again.
    let out = call(
        &mut op,
        Function::ConfirmOrder,
        "FCI-3",
        json!({ "iccid": iccid, "releaseFlag": true }),
    );
    assert!(out.released.is_some());
    let out = call(
        &mut op,
        Function::ConfirmOrder,
        "FCI-3",
        json!({ "iccid": iccid, "releaseFlag": true }),
    );
    assert!(out.released.is_none());
    let s = op.stats_json();
    assert_eq!(s["downloadOrder"]["replayed"], 2);
    assert_eq!(s["downloadOrder"]["success"], 1);
    assert_eq!(s["confirmOrder"]["replayed"], 1);
}

#[test]
fn idempotency_is_per_requester() {
    let mut cfg = SimConfig::default().operators["tmobile"].clone();
    cfg.requester_ids = Some(vec!["a".into(), "b".into()]);
    let mut op = Operator::new("tmobile", &cfg, None).unwrap();
    let body = |r: &str| json!({ "header": { "functionRequesterIdentifier": r, "functionCallIdentifier": "same" }, "profileType": TYPE });
    let a = op.handle(Function::DownloadOrder, &body("a"));
    let b = op.handle(Function::DownloadOrder, &body("b"));
    assert_eq!(
        (a.result.clone(), b.result.clone()),
        (CallResult::Success, CallResult::Success)
    );
    assert_ne!(a.response["iccid"], b.response["iccid"]);
}

#[test]
fn header_and_requester_checks() {
    let mut op = operator(1);
    let out = op.handle(Function::DownloadOrder, &json!({ "profileType": TYPE }));
    assert_eq!(code(&out), "1.1/2.2");
    let out = op.handle(
        Function::DownloadOrder,
        &json!({ "header": { "functionRequesterIdentifier": "esim402-tmobile" }, "profileType": TYPE }),
    );
    assert_eq!(code(&out), "1.1/2.2");
    let out = op.handle(
        Function::DownloadOrder,
        &json!({ "header": { "functionRequesterIdentifier": "intruder", "functionCallIdentifier": "x" }, "profileType": TYPE }),
    );
    assert_eq!(code(&out), "1.1/1.2");
    assert_eq!(op.counts()["Available"], 1);
}

#[test]
fn any_requester_wildcard() {
    let mut cfg = SimConfig::default().operators["att"].clone();
    cfg.requester_ids = Some(vec!["*".into()]);
    let mut op = Operator::new("att", &cfg, None).unwrap();
    let out = op.handle(
        Function::DownloadOrder,
        &json!({ "header": { "functionRequesterIdentifier": "anyone", "functionCallIdentifier": "x" }, "profileType": "att-iot-data" }),
    );
    assert_eq!(out.result, CallResult::Success);
}

#[test]
fn set_available_drains_and_mints() {
    let mut op = operator(10);
    let taken = order(&mut op, "1");
    op.set_available(TYPE, 0).unwrap();
    assert_eq!(op.pools()[TYPE], 0);
    assert_eq!(op.counts()["Available"], 0);
    assert_eq!(
        state(&op, &taken),
        ProfileState::Allocated,
        "ordered profiles survive a drain"
    );
    let out = call(
        &mut op,
        Function::DownloadOrder,
        "2",
        json!({ "profileType": TYPE }),
    );
    assert_eq!(code(&out), "8.2.5/3.7");
    op.set_available(TYPE, 4).unwrap();
    assert_eq!(op.pools()[TYPE], 4);
    let fresh = order(&mut op, "3");
    assert_ne!(fresh, taken);
    // A new type.
    op.set_available("extra", 2).unwrap();
    let out = call(
        &mut op,
        Function::DownloadOrder,
        "4",
        json!({ "profileType": "extra" }),
    );
    assert_eq!(out.result, CallResult::Success);
    assert_eq!(
        op.set_available(TYPE, MAX_POOL + 1),
        Err(AdminError::TooLarge(MAX_POOL + 1))
    );
}

#[test]
fn device_failure_and_manual_trigger_preconditions() {
    let mut op = operator(2);
    let a = order(&mut op, "1");
    assert!(matches!(
        op.device_fail(&a),
        Err(AdminError::WrongState { .. })
    ));
    assert!(matches!(
        op.released_order("8944478600003770170"),
        Err(AdminError::UnknownIccid(_))
    ));
    call(
        &mut op,
        Function::ConfirmOrder,
        "2",
        json!({ "iccid": a, "releaseFlag": true }),
    );
    assert!(op.released_order(&a).is_ok());
    let n = op.device_fail(&a).unwrap();
    assert_eq!(n.point, 3);
    assert_eq!(
        n.failure.as_ref().map(StatusCode::code).as_deref(),
        Some("8.8.5/6.4")
    );
    assert_eq!(state(&op, &a), ProfileState::Error);
    let body = n.to_json("smdp", "f", "t");
    assert_eq!(body["notificationPointStatus"]["status"], "Failed");
    assert_eq!(
        body["notificationPointStatus"]["statusCodeData"]["reasonCode"],
        "6.4"
    );
    assert!(body.get("eid").is_none());
    // An order in Error can be cancelled back to the pool.
    let out = call(
        &mut op,
        Function::CancelOrder,
        "3",
        json!({ "iccid": a, "finalProfileStatusIndicator": "Available" }),
    );
    assert_eq!(out.result, CallResult::Success);
    assert_eq!(state(&op, &a), ProfileState::Available);
}

#[test]
fn admin_view_shows_matching_id_only_on_request() {
    let mut op = operator(1);
    let a = order(&mut op, "1");
    call(
        &mut op,
        Function::ConfirmOrder,
        "2",
        json!({ "iccid": a, "releaseFlag": false, "matchingId": "SECRET-1" }),
    );
    let p = op.profile(&a).unwrap();
    assert_eq!(p.to_json(true)["matchingId"], "SECRET-1");
    assert!(p.to_json(false).get("matchingId").is_none());
    assert_eq!(op.list(Some(ProfileState::Confirmed), Some(TYPE)).len(), 1);
    assert_eq!(
        op.list(Some(ProfileState::Confirmed), Some("other")).len(),
        0
    );
}

#[test]
fn twenty_digit_f_padded_iccid_is_accepted() {
    let mut op = operator(1);
    let a = order(&mut op, "1");
    let out = call(
        &mut op,
        Function::ConfirmOrder,
        "2",
        json!({ "iccid": format!("{a}F"), "releaseFlag": false }),
    );
    assert_eq!(out.result, CallResult::Success, "{}", out.response);
}
