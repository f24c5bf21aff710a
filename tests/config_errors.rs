//! Bad configuration exits with status 2 and a message naming the key path; no panic.

mod common;

use std::process::Command;

use common::*;

fn check(config: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lookout"))
        .args(["check", "--config"])
        .arg(&path)
        .env_remove("LOOKOUT_CLUSTER")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

const GOOD: &str = "cluster: c1
resources:
  - apiVersion: apps/v1
    kind: Deployment
    labelSelector: app=web
sinks:
  - name: out
    type: stdout
";

#[test]
fn a_good_config_prints_the_effective_config() {
    let (code, stdout, stderr) = check(GOOD);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("cluster: c1"), "{stdout}");
    assert!(
        stdout.contains("dropManagedFields: true"),
        "defaults are shown: {stdout}"
    );
}

#[test]
fn bad_configs_exit_2_naming_the_key_path() {
    let cases: &[(&str, String, &str)] = &[
        (
            "unknown top-level key",
            format!("{GOOD}colour: blue\n"),
            "colour",
        ),
        (
            "unknown resource key",
            GOOD.replace("kind: Deployment", "kind: Deployment\n    namespaces: [a]"),
            "resources[0].namespaces",
        ),
        (
            "wrong type",
            GOOD.replace("cluster: c1", "cluster: {a: 1}"),
            "cluster",
        ),
        (
            "unknown sink type",
            GOOD.replace("type: stdout", "type: fax"),
            "sinks[0]",
        ),
        (
            "unknown sink key",
            GOOD.replace("type: stdout", "type: stdout\n    colour: red"),
            "sinks[0]",
        ),
        (
            "bad stdout format",
            GOOD.replace("type: stdout", "type: stdout\n    format: xml"),
            "sinks[0]",
        ),
        (
            "bad label selector",
            GOOD.replace("app=web", "'app in (web'"),
            "resources[0].labelSelector",
        ),
        (
            "no sinks",
            GOOD.replace("sinks:\n  - name: out\n    type: stdout\n", "sinks: []\n"),
            "sinks",
        ),
        (
            "duplicate sink names",
            format!("{GOOD}  - name: out\n    type: stdout\n"),
            "sinks[1].name",
        ),
        (
            "bad ignore path",
            format!("{GOOD}transforms:\n  ignorePaths: [status]\n"),
            "transforms.ignorePaths[0]",
        ),
        (
            "bad duration",
            format!("{GOOD}shutdown:\n  gracePeriod: soon\n"),
            "shutdown.gracePeriod",
        ),
        (
            "unset env var",
            GOOD.replace("app=web", "app=${LOOKOUT_TEST_UNSET_VAR}"),
            "resources[0].labelSelector",
        ),
        (
            "not yaml",
            "cluster: [unclosed\n".to_string(),
            "invalid YAML",
        ),
    ];
    for (what, config, path) in cases {
        let (code, _, stderr) = check(config);
        assert_eq!(code, 2, "{what}: exit code; stderr: {stderr}");
        assert!(
            stderr.contains(path),
            "{what}: message names `{path}`: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    }
}

#[test]
fn environment_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, GOOD).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lookout"))
        .args(["check", "--config"])
        .arg(&path)
        .env("LOOKOUT_CLUSTER", "from-env")
        .env("LOOKOUT_SHUTDOWN__GRACEPERIOD", "3s")
        .env("LOOKOUT_TRANSFORMS__INCLUDEOLD", "true")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("cluster: from-env"), "{stdout}");
    assert!(stdout.contains("gracePeriod: 3s"), "{stdout}");
    assert!(stdout.contains("includeOld: true"), "{stdout}");
}

#[tokio::test]
async fn a_kind_the_server_does_not_serve_exits_2() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig).unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(
        &path,
        stdout_config(&[("v1", "ConfigMap"), ("example.com/v1", "Widget")]),
    )
    .unwrap();
    for args in [
        vec!["run", "--config"],
        vec!["check", "--server", "--config"],
    ] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_lookout"))
            .args(&args)
            .arg(&path)
            .env("KUBECONFIG", &kubeconfig)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("resources[1]") && stderr.contains("Widget"),
            "{args:?}: {stderr}"
        );
    }
}
