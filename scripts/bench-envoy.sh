#!/usr/bin/env bash
# The number users feel: HTTP requests through a real Envoy 1.40 (deploy/envoy.yaml, addresses
# substituted), with the ext_authz hop to
#   - nothing            (Envoy alone: the ext_authz filter removed),
#   - the ceiling        (examples/ceiling.rs: same tonic stack as portcullis, does nothing, allows),
#   - portcullis         (demo policies and JWKS: token cached; token verified on every check with the
#                         token cache off; denied 403),
#   - OPA-Envoy          (only when OPA_ENVOY_BIN=/path/to/opa_envoy is given: JWT verified in Rego).
# Every route is a `direct_response` (no upstream), so rows differ only by the ext_authz hop.
# The sidecar is pinned to one CPU, Envoy (--concurrency 1) and h2load to the other.
#
# Per row: p50/p99 latency with one request in flight (h2load -c1 -m1), and throughput at fixed
# concurrency (h2load -c $CONNS -m $STREAMS for $DURATION s). Prints a markdown table, including the
# latency portcullis adds over the ceiling. Not part of the tests. About a minute once built.
#
# Usage: scripts/bench-envoy.sh
# Knobs: BENCH_DURATION=4 BENCH_CONNS=4 BENCH_STREAMS=8 BENCH_SINGLE=2000 BENCH_SIDECAR_CPU=0
#        BENCH_ENVOY_CPU=1 BENCH_OUT=target/bench-envoy OPA_ENVOY_BIN=
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"

OUT=${BENCH_OUT:-target/bench-envoy}
DURATION=${BENCH_DURATION:-4}
CONNS=${BENCH_CONNS:-4}
STREAMS=${BENCH_STREAMS:-8}
SINGLE=${BENCH_SINGLE:-2000}
SIDECAR_CPU=${BENCH_SIDECAR_CPU:-0}
ENVOY_CPU=${BENCH_ENVOY_CPU:-1}
OPA=${OPA_ENVOY_BIN:-}

if ! command -v h2load >/dev/null; then
  echo "installing h2load (nghttp2-client)" >&2
  apt-get update && apt-get install -y nghttp2-client
fi
# shellcheck source=tests/envoy/env.sh
source "$repo/tests/envoy/env.sh"
envoy_env

echo "== building release binaries" >&2
cargo build --release --bin portcullis --example ceiling
BIN=$repo/target/release
rm -rf "$OUT" && mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)

