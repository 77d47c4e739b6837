#!/usr/bin/env bash
# The whole test suite: Rust unit + integration tests over real sockets, the independent Python
# ext_authz client (Envoy's own API types), and the Helm chart / manifests checks.
set -euo pipefail
cd "$(dirname "$0")/.."

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast
else
  cargo test --no-fail-fast
fi

# The Python suites drive the real binary.
cargo build --bin portcullis

# Expected decisions shipped beside the example policies (*.test.yaml).
cargo run -q --bin portcullis -- test -c examples/demo/config.yaml examples/demo/policies
cargo run -q --bin portcullis -- test charts/portcullis/policies deploy/kustomize/base/policies

for suite in tests/wire/run.sh tests/chart/run.sh tests/envoy/run.sh; do
  if [ -f "$suite" ]; then
    echo "== $suite"
    bash "$suite"
  fi
done
