#!/usr/bin/env bash
# Makes the services' dependencies reachable on loopback for development and tests:
#   MariaDB  127.0.0.1:3306  (database `billing`, user `billing` / password `billing`)
#   Redis    127.0.0.1:6379
#   NATS     127.0.0.1:4222  (with JetStream: a server that answers without it is fixed when it is
#                            Debian's own nats-server service, refused otherwise)
# and, with --test-tools, what the checks of the Kubernetes manifests (deploy/k8s/validate.py) and
# of query-svc's OpenAPI document (deploy/openapi/validate.py) need:
#   kubectl  (Debian's kubernetes-client when missing; its `kubectl kustomize` renders them)
#   a Python virtualenv (python3, python3-venv) with kubernetes-validate (the Kubernetes schemas,
#   offline), openapi-spec-validator (OpenAPI 3.0 / 3.1) and schemathesis (the property-based
#   tester run against the document and a seeded query-svc), from PyPI
# and, with --browser, what the browser tests of the developer console (query-svc/console/e2e)
# need:
#   Chromium (Debian's chromium), Node.js and npm (Debian's nodejs and npm when missing), and
#   playwright-core and axe-core, installed by `npm ci` from the lock file into
#   query-svc/console/e2e
# and, with --bench-tools, the yardstick of the hot-path benchmark (deploy/bench.sh):
#   sysbench (Debian's), which runs the Lua scripts in deploy/bench/ against MariaDB
#
# Safe to run any number of times. A dependency whose port already answers is left alone (it may
# be a system service or a container someone else runs), so this never stops or restarts anything.
# A missing one is installed from Debian packages when its binary is absent and started in the
# background, bound to 127.0.0.1 only.
#
# Usage: deploy/dev-deps.sh [--clean-test-databases] [--test-tools] [--browser] [--bench-tools]
#                           [--watch PID]
#   --clean-test-databases  also drop test databases and temp dirs left behind by crashed test
#                           runs (older than 6 hours, so a concurrent run is never disturbed)
#   --test-tools            also install the tools of the manifest and OpenAPI checks (make test;
#                           make run needs none of them)
#   --browser               also install Chromium, Node.js, playwright-core and axe-core
#                           (make test)
#   --bench-tools           also install sysbench (make bench)
#   --watch PID             then keep watching the three servers while process PID lives (make
#                           test passes its shell): one that stops answering is reported (its
#                           process, the kernel's last messages) and started again, NATS with the
#                           command line it had, so its JetStream store is kept
#
# Environment (all optional):
#   BILLING_DEPS_MYSQL_PORT   MariaDB port (default 3306)
#   BILLING_DEPS_MYSQL_SOCKET the socket MariaDB's root logs in over (default: the client's own)
#   BILLING_DEPS_REDIS_PORT   Redis port (default 6379)
#   BILLING_DEPS_NATS_PORT    NATS port (default 4222)
#   BILLING_DEPS_NATS_CONF    the configuration of Debian's nats-server service, where JetStream is
#                             switched on when that service answers without it
#                             (default /etc/nats-server.conf)
#   BILLING_DEPS_NATS_STORE   its JetStream store, owned by BILLING_DEPS_NATS_OWNER
#                             (defaults /var/lib/nats-server and nats)
#   BILLING_DEPS_INIT         the init system: systemd, sysv or none (default: what runs)
#   BILLING_DEPS_STATE_DIR    where Redis/NATS started by this script keep data and logs
#                             (default ${XDG_STATE_HOME:-$HOME/.local/state}/billing)
#   BILLING_DEPS_VENV         the virtualenv of the manifest and OpenAPI checks (default
#                             ${XDG_CACHE_HOME:-$HOME/.cache}/billing-service/venv; the tests
#                             deploy/tests/manifests.rs and query-svc/tests/api/openapi.rs
#                             look in the same place)
set -euo pipefail

