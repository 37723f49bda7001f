#!/usr/bin/env bash
# What each row a charge writes costs MariaDB on its own, without statements, round trips or
# commits around it: copies rows of a database a charging run filled (`make run-all`, then
# `loadgen deduct`) into empty copies of its tables, 9,000 rows per statement, and prints the
# redo log bytes and the wall time per row of each insert, of marking outbox rows published, of
# deleting them, and of a charge's account update. The sum is the least the database can spend
# per charge with these rows, however large the batches.
#
# Usage: deploy/bench/row-costs.sh [DATABASE]   (default billing; client options in $MYSQL_OPTS,
#        default -uroot)
set -euo pipefail

source_db="${1:-billing}"
scratch="${source_db}_row_costs"
rows=9000
read -r -a client <<<"${MYSQL_OPTS:--uroot}"
mysql_client=$(command -v mariadb || command -v mysql)

sql() { "$mysql_client" "${client[@]}" -N -e "$1"; }
redo_bytes() { sql "SHOW GLOBAL STATUS LIKE 'Innodb_os_log_written'" | awk '{print $2}'; }

# Runs <statement> and prints <label> with its redo bytes and microseconds per row.
measure() {
    local label=$1 statement=$2 before after started ended
    before=$(redo_bytes)
    started=$(date +%s%N)
    sql "$statement"
    ended=$(date +%s%N)
    after=$(redo_bytes)
    printf '%-28s %6d B/row %6.1f µs/row\n' "$label" $(((after - before) / rows)) \
        "$(awk -v ns=$((ended - started)) -v n=$rows 'BEGIN { print ns / n / 1000 }')"
}

available=$(sql "SELECT COUNT(*) FROM \`${source_db}\`.outbox")
if ((available < rows)); then
    echo "row-costs: ${source_db}.outbox holds ${available} rows; charge at least ${rows} first" >&2
    exit 1
fi
sql "DROP DATABASE IF EXISTS \`${scratch}\`; CREATE DATABASE \`${scratch}\`"
trap 'sql "DROP DATABASE IF EXISTS \`${scratch}\`"' EXIT

for table in ledger outbox rm_records rm_daily_usage rm_accounts accounts; do
    sql "CREATE TABLE \`${scratch}\`.${table} LIKE \`${source_db}\`.${table}"
    measure "${table}: insert" \
        "INSERT INTO \`${scratch}\`.${table} SELECT * FROM \`${source_db}\`.${table} LIMIT ${rows}"
done
measure "outbox: mark published" "UPDATE \`${scratch}\`.outbox SET published_at = NOW(6)"
measure "outbox: delete" "DELETE FROM \`${scratch}\`.outbox"
measure "accounts: charge's update" \
    "UPDATE \`${scratch}\`.accounts SET balance_micros = balance_micros - 1, version = version + 1"
