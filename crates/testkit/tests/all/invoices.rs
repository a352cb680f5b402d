use esim402_testkit::{Kit, types};

const RECIPIENT: &str = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC";

async fn kit() -> Kit {
    Kit::builder("invoices")
        .var("payment_network", "eip155:31337")
        .var("usdc_address", "0x5FbDB2315678afecb367f032d93F642f64180aa3")
        .var("usdc_eip712_name", "USD Coin")
        .var("usdc_eip712_version", "2")
        .var("recipient_address", RECIPIENT)
        .var("invoice_ttl_secs", "900")
        .build()
        .await
        .unwrap()
}

fn purchase() -> types::Purchase {
    types::Purchase::Activation(crate::activation("us-west", 100))
}

#[tokio::test]
async fn issue_persists_the_invoice_with_the_configured_payment_option() {
    let mut kit = kit().await;
    let inv = kit
        .call(async |a, g| g.invoices().call_issue(a, purchase(), 420_000, 1_000).await)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(inv.amount, 420_000);
    assert_eq!(inv.created_at, 1_000);
    assert_eq!(inv.expires_at, 1_900);
    assert_eq!(inv.status, types::InvoiceStatus::Open);
    assert_eq!(inv.options.len(), 1);
    assert_eq!(inv.options[0].network, "eip155:31337");
    assert_eq!(inv.options[0].pay_to, RECIPIENT);
    assert_eq!(inv.options[0].eip712_name, "USD Coin");

    let stored = kit.kv_get(&format!("invoice/{}", inv.id)).await.unwrap();
    let json: serde_json::Value = serde_json::from_slice(&stored).unwrap();
    assert_eq!(json["amount_usdc"], "0.42");
    assert_eq!(json["invoice_id"], inv.id.as_str());

    let id = inv.id.clone();
    let read = kit
        .call(async |a, g| g.invoices().call_get(a, id, 1_001).await)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(read.id, inv.id);
    assert_eq!(read.status, types::InvoiceStatus::Open);
}

#[tokio::test]
async fn an_invoice_read_after_its_deadline_is_expired() {
    let mut kit = kit().await;
    let inv = kit
        .call(async |a, g| g.invoices().call_issue(a, purchase(), 50_000, 1_000).await)
        .await
        .unwrap()
        .unwrap();
    let read = kit
        .call(async |a, g| g.invoices().call_get(a, inv.id, 1_901).await)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(read.status, types::InvoiceStatus::Expired);
}

#[tokio::test]
async fn racing_mark_paid_calls_have_exactly_one_winner() {
    let mut kit = kit().await;
    let inv = kit
        .call(async |a, g| g.invoices().call_issue(a, purchase(), 420_000, 1_000).await)
        .await
        .unwrap()
        .unwrap();
    let id = inv.id.clone();
    // 32 concurrent calls into the same instance: the component's CAS loop must let exactly one through.
    let results = kit
        .call(async move |a, g| {
            let calls = (0..32).map(|i| {
                g.invoices()
                    .call_mark_paid(a, id.clone(), format!("0x{i:064x}"), "0xpayer".into())
            });
            let mut out = Vec::new();
            for r in crate::join_all(calls).await {
                out.push(r?);
            }
            Ok(out)
        })
        .await
        .unwrap();
    let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| matches!(e, types::Error::Conflict(m) if m.contains("paid")))
    );
    let stored = kit.kv_get(&format!("invoice/{}", inv.id)).await.unwrap();
    let json: serde_json::Value = serde_json::from_slice(&stored).unwrap();
    assert_eq!(json["status"], "paid");
    assert_eq!(
        json["transaction"].as_str(),
        winners[0].transaction.as_deref()
    );
}

#[tokio::test]
async fn bad_input_and_bad_configuration_are_typed_errors() {
    let mut kit = kit().await;
    let zero = kit
        .call(async |a, g| g.invoices().call_issue(a, purchase(), 0, 1_000).await)
        .await
        .unwrap();
    assert!(matches!(zero, Err(types::Error::InvalidInput(f)) if f.field == "amount"));

    let bad_id = kit
        .call(async |a, g| g.invoices().call_get(a, "not an id".into(), 0).await)
        .await
        .unwrap();
    assert!(matches!(bad_id, Err(types::Error::InvalidInput(f)) if f.field == "invoice_id"));

    let mut misconfigured = Kit::builder("invoices")
        .var("payment_network", "eip155:31337")
        .var("usdc_address", "0x5FbDB2315678afecb367f032d93F642f64180aa3")
        .var("usdc_eip712_name", "USD Coin")
        .var("usdc_eip712_version", "2")
        .var("recipient_address", "not-an-address")
        .var("invoice_ttl_secs", "900")
        .build()
        .await
        .unwrap();
    let err = misconfigured
        .call(async |a, g| g.invoices().call_issue(a, purchase(), 1, 1).await)
        .await
        .unwrap();
    assert!(matches!(err, Err(types::Error::Internal(m)) if m.contains("recipient_address")));
}
