//! Leader election, one elector at a time, against a Lease served by kubesim over HTTP:
//! acquiring a free lease, respecting a renewed one, taking over an expired one only after its
//! duration, giving up when renewals fail past the renew deadline, releasing on shutdown,
//! and two electors racing for one lease. Only `lookout::leader::spawn` and the Lease record
//! are used, so the tests hold whatever the timing loop inside looks like.

mod common;

use std::time::{Duration, Instant};

use common::*;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kubesim::{Faults, KubeSim};
use lookout::leader::{LeaderElectionConfig, Role};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const LEASE: &str = "election-test";

async fn client(sim: &KubeSim) -> kube::Client {
    let kc = Kubeconfig::from_yaml(&sim.kubeconfig_yaml()).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kube config");
    kube::Client::try_from(cfg).expect("client")
}

fn config(
    identity: &str,
    lease: Duration,
    renew: Duration,
    retry: Duration,
) -> LeaderElectionConfig {
    LeaderElectionConfig {
        enabled: true,
        lease_name: LEASE.into(),
        lease_namespace: Some("default".into()),
        identity: Some(identity.into()),
        lease_duration: lease,
        renew_deadline: renew,
        retry_period: retry,
    }
}

/// A short election: 2 s lease, 1 s renew deadline, 200 ms retry period.
fn quick(identity: &str) -> LeaderElectionConfig {
    config(
        identity,
        Duration::from_secs(2),
        Duration::from_secs(1),
        Duration::from_millis(200),
    )
}

struct Elector {
    role: watch::Receiver<Role>,
    cancel: CancellationToken,
}

async fn elector(sim: &KubeSim, config: LeaderElectionConfig) -> Elector {
    config.validate().expect("valid timings");
    let cancel = CancellationToken::new();
    let (role, _task) = lookout::leader::spawn(client(sim).await, config, cancel.clone());
    Elector { role, cancel }
}

impl Elector {
    /// Waits until the role is `want`; how long it took.
    async fn becomes(&mut self, want: Role, within: Duration) -> Duration {
        let t = Instant::now();
        let reached = tokio::time::timeout(within, self.role.wait_for(|r| *r == want))
            .await
            .map(|r| r.is_ok());
        match reached {
            Ok(true) => t.elapsed(),
            Ok(false) => panic!("the elector stopped before becoming {want:?}"),
            Err(_) => panic!("not {want:?} within {within:?} (is {:?})", self.is()),
        }
    }

    fn is(&self) -> Role {
        *self.role.borrow()
    }
}

fn lease(sim: &KubeSim) -> Value {
    sim.get("coordination.k8s.io/v1", "Lease", Some("default"), LEASE)
        .expect("the lease exists")
}

fn now_micro() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

/// A Lease held by `holder`, renewed just now.
fn held_by(sim: &KubeSim, holder: &str, seconds: i64) {
    let spec = json!({"holderIdentity": holder, "leaseDurationSeconds": seconds,
        "acquireTime": now_micro(), "renewTime": now_micro(), "leaseTransitions": 0});
    match sim.get("coordination.k8s.io/v1", "Lease", Some("default"), LEASE) {
        None => {
            sim.create(
                "coordination.k8s.io/v1",
                "Lease",
                json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": LEASE, "namespace": "default"}, "spec": spec}),
            )
            .unwrap();
        }
        Some(_) => {
            sim.merge_patch(
                "coordination.k8s.io/v1",
                "Lease",
                Some("default"),
                LEASE,
                json!({"spec": {"renewTime": now_micro()}}),
            )
            .unwrap();
        }
    }
}

