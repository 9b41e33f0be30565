#!/usr/bin/env bash
# Sets up, builds and starts irqbypassd with a local node agent (sim backend,
# embedded defaults), then shows a producer and a consumer being paired,
# a failed connect being rolled back, a clean disconnect, and irqbypassd
# killed with SIGKILL and started again without losing or unwiring anything.
# Keeps serving until Ctrl-C; with --once (or IRQBYPASS_ONCE=1) it stops
# after the demo.
#
#   scripts/run.sh [--once] [--port=50051] [--backend=sim|kvm]
#
# State is kept in the embedded store in .run/irqbypassd (or
# $IRQBYPASS_DATA_DIR), so a second run starts with what the first left.
# Everything speaks mutual TLS, with a throwaway CA and certificates made by
# scripts/pki.sh in .run/pki (kept while valid; no key is ever committed).
#
# --backend=kvm wires for real on /dev/kvm (root): the agent creates VMs
# vm-a and vm-b with an in-kernel irqchip, and (no VFIO device on most test
# hosts) uses fake VFIO devices for the producer side.
set -euo pipefail
cd "$(dirname "$0")/.."

once=${IRQBYPASS_ONCE:-0}
port=50051
backend=sim
for arg in "$@"; do
  case "$arg" in
    --once) once=1 ;;
    --port=*) port=${arg#--port=} ;;
    --backend=sim|--backend=kvm) backend=${arg#--backend=} ;;
    *) echo "usage: scripts/run.sh [--once] [--port=N] [--backend=sim|kvm]" >&2; exit 2 ;;
  esac
done
if [ "$backend" = kvm ] && ! [ -r /dev/kvm ]; then
  echo "--backend=kvm needs a readable /dev/kvm (run as root on a KVM host)" >&2
  exit 2
fi

bash scripts/install-deps.sh
echo "== building =="
bazel build --color=no --curses=no //service:irqbypassd //agent:irqbypass-agent //client:irqbypassctl
bin=$(bazel info bazel-bin 2>/dev/null)

# A throwaway CA and certificates (kept for a run tomorrow while valid).
pki=$PWD/.run/pki
if ! [ -f "$pki/server.pem" ] || ! openssl x509 -checkend 86400 -noout -in "$pki/server.pem" >/dev/null 2>&1; then
  echo "== making a throwaway CA and certificates in $pki =="
  rm -rf "$pki"
  bash scripts/pki.sh fleet "$pki" irqbypass.local node-1
fi
tls() {  # the TLS flags for certificate $1
  echo "--tls_cert=$pki/$1.pem --tls_key=$pki/$1.key --tls_ca=$pki/ca.pem"
}

rundir=$(mktemp -d /tmp/irqbypass-run.XXXXXX)
datadir=${IRQBYPASS_DATA_DIR:-$PWD/.run/irqbypassd}
mkdir -p "$datadir"
server="127.0.0.1:${port}"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_manager() {
  rm -f "$rundir/port"
  # shellcheck disable=SC2046
  "$bin/service/irqbypassd" --listen="$server" --metrics_listen=127.0.0.1:0 $(tls server) \
    --data_dir="$datadir" --port_file="$rundir/port" 2>>"$rundir/irqbypassd.log" &
  manager_pid=$!
  pids+=($manager_pid)
  for _ in $(seq 1 300); do [ -s "$rundir/port" ] && break; sleep 0.1; done
  [ -s "$rundir/port" ] || { echo "irqbypassd did not start:"; cat "$rundir/irqbypassd.log"; exit 1; }
}
# Waits until the manager has reconciled node-1's agent $1 times in all.
wait_reconciled() {
  for _ in $(seq 1 200); do
    [ "$(grep -c 'msg="agent reconciled" node=node-1' "$rundir/irqbypassd.log")" -ge "$1" ] && return 0
    sleep 0.1
  done
  echo "agent did not connect:"; cat "$rundir/agent.log"; exit 1
}

echo "== starting irqbypassd on ${server} (store: ${datadir}; logs: ${rundir}) =="
start_manager
grep -o 'msg="store loaded".*' "$rundir/irqbypassd.log" || true

