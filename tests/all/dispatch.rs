//! Carrier dispatch through the host against the real SM-DP+ simulator (a separate process speaking ES2+ over
//! loopback HTTP). Orders go through the dispatch component's WIT interface (a test-kit instance sharing the
//! app's key-value store and sending real HTTP) until the payments issue puts them behind a paid
//! `POST /v1/esim/activate`; everything else — SM-DP+ callbacks, SIM reads, lifecycle, switch quotes — goes
//! through the host's HTTP routes.

use std::time::{Duration, Instant};

use esim402_host::runtime_config::StoreConfig;
use esim402_testkit::{Kit, Scripted, types};
use esim402_tests::{OWNER_ADDRESS, OWNER_KEY, SmdpSim, TestApp, options, sign_in, spawn_app_on};
use serde_json::{Value, json};

struct Stack {
    app: TestApp,
    sim: SmdpSim,
    http: reqwest::Client,
}

async fn stack(es2_timeout_ms: &str) -> Stack {
    stack_with(es2_timeout_ms, &[]).await
}

async fn stack_with(es2_timeout_ms: &str, env: &[(&str, String)]) -> Stack {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let callback = format!(
        "http://{}/gsma/rsp2/es2plus/handleDownloadProgressInfo",
        listener.local_addr().unwrap()
    );
    let sim = SmdpSim::start(Some(&callback), None).unwrap();
    let mut opts = options(StoreConfig::Memory);
    opts.env
        .insert("SPIN_VARIABLE_SMDP_URL".into(), sim.url.clone());
    opts.env
        .insert("SPIN_VARIABLE_ES2_TIMEOUT_MS".into(), es2_timeout_ms.into());
    for (k, v) in env {
        opts.env.insert((*k).into(), v.clone());
    }
    let app = spawn_app_on(opts, listener).await.unwrap();
    Stack {
        app,
        sim,
        http: reqwest::Client::new(),
    }
}

impl Stack {
    /// The dispatch component on the app's own store, sending real HTTP to the simulator.
    async fn dispatch(&self, es2_timeout_ms: &str) -> Kit {
        Kit::builder("dispatch")
            .store(self.app.app.stores["default"].clone())
            .var("smdp_url", &self.sim.url)
            .var("es2_timeout_ms", es2_timeout_ms)
            .allow(&self.sim.url)
            .respond(|_| Scripted::Forward)
            .build()
            .await
            .unwrap()
    }

    /// GET as the SIMs' owner (a wallet sign-in per request).
    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.app.url))
            .header("sign-in-with-x", sign_in(OWNER_KEY, &self.app.url, path))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// POST as the SIMs' owner (a wallet sign-in per request).
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.app.url))
            .header("sign-in-with-x", sign_in(OWNER_KEY, &self.app.url, path))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn sim(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut r = self.http.request(method, format!("{}{path}", self.sim.url));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    }

    /// Credit `sim`'s 100 MB through the metering component on the app's store, as the paid flow does once
    /// its order is delivered (a switch moves that balance, and is refused for a SIM without one).
    async fn credit(&self, sim: &types::Sim) {
        let mut kit = Kit::builder("metering")
            .store(self.app.app.stores["default"].clone())
            .build()
            .await
            .unwrap();
        let credit = esim402_testkit::metering::DataCredit {
            invoice_id: sim.invoice_id.clone(),
            kind: "activation".into(),
            bytes: 100_000_000,
            paid: 300_000,
            payer: OWNER_ADDRESS.into(),
            transaction: format!("0x{:064x}", 1),
            network: "eip155:31337".into(),
        };
        let sim = sim.clone();
        kit.call(async move |a, g| {
            g.metering()
                .call_credit(a, sim, credit, 1_764_000_050)
                .await
        })
        .await
        .unwrap()
        .unwrap();
    }

    /// Profiles held by orders that are neither finished nor returned, across every operator.
    async fn stranded(&self) -> u64 {
        let mut n = 0;
        for op in ["tmobile", "verizon", "att", "telekom-de", "vodafone-de"] {
            let v = self
                .sim(
                    reqwest::Method::GET,
                    &format!("/admin/operators/{op}/profiles"),
                    None,
                )
                .await;
            for state in ["Allocated", "Linked", "Confirmed"] {
                n += v["counts"][state].as_u64().unwrap_or(0);
            }
        }
        n
    }
}

