#!/usr/bin/env bash
# Sets up (system packages), builds and runs every test:
#   1. all test targets (unit, contract, end-to-end, CLI) in the default build;
#   2. the index, matcher, step-executor, sharded-histogram and watch-hub
#      tests again under ThreadSanitizer and AddressSanitizer (and the
#      embedded store's test under AddressSanitizer);
#   3. clang's thread-safety analysis over the code that carries the
#      annotations (a build with --config=thread_safety; its errors fail);
#   4. a format check: every C++ file as clang-format (.clang-format) has it.
# Ends with one line "N passed, M failed", counted from the gtest results of
# what ran (a target that failed to build or crashed counts as one failure).
set -uo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh || { echo "0 passed, 1 failed"; exit 1; }

SANITIZED_TESTS=(
  //common:epoch_test
  //common:lockfree_list_test
  //common:mutex_test
  //service:token_index_test
  //service:matcher_test
  //agent:step_executor_test
  //metrics:sharded_histogram_test
  //service:watch_hub_test
  //service:store_batcher_test
  //agent:command_scheduler_test
)

passed=0
failed=0
logdir=$(mktemp -d)

# The number in attribute $2 of the <testsuites> element of gtest XML $1;
# Bazel's own XML for a non-gtest test (sh_test) leaves <testsuites> bare
# and puts the counts on its one <testsuite>.
suite_attr() {
  local v
  v=$(grep -o '<testsuites [^>]*' "$1" | grep -o " $2=\"[0-9]*\"" | grep -o '[0-9]*' | head -1)
  if [ -z "$v" ]; then
    v=$(grep -o '<testsuite [^>]*' "$1" | grep -o " $2=\"[0-9]*\"" | grep -o '[0-9]*' | head -1)
  fi
  echo "$v"
}

# Adds the results of one `bazel test` run (its output in $1) to the totals.
count_results() {
  local out=$1 line target status xml tests failures errors
  while read -r line; do
    target=$(awk '{print $1}' <<<"$line")
    if grep -qE '\bPASSED\b|\bFAILED\b' <<<"$line" &&
       ! grep -q 'FAILED TO BUILD' <<<"$line"; then
      xml="bazel-testlogs/${target#//}"
      xml="${xml/://}/test.xml"
      if [ -f "$xml" ]; then
        tests=$(suite_attr "$xml" tests)
        failures=$(suite_attr "$xml" failures)
        errors=$(suite_attr "$xml" errors)
        tests=${tests:-0}; failures=${failures:-0}; errors=${errors:-0}
        if grep -q '\bFAILED\b' <<<"$line" && [ $((failures + errors)) -eq 0 ]; then
          failures=1  # crashed or timed out after the XML was written
        fi
        passed=$((passed + tests - failures - errors))
        failed=$((failed + failures + errors))
        continue
      fi
    fi
    # No per-case results: the target itself passed or failed.
    if grep -q '\bPASSED\b' <<<"$line"; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
  done < <(grep -E '^//[^ ]+ +(\(cached\) )?(PASSED|FAILED|TIMEOUT|NO STATUS|FAILED TO BUILD|INCOMPLETE)' "$out")
}

run_bazel_test() {
  local name=$1; shift
  local out="$logdir/$name.log"
  echo "== bazel test $* =="
  bazel test --color=no --curses=no "$@" 2>&1 | tee "$out" | grep -E '^//|Executed|ERROR|FAIL' || true
  if ! grep -qE '^//' "$out"; then
    echo "bazel test $* produced no results"
    failed=$((failed + 1))
  fi
  count_results "$out"
}

run_bazel_test default //...
run_bazel_test tsan --config=tsan "${SANITIZED_TESTS[@]}"
run_bazel_test asan --config=asan "${SANITIZED_TESTS[@]}" //service:rocksdb_store_test

# The annotated code: the product's libraries and binaries and their tests
# (tests/ and bench/ hold none).
echo "== bazel build --config=thread_safety (clang -Wthread-safety) =="
if bazel build --color=no --curses=no --config=thread_safety \
     //common/... //service/... //agent/... //client/... //metrics/... \
     //protocol/... >"$logdir/thread_safety.log" 2>&1; then
  echo "thread-safety analysis: clean"
  passed=$((passed + 1))
else
  grep -E 'error|ERROR' "$logdir/thread_safety.log" | head -40
  failed=$((failed + 1))
fi

echo "== clang-format --dry-run =="
mapfile -t cxx_files < <(git ls-files '*.cc' '*.h')
if clang-format --dry-run --Werror "${cxx_files[@]}" >"$logdir/format.log" 2>&1; then
  echo "format: ${#cxx_files[@]} files clean"
  passed=$((passed + 1))
else
  grep -oE '^[^:]+\.(cc|h)' "$logdir/format.log" | sort -u | sed 's/^/not formatted: /'
  echo "(fix with: clang-format -i FILE)"
  failed=$((failed + 1))
fi
# Leave the default build in bazel-bin for the run script.
bazel build --color=no --curses=no //... >/dev/null 2>&1 || true

rm -rf "$logdir"
echo "${passed} passed, ${failed} failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
