//! Tests of [`super`]: pending payments collected before a command.
#![allow(clippy::unwrap_used, reason = "tests")]
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::*;
use crate::testing::{Seen, Server, agent, challenge, facilitator, sim_answer};
use serde_json::json;

fn buy(region: &str) -> Value {
    json!({"region": region, "data_mb": 1})
}

fn pending_error(e: &AgentError) -> bool {
    matches!(e, AgentError::Unavailable { pending: true, .. })
}

/// A facilitator whose paid answers fail (500) while `down` is set; else a paid activation or switch gets a
/// new SIM (`89` and the number of paid answers so far), a paid top-up what it bought, without the balance
/// (as the facilitator answers a top-up sent without the owner's credential). A GET gets the balance.
async fn flaky(down: Arc<AtomicBool>) -> Server {
    let served = std::sync::Mutex::new(0u32);
    Server::start(move |seen: &Seen| {
        if seen.method == "GET" {
            return (200, vec![], json!({"remaining_kb": 1000}));
        }
        if seen.header("payment-signature").is_none() {
            return challenge(seen);
        }
        if down.load(Ordering::SeqCst) {
            return (500, vec![], json!({"error": {"message": "down"}}));
        }
        let mut n = served.lock().unwrap();
        *n += 1;
        let body: Value = serde_json::from_slice(&seen.body).unwrap();
        if seen.target.ends_with("/data") {
            let answer = json!({"iccid": seen.target.split('/').nth(3), "status": "topped_up",
                "topped_up_mb": body["top_up_mb"], "amount_usdc": "0.42", "transaction": format!("0x{n}")});
            return (200, vec![], answer);
        }
        (200, vec![], sim_answer(&format!("89{n}")))
    })
    .await
}

