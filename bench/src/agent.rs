//! The real `lookout` binary as a child process: its own memory, its own threads, observed
//! through its ops server (`/metrics`) and `/proc`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running agent.
pub struct Agent {
    child: Child,
    /// Its ops server.
    pub ops: SocketAddr,
    /// When it was spawned.
    pub spawned: Instant,
}

/// Sink entries (YAML list items) for the config.
pub fn spawn(
    bin: &Path,
    kubeconfig: &Path,
    dir: &Path,
    tag: &str,
    sinks_yaml: &str,
    stdout: Stdio,
) -> Agent {
    let ops = free_port();
    let config = format!(
        "cluster: bench\nresources:\n  - apiVersion: v1\n    kind: Pod\nsinks:\n{sinks_yaml}server:\n  listen: {ops}\nlog:\n  level: warn\n"
    );
    let path = dir.join(format!("lookout-{tag}.yaml"));
    std::fs::write(&path, config).expect("write config");
    let stderr = std::fs::File::create(dir.join(format!("lookout-{tag}.log"))).expect("log file");
    let mut cmd = Command::new(bin);
    // lookout reads `LOOKOUT_*` variables as config overrides: none of the harness's own
    // environment may leak into the agent's config.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("LOOKOUT_") {
            cmd.env_remove(k);
        }
    }
    let child = cmd
        .args(["run", "--config"])
        .arg(&path)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    Agent {
        child,
        ops,
        spawned: Instant::now(),
    }
}

