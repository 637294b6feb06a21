#!/usr/bin/env bash
# portwatch: a whole local deployment on one machine, in one command.
#
#   deploy/local.sh            build, start, run the demo, then stream live events until Ctrl-C
#   deploy/local.sh --smoke    the same scenario non-interactively; exit 0 when it passed, 1 if not
#   deploy/local.sh --cluster  the same on a private PostgreSQL with three coordinators, then
#                              kills the active coordinator and shows monitoring going on
#
# What it does (everything on loopback, state in a temp dir that is removed at exit):
#   1. builds the workspace binaries (debug profile: about half the time of release),
#   2. writes a development CA and certificates (`portwatch dev-certs`),
#   3. starts a coordinator (embedded sled store, TLS, 127.0.0.1, random port),
#   4. with the CLI, creates a demo tenant, three PRIVATE regions it owns (so their
#      agents may probe loopback) and an agent token per region,
#   5. starts three agents (allow_private_targets = true), one per region,
#   6. opens three local TCP ports (`portwatch dev-listen`) and applies a monitors
#      file against them (2 s interval, 1 s timeout),
#   7. shows checks from all three regions (`portwatch status`), closes one port so
#      a consensus incident opens (`portwatch incidents --open`), reopens it so the
#      incident closes.
# With --cluster, step 3 starts a private PostgreSQL server instead (the distribution's
# `postgresql` package: PostgreSQL's initdb/pg_ctl, run as the `postgres` user when root) and
# three coordinators sharing it (one active, two standbys); agents know all three addresses.
# After step 7 the active coordinator is killed (SIGKILL): a standby takes over, the agents
# move to it, and a port closed afterwards still opens an incident.
# Ctrl-C (or any exit) stops every process it started and removes the temp dir.
#
# Options:
#   --smoke, --ci      non-interactive: assert each step, exit 0/1
#   --cluster          three coordinators on a private PostgreSQL (PORTWATCH_PG_BIN: the
#                      directory of initdb and pg_ctl, when not under /usr/lib/postgresql)
#   --bin-dir DIR      use prebuilt binaries from DIR (skips the build)
#   --no-build         use target/debug as it is
#   --keep             keep the temp dir (logs, data) after exit
#   -h, --help         this text
set -euo pipefail

MODE=interactive
CLUSTER=0
BUILD=1
BIN_DIR=""
KEEP=0
WAIT_SECS=40

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --smoke | --ci) MODE=smoke ;;
        --cluster) CLUSTER=1 ;;
        --bin-dir)
            [ $# -ge 2 ] || { echo "local.sh: --bin-dir needs a directory" >&2; exit 2; }
            BIN_DIR=$2
            BUILD=0
            shift
            ;;
        --no-build) BUILD=0 ;;
        --keep) KEEP=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "local.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [ "$BUILD" = 1 ]; then
    echo "==> building (cargo build --workspace --bins, debug profile)"
    (cd "$ROOT" && cargo build --workspace --bins)
fi
BIN_DIR=${BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/debug}
for b in portwatch portwatch-coordinator portwatch-agent; do
    [ -x "$BIN_DIR/$b" ] || { echo "local.sh: $BIN_DIR/$b not found; build first or pass --bin-dir" >&2; exit 2; }
done
# Absolute, so the PATH line printed for a second shell works from any directory.
BIN_DIR=$(cd "$BIN_DIR" && pwd)
PW="$BIN_DIR/portwatch"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/portwatch-local.XXXXXX")
PIDS=()
PG_DATA=""

