#!/bin/bash
# Builds hapool with profile-guided optimisation: a build that counts what
# its code does is run on hapool's own work, and the release build is then
# laid out and inlined by those counts (hot paths together, cold ones
# apart). The gateway's request path takes about a quarter fewer
# instructions and a quarter of the instruction-cache misses of the plain
# release build (docs/performance.md, "Built by a profile of its own
# work").
#
#   tools/pgo-build.sh            -> target/pgo/hapool
#
# The training work, with the counting build:
#   1. `hapool demo --duration 20s --clients 32`: three registrars in a
#      cluster, the pool element library, the gateway proxying HTTP (answers
#      of a few bytes and of 4 KiB) and TCP clients, a server's and a
#      registrar's death;
#   2. a registrar loaded by `hapool bench` (registrations,
#      re-registrations, resolutions), stopped with SIGTERM.
# Neither is the gateway benchmark's load (nginx members, wrk clients).
#
# Needs llvm-profdata of rustc's LLVM major version (`rustc -vV`), e.g.
# apt-get install llvm-22 for LLVM 22. Takes two release builds. Only
# loopback is used; the registrar started here is stopped by its PID.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
W=$ROOT/target/pgo

major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\)\..*/\1/p')
[ -n "$major" ] || { echo "cannot tell rustc's LLVM version from rustc -vV"; exit 1; }
profdata=""
for candidate in llvm-profdata-$major llvm-profdata; do
  if command -v $candidate >/dev/null \
    && $candidate --version 2>/dev/null | grep -q "LLVM version $major\."; then
    profdata=$candidate
    break
  fi
done
[ -n "$profdata" ] || {
  echo "needs llvm-profdata of LLVM $major, rustc's (apt-get install llvm-$major)"
  exit 1
}

echo "== the counting build"
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$W/profiles" \
  cargo build --release --locked -p hapool --target-dir $W/counting
# The build's own scripts ran counted too: only the training's counts stay.
rm -rf $W/profiles
mkdir -p $W/profiles $W/logs
counting=$W/counting/release/hapool
export LLVM_PROFILE_FILE=$W/profiles/hapool-%p-%m.profraw

echo "== training: hapool demo"
$counting demo --duration 20s --clients 32 > $W/logs/demo.log 2>&1 \
  || { echo "the demo failed: $W/logs/demo.log"; tail -5 $W/logs/demo.log; exit 1; }
tail -1 $W/logs/demo.log

echo "== training: a registrar under hapool bench"
port=23963
$counting registrar --listen 127.0.0.1:$port --registration-rate 0 --resolution-rate 0 \
  > $W/logs/registrar.log 2>&1 &
registrar=$!
trap 'kill -TERM $registrar 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
  kill -0 $registrar 2>/dev/null \
    || { echo "the registrar did not start: $W/logs/registrar.log"; tail -5 $W/logs/registrar.log; exit 1; }
  sleep 0.1
done
$counting bench --registrar 127.0.0.1:$port --duration 2s > $W/logs/bench.log 2>&1 \
  || { echo "hapool bench failed: $W/logs/bench.log"; tail -5 $W/logs/bench.log; exit 1; }
tail -1 $W/logs/bench.log
# A clean stop writes the registrar's counts.
kill -TERM $registrar
wait $registrar || { echo "the registrar did not stop cleanly: $W/logs/registrar.log"; exit 1; }
trap - EXIT

echo "== the optimised build"
$profdata merge -o $W/hapool.profdata $W/profiles
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$W/hapool.profdata" \
  cargo build --release --locked -p hapool --target-dir $W/optimised
cp $W/optimised/release/hapool $W/hapool
echo "built $W/hapool"
