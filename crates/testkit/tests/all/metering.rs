use esim402_testkit::{Kit, types};

const ICCID: &str = "8944478600003770170";

#[tokio::test]
async fn an_account_opens_once_and_reads_back() {
    let mut kit = Kit::builder("metering").build().await.unwrap();
    let b = kit
        .call(async |a, g| {
            g.metering()
                .call_open_account(a, ICCID.into(), 300_000, 3_000)
                .await
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!((b.remaining, b.used_bytes), (300_000, 0));

    let again = kit
        .call(async |a, g| g.metering().call_open_account(a, ICCID.into(), 1, 1).await)
        .await
        .unwrap();
    assert!(matches!(again, Err(types::Error::Conflict(_))));

    let read = kit
        .call(async |a, g| g.metering().call_get_balance(a, ICCID.into()).await)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        read.remaining, 300_000,
        "the second open must not overwrite"
    );
    assert!(kit.kv_get(&format!("balance/{ICCID}")).await.is_some());
}

#[tokio::test]
async fn unknown_and_malformed_iccids() {
    let mut kit = Kit::builder("metering").build().await.unwrap();
    let unknown = kit
        .call(async |a, g| g.metering().call_get_balance(a, ICCID.into()).await)
        .await
        .unwrap();
    assert!(matches!(unknown, Err(types::Error::NotFound(_))));
    let bad = kit
        .call(async |a, g| g.metering().call_get_balance(a, "12ab".into()).await)
        .await
        .unwrap();
    assert!(matches!(bad, Err(types::Error::InvalidInput(f)) if f.field == "iccid"));
}

#[tokio::test]
async fn receipts_and_top_ups_report_unavailable_until_built() {
    // Metering of usage receipts is not built yet (README feature table); it must say so, not pretend.
    let mut kit = Kit::builder("metering").build().await.unwrap();
    let r = kit
        .call(async |a, g| {
            g.metering()
                .call_top_up(a, ICCID.into(), 1, "x".into())
                .await
        })
        .await
        .unwrap();
    assert!(matches!(r, Err(types::Error::Unavailable(_))));
}