readonly HOST=127.0.0.1
readonly MYSQL_PORT="${BILLING_DEPS_MYSQL_PORT:-3306}"
readonly MYSQL_SOCKET="${BILLING_DEPS_MYSQL_SOCKET:-}"
readonly NATS_CONF="${BILLING_DEPS_NATS_CONF:-/etc/nats-server.conf}"
readonly NATS_STORE="${BILLING_DEPS_NATS_STORE:-/var/lib/nats-server}"
readonly NATS_OWNER="${BILLING_DEPS_NATS_OWNER:-nats}"
readonly REDIS_PORT="${BILLING_DEPS_REDIS_PORT:-6379}"
readonly NATS_PORT="${BILLING_DEPS_NATS_PORT:-4222}"
readonly STATE_DIR="${BILLING_DEPS_STATE_DIR:-${XDG_STATE_HOME:-${HOME:-/tmp}/.local/state}/billing}"
readonly START_TIMEOUT_SECS=30
readonly VENV_DIR="${BILLING_DEPS_VENV:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/billing-service/venv}"
# The Kubernetes schemas the manifests are validated against come with this package.
readonly KUBERNETES_VALIDATE_VERSION=1.37.0
# query-svc's /openapi.json is validated with this one (deploy/openapi/validate.py).
readonly OPENAPI_SPEC_VALIDATOR_VERSION=0.9.0
# ... and the server is held to it by this one (query-svc/tests/api/openapi.rs).
readonly SCHEMATHESIS_VERSION=4.32.5
# Test databases are named billing_test_<unix seconds>_<hex>; anything older than this is a
# leftover of a run that crashed before it could clean up after itself.
readonly TEST_LEFTOVER_MAX_AGE_SECS=$((6 * 3600))

clean_test_databases=false
test_tools=false
browser=false
bench_tools=false
watch_pid=
while (($# > 0)); do
    arg=$1
    shift
    case "$arg" in
        --clean-test-databases) clean_test_databases=true ;;
        --test-tools) test_tools=true ;;
        --browser) browser=true ;;
        --bench-tools) bench_tools=true ;;
        --watch)
            [[ ${1:-} =~ ^[0-9]+$ ]] || { echo "dev-deps: --watch needs a process id" >&2; exit 2; }
            watch_pid=$1
            shift
            ;;
        -h | --help)
            sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
            exit 0
            ;;
        *)
            echo "dev-deps: unknown argument: $arg (try --help)" >&2
            exit 2
            ;;
    esac
done

die() {
    echo "dev-deps: $*" >&2
    exit 1
}

# Runs a command as root: directly when we are root, else through sudo. Package installs, starting
# MariaDB and the root login to MariaDB (unix_socket authentication on Debian) all need it.
as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root for: $* (run as root or install sudo)"
    fi
}

# True when something accepts TCP connections on 127.0.0.1:<port>. Uses bash's /dev/tcp so that
# no extra tool (nc, ss) is needed on a fresh machine.
port_answers() {
    timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null
}

