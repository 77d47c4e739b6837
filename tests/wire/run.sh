#!/usr/bin/env bash
# Wire-compatibility test with a client that is NOT built from our protos: Python with Envoy's
# own API types (PyPI `envoy-data-plane`, betterproto2), over its grpclib client and over
# grpcio, on TCP and on the Unix socket. Starts the real binary on 127.0.0.1 with the demo
# policies and key, waits for /readyz, runs pytest, and always stops the server.
#
#   bash tests/wire/run.sh [pytest args...]
#
# Installs what it needs into a cached virtualenv (idempotent; needs python3 with venv and
# access to PyPI): $PORTCULLIS_TOOLS_DIR/wire-venv, default ~/.cache/portcullis/wire-venv.
# PORTCULLIS_BIN=/path/to/portcullis skips `cargo build`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
tools="${PORTCULLIS_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/portcullis}"
venv="$tools/wire-venv"
py_reqs=(
  "pytest>=8,<10"
  "envoy-data-plane==2.2.0"
)
stamp_text="${py_reqs[*]}"

log() { printf '[wire-tests] %s\n' "$*" >&2; }

# Python tools -----------------------------------------------------------------------------
mkdir -p "$tools"
if [[ ! -x "$venv/bin/python" ]] || [[ "$(cat "$venv/.stamp" 2>/dev/null)" != "$stamp_text" ]]; then
  log "installing Python tools into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${py_reqs[@]}"
  printf '%s' "$stamp_text" > "$venv/.stamp"
fi
py="$venv/bin/python"

# The binary -------------------------------------------------------------------------------
bin="${PORTCULLIS_BIN:-}"
if [[ -z "$bin" ]]; then
  # A no-op when up to date; never test a stale binary.
  (cd "$repo" && cargo build --quiet --bin portcullis)
  bin="$repo/target/debug/portcullis"
fi
[[ -x "$bin" ]] || { log "no binary at $bin"; exit 1; }

# Config and server ------------------------------------------------------------------------
work="$(mktemp -d "${TMPDIR:-/tmp}/portcullis-wire.XXXXXX")"
server_pid=""
cleanup() {
  local rc=$?
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    # Bounded wait for the graceful drain, then force.
    for _ in $(seq 1 50); do
      kill -0 "$server_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  if [[ $rc -ne 0 && -f "$work/server.log" ]]; then
    log "server log (last 40 lines):"
    tail -n 40 "$work/server.log" >&2 || true
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT INT TERM

free_port() {
  "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
grpc_port="$(free_port)"
admin_port="$(free_port)"
while [[ "$admin_port" == "$grpc_port" ]]; do admin_port="$(free_port)"; done
diag_port="$(free_port)"
while [[ "$diag_port" == "$grpc_port" || "$diag_port" == "$admin_port" ]]; do diag_port="$(free_port)"; done
sock="$work/authz.sock"

mkdir -p "$work/policies"
cp "$repo"/examples/demo/policies/* "$work/policies/"
# The config the Rust suite uses too (tests/fixtures/sidecar.yaml), with its placeholders filled.
"$py" - "$repo/tests/fixtures/sidecar.yaml" "$work/config.yaml" \
  GRPC="127.0.0.1:$grpc_port" UNIX="$sock" ADMIN="127.0.0.1:$admin_port" DIAGNOSTICS="127.0.0.1:$diag_port" \
  POLICY_DIR="$work/policies" ISSUER="https://demo.portcullis.dev" JWKS_FILE="$repo/examples/demo/jwks.json" <<'PY'
import sys
src, dst, pairs = sys.argv[1], sys.argv[2], sys.argv[3:]
text = open(src, encoding="utf-8").read()
for pair in pairs:
    name, value = pair.split("=", 1)
    text = text.replace("${" + name + "}", value)
if "${" in text:
    sys.exit("a placeholder is left in the sidecar config")
open(dst, "w", encoding="utf-8").write(text)
PY

log "starting $bin on 127.0.0.1:$grpc_port and $sock"
"$bin" serve --config "$work/config.yaml" > "$work/server.log" 2>&1 &
server_pid=$!

"$py" - "$admin_port" "$server_pid" <<'PY'
import os, sys, time, urllib.request
port, pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 30
while True:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("server exited before it was ready")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            if r.status == 200:
                break
    except Exception:
        pass
    if time.monotonic() > deadline:
        sys.exit("server not ready within 30s")
    time.sleep(0.1)
PY
log "server ready"

# Tests ------------------------------------------------------------------------------------
export PORTCULLIS_BIN="$bin"
export PORTCULLIS_GRPC="127.0.0.1:$grpc_port"
export PORTCULLIS_UNIX="$sock"
export PORTCULLIS_ADMIN="127.0.0.1:$admin_port"
export PORTCULLIS_DIAGNOSTICS="127.0.0.1:$diag_port"
export PORTCULLIS_DEMO_KEY="$repo/examples/demo/keys/demo-signing-key.pem"
export PORTCULLIS_OTHER_KEY="$repo/tests/fixtures/keys/rsa2.pem"

set +e
"$py" -m pytest -p no:cacheprovider -q "$here/test_wire.py" "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
  log "pytest collected no tests: that is a failure here"
  exit 1
fi
exit "$rc"
