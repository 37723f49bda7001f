#!/usr/bin/env bash
# Builds the three billing services and runs them on this machine.
#
# Usage:
#   deploy/run-all.sh               start them in the background and return once each answers its
#                                   /readyz; logs in logs/command.log, logs/query.log and
#                                   logs/cron.log (the scheduler), pid files in .run/
#   deploy/run-all.sh --foreground  run them in this terminal, output prefixed with the service
#                                   name; Ctrl-C stops all three, and so does one of them exiting
#   deploy/run-all.sh --stop        stop what runs from .run/ (what deploy/stop-all.sh does)
#
# MariaDB, Redis and NATS must be reachable already: deploy/dev-deps.sh (make deps) sees to that.
#
# Environment (all optional):
#   CONFIG              configuration passed as `-conf` (default configs/config.yaml)
#   BILLING_BIN_DIR     run the binaries found there instead of building them with cargo
#   READY_TIMEOUT_SECS  how long to wait for all three to be ready (default 60)
#   STOP_TIMEOUT_SECS   how long a service may take to shut down after SIGTERM (default 15)
#   BILLING__COMMAND__HTTP_ADDR, BILLING__QUERY__HTTP_ADDR, BILLING__SCHEDULER__HTTP_ADDR
#                       the services' HTTP listeners, when moved from the defaults; the readiness
#                       checks follow them
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

readonly CONFIG="${CONFIG:-configs/config.yaml}"
readonly READY_TIMEOUT_SECS="${READY_TIMEOUT_SECS:-60}"
readonly STOP_TIMEOUT_SECS="${STOP_TIMEOUT_SECS:-15}"
readonly LOG_DIR=logs
readonly RUN_DIR=.run

# command-svc first: query-svc calls it.
readonly SERVICES=(command-svc query-svc scheduler-svc)

# The scheduler logs to cron.log, the name operators know from the original deployment.
declare -rA LOG_FILE=(
    [command-svc]="$LOG_DIR/command.log"
    [query-svc]="$LOG_DIR/query.log"
    [scheduler-svc]="$LOG_DIR/cron.log"
)
declare -rA READY_URL=(
    [command-svc]="http://${BILLING__COMMAND__HTTP_ADDR:-127.0.0.1:8081}/readyz"
    [query-svc]="http://${BILLING__QUERY__HTTP_ADDR:-127.0.0.1:8080}/readyz"
    [scheduler-svc]="http://${BILLING__SCHEDULER__HTTP_ADDR:-127.0.0.1:8082}/readyz"
)

die() {
    echo "run-all: $*" >&2
    exit 1
}

pid_file() {
    echo "$RUN_DIR/$1.pid"
}

# True while the process lives. A zombie does not count: an exited service whose parent is gone
# may linger as one where nothing reaps orphans (containers).
alive() {
    local pid=$1 stat
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]]
}

# Pid of the running service recorded in .run/, if any. The command line must still name the
# service, so that a pid recycled by an unrelated process is never signalled.
running_pid() {
    local svc=$1 file pid
    file=$(pid_file "$svc")
    [[ -r $file ]] || return 1
    read -r pid <"$file" || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    alive "$pid" || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$svc" || return 1
    echo "$pid"
}