# Stops everything this script started: SIGTERM (graceful), then SIGKILL after 5 s.
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ ${#PIDS[@]} -gt 0 ]; then
        echo "==> stopping ${#PIDS[@]} processes"
        kill -TERM "${PIDS[@]}" 2>/dev/null || true
        for _ in $(seq 50); do
            local alive=0
            for pid in "${PIDS[@]}"; do
                if kill -0 "$pid" 2>/dev/null; then alive=1; fi
            done
            [ "$alive" = 0 ] && break
            sleep 0.1
        done
        kill -KILL "${PIDS[@]}" 2>/dev/null || true
        wait 2>/dev/null || true
    fi
    if [ -n "$PG_DATA" ]; then
        echo "==> stopping PostgreSQL"
        pg pg_ctl stop -D "$PG_DATA" -m fast -w -t 30 >/dev/null 2>&1 || true
    fi
    if [ "$KEEP" = 1 ]; then
        echo "==> kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step() { echo; echo "==> $*"; }

fail() {
    echo "local.sh: FAILED: $*" >&2
    for log in "$WORK"/*.log; do
        [ -f "$log" ] || continue
        echo "--- last lines of $(basename "$log")" >&2
        tail -n 15 "$log" >&2
    done
    exit 1
}

# The value of a string field in the CLI's JSON output (first match).
json_str() { sed -n "s/.*\"$1\": *\"\([^\"]*\)\".*/\1/p" | head -n 1; }

# Waits for a line matching $2 in file $1 (process $3 must stay alive); prints it.
wait_line() {
    local file=$1 pattern=$2 pid=$3
    for _ in $(seq 200); do
        if grep -q "$pattern" "$file" 2>/dev/null; then
            grep -m 1 "$pattern" "$file"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || fail "$(basename "$file" .out) exited before printing \"$pattern\""
        sleep 0.1
    done
    fail "no \"$pattern\" in $file within 20 s"
}

# Repeats the shell condition "$@" every 0.5 s until it holds or WAIT_SECS pass.
wait_until() {
    local what=$1
    shift
    local deadline=$((SECONDS + WAIT_SECS))
    while [ $SECONDS -lt $deadline ]; do
        if "$@"; then
            echo "    ok: $what"
            return 0
        fi
        sleep 0.5
    done
    fail "$what: not true within ${WAIT_SECS}s"
}

# Starts a background process; its stdout goes to $WORK/NAME.out, stderr to NAME.log.
start() {
    local name=$1
    shift
    "$@" >"$WORK/$name.out" 2>"$WORK/$name.log" &
    PIDS+=($!)
    LAST_PID=$!
}

step "development certificates"
"$PW" dev-certs --out "$WORK/certs" >/dev/null
echo "    $WORK/certs: ca.pem, server.pem/key, client.pem/key"

OPERATOR_TOKEN="op-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
# The configuration every coordinator shares; $1: its store keys.
coordinator_config() {
    cat <<EOF
listen = "127.0.0.1:0"
$1
operator_token = "$OPERATOR_TOKEN"
tls_cert = "$WORK/certs/server.pem"
tls_key = "$WORK/certs/server.key"
heartbeat_interval = "1s"
heartbeat_timeout = "3s"
evaluate_every = "250ms"
log = "warn,portwatch_coordinator=info"

# The demo tenant's plan, made fast enough for a one-minute demo.
[plans.enterprise]
port_monitors = true
max_monitors = 100
min_interval = "1s"
EOF
}

# Runs one of PostgreSQL's programs ($1), as the postgres user when root (initdb refuses root).
pg() {
    local prog=$PG_BIN/$1
    shift
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$prog" "$@"
    else
        "$prog" "$@"
    fi
}

# A loopback port nobody answers on.
free_port() {
    local p
    for _ in $(seq 50); do
        p=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    fail "no free port"
}

COORD_ADDRS=()
COORD_PIDS=()
if [ "$CLUSTER" = 1 ]; then
    step "PostgreSQL (a private server in $WORK/pg, on 127.0.0.1)"
    PG_BIN=${PORTWATCH_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
    [ -n "$PG_BIN" ] && [ -x "$PG_BIN/initdb" ] ||
        fail "PostgreSQL's server programs are not installed: apt-get install postgresql (or set PORTWATCH_PG_BIN)"
    mkdir -p "$WORK/pg"
    PG_PASSWORD="pw-$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')"
    printf '%s\n' "$PG_PASSWORD" >"$WORK/pg/pwfile"
    (umask 077 && printf '%s\n' "$PG_PASSWORD" >"$WORK/postgres-password")
    if [ "$(id -u)" = 0 ]; then
        id postgres >/dev/null 2>&1 || fail "no postgres user (the postgresql package creates it)"
        chown -R postgres "$WORK/pg"
        chmod 755 "$WORK"
        runuser -u postgres -- test -x "$WORK/pg" ||
            fail "the postgres user cannot reach $WORK (a parent directory is private): set TMPDIR to a directory it can reach"
    fi
    pg initdb -D "$WORK/pg/data" -U portwatch -E UTF8 --auth-local=trust \
        --auth-host=scram-sha-256 --pwfile="$WORK/pg/pwfile" >"$WORK/initdb.log" 2>&1 ||
        fail "initdb (see $WORK/initdb.log)"
    PG_PORT=$(free_port)
    pg pg_ctl -D "$WORK/pg/data" -o "-p $PG_PORT -k $WORK/pg -c listen_addresses=127.0.0.1" \
        -l "$WORK/pg/log" -w -t 60 start >"$WORK/pg_ctl.log" 2>&1 || fail "pg_ctl start"
    PG_DATA="$WORK/pg/data"
    echo "    postgres://portwatch@127.0.0.1:$PG_PORT/postgres"

    step "three coordinators on it (one takes the active lease, two stand by)"
    for c in a b c; do
        coordinator_config "store = \"postgres\"
postgres_url = \"postgres://portwatch@127.0.0.1:$PG_PORT/postgres\"
postgres_password_file = \"$WORK/postgres-password\"
coordinator_id = \"coord-$c\"
lease_ttl = \"3s\"" >"$WORK/coordinator-$c.toml"
        start "coordinator-$c" "$BIN_DIR/portwatch-coordinator" --config "$WORK/coordinator-$c.toml"
        COORD_PIDS+=("$LAST_PID")
        LINE=$(wait_line "$WORK/coordinator-$c.out" "listening on https://" "$LAST_PID")
        COORD_ADDRS+=("${LINE##*https://}")
        echo "    coord-$c listening on https://${LINE##*https://}"
    done
    ADDR=${COORD_ADDRS[0]}
else
    step "coordinator (sled in $WORK/coordinator-data, TLS on 127.0.0.1)"
    coordinator_config "data_dir = \"$WORK/coordinator-data\"" >"$WORK/coordinator.toml"
    start coordinator "$BIN_DIR/portwatch-coordinator" --config "$WORK/coordinator.toml"
    COORD_PID=$LAST_PID
    LINE=$(wait_line "$WORK/coordinator.out" "listening on https://" "$COORD_PID")
    ADDR=${LINE##*https://}
    COORD_ADDRS=("$ADDR")
    COORD_PIDS=("$COORD_PID")
    echo "    listening on https://$ADDR"
fi

export PORTWATCH_ADDR="https://$ADDR"
export PORTWATCH_CA="$WORK/certs/ca.pem"
export PORTWATCH_TLS_SERVER_NAME=localhost
export PORTWATCH_TOKEN="$OPERATOR_TOKEN"
unset PORTWATCH_TENANT PORTWATCH_OUTPUT

step "demo tenant, three private regions, agent tokens (as the operator)"
TENANT_JSON=$("$PW" -o json tenant add demo --name "Demo tenant" --plan enterprise) ||
    fail "tenant add"
TENANT_TOKEN=$(printf '%s\n' "$TENANT_JSON" | json_str token)
[ -n "$TENANT_TOKEN" ] || fail "no tenant token in: $TENANT_JSON"
REGIONS=(local-a local-b local-c)
for r in "${REGIONS[@]}"; do
    "$PW" region add "$r" --owner demo --description "demo region $r" || fail "region add $r"
    mkdir -p "$WORK/agent-$r"
    TOKEN=$("$PW" -o json agent-token create "$r" --description "local.sh" | json_str token)
    [ -n "$TOKEN" ] || fail "no agent token for $r"
    (umask 077 && printf '%s\n' "$TOKEN" >"$WORK/agent-$r/token")
done

step "three agents, one per region (allow_private_targets = true)"
for r in "${REGIONS[@]}"; do
    LIST=$(printf '"https://%s", ' "${COORD_ADDRS[@]}")
    cat >"$WORK/agent-$r/agent.toml" <<EOF
coordinator = [${LIST%, }]
token_file = "$WORK/agent-$r/token"
ca = "$WORK/certs/ca.pem"
tls_server_name = "localhost"
data_dir = "$WORK/agent-$r/spool"
agent_id = "demo-$r"
allow_private_targets = true
private_allow = ["127.0.0.0/8"]
batch_wait = "50ms"
log = "warn"
EOF
    start "agent-$r" "$BIN_DIR/portwatch-agent" run --config "$WORK/agent-$r/agent.toml"
    wait_line "$WORK/agent-$r.out" "running" "$LAST_PID" >/dev/null
    echo "    agent demo-$r running"
done

step "local target ports (portwatch dev-listen)"
declare -A PORT LISTENER
for t in web db cache; do
    start "listen-$t" "$PW" dev-listen 0
    LISTENER[$t]=$LAST_PID
    LINE=$(wait_line "$WORK/listen-$t.out" "listening on" "$LAST_PID")
    PORT[$t]=${LINE##*:}
    echo "    $t on 127.0.0.1:${PORT[$t]}"
done

step "monitors as code (portwatch apply, as the tenant)"
export PORTWATCH_TOKEN="$TENANT_TOKEN"
{
    for t in web db cache; do
        cat <<EOF
[[monitor]]
name = "$t"
host = "127.0.0.1"
port = ${PORT[$t]}
regions = ["local-a", "local-b", "local-c"]
interval = "2s"
timeout = "1s"

EOF
    done
} >"$WORK/monitors.toml"
"$PW" apply -f "$WORK/monitors.toml" || fail "apply"

all_up() {
    local s
    s=$("$PW" -o json status 2>/dev/null) || return 1
    [ "$(printf '%s\n' "$s" | grep -c '"overall": "up"')" -eq 3 ] &&
        [ "$(printf '%s\n' "$s" | grep -c '"state": "up"')" -eq 9 ]
}
db_incident_open() {
    "$PW" -o json incidents --open 2>/dev/null | grep -q '"monitor_name": "db"'
}
no_open_incident() {
    local s
    s=$("$PW" -o json incidents --open 2>/dev/null) || return 1
    [ "$(printf '%s' "$s" | tr -d ' \n')" = "[]" ] &&
        "$PW" -o json incidents 2>/dev/null | grep -q '"open": false'
}

step "waiting for checks from all three regions"
wait_until "every monitor up from all three regions" all_up
"$PW" status
echo
"$PW" monitor show web

step "closing the db port: the regions see 'Connection refused', consensus opens an incident"
kill -TERM "${LISTENER[db]}"
wait "${LISTENER[db]}" 2>/dev/null || true
wait_until "an open incident for db" db_incident_open
"$PW" incidents --open
echo
"$PW" status

step "reopening the db port: every region up again closes the incident"
start "listen-db-again" "$PW" dev-listen "${PORT[db]}"
wait_line "$WORK/listen-db-again.out" "listening on" "$LAST_PID" >/dev/null
wait_until "the db incident closed" no_open_incident
"$PW" incidents

# The coordinator that answers the admin API: the active one (standbys refuse).
answering() {
    local a
    for a in "${COORD_ADDRS[@]}"; do
        if PORTWATCH_ADDR="https://$a" "$PW" -o json status >/dev/null 2>&1; then
            echo "$a"
            return 0
        fi
    done
    return 1
}
# True once a coordinator other than $1 answers; points the CLI at it.
active_moved() {
    local a
    a=$(answering) || return 1
    [ "$a" != "$1" ] || return 1
    export PORTWATCH_ADDR="https://$a"
}
cache_incident_open() {
    "$PW" -o json incidents --open 2>/dev/null | grep -q '"monitor_name": "cache"'
}

if [ "$CLUSTER" = 1 ]; then
    wait_until "every monitor up again" all_up
    ACTIVE=$(answering) || fail "no coordinator answers"
    VICTIM=0
    for i in "${!COORD_ADDRS[@]}"; do
        if [ "${COORD_ADDRS[$i]}" = "$ACTIVE" ]; then VICTIM=$i; fi
    done
    step "killing the active coordinator (https://$ACTIVE, SIGKILL): a standby takes over"
    kill -KILL "${COORD_PIDS[$VICTIM]}"
    wait "${COORD_PIDS[$VICTIM]}" 2>/dev/null || true
    wait_until "another coordinator active and answering" active_moved "$ACTIVE"
    echo "    now active: $PORTWATCH_ADDR"
    wait_until "every monitor up, seen by the new active coordinator" all_up
    "$PW" status

    step "closing the cache port: the new active coordinator opens the incident"
    kill -TERM "${LISTENER[cache]}"
    wait "${LISTENER[cache]}" 2>/dev/null || true
    wait_until "an open incident for cache" cache_incident_open
    "$PW" incidents --open
    start "listen-cache-again" "$PW" dev-listen "${PORT[cache]}"
    wait_line "$WORK/listen-cache-again.out" "listening on" "$LAST_PID" >/dev/null
fi

if [ "$MODE" = smoke ]; then
    wait_until "every monitor up again" all_up
    echo
    if [ "$CLUSTER" = 1 ]; then
        echo "SMOKE OK: three coordinators on PostgreSQL; the active one killed, monitoring went on"
    else
        echo "SMOKE OK: checks from all three regions, incident opened and closed"
    fi
    exit 0
fi

cat <<EOF

==> the deployment keeps running; in another shell (the first line puts the CLI on PATH):
    export PATH=$(printf '%q' "$BIN_DIR"):\$PATH
    export PORTWATCH_ADDR=$PORTWATCH_ADDR
    export PORTWATCH_CA=$(printf '%q' "$PORTWATCH_CA") PORTWATCH_TLS_SERVER_NAME=localhost
    export PORTWATCH_TOKEN=$TENANT_TOKEN
    portwatch status; portwatch monitor show db; portwatch results db --since 5m
    (operator token: $OPERATOR_TOKEN; logs in $WORK)
==> live events below; Ctrl-C stops everything
EOF
# In the background so that `wait` returns at once on a signal and the trap runs
# even when the signal was sent to this script alone (kill, a supervisor).
"$PW" watch &
PIDS+=($!)
wait $! || true
