#!/usr/bin/env bash
# End-to-end benchmark (not part of the test run): how close each kind of check comes to the
# gRPC transport's ceiling. Builds release binaries, writes a realistic fixture (300 Cedar
# policies, a 4-key JWKS, Istio-shaped requests with 20 headers and an ~800-byte token), then
# for each scenario and transport (TCP, Unix socket) starts the server pinned to one core and
# drives it with h2load on the other core, using a pre-encoded gRPC frame.
#
# Reports requests/s, p50/p99 latency, the ratio to the do-nothing ceiling server measured in
# the same run, the server's CPU time per check and its peak RSS, and checks (via /metrics) that
# every request got the decision the scenario expects. Then: heap allocations per check, the
# one-million-token memory flood, and (BENCH_MICRO=1) the criterion micro-benchmarks.
#
# The "traces on" scenario builds a span for every check and exports to an OTLP collector on
# 127.0.0.1:4317 if one runs there (run one to price the export too); without one, every span is
# still built and queued, then dropped and counted (portcullis_trace_spans_dropped_total).
# The "forged RS256" scenarios send one forged token (trusted issuer, known kid, bad signature) from
# one source: verified every time (negative cache off: what distinct forgeries cost), answered from
# the negative cache, and with the pre-authentication throttle on (after 20 failures every check is
# a 429 auth_throttled, decided before any verification).
#
# Usage: scripts/bench.sh            (about 10 minutes once the release build exists)
# Knobs: BENCH_DURATION=8 BENCH_CONNS=8 BENCH_STREAMS=16 BENCH_SERVER_CPU=0 BENCH_CLIENT_CPU=1
#        BENCH_FLOOD_TOKENS=1000000 BENCH_MICRO=1 BENCH_OUT=target/bench BENCH_ONLY=<regex>
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${BENCH_OUT:-target/bench}
DURATION=${BENCH_DURATION:-8}
CONNS=${BENCH_CONNS:-8}
STREAMS=${BENCH_STREAMS:-16}
SERVER_CPU=${BENCH_SERVER_CPU:-0}
CLIENT_CPU=${BENCH_CLIENT_CPU:-1}
FLOOD=${BENCH_FLOOD_TOKENS:-1000000}
MICRO=${BENCH_MICRO:-1}
ONLY=${BENCH_ONLY:-.}
TCP=127.0.0.1:19191
ADMIN=127.0.0.1:19090
CEIL_TCP=127.0.0.1:19291
SOCK=/tmp/portcullis-bench.sock
CEIL_SOCK=/tmp/portcullis-bench-ceiling.sock
URI_PATH=/envoy.service.auth.v3.Authorization/Check

if ! command -v h2load >/dev/null; then
  echo "installing h2load (nghttp2-client)" >&2
  apt-get update && apt-get install -y nghttp2-client
fi

echo "== building release binaries" >&2
cargo build --release --bin portcullis --example ceiling --example bench_setup --example alloc_count \
  --example token_flood
BIN=target/release
rm -rf "$OUT" && mkdir -p "$OUT/logs"
"$BIN/examples/bench_setup" "$OUT/fixture" "$TCP" "$SOCK" "$ADMIN" 300 | tee "$OUT/fixture.txt" >&2
# "shadow on": cached.yaml plus a candidate set that is a copy of the live one, so every check
# is also evaluated against it (sample 1.0) and the two always agree.
cp -r "$OUT/fixture/policies" "$OUT/fixture/candidate"
sed 's|^  dir: policies$|  dir: policies\n  candidate: {dir: candidate, watch: false}|' "$OUT/fixture/cached.yaml" \
  >"$OUT/fixture/cached-shadow.yaml"
grep -q '^  candidate:' "$OUT/fixture/cached-shadow.yaml"

{
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "nproc: $(nproc)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "h2load: $(h2load --version | head -1)"
  echo "load: h2load -c $CONNS -m $STREAMS -t 1 -D $DURATION (after a 20000-request warm-up), server on CPU $SERVER_CPU, h2load on CPU $CLIENT_CPU"
} >"$OUT/machine.txt"

SERVER_PID=
stop_server() {
  if [[ -n "$SERVER_PID" ]]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
  fi
}
trap stop_server EXIT

