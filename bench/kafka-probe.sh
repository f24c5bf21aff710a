#!/usr/bin/env bash
# What limits lookout end to end with the Kafka sink (issue 16): runs the harness's Kafka
# section once (`lookout-bench --only kafka --runs 1`) while sampling, for every `lookout`
# process, the CPU of each of its threads (every 0.5 s) and its sink's queue depth, emitted
# and coalesced counters from /metrics (every 0.2 s); then prints both per agent.
#
#   bench/kafka-probe.sh     # after `make bench` built the binaries (or `cargo build --release`)
set -euo pipefail

TARGET=${CARGO_TARGET_DIR:-$(git rev-parse --show-toplevel)/target}
OUT=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT

threads() {
  set +e +o pipefail # a sampler outlives processes that come and go
  while true; do
    ts=$(date +%s.%N)
    for p in $(pgrep -x lookout); do
      for t in /proc/"$p"/task/*; do
        s=$(cat "$t/stat" 2>/dev/null) || continue
        name=$(sed 's/.*(\(.*\)).*/\1/; s/ /_/g' <<<"$s")
        read -r -a f <<<"$(sed 's/.*) //' <<<"$s")"
        echo "$ts $p ${t##*/} $name $((f[11] + f[12]))"
      done
    done
    sleep 0.5
  done
}

metrics() {
  set +e +o pipefail
  while true; do
    for p in $(pgrep -x lookout); do
      port=$(ss -ltnp 2>/dev/null | grep "pid=$p," | awk '{print $4}' | sed 's/.*://' | head -1)
      [ -n "$port" ] || continue
      m=$(curl -s -m 1 "http://127.0.0.1:$port/metrics" \
        | grep -E '^lookout_(sink_queue_depth|events_emitted_total|sink_coalesced_total)' | tr '\n' ' ')
      echo "$(date +%s.%N) $p $m"
    done
    sleep 0.2
  done
}

threads >"$OUT/threads" &
metrics >"$OUT/metrics" &
BENCH_FLOOR=$TARGET/bench-floor/release/lookout-bench-floor \
  "$TARGET/release/lookout-bench" --only kafka --runs 1 --out "$OUT/bench" 2>"$OUT/progress" \
  | grep -E '^kafka '
kill $(jobs -p) 2>/dev/null || true

python3 - "$OUT/threads" "$OUT/metrics" <<'EOF'
import collections, re, sys
samples = collections.defaultdict(list)
for line in open(sys.argv[1]):
    ts, pid, tid, name, ticks = line.split()
    samples[(pid, tid, name)].append((float(ts), int(ticks)))
busy = collections.defaultdict(list)
for (pid, tid, name), v in samples.items():
    rates = [(c1 - c0) / 100 / (t1 - t0) for (t0, c0), (t1, c1) in zip(v, v[1:])]
    hot = sorted(r for r in rates if r > 0.05)
    if hot:
        busy[pid].append((name, tid, hot[len(hot) // 2], len(hot)))
print("\nCPU per thread while busy (cores, median of the 0.5 s samples above 0.05):")
for pid, threads in busy.items():
    print(f"  lookout pid {pid}:")
    for name, tid, median, n in sorted(threads, key=lambda t: -t[2]):
        print(f"    {name:<18} {tid:>7}  {median:.2f}  ({n} samples)")
print("\nPer agent: seconds since its first sample, sink, emitted, coalesced, queue depth:")
first = {}
for line in open(sys.argv[2]):
    ts, pid = line.split()[:2]
    em = re.search(r'events_emitted_total\{sink="(\w+)"\} (\d+)', line)
    co = re.search(r'coalesced_total\{sink="\w+"\} (\d+)', line)
    de = re.search(r'queue_depth\{sink="\w+"\} ([\d.]+)', line)
    if em and co and de:
        t0 = first.setdefault(pid, float(ts))
        print(f"  {pid} {float(ts) - t0:6.2f}s {em.group(1):<6} {em.group(2):>7} {co.group(1):>5} {float(de.group(1)):>7.0f}")
EOF
