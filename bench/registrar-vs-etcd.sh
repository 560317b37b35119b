#!/usr/bin/env bash
# hapool's registrar against single-node etcd 3.4 (Debian's etcd-server), in
# one run, with the same load generator logic on both sides:
#   register    = hapool REGISTRATION       | etcd lease grant + put with that lease
#   re-register = hapool REGISTRATION again | etcd put of the same key (new load)
#   resolve     = hapool HANDLE_RESOLUTION  | etcd get of the pool prefix, 3 keys
# then failure detection: how long a dead server stays visible, with hapool's
# shortest keep-alive settings against etcd's shortest lease.
#
# Usage: bench/registrar-vs-etcd.sh   (CONCURRENCY=16 DURATION=3s by default)
# Installs etcd-server and protobuf-compiler from Debian when missing.
# Everything listens on 127.0.0.1 and is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
CONCURRENCY=${CONCURRENCY:-16}
DURATION=${DURATION:-3s}

# shellcheck source=bench/etcd-common.sh
source bench/etcd-common.sh

etcd --name bench --data-dir "$work/etcd" \
  --listen-client-urls http://127.0.0.1:23790 --advertise-client-urls http://127.0.0.1:23790 \
  --listen-peer-urls http://127.0.0.1:23800 --initial-advertise-peer-urls http://127.0.0.1:23800 \
  --initial-cluster bench=http://127.0.0.1:23800 --log-level error >"$work/etcd.log" 2>&1 &
pids+=($!)
"$HAPOOL" registrar --listen 127.0.0.1:23863 --registration-rate 0 --resolution-rate 0 \
  >/dev/null 2>"$work/hapool.log" &
pids+=($!)
"$HAPOOL" registrar --listen 127.0.0.1:23864 --keep-alive-interval 100ms --keep-alive-timeout 100ms \
  >/dev/null 2>"$work/hapool-fast.log" &
pids+=($!)
for _ in $(seq 100); do
  ETCDCTL_API=3 etcdctl --endpoints=http://127.0.0.1:23790 endpoint health >/dev/null 2>&1 && break
  sleep 0.1
done

echo "== hapool registrar ($CONCURRENCY connections, $DURATION per phase)"
"$HAPOOL" bench --registrar 127.0.0.1:23863 --concurrency "$CONCURRENCY" --duration "$DURATION" | tee "$work/hapool.out"
echo "== etcd $(etcd --version | head -1 | awk '{print $3}') (same load)"
"$ETCD_LOAD" --endpoint http://127.0.0.1:23790 --concurrency "$CONCURRENCY" --duration "$DURATION" | tee "$work/etcd.out"

echo "== ratios (hapool / etcd, requests per second)"
for phase in register re-register resolve; do
  h=$(awk -v p="$phase" '$1 == p && $3 == "requests" {print $4}' "$work/hapool.out")
  e=$(awk -v p="$phase" '$1 == p && $3 == "requests" {print $4}' "$work/etcd.out")
  awk -v p="$phase" -v h="$h" -v e="$e" 'BEGIN { printf "%-12s %8.1fx  (%s vs %s /s)\n", p, h / e, h, e }'
done

echo "== failure detection"
"$HAPOOL" bench --registrar 127.0.0.1:23864 --failure-detection | tee "$work/hapool-fd.out"
"$ETCD_LOAD" --endpoint http://127.0.0.1:23790 --expiry | tee "$work/etcd-fd.out"
h=$(awk '/^hung PE/ {print $(NF-3)}' "$work/hapool-fd.out")
e=$(awk '/key gone/ {print $(NF-4)}' "$work/etcd-fd.out")
awk -v h="$h" -v e="$e" 'BEGIN { printf "hung hapool PE gone after %d ms; etcd key of a dead client gone after %d ms: %.2f of etcd\n", h, e, h / e }'