# The end of a server's log: a file, or `journal:<unit>` for what systemd's journal holds of it.
show_log() {
    local log=$1 unit journalctl
    if [[ $log == journal:* ]]; then
        unit=${log#journal:}
        if journalctl=$(find_binary journalctl); then
            echo "--- journalctl -u $unit (last 30 lines) ---" >&2
            as_root "$journalctl" -u "$unit" -n 30 --no-pager >&2 || true
        fi
    elif [[ -n $log && -r $log ]]; then
        echo "--- last lines of $log ---" >&2
        tail -n 20 "$log" >&2
    fi
}

# Waits until <port> answers. Gives up after START_TIMEOUT_SECS, or at once when the optional
# <pid> (the server just started) has exited, and then shows the end of <log> (see show_log).
wait_for_port() {
    local name=$1 port=$2 log=${3:-} pid=${4:-}
    local deadline=$((SECONDS + START_TIMEOUT_SECS)) problem=
    until port_answers "$port"; do
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
            problem="exited before answering on $HOST:$port"
        elif ((SECONDS >= deadline)); then
            problem="did not answer on $HOST:$port within ${START_TIMEOUT_SECS}s"
        fi
        if [[ -n $problem ]]; then
            echo "dev-deps: $name $problem" >&2
            show_log "$log"
            exit 1
        fi
        sleep 0.5
    done
}

# Finds an executable by name on PATH or in the sbin directories, which are not on a normal
# user's PATH on Debian (mariadbd, nats-server live there).
find_binary() {
    local name dir
    for name in "$@"; do
        if command -v "$name" >/dev/null 2>&1; then
            command -v "$name"
            return 0
        fi
        for dir in /usr/sbin /usr/local/sbin /sbin; do
            if [[ -x $dir/$name ]]; then
                echo "$dir/$name"
                return 0
            fi
        done
    done
    return 1
}

# Installs Debian packages quietly. The package lists of a fresh machine (or a container image)
# are often missing or stale, so a failed install is retried once after `apt-get update`.
apt_install() {
    local log
    log=$(mktemp "${TMPDIR:-/tmp}/dev-deps-apt.XXXXXX")
    echo "dev-deps: installing $* (apt-get)" >&2
    if ! as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "$@" >"$log" 2>&1; then
        if ! { as_root apt-get update &&
            as_root env DEBIAN_FRONTEND=noninteractive \
                apt-get install -y --no-install-recommends "$@"; } >>"$log" 2>&1; then
            tail -n 20 "$log" >&2
            rm -f "$log"
            die "could not install $*"
        fi
    fi
    rm -f "$log"
}

# --- MariaDB ---------------------------------------------------------------------------------

mysql_client() {
    find_binary mariadb mysql
}

# The init system that starts the distribution's services: systemd when it runs (PID 1), else
# the SysV scripts behind `service` when they are there, else none (a container). Looked up where
# Debian installs them (/usr/sbin, not on a normal user's PATH).
init_system() {
    case "${BILLING_DEPS_INIT:-auto}" in
        systemd | sysv | none) echo "$BILLING_DEPS_INIT" ;;
        *)
            if [[ -d /run/systemd/system ]] && find_binary systemctl >/dev/null; then
                echo systemd
            elif [[ -x /etc/init.d/mariadb ]] && find_binary service >/dev/null; then
                echo sysv
            else
                echo none
            fi
            ;;
    esac
}

# Starts MariaDB as the init system expects (so that `systemctl status mariadb` tells the truth);
# without one, the server itself in the background, its error output kept in STATE_DIR. A start
# that fails shows why: the journal, or the server's own output.
start_mariadb() {
    local daemon init output
    if ! daemon=$(find_binary mariadbd mysqld); then
        apt_install mariadb-server
        # The package's post-install script starts the server where a service manager runs.
        port_answers "$MYSQL_PORT" && return 0
        daemon=$(find_binary mariadbd mysqld) || die "mariadb-server installed but mariadbd not found"
    fi
    init=$(init_system)
    case $init in
        systemd)
            echo "dev-deps: starting mariadb with systemctl" >&2
            if ! as_root "$(find_binary systemctl)" start mariadb; then
                echo "dev-deps: systemctl start mariadb failed" >&2
                show_log journal:mariadb
                exit 1
            fi
            wait_for_port mariadb "$MYSQL_PORT" journal:mariadb
            ;;
        sysv)
            echo "dev-deps: starting mariadb with service" >&2
            as_root "$(find_binary service)" mariadb start >&2 ||
                die "service mariadb start failed (see /var/log/mysql/ or the server's output above)"
            wait_for_port mariadb "$MYSQL_PORT" /var/log/mysql/error.log
            ;;
        *)
            mkdir -p "$STATE_DIR"
            output="$STATE_DIR/mariadbd.out"
            # The server writes its socket and pid file there; /run is a tmpfs, so the directory
            # the package created may be gone after a reboot or in a fresh container.
            as_root install -d -o mysql -g mysql -m 0755 /run/mysqld
            echo "dev-deps: starting $daemon (no init system; its output in $output)" >&2
            as_root start-stop-daemon --start --oknodo --background --output "$output" \
                --make-pidfile --pidfile "$STATE_DIR/mariadbd.pid" \
                --exec "$daemon" -- --user=mysql
            wait_for_port mariadb "$MYSQL_PORT" "$output" "$(cat "$STATE_DIR/mariadbd.pid" 2>/dev/null)"
            ;;
    esac
}