/// A different activation, run after an activation's reply was lost, first sends the pending one again (the
/// same payment) and records its SIM, and only then pays its own; while the pending one cannot be collected,
/// it pays nothing (exit 5). Before, it signed a second payment at once and the first SIM was never
/// recorded.
#[tokio::test]
async fn another_activation_collects_the_pending_one_first_and_pays_nothing_new_while_it_is_pending()
 {
    let down = Arc::new(AtomicBool::new(true));
    let f = flaky(down.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let a = agent(&f.url, dir.path());
    let e = a.activate(&buy("us-west")).await.unwrap_err();
    assert!(pending_error(&e), "{e}");
    let first = f.payments();
    assert_eq!(first.len(), 1);

    // Still down: the pending one is sent again, not collected, and no new payment is signed.
    let e = a.activate(&buy("eu-central")).await.unwrap_err();
    assert!(pending_error(&e), "{e}");
    let held = &a.state().load().unwrap().spends[0].payment_id;
    assert!(e.to_string().contains(held.as_str()), "names it: {e}");
    assert_eq!(
        f.payments(),
        [first[0].clone(), first[0].clone()],
        "nothing signed anew"
    );
    let st = a.state().load().unwrap();
    assert_eq!((st.spends.len(), st.pending.len()), (1, 1), "{st:?}");

    // Up again: the pending one is collected (its SIM recorded, with its token), then the new one is paid.
    down.store(false, Ordering::SeqCst);
    let got = a.activate(&buy("eu-central")).await.unwrap();
    let paid = f.payments();
    assert_eq!(paid.len(), 4);
    assert_eq!(
        paid[2], first[0],
        "the same payment collected the first SIM"
    );
    assert_ne!(paid[3], first[0], "then the new activation's own payment");
    let st = a.state().load().unwrap();
    assert!(st.pending.is_empty(), "{st:?}");
    assert_eq!(st.sims.len(), 2, "{st:?}");
    assert_eq!(
        st.sims[&got.iccid].access_token.as_deref(),
        Some("sim_secret_892")
    );
    assert_eq!(
        st.sims["891"].access_token.as_deref(),
        Some("sim_secret_891")
    );
    assert!(
        st.spends
            .iter()
            .all(|s| s.status == crate::state::SpendStatus::Settled)
    );
}

/// A top-up of another size for a SIM whose top-up is pending sends the pending one again first: collected,
/// it is settled and the new one paid; not collected, nothing new is paid for that SIM, while another SIM's
/// top-up is not held back by it. Before, each signed a new payment beside the pending one.
#[tokio::test]
async fn a_top_up_is_not_paid_again_while_one_of_the_same_sim_is_pending() {
    let down = Arc::new(AtomicBool::new(true));
    let f = flaky(down.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let a = agent(&f.url, dir.path());
    let e = a.top_up(Some("8901"), Some(10)).await.unwrap_err();
    assert!(pending_error(&e), "{e}");
    let e = a.top_up(Some("8901"), Some(20)).await.unwrap_err();
    assert!(pending_error(&e), "{e}");
    assert_eq!(
        f.payments().len(),
        2,
        "the pending one sent again, nothing new"
    );
    assert_eq!(a.state().load().unwrap().spends.len(), 1);

    down.store(false, Ordering::SeqCst);
    let other = a.top_up(Some("8902"), Some(5)).await.unwrap();
    assert_eq!(other["topped_up_mb"], 5, "another SIM's top-up is paid");
    let st = a.state().load().unwrap();
    assert!(st.pending.is_empty(), "collected first: {st:?}");
    let paid = f.payments();
    assert_eq!(paid[2], paid[0], "with the same payment");

    // Once nothing is pending, a top-up of the first SIM pays (one new payment).
    let got = a.top_up(Some("8901"), Some(20)).await.unwrap();
    assert_eq!(got["topped_up_mb"], 20);
    assert_eq!(f.payments().len(), 5);
    let st = a.state().load().unwrap();
    assert_eq!(st.spends.len(), 3, "{st:?}");
    assert!(
        st.spends
            .iter()
            .all(|s| s.status == crate::state::SpendStatus::Settled)
    );
}

/// What the CLI runs before `status`, `sims`, `balance`, …: every payment pending with this facilitator is
/// sent again and what it bought recorded (the activation's SIM and token; the switch's new SIM, retiring
/// the old one, sent with the old SIM's token as the switch was), a top-up settled; one pending with another
/// facilitator is not sent there, and stays. Nothing is signed.
#[tokio::test]
async fn every_pending_payment_is_collected_before_a_command() {
    let down = Arc::new(AtomicBool::new(true));
    let f = flaky(down.clone()).await;
    let other = facilitator(vec![(200, sim_answer("7777"))]).await;
    let dir = tempfile::tempdir().unwrap();
    let a = agent(&f.url, dir.path());
    // A SIM to switch and top up, with its token from this facilitator.
    a.state()
        .update(|s| {
            record_sim(s, sim_answer("8900"), None, &a.config().origin(), None).unwrap();
        })
        .unwrap();
    a.activate(&buy("us-west")).await.unwrap_err();
    a.top_up(Some("8900"), Some(10)).await.unwrap_err();
    a.switch(Some("8900"), &json!({"carrier": "att"}))
        .await
        .unwrap_err();
    // And one pending with another facilitator.
    agent(&other.url, dir.path())
        .state()
        .update(|s| {
            let (k, p) = s.pending.iter().next().unwrap();
            let key = k
                .replace(&f.url, &other.url)
                .replace("us-west", "eu-central");
            let p = PendingPayment {
                payment_id: "pay_elsewhere".into(),
                ..p.clone()
            };
            s.pending.insert(key, p);
        })
        .unwrap();
    let signed = f.payments();
    assert_eq!(signed.len(), 3);

    // Still down: nothing collected, everything stays pending, and says so.
    let got = a.collect_pending(|_| true).await.unwrap();
    assert_eq!(got.len(), 4);
    assert!(got.iter().all(Collection::is_pending), "{got:?}");
    assert!(got.iter().any(
        |c| matches!(&c.outcome, Outcome::Elsewhere(Facilitator::Origin(o)) if *o == other.url)
    ));
    assert_eq!(a.state().load().unwrap().pending.len(), 4);

    down.store(false, Ordering::SeqCst);
    let got = a.collect_pending(|_| true).await.unwrap();
    let said: Vec<String> = got.iter().map(ToString::to_string).collect();
    let st = a.state().load().unwrap();
    assert_eq!(
        st.pending.len(),
        1,
        "the other facilitator's stays: {said:?}"
    );
    assert_eq!(
        st.pending.values().next().unwrap().payment_id,
        "pay_elsewhere"
    );
    assert!(
        other.seen().is_empty(),
        "nothing sent to the other facilitator"
    );
    let resent = &f.payments()[6..];
    assert_eq!(resent.len(), 3);
    assert!(
        resent.iter().all(|p| signed.contains(p)),
        "the same payments, nothing signed"
    );
    assert_eq!(st.spends.len(), 3);
    assert!(
        st.spends
            .iter()
            .all(|s| s.status == crate::state::SpendStatus::Settled)
    );
    // The activation's SIM and the switch's new one are recorded, the switched SIM retired.
    let new: Vec<&crate::state::SimRecord> =
        st.sims.values().filter(|s| s.iccid != "8900").collect();
    assert_eq!(new.len(), 2, "{st:?}");
    assert!(new.iter().all(|s| s.access_token.is_some()));
    assert!(new.iter().any(|s| s.replaces.as_deref() == Some("8900")));
    assert!(st.sims["8900"].terminated);
    let switch = f
        .seen()
        .into_iter()
        .rfind(|s| s.target.ends_with("/switch"))
        .unwrap();
    assert_eq!(
        switch.header("authorization"),
        Some("Bearer sim_secret_8900")
    );
    assert!(
        said.iter()
            .any(|l| l.contains("a top-up of SIM 8900") && l.contains("topped up 10 MB")),
        "{said:?}"
    );
    assert!(said.iter().all(|l| !l.contains("null")), "{said:?}");
}

/// A switch of a SIM whose other switch is pending collects that one first: the SIM has moved, so nothing
/// new is paid (exit 2, naming the new SIM). Before, a second switch of the same SIM was paid.
#[tokio::test]
async fn a_switch_collects_a_pending_switch_of_the_same_sim_and_pays_nothing_new() {
    let down = Arc::new(AtomicBool::new(true));
    let f = flaky(down.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let a = agent(&f.url, dir.path());
    a.state()
        .update(|s| {
            record_sim(s, sim_answer("8900"), None, &a.config().origin(), None).unwrap();
        })
        .unwrap();
    a.switch(None, &json!({"carrier": "att"}))
        .await
        .unwrap_err();
    let e = a
        .switch(None, &json!({"carrier": "verizon"}))
        .await
        .unwrap_err();
    assert!(pending_error(&e), "{e}");
    assert_eq!(f.payments().len(), 2, "nothing new signed");
    down.store(false, Ordering::SeqCst);
    let e = a
        .switch(None, &json!({"carrier": "verizon"}))
        .await
        .unwrap_err();
    assert_eq!(e.exit_code(), crate::ExitCode::Usage, "{e}");
    assert!(e.to_string().contains("moved to SIM 891"), "{e}");
    let paid = f.payments();
    assert_eq!(paid.len(), 3);
    assert!(paid.iter().all(|p| *p == paid[0]), "one payment");
    let st = a.state().load().unwrap();
    assert!(
        st.pending.is_empty() && st.sims["8900"].terminated,
        "{st:?}"
    );
    assert_eq!(st.spends.len(), 1);
}

#[test]
fn keys_are_read_back() {
    let r = PendingRequest::parse(
        r#"POST http://127.0.0.1:3000/v1/esim/activate {"data_mb":1,"region":"us-west"}"#,
    )
    .unwrap();
    assert_eq!(r.origin, "http://127.0.0.1:3000");
    assert_eq!(r.path, "/v1/esim/activate");
    assert_eq!(r.body, Some(json!({"region": "us-west", "data_mb": 1})));
    assert_eq!(r.purchase, Purchase::Activation);
    let r = PendingRequest::parse(r#"POST https://[::1]:8443/v1/esim/8901/data {"top_up_mb":10}"#)
        .unwrap();
    assert_eq!(
        (r.origin.as_str(), r.purchase),
        ("https://[::1]:8443", Purchase::TopUp("8901".into()))
    );
    let r = PendingRequest::parse(r#"POST /v1/esim/8901/switch {"carrier":"att"}"#).unwrap();
    assert_eq!(
        (r.origin.as_str(), r.purchase),
        ("", Purchase::Switch("8901".into()))
    );
    let r =
        PendingRequest::parse("GET http://h:1/v1/esim/activate?region=us-west&data_mb=1").unwrap();
    assert_eq!(
        (r.body, r.purchase),
        (None, Purchase::Activation),
        "the proxy's paid GET"
    );
    for bad in [
        "activate x",
        "POST http://h:1/v1/esim/activate not-json",
        "GET /v1/esim/activate",
        "PUT http://h:1/v1/esim/activate {}",
        "POST http://h:1",
    ] {
        assert_eq!(PendingRequest::parse(bad), None, "{bad}");
    }
    assert_eq!(
        Purchase::of("/v1/esim/8901/suspend"),
        Purchase::Other("/v1/esim/8901/suspend".into())
    );
}

/// A payment pending under `key` (of this test's making: its header is never decoded by these servers).
fn hold(a: &Agent, key: &str, id: &str) {
    a.state()
        .update(|s| {
            let spend = crate::state::Spend {
                payment_id: id.into(),
                purpose: "test".into(),
                at: 1_700_000_000,
                amount_usdc: "0.42".parse().unwrap(),
                network: "eip155:31337".into(),
                pay_to: "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC".into(),
                status: crate::state::SpendStatus::Pending,
                transaction: None,
            };
            let p = PendingPayment {
                payment_id: id.into(),
                header: format!("signed-{id}"),
                valid_before: 1_700_000_300,
                slot: None,
                label: None,
            };
            s.begin(key, p, spend);
        })
        .unwrap();
}

/// Fix: a command without `--iccid` acts on the SIM it would have picked before the collection, never on one
/// collected now (recorded newest); with no SIM before, a command that reads acts on the one collected, and
/// one that changes or pays is refused (exit 2, naming it), the SIM recorded all the same. Before,
/// `terminate`, `suspend`, `top-up`, `switch` and `watch` acted on the SIM just collected.
#[tokio::test]
async fn a_command_without_iccid_acts_on_the_sim_it_had_not_one_just_collected() {
    let down = Arc::new(AtomicBool::new(true));
    let f = flaky(down.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let a = agent(&f.url, dir.path());
    a.state()
        .update(|s| {
            record_sim(s, sim_answer("8900"), None, &a.config().origin(), None).unwrap();
        })
        .unwrap();
    a.activate(&buy("us-west")).await.unwrap_err();
    down.store(false, Ordering::SeqCst);
    let target = a.before_command(None, CommandKind::Changes).await.unwrap();
    assert_eq!(target.as_deref(), Some("8900"), "the SIM it had");
    let st = a.state().load().unwrap();
    assert!(
        st.pending.is_empty() && st.sims.contains_key("891"),
        "collected: {st:?}"
    );
    assert_eq!(st.pick_sim(None).unwrap().iccid, "891", "the newest now");
    assert_eq!(
        a.before_command(Some("891"), CommandKind::Changes)
            .await
            .unwrap()
            .as_deref(),
        Some("891"),
        "a SIM named is the one acted on"
    );

    // No SIM before: reading the one collected is fine; changing or paying for it is not (exit 2, naming it);
    // `activate` needs none (and collects its own kind itself).
    for kind in [
        CommandKind::Changes,
        CommandKind::TopsUp,
        CommandKind::Switches,
        CommandKind::Reads,
        CommandKind::Activates,
    ] {
        let down = Arc::new(AtomicBool::new(true));
        let f = flaky(down.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let a = agent(&f.url, dir.path());
        a.activate(&buy("us-west")).await.unwrap_err();
        down.store(false, Ordering::SeqCst);
        let got = a.before_command(None, kind).await;
        let st = a.state().load().unwrap();
        match kind {
            CommandKind::Reads => {
                assert_eq!(got.unwrap(), None, "{kind:?}");
                assert_eq!(a.sim(None).unwrap().iccid, "891", "reads the one collected");
            }
            CommandKind::Activates => {
                assert_eq!(got.unwrap(), None, "{kind:?}");
                assert_eq!(st.pending.len(), 1, "its own kind, left to it: {st:?}");
                continue;
            }
            _ => {
                let e = got.unwrap_err();
                assert_eq!(e.exit_code(), crate::ExitCode::Usage, "{kind:?}: {e}");
                assert!(e.to_string().contains("--iccid 891"), "{kind:?}: {e}");
            }
        }
        assert!(
            st.pending.is_empty() && st.sims.contains_key("891"),
            "{kind:?}: {st:?}"
        );
    }
}

/// Fix: the pass before a command leaves pending switches alone (a `watch` follows its SIM through its
/// switch: collected by another command, the watched SIM was retired under it), and a `switch` of one SIM
/// sends again only that SIM's pending switches. Before, `status` (or any command) and a switch of another SIM
/// collected every pending switch.
#[tokio::test]
async fn only_a_switch_of_the_same_sim_collects_a_pending_switch() {
    let down = Arc::new(AtomicBool::new(true));
    let f = flaky(down.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let a = agent(&f.url, dir.path());
    a.state()
        .update(|s| {
            record_sim(s, sim_answer("8900"), None, &a.config().origin(), None).unwrap();
            record_sim(s, sim_answer("8901"), None, &a.config().origin(), None).unwrap();
        })
        .unwrap();
    a.switch(Some("8900"), &json!({"carrier": "att"}))
        .await
        .unwrap_err();
    down.store(false, Ordering::SeqCst);
    for kind in [
        CommandKind::Reads,
        CommandKind::Changes,
        CommandKind::TopsUp,
        CommandKind::Activates,
        CommandKind::Switches,
    ] {
        a.before_command(Some("8900"), kind).await.unwrap();
        a.before_command(None, kind).await.unwrap();
    }
    assert_eq!(f.payments().len(), 1, "not sent again");
    let st = a.state().load().unwrap();
    assert_eq!(st.pending.len(), 1, "{st:?}");
    assert!(!st.sims["8900"].terminated);

    // A switch of another SIM pays its own, and leaves this one's.
    let moved = a
        .switch(Some("8901"), &json!({"carrier": "verizon"}))
        .await
        .unwrap();
    assert_eq!(moved.iccid, "891");
    let paid = f.payments();
    assert_eq!(paid.len(), 2);
    assert_ne!(paid[1], paid[0], "its own payment, not the pending one");
    let st = a.state().load().unwrap();
    assert_eq!(st.pending.len(), 1, "{st:?}");
    assert!(!st.sims["8900"].terminated && st.sims["8901"].terminated);

    // A switch of that SIM collects it (and pays nothing new: the SIM has moved).
    let e = a
        .switch(Some("8900"), &json!({"carrier": "verizon"}))
        .await
        .unwrap_err();
    assert_eq!(e.exit_code(), crate::ExitCode::Usage, "{e}");
    assert_eq!(f.payments().pop().unwrap(), paid[0]);
    assert!(a.state().load().unwrap().pending.is_empty());
}

/// Fix: a payment for the same purchase pending with another facilitator origin holds a new one back (exit 1,
/// naming that origin and how to collect it, and `pending --forget` as a last resort, with its warning):
/// `localhost` and `127.0.0.1` can be one facilitator, so a new payment could pay twice. Before, a new
/// activation was paid at once. Forgetting it needs no `--force` (it can never be sent from here), keeps its
/// spend, and only then is a new one paid.
#[tokio::test]
async fn a_payment_pending_elsewhere_holds_back_a_new_one() {
    let first = facilitator(vec![(500, json!({"error": {"message": "down"}}))]).await;
    let other = facilitator(vec![(200, sim_answer("7777"))]).await;
    let dir = tempfile::tempdir().unwrap();
    agent(&first.url, dir.path())
        .activate(&buy("us-west"))
        .await
        .unwrap_err();
    let id = agent(&first.url, dir.path()).state().load().unwrap().spends[0]
        .payment_id
        .clone();
    let b = agent(&other.url, dir.path());
    for body in [buy("eu-central"), buy("us-west")] {
        let e = b.activate(&body).await.unwrap_err();
        assert_eq!(e.exit_code(), crate::ExitCode::Local, "{e}");
        let said = e.to_string();
        assert!(
            said.contains(&id)
                && said.contains(&format!("--url {}", first.url))
                && said.contains(&format!("pending --forget {id}"))
                && said.contains(FORGET_WARNING),
            "{said}"
        );
    }
    assert!(
        other.payments().is_empty(),
        "nothing signed: {:?}",
        other.seen()
    );
    assert_eq!(b.state().load().unwrap().spends.len(), 1);

    // Given up on (no --force: it is pending elsewhere), its spend kept: a new activation is paid.
    let spent = b.spent_today().unwrap();
    let origin = b.config().origin();
    forget_pending(b.state(), &id, Some(&origin), false).unwrap();
    assert_eq!(b.spent_today().unwrap(), spent, "its spend stays counted");
    let got = b.activate(&buy("eu-central")).await.unwrap();
    assert_eq!(got.iccid, "7777");
    assert_eq!(other.payments().len(), 1);
}

/// Fix: a payment that is never collected (the facilitator keeps failing it) holds back new ones of the same
/// purchase, and the refusal (exit 5) says to run the command again later, and names
/// `esim402-agent pending --forget <id>` only as a last resort, warning that it may pay twice. Listed (without
/// its signed payment); while its authorization is valid, forgetting it needs `--force` (before, a bare
/// `--forget` during a passing outage let the purchase be paid twice); forgotten, it is no longer sent, its
/// spend stays counted and a record of it, without its signed payment, is kept as abandoned; a new payment can
/// then be made.
#[tokio::test]
async fn a_payment_never_collected_can_be_forgotten_its_spend_kept() {
    let down = Arc::new(AtomicBool::new(true));
    let f = flaky(down.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let a = agent(&f.url, dir.path());
    a.activate(&buy("us-west")).await.unwrap_err();
    let id = a.state().load().unwrap().spends[0].payment_id.clone();
    let e = a.activate(&buy("eu-central")).await.unwrap_err();
    assert!(pending_error(&e), "{e}");
    let said = e.to_string();
    let (again, last) = (
        said.find("Run the command again later")
            .unwrap_or(usize::MAX),
        said.find("as a last resort").unwrap_or(0),
    );
    assert!(again < last, "run again first, forget last: {said}");
    assert!(
        said.contains(&format!("`esim402-agent pending --forget {id}`"))
            && said.contains(FORGET_WARNING),
        "{said}"
    );

    let st = a.state().load().unwrap();
    let listed = pending_payments(&st);
    assert_eq!(listed.len(), 1);
    let p = &listed[0];
    assert_eq!(
        (
            p.payment_id.as_str(),
            p.purchase.as_str(),
            p.origin.as_deref()
        ),
        (
            id.as_str(),
            "an activation (a new SIM)",
            Some(f.url.as_str())
        )
    );
    assert_eq!(p.amount_usdc.as_deref(), Some("0.42"));
    assert_eq!(p.signed_at, Some(st.spends[0].at));
    assert!(p.collected_by_commands);
    let header = &st.pending.values().next().unwrap().header;
    for shown in [p.to_string(), serde_json::to_string(p).unwrap()] {
        assert!(
            !shown.contains(header.as_str()),
            "never the signed payment: {shown}"
        );
        assert!(shown.contains(&id) && shown.contains("0.42"), "{shown}");
    }

    let origin = a.config().origin();
    let e = forget_pending(a.state(), "pay_nope", Some(&origin), true).unwrap_err();
    assert_eq!(e.exit_code(), crate::ExitCode::Usage, "{e}");
    // Pending with this facilitator, its authorization valid: not without --force.
    for o in [Some(origin.as_str()), None] {
        let e = forget_pending(a.state(), &id, o, false).unwrap_err();
        assert_eq!(e.exit_code(), crate::ExitCode::Usage, "{e}");
        let said = e.to_string();
        assert!(
            said.contains("--force")
                && said.contains(FORGET_WARNING)
                && said.contains("again later"),
            "{said}"
        );
        assert_eq!(a.state().load().unwrap().pending.len(), 1, "still pending");
    }
    let spent = a.spent_today().unwrap();
    let gone = forget_pending(a.state(), &id, Some(&origin), true).unwrap();
    assert_eq!(gone, *p);
    let st = a.state().load().unwrap();
    assert!(st.pending.is_empty(), "{st:?}");
    assert_eq!(a.spent_today().unwrap(), spent, "its spend stays counted");
    assert_eq!(st.spends[0].status, crate::state::SpendStatus::Unknown);
    let kept = &st.abandoned[&id];
    assert!(kept.request.contains("/v1/esim/activate"));
    assert_eq!(
        (
            kept.purchase.as_str(),
            kept.origin.as_deref(),
            kept.signed_at
        ),
        (
            "an activation (a new SIM)",
            Some(f.url.as_str()),
            p.signed_at
        )
    );
    assert_eq!(
        kept.amount_usdc.map(|a| a.to_string()).as_deref(),
        Some("0.42")
    );
    let text = std::fs::read_to_string(a.state().path().join(crate::state::FILE)).unwrap();
    assert!(
        !text.contains(header.as_str()),
        "never the signed payment: {text}"
    );

    // One whose authorization has expired needs no --force.
    hold(
        &a,
        &format!(
            "POST {}/v1/esim/8901/data {}",
            f.url,
            json!({"top_up_mb": 10})
        ),
        "pay_expired",
    );
    forget_pending(a.state(), "pay_expired", Some(&origin), false).unwrap();

    // Nothing sends it again, and a new activation is paid (deliberately).
    down.store(false, Ordering::SeqCst);
    let sent = f.payments().len();
    a.before_command(None, CommandKind::Reads).await.unwrap();
    assert_eq!(f.payments().len(), sent, "not sent again");
    let got = a.activate(&buy("eu-central")).await.unwrap();
    let paid = f.payments();
    assert_eq!(paid.len(), sent + 1);
    assert!(!paid[..sent].contains(&paid[sent]), "a new payment");
    assert_eq!(a.state().load().unwrap().sims[&got.iccid].iccid, got.iccid);
}

/// Fix: a payment an earlier agent kept without an origin, whose signature names no facilitator, is pending
/// with no facilitator anyone could name: what is printed about it says so and how to give up on it, never
/// "--url an unknown facilitator" (before, both the pass before a command and the refusal said that, and
/// nothing could end it). It holds every other activation back too (exit 1: it may have been charged
/// anywhere, this facilitator included), until it is forgotten, which needs no `--force`.
#[tokio::test]
async fn a_legacy_payment_of_an_unknown_facilitator_says_what_can_be_done() {
    let f = facilitator(vec![(200, sim_answer("8905"))]).await;
    let dir = tempfile::tempdir().unwrap();
    let a = agent(&f.url, dir.path());
    let body = buy("us-west");
    hold(&a, &format!("POST /v1/esim/activate {body}"), "pay_legacy");

    let got = a.collect_pending(|_| true).await.unwrap();
    assert!(
        matches!(
            &got[..],
            [Collection {
                outcome: Outcome::Elsewhere(Facilitator::Unknown),
                ..
            }]
        ),
        "{got:?}"
    );
    let e = a.activate(&body).await.unwrap_err();
    assert_eq!(e.exit_code(), crate::ExitCode::Local, "{e}");
    let listed = pending_payments(&a.state().load().unwrap());
    assert_eq!(listed[0].origin, None);
    for said in [got[0].to_string(), e.to_string(), listed[0].to_string()] {
        assert!(!said.contains("--url an unknown"), "{said}");
        assert!(!said.contains("--url of that"), "{said}");
        assert!(said.contains("an unknown facilitator"), "{said}");
    }
    for said in [got[0].to_string(), e.to_string()] {
        assert!(
            said.contains("`esim402-agent pending --forget pay_legacy`"),
            "{said}"
        );
    }
    assert!(f.payments().is_empty(), "sent nowhere");
    let e = a.activate(&buy("eu-central")).await.unwrap_err();
    assert_eq!(e.exit_code(), crate::ExitCode::Local, "{e}");
    assert!(e.to_string().contains("pending --forget pay_legacy"), "{e}");
    assert!(f.seen().is_empty(), "nothing asked: {:?}", f.seen());
    forget_pending(a.state(), "pay_legacy", Some(&a.config().origin()), false).unwrap();
    let other = a.activate(&buy("eu-central")).await.unwrap();
    assert_eq!(other.iccid, "8905");
}

/// Fix: the pass before a command sends each pending payment once: a settlement still pending stays pending
/// (sent again before the next command), not waited for. Before, each was sent up to 10 times, up to 5 s
/// apart, before every command.
#[tokio::test]
async fn the_pass_before_a_command_sends_a_settling_payment_once() {
    let f = Server::start(|seen: &Seen| {
        if seen.header("payment-signature").is_none() {
            return challenge(seen);
        }
        (
            402,
            vec![("retry-after", "0".to_owned())],
            json!({"error": {"code": "settlement_pending", "message": "settling"}, "transaction": "0xfe"}),
        )
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let a = agent(&f.url, dir.path());
    hold(
        &a,
        &format!("POST {}/v1/esim/activate {}", f.url, buy("us-west")),
        "pay_1",
    );
    let got = a.collect_pending(|_| true).await.unwrap();
    assert_eq!(f.payments(), ["signed-pay_1"], "sent once");
    assert!(
        matches!(&got[0].outcome, Outcome::StillPending(e) if e.to_string().contains("settlement still pending (tx 0xfe)")),
        "{got:?}"
    );
    assert_eq!(a.state().load().unwrap().pending.len(), 1);
    // The paying command's own request still waits for its settlement.
    a.activate(&buy("us-west")).await.unwrap_err();
    assert_eq!(f.payments().len(), 1 + PENDING_RETRIES as usize);
}

/// Fix: once the facilitator gives no answer (the connection refused, cut or timed out), the pass before a
/// command sends nothing more to it and reports the rest as not tried, still pending. Before, each payment
/// waited out its own failure (with a timeout, minutes each) before every command.
#[tokio::test]
async fn the_pass_before_a_command_stops_at_an_unreachable_facilitator() {
    // Accepts every connection and closes it at once: no answer.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            drop(conn);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let a = agent(&url, dir.path());
    hold(
        &a,
        &format!("POST {url}/v1/esim/activate {}", buy("us-west")),
        "pay_1",
    );
    hold(
        &a,
        &format!("POST {url}/v1/esim/8901/data {}", json!({"top_up_mb": 10})),
        "pay_2",
    );
    hold(
        &a,
        &format!("POST {url}/v1/esim/8902/data {}", json!({"top_up_mb": 10})),
        "pay_3",
    );
    let got = a.collect_pending(|_| true).await.unwrap();
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one connection: {got:?}"
    );
    assert_eq!(got.len(), 3);
    assert!(
        matches!(&got[0].outcome, Outcome::StillPending(e) if e.to_string().contains("unreachable")),
        "{got:?}"
    );
    for c in &got[1..] {
        assert!(matches!(c.outcome, Outcome::NotTried(_)), "{got:?}");
        assert!(c.to_string().contains("was not sent this time"), "{c}");
    }
    assert_eq!(a.state().load().unwrap().pending.len(), 3);

    // Fix: later stages of the same command (here the same agent's pass again, and a top-up's own pass) know
    // it is silent and report every payment not tried at once; only the command's own request tries once.
    // Before, each stage sent again and waited out the same silence.
    let again = a.collect_pending(|_| true).await.unwrap();
    assert!(
        again
            .iter()
            .all(|c| matches!(c.outcome, Outcome::NotTried(_))),
        "{again:?}"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "nothing sent again");
    let e = a.top_up(Some("8901"), Some(20)).await.unwrap_err();
    assert!(
        pending_error(&e) && e.to_string().contains("did not answer"),
        "{e}"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "refused before sending");
    let e = a.top_up(Some("8903"), Some(20)).await.unwrap_err();
    assert_eq!(e.exit_code(), crate::ExitCode::Unavailable, "{e}");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "its own request tries once"
    );

    // The next command (a new process) tries again.
    let b = agent(&url, dir.path());
    assert_eq!(
        b.before_command(None, CommandKind::Reads).await.unwrap(),
        None
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        3,
        "one more, for the next command"
    );
}

/// Fix: a facilitator taken for silent is tried again once it answers anything (a `watch` runs for days: a
/// passing outage must not keep its collections from ever being sent again).
#[tokio::test]
async fn a_facilitator_that_answers_again_is_no_longer_taken_for_silent() {
    let f = facilitator(vec![(200, sim_answer("8905"))]).await;
    let dir = tempfile::tempdir().unwrap();
    let a = agent(&f.url, dir.path());
    a.mark_silent();
    hold(
        &a,
        &format!("POST {}/v1/esim/activate {}", f.url, buy("us-west")),
        "pay_1",
    );
    let got = a.collect_pending(|_| true).await.unwrap();
    assert!(matches!(got[0].outcome, Outcome::NotTried(_)), "{got:?}");
    assert!(f.payments().is_empty());
    // Any answer (here a SIM route's 200) clears it.
    let sim = a.state().load().unwrap().pick_sim(Some("8901")).unwrap();
    a.sim_request(reqwest::Method::GET, &sim, "", None)
        .await
        .unwrap();
    assert_eq!(a.silent(), None);
    let got = a.collect_pending(|_| true).await.unwrap();
    assert!(matches!(got[0].outcome, Outcome::Sim(_)), "{got:?}");
}

/// Fix: `watch` starts without its collection pass only when another command holds the state directory's
/// lock (that command collects them); any other failure to take the lock is an error (exit 1). Before, every
/// lock error was taken for a busy lock and the watch went on.
#[tokio::test]
async fn the_watch_start_up_continues_only_past_a_busy_lock() {
    let f = facilitator(vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let a = agent(&f.url, dir.path());
    let held = a.state().lock().unwrap();
    assert_eq!(
        a.before_watch(Some("8901")).await.unwrap().as_deref(),
        Some("8901"),
        "busy: started without the pass"
    );
    drop(held);
    // A state "directory" that is a file: the lock cannot be taken at all.
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let b = agent(&f.url, &file);
    let e = b.before_watch(Some("8901")).await.unwrap_err();
    assert_eq!(e.exit_code(), crate::ExitCode::Local, "{e}");
    assert!(f.seen().is_empty(), "{:?}", f.seen());
}

/// Fix: the pass before a command sends only the requests the CLI makes (a POST activation, top-up or
/// switch), not those the paying proxy keeps for its devices (a paid GET, a quota request, another route):
/// their device's own request collects them. `pending` lists them as such. Before, a command run on a
/// proxy's device directory sent them.
#[tokio::test]
async fn requests_the_cli_does_not_make_are_not_collected() {
    let f = facilitator(vec![(200, sim_answer("8901"))]).await;
    let dir = tempfile::tempdir().unwrap();
    let a = agent(&f.url, dir.path());
    let url = &f.url;
    hold(
        &a,
        &format!("GET {url}/v1/esim/activate?region=us-west&data_mb=1"),
        "pay_get",
    );
    hold(
        &a,
        &format!("POST {url}/v1/esim/8901/data {}", json!({"quota_kb": 1024})),
        "pay_quota",
    );
    hold(
        &a,
        &format!("POST {url}/v1/esim/8901/suspend {{}}"),
        "pay_other",
    );
    let got = a.collect_pending(|_| true).await.unwrap();
    assert!(got.is_empty(), "{got:?}");
    assert_eq!(
        a.before_command(None, CommandKind::Reads).await.unwrap(),
        None
    );
    assert!(f.seen().is_empty(), "{:?}", f.seen());
    let st = a.state().load().unwrap();
    assert_eq!(st.pending.len(), 3);
    let listed = pending_payments(&st);
    assert!(
        listed.iter().all(|p| !p.collected_by_commands),
        "{listed:?}"
    );
    assert!(
        listed[0].to_string().contains("a proxied device's request"),
        "{}",
        listed[0]
    );
}

/// Fix: the line saying a SIM was collected names its ICCID and carrier, and where its activation code is
/// (`status --iccid …`), not the code itself (a stderr line ends up in logs). Before, it printed the LPA code.
#[test]
fn a_collected_sim_is_announced_without_its_activation_code() {
    let c = Collection {
        payment_id: "pay_1".into(),
        purchase: Purchase::Activation,
        outcome: Outcome::Sim(Activation {
            iccid: "8901".into(),
            activation_code: "LPA:1$smdp.example$8901".into(),
            answer: sim_answer("8901"),
        }),
    };
    let said = c.to_string();
    assert!(
        !said.contains("LPA:1$") && !said.contains("smdp.example"),
        "{said}"
    );
    assert!(
        said.contains("SIM 8901 on tmobile")
            && said.contains("`esim402-agent status --iccid 8901 --activation-code`"),
        "{said}"
    );
}

#[test]
fn times_are_told_in_utc() {
    assert_eq!(utc_time(0), "1970-01-01 00:00:00 UTC");
    assert_eq!(utc_time(951_782_400), "2000-02-29 00:00:00 UTC");
    assert_eq!(utc_time(1_796_546_813), "2026-12-06 08:46:53 UTC");
}
