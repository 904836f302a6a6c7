#!/usr/bin/env bash
# Tyr's main job, as far as it goes today: set up the services, build the
# three binaries, migrate PostgreSQL, create the ClickHouse events table,
# probe this kernel with tyrd, watch this host for a few seconds with
# `tyrd observe` (execs and TLS, with AI-agent labels), check the example
# policy, enforce a connect rule in the kernel, and print the state of both
# stores. Every packet stays on loopback.
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

echo "== tyrd observe --policy: connects to 127.0.0.7 are denied in the kernel, 127.0.0.1 is allowed"
cat >"$state/demo.yaml" <<'POLICY'
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
print(s.getsockname()[1], flush=True); time.sleep(20)'; }
read -r port <&"${LISTENER[0]}"
try_connect() {
    if (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; then echo "  connect $1:$2 -> connected"; else echo "  connect $1:$2 -> refused"; fi
}
echo "without tyrd:"
try_connect 127.0.0.7 "$port"
(
    sleep 2
    echo "with tyrd enforcing $state/demo.yaml:"
    try_connect 127.0.0.7 "$port"
    try_connect 127.0.0.1 8123
) &
clients=$!
timeout -s INT 5 "$bin/tyrd" observe --state-dir "$state" --policy "$state/demo.yaml" --kind net_connect --comm bash || true
wait "$clients"
kill "$LISTENER_PID" 2>/dev/null || true

echo "== tyr-server status"
"$bin/tyr-server" status
rm -rf "$state"
