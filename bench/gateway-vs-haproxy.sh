#!/bin/bash
# hapool gateway against HAProxy in one run, in front of the same three
# nginx backends on loopback, driven by wrk.
#
#   bench/gateway-vs-haproxy.sh [matrix|failover|floor|count|variants|all]
#                                               (default all: matrix, failover)
#
# matrix:   2-byte (/) and 4 KiB (/4k) bodies, wrk -t1 -c64 and -t2 -c256,
#           one and two proxy threads (HAProxy nbthread, hapool --threads);
#           requests/s, p50/p99 latency and the proxy's CPU microseconds per
#           request (utime+stime of the proxy process from /proc). Both
#           proxies stay up for a thread count and take turns line by line
#           (the first place alternating between rounds); with REPS > 1
#           each line runs REPS times, then each line's medians are
#           printed, with hapool's ratios to HAProxy as the median of the
#           rounds' ratios (each round's pair ran back to back).
# failover: wrk -t1 -c64 -d20s; kill -9 of backend 2 at 5 s, restarted at
#           12 s; client-visible failures (non-2xx and socket errors).
#           HAProxy with its usual `retries 3` + `option redispatch`, and
#           with `retry-on all-retryable-errors`; hapool with its defaults.
# floor:    one proxy thread, wrk -t1 -c64 on /, REPS rounds (at least 3):
#           HAProxy, the hapool gateway and proxy-floor (the least a proxy
#           on hyper and tokio does per request,
#           crates/hapool/examples/proxy-floor.rs), all up for the run and
#           taking turns, the first place rotating between rounds;
#           requests/s, the proxy's user and system CPU microseconds per
#           request, p50/p95/p98/p99/p99.9 (wrk's histogram, by a Lua
#           script), and at the end each one's medians and the rounds in
#           which its p99 was shorter than HAProxy's. FLOORS (default
#           "pooled") names proxy-floor's shapes to run, each as floor-SHAPE
#           (pooled, inline, splice; SHAPE+N adds N microseconds of busy
#           work per request, e.g. FLOORS="pooled splice splice+4"); TCP=1
#           adds HAProxy in `mode tcp` and the gateway with a TCP listener
#           (no affinity), bytes carried without HTTP. Needs
#           cargo build --release --example proxy-floor.
# count:    what this machine's noise does not move: each proxy in turn (one
#           thread; HAProxy, the gateway, and proxy-floor when built) under
#           valgrind's callgrind with its cache and branch simulation,
#           loaded by wrk -t2 -c256 (--timeout 60s) on each of PATHS;
#           instructions, simulated cache misses (first-level data and
#           instruction, last level) and mispredicted branches (conditional
#           and indirect) counted over DUR seconds in the middle of the load,
#           divided by the requests the backends served meanwhile (their
#           stub_status; the proxies' health checks, 3 a second, included).
#           User space only: the kernel's share is not counted. Needs
#           valgrind (apt-get install -y valgrind). COUNTED (default
#           "haproxy hapool floor") names the proxies counted; COUNT_FLAGS
#           adds options to valgrind's (e.g. --demangle=no, to keep the
#           linker's symbol names in the profiles,
#           $WORK/logs/count-<proxy>.<pid>.1).
# variants: gateways of several configurations (or builds) up side by side
#           with HAProxy, taking turns on each line of the matrix's
#           THREADS/PATHS/LOADS, the first place rotating between rounds;
#           per round the line of each, and the connections the backends
#           accepted meanwhile (the proxies' checks and probes included);
#           at the end each one's medians over the REPS rounds (at least
#           3), with the p99's range, and the rounds in which each
#           gateway's p99 was shorter than HAProxy's and than the first
#           gateway's in the same round. VARIANTS names them, space-separated,
#           as NAME:SETTINGS, the settings TOML lines separated by ';' for
#           the pool (or for [gateway] when the line starts with '@', for
#           the listener when it starts with '>'), e.g.
#           VARIANTS='default: rr:strategy="round-robin" idle:@member_idle_timeout="60s"';
#           BIN_<NAME> runs that one from another binary, ENV_<NAME>
#           ("VAR=value ...") with more environment.
#
# Env: DUR (wrk seconds, default 10), REPS (default 1), WORK (scratch dir),
# HAPOOL (the gateway's binary, default target/release/hapool; the figures
# in docs/performance.md from the forty-first run on are of
# target/pgo/hapool, built by tools/pgo-build.sh), FLOOR
# (proxy-floor's, default target/release/examples/proxy-floor; e.g. a
# build with line tables in another target directory, for a profile);
# for matrix, to run some of its lines: THREADS (default "1 2"), PATHS
# (default "/ /4k"), LOADS (wrk threads:connections, default "1:64 2:256"),
# e.g. THREADS=2 PATHS=/ LOADS=2:256 REPS=5; CLOSE=1 to have wrk ask for
# a new connection for every request (`Connection: close`), e.g.
# CLOSE=1 PATHS=/ LOADS=1:64 bench/gateway-vs-haproxy.sh matrix.
# Needs: haproxy nginx wrk (apt-get install -y haproxy nginx wrk), and a
# release build (cargo build --release -p hapool). Only loopback is used;
# every process started here is stopped by its PID.
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
HAPOOL=${HAPOOL:-$ROOT/target/release/hapool}
DUR=${DUR:-10}
REPS=${REPS:-1}
THREADS=${THREADS:-1 2}
PATHS=${PATHS:-/ /4k}
LOADS=${LOADS:-1:64 2:256}
W=${WORK:-/tmp/hapool-gw-bench}
HAPROXY_PORT=18180   # each proxy has its own port, so that matrix can keep both up
HAPOOL_PORT=18190
FLOOR_PORT=18170
ADMIN_PORT=18189
PORTS=(18181 18182 18183)
mkdir -p $W/{conf,run,logs,www}
for bin in haproxy nginx wrk; do
  command -v $bin >/dev/null || { echo "needs $bin: apt-get install -y haproxy nginx wrk"; exit 1; }
