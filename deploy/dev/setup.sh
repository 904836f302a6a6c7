#!/usr/bin/env bash
# Prepares a Debian 12 machine for Tyr development and CI, idempotently:
#   - Debian packages Tyr builds and tests with (only those missing);
#   - PostgreSQL: cluster started without systemd, role and database `tyr`;
#   - the ClickHouse dev endpoint (chDB behind ClickHouse's HTTP interface)
#     on 127.0.0.1:8123, unless TYR_CLICKHOUSE_URL points elsewhere;
#   - $TYR_DEV_HOME/env with the URLs the tests and the quick start use.
# Running it again changes nothing; a stopped service is started again.
# Every line it prints starting with "changed:" is a change it made.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TYR_DEV_HOME=${TYR_DEV_HOME:-/var/lib/tyr-dev}
CH_PORT=${TYR_CLICKHOUSE_DEV_PORT:-8123}
CH_DATA=$TYR_DEV_HOME/clickhouse
VENV=$TYR_DEV_HOME/venv
PG_ROLE=tyr
PG_DB=tyr
# Dev-only credentials for a loopback-only database.
PG_PASSWORD=${TYR_DEV_PG_PASSWORD:-tyr-dev}

APT_PACKAGES=(
    postgresql postgresql-client
    python3 python3-venv
    ca-certificates curl procps
    build-essential pkg-config
    clang llvm libelf-dev zlib1g-dev bpftool
    # The kernel VM that proves BPF LSM enforcement (bench/tests/kernel_vm.rs):
    # Debian's kernel, QEMU, a static busybox and cpio for the initramfs.
    qemu-system-x86 linux-image-amd64 busybox-static cpio
)

say() { printf 'setup: %s\n' "$*"; }
changed() { printf 'changed: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 2; }

[ "$(id -u)" -eq 0 ] || die "run as root (it installs packages and starts services)"
command -v cargo >/dev/null || die "cargo not found: install the Rust toolchain (rustup) first"
mkdir -p "$TYR_DEV_HOME"
chmod 0700 "$TYR_DEV_HOME"

install_packages() {
    local missing=()
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return
    changed "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

pg_cluster() {
    # "<version> <name>" of the first cluster, empty when there is none.
    pg_lsclusters -h 2>/dev/null | awk 'NR == 1 { print $1, $2 }'
}

setup_postgres() {
    local cluster version name
    cluster=$(pg_cluster)
    if [ -z "$cluster" ]; then
        version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
        changed "creating PostgreSQL $version cluster main"
        pg_createcluster "$version" main >/dev/null
        cluster=$(pg_cluster)
    fi
    read -r version name <<<"$cluster"
    if ! pg_lsclusters -h | awk -v v="$version" -v n="$name" '$1 == v && $2 == n { print $4 }' | grep -q online; then
        changed "starting PostgreSQL $version/$name"
        pg_ctlcluster --skip-systemctl-redirect "$version" "$name" start
    fi
    for _ in $(seq 1 30); do
        pg_isready -q -h 127.0.0.1 && break
        sleep 1
    done
    pg_isready -q -h 127.0.0.1 || die "PostgreSQL does not accept connections on 127.0.0.1"

    local psql=(runuser -u postgres -- psql -v ON_ERROR_STOP=1 -qtA)
    if [ -z "$("${psql[@]}" -c "SELECT 1 FROM pg_roles WHERE rolname = '$PG_ROLE'")" ]; then
        changed "creating PostgreSQL role $PG_ROLE"
        "${psql[@]}" -c "CREATE ROLE $PG_ROLE LOGIN CREATEDB PASSWORD '$PG_PASSWORD'"
    fi
    if [ -z "$("${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" ]; then
        changed "creating PostgreSQL database $PG_DB"
        "${psql[@]}" -c "CREATE DATABASE $PG_DB OWNER $PG_ROLE"
    fi
}

setup_venv() {
    local requirements=$REPO/deploy/dev/requirements.txt stamp=$VENV/.requirements.sha256 want
    want=$(sha256sum "$requirements" | cut -d' ' -f1)
    if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        return
    fi
    changed "installing the chDB venv in $VENV"
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
    echo "$want" >"$stamp"
}

endpoint_pid() {
    local pidfile=$TYR_DEV_HOME/clickhouse-dev.pid pid
    pid=$(cat "$pidfile" 2>/dev/null) || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

endpoint_up() { curl -fsS --max-time 2 "http://127.0.0.1:$CH_PORT/ping" >/dev/null 2>&1; }

setup_clickhouse_endpoint() {
    local script=$REPO/deploy/dev/clickhouse_dev_endpoint.py
    local stamp=$TYR_DEV_HOME/clickhouse-dev.sha256 want pid
    want=$(cat "$script" "$REPO/deploy/dev/requirements.txt" | sha256sum | cut -d' ' -f1)
    if pid=$(endpoint_pid); then
        if endpoint_up && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
            return
        fi
        changed "restarting the ClickHouse dev endpoint (pid $pid)"
        kill "$pid"
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    elif endpoint_up; then
        die "something else answers on 127.0.0.1:$CH_PORT; stop it or set TYR_CLICKHOUSE_DEV_PORT"
    else
        changed "starting the ClickHouse dev endpoint on 127.0.0.1:$CH_PORT"
    fi
    mkdir -p "$CH_DATA"
    setsid "$VENV/bin/python" "$script" --host 127.0.0.1 --port "$CH_PORT" --data-dir "$CH_DATA" \
        >>"$TYR_DEV_HOME/clickhouse-dev.log" 2>&1 </dev/null &
    echo $! >"$TYR_DEV_HOME/clickhouse-dev.pid"
    echo "$want" >"$stamp"
    for _ in $(seq 1 120); do
        endpoint_up && return
        kill -0 "$!" 2>/dev/null || break
        sleep 0.5
    done
    tail -n 20 "$TYR_DEV_HOME/clickhouse-dev.log" >&2 || true
    die "the ClickHouse dev endpoint did not come up (log: $TYR_DEV_HOME/clickhouse-dev.log)"
}

write_env() {
    local env_file=$TYR_DEV_HOME/env content
    content=$(cat <<EOF
# Written by deploy/dev/setup.sh: the development services' addresses.
export TYR_DATABASE_URL=postgres://$PG_ROLE:$PG_PASSWORD@127.0.0.1:5432/$PG_DB
export TYR_CLICKHOUSE_URL=${TYR_CLICKHOUSE_URL:-http://127.0.0.1:$CH_PORT}
EOF
)
    if [ "$(cat "$env_file" 2>/dev/null)" != "$content" ]; then
        changed "writing $env_file"
        (umask 077 && printf '%s\n' "$content" >"$env_file")
    fi
}

install_packages
setup_postgres
if [ -n "${TYR_CLICKHOUSE_URL:-}" ] && [ "$TYR_CLICKHOUSE_URL" != "http://127.0.0.1:$CH_PORT" ]; then
    say "TYR_CLICKHOUSE_URL is set: using $TYR_CLICKHOUSE_URL, not starting the dev endpoint"
else
    setup_venv
    setup_clickhouse_endpoint
fi
write_env
say "ready (source $TYR_DEV_HOME/env for the service URLs)"