impl Agent {
    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The agent's stdout, when it was piped.
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// Panics (with the agent's log) when the agent has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("lookout exited early ({status}); see its log in the output directory");
        }
    }

    /// `/metrics` text, `None` while the server is not up.
    pub fn metrics(&self) -> Option<String> {
        http_get(self.ops, "/metrics")
    }

    /// Events sink `sink` is done with: emitted (`lookout_events_emitted_total`), or folded
    /// into a later event of the same object while queued (`lookout_sink_coalesced_total`).
    /// A burst of N changes is through a sink when N more are settled: a sink that lags
    /// coalesces, and counting emitted events alone would wait forever for the folded ones.
    pub fn settled(&self, sink: &str) -> Option<u64> {
        settled_in(&self.metrics()?, sink)
    }

    /// Waits until every sink in `sinks` settled at least `n` events; the instant it was seen.
    pub fn wait_settled(&mut self, sinks: &[&str], n: u64, timeout: Duration) -> Option<Instant> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            self.assert_running();
            if sinks
                .iter()
                .all(|s| self.settled(s).is_some_and(|c| c >= n))
            {
                return Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Follows a burst of `n` events after `base` on every sink in `sinks`: from the first
    /// envelope out to the last one (polled every `every`). Panics, like
    /// [`Agent::assert_running`], when the agent exits meanwhile, instead of waiting out
    /// `timeout` for a burst nobody will finish.
    pub fn follow(
        &mut self,
        sinks: &[&str],
        base: u64,
        n: u64,
        every: Duration,
        timeout: Duration,
    ) -> Option<Burst> {
        let end = Instant::now() + timeout;
        let mut first: Option<(Instant, u64)> = None;
        while Instant::now() < end {
            self.assert_running();
            let now = Instant::now();
            let done = sinks
                .iter()
                .map(|s| self.settled(s).unwrap_or(0))
                .min()
                .unwrap_or(0);
            if first.is_none() && done > base {
                first = Some((now, done));
            }
            if done >= base + n {
                let (t0, c0) = first.expect("set above");
                let secs = now.duration_since(t0).as_secs_f64();
                // The events counted at the first sighting were already out: rate over the rest.
                let rate = if secs > 0.0 {
                    (base + n - c0) as f64 / secs
                } else {
                    f64::NAN
                };
                return Some(Burst { secs, rate });
            }
            std::thread::sleep(every);
        }
        None
    }

    /// CPU time the process used so far (user + system, all threads).
    pub fn cpu(&self) -> Duration {
        proc_cpu(self.pid())
    }

    /// (VmRSS, VmHWM) in bytes.
    pub fn memory(&self) -> (u64, u64) {
        proc_memory(self.pid())
    }

    /// Freezes the process (SIGSTOP).
    pub fn freeze(&self) {
        signal(self.pid(), libc::SIGSTOP);
    }

    /// Thaws it (SIGCONT).
    pub fn thaw(&self) {
        signal(self.pid(), libc::SIGCONT);
    }

    /// SIGTERM and wait.
    pub fn shutdown(mut self) {
        signal(self.pid(), libc::SIGCONT);
        signal(self.pid(), libc::SIGTERM);
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A burst followed from first to last envelope.
#[derive(Debug, Clone, Copy)]
pub struct Burst {
    /// Seconds from first to last.
    #[allow(dead_code)]
    pub secs: f64,
    /// Events per second.
    pub rate: f64,
}

/// Sends a signal to a process this harness started.
pub fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) on a pid we spawned; no memory is involved.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// CPU time a process used so far, user + system over all its threads (`/proc/<pid>/stat`,
/// in clock ticks: 10 ms on Linux); zero when it cannot be read.
pub fn proc_cpu(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which may itself hold spaces and parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf reads a constant of the system; no memory is involved.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}

/// (VmRSS, VmHWM) of a process, in bytes.
pub fn proc_memory(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A port nobody listens on right now.
pub fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// A plain HTTP/1.1 GET; the body, or `None` when nothing answers.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (_, body) = buf.split_once("\r\n\r\n")?;
    Some(body.to_string())
}

/// The value of the sample `name{…label…}` in Prometheus text.
pub fn metric(text: &str, name: &str, label: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .find(|l| label.is_empty() || l.contains(label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// [`Agent::settled`] read from `/metrics` text: `None` until the sink's emitted counter shows.
fn settled_in(text: &str, sink: &str) -> Option<u64> {
    let label = format!("sink=\"{sink}\"");
    let emitted = metric(text, "lookout_events_emitted_total", &label)?;
    let coalesced = metric(text, "lookout_sink_coalesced_total", &label).unwrap_or(0.0);
    Some((emitted + coalesced) as u64)
}

/// Cumulative `(le, count)` buckets of one histogram series in Prometheus text.
fn buckets(text: &str, name: &str, label: &str) -> Vec<(f64, f64)> {
    let bucket = format!("{name}_bucket");
    let mut b: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with(&bucket) && l.contains(label))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count: f64 = l.rsplit(' ').next()?.parse().ok()?;
            Some((le, count))
        })
        .collect();
    b.sort_by(|a, b| a.0.total_cmp(&b.0));
    b
}

/// Quantiles of the observations made between two scrapes of a histogram (linear inside a
/// bucket; a quantile of 1.0 gives the upper bound of the highest non-empty bucket).
pub fn histogram_quantiles_between(
    before: &str,
    after: &str,
    name: &str,
    label: &str,
    qs: &[f64],
) -> Option<Vec<f64>> {
    let old = buckets(before, name, label);
    let buckets: Vec<(f64, f64)> = buckets(after, name, label)
        .into_iter()
        .map(|(le, c)| {
            let o = old.iter().find(|(l, _)| *l == le).map_or(0.0, |(_, c)| *c);
            (le, c - o)
        })
        .collect();
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    Some(
        qs.iter()
            .map(|q| {
                let want = q * total;
                let mut prev = (0.0, 0.0);
                for &(le, c) in &buckets {
                    if c >= want {
                        if le.is_infinite() {
                            return prev.0;
                        }
                        if *q >= 1.0 {
                            return le;
                        }
                        let frac = if c > prev.1 {
                            (want - prev.1) / (c - prev.1)
                        } else {
                            1.0
                        };
                        return prev.0 + frac * (le - prev.0);
                    }
                    prev = (le, c);
                }
                prev.0
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The counters of an agent that had caught up with a burst of 60,000 updates after a
    /// 2,000-Pod list: its Kafka sink lagged once and folded 69 changes into later ones.
    const METRICS: &str = "\
lookout_events_emitted_total{sink=\"kafka\"} 61931
lookout_events_emitted_total{sink=\"kafka2\"} 10
lookout_sink_coalesced_total{sink=\"kafka\"} 69
lookout_sink_coalesced_total{sink=\"kafka2\"} 0
";

    #[test]
    fn a_sink_that_coalesced_has_settled_every_change_of_the_burst() {
        assert_eq!(settled_in(METRICS, "kafka"), Some(62_000));
        assert_eq!(settled_in(METRICS, "kafka2"), Some(10));
    }

    #[test]
    fn a_sink_whose_counters_are_not_up_yet_has_settled_nothing() {
        assert_eq!(settled_in("", "kafka"), None);
        assert_eq!(settled_in(METRICS, "bh"), None);
    }
}