# Runs SQL (stdin) as MariaDB's root over the local unix socket. A fresh Debian MariaDB lets root
# in only that way (unix_socket authentication: the OS user must be root).
root_sql() {
    local client
    client=$(mysql_client) || die "no mariadb/mysql client found"
    as_root "$client" --protocol=socket ${MYSQL_SOCKET:+--socket="$MYSQL_SOCKET"} \
        -uroot --batch --skip-column-names "$@"
}

# As the application user over TCP, exactly the way the services and tests connect. The password
# goes through the environment, which spares us the client's warning about -p on the command line.
billing_sql() {
    local client
    client=$(mysql_client) || die "no mariadb/mysql client found"
    MYSQL_PWD=billing "$client" -ubilling -h"$HOST" -P"$MYSQL_PORT" --batch --skip-column-names "$@"
}

# True when the billing user can log in over TCP and already holds both grants, so that the usual
# run needs no root (and no sudo password prompt on every `make test`).
billing_user_ready() {
    local grants
    grants=$(billing_sql --raw -e 'SHOW GRANTS' 2>/dev/null) || return 1
    # shellcheck disable=SC2016 # backticks are SQL quoting here, not command substitution
    grep -qF 'ON `billing`.*' <<<"$grants" && grep -qF 'ON `billing\_test\_%`.*' <<<"$grants"
}

ensure_billing_database() {
    if ! mysql_client >/dev/null; then
        apt_install mariadb-client
    fi
    if ! billing_user_ready; then
        # Least privilege: everything on the service's database and on the per-test databases
        # (billing_test_<unix seconds>_<hex>, created and dropped by the tests), nothing else.
        # Both hosts: with skip-name-resolve a TCP client from 127.0.0.1 does not match
        # 'localhost', while a socket client does.
        root_sql <<'SQL' || die "could not create database/user billing as MariaDB root over the local socket"
CREATE DATABASE IF NOT EXISTS billing CHARACTER SET utf8mb4;
CREATE USER IF NOT EXISTS 'billing'@'localhost' IDENTIFIED BY 'billing';
CREATE USER IF NOT EXISTS 'billing'@'127.0.0.1' IDENTIFIED BY 'billing';
GRANT ALL PRIVILEGES ON billing.* TO 'billing'@'localhost', 'billing'@'127.0.0.1';
GRANT ALL PRIVILEGES ON `billing\_test\_%`.* TO 'billing'@'localhost', 'billing'@'127.0.0.1';
SQL
    fi
    billing_sql -e 'SELECT 1' >/dev/null ||
        die "user billing cannot log in to $HOST:$MYSQL_PORT with password billing (an existing user with another password? fix it or drop the user and run again)"
}

ensure_mariadb() {
    local how=reachable
    if ! port_answers "$MYSQL_PORT"; then
        start_mariadb
        how=started
    fi
    ensure_billing_database
    echo "mariadb: $how on $HOST:$MYSQL_PORT (database billing, user billing)"
}

# --- Redis -----------------------------------------------------------------------------------

ensure_redis() {
    local how="reachable on $HOST:$REDIS_PORT" server
    if ! port_answers "$REDIS_PORT"; then
        if ! server=$(find_binary redis-server); then
            apt_install redis-server
            server=$(find_binary redis-server) || die "redis-server installed but not found"
        fi
        # The package may have started its own instance on the default port.
        if ! port_answers "$REDIS_PORT"; then
            mkdir -p "$STATE_DIR"
            # A cache for development: no snapshots, no append-only file.
            "$server" --daemonize yes --bind "$HOST" --port "$REDIS_PORT" \
                --save "" --appendonly no \
                --dir "$STATE_DIR" \
                --pidfile "$STATE_DIR/redis-$REDIS_PORT.pid" \
                --logfile "$STATE_DIR/redis-$REDIS_PORT.log"
            wait_for_port redis "$REDIS_PORT" "$STATE_DIR/redis-$REDIS_PORT.log"
            how="started on $HOST:$REDIS_PORT (log: $STATE_DIR/redis-$REDIS_PORT.log)"
        fi
    fi
    echo "redis: $how"
}

# --- NATS ------------------------------------------------------------------------------------

