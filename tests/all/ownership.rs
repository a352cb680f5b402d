//! Who may do what, end to end: the 402 challenge also answers a GET (and paying it activates), every known
//! route answers an unknown method with 405 and `Allow`, the access token rotates (the old one stops
//! working), a bad sign-in is 401 naming the problem, and anyone may pay for a top-up of any SIM.

use esim402_core::x402::header::decode_payment_required_header;
use serde_json::{Value, json};

use crate::payments::{PayStack, Payment};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn get_activate_is_a_payable_challenge_and_methods_are_announced() {
    let s = PayStack::start(&[]).await;
    let url = format!("{}/v1/esim/activate?region=us-west&data_mb=100", s.url);
    let r = s.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 402);
    let challenge =
        decode_payment_required_header(r.headers()["payment-required"].to_str().unwrap()).unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["amount_usdc"], "0.42", "{body}");
    // Paying the GET challenge activates, exactly like the POST.
    let pay = Payment::for_requirement(&challenge.accepts[0]);
    let r = s
        .http
        .get(&url)
        .header("payment-signature", pay.header())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let paid: Value = r.json().await.unwrap();
    assert!(
        paid["activation_code"]
            .as_str()
            .unwrap()
            .starts_with("LPA:1$")
    );
    let token = paid["access_token"].as_str().unwrap().to_owned();
    let iccid = paid["iccid"].as_str().unwrap().to_owned();
    // A malformed GET is a 400 naming the field.
    let r = s
        .http
        .get(format!(
            "{}/v1/esim/activate?region=us-west&data_mb=lots",
            s.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["field"], "data_mb");

    // Unknown methods on known routes: 405 with Allow.
    for (method, path, allow) in [
        (
            reqwest::Method::DELETE,
            "/v1/esim/activate".to_owned(),
            "GET, POST",
        ),
        (
            reqwest::Method::GET,
            format!("/v1/esim/{iccid}/suspend"),
            "POST",
        ),
        (reqwest::Method::PUT, format!("/v1/esim/{iccid}"), "GET"),
        (
            reqwest::Method::GET,
            "/gsma/rsp2/es2plus/handleDownloadProgressInfo".to_owned(),
            "POST",
        ),
        (reqwest::Method::POST, "/v1/ledger".to_owned(), "GET"),
    ] {
        let r = s
            .http
            .request(method.clone(), format!("{}{path}", s.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{method} {path}");
        assert_eq!(r.headers()["allow"], allow, "{method} {path}");
    }

    // Rotation: the new token works, the old one opens nothing.
    let sim_url = format!("{}/v1/esim/{iccid}", s.url);
    let rotate = s
        .http
        .post(format!("{sim_url}/token"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(rotate.status(), 200);
    let rotated = rotate.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(rotated, token);
    let status = |t: String| {
        let req = s.http.get(&sim_url).bearer_auth(t);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(token.clone()).await, 404);
    assert_eq!(status(rotated.clone()).await, 200);
    assert_eq!(status("not-a-token".into()).await, 401);
    // The scheme name is case-insensitive (RFC 9110).
    let lower = s
        .http
        .get(&sim_url)
        .header("authorization", format!("bearer {rotated}"))
        .send()
        .await
        .unwrap();
    assert_eq!(lower.status(), 200);
    // The paid answer replayed no longer hands out the rotated-away token.
    let r = s
        .http
        .get(&url)
        .header("payment-signature", pay.header())
        .send()
        .await
        .unwrap();
    let again: Value = r.json().await.unwrap();
    assert!(again.get("access_token").is_none(), "{again}");

    // Sign-ins that fail a check are 401 and say which.
    let path = format!("/v1/esim/{iccid}");
    let wrong_host = esim402_tests::sign_in(
        esim402_host::devstack::chain::DEMO_AGENT_KEY.trim_start_matches("0x"),
        "http://evil.test",
        &path,
    );
    let r = s
        .http
        .get(&sim_url)
        .header("sign-in-with-x", wrong_host.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        r#"Bearer realm="esim402", SIWX realm="esim402""#
    );
    let e: Value = r.json().await.unwrap();
    assert!(
        e["error"]["message"].as_str().unwrap().contains("domain"),
        "{e}"
    );
    // The operator's routes take the admin token only: their challenge offers no wallet sign-in.
    let r = s
        .http
        .get(format!("{}/v1/ledger", s.url))
        .header("sign-in-with-x", wrong_host.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        r#"Bearer realm="esim402-admin""#
    );
    // The wallet's own routes take a wallet sign-in only: their challenge offers no access token (before, it
    // did, and the token was then refused).
    for wallet_only in [
        format!("{}/v1/esim", s.url),
        format!("{sim_url}/activation"),
    ] {
        let r = s.http.get(&wallet_only).send().await.unwrap();
        assert_eq!(r.status(), 401, "{wallet_only}");
        assert_eq!(
            r.headers()["www-authenticate"],
            r#"SIWX realm="esim402""#,
            "{wallet_only}"
        );
    }
    // The same proof sent with that site's name as Host: still not this service (the Host header is the client's own, so it
    // says nothing about which site the wallet signed for; only a loopback request, or the configured
    // public_origins, name an origin a sign-in may be for).
    let r = s
        .http
        .get(&sim_url)
        .header("host", "evil.test")
        .header("sign-in-with-x", wrong_host)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let e: Value = r.json().await.unwrap();
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("public_origins"),
        "{e}"
    );
    let r = s
        .http
        .get(&sim_url)
        .header("sign-in-with-x", "bm90IGpzb24=")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // The ledger proves itself to anyone; its entries are the operator's.
    let (status, verify) = s.get("/v1/ledger/verify").await;
    assert_eq!((status, verify["ok"].as_bool()), (200, Some(true)));
    assert_eq!(
        verify.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["count", "head", "ok"]
    );
    let r = s
        .http
        .get(format!("{}/v1/ledger", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn anyone_may_pay_a_top_up_but_only_the_owner_reads_the_sim() {
    let s = PayStack::start(&[]).await;
    let act = s
        .activate_paid(&json!({"region": "us-west", "data_mb": 1}), &[])
        .await;
    let iccid = act["iccid"].as_str().unwrap().to_owned();

    // A stranger (no credential) reads nothing...
    let data = format!("{}/v1/esim/{iccid}/data", s.url);
    for path in ["", "/balance", "/usage", "/receipts"] {
        let r = s
            .http
            .get(format!("{}/v1/esim/{iccid}{path}", s.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "GET …{path}");
    }
    let r = s.http.post(&data).json(&json!({})).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // ...but may buy a top-up: the 402 prices it without showing the balance, and paying credits it.
    let r = s
        .http
        .post(&data)
        .json(&json!({"top_up_mb": 10}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 402);
    let challenge =
        decode_payment_required_header(r.headers()["payment-required"].to_str().unwrap()).unwrap();
    let offer: Value = r.json().await.unwrap();
    assert!(offer.get("remaining_kb").is_none(), "{offer}");
    assert_eq!(offer["top_up_options"][0]["data_mb"], 10);
    let pay = Payment::for_requirement(&challenge.accepts[0]);
    let r = s
        .http
        .post(&data)
        .header("payment-signature", pay.header())
        .json(&json!({"top_up_mb": 10}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, b) = s.get(&format!("/v1/esim/{iccid}/balance")).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["credited_bytes"], 11_000_000, "{b}");
}

/// A switch whose body is malformed is a 400 that leaves the wallet's sign-in unused: the same sign-in with a
/// good body still opens the SIM (its 402). Before, the sign-in's nonce was claimed before the body was read,
/// so the retry was refused 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_malformed_switch_does_not_use_up_the_sign_in() {
    let s = PayStack::start(&[]).await;
    let act = s
        .activate_paid(&json!({"region": "us-west", "data_mb": 1}), &[])
        .await;
    let iccid = act["iccid"].as_str().unwrap();
    let path = format!("/v1/esim/{iccid}/switch");
    let signed = s.sign_in(&path);
    let (status, _, e) = s
        .post(
            &path,
            &json!({"carrier": 7}),
            &[("sign-in-with-x", signed.clone())],
        )
        .await;
    assert_eq!(
        (status, e["error"]["field"].as_str()),
        (400, Some("carrier")),
        "{e}"
    );
    let (status, _, challenge) = s
        .post(
            &path,
            &json!({"carrier": "verizon"}),
            &[("sign-in-with-x", signed.clone())],
        )
        .await;
    assert_eq!(status, 402, "{challenge}");
    // Used now: a third request with it is refused.
    let (status, _, e) = s
        .post(
            &path,
            &json!({"carrier": "verizon"}),
            &[("sign-in-with-x", signed)],
        )
        .await;
    assert_eq!(status, 401, "{e}");
    // The quota route likewise: a malformed body leaves the sign-in for the corrected request.
    let path = format!("/v1/esim/{iccid}/data");
    let signed = s.sign_in(&path);
    let (status, _, e) = s
        .post(
            &path,
            &json!({"quota_kb": "lots"}),
            &[("sign-in-with-x", signed.clone())],
        )
        .await;
    assert_eq!(
        (status, e["error"]["field"].as_str()),
        (400, Some("quota_kb")),
        "{e}"
    );
    let (status, _, grant) = s
        .post(
            &path,
            &json!({"quota_kb": 100}),
            &[("sign-in-with-x", signed)],
        )
        .await;
    assert_eq!(status, 200, "{grant}");
    assert_eq!(
        (grant["status"].as_str(), grant["granted_kb"].as_u64()),
        (Some("granted"), Some(100)),
        "{grant}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_payer_lists_its_sims_by_agent_label() {
    let s = PayStack::start(&[]).await;
    let body = json!({"region": "us-west", "data_mb": 1});
    let mut tokens = Vec::new();
    for agent_id in ["pump-1", "pump-2"] {
        let act = s
            .activate_paid(&body, &[("x-agent-id", agent_id.to_owned())])
            .await;
        assert_eq!(act["agent_id"], agent_id, "{act}");
        tokens.push(act["access_token"].as_str().unwrap().to_owned());
    }
    // A label that is not one is refused before anything is paid; one that is not ASCII too (before, it was
    // dropped and the SIM bought without a label).
    for label in ["no spaces", "capteur-é"] {
        let (status, _, e) = s
            .post("/v1/esim/activate", &body, &[("x-agent-id", label.into())])
            .await;
        assert_eq!(
            (status, e["error"]["field"].as_str()),
            (400, Some("X-Agent-ID")),
            "{label}: {e}"
        );
    }

    let list = |query: &'static str, auth: Option<(&'static str, String)>| {
        let mut req = s.http.get(format!("{}/v1/esim{query}", s.url));
        if let Some((k, v)) = auth {
            req = req.header(k, v);
        }
        async move {
            let r = req.send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (status, all) = list("", Some(("sign-in-with-x", s.sign_in("/v1/esim")))).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["sims"].as_array().unwrap().len(), 2, "{all}");
    assert_eq!(all["next"], Value::Null, "{all}");
    // A page at a time, oldest first: `next` is the following page's `after`.
    let (status, first) = list(
        "?limit=1",
        Some(("sign-in-with-x", s.sign_in("/v1/esim?limit=1"))),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["sims"].as_array().unwrap().len(), 1, "{first}");
    assert_eq!(first["sims"][0]["agent_id"], "pump-1", "{first}");
    assert_eq!(first["next"], 1, "{first}");
    let (status, second) = list(
        "?after=1&limit=1",
        Some(("sign-in-with-x", s.sign_in("/v1/esim?after=1&limit=1"))),
    )
    .await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["sims"][0]["agent_id"], "pump-2", "{second}");
    assert_eq!(second["next"], Value::Null, "{second}");
    for (query, field) in [
        ("?limit=0", "limit"),
        ("?limit=1001", "limit"),
        ("?after=-1", "after"),
    ] {
        let (status, e) = list(query, None).await;
        assert_eq!(
            (status, e["error"]["field"].as_str()),
            (400, Some(field)),
            "{query}: {e}"
        );
    }
    // Without a credential the listing says what it needs, and no access token (which would not do here).
    let (status, e) = list("", None).await;
    let message = e["error"]["message"].as_str().unwrap_or_default();
    assert_eq!(status, 401, "{e}");
    assert!(
        message.contains("SIGN-IN-WITH-X") && !message.contains("Bearer"),
        "{e}"
    );
    let (status, e) = list("?agent_id=no%20spaces", None).await;
    let message = e["error"]["message"].as_str().unwrap_or_default();
    assert_eq!(
        (status, e["error"]["field"].as_str()),
        (400, Some("agent_id"))
    );
    assert!(!message.contains("X-Agent-ID"), "{e}");
    let (status, one) = list(
        "?agent_id=pump-2",
        Some(("sign-in-with-x", s.sign_in("/v1/esim?agent_id=pump-2"))),
    )
    .await;
    assert_eq!(status, 200, "{one}");
    let sims = one["sims"].as_array().unwrap();
    assert_eq!(sims.len(), 1, "{one}");
    assert_eq!(sims[0]["agent_id"], "pump-2");
    // Percent-encoded as clients encode queries (before, `%2D` was taken literally: a 400).
    let (status, encoded) = list(
        "?agent_id=pump%2D2",
        Some(("sign-in-with-x", s.sign_in("/v1/esim?agent_id=pump%2D2"))),
    )
    .await;
    assert_eq!(status, 200, "{encoded}");
    assert_eq!(encoded["sims"], one["sims"], "{encoded}");
    // Anonymous, or with one SIM's token: 401 (listing is the wallet's).
    assert_eq!(list("", None).await.0, 401);
    assert_eq!(
        list("", Some(("authorization", format!("Bearer {}", tokens[0]))))
            .await
            .0,
        401
    );
    // Another wallet paid for nothing here.
    let stranger = esim402_tests::sign_in(
        "8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
        &s.url,
        "/v1/esim",
    );
    let (status, none) = list("", Some(("sign-in-with-x", stranger))).await;
    assert_eq!(
        (status, none["sims"].as_array().map(Vec::len)),
        (200, Some(0))
    );
}
