//! `esim402 check` refuses exactly the dependency layouts the real Spin CLI refuses, with Spin's reason: each
//! case is a small app of components generated from WIT here (wit-component's dummy modules), run through
//! both. The first case is the layout this app had before each providing component got a WIT package of its
//! own: Spin registers dependencies by package, so two interfaces of one package from two components collide.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use esim402_tests::{bin_dir, free_port};
use wit_component::{ComponentEncoder, StringEncoding, dummy_module, embed_component_metadata};
use wit_parser::{ManglingAndAbi, Resolve};

const WIT: &str = r#"
package demo:legacy@0.1.0;

interface a { f: func() -> u32; }
interface b { g: func() -> u32; }

world pa { export a; }
world pb { export b; }
world main { import a; import b; }
"#;

/// Build the component of `world` into `dir/<world>.wasm`.
fn component(dir: &Path, world: &str) {
    let mut resolve = Resolve::default();
    let pkg = resolve.push_str("demo.wit", WIT).unwrap();
    let world_id = resolve.select_world(&[pkg], Some(world)).unwrap();
    let mut module = dummy_module(&resolve, world_id, ManglingAndAbi::Standard32);
    embed_component_metadata(&mut module, &resolve, world_id, StringEncoding::UTF8).unwrap();
    let bytes = ComponentEncoder::default()
        .module(&module)
        .unwrap()
        .validate(true)
        .encode()
        .unwrap();
    std::fs::write(dir.join(format!("{world}.wasm")), bytes).unwrap();
}

/// A manifest whose `main` component (the HTTP trigger) has `deps` (TOML lines).
fn app(dir: &Path, deps: &str) {
    let manifest = format!(
        r#"spin_manifest_version = 2
[application]
name = "compat"

[[trigger.http]]
route = "/..."
component = "main"

[component.main]
source = "main.wasm"
[component.main.dependencies]
{deps}

[component.pa]
source = "pa.wasm"

[component.pb]
source = "pb.wasm"
"#
    );
    std::fs::write(dir.join("spin.toml"), manifest).unwrap();
}

/// `esim402 check`'s failure message (the test fails if it accepts the app).
fn esim402_check(dir: &Path) -> String {
    let out = Command::new(bin_dir().join("esim402"))
        .arg("check")
        .arg("-f")
        .arg(dir.join("spin.toml"))
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "esim402 check accepted it:\n{text}");
    text
}

/// `spin up`'s failure message (the test fails if it starts serving or hangs).
fn spin_up(spin: &Path, dir: &Path) -> String {
    let mut child = Command::new(spin)
        .arg("up")
        .arg("-f")
        .arg(dir.join("spin.toml"))
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(_status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            assert!(!out.status.success(), "spin up exited successfully");
            return format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("spin up kept running: it accepted the app");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn spin_and_esim402_refuse_the_same_dependency_layouts() {
    let spin = esim402_tests::spin_binary();
    if let Err(why) = &spin {
        eprintln!(
            "spin_and_esim402_refuse_the_same_dependency_layouts: {why}; checking esim402 alone"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    for world in ["main", "pa", "pb"] {
        component(dir.path(), world);
    }
    let cases = [
        (
            "two interfaces of one package, from two components",
            "\"demo:legacy/a@0.1.0\" = { component = \"pa\" }\n\"demo:legacy/b@0.1.0\" = { component = \"pb\" }",
            "package `demo:legacy` has already been registered in the graph",
        ),
        (
            "a package dependency overlapping an interface dependency",
            "\"demo:legacy\" = { component = \"pa\" }\n\"demo:legacy/a@0.1.0\" = { component = \"pa\" }",
            "conflicts with",
        ),
        (
            "a dependency nothing imports",
            "\"demo:other/x@0.1.0\" = { component = \"pa\" }",
            "doesn't match any imports of component 'main'",
        ),
    ];
    for (case, deps, reason) in cases {
        app(dir.path(), deps);
        let ours = esim402_check(dir.path());
        assert!(ours.contains(reason), "esim402, {case}: {ours}");
        if let Ok(spin) = &spin {
            let theirs = spin_up(spin, dir.path());
            assert!(theirs.contains(reason), "spin, {case}: {theirs}");
        }
    }
}
