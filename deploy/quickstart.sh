#!/usr/bin/env bash
# Tyr's main job, as far as it goes today: set up the services, build the
# three binaries, migrate PostgreSQL, create the ClickHouse events table,
# probe this kernel with tyrd, watch this host for a few seconds with
# `tyrd observe` (execs and TLS, with AI-agent labels), check the example
# policy, then run the fleet loop on this one machine as an operator would:
# `tyr-server serve`, the first admin, `tyr login` with the CA pin, a
# one-use enrollment token, `tyrd run` enrolling with it, a policy applied
# and assigned with `tyr`, a connect refused in the kernel, the DENY event
# found with `tyr events query`, and the audit log. Every packet stays on
# loopback.
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

echo "== the fleet loop: tyr-server serve, an operator, a token, tyrd run, a policy, a denied connect, the event, the audit log"
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

export TYR_DATA_DIR="$state/server" TYR_GRPC_ADDR=127.0.0.1:7700 TYR_REST_ADDR=127.0.0.1:7701
export TYR_TLS_NAMES=localhost,127.0.0.1 TYR_HEARTBEAT_INTERVAL_S=2
"$bin/tyr-server" serve 2>"$state/server.log" &
server=$!
cleanup() {
    kill "${tyrd:-}" "$server" "${LISTENER_PID:-}" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 150); do
    [ -s "$TYR_DATA_DIR/ca.pem" ] && (exec 3<>/dev/tcp/127.0.0.1/7701) 2>/dev/null && break
    sleep 0.2
done
# The operator's side: `tyr` keeps its session here (0600), not in ~/.config.
export XDG_CONFIG_HOME="$state/operator"
admin="quickstart-$(date +%s)"
password=$(python3 -c 'import secrets; print(secrets.token_urlsafe(18))')
echo "-- tyr-server user create $admin --admin (the first operator; password on stdin)"
"$bin/tyr-server" user create "$admin" --admin <<<"$password" >/dev/null
pin=$(python3 -c 'import hashlib, ssl, sys; print("sha256:" + hashlib.sha256(ssl.PEM_cert_to_DER_cert(open(sys.argv[1]).read())).hexdigest())' "$TYR_DATA_DIR/ca.pem")
echo "-- tyr login --server https://127.0.0.1:7701 --ca-pin $pin --username $admin"
"$bin/tyr" login --server https://127.0.0.1:7701 --ca-pin "$pin" --username "$admin" <<<"$password"
echo "-- tyr token create --expires-hours 1 --max-uses 1"
token=$("$bin/tyr" token create --expires-hours 1 --max-uses 1 --description quickstart --format json |
    python3 -c 'import json, sys; print(json.loads(sys.stdin.readline())["token"])')
echo "  (the token is printed once; not shown here)"
echo "-- tyrd run --server https://127.0.0.1:7700 --token … --ca-pin $pin"
"$bin/tyrd" run --server https://127.0.0.1:7700 --token "$token" --ca-pin "$pin" \
    --state-dir "$state/tyrd" 2>"$state/tyrd.log" &
tyrd=$!
echo "-- tyr policy apply -f fleet.yaml; tyr policy assign quickstart (the fleet's base policy)"
"$bin/tyr" policy apply -f "$state/fleet.yaml" --description "quickstart: deny 127.0.0.7"
"$bin/tyr" policy assign quickstart
in_force=no
for _ in $(seq 150); do
    if [ -s "$state/tyrd/daemon_id" ]; then
        in_force=$("$bin/tyr" agent show "$(cat "$state/tyrd/daemon_id")" --format json 2>/dev/null | python3 -c '
import json, sys
d = json.loads(sys.stdin.readline() or "{}")
v = d.get("assigned_policy_version")
print("yes" if v and d.get("applied_policy_version") == v else "no")' || echo no)
        [ "$in_force" = yes ] && break
    fi
    sleep 0.2
done
if [ "$in_force" != yes ]; then
    echo "tyrd did not report the assigned policy in force; its log:" >&2
    cat "$state/tyrd.log" >&2
    exit 1
fi
echo "-- tyr agent list"
"$bin/tyr" agent list --format table
echo "with tyrd run enforcing the fleet policy:"
try_connect 127.0.0.7 "$port"
try_connect 127.0.0.1 7700
daemon=$(cat "$state/tyrd/daemon_id")
echo "-- tyr events query --daemon $daemon --kind NET_CONNECT --verdict DENY --resource-prefix 127.0.0.7:"
found=""
for _ in $(seq 60); do
    found=$("$bin/tyr" events query --daemon "$daemon" --kind NET_CONNECT --verdict DENY \
        --resource-prefix 127.0.0.7: --limit 3 --format table 2>/dev/null || true)
    [ -n "$found" ] && break
    sleep 0.5
done
if [ -z "$found" ]; then
    echo "the DENY event did not reach the server; its log:" >&2
    tail -n 30 "$state/server.log" >&2
    exit 1
fi
echo "$found"
echo "-- tyr audit --limit 4 (who changed what)"
"$bin/tyr" audit --limit 4 --format table
# This machine's daemon leaves the fleet with the quickstart (revoked, audited).
kill "$tyrd" 2>/dev/null || true
"$bin/tyr" agent delete "$daemon" >/dev/null
cleanup
trap - EXIT

echo "== tyr-server status"
"$bin/tyr-server" status
rm -rf "$state"