done
[ -x $HAPOOL ] || { echo "needs $HAPOOL: cargo build --release -p hapool"; exit 1; }
head -c 4096 /dev/zero | tr '\0' 'x' > $W/www/4k.txt

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for i in 1 2 3; do
    p=$(cat $W/run/nginx-$i.pid 2>/dev/null) && kill -TERM "$p" 2>/dev/null
  done
}
trap cleanup EXIT

nginx_conf() {  # $1 = backend index
  local i=$1 port=${PORTS[$(($1-1))]}
  mkdir -p $W/nginx$i/tmp
  cat > $W/conf/nginx-$i.conf <<EOF
worker_processes 1;
daemon off;
pid $W/run/nginx-$i.pid;
error_log $W/logs/nginx-$i.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  server_tokens off;
  default_type text/plain;
  keepalive_requests 1000000;
  client_body_temp_path $W/nginx$i/tmp/cb;
  proxy_temp_path $W/nginx$i/tmp/px;
  fastcgi_temp_path $W/nginx$i/tmp/fc;
  uwsgi_temp_path $W/nginx$i/tmp/uw;
  scgi_temp_path $W/nginx$i/tmp/sc;
  server {
    listen 127.0.0.1:$port backlog=4096;
    location = /   { return 200 'ok'; }
    location = /4k { alias $W/www/4k.txt; }
    location = /nginx-status { stub_status; }
  }
}
EOF
}
backend_alive() {
  local p; p=$(cat $W/run/nginx-$1.pid 2>/dev/null) && [ -n "$p" ] && kill -0 "$p" 2>/dev/null
}
start_backend() {
  local i=$1
  backend_alive $i && return 0   # a second nginx would fail to bind and remove the pid file
  nginx_conf $i
  # In the foreground of this script's session, not daemonized: a daemon
  # calls setsid(), and with the kernel's autogroup scheduling each nginx
  # then is a scheduling group of its own, which left one backend at a few
  # per cent of a CPU for 100-700 ms at a time behind either proxy
  # (docs/performance.md, "Backends in their own scheduling groups").
  nginx -c $W/conf/nginx-$i.conf -p $W/nginx$i/ 2>>$W/logs/nginx-start.log &
  for _ in $(seq 50); do
    (exec 3<>/dev/tcp/127.0.0.1/${PORTS[$(($i-1))]}) 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nginx $i did not start"; return 1
}
kill9_backend() {  # master and worker of backend $1
  backend_alive $1 || { echo "backend $1 is not running: nothing to kill"; exit 1; }
  local p; p=$(cat $W/run/nginx-$1.pid)
  local workers; workers=$(ps -o pid= --ppid $p)
  # The master first: killed after its worker, it can start another one
  # (which would keep the port) before its own signal lands.
  kill -9 $p 2>/dev/null
  kill -9 $workers 2>/dev/null
  wait $p 2>/dev/null   # reaped here, so that the shell does not report the kill
  rm -f $W/run/nginx-$1.pid
}

