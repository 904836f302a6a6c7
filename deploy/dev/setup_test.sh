#!/usr/bin/env bash
# Checks that deploy/dev/setup.sh is idempotent and self-healing:
#   1. on a machine it already set up, a second run changes nothing;
#   2. with PostgreSQL and the ClickHouse dev endpoint stopped, a run starts
#      both again and they answer;
#   3. the run after that changes nothing again.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SETUP=$REPO/deploy/dev/setup.sh
TYR_DEV_HOME=${TYR_DEV_HOME:-/var/lib/tyr-dev}
CH_PORT=${TYR_CLICKHOUSE_DEV_PORT:-8123}
failures=0

fail() { printf 'setup_test: FAIL: %s\n' "$*" >&2; failures=$((failures + 1)); }
pass() { printf 'setup_test: ok: %s\n' "$*"; }

# Runs setup, echoing its output to stderr and returning it on stdout.
run_setup() {
    local output status=0
    output=$("$SETUP" 2>&1) || status=$?
    printf '%s\n' "$output" >&2
    printf '%s\n' "$output"
    return "$status"
}

expect_no_changes() {
    local output
    output=$(run_setup) || { fail "setup failed: $1"; return; }
    if grep -q '^changed:' <<<"$output"; then
        fail "$1: setup changed something: $(grep '^changed:' <<<"$output" | tr '\n' ';')"
    else
        pass "$1: no changes"
    fi
}

uses_dev_endpoint() {
    [ -z "${TYR_CLICKHOUSE_URL:-}" ] || [ "$TYR_CLICKHOUSE_URL" = "http://127.0.0.1:$CH_PORT" ]
}

"$SETUP" >/dev/null
expect_no_changes "second run"

read -r pg_version pg_name < <(pg_lsclusters -h | awk 'NR == 1 { print $1, $2 }')
pg_ctlcluster --skip-systemctl-redirect "$pg_version" "$pg_name" stop
pg_isready -q -h 127.0.0.1 && fail "PostgreSQL still answers after stop"
if uses_dev_endpoint; then
    kill "$(cat "$TYR_DEV_HOME/clickhouse-dev.pid")"
    for _ in $(seq 1 50); do
        curl -fsS --max-time 1 "http://127.0.0.1:$CH_PORT/ping" >/dev/null 2>&1 || break
        sleep 0.2
    done
fi

output=$(run_setup) || fail "setup failed after stopping the services"
grep -q '^changed: starting PostgreSQL' <<<"$output" || fail "setup did not report starting PostgreSQL"
pg_isready -q -h 127.0.0.1 && pass "PostgreSQL started again" || fail "PostgreSQL is not back"
if uses_dev_endpoint; then
    grep -q '^changed: starting the ClickHouse dev endpoint' <<<"$output" \
        || fail "setup did not report starting the ClickHouse dev endpoint"
    if [ "$(curl -fsS --max-time 5 "http://127.0.0.1:$CH_PORT/ping")" = "Ok." ]; then
        pass "ClickHouse dev endpoint started again"
    else
        fail "ClickHouse dev endpoint is not back"
    fi
fi
expect_no_changes "run after restart"

[ "$failures" -eq 0 ] || { printf 'setup_test: %d failure(s)\n' "$failures" >&2; exit 1; }
pass "setup is idempotent and restarts stopped services"
