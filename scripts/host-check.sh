#!/usr/bin/env bash
# Checks baton against real MCP hosts:
#  - the MCP Inspector CLI lists the tools and calls invoke_async and invoke_status;
#  - the Claude Code CLI (if BATON_CLAUDE_BIN is set) reports the server connected after
#    `claude mcp add` + `claude mcp list`, with HOME in a temp dir.
# Usage: scripts/host-check.sh PATH_TO_BATON
set -euo pipefail
baton="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
root="$(cd "$(dirname "$0")/.." && pwd)"
tools="$root/.tools/inspector"
version="2.12.0"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if [ ! -x "$tools/node_modules/.bin/mcp-inspector" ]; then
  mkdir -p "$tools"
  (cd "$tools" && npm install --silent --no-audit --no-fund "@modelcontextprotocol/inspector@$version" >/dev/null)
fi
inspector=("$tools/node_modules/.bin/mcp-inspector" --cli)
# The background worker the server starts exits soon after the workflow is done.
env_args=(-e RUST_LOG=warn -e "BATON_DB=$work/baton.db" -e BATON_WORKER_IDLE_S=2)

fail() { echo "host-check: $*" >&2; exit 1; }

echo "inspector $version: tools/list"
out="$("${inspector[@]}" "${env_args[@]}" "$baton" serve --method tools/list)"
for tool in invoke_async invoke_status invoke_stream invoke_resume workflow_monitor invoke_cancel workflow_delete; do
  grep -q "\"name\": \"$tool\"" <<<"$out" || fail "tools/list lacks $tool"
done

echo "inspector $version: tools/call invoke_async"
out="$("${inspector[@]}" "${env_args[@]}" "$baton" serve --method tools/call \
  --tool-name invoke_async --tool-arg 'workflow={"name":"host-check","steps":[{"id":"a","run":["echo","hi"]}]}' \
  --tool-arg thread_id=host-check-1)"
grep -q 'host-check-1' <<<"$out" || fail "invoke_async did not return the thread id: $out"

echo "inspector $version: tools/call invoke_status (the background worker completes it)"
for _ in $(seq 1 100); do
  out="$("${inspector[@]}" "${env_args[@]}" "$baton" serve --method tools/call \
    --tool-name invoke_status --tool-arg thread_id=host-check-1)"
  grep -q 'host-check-1' <<<"$out" || fail "invoke_status did not describe the workflow: $out"
  grep -q '"status": "completed"' <<<"$out" && break
  sleep 0.2
done
grep -q '"status": "completed"' <<<"$out" || fail "the workflow did not complete after its server ended: $out"

if [ -n "${BATON_CLAUDE_BIN:-}" ]; then
  echo "claude: mcp add + mcp list"
  home="$work/home"
  mkdir -p "$home/project"
  (
    cd "$home/project"
    export HOME="$home" DISABLE_AUTOUPDATER=1 CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1
    "$BATON_CLAUDE_BIN" mcp add baton -e "BATON_DB=$work/claude.db" -e RUST_LOG=warn -- "$baton" serve >/dev/null
    out="$("$BATON_CLAUDE_BIN" mcp list 2>&1)"
    echo "$out"
    grep -Eq 'baton:.*(Connected|✓)' <<<"$out" || fail "claude mcp list does not report baton connected"
  )
fi
echo "host-check: ok"
