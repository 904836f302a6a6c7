#!/usr/bin/env bash
# Tyr's main job, as far as it goes today: set up the services, build the
# three binaries, migrate PostgreSQL, create the ClickHouse events table,
# probe this kernel with tyrd, and print the state of both stores.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

deploy/dev/setup.sh
# shellcheck source=/dev/null
source "${TYR_DEV_HOME:-/var/lib/tyr-dev}/env"

cargo build --workspace --bins --locked
bin=target/debug

echo "== tyr-server migrate"
"$bin/tyr-server" migrate
echo "== tyr-server schema"
"$bin/tyr-server" schema
echo "== tyrd probe"
"$bin/tyrd" probe
echo "== tyr-server status"
"$bin/tyr-server" status
