//! Start-up checks through `App::load` on variants of the real manifest.

use esim402_host::app::{App, LoadOptions};
use esim402_host::runtime_config::StoreConfig;
use esim402_tests::{options, repo_root};

/// The repository's spin.toml rewritten by `edit`, in a temp dir, with component sources still pointing at
/// the repository's `build/wasm`.
fn manifest_variant(edit: impl Fn(String) -> String) -> (tempfile::TempDir, LoadOptions) {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo_root().join("spin.toml")).unwrap();
    let wasm = repo_root().join("build/wasm");
    let text = text.replace(
        "source = \"build/wasm/",
        &format!("source = \"{}/", wasm.display()),
    );
    let path = dir.path().join("spin.toml");
    std::fs::write(&path, edit(text)).unwrap();
    let mut opts = options(StoreConfig::Memory);
    opts.manifest = path;
    (dir, opts)
}

#[tokio::test]
async fn a_missing_required_variable_fails_start_up_naming_it() {
    let (_dir, opts) = manifest_variant(|t| {
        t.replace(
            "recipient_address = { default = \"0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC\" }",
            "recipient_address = { required = true }",
        )
    });
    let err = App::load(&opts).await.err().expect("load must fail");
    let msg = format!("{err:#}");
    assert!(msg.contains("recipient_address"), "{msg}");
    assert!(msg.contains("SPIN_VARIABLE_RECIPIENT_ADDRESS"), "{msg}");

    // The same manifest starts once the variable is provided through the environment.
    let mut opts = opts;
    opts.env.insert(
        "SPIN_VARIABLE_RECIPIENT_ADDRESS".into(),
        "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC".into(),
    );
    App::load(&opts).await.unwrap();
}

#[tokio::test]
async fn start_up_errors_never_print_secret_values() {
    // A secret that is set, next to a required variable that is not: the error names the missing one and
    // the secret's value appears nowhere.
    let (_dir, mut opts) = manifest_variant(|t| {
        t.replace(
            "invoice_ttl_secs = { default = \"900\" }",
            "invoice_ttl_secs = { required = true }",
        )
    });
    let secret = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
    opts.env.insert(
        "SPIN_VARIABLE_FACILITATOR_PRIVATE_KEY".into(),
        secret.into(),
    );
    let err = App::load(&opts).await.err().expect("load must fail");
    let msg = format!("{err:#} {err:?}");
    assert!(msg.contains("invoice_ttl_secs"), "{msg}");
    assert!(!msg.contains(&secret[2..20]), "secret leaked: {msg}");
}

#[tokio::test]
async fn an_unknown_manifest_key_that_matters_is_refused() {
    // Spin would mount files into the component; silently ignoring them would run a different app.
    let (_dir, opts) = manifest_variant(|t| {
        t.replace(
            "[component.gateway]\n",
            "[component.gateway]\nfiles = [\"static/**\"]\n",
        )
    });
    let err = App::load(&opts).await.err().expect("load must fail");
    assert!(format!("{err:#}").contains("`files`"), "{err:#}");
}

/// As under Spin: a component no trigger names must have its source too (before, it loaded here and the same
/// manifest failed under `spin up`).
#[tokio::test]
async fn an_untriggered_component_without_its_source_is_refused() {
    let (_dir, opts) = manifest_variant(|t| {
        format!("{t}\n[component.spare]\nsource = \"build/wasm/not-built.wasm\"\n")
    });
    let err = App::load(&opts).await.err().expect("load must fail");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("component spare") && msg.contains("not-built.wasm"),
        "{msg}"
    );
}

/// A templated outbound host whose value holds a key (an RPC provider's URL with its key in the path) fails
/// start-up naming the template and never the value.
#[tokio::test]
async fn an_outbound_host_from_a_secret_url_is_named_by_its_template() {
    let (_dir, mut opts) = manifest_variant(|t| t);
    opts.env.insert(
        "SPIN_VARIABLE_RPC_URL".into(),
        "https://base-mainnet.example/v2/kEy-0123456789abcdef".into(),
    );
    let err = App::load(&opts).await.err().expect("load must fail");
    let msg = format!("{err:#} {err:?}");
    assert!(msg.contains("{{ rpc_url }}"), "{msg}");
    assert!(!msg.contains("kEy-0123"), "the key leaked: {msg}");
}