free_port() { "$envoy_py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
ENVOY_PORT=$(free_port)
ENVOY_ADMIN=$(free_port)
PC_ADMIN=$(free_port)
PC_GRPC=$(free_port)
OPA_GRPC=$(free_port)
CEIL_TCP=$(free_port)
SOCK=$OUT/authz.sock
CEIL_SOCK=$OUT/ceiling.sock

# Configs -------------------------------------------------------------------------------------
TOKEN=$("$BIN/portcullis" token --key examples/demo/keys/demo-signing-key.pem --sub alice --ttl 2h)
mkdir -p "$OUT/policies" && cp examples/demo/policies/* "$OUT/policies/"
for cache in 10000 0; do
  cat >"$OUT/portcullis-cache$cache.yaml" <<EOF
listen: {grpc: "127.0.0.1:$PC_GRPC", unix: "$SOCK", admin: "127.0.0.1:$PC_ADMIN"}
log: {format: json, level: warn}
policy: {dir: "$OUT/policies", watch: false}
authn:
  issuers:
    - issuer: https://demo.portcullis.dev
      jwks_file: "$repo/examples/demo/jwks.json"
      audiences: [demo-api]
      algorithms: [RS256]
      claims_to_headers: {email: x-portcullis-email}
  token_cache: {max_entries: $cache}
  peer: {trust_domains: [cluster.local]}
EOF
done

# envoy-<kind>.yaml: the shipped bootstrap, addresses substituted, every route a direct_response.
"$envoy_py" - "$repo" "$OUT" "$ENVOY_PORT" "$ENVOY_ADMIN" "$SOCK" "$CEIL_SOCK" "$OPA_GRPC" <<'PY'
import copy, sys
from pathlib import Path
repo, out, port, admin, sock, ceil_sock, opa_port = sys.argv[1:]
sys.path.insert(0, f"{repo}/tests/envoy")
import yaml
from harness import EXT_AUTHZ, HCM, envoy_config

base = yaml.safe_load(Path(repo, "deploy/envoy.yaml").read_text())


def direct(cfg, with_authz=True):
    for listener in cfg["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                if f["name"] != HCM:
                    continue
                hcm = f["typed_config"]
                hcm.pop("access_log", None)  # the access log is not what is measured
                for vh in hcm["route_config"]["virtual_hosts"]:
                    for r in vh["routes"]:
                        r.pop("route", None)
                        r["direct_response"] = {"status": 200, "body": {"inline_string": "ok\n"}}
                if not with_authz:
                    hcm["http_filters"] = [x for x in hcm["http_filters"] if x["name"] != EXT_AUTHZ]
    return cfg


pc = yaml.safe_load(Path(out, "portcullis-cache10000.yaml").read_text())
# app is never reached; allowed_headers gets what the portcullis config reads (the documented rule)
common = dict(listen_port=int(port), admin_port=int(admin), app_port=9, portcullis=pc)
configs = {
    "alone": direct(envoy_config(base, authz_socket=sock, **common), with_authz=False),
    "ceiling": direct(envoy_config(base, authz_socket=ceil_sock, **common)),
    "portcullis": direct(envoy_config(base, authz_socket=sock, **common)),
    # OPA-Envoy listens on TCP only.
    "opa": direct(envoy_config(base, authz_port=int(opa_port), **common)),
}
for name, cfg in configs.items():
    Path(out, f"envoy-{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
PY

if [[ -n "$OPA" ]]; then
  jwks=$(tr -d '\n' <examples/demo/jwks.json | sed 's/\\/\\\\/g; s/"/\\"/g')
  cat >"$OUT/opa-policy.rego" <<EOF
package envoy.authz

import rego.v1

default allow := false

jwks := "$jwks"

allow if {
	[_, token] := split(input.attributes.request.http.headers.authorization, " ")
	[valid, _, payload] := io.jwt.decode_verify(token, {"cert": jwks, "aud": "demo-api", "iss": "https://demo.portcullis.dev"})
	valid
	startswith(input.parsed_path[0], "api")
	payload.sub != ""
}
EOF
  cat >"$OUT/opa-config.yaml" <<EOF
plugins:
  envoy_ext_authz_grpc:
    addr: 127.0.0.1:$OPA_GRPC
    path: envoy/authz/allow
decision_logs:
  console: false
EOF
fi

{
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "nproc: $(nproc)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "envoy: $("$envoy_bin" --version | grep -o '[0-9a-f]*/[0-9.]*/[A-Za-z]*/[A-Z]*/[A-Za-z]*' | head -1)"
  echo "h2load: $(h2load --version | head -1)"
  echo "load: one in flight: h2load -c1 -m1 -n $SINGLE; throughput: h2load -c $CONNS -m $STREAMS -D $DURATION (HTTP/2 to Envoy)"
  echo "pinning: sidecar on CPU $SIDECAR_CPU; Envoy (--concurrency 1) and h2load on CPU $ENVOY_CPU"
} >"$OUT/machine.txt"

# Processes -----------------------------------------------------------------------------------
SIDECAR_PID=
ENVOY_PID=
stop_all() {
  for pid in $ENVOY_PID $SIDECAR_PID; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  ENVOY_PID=
  SIDECAR_PID=
}
trap stop_all EXIT

wait_until() { # <what> <command...>
  local what=$1
  shift
  for _ in $(seq 150); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "$what did not come up; logs in $OUT/logs" >&2
  exit 1
}

