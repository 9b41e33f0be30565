#!/usr/bin/env bash
# Runs a benchmark binary small; passes if it exits 0 and printed a table.
set -euo pipefail
out=$("$@")
echo "$out"
grep -q "design\|pairs/s\|req/s\|per observation\|bytes\|latency\|p99" <<<"$out"
