//! The stdout sink's human `text` format, from the real binary against kubesim: one line per
//! change with op, kind, name and resourceVersion; updates list their changed paths with old
//! and new values; long values are shortened.

mod common;

use std::process::Stdio;

use common::*;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

struct TextAgent {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    _dir: tempfile::TempDir,
}

impl TextAgent {
    async fn start(sim: &kubesim::KubeSim) -> TextAgent {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        sim.write_kubeconfig(&kubeconfig).unwrap();
        let config = dir.path().join("lookout.yaml");
        std::fs::write(
            &config,
            "cluster: test\nresources:\n  - apiVersion: v1\n    kind: ConfigMap\n\
             sinks:\n  - name: out\n    type: stdout\n    format: text\n\
             server:\n  listen: 127.0.0.1:0\n",
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_lookout"))
            .args(["run", "--config"])
            .arg(&config)
            .env("KUBECONFIG", &kubeconfig)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        TextAgent {
            child,
            lines,
            _dir: dir,
        }
    }

    async fn line(&mut self) -> String {
        tokio::time::timeout(SOON, self.lines.next_line())
            .await
            .expect("a line in time")
            .unwrap()
            .expect("stdout open")
    }
}

/// `rv=N` of the object as kubesim stores it now.
fn rv(sim: &kubesim::KubeSim, name: &str) -> String {
    sim.get("v1", "ConfigMap", Some("default"), name).unwrap()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn the_text_format_prints_one_line_per_change_with_old_and_new_values() {
    let sim = sim().await;
    sim.create(
        "v1",
        "ConfigMap",
        configmap("default", "listed", json!({"k": "1"})),
    )
    .unwrap();
    let listed_rv = rv(&sim, "listed");
    let mut agent = TextAgent::start(&sim).await;

    let first = agent.line().await;
    // `12:00:01.123 add    v1 ConfigMap default/listed rv=7 (initial list)`
    let (time, rest) = first.split_once(' ').unwrap();
    assert!(
        time.len() >= 8 && time.chars().filter(|c| *c == ':').count() >= 2,
        "a time first: {first}"
    );
    assert_eq!(
        rest.split_whitespace().collect::<Vec<_>>().join(" "),
        format!("add v1 ConfigMap default/listed rv={listed_rv} (initial list)"),
        "{first}"
    );

    sim.merge_patch(
        "v1",
        "ConfigMap",
        Some("default"),
        "listed",
        json!({"data": {"k": "2", "new": "x"}}),
    )
    .unwrap();
    let update = agent.line().await;
    let want_head = format!(
        "update v1 ConfigMap default/listed rv={}:",
        rv(&sim, "listed")
    );
    assert!(
        update
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .contains(&want_head),
        "{update}"
    );
    assert!(update.contains(r#"/data/k "1" → "2";"#), "{update}");
    assert!(update.contains(r#"/data/new "x" (added);"#), "{update}");
    assert!(
        !update.contains("/metadata/resourceVersion"),
        "the resourceVersion change is not listed: {update}"
    );

    let long = "y".repeat(200);
    sim.merge_patch(
        "v1",
        "ConfigMap",
        Some("default"),
        "listed",
        json!({"data": {"new": null, "k": long}}),
    )
    .unwrap();
    let update = agent.line().await;
    assert!(update.contains(r#"/data/new "x" → (removed);"#), "{update}");
    assert!(update.contains('…'), "a long value is shortened: {update}");
    assert!(!update.contains(&long), "{update}");

    sim.delete("v1", "ConfigMap", Some("default"), "listed")
        .unwrap();
    let delete = agent.line().await;
    assert!(
        delete
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .contains("delete v1 ConfigMap default/listed rv="),
        "{delete}"
    );
    assert!(!delete.contains('→'), "a delete lists no changes: {delete}");
    let _ = agent.child.start_kill();
}