start_sidecar() { # <kind> <log>
  rm -f "$SOCK" "$CEIL_SOCK"
  case $1 in
    none) return 0 ;;
    ceiling)
      taskset -c "$SIDECAR_CPU" "$BIN/examples/ceiling" --tcp "127.0.0.1:$CEIL_TCP" --unix "$CEIL_SOCK" >"$2" 2>&1 &
      SIDECAR_PID=$!
      wait_until ceiling test -S "$CEIL_SOCK"
      ;;
    cache*)
      taskset -c "$SIDECAR_CPU" "$BIN/portcullis" serve --config "$OUT/portcullis-$1.yaml" >"$2" 2>&1 &
      SIDECAR_PID=$!
      wait_until portcullis curl -fsS "http://127.0.0.1:$PC_ADMIN/readyz"
      wait_until "portcullis socket" test -S "$SOCK"
      ;;
    opa)
      taskset -c "$SIDECAR_CPU" "$OPA" run --server --addr 127.0.0.1:0 --config-file "$OUT/opa-config.yaml" \
        "$OUT/opa-policy.rego" >"$2" 2>&1 &
      SIDECAR_PID=$!
      wait_until opa-envoy bash -c "exec 3<>/dev/tcp/127.0.0.1/$OPA_GRPC"
      ;;
  esac
}

start_envoy() { # <config> <log>
  taskset -c "$ENVOY_CPU" "$envoy_bin" -c "$1" --concurrency 1 --disable-hot-restart -l warning >"$2" 2>&1 &
  ENVOY_PID=$!
  wait_until envoy curl -fsS "http://127.0.0.1:$ENVOY_ADMIN/ready"
}

