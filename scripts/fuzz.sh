#!/usr/bin/env bash
# Long run of the request canonicalization property tests (tests/request_props.rs): 1,000,000
# cases per property instead of CI's 10,000. `cargo fuzz` needs nightly; proptest runs on stable.
# Usage: scripts/fuzz.sh [cases]   (PROPTEST_CASES in the environment also works)
set -euo pipefail
cd "$(dirname "$0")/.."

export PROPTEST_CASES="${1:-${PROPTEST_CASES:-1000000}}"
echo "request_props: ${PROPTEST_CASES} cases per property (release profile)"
cargo test --release --test request_props -- --test-threads 2
