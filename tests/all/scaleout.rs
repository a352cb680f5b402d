//! Several instances on one Redis: two `esim402 up` processes (each stopped by its PID) share one private
//! redis-server, and the same request is raced across both. One payment settles once and buys one SIM; one
//! receipt batch charges once; suspend/resume/terminate leave one state both instances read; and the ledger
//! both append to verifies with every money event in it exactly once.

use std::collections::{BTreeMap, BTreeSet};

use esim402_tests::{AppProcess, Runner};
use serde_json::{Value, json};

use crate::metering::receipt;
use crate::payments::{PayStack, Payment, Store, activation, agent, price};

/// The pay stack on Redis (instance A at `s.url`) and a second instance B on the same Redis.
struct Pair {
    s: PayStack,
    b: AppProcess,
}

impl Pair {
    async fn start() -> Self {
        let s = PayStack::start_with(Some((&Runner::Host, Store::Redis)), &[]).await;
        let b = s.start_peer(&s.app_env).await;
        Self { s, b }
    }

    /// Instance `i % 2`'s base URL.
    fn url(&self, i: usize) -> &str {
        if i.is_multiple_of(2) {
            &self.s.url
        } else {
            &self.b.url
        }
    }

    /// Send `n` copies of one request alternately to both instances, all at once; each answer's status and body.
    async fn race(
        &self,
        n: usize,
        request: impl Fn(usize, &str) -> reqwest::RequestBuilder,
    ) -> Vec<(u16, Value)> {
        let sends: Vec<_> = (0..n)
            .map(|i| {
                let req = request(i, self.url(i));
                tokio::spawn(async move {
                    let r = req.send().await.unwrap();
                    let status = r.status().as_u16();
                    (status, r.json::<Value>().await.unwrap_or(Value::Null))
                })
            })
            .collect();
        let mut answers = Vec::new();
        for s in sends {
            answers.push(s.await.unwrap());
        }
        answers
    }

