#!/usr/bin/env bash
# Soak: the release `portcullis` binary under a steady ~80% of its measured maximum for
# SOAK_SECONDS (default 600) with mixed traffic (cached and fresh tokens, forged tokens,
# anonymous requests, SPIFFE peers), a signing-key rotation and a policy reload every 10 s.
# The driver is examples/soak.rs (see its header for the traffic mix and the rules). It prints
# one line per 10 s (rate, p99, wrong decisions, failed RPCs, server RSS and open fds) and
# exits non-zero when a decision was wrong, an RPC failed, the server exited, or RSS, open fds
# or p99 grew more than 10% from the start to the end.
#
# Usage: scripts/soak.sh
# Knobs: SOAK_SECONDS=600 SOAK_MEASURE_SECONDS=5 SOAK_LOAD=0.8 SOAK_WORKERS=64
#        SOAK_PROFILE=release|debug (debug: no release build; for a smoke run only)
#        SOAK_SERVER_CPU=0 SOAK_CLIENT_CPU=1 (taskset pinning, when taskset exists)
#        SOAK_OUT=target/soak
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE=${SOAK_PROFILE:-release}
export SOAK_SECONDS=${SOAK_SECONDS:-600}
export SOAK_OUT=${SOAK_OUT:-target/soak}
mkdir -p "$SOAK_OUT"

if [[ "$PROFILE" == release ]]; then
  cargo build --release --bin portcullis --example soak
  dir=target/release
else
  cargo build --bin portcullis --example soak
  dir=target/debug
fi
export SOAK_BIN="$(realpath "$dir/portcullis")"

client=("$dir/examples/soak")
if command -v taskset >/dev/null && [[ $(nproc) -ge 2 ]]; then
  # The server is started by the driver: pin the driver to one core and let the server inherit
  # the other through its own taskset wrapper.
  server_cpu=${SOAK_SERVER_CPU:-0}
  client_cpu=${SOAK_CLIENT_CPU:-1}
  wrapper="$(realpath "$SOAK_OUT")/portcullis-pinned"
  printf '#!/bin/sh\nexec taskset -c %s %q "$@"\n' "$server_cpu" "$SOAK_BIN" >"$wrapper"
  chmod +x "$wrapper"
  export SOAK_BIN="$wrapper"
  client=(taskset -c "$client_cpu" "$dir/examples/soak")
fi

echo "soak: $SOAK_SECONDS s, profile $PROFILE, load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
"${client[@]}" | tee "$SOAK_OUT/report.txt"
