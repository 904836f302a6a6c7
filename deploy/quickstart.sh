#!/usr/bin/env bash
# Tyr's main job, as far as it goes today: set up the services, build the
# three binaries, migrate PostgreSQL, create the ClickHouse events table,
# probe this kernel with tyrd, watch this host for a few seconds with
# `tyrd observe` (execs and TLS, with AI-agent labels), and print the state
# of both stores.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

deploy/dev/setup.sh
# shellcheck source=/dev/null
source "${TYR_DEV_HOME:-/var/lib/tyr-dev}/env"

cargo build --workspace --bins --locked
bin=target/debug
state=$(mktemp -d /tmp/tyrd-quickstart.XXXXXX)

echo "== tyr-server migrate"
"$bin/tyr-server" migrate
echo "== tyr-server schema"
"$bin/tyr-server" schema
echo "== tyrd probe"
"$bin/tyrd" probe
echo "== tyrd observe (5 s: an exec, and a TLS handshake with SNI api.openai.com to 127.0.0.1)"
(
    sleep 2
    ls / >/dev/null
    # The dev endpoint is not TLS: the handshake fails, but the ClientHello was sent.
    curl -sk --max-time 2 --resolve api.openai.com:8123:127.0.0.1 https://api.openai.com:8123/ >/dev/null || true
) &
timeout -s INT 5 "$bin/tyrd" observe --state-dir "$state" --kind exec --kind tls --comm ls --comm curl || true
wait
echo "== tyr-server status"
"$bin/tyr-server" status
rm -rf "$state"
