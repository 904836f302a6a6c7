#!/usr/bin/env bash
# Tyr's main job, as far as it goes today: set up the services, build the
# three binaries, migrate PostgreSQL, create the ClickHouse events table,
# probe this kernel with tyrd, watch this host for a few seconds with
# `tyrd observe` (execs and TLS, with AI-agent labels), check the example
# policy, then run the fleet loop on this one machine: `tyr-server serve`,
# a one-use enrollment token, `tyrd run` enrolling with it and the CA pin,
# a fleet policy pushed to it, a connect refused in the kernel, and the DENY
# event in ClickHouse. Every packet stays on loopback.
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

echo "== tyrd policy check deploy/policies/example.yaml (summary)"
"$bin/tyrd" policy check deploy/policies/example.yaml | python3 -c \
    'import json, sys; d = json.load(sys.stdin); print(json.dumps(d["compiled"], indent=2))'

echo "== the fleet loop: tyr-server serve, a token, tyrd run, a fleet policy, a denied connect, the event in ClickHouse"
cat >"$state/fleet.yaml" <<'POLICY'
name: quickstart
default_verdict: allow
rules:
  - name: quickstart-deny-127-0-0-7
    action: net_connect
    cidr_deny: ["127.0.0.7/32"]
    verdict: deny
    severity: high
POLICY
# A listener on 127.0.0.7, so the refusal below is the policy's, not a closed port's.
coproc LISTENER { exec python3 -c 'import socket, time
s = socket.socket(); s.bind(("127.0.0.7", 0)); s.listen(16)
print(s.getsockname()[1], flush=True); time.sleep(120)'; }
read -r port <&"${LISTENER[0]}"
try_connect() {
    if (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; then echo "  connect $1:$2 -> connected"; else echo "  connect $1:$2 -> refused"; fi
}
echo "without tyrd:"
try_connect 127.0.0.7 "$port"

export TYR_DATA_DIR="$state/server" TYR_GRPC_ADDR=127.0.0.1:7700 TYR_TLS_NAMES=localhost,127.0.0.1
export TYR_HEARTBEAT_INTERVAL_S=2
"$bin/tyr-server" serve 2>"$state/server.log" &
server=$!
cleanup() {
    kill "${tyrd:-}" "$server" "${LISTENER_PID:-}" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/7700) 2>/dev/null && break; sleep 0.2; done
echo "-- tyr-server token create --expires-hours 1 --max-uses 1"
token_json=$("$bin/tyr-server" token create --expires-hours 1 --max-uses 1 --description quickstart)
token=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])' <<<"$token_json")
pin=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["ca_pin"])' <<<"$token_json")
echo "  CA pin: $pin (the token itself is printed once and not shown here)"
echo "-- tyr-server policy set --file fleet.yaml (the fleet's base policy)"
"$bin/tyr-server" policy set --file "$state/fleet.yaml"
echo "-- tyrd run --server https://127.0.0.1:7700 --token … --ca-pin $pin"
"$bin/tyrd" run --server https://127.0.0.1:7700 --token "$token" --ca-pin "$pin" \
    --state-dir "$state/tyrd" 2>"$state/tyrd.log" &
tyrd=$!
applied=0
for _ in $(seq 150); do
    if [ -s "$state/tyrd/daemon_id" ]; then
        applied=$("$bin/tyr-server" daemon list | python3 -c '
import json, sys
rows = [d for d in json.load(sys.stdin) if d["id"] == sys.argv[1]]
print(rows[0]["applied_policy_version"] if rows else 0)' "$(cat "$state/tyrd/daemon_id")")
        [ "$applied" != 0 ] && break
    fi
    sleep 0.2
done
if [ "$applied" = 0 ]; then
    echo "tyrd did not report a policy in force; its log:" >&2
    cat "$state/tyrd.log" >&2
    exit 1
fi
echo "-- tyr-server daemon list (this host: daemon $(cat "$state/tyrd/daemon_id"))"
"$bin/tyr-server" daemon list
echo "with tyrd run enforcing the fleet policy (version $applied):"
try_connect 127.0.0.7 "$port"
try_connect 127.0.0.1 7700
echo "-- the DENY event in ClickHouse (agent_id is the daemon's id)"
query="SELECT kind, resource, verdict, metadata['rule'] AS rule, policy_version, agent_id, server_verdict, drift_detected
FROM events WHERE verdict = 'DENY' AND resource LIKE '127.0.0.7:%' AND agent_id = {daemon:UUID}
ORDER BY timestamp DESC LIMIT 3 FORMAT Vertical"
stored=""
for _ in $(seq 60); do
    stored=$(curl -sS "${TYR_CLICKHOUSE_URL%/}/?database=${TYR_CLICKHOUSE_DATABASE:-tyr}&param_daemon=$(cat "$state/tyrd/daemon_id")" \
        --data-binary "$query")
    [ -n "$stored" ] && break
    sleep 0.5
done
if [ -z "$stored" ]; then
    echo "the DENY event did not reach ClickHouse; the server's log:" >&2
    tail -n 30 "$state/server.log" >&2
    exit 1
fi
echo "$stored"
cleanup
trap - EXIT

echo "== tyr-server status"
"$bin/tyr-server" status
rm -rf "$state"
