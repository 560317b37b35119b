#!/usr/bin/env bash
# A hapool registrar cluster against an etcd cluster, three members each,
# in one run:
#   convergence = REGISTRATION at registrar 1, then HANDLE_RESOLUTION at
#                 registrar 3 until the PE is there
#               | put on member 1, then serializable get on member 3 until
#                 the key is there
#   failure     = kill -9 of the registrar holding 1,000 PEs: time until
#                 registrar 3 shows all of them with a new home
#               | kill -9 of the etcd leader: time until a put succeeds
# hapool runs with a 100 ms ENRP heartbeat; etcd with its defaults (100 ms
# heartbeat, 1 s election timeout).
#
# Usage: bench/cluster-vs-etcd.sh   (COUNT=10000 TAKEOVER_COUNT=1000 by default)
# Installs etcd-server and protobuf-compiler from Debian when missing.
# Everything listens on 127.0.0.1 and is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${COUNT:-10000}
TAKEOVER_COUNT=${TAKEOVER_COUNT:-1000}

# shellcheck source=bench/etcd-common.sh
source bench/etcd-common.sh

registrar() { # n -> starts registrar n (1..3), prints its pid
  local n=$1 peers=()
  for m in 1 2 3; do [ "$m" = "$n" ] || peers+=(--peer "127.0.0.1:2490$m"); done
  "$HAPOOL" registrar --id "0000000$n" --listen "127.0.0.1:2386$n" \
    --enrp-listen "127.0.0.1:2490$n" "${peers[@]}" --enrp-heartbeat 100ms \
    --registration-rate 0 --resolution-rate 0 --admin "127.0.0.1:2480$n" \
    >/dev/null 2>"$work/registrar-$n.log" &
  local pid=$!
  disown "$pid"
  echo "$pid"
}
wait_registrars() {
  for _ in $(seq 100); do
    ok=1
    for n in "$@"; do
      curl -s "http://127.0.0.1:2480$n/status" 2>/dev/null | grep -q '"peers":\[{' || ok=0
    done
    [ $ok = 1 ] && return
    sleep 0.1
  done
  echo "registrars did not form a cluster" >&2; exit 1
}

cluster="e1=http://127.0.0.1:23811,e2=http://127.0.0.1:23812,e3=http://127.0.0.1:23813"
etcd_pids=()
for n in 1 2 3; do
  etcd --name "e$n" --data-dir "$work/e$n" \
    --listen-client-urls "http://127.0.0.1:2379$n" --advertise-client-urls "http://127.0.0.1:2379$n" \
    --listen-peer-urls "http://127.0.0.1:2381$n" --initial-advertise-peer-urls "http://127.0.0.1:2381$n" \
    --initial-cluster "$cluster" --initial-cluster-state new --log-level error >"$work/etcd-$n.log" 2>&1 &
  pids+=($!); etcd_pids+=($!)
  disown $!
done
for n in 1 2 3; do pids+=("$(registrar "$n")"); done
wait_registrars 1 2 3
for _ in $(seq 100); do
  ETCDCTL_API=3 etcdctl --endpoints=http://127.0.0.1:23791,http://127.0.0.1:23792,http://127.0.0.1:23793 \
    endpoint health >/dev/null 2>&1 && break
  sleep 0.1
done

echo "== convergence: $COUNT changes, one after another"
"$HAPOOL" bench --convergence --registrar 127.0.0.1:23861 --observe 127.0.0.1:23863 \
  --count "$COUNT" --admin 127.0.0.1:24801 | tee "$work/hapool-conv.out"
"$ETCD_LOAD" --convergence --endpoint http://127.0.0.1:23791 --observe http://127.0.0.1:23793 \
  --count "$COUNT" | tee "$work/etcd-conv.out"
for p in p50 p99; do
  h=$(awk -v p=$p '{for (i=1;i<NF;i++) if ($i==p) print $(i+1)}' "$work/hapool-conv.out")
  e=$(awk -v p=$p '{for (i=1;i<NF;i++) if ($i==p) print $(i+1)}' "$work/etcd-conv.out")
  awk -v p=$p -v h="$h" -v e="$e" 'BEGIN { printf "convergence %s: hapool %d µs, etcd %d µs: hapool takes %.2f of etcd'"'"'s time\n", p, h, e, h / e }'
done

echo "== failure: kill -9"
"$HAPOOL" bench --takeover "${pids[3]}" --registrar 127.0.0.1:23861 --observe 127.0.0.1:23863 \
  --count "$TAKEOVER_COUNT" | tee "$work/hapool-takeover.out"
members="http://127.0.0.1:23791=${etcd_pids[0]},http://127.0.0.1:23792=${etcd_pids[1]},http://127.0.0.1:23793=${etcd_pids[2]}"
"$ETCD_LOAD" --members "$members" | tee "$work/etcd-leader.out"
h=$(grep -o '[0-9]* ms after kill' "$work/hapool-takeover.out" | awk '{print $1}')
e=$(grep -o 'accepted [0-9]* ms' "$work/etcd-leader.out" | awk '{print $2}')
awk -v h="$h" -v e="$e" 'BEGIN { printf "failure: hapool re-homed every PE of the dead registrar in %d ms; etcd took writes again %d ms after losing its leader: %.2f of etcd'"'"'s time\n", h, e, h / e }'
