#!/usr/bin/env bash
# The whole test suite, on a fresh Debian 12 machine or a used one: installs
# what is missing, starts PostgreSQL and the ClickHouse dev endpoint, checks
# formatting and lints, then runs every test and every benchmark once.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

deploy/dev/setup.sh
deploy/dev/setup_test.sh
# shellcheck source=/dev/null
source "${TYR_DEV_HOME:-/var/lib/tyr-dev}/env"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# This CI host refuses BPF LSM (ENVIRONMENT.md): the probe test checks it says so.
export TYR_EXPECT_BPF_LSM=no
# One cargo run builds the tests and the binaries they start (tyrd,
# tyr-server) with one feature set; tests use those binaries as built.
export TYR_PREBUILT_BINARIES=1
cargo test --workspace --all-targets --locked
