use esim402_testkit::{Kit, types};

#[tokio::test]
async fn verification_reports_unavailable_until_built() {
    // Payment verification is issue 4's work (README feature table); until then the verifier must refuse
    // every proof rather than accept one, and it must not reach the chain.
    let mut kit = Kit::builder("verifier").build().await.unwrap();
    let r = kit
        .call(async |a, g| {
            g.verifier()
                .call_verify(a, "inv".into(), types::PaymentProof::TxHash("0x00".into()))
                .await
        })
        .await
        .unwrap();
    assert!(matches!(r, Err(types::Error::Unavailable(_))));
    assert!(kit.requests().is_empty());
}