# Asks the server on NATS_PORT for JetStream's account information ($JS.API.INFO), in NATS's text
# protocol over bash's /dev/tcp (no client to install). Prints `ok` (JetStream answered), `off`
# (nobody answered: JetStream is not enabled), `auth` (the server wants credentials) or `down`.
# An open port is no proof: Debian's own nats-server service runs without JetStream.
jetstream_state() {
    timeout 10 bash -c '
        exec 3<>"/dev/tcp/$0/$1" 2>/dev/null || { echo down; exit; }
        IFS= read -r -t 3 info <&3 || { echo down; exit; }
        printf "CONNECT {\"verbose\":false,\"headers\":true,\"no_responders\":true}\r\nSUB _INBOX.devdeps 1\r\nPUB \$JS.API.INFO _INBOX.devdeps 0\r\n\r\nPING\r\n" >&3
        while IFS= read -r -t 5 line <&3; do
            case "$line" in
                MSG*)
                    IFS= read -r -t 3 body <&3
                    case "$body" in *\"error\"*) echo off ;; *) echo ok ;; esac
                    exit ;;
                HMSG*) echo off; exit ;;
                -ERR*[Aa]uthoriz*) echo auth; exit ;;
                -ERR*) echo off; exit ;;
            esac
        done
        echo off' "$HOST" "$NATS_PORT" 2>/dev/null || echo down
}

# Whether the server on the port is Debian's own nats-server service (configured by NATS_CONF).
package_nats_answers() {
    case $(init_system) in
        systemd) as_root "$(find_binary systemctl)" is-active --quiet nats-server ;;
        *) pgrep -f -- "nats-server -c $NATS_CONF" >/dev/null 2>&1 ;;
    esac
}

# Switches JetStream on in the package's configuration, with a store owned by the service's user,
# and restarts the service the way the init system does; then asks JetStream again.
enable_package_jetstream() {
    local init
    init=$(init_system)
    [[ $init == systemd || $init == sysv ]] ||
        die "nats on $HOST:$NATS_PORT is the package's server without JetStream, and no init system can restart it: add a jetstream block to $NATS_CONF and restart it"
    if ! grep -qE '^[[:space:]]*jetstream' "$NATS_CONF" 2>/dev/null; then
        echo "dev-deps: enabling JetStream in $NATS_CONF (store $NATS_STORE)" >&2
        as_root install -d -o "$NATS_OWNER" -g "$NATS_OWNER" -m 0750 "$NATS_STORE"
        printf '\n# Added by the billing service'"'"'s deploy/dev-deps.sh: its services need JetStream.\njetstream {\n  store_dir: "%s"\n}\n' \
            "$NATS_STORE" | as_root tee -a "$NATS_CONF" >/dev/null
    fi
    if [[ $init == systemd ]]; then
        as_root "$(find_binary systemctl)" restart nats-server ||
            { show_log journal:nats-server; die "systemctl restart nats-server failed"; }
    else
        as_root "$(find_binary service)" nats-server restart >&2 || die "service nats-server restart failed"
    fi
    wait_for_port nats "$NATS_PORT" journal:nats-server
    local state
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        state=$(jetstream_state)
        [[ $state == ok ]] && return 0
        sleep 0.5
    done
    show_log journal:nats-server
    die "nats on $HOST:$NATS_PORT still answers without JetStream after enabling it in $NATS_CONF"
}

