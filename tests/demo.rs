//! `lookout demo` as a newcomer runs it: the story it tells, and how it ends in a pipe.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn demo(args: &[&str]) -> Command {
    let mut cmd = Command::new(common::lookout_bin());
    cmd.arg("demo")
        .args(args)
        .env("NO_COLOR", "1")
        .env("COLUMNS", "200")
        .env_remove("RUST_LOG");
    cmd
}

/// The lines after the initial list that match every fragment.
fn lines_with<'a>(out: &'a str, fragments: &[&str]) -> Vec<&'a str> {
    out.lines()
        .filter(|l| !l.contains("(initial list)"))
        .filter(|l| fragments.iter().all(|f| l.contains(f)))
        .collect()
}

#[test]
fn a_short_demo_shows_every_part_of_the_story_one_line_per_change() {
    let out = demo(&["--duration", "6s", "--pace", "100ms"])
        .output()
        .expect("demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let story: &[(&str, &[&str])] = &[
        (
            "a new image for the Deployment",
            &[
                "update Deployment shop/web:",
                "spec.template.spec.containers[0].image ghcr.io/example/web:1.0 → ghcr.io/example/web:1.1",
            ],
        ),
        ("the new ReplicaSet", &["add    ReplicaSet shop/web-"]),
        (
            "Pods of the old ReplicaSet deleted",
            &["delete Pod shop/web-"],
        ),
        (
            "Pods of the new ReplicaSet added",
            &["add    Pod shop/web-"],
        ),
        (
            "a scale up",
            &["update Deployment shop/web:", "spec.replicas 3 → 5"],
        ),
        (
            "a ConfigMap edit",
            &["update ConfigMap shop/web-config:", "data.LOG_LEVEL"],
        ),
        (
            "a Secret rotation, redacted",
            &[
                "update Secret shop/web-db:",
                "data.password hmac-sha256:",
                "→ hmac-sha256:",
            ],
        ),
        (
            "a crash-looping Pod",
            &[
                "update Pod shop/worker-",
                "restartCount",
                "CrashLoopBackOff",
            ],
        ),
    ];
    for (what, fragments) in story {
        assert!(
            !lines_with(&stdout, fragments).is_empty(),
            "{what}: no line has {fragments:?}:\n{stdout}"
        );
    }
    for line in stdout.lines() {
        assert!(
            line.chars().count() <= 200,
            "wider than the terminal: {line}"
        );
        assert!(!line.contains('\x1b'), "colour despite NO_COLOR: {line:?}");
    }
}

#[test]
fn demo_piped_into_head_prints_five_lines_and_exits_0_at_once() {
    let started = Instant::now();
    let out = Command::new("bash")
        .arg("-c")
        .arg(r#"set -o pipefail; "$0" demo --duration 60s | head -5"#)
        .arg(common::lookout_bin())
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("bash runs");
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stdout.lines().count(), 5, "{stdout}");
    // pipefail: the status is lookout's own.
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(
        elapsed < Duration::from_secs(15),
        "took {elapsed:?} of a 60 s demo: {stderr}"
    );
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
}