# start_server <ceiling|cached|nocache> <log>
start_server() {
  rm -f "$SOCK" "$CEIL_SOCK"
  if [[ $1 == ceiling ]]; then
    taskset -c "$SERVER_CPU" "$BIN/examples/ceiling" --tcp "$CEIL_TCP" --unix "$CEIL_SOCK" 2>"$2" &
    SERVER_PID=$!
    local sock=$CEIL_SOCK
  else
    taskset -c "$SERVER_CPU" "$BIN/portcullis" serve --config "$OUT/fixture/$1.yaml" 2>"$2" &
    SERVER_PID=$!
    local sock=$SOCK
  fi
  # Listeners are bound after the policies are loaded; the Unix socket comes last.
  for _ in $(seq 100); do
    [[ -S $sock ]] && return 0
    sleep 0.1
  done
  echo "server did not start; see $2" >&2
  cat "$2" >&2
  exit 1
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; }
hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$SERVER_PID/status"; }

# h2load_run <transport> <frame> <log-file> [extra h2load args...]
h2load_run() {
  local transport=$1 frame=$2 log=$3
  shift 3
  local port target
  if [[ $SERVER_KIND == ceiling ]]; then port=${CEIL_TCP##*:}; else port=${TCP##*:}; fi
  if [[ $transport == uds ]]; then
    if [[ $SERVER_KIND == ceiling ]]; then target=(-B "unix:$CEIL_SOCK"); else target=(-B "unix:$SOCK"); fi
  else
    target=()
  fi
  taskset -c "$CLIENT_CPU" h2load "${target[@]}" -c "$CONNS" -m "$STREAMS" -t 1 \
    -H 'content-type: application/grpc' -H 'te: trailers' -d "$frame" "$@" \
    "http://127.0.0.1:$port$URI_PATH" >"$log"
}

# checks counted by decision in the server's own metrics: "allow=N deny:reason=N ..."
decisions() {
  curl -fsS "http://$ADMIN/metrics" |
    awk -F'[{}]' '/^portcullis_checks_total\{/ {
      split($2, kv, ","); d=""; r="";
      for (i in kv) { split(kv[i], p, "="); gsub(/"/, "", p[2]); if (p[1]=="decision") d=p[2]; else r=p[2] }
      split($3, v, " "); printf "%s:%s=%d ", d, r, v[1] }'
}

RESULTS=$OUT/results.tsv
printf 'scenario\ttransport\treq_s\tratio\tp50_us\tp99_us\tcpu_us_per_check\tpeak_rss_mib\tsingle_p50_us\tsingle_p99_us\tdecisions\n' >"$RESULTS"
CEIL_TCP_RPS=
CEIL_UDS_RPS=

# scenario name | server config | frame | decision the server must report for every request
SCENARIOS=(
  "ceiling (always allow)|ceiling|jwt-rs256|"
  "anonymous, denied 401|cached|anonymous|deny:credential_required"
  "JWT RS256, token cached|cached|jwt-rs256|allow:allowed"
  "JWT RS256, verified every check|nocache|jwt-rs256|allow:allowed"
  "JWT ES256, verified every check|nocache|jwt-es256|allow:allowed"
  "JWT EdDSA, verified every check|nocache|jwt-eddsa|allow:allowed"
  "SPIFFE peer, allowed|cached|spiffe|allow:allowed"
  "JWT RS256 cached, decision log off|cached-quiet|jwt-rs256|allow:allowed"
  "JWT RS256 cached, traces on 100% sampled|cached-traced|jwt-rs256|allow:allowed"
  "JWT RS256 cached, shadow on|cached-shadow|jwt-rs256|allow:allowed"
  "forged RS256, verified every time|forged-nocache|jwt-forged|deny:bad_signature"
  "forged RS256, negative cache|cached|jwt-forged|deny:bad_signature"
  "forged RS256, source throttled after 20|forged-throttled|jwt-forged|"
)

for transport in tcp uds; do
  for s in "${SCENARIOS[@]}"; do
    IFS='|' read -r name SERVER_KIND frame expect <<<"$s"
    [[ "$name $transport" =~ $ONLY ]] || continue
    tag=$(echo "$name-$transport" | tr -c 'a-zA-Z0-9\n' '_')
    echo "== $name over $transport" >&2
    start_server "$SERVER_KIND" "$OUT/logs/$tag.server.log"
    h2load_run "$transport" "$OUT/fixture/$frame.bin" "$OUT/logs/$tag.warmup.txt" -n 20000
    # Latency of one check alone: one request in flight, so no queueing.
    h2load_run "$transport" "$OUT/fixture/$frame.bin" "$OUT/logs/$tag.single.txt" -n 2000 \
      --log-file="$OUT/logs/$tag.single.tsv" -c 1 -m 1
    read -r s50 s99 < <(cut -f3 "$OUT/logs/$tag.single.tsv" | sort -n |
      awk '{v[NR]=$1} END {i=int(NR*0.5); j=int(NR*0.99); if (i<1) i=1; if (j<1) j=1; print v[i], v[j]}')
    c0=$(cpu_ticks)
    h2load_run "$transport" "$OUT/fixture/$frame.bin" "$OUT/logs/$tag.h2load.txt" -D "$DURATION" \
      --log-file="$OUT/logs/$tag.requests.tsv"
    c1=$(cpu_ticks)
    hwm=$(hwm_kib)
    seen="-"
    if [[ $SERVER_KIND != ceiling ]]; then seen=$(decisions); fi
    # Shadow on: every check was shadowed, and a copy never disagrees.
    if [[ $SERVER_KIND == cached-shadow ]]; then
      shadow=$(curl -fsS "http://$ADMIN/metrics" | awk '/^portcullis_shadow_checks_total / {print $2}')
      if [[ -z $shadow || $shadow == 0 ]] || curl -fsS "http://$ADMIN/metrics" | grep -q '^portcullis_shadow_disagreements_total{'; then
        echo "shadow scenario: checks shadowed=${shadow:-none}, or disagreements seen" >&2
        exit 1
      fi
    fi
    stop_server

    txt=$OUT/logs/$tag.h2load.txt
    done_n=$(awk '/^requests:/ {print $6}' "$txt")
    failed=$(awk '/^requests:/ {print $10}' "$txt")
    rps=$(awk '/^finished in/ {gsub(/,/, "", $4); print $4}' "$txt")
    read -r p50 p99 < <(cut -f3 "$OUT/logs/$tag.requests.tsv" | sort -n |
      awk '{v[NR]=$1} END {i=int(NR*0.5); j=int(NR*0.99); if (i<1) i=1; if (j<1) j=1; print v[i], v[j]}')
    cpu_us=$(awk -v a="$c0" -v b="$c1" -v n="$done_n" 'BEGIN {printf "%.1f", (b - a) * 10000 / n}')
    if [[ $SERVER_KIND == ceiling ]]; then
      if [[ $transport == tcp ]]; then CEIL_TCP_RPS=$rps; else CEIL_UDS_RPS=$rps; fi
    fi
    ceil=$CEIL_TCP_RPS
    [[ $transport == uds ]] && ceil=$CEIL_UDS_RPS
    ratio=$(awk -v r="$rps" -v c="${ceil:-0}" 'BEGIN {if (c > 0) printf "%.0f%%", 100 * r / c; else print "-"}')
    if [[ "$failed" != 0 ]]; then
      echo "h2load saw $failed failed requests in $name/$transport" >&2
      exit 1
    fi
    # Every measured (and warm-up) request must have got the expected decision, and only it.
    if [[ -n $expect ]] && ! [[ $seen =~ ^$expect=[0-9]+\ $ ]]; then
      echo "unexpected decisions in $name/$transport: $seen (want only $expect)" >&2
      exit 1
    fi
    printf '%s\t%s\t%.0f\t%s\t%s\t%s\t%s\t%.1f\t%s\t%s\t%s\n' "$name" "$transport" "$rps" "$ratio" "$p50" "$p99" \
      "$cpu_us" "$(awk -v k="$hwm" 'BEGIN {print k / 1024}')" "$s50" "$s99" "$seen" >>"$RESULTS"
    tail -1 "$RESULTS" >&2
  done
done

{
  echo "| scenario | transport | req/s | vs ceiling | p50 µs | p99 µs | server CPU µs/check | peak RSS MiB | alone p50 µs | alone p99 µs |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  tail -n +2 "$RESULTS" | awk -F'\t' '{printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10}'
} >"$OUT/results.md"

echo "== heap allocations per check" >&2
"$BIN/examples/alloc_count" | tee "$OUT/allocations.txt" >&2

echo "== token flood: $FLOOD distinct valid tokens" >&2
taskset -c "$SERVER_CPU" "$BIN/examples/token_flood" "$FLOOD" 10000 | tee "$OUT/token_flood.txt" >&2

if [[ $MICRO == 1 ]]; then
  echo "== criterion micro-benchmarks (short runs)" >&2
  cargo bench --bench hot_path --no-run
  taskset -c "$SERVER_CPU" cargo bench --bench hot_path -- --warm-up-time 1 --measurement-time 3 --noplot 2>&1 |
    grep -E '^[a-z_]+/|time:' | tee "$OUT/micro.txt" >&2
fi

echo
cat "$OUT/machine.txt"
echo
cat "$OUT/results.md"
echo
echo "raw output: $OUT/"
