#!/usr/bin/env bash
# What limits lookout end to end with the Kafka sink (issue 16): runs the harness's Kafka
# section once (`lookout-bench --only kafka --runs 1`) while one Python process samples, every
# 0.25 s, the machine's idle time, the CPU of every thread of the agent (`lookout`), the broker
# (`tansu`) and the harness (`lookout-bench`, which serves kubesim's watch), and each agent's
# sink counters from /metrics (emitted, coalesced, queue depth). It then prints, per agent, a
# timeline of its busy seconds: events/s, queue depth, and the cores each process and the
# machine's idle time took. The sampler reads /proc itself (no process per sample) so that it
# does not compete with what it measures.
#
#   bench/kafka-probe.sh     # after `make bench` built the binaries (or `cargo build --release`)
#   PROBE_RUNS=3 bench/kafka-probe.sh     # three bursts per sink (the harness's `--runs`)
#
# After the timelines, a summary per agent: the mean over its busy intervals of the machine's
# idle cores and of each of the agent's threads (by thread id: the runtime's workers share a
# name). Idle cores beside workers that are each far from a full core mean the pipeline
# stalls on one of its stages, not on the machine.
set -euo pipefail

TARGET=${CARGO_TARGET_DIR:-$(git rev-parse --show-toplevel)/target}
OUT=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT

python3 - "$OUT/samples" <<'EOF' &
import json, os, re, sys, time, urllib.request

NAMES = {"lookout", "tansu", "lookout-bench"}
out = open(sys.argv[1], "w")
ports = {}

def ops_port(pid):
    # The agent's config names its ops listener; the harness passes it as --config.
    if pid not in ports:
        try:
            args = open(f"/proc/{pid}/cmdline").read().split("\0")
            cfg = open(args[args.index("--config") + 1]).read()
            ports[pid] = re.search(r"listen: [\d.]+:(\d+)", cfg).group(1)
        except Exception:
            return None
    return ports[pid]

while True:
    ts = time.time()
    idle = sum(int(x) for x in open("/proc/stat").readline().split()[4:6])
    procs = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            comm = open(f"/proc/{pid}/comm").read().strip()
            if comm not in NAMES:
                continue
            threads = {}
            for tid in os.listdir(f"/proc/{pid}/task"):
                st = open(f"/proc/{pid}/task/{tid}/stat").read()
                name = st[st.index("(") + 1:st.rindex(")")]
                f = st[st.rindex(")") + 2:].split()
                threads[tid] = (name, int(f[11]) + int(f[12]))
            procs[pid] = (comm, threads)
        except (OSError, ValueError):
            continue
    metrics = {}
    for pid, (comm, _) in procs.items():
        port = comm == "lookout" and ops_port(pid)
        if not port:
            continue
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read().decode()
        except Exception:
            continue
        m = {}
        for name in ("events_emitted_total", "sink_coalesced_total", "sink_queue_depth"):
            hit = re.search(rf"^lookout_{name}\{{sink=\"(\w+)\"\}} ([\d.e+]+)", text, re.M)
            if hit:
                m["sink"], m[name] = hit.group(1), float(hit.group(2))
        metrics[pid] = m
    out.write(json.dumps({"ts": ts, "idle": idle, "procs": procs, "metrics": metrics}) + "\n")
    out.flush()
    time.sleep(max(0.0, 0.25 - (time.time() - ts)))
EOF

BENCH_FLOOR=$TARGET/bench-floor/release/lookout-bench-floor \
  "$TARGET/release/lookout-bench" --only kafka --runs "${PROBE_RUNS:-1}" --out "$OUT/bench" 2>"$OUT/progress" \
  | grep -E '^kafka '
kill $(jobs -p) 2>/dev/null || true

python3 - "$OUT/samples" <<'EOF'
import collections, json, os, sys
HZ = os.sysconf("SC_CLK_TCK")
samples = [json.loads(l) for l in open(sys.argv[1])]
agents = sorted({pid for s in samples for pid in s["metrics"]}, key=int)
for agent in agents:
    rows = []
    for a, b in zip(samples, samples[1:]):
        ma, mb = a["metrics"].get(agent), b["metrics"].get(agent)
        if not ma or not mb or "events_emitted_total" not in mb:
            continue
        dt = b["ts"] - a["ts"]
        rate = (mb["events_emitted_total"] - ma.get("events_emitted_total", 0)) / dt
        if rate < 100:
            continue  # not a busy interval of this agent
        cores = collections.Counter()
        threads = collections.Counter()
        by_tid = collections.Counter()
        for pid, (comm, tb) in b["procs"].items():
            ta = a["procs"].get(pid, (comm, {}))[1]
            for tid, (name, ticks) in tb.items():
                if tid in ta:
                    used = (ticks - ta[tid][1]) / HZ / dt
                    cores[comm] += used
                    if comm == "lookout" and pid == agent:
                        threads[name] += used
                        by_tid[f"{name}[{tid}]"] += used
        idle = (b["idle"] - a["idle"]) / HZ / dt
        rows.append((b["ts"], mb.get("sink", "?"), rate, mb.get("sink_queue_depth", 0),
                     mb.get("sink_coalesced_total", 0), cores, idle, threads, by_tid))
    if not rows:
        continue
    print(f"\nagent {agent}, sink {rows[0][1]}: per busy 0.25 s interval, events/s, queue depth, "
          "coalesced, cores used (lookout = all agents), machine idle cores, this agent's threads")
    t0 = rows[0][0]
    for ts, sink, rate, depth, coalesced, cores, idle, threads, _ in rows:
        used = " ".join(f"{c}={v:.2f}" for c, v in sorted(cores.items()))
        top = " ".join(f"{n}={v:.2f}" for n, v in threads.most_common(4) if v >= 0.02)
        print(f"  {ts - t0:5.2f}s {rate:8.0f}/s depth {depth:6.0f} coalesced {coalesced:5.0f}  "
              f"{used}  idle={idle:.2f}  | {top}")
    n = len(rows)
    mean_rate = sum(r[2] for r in rows) / n
    mean_idle = sum(r[6] for r in rows) / n
    per_thread = collections.Counter()
    for r in rows:
        per_thread.update(r[8])
    top = " ".join(f"{t}={v / n:.2f}" for t, v in per_thread.most_common(6) if v / n >= 0.02)
    print(f"  mean of {n} busy intervals: {mean_rate:.0f}/s, machine idle {mean_idle:.2f} cores | {top}")
EOF