#[tokio::test]
async fn a_free_lease_is_acquired_and_the_record_names_the_holder() {
    let sim = sim().await;
    let mut a = elector(&sim, quick("agent-a")).await;
    assert_eq!(a.is(), Role::Standby, "every replica starts as a standby");
    a.becomes(Role::Leader, SOON).await;
    let l = lease(&sim);
    assert_eq!(l["spec"]["holderIdentity"], "agent-a");
    assert_eq!(l["spec"]["leaseDurationSeconds"], 2);
    assert_eq!(l["spec"]["leaseTransitions"], 0);
    assert!(l["spec"]["renewTime"].is_string(), "{l}");
    // The leader keeps renewing: the renew time moves on.
    let first = l["spec"]["renewTime"].clone();
    let deadline = Instant::now() + SOON;
    while lease(&sim)["spec"]["renewTime"] == first {
        assert!(Instant::now() < deadline, "never renewed: {}", lease(&sim));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(a.is(), Role::Leader);
    a.cancel.cancel();
}

#[tokio::test]
async fn a_lease_renewed_by_another_holder_is_never_taken() {
    let sim = sim().await;
    held_by(&sim, "someone-else", 1);
    let b = elector(&sim, quick("agent-b")).await;
    // The other holder renews every 300 ms, well within its 1 s lease, for 3 lease
    // durations: the elector must stay a standby the whole time.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        held_by(&sim, "someone-else", 1);
        assert_eq!(
            b.is(),
            Role::Standby,
            "took a renewed lease: {}",
            lease(&sim)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(lease(&sim)["spec"]["holderIdentity"], "someone-else");
    b.cancel.cancel();
}

#[tokio::test]
async fn an_unrenewed_lease_is_taken_over_only_after_its_duration() {
    let sim = sim().await;
    // Held by a replica that died: nobody renews it any more.
    held_by(&sim, "dead-replica", 2);
    let written = Instant::now();
    let mut b = elector(&sim, quick("agent-b")).await;
    b.becomes(Role::Leader, SOON).await;
    let after = written.elapsed();
    // Expiry is judged by this replica's own clock from when it first saw the record, so
    // never earlier than the 2 s lease duration after the last renewal.
    assert!(
        after >= Duration::from_secs(2),
        "took over after {after:?}, before the 2 s lease ran out"
    );
    assert!(
        after < Duration::from_secs(3 * 2),
        "took over after {after:?} (bound: 3 × leaseDuration)"
    );
    let l = lease(&sim);
    assert_eq!(l["spec"]["holderIdentity"], "agent-b");
    assert_eq!(
        l["spec"]["leaseTransitions"], 1,
        "a takeover is a transition"
    );
    b.cancel.cancel();
}

#[tokio::test]
async fn a_leader_that_cannot_renew_within_the_renew_deadline_steps_down() {
    let sim = sim().await;
    let mut a = elector(&sim, quick("agent-a")).await;
    a.becomes(Role::Leader, SOON).await;
    // Every Lease request now fails: the leader cannot renew.
    sim.set_faults(Faults::fail(1.0));
    let took = a.becomes(Role::Lost, SOON).await;
    assert!(
        took < Duration::from_secs(3),
        "still leading {took:?} after renewals began failing (renew deadline 1 s)"
    );
    a.cancel.cancel();
}

#[tokio::test]
async fn a_released_lease_is_taken_by_a_standby_without_waiting_for_expiry() {
    let sim = sim().await;
    // A long lease: a standby waiting for expiry would need 30 s.
    let long = |id: &str| {
        config(
            id,
            Duration::from_secs(30),
            Duration::from_secs(20),
            Duration::from_millis(200),
        )
    };
    let mut a = elector(&sim, long("agent-a")).await;
    a.becomes(Role::Leader, SOON).await;
    let mut b = elector(&sim, long("agent-b")).await;
    // The standby has seen the record held by A at least once.
    let deadline = Instant::now() + SOON;
    while !sim
        .request_log()
        .iter()
        .filter(|r| r.path.ends_with(LEASE) && r.verb == "get")
        .count()
        .ge(&3)
    {
        assert!(
            Instant::now() < deadline,
            "the standby never read the lease"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(b.is(), Role::Standby);

    a.cancel.cancel();
    let deadline = Instant::now() + SOON;
    while !lease(&sim)["spec"]
        .get("holderIdentity")
        .is_none_or(|h| h.is_null())
    {
        assert!(Instant::now() < deadline, "not released: {}", lease(&sim));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = b.becomes(Role::Leader, SOON).await;
    assert!(
        took < Duration::from_secs(10),
        "took {took:?} after the release; the lease would only expire after 30 s"
    );
    assert_eq!(lease(&sim)["spec"]["holderIdentity"], "agent-b");
    b.cancel.cancel();
}

#[tokio::test]
async fn two_electors_racing_for_one_lease_never_both_lead() {
    let sim = sim().await;
    let (mut a, mut b) = tokio::join!(
        elector(&sim, quick("agent-a")),
        elector(&sim, quick("agent-b"))
    );
    // One of them wins; the other stays a standby.
    let deadline = Instant::now() + SOON;
    while a.is() != Role::Leader && b.is() != Role::Leader {
        assert!(Instant::now() < deadline, "nobody leads");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Over three lease durations, sampled: never two leaders at once, and the Lease always
    // names the one that believes it leads.
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        let (ra, rb) = (a.is(), b.is());
        assert!(
            !(ra == Role::Leader && rb == Role::Leader),
            "two leaders: {}",
            lease(&sim)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (winner, loser) = if a.is() == Role::Leader {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    assert_eq!(loser.is(), Role::Standby);
    let holder = lease(&sim)["spec"]["holderIdentity"].clone();
    assert!(holder == "agent-a" || holder == "agent-b", "{holder}");
    winner.cancel.cancel();
    // The loser takes over once the winner released the lease.
    loser.becomes(Role::Leader, SOON).await;
    loser.cancel.cancel();
}
