#!/usr/bin/env bash
# Independent load generator: h2load (nghttp2) against irqbypassd and against
# bench/bare_server on the callback API (the fastest server gRPC offers
# here) and on the sync API, in alternating rounds, for
#   (a) GetBinding of a registered pair, and
#   (b) a duplicate RegisterProducer (ALREADY_EXISTS; no agent involved),
#       also against a bare callback server answering with irqbypassd's very
#       error (its message and status details, taken from irqbypassd's
#       answer with nghttp), which prices the error itself apart from
#       irqbypassd's work.
# Prints requests/s per server and irqbypassd's share of the callback
# server's rate. Usage:
#   bench/h2load_compare.sh [--requests=N] [--rounds=R] [--clients=C] [--streams=M]
#                           [--bin_dir=DIR]
# Defaults: 200000 requests per round, 3 rounds, 8 connections x 32 streams.
# It builds the binaries with --config=opt, or (--bin_dir) takes them from
# DIR (service/irqbypassd and so on under it: the smoke test's runfiles).
set -euo pipefail
cd "$(dirname "$0")/.."

requests=200000 rounds=3 clients=8 streams=32 bin=""
for arg in "$@"; do
  case "$arg" in
    --bin_dir=*) bin=${arg#*=} ;;
    --requests=*) requests=${arg#*=} ;;
    --rounds=*) rounds=${arg#*=} ;;
    --clients=*) clients=${arg#*=} ;;
    --streams=*) streams=${arg#*=} ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

if ! command -v h2load >/dev/null || ! command -v nghttp >/dev/null; then
  echo "h2load or nghttp is missing: apt-get install nghttp2-client (scripts/install-deps.sh does)" >&2
  exit 1
fi
if [ -z "$bin" ]; then
  bazel build --config=opt --color=no --curses=no \
    //service:irqbypassd //agent:irqbypass-agent //client:irqbypassctl //bench:bare_server >/dev/null
  bin=$(bazel info --config=opt bazel-bin 2>/dev/null)
fi

dir=$(mktemp -d /tmp/irqbypass-h2load.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT

wait_port() {
  for _ in $(seq 1 300); do [ -s "$1" ] && { cat "$1"; return 0; }; sleep 0.1; done
  echo "no port in $1" >&2; exit 1
}

# Plaintext (--insecure), as the bare servers it is compared with.
"$bin/service/irqbypassd" --listen=127.0.0.1:0 --metrics_listen=127.0.0.1:0 --insecure \
  --data_dir="$dir/data" --port_file="$dir/manager.port" 2>"$dir/irqbypassd.log" &
pids+=($!)
manager_port=$(wait_port "$dir/manager.port")
"$bin/agent/irqbypass-agent" --manager=127.0.0.1:$manager_port --node=bench-node --insecure \
  --backend=sim --sim_vms=vm-a --log_level=warn 2>"$dir/agent.log" &
pids+=($!)
for api in callback sync; do
  "$bin/bench/bare_server" --listen=127.0.0.1:0 --api=$api \
    --port_file="$dir/$api.port" 2>"$dir/$api.log" &
  pids+=($!)
done
callback_port=$(wait_port "$dir/callback.port")
sync_port=$(wait_port "$dir/sync.port")

ctl() { "$bin/client/irqbypassctl" --insecure --server=127.0.0.1:$manager_port "$@" >/dev/null 2>&1; }
for _ in $(seq 1 100); do
  ctl register-consumer --token=h2 --node=bench-node --vm=vm-a --gsi=24 2>/dev/null && break
  sleep 0.1
done
ctl register-producer --token=h2 --node=bench-node --device=0000:3b:00.1 --vector=0

# A gRPC message: flag byte 0, 4-byte big-endian length, the encoded proto.
frame() {
  local body=$dir/$1.pb
  protoc --proto_path=protos --encode="$2" irqbypass/v1/irqbypass.proto \
    <<<"$3" >"$body"
  local n
  n=$(stat -c %s "$body")
  printf "\\x00\\x$(printf %02x $((n >> 24 & 255)))\\x$(printf %02x $((n >> 16 & 255)))\\x$(printf %02x $((n >> 8 & 255)))\\x$(printf %02x $((n & 255)))" >"$dir/$1.req"
  cat "$body" >>"$dir/$1.req"
}
frame get irqbypass.v1.GetBindingRequest 'token: "h2"'
frame dup irqbypass.v1.RegisterProducerRequest \
  'producer { token: "h2" node: "bench-node" device: "0000:3b:00.2" }'

# irqbypassd's answer to the duplicate, as sent: the status details header
# (base64 without padding), decoded for the bare error server.
details=$(nghttp -v -d "$dir/dup.req" -H 'content-type: application/grpc' -H 'te: trailers' \
  "http://127.0.0.1:$manager_port/irqbypass.v1.BypassManager/RegisterProducer" 2>&1 |
  sed -n 's/.*recv (stream_id=[0-9]*) grpc-status-details-bin: //p' | head -1)
if [ -z "$details" ]; then echo "no status details in irqbypassd's duplicate answer" >&2; exit 1; fi
while [ $(( ${#details} % 4 )) -ne 0 ]; do details="$details="; done
base64 -d <<<"$details" >"$dir/dup_error.bin"
"$bin/bench/bare_server" --listen=127.0.0.1:0 --api=callback \
  --register_error_file="$dir/dup_error.bin" --port_file="$dir/error.port" 2>"$dir/error.log" &
pids+=($!)
error_port=$(wait_port "$dir/error.port")

# Requests/s of one h2load run; exits if any request failed at the HTTP/2
# level (gRPC errors such as ALREADY_EXISTS travel in trailers: HTTP 200).
run() {
  local port=$1 method=$2 req=$3 out
  out=$(h2load -n "$requests" -c "$clients" -m "$streams" -d "$dir/$req.req" \
    -H 'content-type: application/grpc' -H 'te: trailers' \
    "http://127.0.0.1:$port/irqbypass.v1.BypassManager/$method" 2>&1)
  if ! grep -q "succeeded, 0 failed, 0 errored, 0 timeout" <<<"$out"; then
    echo "h2load against port $port failed:" >&2; echo "$out" >&2; exit 1
  fi
  grep -o 'finished in [^,]*, [0-9.]* req/s' <<<"$out" | grep -o '[0-9.]* req/s' | cut -d' ' -f1
}

echo "h2load: $requests requests per round, $rounds rounds, $clients connections x $streams streams; $(nproc) cores"
for workload in "GetBinding get" "RegisterProducer dup"; do
  set -- $workload
  servers="ours callback sync"
  [ "$2" = dup ] && servers="$servers error"
  declare -A sum=([ours]=0 [callback]=0 [sync]=0 [error]=0)
  for r in $(seq 1 "$rounds"); do
    for server in $servers; do
      case $server in
        ours) port=$manager_port ;; callback) port=$callback_port ;;
        sync) port=$sync_port ;; error) port=$error_port ;;
      esac
      rate=$(run "$port" "$1" "$2")
      sum[$server]=$(awk -v a="${sum[$server]}" -v b="$rate" 'BEGIN { print a + b }')
    done
  done
  awk -v w="$1 ($2)" -v o="${sum[ours]}" -v c="${sum[callback]}" -v s="${sum[sync]}" -v r="$rounds" 'BEGIN {
    printf "%-24s irqbypassd %8.0f req/s   bare callback %8.0f   bare sync %8.0f   irqbypassd/callback %.1f%%   sync/callback %.1f%%\n",
      w, o / r, c / r, s / r, 100 * o / c, 100 * s / c }'
  if [ "$2" = dup ]; then
    awk -v o="${sum[ours]}" -v c="${sum[callback]}" -v e="${sum[error]}" -v r="$rounds" 'BEGIN {
      printf "%-24s bare callback answering irqbypassd'"'"'s error %8.0f req/s (%.1f%% of answering OK)   irqbypassd/that %.1f%%\n",
        "", e / r, 100 * e / c, 100 * o / e }'
  fi
  unset sum
done
