//! End-to-end tests of the `smdp-sim` binary: each test starts the real process on `127.0.0.1:0`, reads the
//! port from its stdout line, drives it over HTTP and kills it when the guard drops. Set `TEST_LOG=1` to see
//! the simulator's logs.
#![allow(clippy::unwrap_used, reason = "tests")]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::mpsc;

const EID: &str = "89049032123451234512345678901235";
const PROTOCOL: &str = "gsma/rsp/v2.5.0";

/// The running simulator; dropping it kills the process by its PID and reaps it.
struct SimProcess {
    child: Child,
    base: String,
    client: reqwest::Client,
    _stdout: BufReader<ChildStdout>,
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_smdp-sim"));
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped());
    if std::env::var_os("TEST_LOG").is_some() {
        cmd.env("SMDP_SIM_LOG", "debug").stderr(Stdio::inherit());
    } else {
        cmd.stderr(Stdio::null());
    }
    cmd
}

fn spawn_sim(extra: &[&str]) -> SimProcess {
    let mut args = vec!["--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let mut child = command(&args).spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let base = line
        .trim_end()
        .strip_prefix("smdp-sim listening on ")
        .unwrap_or_else(|| panic!("unexpected first stdout line {line:?}"))
        .to_owned();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    SimProcess {
        child,
        base,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
        _stdout: stdout,
    }
}

impl SimProcess {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// One ES2+ call as operator `op`'s default requester; returns the HTTP status and JSON body.
    async fn es2(&self, op: &str, function: &str, fci: &str, params: Value) -> (StatusCode, Value) {
        let mut body = params;
        body["header"] = json!({
            "functionRequesterIdentifier": format!("esim402-{op}"),
            "functionCallIdentifier": fci,
        });
        let resp = self
            .client
            .post(self.url(&format!("/{op}/gsma/rsp2/es2plus/{function}")))
            .header("X-Admin-Protocol", PROTOCOL)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        assert_eq!(
            resp.headers()
                .get("x-admin-protocol")
                .map(|v| v.to_str().unwrap()),
            Some(PROTOCOL)
        );
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let resp = self.client.get(self.url(path)).send().await.unwrap();
        (resp.status(), resp.json().await.unwrap())
    }

    async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let resp = self
            .client
            .put(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        (resp.status(), resp.json().await.unwrap())
    }

    async fn post(&self, path: &str) -> (StatusCode, Value) {
        let resp = self.client.post(self.url(path)).send().await.unwrap();
        (resp.status(), resp.json().await.unwrap())
    }

    /// DownloadOrder by profile type; the ICCID.
    async fn order(&self, op: &str, profile_type: &str, fci: &str) -> String {
        let (status, body) = self
            .es2(
                op,
                "downloadOrder",
                fci,
                json!({ "profileType": profile_type }),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(exec_status(&body), "Executed-Success", "{body}");
        body["iccid"].as_str().unwrap().to_owned()
    }

    async fn available(&self, op: &str) -> u64 {
        let (_, body) = self.get(&format!("/admin/operators/{op}/profiles")).await;
        body["counts"]["Available"].as_u64().unwrap()
    }

    /// SIGTERM, then wait for the process to exit.
    fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

fn exec_status(body: &Value) -> &str {
    body["header"]["functionExecutionStatus"]["status"]
        .as_str()
        .unwrap_or_default()
}

fn status_code(body: &Value) -> String {
    let data = &body["header"]["functionExecutionStatus"]["statusCodeData"];
    format!(
        "{}/{}",
        data["subjectCode"].as_str().unwrap_or("?"),
        data["reasonCode"].as_str().unwrap_or("?")
    )
}

/// A loopback `handleDownloadProgressInfo` receiver: records every request and answers the scripted statuses
/// first, then 204.
struct Callbacks {
    url: String,
    rx: mpsc::UnboundedReceiver<(http::HeaderMap, Value)>,
}

impl Callbacks {
    async fn start(script: Vec<u16>) -> Callbacks {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/gsma/rsp2/es2plus/handleDownloadProgressInfo",
            listener.local_addr().unwrap()
        );
        let (tx, rx) = mpsc::unbounded_channel();
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let tx = tx.clone();
                let script = script.clone();
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        let script = script.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let bytes = body.collect().await.unwrap().to_bytes();
                            let value: Value =
                                serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                            let _ = tx.send((parts.headers, value));
                            let status = script.lock().unwrap().pop_front().unwrap_or(204);
                            let mut resp = http::Response::new(Full::new(Bytes::new()));
                            *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            Ok::<_, Infallible>(resp)
                        }
                    });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Callbacks { url, rx }
    }

    async fn next(&mut self) -> (http::HeaderMap, Value) {
        tokio::time::timeout(Duration::from_secs(10), self.rx.recv())
            .await
            .expect("no callback within 10 s")
            .unwrap()
    }

    async fn none_within(&mut self, wait: Duration) {
        if let Ok(Some((_, body))) = tokio::time::timeout(wait, self.rx.recv()).await {
            panic!("unexpected callback {body}");
        }
    }
}

fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("sim.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

fn assert_timestamp(ts: &str) {
    let b = ts.as_bytes();
    assert_eq!(b.len(), 20, "{ts}");
    for (i, c) in b.iter().enumerate() {
        match i {
            4 | 7 => assert_eq!(*c, b'-', "{ts}"),
            10 => assert_eq!(*c, b'T', "{ts}"),
            13 | 16 => assert_eq!(*c, b':', "{ts}"),
            19 => assert_eq!(*c, b'Z', "{ts}"),
            _ => assert!(c.is_ascii_digit(), "{ts}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn happy_path_download_confirm_release_and_callbacks() {
    let mut callbacks = Callbacks::start(vec![]).await;
    let sim = spawn_sim(&["--callback-url", &callbacks.url]);
    let (status, health) = sim.get("/health").await;
    assert_eq!(
        (status, health["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );

    let iccid = sim.order("tmobile", "tmo-iot-data", "FCI-1").await;
    assert_eq!(iccid.len(), 19);
    assert!(iccid.starts_with("8901260"));
    let (status, confirm) = sim
        .es2(
            "tmobile",
            "confirmOrder",
            "FCI-2",
            json!({ "iccid": iccid, "releaseFlag": true, "eid": EID }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(exec_status(&confirm), "Executed-Success", "{confirm}");
    assert_eq!(confirm["smdpAddress"], "smdp.tmobile.esim402.test");
    assert_eq!(confirm["eid"], EID);
    let matching_id = confirm["matchingId"].as_str().unwrap().to_owned();
    assert_eq!(matching_id.len(), 19);
    assert!(
        matching_id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-')
    );

    for point in [3, 4] {
        let (headers, body) = callbacks.next().await;
        assert_eq!(headers["content-type"], "application/json");
        assert!(
            headers["x-admin-protocol"]
                .to_str()
                .unwrap()
                .starts_with("gsma/rsp/v2.")
        );
        assert_eq!(body["notificationPointId"], point, "{body}");
        assert_eq!(
            body["notificationPointStatus"]["status"],
            "Executed-Success"
        );
        assert_eq!(body["iccid"], iccid.as_str());
        assert_eq!(body["eid"], EID);
        assert_eq!(body["profileType"], "tmo-iot-data");
        assert_eq!(
            body["header"]["functionRequesterIdentifier"],
            "smdp.tmobile.esim402.test"
        );
        assert!(
            !body["header"]["functionCallIdentifier"]
                .as_str()
                .unwrap()
                .is_empty()
        );
        assert_timestamp(body["timestamp"].as_str().unwrap());
        assert!(
            !body.to_string().contains(&matching_id),
            "no MatchingID in callbacks"
        );
    }

    let (status, profile) = sim
        .get(&format!("/admin/operators/tmobile/profiles/{iccid}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(profile["state"], "Installed");
    assert_eq!(profile["matchingId"], matching_id.as_str());
    let (_, list) = sim.get("/admin/operators/tmobile/profiles").await;
    assert_eq!(list["counts"]["Installed"], 1);
    assert_eq!(list["counts"]["Available"], 999);
    assert_eq!(list["profiles"].as_array().unwrap().len(), 1000);
    assert!(
        !list.to_string().contains(&matching_id),
        "listing leaks MatchingIDs"
    );
    let (_, stats) = sim.get("/admin/stats").await;
    assert_eq!(stats["operators"]["tmobile"]["downloadOrder"]["success"], 1);
    assert_eq!(stats["operators"]["tmobile"]["confirmOrder"]["calls"], 1);
    assert_eq!(stats["operators"]["verizon"]["downloadOrder"]["calls"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn pool_empty_answers_8_2_5_3_7() {
    let sim = spawn_sim(&[]);
    let (status, body) = sim
        .put(
            "/admin/operators/att/pools/att-iot-data",
            json!({ "available": 1 }),
        )
        .await;
    assert_eq!(
        (status, body["available"].as_u64()),
        (StatusCode::OK, Some(1))
    );
    sim.order("att", "att-iot-data", "A-1").await;
    let (status, body) = sim
        .es2(
            "att",
            "downloadOrder",
            "A-2",
            json!({ "profileType": "att-iot-data" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "functional failures are HTTP 200");
    assert_eq!(exec_status(&body), "Failed");
    assert_eq!(status_code(&body), "8.2.5/3.7");
    let (_, body) = sim
        .es2(
            "att",
            "downloadOrder",
            "A-3",
            json!({ "profileType": "no-such-type" }),
        )
        .await;
    assert_eq!(status_code(&body), "8.2.5/3.9");
    // Other operators are unaffected; refilling works.
    sim.order("verizon", "vzw-iot-data", "V-1").await;
    sim.put(
        "/admin/operators/att/pools/att-iot-data",
        json!({ "available": 2 }),
    )
    .await;
    sim.order("att", "att-iot-data", "A-4").await;
    assert_eq!(sim.available("att").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_function_call_identifier_is_idempotent() {
    let sim = spawn_sim(&[]);
    let params = json!({ "profileType": "vfde-iot-data" });
    let (_, first) = sim
        .es2("vodafone-de", "downloadOrder", "FCI-SAME", params.clone())
        .await;
    let (_, again) = sim
        .es2("vodafone-de", "downloadOrder", "FCI-SAME", params)
        .await;
    assert_eq!(exec_status(&first), "Executed-Success");
    assert_eq!(first, again);
    assert_eq!(sim.available("vodafone-de").await, 999, "executed once");
    let (_, clash) = sim
        .es2(
            "vodafone-de",
            "downloadOrder",
            "FCI-SAME",
            json!({ "profileType": "vfde-iot-data", "eid": EID }),
        )
        .await;
    assert_eq!(status_code(&clash), "1.2/3.3");
    assert_eq!(sim.available("vodafone-de").await, 999);
    let (_, stats) = sim.get("/admin/stats").await;
    let s = &stats["operators"]["vodafone-de"]["downloadOrder"];
    assert_eq!(
        (s["calls"].as_u64(), s["replayed"].as_u64()),
        (Some(3), Some(1))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_returns_the_profile_to_the_pool() {
    let sim = spawn_sim(&[]);
    let iccid = sim.order("telekom-de", "tde-iot-data", "T-1").await;
    let (_, confirm) = sim
        .es2(
            "telekom-de",
            "confirmOrder",
            "T-2",
            json!({ "iccid": iccid, "releaseFlag": false }),
        )
        .await;
    assert_eq!(exec_status(&confirm), "Executed-Success");
    assert_eq!(sim.available("telekom-de").await, 999);
    let (_, cancel) = sim
        .es2(
            "telekom-de",
            "cancelOrder",
            "T-3",
            json!({ "iccid": iccid, "finalProfileStatusIndicator": "Available" }),
        )
        .await;
    assert_eq!(exec_status(&cancel), "Executed-Success", "{cancel}");
    assert_eq!(sim.available("telekom-de").await, 1000);
    let (_, profile) = sim
        .get(&format!("/admin/operators/telekom-de/profiles/{iccid}"))
        .await;
    assert_eq!(profile["state"], "Available");
    assert!(profile.get("matchingId").is_none());
    // The same profile can be ordered again by ICCID.
    let (_, again) = sim
        .es2(
            "telekom-de",
            "downloadOrder",
            "T-4",
            json!({ "iccid": iccid }),
        )
        .await;
    assert_eq!(again["iccid"], iccid.as_str());
    // Cancelling twice is an invalid transition once back in the pool.
    sim.es2(
        "telekom-de",
        "cancelOrder",
        "T-5",
        json!({ "iccid": iccid, "finalProfileStatusIndicator": "Unavailable" }),
    )
    .await;
    let (_, twice) = sim
        .es2(
            "telekom-de",
            "cancelOrder",
            "T-6",
            json!({ "iccid": iccid, "finalProfileStatusIndicator": "Available" }),
        )
        .await;
    assert_eq!(status_code(&twice), "8.2.1/3.5");
    let (_, list) = sim
        .get("/admin/operators/telekom-de/profiles?state=Unavailable")
        .await;
    assert_eq!(list["counts"]["Unavailable"], 1);
    assert_eq!(list["profiles"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn http_503_and_fail_next_faults() {
    let sim = spawn_sim(&[]);
    let (status, faults) = sim
        .put(
            "/admin/operators/tmobile/faults",
            json!({ "http_503": true }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(faults["http_503"], true);
    let (status, _) = sim
        .es2(
            "tmobile",
            "downloadOrder",
            "F-1",
            json!({ "profileType": "tmo-iot-data" }),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        sim.available("tmobile").await,
        1000,
        "a 503 does not execute"
    );
    // Other operators keep working.
    sim.order("verizon", "vzw-iot-data", "V-1").await;

    let (_, faults) = sim
        .put(
            "/admin/operators/tmobile/faults",
            json!({ "fail_next": 2, "latency_ms": 50 }),
        )
        .await;
    assert_eq!(faults["http_503"], false, "PUT replaces all fields");
    for fci in ["F-2", "F-3"] {
        let (status, _) = sim
            .es2(
                "tmobile",
                "downloadOrder",
                fci,
                json!({ "profileType": "tmo-iot-data" }),
            )
            .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    let (_, faults) = sim.get("/admin/operators/tmobile/faults").await;
    assert_eq!(faults["fail_next"], 0);
    assert_eq!(faults["latency_ms"], 50);
    let started = Instant::now();
    sim.order("tmobile", "tmo-iot-data", "F-4").await;
    assert!(
        started.elapsed() >= Duration::from_millis(50),
        "latency applied"
    );
    let (_, stats) = sim.get("/admin/stats").await;
    assert_eq!(
        stats["operators"]["tmobile"]["downloadOrder"]["http_503"],
        3
    );
    assert_eq!(stats["operators"]["tmobile"]["downloadOrder"]["success"], 1);
    let (status, err) = sim
        .put("/admin/operators/tmobile/faults", json!({ "bogus": 1 }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(err["error"]["code"], "bad_json");
}

#[tokio::test(flavor = "multi_thread")]
async fn transport_level_errors() {
    let sim = spawn_sim(&[]);
    let url = sim.url("/tmobile/gsma/rsp2/es2plus/downloadOrder");
    let body = json!({
        "header": { "functionRequesterIdentifier": "esim402-tmobile", "functionCallIdentifier": "X-1" },
        "profileType": "tmo-iot-data",
    });
    for protocol in [Some("gsma/rsp/v3.0.0"), None] {
        let mut req = sim.client.post(&url).json(&body);
        if let Some(p) = protocol {
            req = req.header("X-Admin-Protocol", p);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["error"]["code"], "bad_admin_protocol");
    }
    let resp = sim
        .client
        .post(&url)
        .header("X-Admin-Protocol", PROTOCOL)
        .header("Content-Type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = sim
        .client
        .post(&url)
        .header("X-Admin-Protocol", PROTOCOL)
        .header("Content-Type", "text/plain")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(sim.available("tmobile").await, 1000, "nothing executed");
    // Unknown operator and function, wrong requester.
    let (status, _) = sim
        .es2(
            "nosuch",
            "downloadOrder",
            "X-2",
            json!({ "profileType": "x" }),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, err) = sim.get("/admin/operators/nosuch/profiles").await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("unknown_operator"))
    );
    let resp = sim
        .client
        .post(sim.url("/tmobile/gsma/rsp2/es2plus/handleDownloadProgressInfo"))
        .header("X-Admin-Protocol", PROTOCOL)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = sim
        .client
        .post(sim.url("/verizon/gsma/rsp2/es2plus/downloadOrder"))
        .header("X-Admin-Protocol", PROTOCOL)
        .json(&body)
        .send()
        .await
        .unwrap();
    let refused: Value = resp.json().await.unwrap();
    assert_eq!(
        status_code(&refused),
        "1.1/1.2",
        "esim402-tmobile may not order from verizon"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hang_holds_one_operator_without_blocking_others_or_shutdown() {
    let mut sim = spawn_sim(&[]);
    sim.put("/admin/operators/verizon/faults", json!({ "hang": true }))
        .await;
    let body = json!({
        "header": { "functionRequesterIdentifier": "esim402-verizon", "functionCallIdentifier": "H-1" },
        "profileType": "vzw-iot-data",
    });
    let hung = sim
        .client
        .post(sim.url("/verizon/gsma/rsp2/es2plus/downloadOrder"))
        .header("X-Admin-Protocol", PROTOCOL)
        .timeout(Duration::from_millis(300))
        .json(&body)
        .send()
        .await;
    assert!(hung.unwrap_err().is_timeout());
    // Another operator and the admin API answer meanwhile.
    sim.order("tmobile", "tmo-iot-data", "H-2").await;
    assert_eq!(sim.available("verizon").await, 1000);
    // A call still held when SIGTERM arrives does not keep the simulator alive.
    let held = tokio::spawn(
        sim.client
            .post(sim.url("/verizon/gsma/rsp2/es2plus/downloadOrder"))
            .header("X-Admin-Protocol", PROTOCOL)
            .timeout(Duration::from_secs(30))
            .json(&json!({
                "header": { "functionRequesterIdentifier": "esim402-verizon", "functionCallIdentifier": "H-3" },
                "profileType": "vzw-iot-data",
            }))
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let exit = tokio::task::block_in_place(|| sim.terminate(Duration::from_secs(8)));
    let exit = exit.expect("the simulator did not stop within 8 s of SIGTERM");
    assert!(exit.success(), "{exit:?}");
    // Released at shutdown with a 503, never executed.
    let held = held.await.unwrap().unwrap();
    assert_eq!(held.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(flavor = "multi_thread")]
async fn manual_download_and_failure_with_retried_callbacks() {
    // The first callback is answered 500, so the simulator must retry it.
    let mut callbacks = Callbacks::start(vec![500]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            r#"
            [operators.lab]
            smdp_address = "smdp.lab.esim402.test"
            iccid_prefix = "8988200"
            callback_url = "{}"
            auto_download = false
            download_delay_ms = 0
            install_delay_ms = 0
            pools = {{ "lab-data" = 3 }}
            "#,
            callbacks.url
        ),
    );
    let sim = spawn_sim(&["--config", &config]);
    let (_, ops) = sim.get("/admin/operators").await;
    assert_eq!(ops["operators"].as_array().unwrap().len(), 1);

    let a = sim.order("lab", "lab-data", "L-1").await;
    let (_, confirm) = sim
        .es2(
            "lab",
            "confirmOrder",
            "L-2",
            json!({ "iccid": a, "releaseFlag": true }),
        )
        .await;
    assert_eq!(exec_status(&confirm), "Executed-Success");
    assert!(confirm.get("eid").is_none());
    callbacks.none_within(Duration::from_millis(300)).await;
    let (_, p) = sim.get(&format!("/admin/operators/lab/profiles/{a}")).await;
    assert_eq!(p["state"], "Released", "no device without a trigger");

    let (status, _) = sim
        .post(&format!("/admin/operators/lab/profiles/{a}/download"))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (_, refused) = callbacks.next().await;
    let (_, retried) = callbacks.next().await;
    assert_eq!(refused, retried, "a retry repeats the same notification");
    assert_eq!(retried["notificationPointId"], 3);
    let (_, installed) = callbacks.next().await;
    assert_eq!(installed["notificationPointId"], 4);
    let (_, p) = sim.get(&format!("/admin/operators/lab/profiles/{a}")).await;
    assert_eq!(p["state"], "Installed");
    let (status, err) = sim
        .post(&format!("/admin/operators/lab/profiles/{a}/download"))
        .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("wrong_state"))
    );

    // A failed download: Error, point 3 Failed 8.8.5/6.4, and the order can be cancelled back to the pool.
    let b = sim.order("lab", "lab-data", "L-3").await;
    sim.es2(
        "lab",
        "confirmOrder",
        "L-4",
        json!({ "iccid": b, "releaseFlag": true, "eid": EID }),
    )
    .await;
    let (status, p) = sim
        .post(&format!("/admin/operators/lab/profiles/{b}/fail"))
        .await;
    assert_eq!(
        (status, p["state"].as_str()),
        (StatusCode::OK, Some("Error"))
    );
    let (_, failed) = callbacks.next().await;
    assert_eq!(failed["notificationPointId"], 3);
    assert_eq!(failed["eid"], EID);
    assert_eq!(failed["notificationPointStatus"]["status"], "Failed");
    assert_eq!(
        failed["notificationPointStatus"]["statusCodeData"]["subjectCode"],
        "8.8.5"
    );
    assert_eq!(
        failed["notificationPointStatus"]["statusCodeData"]["reasonCode"],
        "6.4"
    );
    let (_, cancel) = sim
        .es2(
            "lab",
            "cancelOrder",
            "L-5",
            json!({ "iccid": b, "finalProfileStatusIndicator": "Available" }),
        )
        .await;
    assert_eq!(exec_status(&cancel), "Executed-Success");
    assert_eq!(sim.available("lab").await, 2);
}

#[test]
fn refuses_public_address_without_flag() {
    // A documentation address (RFC 5737) this machine cannot bind: were the refusal ever lost, the bind would
    // fail at once instead of serving on every interface while this test waits for the child to exit.
    let mut child = command(&["--listen", "192.0.2.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert!(stderr.contains("--allow-public"), "{stderr}");
}

#[test]
fn rejects_an_invalid_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[operators.x]\nsmdp_address = \"127.0.0.1\"\niccid_prefix = \"8988200\"\n",
    );
    let out = command(&["--listen", "127.0.0.1:0", "--config", &config])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        out.stdout.is_empty(),
        "nothing printed before the config is valid"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("FQDN"));
}