# Directory holding the three binaries: prebuilt ones from BILLING_BIN_DIR, else a release build
# in cargo's target directory (CARGO_TARGET_DIR or whatever cargo is configured with).
binaries() {
    if [[ -n ${BILLING_BIN_DIR:-} ]]; then
        echo "$BILLING_BIN_DIR"
        return
    fi
    echo "run-all: building release binaries" >&2
    cargo build --release --bins -p command-svc -p query-svc -p scheduler-svc >&2
    local target_dir="${CARGO_TARGET_DIR:-}"
    if [[ -z $target_dir ]]; then
        target_dir=$(cargo metadata --format-version 1 --no-deps |
            sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    fi
    [[ -n $target_dir ]] || die "could not determine cargo's target directory"
    echo "$target_dir/release"
}

# Stops the given services: SIGTERM for a graceful shutdown, SIGKILL for any still there after
# STOP_TIMEOUT_SECS. Harmless for services that do not run.
stop_services() {
    local svc pid deadline
    local -A pids=()
    for svc in "$@"; do
        if pid=$(running_pid "$svc"); then
            kill -TERM "$pid" 2>/dev/null || true
            pids[$svc]=$pid
        fi
    done
    deadline=$((SECONDS + STOP_TIMEOUT_SECS))
    while ((${#pids[@]} > 0)); do
        for svc in "$@"; do
            [[ -n ${pids[$svc]:-} ]] || continue
            if ! alive "${pids[$svc]}"; then
                echo "$svc: stopped"
                unset "pids[$svc]"
            elif ((SECONDS >= deadline)); then
                echo "$svc: still running ${STOP_TIMEOUT_SECS}s after SIGTERM, sending SIGKILL" >&2
                kill -KILL "${pids[$svc]}" 2>/dev/null || true
                unset "pids[$svc]"
            fi
        done
        ((${#pids[@]} == 0)) || sleep 0.2
    done
    for svc in "$@"; do
        rm -f "$(pid_file "$svc")"
    done
}

print_log_tail() {
    local log=${LOG_FILE[$1]}
    if [[ -s $log ]]; then
        echo "--- last lines of $log ---" >&2
        tail -n 30 "$log" >&2
    fi
}

# Waits until every given service answers its readiness endpoint. Returns 1 as soon as one of
# them exits or the time is up (after saying which), 2 when a stop was requested meanwhile.
wait_ready() {
    local -A pending=()
    local svc pid
    for svc in "$@"; do pending[$svc]=1; done
    local deadline=$((SECONDS + READY_TIMEOUT_SECS))
    while ((${#pending[@]} > 0)); do
        ((stop_requested == 0)) || return 2
        for svc in "$@"; do
            [[ -n ${pending[$svc]:-} ]] || continue
            if ! pid=$(running_pid "$svc"); then
                echo "run-all: $svc exited during start-up" >&2
                FAILED=$svc
                return 1
            fi
            if curl -fsS -o /dev/null --max-time 2 "${READY_URL[$svc]}" 2>/dev/null; then
                echo "$svc: ready (pid $pid, ${READY_URL[$svc]})"
                unset "pending[$svc]"
            fi
        done
        ((${#pending[@]} > 0)) || break
        if ((SECONDS >= deadline)); then
            FAILED=
            for svc in "$@"; do
                [[ -z ${pending[$svc]:-} ]] || FAILED+="${FAILED:+ }$svc"
            done
            echo "run-all: not ready within ${READY_TIMEOUT_SECS}s: $FAILED" >&2
            return 1
        fi
        sleep 0.5
    done
}

stop_requested=0
FAILED=

# --- background --------------------------------------------------------------------------------

run_background() {
    local bin_dir svc pid
    local started=()
    [[ -r $CONFIG ]] || die "config file not found: $CONFIG"
    bin_dir=$(binaries)
    mkdir -p "$LOG_DIR" "$RUN_DIR"
    for svc in "${SERVICES[@]}"; do
        if pid=$(running_pid "$svc"); then
            echo "$svc: already running (pid $pid); deploy/stop-all.sh first to restart it"
            continue
        fi
        [[ -x $bin_dir/$svc ]] || die "binary not found: $bin_dir/$svc"
        # Keep the previous run's log for a post-mortem.
        [[ -e ${LOG_FILE[$svc]} ]] && mv -f "${LOG_FILE[$svc]}" "${LOG_FILE[$svc]}.1"
        # setsid: a session of its own, so that neither Ctrl-C in this terminal nor closing it
        # reaches the service.
        setsid "$bin_dir/$svc" -conf "$CONFIG" </dev/null >"${LOG_FILE[$svc]}" 2>&1 &
        echo $! >"$(pid_file "$svc")"
        started+=("$svc")
    done
    if ! wait_ready "${SERVICES[@]}"; then
        for svc in $FAILED; do print_log_tail "$svc"; done
        # All or nothing: do not leave a half-started set behind.
        ((${#started[@]} == 0)) || stop_services "${started[@]}" >&2
        exit 1
    fi
    echo "logs in $LOG_DIR/; stop with deploy/stop-all.sh (make stop-all)"
}

# --- foreground --------------------------------------------------------------------------------

# Prefixes each line with the service name. Ignores Ctrl-C and hang-ups, so that it keeps
# forwarding the services' last words while they shut down.
prefix_output() {
    trap '' INT HUP
    exec sed -u "s/^/$(printf '%-13s|' "$1") /"
}

run_foreground() {
    local bin_dir svc pid exited=
    local -A pid_of=()
    [[ -r $CONFIG ]] || die "config file not found: $CONFIG"
    for svc in "${SERVICES[@]}"; do
        if pid=$(running_pid "$svc"); then
            die "$svc already runs in the background (pid $pid); deploy/stop-all.sh first"
        fi
    done
    bin_dir=$(binaries)
    for svc in "${SERVICES[@]}"; do
        [[ -x $bin_dir/$svc ]] || die "binary not found: $bin_dir/$svc"
    done
    mkdir -p "$RUN_DIR"

    # The services run in sessions of their own (setsid): Ctrl-C reaches only this script, which
    # then asks each of them once, with SIGTERM, to shut down gracefully.
    trap 'stop_requested=1' INT TERM HUP
    for svc in "${SERVICES[@]}"; do
        setsid "$bin_dir/$svc" -conf "$CONFIG" </dev/null > >(prefix_output "$svc") 2>&1 &
        pid_of[$svc]=$!
        echo "$!" >"$(pid_file "$svc")"
    done

    local status=0
    wait_ready "${SERVICES[@]}" || status=$?
    if ((status == 0)); then
        echo "run-all: all three ready; Ctrl-C stops them"
        # Returns when a service exits or a signal arrives (the trap runs, then wait returns).
        wait -n -p exited "${pid_of[@]}" || true
    fi
    if [[ -n ${exited:-} ]]; then
        for svc in "${!pid_of[@]}"; do
            [[ ${pid_of[$svc]} == "$exited" ]] && echo "run-all: $svc exited, stopping the others" >&2
        done
        status=1
    elif ((status == 1)); then
        echo "run-all: stopping the services" >&2
    elif ((stop_requested)); then
        status=0
    fi
    trap '' INT HUP
    stop_services "${SERVICES[@]}"
    # Let the prefixers flush what the services said while stopping.
    wait 2>/dev/null || true
    exit "$status"
}

case "${1:-}" in
    "") run_background ;;
    --foreground) run_foreground ;;
    --stop) stop_services "${SERVICES[@]}" ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" ;;
    *) die "unknown argument: $1 (try --help)" ;;
esac
