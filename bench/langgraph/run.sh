#!/usr/bin/env bash
# Runs the LangGraph + SqliteSaver baseline and baton's equivalent scenarios back to back in
# one run, then prints them side by side with ratios (issue 6).
#
#   bench/langgraph/run.sh
#
# LANGGRAPH_VENV overrides where the venv lives (default: target/bench/venv, never committed);
# BATON_BENCH_DIR where the databases go (must be a real disk, not tmpfs).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
venv=${LANGGRAPH_VENV:-$root/target/bench/venv}
langgraph_version=1.2.24
checkpoint_version=3.1.2

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check \
    "langgraph==$langgraph_version" "langgraph-checkpoint-sqlite==$checkpoint_version"

base=${BATON_BENCH_DIR:-${TMPDIR:-/tmp}}
out=$(mktemp -d "$base/langgraph-vs-baton-XXXXXX")
trap 'rm -rf "$out"' EXIT
echo "bench dir: $out ($(df --output=fstype "$out" | tail -n 1))"

# Build first so compilation does not overlap the LangGraph measurement.
(cd "$root" && cargo bench --bench baton_bench --no-run -q)

echo
"$venv/bin/python" "$root/bench/langgraph/bench.py" --dir "$out" --json "$out/langgraph.json"
echo
(cd "$root" && BATON_BENCH_DIR="$out" BATON_BENCH_JSON="$out/baton.json" \
    cargo bench --bench baton_bench -q -- engine concurrency growth)
"$venv/bin/python" "$root/bench/langgraph/bench.py" --compare "$out/langgraph.json" "$out/baton.json"