/// The paid switch of `iccid` to AT&T for `invoice` (the component call the payments flow makes): the new SIM.
async fn switch_to_att(kit: &mut Kit, iccid: &str, invoice: &str) -> types::Sim {
    let (id, invoice) = (iccid.to_owned(), invoice.to_owned());
    kit.call(async move |a, g| {
        g.dispatch()
            .call_perform_switch(
                a,
                id,
                types::SwitchTarget::Carrier("att".into()),
                invoice,
                1_764_000_100,
                None,
            )
            .await
    })
    .await
    .unwrap()
    .unwrap()
}

async fn order(
    kit: &mut Kit,
    carrier: Option<&str>,
    invoice: &str,
) -> Result<types::Sim, types::Error> {
    let req = types::ActivationRequest {
        region: "us-west".into(),
        data_mb: 100,
        carrier: carrier.map(Into::into),
        eid: None,
        payer: None,
        networks: Vec::new(),
        allow_failover: false,
    };
    let invoice = invoice.to_owned();
    kit.call(async move |a, g| {
        g.dispatch()
            .call_order_profile(
                a,
                req,
                invoice,
                OWNER_ADDRESS.into(),
                None,
                1_764_000_000,
                None,
            )
            .await
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn activation_callbacks_failover_and_lifecycle_through_the_host() {
    let s = stack("10000").await;
    let mut kit = s.dispatch("10000").await;

    // 1. A profile from the region's default carrier, with a valid activation code from the simulator.
    let sim = order(&mut kit, None, "inv-a").await.unwrap();
    assert_eq!(sim.carrier, "tmobile");
    let code = sim.activation_code.clone().unwrap();
    let parsed = esim402_core::esim::ActivationCode::parse(&code).unwrap();
    assert_eq!(parsed.smdp_address().as_str(), "smdp.tmobile.esim402.test");
    let at_sim = s
        .sim(
            reqwest::Method::GET,
            &format!("/admin/operators/tmobile/profiles/{}", sim.iccid),
            None,
        )
        .await;
    assert_eq!(
        at_sim["matchingId"].as_str(),
        Some(parsed.matching_id().as_str())
    );

    // 2. The simulator's device downloads and installs; its callbacks reach the host and move the state.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = s.get(&format!("/v1/esim/{}", sim.iccid)).await;
        assert_eq!(status, 200);
        assert!(
            body.get("activation_code").is_none(),
            "GET never re-reveals the code"
        );
        if body["profile_state"] == "installed" {
            assert_eq!(body["carrier"], "tmobile");
            assert_eq!(body["state"], "active");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no installation callback: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 3. Drain T-Mobile's pool mid-run: the next activation fails over and says who served it.
    s.sim(
        reqwest::Method::PUT,
        "/admin/operators/tmobile/pools/tmo-iot-data",
        Some(json!({"available": 0})),
    )
    .await;
    let second = order(&mut kit, None, "inv-b").await.unwrap();
    assert_eq!(second.carrier, "verizon");
    assert!(second.failovers[0].contains("tmobile") && second.failovers[0].contains("8.2.5/3.7"));
    let (_, body) = s.get(&format!("/v1/esim/{}", second.iccid)).await;
    assert_eq!(body["carrier"], "verizon");
    assert_eq!(body["failovers"].as_array().unwrap().len(), 1);

    // An explicit carrier with an empty pool and no failover is refused, and nothing is left allocated.
    let refused = order(&mut kit, Some("tmobile"), "inv-c").await;
    assert!(matches!(refused, Err(types::Error::Unavailable(_))));
    assert_eq!(s.stranded().await, 0);

    // 4. Lifecycle over HTTP, with 409 for an invalid transition.
    let path = |a: &str| format!("/v1/esim/{}/{a}", sim.iccid);
    let (st, body) = s.post(&path("suspend"), json!({})).await;
    assert_eq!((st, body["state"].as_str()), (200, Some("suspended")));
    let (st, body) = s.post(&path("suspend"), json!({})).await;
    assert_eq!(st, 409, "{body}");
    let (st, body) = s.post(&path("resume"), json!({})).await;
    assert_eq!((st, body["state"].as_str()), (200, Some("active")));

    // 5. A switch is priced and invoiced (402) for the payments flow to charge, once the SIM has a balance to
    // move (409 before: its payment not credited).
    // (The second SIM's: the first is terminated below, whose refund a credit without a real invoice would
    // leave unrecordable.)
    let second_switch = format!("/v1/esim/{}/switch", second.iccid);
    let (st, body) = s.post(&second_switch, json!({"carrier": "att"})).await;
    assert_eq!(st, 409, "{body}");
    s.credit(&second).await;
    let (st, body) = s.post(&second_switch, json!({"carrier": "att"})).await;
    assert_eq!(st, 402, "{body}");
    // The fee: the unused balance moves by its value, at AT&T's rate.
    assert_eq!(body["amount_usdc"], "0.12");
    let (st, body) = s
        .post(
            &path("switch"),
            json!({"carrier": "att", "region": "eu-central"}),
        )
        .await;
    assert_eq!((st, body["error"]["field"].as_str()), (400, Some("body")));
    let (st, body) = s.post(&path("switch"), json!({"carrier": "nope-co"})).await;
    assert_eq!(
        (st, body["error"]["field"].as_str()),
        (400, Some("carrier")),
        "{body}"
    );

    // 6. A paid switch (the component call the payments flow will make): the new profile comes from AT&T,
    // and the old SIM leaves service only when the simulator reports the new one installed.
    let new = switch_to_att(&mut kit, &second.iccid, "inv-switch").await;
    assert_eq!(new.carrier, "att");
    assert_eq!(new.replaces.as_deref(), Some(second.iccid.as_str()));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = s.get(&format!("/v1/esim/{}", second.iccid)).await;
        if body["state"] == "terminated" {
            assert_eq!(body["replaced_by"].as_str(), Some(new.iccid.as_str()));
            break;
        }
        assert!(Instant::now() < deadline, "old SIM never retired: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, body) = s.get(&format!("/v1/esim/{}", new.iccid)).await;
    assert_eq!(body["profile_state"], "installed");

    let (st, _) = s.post(&path("terminate"), json!({})).await;
    assert_eq!(st, 200);
    let (st, _) = s.post(&path("resume"), json!({})).await;
    assert_eq!(st, 409);

    // 7. Unknown and malformed ICCIDs.
    let (st, _) = s.get("/v1/esim/8944478600003770170").await;
    assert_eq!(st, 404);
    let (st, body) = s.get("/v1/esim/12345").await;
    assert_eq!((st, body["error"]["field"].as_str()), (400, Some("iccid")));
    // Callbacks: no credential (or another's) is 401 before the body is read; the right one reaches the
    // body's checks.
    let (st, _) = s
        .post(
            "/gsma/rsp2/es2plus/handleDownloadProgressInfo",
            json!({"iccid": "x"}),
        )
        .await;
    assert_eq!(st, 401);
    let callback = |credential: &str| {
        s.http
            .post(format!(
                "{}/gsma/rsp2/es2plus/handleDownloadProgressInfo",
                s.app.url
            ))
            .bearer_auth(credential)
            .json(&json!({"iccid": "x"}))
            .send()
    };
    assert_eq!(
        callback("test-callback-tmobile").await.unwrap().status(),
        400
    );
    assert_eq!(
        callback("test-callback-tmobilE").await.unwrap().status(),
        401
    );
    // A forged "installed" for the replacement SIM (to retire the old one) from another carrier is refused, as
    // for a SIM that does not exist (a carrier learns nothing of another's ICCIDs).
    let forged = json!({"iccid": new.iccid, "profileType": "att-iot-data", "timestamp": "2026-11-24T10:00:00Z",
        "notificationPointId": 4, "notificationPointStatus": {"status": "Executed-Success"}});
    let r = s
        .http
        .post(format!(
            "{}/gsma/rsp2/es2plus/handleDownloadProgressInfo",
            s.app.url
        ))
        .bearer_auth("test-callback-verizon")
        .json(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    s.app.stop().await;
}

#[tokio::test]
async fn a_lost_reply_is_recovered_and_returned_to_the_pool() {
    let s = stack("300").await;
    let mut kit = s.dispatch("300").await;
    // T-Mobile executes DownloadOrder but answers after the client gave up: the profile is allocated and
    // the facilitator never learns its ICCID.
    s.sim(
        reqwest::Method::PUT,
        "/admin/operators/tmobile/faults",
        Some(json!({"reply_delay_ms": 1500})),
    )
    .await;
    let sim = order(&mut kit, None, "inv-lost").await.unwrap();
    assert_eq!(sim.carrier, "verizon");
    assert!(sim.failovers[0].contains("timeout"), "{:?}", sim.failovers);
    assert!(
        s.stranded().await >= 1,
        "the lost order holds a T-Mobile profile"
    );

    // T-Mobile recovers; the next order first replays the lost call id, learns the ICCID and cancels it.
    s.sim(
        reqwest::Method::PUT,
        "/admin/operators/tmobile/faults",
        Some(json!({})),
    )
    .await;
    let next = order(&mut kit, None, "inv-next").await.unwrap();
    assert_eq!(next.carrier, "tmobile");
    assert_eq!(s.stranded().await, 0, "no profile stays allocated");
    let queue: Value = serde_json::from_slice(&kit.kv_get("cleanup/queue").await.unwrap()).unwrap();
    assert_eq!(queue, json!([]));
    s.app.stop().await;
}

/// The simulator's device starts downloading as soon as ConfirmOrder executes, so with a slow reply its
/// callbacks reach the host while our record is still pending. The SM-DP+ never resends a notification we
/// answered 204: they must count (before, they were dropped, the SIM stayed `released`, and a switch's old SIM
/// stayed in service for good).
#[tokio::test]
async fn callbacks_that_arrive_before_the_confirms_answer_are_kept() {
    let s = stack("5000").await;
    let mut kit = s.dispatch("5000").await;
    let old = order(&mut kit, None, "inv-early-old").await.unwrap();
    assert_eq!(old.carrier, "tmobile");
    for op in ["tmobile", "att"] {
        s.sim(
            reqwest::Method::PUT,
            &format!("/admin/operators/{op}/faults"),
            Some(json!({"reply_delay_ms": 1500})),
        )
        .await;
    }

    // A plain order: delivered already installed, and it stays so.
    let sim = order(&mut kit, None, "inv-early").await.unwrap();
    assert_eq!(sim.carrier, "tmobile");
    assert_eq!(sim.profile_state, types::ProfileState::Installed);
    let (_, body) = s.get(&format!("/v1/esim/{}", sim.iccid)).await;
    assert_eq!(
        (body["state"].as_str(), body["profile_state"].as_str()),
        (Some("active"), Some("installed")),
        "{body}"
    );

    // A switch: its replacement installed before the switch delivered it, the old SIM leaves service.
    let new = switch_to_att(&mut kit, &old.iccid, "inv-early-switch").await;
    assert_eq!(new.carrier, "att");
    assert_eq!(new.profile_state, types::ProfileState::Installed);
    let (_, body) = s.get(&format!("/v1/esim/{}", old.iccid)).await;
    assert_eq!(body["state"], "terminated", "{body}");
    assert_eq!(body["replaced_by"].as_str(), Some(new.iccid.as_str()));
    s.app.stop().await;
}

#[tokio::test]
async fn the_host_denies_a_carrier_endpoint_outside_allowed_outbound_hosts() {
    // The app's catalog points T-Mobile's ES2+ at a host that spin.toml does not allow; the order itself is
    // placed by a kit using the default catalog, then the app terminates the SIM, which must CancelOrder.
    let denied = esim402_core::esim::catalog::BUILTIN_TOML
        .replace("{smdp_base}/tmobile", "http://127.0.0.2:9/tmobile");
    let s = stack_with("2000", &[("SPIN_VARIABLE_CARRIER_CATALOG", denied)]).await;
    let mut kit = s.dispatch("2000").await;
    let sim = order(&mut kit, None, "inv-denied").await.unwrap();
    assert_eq!(sim.carrier, "tmobile");

    let (st, body) = s
        .post(&format!("/v1/esim/{}/terminate", sim.iccid), json!({}))
        .await;
    assert_eq!(
        (st, body["state"].as_str()),
        (200, Some("terminated")),
        "{body}"
    );
    // The host refused the request inside the guest: the simulator never saw a cancel, and the component
    // queued it for a later sweep instead of forgetting it.
    let profile = s
        .sim(
            reqwest::Method::GET,
            &format!("/admin/operators/tmobile/profiles/{}", sim.iccid),
            None,
        )
        .await;
    assert_ne!(profile["state"], "Available", "{profile}");
    let stats = s.sim(reqwest::Method::GET, "/admin/stats", None).await;
    let tmobile = &stats["operators"]["tmobile"];
    assert_eq!(
        tmobile["downloadOrder"]["calls"].as_u64(),
        Some(1),
        "{stats}"
    );
    assert_eq!(
        tmobile["cancelOrder"]["calls"].as_u64().unwrap_or(0),
        0,
        "{stats}"
    );
    let queue: Value = serde_json::from_slice(&kit.kv_get("cleanup/queue").await.unwrap()).unwrap();
    assert_eq!(queue[0]["kind"], "cancel");
    assert_eq!(queue[0]["iccid"].as_str(), Some(sim.iccid.as_str()));
    s.app.stop().await;
}