haproxy_conf() {  # $1 = nbthread, $2 = extra defaults line
  cat > $W/conf/haproxy.cfg <<EOF
global
    nbthread $1
    maxconn 9000
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout check 1s
    retries 3
    option redispatch
    $2
frontend fe
    bind 127.0.0.1:$HAPROXY_PORT
    default_backend be
backend be
    balance leastconn
EOF
  for i in 1 2 3; do
    echo "    server s$i 127.0.0.1:${PORTS[$(($i-1))]} check inter 1s fall 2 rise 2" >> $W/conf/haproxy.cfg
  done
}

hapool_conf() {  # $1 = threads: the gateway's defaults (variant_conf, below)
  variant_conf hapool "" $1 $HAPOOL_PORT $ADMIN_PORT
}

LB=""        # the PID of the proxy start_lb started last
LB_PORT=""   # and its port
port_of() {  # $1 = haproxy|hapool|floor
  case $1 in haproxy) echo $HAPROXY_PORT;; hapool) echo $HAPOOL_PORT;; floor) echo $FLOOR_PORT;; esac
}
start_lb() {  # $1 = haproxy|hapool, $2 = threads, $3 = haproxy extra line
  case $1 in
    haproxy) haproxy_conf $2 "${3:-}"; $WRAP haproxy -f $W/conf/haproxy.cfg -db >> $W/logs/haproxy.log 2>&1 & LB=$!;;
    hapool) hapool_conf $2; RUST_LOG=warn $WRAP $HAPOOL gateway --config $W/conf/variant-hapool.toml >> $W/logs/hapool.log 2>&1 & LB=$!;;
  esac
  PIDS+=($LB)
  LB_PORT=$(port_of $1)
  wait_lb $LB_PORT
  sleep 1.5   # every backend checked/probed up
}
WRAP=""     # a command the proxy runs under (count: valgrind)
wait_lb() {  # until the proxy on port $1 answers 200, $2 tenths of a second at most (default 100)
  for _ in $(seq ${2:-100}); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$1/ 2>/dev/null)" = 200 ] && break
    sleep 0.1
  done
}
stop_lb() {  # $1 = PID, default the last started
  local p=${1:-$LB}
  kill -TERM $p 2>/dev/null; wait $p 2>/dev/null
}
ticks() { awk '{print $14+$15}' /proc/$1/stat; }
hz=$(getconf CLK_TCK)