# NATS with JetStream on NATS_PORT: left alone when JetStream answers; the package's service
# without it gets it switched on; another server without it is refused with what to do; nothing
# on the port: one of our own, with JetStream, is started.
ensure_nats() {
    local how server data_dir log state
    state=$(jetstream_state)
    case $state in
        ok) how="reachable on $HOST:$NATS_PORT with JetStream" ;;
        auth) how="reachable on $HOST:$NATS_PORT (it asks for credentials: JetStream not checked; set nats.user/password or nats.token for the services)" ;;
        off)
            package_nats_answers ||
                die "something on $HOST:$NATS_PORT answers as NATS without JetStream, and it is not Debian's nats-server service: run it with -js (or a jetstream block), stop it, or set BILLING_DEPS_NATS_PORT and nats.url to another port"
            enable_package_jetstream
            how="Debian's nats-server service on $HOST:$NATS_PORT, JetStream enabled in $NATS_CONF"
            ;;
        *)
            if ! server=$(find_binary nats-server); then
                apt_install nats-server
                server=$(find_binary nats-server) || die "nats-server installed but not found"
                # The package starts its own service (without JetStream) where an init system runs.
                if [[ $(jetstream_state) != down ]]; then
                    ensure_nats
                    return
                fi
            fi
            # One JetStream store per port, so that a second instance never shares a store.
            data_dir="$STATE_DIR/nats-$NATS_PORT"
            log="$STATE_DIR/nats-$NATS_PORT.log"
            mkdir -p "$data_dir"
            # setsid: in a session of its own, so that a later Ctrl-C in this terminal (make run)
            # or closing it does not take the server down with it. Its standard error goes to
            # the log too: a crash prints only there.
            setsid "$server" -a "$HOST" -p "$NATS_PORT" -js -sd "$data_dir" \
                -l "$log" -P "$STATE_DIR/nats-$NATS_PORT.pid" </dev/null >>"$log" 2>&1 &
            wait_for_port nats "$NATS_PORT" "$log" $!
            [[ $(jetstream_state) == ok ]] || { show_log "$log"; die "the nats-server started on $HOST:$NATS_PORT does not answer JetStream"; }
            how="started on $HOST:$NATS_PORT with JetStream (log: $log)"
            ;;
    esac
    echo "nats: $how"
}

# --- curl: run-all.sh and bench.sh ask the services' /readyz with it ---------------------------

ensure_curl() {
    if ! command -v curl >/dev/null 2>&1; then
        apt_install curl ca-certificates
        command -v curl >/dev/null 2>&1 || die "curl installed but not found"
    fi
}

# --- the manifest and OpenAPI checks: kubectl, kubernetes-validate, openapi-spec-validator ----

ensure_kubectl() {
    local how=found
    if ! command -v kubectl >/dev/null 2>&1; then
        # Debian's kubectl 1.20 (its `kubectl kustomize` is kustomize v2.0.3, which the
        # manifests are written for as well as for v5).
        apt_install kubernetes-client
        command -v kubectl >/dev/null 2>&1 || die "kubernetes-client installed but kubectl not found"
        how=installed
    fi
    echo "kubectl: $how at $(command -v kubectl)"
}

# True when the virtualenv's Python runs and has the pinned kubernetes-validate,
# openapi-spec-validator and schemathesis.
venv_ready() {
    "$VENV_DIR/bin/python" - "$KUBERNETES_VALIDATE_VERSION" "$OPENAPI_SPEC_VALIDATOR_VERSION" \
        "$SCHEMATHESIS_VERSION" >/dev/null 2>&1 <<'PY'
import sys
from importlib.metadata import version
import kubernetes_validate  # noqa: F401
import openapi_spec_validator  # noqa: F401
import schemathesis  # noqa: F401
sys.exit(
    version("kubernetes-validate") != sys.argv[1]
    or version("openapi-spec-validator") != sys.argv[2]
    or version("schemathesis") != sys.argv[3]
)
PY
}

ensure_python_validators() {
    local how=present log
    if ! venv_ready; then
        # python3-venv brings ensurepip, without which Debian's python3 cannot make a venv.
        if ! command -v python3 >/dev/null 2>&1; then
            apt_install python3 python3-venv
        elif ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
            apt_install python3-venv
        fi
        log=$(mktemp "${TMPDIR:-/tmp}/dev-deps-venv.XXXXXX")
        # --clear: a venv whose Python is gone (an upgraded system Python) is made anew.
        if ! { python3 -m venv --clear "$VENV_DIR" &&
            "$VENV_DIR/bin/python" -m pip install --quiet --disable-pip-version-check \
                "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
                "openapi-spec-validator==$OPENAPI_SPEC_VALIDATOR_VERSION" \
                "schemathesis==$SCHEMATHESIS_VERSION"; } >"$log" 2>&1; then
            tail -n 20 "$log" >&2
            rm -f "$log"
            die "could not install kubernetes-validate==$KUBERNETES_VALIDATE_VERSION, openapi-spec-validator==$OPENAPI_SPEC_VALIDATOR_VERSION and schemathesis==$SCHEMATHESIS_VERSION into $VENV_DIR"
        fi
        rm -f "$log"
        venv_ready || die "kubernetes-validate, openapi-spec-validator and schemathesis installed into $VENV_DIR but not importable"
        how=installed
    fi
    echo "kubernetes-validate: $KUBERNETES_VALIDATE_VERSION $how in $VENV_DIR"
    echo "openapi-spec-validator: $OPENAPI_SPEC_VALIDATOR_VERSION $how in $VENV_DIR"
    echo "schemathesis: $SCHEMATHESIS_VERSION $how in $VENV_DIR"
}

