#!/usr/bin/env bash
# Runs the LangGraph + SqliteSaver and DBOS baselines and baton's equivalent scenarios back
# to back in one run, then prints them side by side with ratios (issues 6 and 14).
#
#   bench/langgraph/run.sh
#
# LANGGRAPH_VENV and DBOS_VENV override where the venvs live (default: target/bench/venv and
# target/bench/dbos-venv, never committed: DBOS and LangGraph pin different SQLAlchemy-era
# dependencies, so each gets its own);
# BATON_BENCH_DIR where the databases go (must be a real disk, not tmpfs).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
venv=${LANGGRAPH_VENV:-$root/target/bench/venv}
langgraph_version=1.2.24
checkpoint_version=3.1.2
dbos_venv=${DBOS_VENV:-$root/target/bench/dbos-venv}
dbos_version=3.4.0

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check \
    "langgraph==$langgraph_version" "langgraph-checkpoint-sqlite==$checkpoint_version"
if [ ! -x "$dbos_venv/bin/python" ]; then
    python3 -m venv "$dbos_venv"
fi
"$dbos_venv/bin/pip" install -q --disable-pip-version-check "dbos==$dbos_version"

base=${BATON_BENCH_DIR:-${TMPDIR:-/tmp}}
out=$(mktemp -d "$base/langgraph-vs-baton-XXXXXX")
trap 'rm -rf "$out"' EXIT
echo "bench dir: $out ($(df --output=fstype "$out" | tail -n 1))"

# Build first so compilation does not overlap the LangGraph measurement.
(cd "$root" && cargo bench --bench baton_bench --no-run -q)

echo
"$venv/bin/python" "$root/bench/langgraph/bench.py" --dir "$out" --json "$out/langgraph.json"
echo
mkdir -p "$out/dbos" "$out/dbos-wal"
"$dbos_venv/bin/python" "$root/bench/dbos/bench.py" --dir "$out/dbos" --json "$out/dbos.json"
"$dbos_venv/bin/python" "$root/bench/dbos/bench.py" --dir "$out/dbos-wal" --wal --json "$out/dbos-wal.json"
echo
(cd "$root" && BATON_BENCH_DIR="$out" BATON_BENCH_JSON="$out/baton.json" \
    cargo bench --bench baton_bench -q -- engine command concurrency growth)
"$venv/bin/python" "$root/bench/langgraph/bench.py" --compare "$out/langgraph.json" "$out/baton.json" \
    --dbos "$out/dbos.json" "$out/dbos-wal.json"
