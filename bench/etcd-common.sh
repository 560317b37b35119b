# Sourced by the scripts that compare hapool with etcd: installs etcd and
# protoc from Debian when missing, builds hapool and the etcd load
# generator, and sets up a work directory and the cleanup of every process
# whose PID goes into `pids`.
if ! command -v etcd >/dev/null || ! command -v protoc >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq etcd-server protobuf-compiler >/dev/null
fi
cargo build --release -q -p hapool
(cd bench/etcd-load && cargo build --release -q)
HAPOOL=target/release/hapool
ETCD_LOAD=bench/etcd-load/target/release/etcd-load

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    # An etcd member that lost its quorum may not stop on SIGTERM.
    kill -9 "$p" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