    /// Every ledger entry (read through instance B) and the verification (through A).
    async fn ledger(&self) -> (Vec<Value>, Value) {
        let text = self
            .s
            .http
            .get(format!("{}/v1/ledger?limit=10000", self.b.url))
            .bearer_auth(&self.s.admin_token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let entries = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let (_, verify) = self.s.get("/v1/ledger/verify").await;
        (entries, verify)
    }
}

/// How many ledger entries of each kind.
fn kinds(entries: &[Value]) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for e in entries {
        *n.entry(e["kind"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    n
}

/// A SIM route request with the activation's `access_token` as a bearer token, when it carries one (SIM
/// routes that require ownership take it; the others ignore it).
/// A request to a SIM route as its owner: the paying agent's wallet sign-in, fresh per request (it outlives a
/// terminate, which revokes the access token). `activation` is the paid answer (its token is not used here).
fn sim_request(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    activation: &Value,
) -> reqwest::RequestBuilder {
    assert!(activation["access_token"].is_string(), "{activation}");
    let (origin, _) = esim402_core::auth::siwx::origin_of(&url).unwrap();
    let sign_in = esim402_tests::sign_in(
        esim402_host::devstack::chain::DEMO_AGENT_KEY.trim_start_matches("0x"),
        origin,
        &url[origin.len()..],
    );
    http.request(method, url).header("sign-in-with-x", sign_in)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_payment_raced_on_two_instances_settles_once_and_buys_one_sim() {
    let p = Pair::start().await;
    let s = &p.s;
    let start = s.balance(agent()).await;

    // A plain payment: one 200, every other copy a terminal 409.
    let (_, req) = s.invoice(&activation()).await;
    let header = Payment::for_requirement(&req).header();
    let answers = p
        .race(40, |_, url| {
            s.http
                .post(format!("{url}/v1/esim/activate"))
                .header("payment-signature", header.clone())
                .json(&activation())
        })
        .await;
    let winners: Vec<&Value> = answers
        .iter()
        .filter(|(st, _)| *st == 200)
        .map(|(_, b)| b)
        .collect();
    assert_eq!(winners.len(), 1, "{answers:?}");
    assert!(
        answers.iter().all(|(st, _)| *st == 200 || *st == 409),
        "{answers:?}"
    );
    let first = winners[0].clone();

    // With a payment-identifier: the stored answer (the same SIM, the same transaction) or 409 while in flight.
    let (_, req2) = s.invoice(&activation()).await;
    let header2 = Payment::for_requirement(&req2)
        .with_payment_id("pay_scaleout_0123456789abcdef")
        .header();
    let answers = p
        .race(40, |_, url| {
            s.http
                .post(format!("{url}/v1/esim/activate"))
                .header("payment-signature", header2.clone())
                .json(&activation())
        })
        .await;
    let ok: Vec<&Value> = answers
        .iter()
        .filter(|(st, _)| *st == 200)
        .map(|(_, b)| b)
        .collect();
    assert!(!ok.is_empty(), "{answers:?}");
    assert!(
        answers.iter().all(|(st, _)| *st == 200 || *st == 409),
        "{answers:?}"
    );
    let second = ok[0].clone();
    for b in &ok {
        assert_eq!(
            (&b["iccid"], &b["transaction"]),
            (&second["iccid"], &second["transaction"]),
            "one stored answer"
        );
    }
    // After the race the same payment with the same id replays that answer from either instance.
    for i in 0..2 {
        let r = s
            .http
            .post(format!("{}/v1/esim/activate", p.url(i)))
            .header("payment-signature", header2.clone())
            .json(&activation())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.json::<Value>().await.unwrap()["iccid"], second["iccid"]);
    }

    // On chain: two transfers, each once; the facilitator sent exactly two transactions.
    assert_eq!(s.balance(agent()).await, start - price(&req) - price(&req2));
    let sent = s.facilitator_transactions().await;
    assert_eq!(sent, "0x2", "one settlement per payment");
    // At the SM-DP+: exactly the two SIMs sold, both readable on both instances.
    let sold: BTreeSet<String> = [&first, &second]
        .iter()
        .map(|b| b["iccid"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(sold.len(), 2);
    assert_eq!(s.handed_out().await, sold, "no profile ordered twice");
    for paid in [&first, &second] {
        let iccid = paid["iccid"].as_str().unwrap();
        for i in 0..2 {
            let r = sim_request(
                &s.http,
                reqwest::Method::GET,
                format!("{}/v1/esim/{iccid}", p.url(i)),
                paid,
            )
            .send()
            .await
            .unwrap();
            assert_eq!(r.status(), 200);
        }
    }

    // The ledger: each money event of the two payments exactly once, and it verifies.
    let (entries, verify) = p.ledger().await;
    let n = kinds(&entries);
    for kind in [
        "invoice_issued",
        "payment_verified",
        "settlement_confirmed",
        "activation_completed",
        "data_credited",
    ] {
        assert_eq!(n.get(kind), Some(&2), "{kind}: {n:?}");
    }
    assert_eq!(n.values().sum::<usize>(), 10, "nothing else: {n:?}");
    assert_eq!(verify["ok"], true, "{verify}");
    assert_eq!(verify["count"], 10, "{verify}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_receipt_batch_raced_on_two_instances_charges_each_receipt_once() {
    let p = Pair::start().await;
    let s = &p.s;
    let act = s
        .activate_paid(&json!({"region": "us-west", "data_mb": 10}), &[])
        .await;
    let iccid = act["iccid"].as_str().unwrap().to_owned();
    let batch = json!({
        "receipts": (1..=20).map(|i| receipt(&iccid, "scaleout", i, 10_000, "310-260")).collect::<Vec<_>>()
    });
    let answers = p
        .race(30, |_, url| {
            s.http.post(format!("{url}/v1/usage")).json(&batch)
        })
        .await;
    let (mut accepted, mut duplicate, mut charged) = (0, 0, 0);
    for (status, r) in &answers {
        assert_eq!(*status, 200, "{r}");
        let t = &r["totals"];
        assert_eq!(t["rejected"], 0, "{r}");
        accepted += t["accepted"].as_u64().unwrap();
        duplicate += t["duplicate"].as_u64().unwrap();
        charged += t["bytes_charged"].as_u64().unwrap();
    }
    assert_eq!(accepted, 20, "each receipt accepted by exactly one copy");
    assert_eq!(
        duplicate,
        29 * 20,
        "every other copy reports it a duplicate"
    );
    assert_eq!(charged, 200_000);
    for i in 0..2 {
        let b: Value = sim_request(
            &s.http,
            reqwest::Method::GET,
            format!("{}/v1/esim/{iccid}/balance", p.url(i)),
            &act,
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        assert_eq!(b["used_bytes"], 200_000, "instance {i}: {b}");
    }
    // The receipt log holds each receipt once.
    let (status, log) = s
        .get(&format!("/v1/esim/{iccid}/receipts?from=1&limit=1000"))
        .await;
    assert_eq!(status, 200, "{log}");
    let seqs: Vec<u64> = log["receipts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["receipt"]["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs.iter().collect::<BTreeSet<_>>().len(), 20, "{log}");
    assert_eq!(seqs.len(), 20, "{log}");

    // Usage in the ledger: the charged batches add up to the bytes, once.
    let (entries, verify) = p.ledger().await;
    let charged_in_ledger: u64 = entries
        .iter()
        .filter(|e| e["kind"] == "usage_charged")
        .map(|e| {
            e["details"]["bytes"]
                .as_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert_eq!(charged_in_ledger, 200_000, "{entries:?}");
    assert_eq!(verify["ok"], true, "{verify}");
    assert_eq!(
        verify["count"].as_u64(),
        Some(entries.len() as u64),
        "{verify}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lifecycle_calls_raced_on_two_instances_leave_one_state() {
    let p = Pair::start().await;
    let s = &p.s;
    let act = s
        .activate_paid(&json!({"region": "us-west", "data_mb": 10}), &[])
        .await;
    let iccid = act["iccid"].as_str().unwrap().to_owned();
    let call = |i: usize, url: &str, action: &str| {
        sim_request(
            &s.http,
            reqwest::Method::POST,
            format!("{url}/v1/esim/{iccid}/{action}"),
            &act,
        )
        .json(&json!({}))
        .header("x-race", i)
    };
    let state = |i: usize| {
        let req = sim_request(
            &s.http,
            reqwest::Method::GET,
            format!("{}/v1/esim/{iccid}", p.url(i)),
            &act,
        );
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()["state"].clone()
        }
    };

    // Suspend and resume racing on both: every answer is a transition or a 409, and both read one state.
    let answers = p
        .race(24, |i, url| {
            call(i, url, if i % 4 < 2 { "suspend" } else { "resume" })
        })
        .await;
    assert!(
        answers.iter().all(|(st, _)| *st == 200 || *st == 409),
        "{answers:?}"
    );
    assert!(answers.iter().any(|(st, _)| *st == 200), "{answers:?}");
    let after = state(0).await;
    assert_eq!(state(1).await, after);
    assert!(after == "active" || after == "suspended", "{after}");

    // Terminate racing with suspend and resume: terminated, for good, on both.
    let actions = ["terminate", "suspend", "terminate", "resume"];
    let answers = p.race(24, |i, url| call(i, url, actions[i % 4])).await;
    assert!(
        answers.iter().all(|(st, _)| *st == 200 || *st == 409),
        "{answers:?}"
    );
    let terminated: Vec<&Value> = answers
        .iter()
        .filter(|(st, b)| *st == 200 && b["state"] == "terminated")
        .map(|(_, b)| b)
        .collect();
    assert!(!terminated.is_empty(), "{answers:?}");
    assert_eq!(state(0).await, "terminated");
    assert_eq!(state(1).await, "terminated");
    for i in 0..2 {
        let r = call(i, p.url(i), "resume").send().await.unwrap();
        assert_eq!(r.status(), 409, "a terminated SIM stays terminated");
    }
    // The unused data is owed back once, whichever terminate got there first: every answer names the same one.
    let refunds: BTreeSet<(String, String)> = terminated
        .iter()
        .flat_map(|b| b["refunds"].as_array().cloned().unwrap_or_default())
        .map(|r| (r["invoice"].to_string(), r["amount"].to_string()))
        .collect();
    assert_eq!(refunds.len(), 1, "{terminated:?}");
    let (entries, verify) = p.ledger().await;
    let n = kinds(&entries);
    assert_eq!(n.get("refund_owed"), Some(&1), "{n:?}");
    assert_eq!(verify["ok"], true, "{verify}");
}