# --- watching the servers while the tests run -------------------------------------------------

# The command line of the process listening as nats-server on NATS_PORT, NUL-separated, if any.
nats_command_line() {
    local pid
    for pid in $(pgrep -x nats-server 2>/dev/null); do
        if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qE -- "(-p|--port)[ =]$NATS_PORT( |$)"; then
            cat "/proc/$pid/cmdline"
            return 0
        fi
    done
    return 1
}

# What can be learnt of a server that stopped answering: its processes and the kernel's messages
# (an out-of-memory kill shows there).
report_stopped() {
    local name=$1 port=$2
    echo "dev-deps: $name stopped answering on $HOST:$port at $(date -u +%FT%TZ); restarting it" >&2
    echo "dev-deps: $name processes now: $(pgrep -a "$3" 2>/dev/null | tr '\n' ';' || true)" >&2
    if dmesg >/dev/null 2>&1; then
        echo "--- the kernel's last messages ---" >&2
        dmesg 2>/dev/null | tail -n 5 >&2
    fi
}

# Starts NATS again with the command line it had (same port and JetStream store), its output kept
# in STATE_DIR; without one, the way ensure_nats starts it.
restart_nats() {
    local -a command=()
    if [[ -s $STATE_DIR/watched-nats.cmdline ]]; then
        mapfile -d '' command <"$STATE_DIR/watched-nats.cmdline"
    fi
    if ((${#command[@]} > 0)); then
        setsid "${command[@]}" </dev/null >>"$STATE_DIR/nats-restarted.out" 2>&1 &
        wait_for_port nats "$NATS_PORT" "$STATE_DIR/nats-restarted.out" $!
        echo "dev-deps: nats started again: ${command[*]}" >&2
    else
        ensure_nats >&2
    fi
}

# Every second while process <pid> lives: each server that stopped answering is reported and
# started again, so that one lost server does not fail every test after it.
watch_servers() {
    local pid=$1
    mkdir -p "$STATE_DIR"
    nats_command_line >"$STATE_DIR/watched-nats.cmdline" || : >"$STATE_DIR/watched-nats.cmdline"
    while kill -0 "$pid" 2>/dev/null; do
        if ! port_answers "$NATS_PORT"; then
            report_stopped nats "$NATS_PORT" nats-server
            restart_nats
        fi
        if ! port_answers "$REDIS_PORT"; then
            report_stopped redis "$REDIS_PORT" redis-server
            ensure_redis >&2
        fi
        if ! port_answers "$MYSQL_PORT"; then
            report_stopped mariadb "$MYSQL_PORT" mariadbd
            ensure_mariadb >&2
        fi
        sleep 1
    done
}

# --- the console's browser tests: Chromium, Node.js, playwright-core, axe-core ---------------

readonly CONSOLE_E2E_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/query-svc/console/e2e"

# The packages the browser tests run with (playwright-core, axe-core), as "name@version" per
# line: the versions the lock file pins, and the ones installed (a package missing shows no
# version), so a missing or different package has them installed again.
readonly CONSOLE_E2E_PACKAGES="axe-core playwright-core"
console_packages_wanted() {
    node -e 'const lock = require(process.argv[1]);
        for (const name of process.argv.slice(2)) console.log(`${name}@${lock.packages[`node_modules/${name}`].version}`)' \
        "$CONSOLE_E2E_DIR/package-lock.json" $CONSOLE_E2E_PACKAGES
}
console_packages_installed() {
    local name version
    for name in $CONSOLE_E2E_PACKAGES; do
        version=$(node -e 'console.log(require(process.argv[1]).version)' \
            "$CONSOLE_E2E_DIR/node_modules/$name/package.json" 2>/dev/null || true)
        echo "$name@$version"
    done
}

ensure_console_browser() {
    local how=found log
    if ! command -v chromium >/dev/null 2>&1; then
        apt_install chromium
        command -v chromium >/dev/null 2>&1 || die "chromium installed but not found"
        how=installed
    fi
    echo "chromium: $how at $(command -v chromium)"
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        apt_install nodejs npm
        command -v node >/dev/null 2>&1 || die "nodejs installed but node not found"
    fi
    how=present
    if [[ $(console_packages_installed) != "$(console_packages_wanted)" ]]; then
        log=$(mktemp "${TMPDIR:-/tmp}/dev-deps-npm.XXXXXX")
        # playwright-core brings no browser of its own: the tests launch Debian's chromium.
        if ! (cd "$CONSOLE_E2E_DIR" && npm ci --no-audit --no-fund) >"$log" 2>&1; then
            tail -n 20 "$log" >&2
            rm -f "$log"
            die "could not install the console tests' packages (npm ci in $CONSOLE_E2E_DIR)"
        fi
        rm -f "$log"
        how=installed
    fi
    echo "console test packages: $(console_packages_installed | tr '\n' ' ')$how in $CONSOLE_E2E_DIR/node_modules"
}

# --- the hot-path benchmark's yardstick: sysbench --------------------------------------------

ensure_sysbench() {
    local how=found
    if ! command -v sysbench >/dev/null 2>&1; then
        # Debian's build speaks MySQL's protocol (libmariadb) and runs Lua scripts.
        apt_install sysbench
        command -v sysbench >/dev/null 2>&1 || die "sysbench installed but not found"
        how=installed
    fi
    echo "sysbench: $how at $(command -v sysbench)"
}

# --- leftovers of crashed test runs ----------------------------------------------------------

# Uses root over the socket when that needs no password (root, or passwordless sudo); otherwise
# the billing user, which may drop these databases too thanks to its billing\_test\_% grant.
leftover_sql() {
    if [[ $EUID -eq 0 ]] || sudo -n true >/dev/null 2>&1; then
        root_sql "$@"
    else
        billing_sql "$@"
    fi
}

clean_test_leftovers() {
    local now name names stamp dropped=0 dirs=0
    now=$(date +%s)
    names=$(leftover_sql -e "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE 'billing\\_test\\_%'")
    while read -r name; do
        # Only names carrying a timestamp; anything else is not ours to judge.
        [[ $name =~ ^billing_test_([0-9]+)_[0-9a-fA-F]+$ ]] || continue
        stamp=${BASH_REMATCH[1]}
        if ((now - stamp > TEST_LEFTOVER_MAX_AGE_SECS)); then
            leftover_sql -e "DROP DATABASE IF EXISTS \`$name\`"
            dropped=$((dropped + 1))
        fi
    done <<<"$names"

    local tmp="${TMPDIR:-/tmp}"
    while IFS= read -r -d '' dir; do
        rm -rf -- "$dir"
        dirs=$((dirs + 1))
    done < <(find "$tmp" -mindepth 1 -maxdepth 1 -type d -name 'billing-test-*' \
        -user "$(id -u)" -mmin +$((TEST_LEFTOVER_MAX_AGE_SECS / 60)) -print0 2>/dev/null)

    echo "tests: removed $dropped stale test database(s) and $dirs temp dir(s) older than 6h"
}

ensure_curl
ensure_mariadb
ensure_redis
ensure_nats
# Before the tools, so that a tool that cannot be installed (PyPI out of reach) never keeps the
# leftovers of crashed runs.
if $clean_test_databases; then
    clean_test_leftovers
fi
if $test_tools; then
    ensure_kubectl
    ensure_python_validators
fi
if $browser; then
    ensure_console_browser
fi
if $bench_tools; then
    ensure_sysbench
fi
if [[ -n $watch_pid ]]; then
    watch_servers "$watch_pid"
fi
