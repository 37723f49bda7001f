#!/usr/bin/env bash
# The hot-path benchmark suite (make bench): first the yardstick, what MariaDB alone does with a
# charge's rows (sysbench with the scripts in deploy/bench/, on a database of its own); then the
# three services as release builds on a database, NATS names and Redis prefix of their own (ports
# 55051/58080-58082, so a stack started by `make run-all` is not disturbed), and `loadgen suite`,
# which prints one table with the services' rates against sysbench's and the CPU time each
# process spent per charge. Everything it creates is removed at the end (test streams left on
# NATS are swept by the test suites after 2 h).
#
# Usage: deploy/bench.sh [SECONDS_PER_SCENARIO]   (default 10)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds="${1:-10}"
deploy/dev-deps.sh --bench-tools

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

# The server and the login of admin_url (mysql://user[:password]@host[:port]), over TCP.
mysql_client=$(command -v mariadb || command -v mysql)
userinfo="${admin_url#mysql://}"; userinfo="${userinfo%@*}"
db_user="${userinfo%%:*}"
db_password=; [[ $userinfo == *:* ]] && db_password="${userinfo#*:}"
server="${admin_url#*@}"; server="${server%%/*}"
db_host="${server%%:*}"
db_port=3306; [[ $server == *:* ]] && db_port="${server##*:}"
admin_sql() {
    MYSQL_PWD="$db_password" "$mysql_client" -u"$db_user" -h"$db_host" -P"$db_port" -e "$1"
}

sysbench_db="${db}_sysbench"
admin_sql "CREATE DATABASE \`${db}\`; CREATE DATABASE \`${sysbench_db}\`"

mkdir -p logs
pids=()
# The services by pid (`--pid name=pid`), for the suite's CPU time per charge.
service_pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    admin_sql "DROP DATABASE IF EXISTS \`${db}\`; DROP DATABASE IF EXISTS \`${db}_base\`;
        DROP DATABASE IF EXISTS \`${sysbench_db}\`" || true
}
trap cleanup EXIT

# --- the yardstick: sysbench, the database alone, before the services start ------------------

sysbench_options=(--db-driver=mysql --mysql-host="$db_host" --mysql-port="$db_port"
    --mysql-user="$db_user" --mysql-password="$db_password" --mysql-db="$sysbench_db")
# Charges per transaction of ceiling-batch.lua.
ceiling_batch=100

# Fresh tables with <accounts> accounts; baseline-deduct.lua makes them for both scripts.
sysbench_prepare() {
    sysbench "${sysbench_options[@]}" deploy/bench/baseline-deduct.lua --accounts="$1" prepare >/dev/null
}

# The R of sysbench's `transactions: N (R per sec.)` in its report (stdin); fails without one.
transactions_per_second() {
    sed -n 's/^ *transactions: *[0-9]* *(\([0-9.]*\) per sec\.)$/\1/p' | grep .
}

# Runs deploy/bench/<script>, whose transactions hold <charges> charges each, with <options> for
# the seconds of a scenario; prints its line and leaves its charges per second in $rate.
sysbench_run() {
    local label=$1 charges=$2 script=$3 output transactions
    shift 3
    if ! output=$(sysbench "${sysbench_options[@]}" "deploy/bench/$script" --time="$seconds" "$@" run 2>&1) ||
        ! transactions=$(transactions_per_second <<<"$output"); then
        echo "bench: sysbench $script failed or reported no rate:" >&2
        echo "$output" >&2
        exit 1
    fi
    rate=$(awk -v rate="$transactions" -v charges="$charges" 'BEGIN { printf "%.1f", rate * charges }')
    printf '%-44s %9.0f/s\n' "$label" "$rate"
}

sysbench_prepare 10000
sysbench_run "sysbench, 32 threads, 10000 accounts" 1 baseline-deduct.lua --accounts=10000 --threads=32
sysbench_wide=$rate
sysbench_prepare 1
sysbench_run "sysbench, 16 threads, one hot row" 1 baseline-deduct.lua --accounts=1 --threads=16
sysbench_hot=$rate
sysbench_prepare 10000
sysbench_run "sysbench, 4 threads, ${ceiling_batch} charges per txn" "$ceiling_batch" ceiling-batch.lua \
    --accounts=10000 --batch="$ceiling_batch" --threads=4
sysbench_ceiling=$rate
admin_sql "DROP DATABASE \`${sysbench_db}\`"

# --- the services and the suite --------------------------------------------------------------

for svc in command-svc query-svc scheduler-svc; do
    "$bin/$svc" -conf configs/config.yaml >"logs/bench-${svc}.log" 2>&1 &
    pids+=("$!")
    service_pids+=(--pid "${svc}=$!")
done
for port in 58081 58080 58082; do
    for _ in $(seq 1 120); do
        curl -fsS "http://127.0.0.1:${port}/readyz" >/dev/null 2>&1 && break
        sleep 0.5
    done
    curl -fsS "http://127.0.0.1:${port}/readyz" >/dev/null || { echo "bench: a service on ${port} is not ready; see logs/bench-*.log" >&2; exit 1; }
done

"$bin/loadgen" --config configs/config.yaml suite --seconds "$seconds" \
    --sysbench-wide "$sysbench_wide" --sysbench-hot "$sysbench_hot" \
    --sysbench-ceiling "$sysbench_ceiling" "${service_pids[@]}"
