#!/usr/bin/env bash
# Profiles both end-to-end agents of the harness's Kafka section (issue 16): runs
# `lookout-bench --only kafka --runs RUNS` and attaches `perf record -g` to the Kafka agent and
# then to the blackhole agent for their whole lives (same initial list, same bursts), so their
# profiles can be compared sample for sample. Needs Debian's linux-perf.
#
#   bench/kafka-profile.sh [outdir]      # then e.g.
#   perf report -i outdir/perf-kafka.data --no-children --sort pid -g none --stdio
#   perf report -i outdir/perf-bh.data --no-children --sort dso,sym -g none --stdio -n
set -euo pipefail

TARGET=${CARGO_TARGET_DIR:-$(git rev-parse --show-toplevel)/target}
OUT=${1:-$(mktemp -d)}
RUNS=${RUNS:-2}
mkdir -p "$OUT"
"$TARGET/release/lookout-bench" --only kafka --runs "$RUNS" --out "$OUT/bench" >"$OUT/bench.log" 2>&1 &
bench=$!
# Both agents live side by side (the harness alternates their bursts): one recorder each,
# at the same time.
recorders=()
for tag in kafka bh; do
  until pid=$(pgrep -f "lookout-$tag.yaml"); do
    kill -0 "$bench" 2>/dev/null || { cat "$OUT/bench.log"; exit 1; }
    sleep 0.05
  done
  perf record -F 999 -g -p "$pid" -o "$OUT/perf-$tag.data" >"$OUT/perf-$tag.log" 2>&1 &
  recorders+=($!)
done
wait "$bench"
wait "${recorders[@]}"
grep -E "end to end|CPU" "$OUT/bench/report.txt"
echo "profiles: $OUT/perf-kafka.data $OUT/perf-bh.data"
