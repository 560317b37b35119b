#!/usr/bin/env bash
# Virtual IP failover, hapool vip against keepalived (Debian's), in one run,
# in network namespaces this script's benchmark makes itself (10.232.0.0/24
# inside them only): two members and a client that connects to the virtual
# address every 2 ms. For each daemon, at 1 s and at 100 ms advertisements
# (and hapool alone at 50 ms), then both over IPv6 at 100 ms,
# TRIALS times: the master's machine dies (every process of its daemon
# stopped and killed, its link cut) and the time until the other member
# answers is taken; then it returns, and the time until it answers again
# and the fall-back blip (probes lost, longest gap) are taken.
#
# Usage (root): bench/vip-vs-keepalived.sh   (TRIALS=10 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v keepalived >/dev/null || ! command -v ip >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends keepalived iproute2 >/dev/null
fi
HAPOOL_VIP_TRIALS=${TRIALS:-10} HAPOOL_REQUIRE_TOOLS=1 \
  cargo test --release -q -p hapool --test vip vip_failover_bench -- --ignored --nocapture 2>&1 |
  grep -E '^(keepalived|hapool) '