# wrk output -> "req/s p50_ms p99_ms errors"
parse_wrk() {
  python3 - "$1" <<'EOF'
import re, sys
t = open(sys.argv[1]).read()
def ms(v, u): return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[u]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
lat = dict((p, ms(v, u)) for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", t, re.M))
err = 0
m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
if m: err += sum(int(x) for x in m.groups())
m = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
if m: err += int(m.group(1))
print(f"{rps:.0f} {lat.get('50', 0):.3f} {lat.get('99', 0):.3f} {err}")
EOF
}

matrix() {
  echo "== matrix (DUR=${DUR}s, REPS=$REPS, leastconn / least-loaded, three nginx backends${CLOSE:+, a new connection per request})"
  echo "hapool: $HAPOOL"
  printf '%-28s %10s %9s %9s %6s %12s\n' "run" "req/s" "p50 ms" "p99 ms" "err" "cpu us/req"
  : > $W/logs/matrix.txt
  local -A pid
  for threads in $THREADS; do
    # Both proxies stay up for the thread count and take turns line by line,
    # the first place alternating between rounds: the machine's slow spells
    # then fall on both rather than on whichever ran during them.
    for lb in haproxy hapool; do
      start_lb $lb $threads; pid[$lb]=$LB
      wrk -t1 -c16 -d1s http://127.0.0.1:$LB_PORT/ > /dev/null 2>&1   # warm-up
    done
    for rep in $(seq $REPS); do
      for path in $PATHS; do
        for load in $LOADS; do
          read t c <<< "${load/:/ }"
          local order="haproxy hapool"; [ $((rep % 2)) = 0 ] && order="hapool haproxy"
          for lb in $order; do
            local name; name="$lb-t$threads$( [ $path = / ] && echo _ok || echo _4k )_c$c"
            local t0; t0=$(ticks ${pid[$lb]})
            wrk ${CLOSE:+-H "Connection: close"} -t$t -c$c -d${DUR}s --latency http://127.0.0.1:$(port_of $lb)$path > $W/logs/$name.wrk 2>&1
            local t1; t1=$(ticks ${pid[$lb]})
            read rps p50 p99 err <<< "$(parse_wrk $W/logs/$name.wrk)"
            local total; total=$(python3 -c "print(round($rps*$DUR))")
            local cpu; cpu=$(python3 -c "print(f'{($t1-$t0)/$hz*1e6/max($total,1):.1f}')")
            printf '%-28s %10s %9s %9s %6s %12s\n' "$name" "$rps" "$p50" "$p99" "$err" "$cpu" \
              | tee -a $W/logs/matrix.txt
          done
        done
      done
    done
    stop_lb ${pid[haproxy]}; stop_lb ${pid[hapool]}
  done
  [ "$REPS" -gt 1 ] && medians $W/logs/matrix.txt
  return 0
}

medians() {  # $1 = the matrix's lines, each line's two proxies one after the other
  echo "== medians over $REPS rounds; ratios hapool / HAProxy, the median of each round's pair"
  python3 - "$1" <<'PY'
import statistics, sys
rows = {}
lines = [line.split() for line in open(sys.argv[1])]
for pair in zip(lines[0::2], lines[1::2]):
    by = {f[0].split("-", 1)[0]: [float(f[1]), float(f[3]), float(f[5])] for f in pair}
    run = pair[0][0].split("-", 1)[1]
    rows.setdefault(run, []).append((by["haproxy"], by["hapool"]))
print(f"{'run':<12} {'HAProxy req/s':>13} {'hapool req/s':>12} {'ratio':>6} {'HAProxy p99':>11} {'hapool p99':>10} {'ratio':>6} {'HAProxy cpu':>11} {'hapool cpu':>10} {'ratio':>6}")
for run, pairs in rows.items():
    med = lambda lb, i: statistics.median(p[lb][i] for p in pairs)
    ratio = lambda i: statistics.median(g[i] / h[i] for h, g in pairs)
    print(f"{run:<12} {med(0, 0):>13.0f} {med(1, 0):>12.0f} {ratio(0):>6.2f} {med(0, 1):>11.2f} {med(1, 1):>10.2f} {ratio(1):>6.2f} {med(0, 2):>11.1f} {med(1, 2):>10.1f} {ratio(2):>6.2f}")
PY
}

failover_one() {  # $1 = label, $2 = haproxy|hapool, $3 = haproxy extra line
  start_backend 2
  start_lb $2 1 "${3:-}"
  wrk -t1 -c64 -d20s --timeout 10s --latency http://127.0.0.1:$LB_PORT/ > $W/logs/fo-$1.wrk 2>&1 &
  local wrk=$!
  PIDS+=($wrk)
  sleep 5; kill9_backend 2
  sleep 7; start_backend 2
  wait $wrk
  read rps p50 p99 err <<< "$(parse_wrk $W/logs/fo-$1.wrk)"
  local max; max=$(grep -E "^\s+Latency" $W/logs/fo-$1.wrk | awk '{print $4}')
  printf '%-44s %8s %10s %10s\n' "$1" "$err" "$rps" "$max"
  stop_lb
}

failover() {
  echo "== failover (wrk -t1 -c64 -d20s; kill -9 backend 2 at 5 s, restart at 12 s; one proxy thread)"
  printf '%-44s %8s %10s %10s\n' "proxy" "failures" "req/s" "max lat"
  for rep in $(seq $REPS); do
    failover_one "haproxy-retries3-redispatch" haproxy ""
    failover_one "haproxy-retries3-redispatch-retryon-all" haproxy "retry-on all-retryable-errors"
    failover_one "hapool-defaults" hapool
  done
}

floor() {
  local floor_bin=${FLOOR:-$ROOT/target/release/examples/proxy-floor}
  [ -x $floor_bin ] || { echo "needs $floor_bin: cargo build --release --example proxy-floor"; exit 1; }
  cat > $W/conf/percentiles.lua <<'EOF'
done = function(summary, latency, requests)
  io.write(string.format("percentiles %.3f %.3f %.3f %.3f %.3f\n", latency:percentile(50) / 1000,
    latency:percentile(95) / 1000, latency:percentile(98) / 1000, latency:percentile(99) / 1000,
    latency:percentile(99.9) / 1000))
end
EOF
  # Every proxy up on a port of its own for the whole run, one thread each.
  local -A pid=() port=()
  local order=() lb shape n=0
  start_lb haproxy 1; pid[haproxy]=$LB; port[haproxy]=$LB_PORT; order+=(haproxy)
  start_lb hapool 1; pid[hapool]=$LB; port[hapool]=$LB_PORT; order+=(hapool)
  if [ -n "${TCP:-}" ]; then
    sed -e "s/127.0.0.1:$HAPROXY_PORT/127.0.0.1:$((HAPROXY_PORT - 1))/" -e 's/mode http/mode tcp/' \
      $W/conf/haproxy.cfg > $W/conf/haproxy-tcp.cfg
    haproxy -f $W/conf/haproxy-tcp.cfg -db >> $W/logs/haproxy.log 2>&1 & pid[haproxy-tcp]=$!
    port[haproxy-tcp]=$((HAPROXY_PORT - 1)); order+=(haproxy-tcp)
    variant_conf tcp '>protocol = "tcp";>affinity = "none"' 1 $((HAPOOL_PORT + 1)) $((ADMIN_PORT - 1))
    RUST_LOG=warn $HAPOOL gateway --config $W/conf/variant-tcp.toml >> $W/logs/hapool.log 2>&1 & pid[hapool-tcp]=$!
    port[hapool-tcp]=$((HAPOOL_PORT + 1)); order+=(hapool-tcp)
    PIDS+=(${pid[haproxy-tcp]} ${pid[hapool-tcp]})
  fi
  for shape in ${FLOORS:-pooled}; do
    # pooled, inline or splice, with +N: N microseconds of busy work per request
    local work=0 base=$shape; [[ $shape == *+* ]] && { work=${shape#*+}; base=${shape%+*}; }
    lb=floor-$shape; port[$lb]=$((FLOOR_PORT + n)); n=$((n + 1)); order+=($lb)
    $floor_bin --shape $base --work-us $work 127.0.0.1:${port[$lb]} \
      127.0.0.1:${PORTS[0]} 127.0.0.1:${PORTS[1]} 127.0.0.1:${PORTS[2]} >> $W/logs/floor.log 2>&1 & pid[$lb]=$!
    PIDS+=(${pid[$lb]})
  done
  for lb in "${order[@]}"; do
    wait_lb ${port[$lb]}
    wrk -t1 -c64 -d1s http://127.0.0.1:${port[$lb]}/ > /dev/null 2>&1   # warm-up
  done
  sleep 1.5   # every backend checked/probed up
  echo "== floor (wrk -t1 -c64 -d${DUR}s on /, one proxy thread, the proxies taking turns; CPU us per request, latency ms)"
  printf '%-5s %-20s %8s %6s %6s %6s %6s %6s %6s %6s\n' "round" "proxy" "req/s" "user" "system" "p50" "p95" "p98" "p99" "p99.9"
  : > $W/logs/floor.txt
  local rep i
  for rep in $(seq $(( REPS < 3 ? 3 : REPS ))); do
    for i in $(seq 0 $(( ${#order[@]} - 1 ))); do
      lb=${order[$(( (rep - 1 + i) % ${#order[@]} ))]}   # the first place rotating between rounds
      read u0 s0 <<< "$(awk '{print $14, $15}' /proc/${pid[$lb]}/stat)"
      wrk -t1 -c64 -d${DUR}s --latency -s $W/conf/percentiles.lua http://127.0.0.1:${port[$lb]}/ > $W/logs/floor-$lb.wrk 2>&1
      read u1 s1 <<< "$(awk '{print $14, $15}' /proc/${pid[$lb]}/stat)"
      read rps p50 p99 err <<< "$(parse_wrk $W/logs/floor-$lb.wrk)"
      read -r _ q50 q95 q98 q99 q999 <<< "$(grep '^percentiles' $W/logs/floor-$lb.wrk)"
      python3 -c "r = $rps * $DUR; u, s = ($u1 - $u0) / $hz * 1e6 / r, ($s1 - $s0) / $hz * 1e6 / r
print('%-5s %-20s %8.0f %6.2f %6.2f %6.2f %6.2f %6.2f %6.2f %6.2f' % ($rep, '$lb', $rps, u, s, $q50, $q95, $q98, $q99, $q999))" \
        | tee -a $W/logs/floor.txt
    done
  done
  for lb in "${order[@]}"; do stop_lb ${pid[$lb]}; done
  echo "== medians over the rounds (the p99's range; rounds in which the p99 was shorter than HAProxy's)"
  python3 - $W/logs/floor.txt <<'PY'
import statistics, sys
rows, rounds = {}, {}
for f in (line.split() for line in open(sys.argv[1])):
    rows.setdefault(f[1], []).append([float(x) for x in f[2:]])
    rounds.setdefault(f[0], {})[f[1]] = float(f[8])
for name, rs in rows.items():
    m = [statistics.median(r[i] for r in rs) for i in range(8)]
    p99 = [r[6] for r in rs]
    shorter = sum(1 for r in rounds.values() if name in r and "haproxy" in r and r[name] < r["haproxy"])
    print(f"{name:<20} {m[0]:8.0f} " + " ".join(f"{v:6.2f}" for v in m[1:])
          + f"  ({min(p99):.2f}-{max(p99):.2f}) {shorter} of {len(rs)}")
PY
}

variant_conf() {  # $1 = name, $2 = settings, $3 = threads, $4 = port, $5 = admin port
  local line pool_lines=() gateway_lines=() listener_lines=()
  IFS=';' read -ra lines <<< "$2"
  for line in "${lines[@]}"; do
    case $line in
      @*) gateway_lines+=("${line#@}");;
      '>'*) listener_lines+=("${line#>}");;
      ?*) pool_lines+=("$line");;
    esac
  done
  {
    echo "[gateway]"
    echo "threads = $3"
    echo "admin = \"127.0.0.1:$5\""
    printf '%s\n' "${gateway_lines[@]}"
    echo "[[gateway.listener]]"
    echo "listen = \"127.0.0.1:$4\""
    echo "pool = \"web\""
    printf '%s\n' "${listener_lines[@]}"
    echo "[[gateway.pool]]"
    echo "handle = \"web\""
    echo "members = [\"127.0.0.1:${PORTS[0]}\", \"127.0.0.1:${PORTS[1]}\", \"127.0.0.1:${PORTS[2]}\"]"
    printf '%s\n' "${pool_lines[@]}"
  } > $W/conf/variant-$1.toml
}
variants() {
  [ -n "${VARIANTS:-}" ] || { echo "variants needs VARIANTS='NAME:SETTINGS ...'"; exit 1; }
  local reps=$(( REPS < 3 ? 3 : REPS ))
  echo "== variants (DUR=${DUR}s, $reps rounds, taking turns, the first place rotating): $VARIANTS"
  printf '%-5s %-12s %-14s %9s %8s %8s %5s %8s %9s\n' "round" "line" "proxy" "req/s" "p50 ms" "p99 ms" "err" "cpu us" "accepted"
  : > $W/logs/variants.txt
  for threads in $THREADS; do
    local -A pid=() port=()
    start_lb haproxy $threads; pid[haproxy]=$LB; port[haproxy]=$LB_PORT
    local names=(haproxy) n=0 v
    for v in $VARIANTS; do
      local name=${v%%:*} settings=${v#*:}
      n=$((n + 1)); port[$name]=$((18200 + n))
      variant_conf "$name" "$settings" $threads ${port[$name]} $((18220 + n))
      local bin_var="BIN_$name" env_var="ENV_$name"
      local bin=${!bin_var:-$HAPOOL}
      [ -x "$bin" ] || { echo "$name: no binary $bin"; exit 1; }
      env ${!env_var:-} RUST_LOG=warn "$bin" gateway --config $W/conf/variant-$name.toml \
        >> $W/logs/variant-$name.log 2>&1 &
      pid[$name]=$!; PIDS+=(${pid[$name]})
      names+=("$name")
    done
    for name in "${names[@]}"; do
      wait_lb ${port[$name]}
      kill -0 ${pid[$name]} 2>/dev/null || { echo "$name did not start: $W/logs/variant-$name.log"; tail -3 $W/logs/variant-$name.log; exit 1; }
    done
    sleep 1.5   # every backend checked/probed up
    for name in "${names[@]}"; do
      wrk -t1 -c16 -d1s http://127.0.0.1:${port[$name]}/ > /dev/null 2>&1   # warm-up
    done
    for rep in $(seq $reps); do
      for path in $PATHS; do
        for load in $LOADS; do
          read t c <<< "${load/:/ }"
          local line; line="t$threads$( [ $path = / ] && echo _ok || echo _4k )_c$c"
          for name in "${names[@]}"; do
            local a0 t0 t1; a0=$(accepted); t0=$(ticks ${pid[$name]})
            wrk -t$t -c$c -d${DUR}s --latency http://127.0.0.1:${port[$name]}$path > $W/logs/variant.wrk 2>&1
            t1=$(ticks ${pid[$name]})
            read rps p50 p99 err <<< "$(parse_wrk $W/logs/variant.wrk)"
            local cpu; cpu=$(python3 -c "print(f'{($t1-$t0)/$hz*1e6/max(round($rps*$DUR),1):.1f}')")
            printf '%-5s %-12s %-14s %9s %8s %8s %5s %8s %9s\n' $rep $line $name $rps $p50 $p99 $err $cpu $(( $(accepted) - a0 )) \
              | tee -a $W/logs/variants.txt
          done
        done
      done
      names=("${names[@]:1}" "${names[0]}")   # the first place rotates
    done
    for name in "${names[@]}"; do stop_lb ${pid[$name]}; done
  done
  echo "== medians over $reps rounds (p99's range)"
  python3 - $W/logs/variants.txt <<'PY'
import collections, statistics, sys
rows = collections.defaultdict(list)
p99_by_round = collections.defaultdict(dict)   # (line, name) -> {round: p99}
for fields in (line.split() for line in open(sys.argv[1])):
    rows[(fields[1], fields[2])].append([float(x) for x in fields[3:9]])
    p99_by_round[(fields[1], fields[2])][fields[0]] = float(fields[5])
for (line, name), runs in rows.items():
    med = lambda i: statistics.median(r[i] for r in runs)
    p99 = [r[2] for r in runs]
    print(f"{line:<12} {name:<14} {med(0):>9.0f} req/s  p50 {med(1):.2f}  p99 {med(2):.2f} ({min(p99):.2f}-{max(p99):.2f})  cpu {med(4):.1f}  accepted {med(5):.0f}")
# Pairs of the same round are nearer in time than the medians: the rounds
# in which each gateway's p99 was the shorter, against HAProxy and against
# the first gateway named.
print("== rounds in which the p99 was shorter than the other's in the same round")
for line in dict.fromkeys(line for line, _ in rows):
    names = [name for l, name in rows if l == line]
    for name in names[1:]:
        mine = p99_by_round[(line, name)]
        pairs = []
        for other in names[:names.index(name)][:2]:
            theirs = p99_by_round[(line, other)]
            common = [r for r in mine if r in theirs]
            shorter = sum(mine[r] < theirs[r] for r in common)
            pairs.append(f"than {other} in {shorter} of {len(common)}")
        print(f"{line:<12} {name:<14} " + ", ".join(pairs))
PY
}

backends_total() {  # $1 = 1: connections the three backends have accepted, 3: requests served (stub_status)
  local n=0 p
  for p in "${PORTS[@]}"; do
    n=$((n + $(curl -s http://127.0.0.1:$p/nginx-status | awk -v f=$1 'NR == 3 {print $f}')))
  done
  echo $n
}
accepted() { backends_total 1; }
served() { backends_total 3; }
count() {
  command -v valgrind >/dev/null || { echo "needs valgrind: apt-get install -y valgrind"; exit 1; }
  local floor_bin=${FLOOR:-$ROOT/target/release/examples/proxy-floor} dur=$DUR
  echo "== count (callgrind, one proxy thread, wrk -t2 -c256, ${dur}s counted; per request)"
  printf '%-16s %8s %10s %9s %9s %9s %9s %9s\n' "proxy" "requests" "instr" "D1 miss" "I1 miss" "LL miss" "cond mis" "ind mis"
  for path in $PATHS; do
    for lb in ${COUNTED:-haproxy hapool floor}; do
      WRAP="valgrind --tool=callgrind --cache-sim=yes --branch-sim=yes --instr-atstart=no --callgrind-out-file=$W/logs/count-$lb.%p ${COUNT_FLAGS:-}"
      rm -f $W/logs/count-$lb.*
      case $lb in
        floor)
          [ -x $floor_bin ] || continue
          LB_PORT=$(port_of floor)
          $WRAP $floor_bin 127.0.0.1:$LB_PORT 127.0.0.1:${PORTS[0]} 127.0.0.1:${PORTS[1]} 127.0.0.1:${PORTS[2]} \
            >> $W/logs/floor.log 2>&1 & LB=$!
          PIDS+=($LB);;
        *) start_lb $lb 1 > /dev/null;;
      esac
      WRAP=""
      wait_lb $LB_PORT 600
      sleep 2
      wrk --timeout 60s -t2 -c256 -d3s http://127.0.0.1:$LB_PORT$path > /dev/null 2>&1
      wrk --timeout 60s -t2 -c256 -d$((dur + 4))s http://127.0.0.1:$LB_PORT$path > $W/logs/count-$lb.wrk 2>&1 &
      local load=$!
      sleep 2
      callgrind_control -i on $LB > /dev/null 2>&1
      local n0; n0=$(served)
      sleep $dur
      callgrind_control -i off $LB > /dev/null 2>&1
      local n1; n1=$(served)
      callgrind_control -d $LB > /dev/null 2>&1
      wait $load
      stop_lb
      # three of the requests counted are the first reads of stub_status
      local served_n=$((n1 - n0 - 3))
      if [ ! -s $W/logs/count-$lb.$LB.1 ] || [ $served_n -le 0 ]; then
        echo "$lb $path: nothing counted (see $W/logs/$lb.log and count-$lb.wrk)"
        continue
      fi
      python3 - $W/logs/count-$lb.$LB.1 $served_n "$lb $path" <<'PY'
import sys
path, requests, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
events, totals = None, None
for line in open(path):
    if line.startswith("events:"):
        events = line.split()[1:]
    elif line.startswith(("summary:", "totals:")):
        totals = [int(x) for x in line.split()[1:]]
d = dict(zip(events, totals))
per = lambda *keys: sum(d.get(k, 0) for k in keys) / requests
print("%-16s %8d %10.0f %9.1f %9.1f %9.2f %9.1f %9.1f" % (name, requests, per("Ir"),
      per("D1mr", "D1mw"), per("I1mr"), per("DLmr", "DLmw", "ILmr"), per("Bcm"), per("Bim")))
PY
    done
  done
}

for i in 1 2 3; do start_backend $i; done
case ${1:-all} in
  matrix) matrix;;
  failover) failover;;
  floor) floor;;
  count) count;;
  variants) variants;;
  all) matrix; failover;;
  *) echo "usage: $0 [matrix|failover|floor|count|variants|all]"; exit 1;;
esac
