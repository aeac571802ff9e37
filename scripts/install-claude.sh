#!/usr/bin/env bash
# Installs the pinned Claude Code CLI (npm @anthropic-ai/claude-code) into .tools/claude for
# the end-to-end agent tests, and prints the path of its executable on stdout (everything
# else goes to stderr). .ci/run exports that path as BATON_CLAUDE_BIN.
#
# Pinned because the tests check the CLI's exact stream-json output and request shapes;
# bump CLAUDE_CODE_VERSION deliberately and re-run tests/it/claude_e2e.rs.
set -euo pipefail
VERSION="${CLAUDE_CODE_VERSION:-2.1.332}"
cd "$(dirname "$0")/.."
DIR="$PWD/.tools/claude"
PKG="$DIR/node_modules/@anthropic-ai"

case "$(uname -m)" in
  x86_64 | amd64) ARCH=x64 ;;
  aarch64 | arm64) ARCH=arm64 ;;
  *) echo "install-claude: unsupported machine $(uname -m)" >&2; exit 1 ;;
esac
case "$(uname -s)" in
  Linux) OS=linux ;;
  Darwin) OS=darwin ;;
  *) echo "install-claude: unsupported system $(uname -s)" >&2; exit 1 ;;
esac

# The wrapper's postinstall copies the platform binary over bin/claude.exe; when install
# scripts are disabled the platform package's own binary is used instead.
find_bin() {
  for candidate in "$PKG/claude-code-$OS-$ARCH/claude" "$PKG/claude-code-$OS-$ARCH-musl/claude" \
                   "$PKG/claude-code/bin/claude.exe"; do
    if [ -x "$candidate" ] && "$candidate" --version 2>/dev/null | grep -q "^$VERSION "; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

if ! BIN="$(find_bin)"; then
  command -v npm >/dev/null 2>&1 || { echo "install-claude: npm is required" >&2; exit 1; }
  mkdir -p "$DIR"
  echo "installing @anthropic-ai/claude-code@$VERSION into $DIR" >&2
  npm install --prefix "$DIR" --no-audit --no-fund --loglevel=error \
    "@anthropic-ai/claude-code@$VERSION" >&2
  BIN="$(find_bin)" || { echo "install-claude: no working claude binary after install" >&2; exit 1; }
fi
echo "install-claude: $("$BIN" --version)" >&2
echo "$BIN"
