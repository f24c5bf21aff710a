//! The stdout sink's human `text` format, from the real binary against kubesim: one line per
//! change with time, op, kind and name; updates show their changed paths with old and new
//! values; long values are shortened; no colour on a pipe.

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
        let mut child = Command::new(lookout_bin())
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

/// The line without its leading time, single-spaced.
fn words(line: &str) -> String {
    line.split_whitespace()
        .skip(1)
        .collect::<Vec<_>>()
        .join(" ")
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
    let mut agent = TextAgent::start(&sim).await;

    // `12:00:01.123 add    ConfigMap default/listed (initial list)`
    let first = agent.line().await;
    let time = first.split_whitespace().next().unwrap();
    assert!(
        time.len() == 12 && time.matches(':').count() == 2 && time.contains('.'),
        "the time of day first: {first}"
    );
    assert_eq!(
        words(&first),
        "add ConfigMap default/listed (initial list)",
        "{first}"
    );
    assert!(!first.contains('\x1b'), "no colour on a pipe: {first:?}");

    sim.merge_patch(
        "v1",
        "ConfigMap",
        Some("default"),
        "listed",
        json!({"data": {"k": "2", "new": "x"}}),
    )
    .unwrap();
    let update = agent.line().await;
    let w = words(&update);
    assert!(
        w.starts_with("update ConfigMap default/listed: "),
        "{update}"
    );
    assert!(w.contains("k 1 → 2"), "old → new: {update}");
    assert!(w.contains("new + x"), "an added key: {update}");
    assert!(
        !update.contains("resourceVersion"),
        "the resourceVersion change is not shown: {update}"
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
    assert!(
        update.contains("new x → removed"),
        "a removed key: {update}"
    );
    assert!(update.contains('…'), "a long value is shortened: {update}");
    assert!(
        update.chars().count() <= 120,
        "one line of at most 120 characters off a terminal: {update}"
    );

    sim.delete("v1", "ConfigMap", Some("default"), "listed")
        .unwrap();
    let delete = agent.line().await;
    assert_eq!(
        words(&delete),
        "delete ConfigMap default/listed",
        "{delete}"
    );
    let _ = agent.child.start_kill();
}
