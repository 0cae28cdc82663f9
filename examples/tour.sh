#!/usr/bin/env bash
# A quick tour of running powerlb: the admin listener, /metrics, and draining a backend with
# powerlb-ctl. Run it from the repository once `make run` or `make test` has built .venv;
# it stops everything it started when it ends.
set -euo pipefail
bin=${BIN:-.venv/bin}
lb=${LB_PORT:-8080} admin=${ADMIN_PORT:-8081} backends=${BACKEND_PORTS:-9001,9002,9003}

# 1. Three demo backends; powerlb in front of them, with its admin listener (127.0.0.1 only)
#    and a token that changes must carry.
"$bin/python" -m powerlb.demo --ports "$backends" &
demo=$!
export POWERLB_ADMIN="http://127.0.0.1:$admin"
POWERLB_ADMIN_TOKEN=$("$bin/python" -c 'import secrets; print(secrets.token_urlsafe(24))')
export POWERLB_ADMIN_TOKEN
args=()
for port in ${backends//,/ }; do args+=(--backend "http://127.0.0.1:$port"); done
"$bin/twistd" -n --pidfile= powerlb --listen "tcp:$lb:interface=127.0.0.1" "${args[@]}" \
    --admin "tcp:$admin" --admin-token "$POWERLB_ADMIN_TOKEN" &
powerlb=$!
trap 'kill $powerlb $demo' EXIT
for _ in $(seq 50); do curl -sf "$POWERLB_ADMIN/api/v1/stats" >/dev/null && break; sleep 0.2; done

# 2. A little traffic, then the figures in the Prometheus text format.
for _ in 1 2 3 4 5 6; do curl -s -o /dev/null "http://127.0.0.1:$lb/"; done
curl -s "$POWERLB_ADMIN/metrics" | grep -E '^powerlb_(requests_total|backend_up)'

# 3. Drain the first backend: it gets no new requests; those in flight finish.
first="127.0.0.1:${backends%%,*}"
"$bin/powerlb-ctl" drain "$first" >/dev/null && echo "$first is draining"
for _ in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%header{x-backend}\n' "http://127.0.0.1:$lb/"; done
"$bin/powerlb-ctl" backends

# 4. And back into rotation.
"$bin/powerlb-ctl" enable "$first" >/dev/null && echo "$first is enabled again"