if [ "$backend" = kvm ]; then
  agent_flags=(--backend=kvm --kvm_create_vms=vm-a,vm-b
               --kvm_fake_devices=0000:3b:00.1,0000:3b:00.2,0000:3b:00.3)
else
  agent_flags=(--backend=sim --sim_vms=vm-a,vm-b)
fi
echo "== starting irqbypass-agent --node=node-1 ${agent_flags[*]} =="
# shellcheck disable=SC2046
"$bin/agent/irqbypass-agent" --manager="$server" --node=node-1 $(tls agent-node-1) \
  "${agent_flags[@]}" 2>"$rundir/agent.log" &
pids+=($!)
wait_reconciled 1

# irqbypassctl as an orchestrator (its certificate from the environment).
export IRQBYPASS_TLS_CERT=$pki/orchestrator.pem IRQBYPASS_TLS_KEY=$pki/orchestrator.key
export IRQBYPASS_TLS_CA=$pki/ca.pem
ctl() {
  echo "\$ irqbypassctl $*"
  local rc=0
  "$bin/client/irqbypassctl" --server="$server" "$@" || rc=$?
  echo "(exit code $rc)"
  echo
}

quiet() { "$bin/client/irqbypassctl" --server="$server" "$@" >/dev/null 2>&1 || true; }

echo
echo "== 0. what the store kept from an earlier run (empty the first time) =="
ctl list
# The demo's own tokens start afresh each run.
for t in demo-1 demo-2 demo-3; do
  quiet unregister-producer --token=$t
  quiet unregister-consumer --token=$t
done

echo "== 1. a consumer (VM vm-a, GSI 24) waits for its producer =="
ctl register-consumer --token=demo-1 --node=node-1 --vm=vm-a --gsi=24
echo "== 2. the producer (device 0000:3b:00.1, MSI-X vector 0) arrives: connected =="
ctl register-producer --token=demo-1 --node=node-1 --device=0000:3b:00.1 --vector=0
ctl get --token=demo-1
echo "== 3. a consumer naming a VM the agent does not hold: the connect fails, is rolled back =="
ctl register-consumer --token=demo-2 --node=node-1 --vm=vm-missing --gsi=25
ctl register-producer --token=demo-2 --node=node-1 --device=0000:3b:00.2 --vector=0
ctl get --token=demo-2
echo "== 4. the same token twice: already exists =="
ctl register-producer --token=demo-1 --node=node-1 --device=0000:3b:00.3 --vector=0
echo "== 5. list, then disconnect by unregistering the producer =="
ctl list
ctl unregister-producer --token=demo-1
ctl get --token=demo-1
ctl --output=json get --token=demo-1
echo "== 6. a pair, then irqbypassd killed with SIGKILL and started again =="
ctl register-consumer --token=demo-3 --node=node-1 --vm=vm-b --gsi=26
ctl register-producer --token=demo-3 --node=node-1 --device=0000:3b:00.3 --vector=0
kill -KILL "$manager_pid"
wait "$manager_pid" 2>/dev/null || true
start_manager
grep -o 'msg="store loaded".*' "$rundir/irqbypassd.log" | tail -1
wait_reconciled 2
echo "the agent's wiring was kept, none torn down:"
grep -o 'msg="agent reconciled".*' "$rundir/irqbypassd.log" | tail -1
ctl get --token=demo-3
echo "(demo-3 stays registered: the next run of this script lists it in step 0)"
echo
echo "== 7. who may do what: a reader may read but not unregister; no certificate, no call =="
ctl --tls_cert="$pki/reader.pem" --tls_key="$pki/reader.key" get --token=demo-3
ctl --tls_cert="$pki/reader.pem" --tls_key="$pki/reader.key" unregister-producer --token=demo-3
ctl --insecure --timeout=3s get --token=demo-3

if [ "$once" = "1" ]; then
  echo "== demo done (--once): stopping =="
  exit 0
fi
echo "== irqbypassd is serving on ${server} with agent node-1; try:"
echo "   IRQBYPASS_TLS_CERT=$pki/orchestrator.pem IRQBYPASS_TLS_KEY=$pki/orchestrator.key \\"
echo "   IRQBYPASS_TLS_CA=$pki/ca.pem $bin/client/irqbypassctl --server=${server} list"
echo "   Ctrl-C to stop. =="
wait "$manager_pid"
