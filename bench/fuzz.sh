#!/usr/bin/env bash
# Runs every fuzz target (//fuzz) with libFuzzer for a bounded time each,
# on a copy of its seed corpus, and reports executions, executions per
# second and crashes. Exit 1 if a target crashed (its input is kept and
# named).
#
#   bench/fuzz.sh [--seconds=60] [--runs=N] [--targets=handoff,...]
#
# --runs=N stops each target after N executions instead (--seconds is then
# only a cap, default 3 hours per target). The handoff target gets inputs of
# at most 1024 bytes (kHandoffMaxMessage: the socket delivers no longer
# packet); the others libFuzzer's default.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=
runs=
targets=handoff,store_codec,api_request,manager_message
for arg in "$@"; do
  case "$arg" in
    --seconds=*) seconds=${arg#--seconds=} ;;
    --runs=*) runs=${arg#--runs=} ;;
    --targets=*) targets=${arg#--targets=} ;;
    *) echo "usage: bench/fuzz.sh [--seconds=N] [--runs=N] [--targets=a,b]" >&2; exit 2 ;;
  esac
done
if [ -z "$seconds" ]; then
  if [ -n "$runs" ]; then seconds=10800; else seconds=60; fi
fi
limit=(-max_total_time="$seconds")
if [ -n "$runs" ]; then limit+=(-runs="$runs"); fi
bash scripts/install-deps.sh >/dev/null
bazel build --config=fuzz --color=no --curses=no //fuzz:all
bin=$(bazel info --config=fuzz bazel-bin 2>/dev/null)
work=$(mktemp -d /tmp/irqbypass-fuzz.XXXXXX)
failed=0
printf '%-16s %12s %8s %10s %8s\n' target executions seconds "per s" crashes
IFS=, read -ra list <<<"$targets"
for t in "${list[@]}"; do
  mkdir -p "$work/$t/corpus" "$work/$t/crashes"
  cp fuzz/corpus/"$t"/* "$work/$t/corpus/"
  extra=()
  if [ "$t" = handoff ]; then extra+=(-max_len=1024); fi
  rc=0
  start=$(date +%s.%N)
  "$bin/fuzz/${t}_fuzzer" "${limit[@]}" ${extra[@]+"${extra[@]}"} -print_final_stats=1 \
    -artifact_prefix="$work/$t/crashes/" "$work/$t/corpus" \
    >"$work/$t/log" 2>&1 || rc=$?
  elapsed=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
  executed=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$work/$t/log" | grep -o '[0-9]*$' || echo 0)
  crashes=$(find "$work/$t/crashes" -type f | wc -l)
  if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then crashes=1; fi
  printf '%-16s %12s %8.0f %10.0f %8s\n' "$t" "$executed" "$elapsed" \
    "$(awk -v n="$executed" -v s="$elapsed" 'BEGIN { print (s > 0 ? n / s : 0) }')" "$crashes"
  if [ "$crashes" -ne 0 ]; then
    failed=1
    echo "  $t crashed: $(ls "$work/$t/crashes" 2>/dev/null | head -3); log: $work/$t/log" >&2
  fi
done
echo "(work folder: $work)"
exit $failed
