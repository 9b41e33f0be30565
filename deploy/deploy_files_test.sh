#!/usr/bin/env bash
# Checks deploy/: the alert rules with promtool (syntax, then the unit tests
# in irqbypass-alerts_test.yml) and the Grafana dashboard with jq.
set -euo pipefail
cd "${TEST_SRCDIR:-.}/${TEST_WORKSPACE:-.}/deploy" 2>/dev/null || cd "$(dirname "$0")"

for tool in promtool jq; do
  command -v "$tool" >/dev/null || {
    echo "FAIL: $tool missing: run scripts/install-deps.sh"; exit 1; }
done

promtool check rules prometheus/irqbypass-alerts.yml
(cd prometheus && promtool test rules irqbypass-alerts_test.yml)

dashboard=grafana/irqbypass-dashboard.json
jq -e '.title == "irqbypass" and (.panels | length) > 10' "$dashboard" >/dev/null
# Every non-row panel queries something, and every query names a metric.
jq -e '[.panels[] | select(.type != "row")
        | (.targets | length) > 0 and all(.targets[]; .expr | test("irqbypass_"))]
       | all' "$dashboard" >/dev/null
# The issue's panels: contention heatmap, RPC rate and latency, connect
# failures, agents.
for want in heatmap irqbypass_index_lock_wait_seconds_bucket \
            irqbypass_grpc_server_handling_seconds_count \
            irqbypass_grpc_server_handling_seconds_bucket \
            irqbypass_connect_failures_total irqbypass_agents_connected; do
  grep -q "$want" "$dashboard" || { echo "FAIL: dashboard lacks $want"; exit 1; }
done
echo "PASS: rules and dashboard"
