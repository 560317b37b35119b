#!/usr/bin/env bash
# Session failover: a registrar (keep-alive 10 ms / 10 ms, the shortest
# setting), two chat servers as processes with last wills pointing at each
# other, and a client in mid-session; the serving process is killed with
# SIGKILL 100 times (and restarted). Prints the time from each kill to the
# client's first successful exchange with the other server (median, p99,
# max), whether the new server always got the state cookie before any
# data, and whether a line was lost. Everything runs on 127.0.0.1.
#
# Usage: bench/session-failover.sh   (COUNT=100 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${COUNT:-100}
cargo build --release -q -p hapool --example chat
target/release/examples/chat failovers --count "$COUNT"