# checks counted by decision in portcullis' own metrics: "allow:allowed=N deny:reason=N ..."
decisions() {
  curl -fsS "http://127.0.0.1:$PC_ADMIN/metrics" |
    awk -F'[{}]' '/^portcullis_checks_total\{/ {
      split($2, kv, ","); d=""; r="";
      for (i in kv) { split(kv[i], p, "="); gsub(/"/, "", p[2]); if (p[1]=="decision") d=p[2]; else r=p[2] }
      split($3, v, " "); printf "%s:%s=%d ", d, r, v[1] }'
}

percentiles() { cut -f3 "$1" | sort -n | awk '{v[NR]=$1} END {i=int(NR*0.5); j=int(NR*0.99); if (i<1) i=1; if (j<1) j=1; print v[i], v[j]}'; }

# row name | sidecar | envoy config | path | with token | expected HTTP status | expected decisions
ROWS=(
  "Envoy alone (direct_response)|none|alone|/api/orders|0|200|"
  "Envoy + ceiling (do-nothing ext_authz)|ceiling|ceiling|/api/orders|1|200|"
  "Envoy + portcullis, JWT cached|cache10000|portcullis|/api/orders|1|200|allow:allowed"
  "Envoy + portcullis, JWT verified every check|cache0|portcullis|/api/orders|1|200|allow:allowed"
  "Envoy + portcullis, denied 403|cache10000|portcullis|/admin/users|1|403|deny:forbidden_by_policy"
)
[[ -n "$OPA" ]] && ROWS+=("Envoy + OPA-Envoy, JWT verified in Rego|opa|opa|/api/orders|1|200|")

RESULTS=$OUT/results.tsv
printf 'row\tsingle_p50_us\tsingle_p99_us\treq_s\tp50_us\tp99_us\n' >"$RESULTS"
for row in "${ROWS[@]}"; do
  IFS='|' read -r name sidecar envoy_cfg path with_token want_status want_decisions <<<"$row"
  tag=$(echo "$name" | tr -c 'a-zA-Z0-9\n' '_')
  echo "== $name" >&2
  start_sidecar "$sidecar" "$OUT/logs/$tag.sidecar.log"
  start_envoy "$OUT/envoy-$envoy_cfg.yaml" "$OUT/logs/$tag.envoy.log"
  hdr=(-H "host: app.example.com")
  [[ $with_token == 1 ]] && hdr+=(-H "authorization: Bearer $TOKEN")
  url="http://127.0.0.1:$ENVOY_PORT$path"
  got=$(curl -s -o /dev/null -w "%{http_code}" "${hdr[@]}" "$url")
  if [[ $got != "$want_status" ]]; then
    echo "$name: expected HTTP $want_status, got $got" >&2
    exit 1
  fi
  load() { taskset -c "$ENVOY_CPU" h2load -t 1 "${hdr[@]}" "$@" "$url"; }
  load -c "$CONNS" -m "$STREAMS" -n 5000 >"$OUT/logs/$tag.warmup.txt"
  load -c 1 -m 1 -n "$SINGLE" --log-file="$OUT/logs/$tag.single.tsv" >"$OUT/logs/$tag.single.txt"
  load -c "$CONNS" -m "$STREAMS" -D "$DURATION" --log-file="$OUT/logs/$tag.load.tsv" >"$OUT/logs/$tag.load.txt"
  seen=""
  [[ $sidecar == cache* ]] && seen=$(decisions)
  stop_all

  for f in single load warmup; do
    # Every response must carry the expected status (h2load counts 2xx / 4xx / 5xx).
    codes=$(awk '/^status codes:/ {print $3, $5, $7, $9}' "$OUT/logs/$tag.$f.txt")
    read -r s2 s3 s4 s5 <<<"$codes"
    ok=$s2
    [[ $want_status == 403 ]] && ok=$s4
    total=$(awk '/^requests:/ {print $6}' "$OUT/logs/$tag.$f.txt")
    if [[ "$ok" != "$total" || "$total" == 0 ]]; then
      echo "$name ($f): $total requests done, $ok with HTTP $want_status (2xx/3xx/4xx/5xx: $codes)" >&2
      exit 1
    fi
  done
  if [[ -n $want_decisions ]] && ! [[ $seen =~ ^$want_decisions=[0-9]+\ $ ]]; then
    echo "unexpected decisions in $name: $seen (want only $want_decisions)" >&2
    exit 1
  fi
  read -r s50 s99 < <(percentiles "$OUT/logs/$tag.single.tsv")
  read -r p50 p99 < <(percentiles "$OUT/logs/$tag.load.tsv")
  rps=$(awk '/^finished in/ {gsub(/,/, "", $4); print $4}' "$OUT/logs/$tag.load.txt")
  printf '%s\t%s\t%s\t%.0f\t%s\t%s\n' "$name" "$s50" "$s99" "$rps" "$p50" "$p99" >>"$RESULTS"
  tail -1 "$RESULTS" >&2
done

# Table: latency (one in flight) and what each row adds over Envoy alone and over the ceiling.
awk -F'\t' '
  NR == 1 { next }
  { name[NR] = $1; s50[NR] = $2; s99[NR] = $3; rps[NR] = $4; p50[NR] = $5; p99[NR] = $6; n = NR }
  $1 ~ /^Envoy alone/ { alone = $2 }
  $1 ~ /ceiling/ { ceil = $2 }
  END {
    print "| through Envoy | 1 in flight: p50 µs | p99 µs | added over Envoy alone (p50) | added over ceiling (p50) | loaded: req/s | p50 µs | p99 µs |"
    print "|---|---:|---:|---:|---:|---:|---:|---:|"
    for (i = 2; i <= n; i++) {
      oa = (name[i] ~ /^Envoy alone/) ? "-" : sprintf("%+d", s50[i] - alone)
      oc = (name[i] ~ /portcullis|OPA/) ? sprintf("%+d", s50[i] - ceil) : "-"
      printf "| %s | %d | %d | %s | %s | %s | %d | %d |\n", name[i], s50[i], s99[i], oa, oc, rps[i], p50[i], p99[i]
    }
  }' "$RESULTS" >"$OUT/results.md"

cat "$OUT/machine.txt"
echo
cat "$OUT/results.md"
