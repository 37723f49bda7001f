#!/usr/bin/env bash
# The hot-path benchmark suite (make bench): the three services as release builds on a database,
# NATS names and Redis prefix of their own (ports 55051/58080-58082, so a stack started by
# `make run-all` is not disturbed), then `loadgen suite`, which prints one table. Everything it
# creates is removed at the end (test streams left on NATS are swept by the test suites after 2 h).
#
# Usage: deploy/bench.sh [SECONDS_PER_SCENARIO]   (default 10)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds="${1:-10}"
deploy/dev-deps.sh

tag="$(date +%s)_bench"
db="billing_test_${tag}"
admin_url="${BILLING_TEST_DATABASE_URL:-mysql://billing:billing@127.0.0.1:3306}"
export BILLING__DATABASE__URL="${admin_url%/}/${db}"
export BILLING__COMMAND__GRPC_ADDR=127.0.0.1:55051
export BILLING__COMMAND__HTTP_ADDR=127.0.0.1:58081
export BILLING__QUERY__HTTP_ADDR=127.0.0.1:58080
export BILLING__QUERY__COMMAND_ENDPOINT=http://127.0.0.1:55051
export BILLING__SCHEDULER__HTTP_ADDR=127.0.0.1:58082
export BILLING__NATS__STREAM_PREFIX="T${tag}_"
export BILLING__NATS__SUBJECT_PREFIX="t${tag}"
export BILLING__REDIS__KEY_PREFIX="bench:${tag}:"
export BILLING__TELEMETRY__FILTER=warn

cargo build --release --quiet --bins -p command-svc -p query-svc -p scheduler-svc -p billing-tools
bin="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/release"

mysql_client=$(command -v mariadb || command -v mysql)
userinfo="${admin_url#mysql://}"; userinfo="${userinfo%@*}"
MYSQL_PWD="${userinfo#*:}" "$mysql_client" -u"${userinfo%%:*}" -h127.0.0.1 -e "CREATE DATABASE \`${db}\`"

mkdir -p logs
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    MYSQL_PWD="${userinfo#*:}" "$mysql_client" -u"${userinfo%%:*}" -h127.0.0.1 \
        -e "DROP DATABASE IF EXISTS \`${db}\`; DROP DATABASE IF EXISTS \`${db}_base\`" || true
}
trap cleanup EXIT

for svc in command-svc query-svc scheduler-svc; do
    "$bin/$svc" -conf configs/config.yaml >"logs/bench-${svc}.log" 2>&1 &
    pids+=("$!")
done
for port in 58081 58080 58082; do
    for _ in $(seq 1 120); do
        curl -fsS "http://127.0.0.1:${port}/readyz" >/dev/null 2>&1 && break
        sleep 0.5
    done
    curl -fsS "http://127.0.0.1:${port}/readyz" >/dev/null || { echo "bench: a service on ${port} is not ready; see logs/bench-*.log" >&2; exit 1; }
done

"$bin/loadgen" --config configs/config.yaml suite --seconds "$seconds"
