//! Bad configuration exits with status 2 and a message naming the key path; no panic.

mod common;

use std::process::Command;

use common::*;

fn check(config: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(lookout_bin())
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
    let out = Command::new(lookout_bin())
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
        let out = tokio::process::Command::new(lookout_bin())
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

/// `GOOD` with its only sink replaced by `sink` (YAML lines at the sink entry's indentation).
fn with_sink(sink: &str) -> String {
    GOOD.replace("  - name: out\n    type: stdout\n", sink)
}

#[test]
fn errors_in_each_sink_type_name_their_full_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "stdout: a format it cannot write",
            with_sink("  - name: out\n    type: stdout\n    format: cloudevents\n"),
            "sinks[0].format",
        ),
        (
            "stdout: never rejects, so no dead letters",
            with_sink("  - name: out\n    type: stdout\n    deadLetter: {path: /tmp/x}\n"),
            "sinks[0].deadLetter",
        ),
        (
            "stdout: a typo",
            with_sink("  - name: out\n    type: stdout\n    fromat: text\n"),
            "sinks[0].fromat",
        ),
        (
            "file: no path",
            with_sink("  - name: f\n    type: file\n"),
            "sinks[0].path",
        ),
        (
            "file: a directory that does not exist",
            with_sink(&format!(
                "  - name: f\n    type: file\n    path: {}/x.jsonl\n",
                missing.display()
            )),
            "sinks[0].path",
        ),
        (
            "file: a boolean that is not one",
            with_sink("  - name: f\n    type: file\n    path: /tmp/x.jsonl\n    fsync: [yes]\n"),
            "sinks[0].fsync",
        ),
        (
            "blackhole: a key of another sink type",
            with_sink("  - name: b\n    type: blackhole\n    url: http://x/\n"),
            "sinks[0].url",
        ),
        (
            "webhook: not a URL",
            with_sink("  - name: h\n    type: webhook\n    url: 'not a url'\n"),
            "sinks[0].url",
        ),
        (
            "webhook: a typo deep inside",
            with_sink(
                "  - name: h\n    type: webhook\n    url: http://x/\n    batch: {maxEvnts: 5}\n",
            ),
            "sinks[0].batch.maxEvnts",
        ),
        (
            "webhook: a CA file that is not there",
            with_sink(&format!(
                "  - name: h\n    type: webhook\n    url: https://x/\n    tls: {{caFile: {}}}\n",
                missing.display()
            )),
            "sinks[0].tls.caFile",
        ),
        (
            "webhook: a header from an unset variable",
            with_sink(
                "  - name: h\n    type: webhook\n    url: http://x/\n    headers:\n      \
                 Authorization: {valueFrom: {env: LOOKOUT_TEST_UNSET_VAR}}\n",
            ),
            "sinks[0].headers.Authorization",
        ),
        (
            "webhook: cloudEventsMode without cloudevents",
            with_sink(
                "  - name: h\n    type: webhook\n    url: http://x/\n    cloudEventsMode: binary\n",
            ),
            "sinks[0].cloudEventsMode",
        ),
        (
            "kafka: no topic",
            with_sink("  - name: k\n    type: kafka\n    brokers: [localhost:9092]\n"),
            "sinks[0].topic",
        ),
        (
            "kafka: an unknown placeholder",
            with_sink(
                "  - name: k\n    type: kafka\n    brokers: [localhost:9092]\n    topic: 'k8s.{resource}'\n",
            ),
            "sinks[0].topic",
        ),
        (
            "kafka: brokers in properties",
            with_sink(
                "  - name: k\n    type: kafka\n    brokers: [localhost:9092]\n    topic: t\n    \
                 properties: {bootstrap.servers: 'x:1'}\n",
            ),
            "sinks[0].properties.bootstrap.servers",
        ),
        (
            "kafka: a property librdkafka refuses",
            with_sink(
                "  - name: k\n    type: kafka\n    brokers: [localhost:9092]\n    topic: t\n    \
                 properties: {acks: sometimes}\n",
            ),
            "sinks[0].properties",
        ),
        (
            "any sink: an empty queue",
            with_sink("  - name: out\n    type: stdout\n    queueCapacity: 0\n"),
            "sinks[0].queueCapacity",
        ),
        (
            "any sink: no type",
            with_sink("  - name: out\n"),
            "sinks[0].type",
        ),
    ];
    for (what, config, path) in &cases {
        let (code, _, stderr) = check(config);
        assert_eq!(code, 2, "{what}: exit code; stderr: {stderr}");
        assert!(
            stderr.contains(&format!("`{path}`")),
            "{what}: message names `{path}`: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    }
}

#[test]
fn every_error_of_a_config_is_reported_in_one_run() {
    let config = "cluster: c1
resources:
  - {apiVersion: v1, kind: Pod, labelSelector: 'a in (b'}
sinks:
  - {name: out, type: stdout, queueCapacity: 0}
  - {name: hook, type: webhook, url: 'ftp://x/'}
routes:
  - {sinks: [nowhere]}
  - {sinks: [out], when: [{path: /a, matches: '('}]}
";
    let (code, _, stderr) = check(config);
    assert_eq!(code, 2, "{stderr}");
    for path in [
        "resources[0].labelSelector",
        "sinks[0].queueCapacity",
        "sinks[1].url",
        "routes[0].sinks[0]",
        "routes[1].when[0].matches",
    ] {
        assert!(stderr.contains(&format!("`{path}`")), "{path}: {stderr}");
    }
    let problems = stderr
        .lines()
        .filter(|l| l.starts_with("lookout: config error at"))
        .count();
    assert_eq!(problems, 5, "one line per problem: {stderr}");
}

#[test]
fn check_prints_the_plan_run_would_run_with_secrets_masked() {
    let config = "cluster: c1
resources:
  - {apiVersion: v1, kind: ConfigMap}
  - {apiVersion: v1, kind: ConfigMap}
  - {apiVersion: apps/v1, kind: Deployment, namespace: shop}
sinks:
  - {name: out, type: stdout, format: json}
  - name: hook
    type: webhook
    url: https://hooks.example.com/k8s
    secret: s3cr3t-signing-key
    headers: {X-Api-Key: k3y-value}
    format: cloudevents
  - name: lake
    type: kafka
    brokers: 'b1:9092,b2:9092'
    topic: 'k8s.{kind}'
    properties: {sasl.password: hunter2-kafka}
state: {dir: /var/lib/lookout}
routes:
  - {sinks: [hook], namespaces: {selector: team=payments}}
";
    let (code, stdout, stderr) = check(config);
    assert_eq!(code, 0, "{stderr}");
    for secret in ["s3cr3t-signing-key", "k3y-value", "hunter2-kafka"] {
        assert!(!stdout.contains(secret), "{secret} leaked: {stdout}");
    }
    let plan: serde_json::Value = serde_yaml_ng::from_str(&stdout).expect("the plan is YAML");
    // One informer per distinct resource, the implicit Namespace informer named after the
    // route that needs it.
    let informers = plan["informers"].as_array().unwrap();
    assert_eq!(informers.len(), 3, "{stdout}");
    assert_eq!(informers[0]["informer"], "v1/ConfigMap");
    assert_eq!(informers[0]["sharedWith"][0], "resources[1]");
    assert_eq!(informers[1]["informer"], "apps/v1/Deployment ns=shop");
    assert_eq!(informers[2]["informer"], "v1/Namespace");
    assert_eq!(informers[2]["for"], "routes[0].namespaces.selector");
    // Sinks with every shared option after defaults.
    let sinks = plan["sinks"].as_array().unwrap();
    assert_eq!(sinks[0]["format"], "envelope");
    assert_eq!(sinks[0]["queueCapacity"], 10000);
    assert_eq!(sinks[0]["deadLetter"], "none (never rejects an event)");
    assert_eq!(sinks[1]["format"]["cloudevents"], "structured");
    assert_eq!(
        sinks[1]["deadLetter"],
        "/var/lib/lookout/deadletter/hook.jsonl"
    );
    assert_eq!(sinks[2]["brokers"][1], "b2:9092");
    assert_eq!(plan["routes"][0]["sinks"][0], "hook");
    assert_eq!(plan["transforms"]["dropManagedFields"], true);
}

#[tokio::test]
async fn an_api_server_that_cannot_be_reached_is_not_a_config_error() {
    // A port nothing listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \
             'http://127.0.0.1:{port}'}}}}]\nusers: [{{name: u, user: {{}}}}]\ncontexts: \
             [{{name: c, context: {{cluster: c, user: u}}}}]\ncurrent-context: c\n"
        ),
    )
    .unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, GOOD).unwrap();
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        tokio::process::Command::new(lookout_bin())
            .args(["check", "--server", "--config"])
            .arg(&path)
            .env("KUBECONFIG", &kubeconfig)
            .output(),
    )
    .await
    .expect("check --server ends")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("does not serve"), "{stderr}");
    assert!(stderr.contains("resources[0]"), "{stderr}");
}
