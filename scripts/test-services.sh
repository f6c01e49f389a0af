#!/usr/bin/env bash
# Make sure the servers the tests talk to answer: PostgreSQL and Redis on loopback.
#
# Where one already answers (this machine kind starts them before each session) nothing is done. On a
# fresh machine where none does, a private throwaway instance is started (installing Debian's server
# package first if it is missing): PostgreSQL with trust auth for the user postgres, Redis keeping
# nothing on disk. Ports: WINBACK_TEST_PG_PORT (5432) and WINBACK_TEST_REDIS_PORT (6379).
set -euo pipefail

PG_PORT="${WINBACK_TEST_PG_PORT:-5432}"
REDIS_PORT="${WINBACK_TEST_REDIS_PORT:-6379}"
STATE="${WINBACK_TEST_SERVICES_DIR:-/tmp/winback-test-services}"

answers() {  # host port: whether something accepts TCP connections there
    python3 -c "import socket,sys; s=socket.socket(); s.settimeout(1); sys.exit(s.connect_ex(('$1', $2)))"
}

apt_install() {
    echo "installing $* (apt-get)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! answers 127.0.0.1 "$PG_PORT"; then
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
    if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
        apt_install postgresql
        bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    fi
    data="$STATE/pg-$PG_PORT"
    mkdir -p "$STATE"
    run_as=()
    if [ "$(id -u)" = 0 ]; then  # PostgreSQL refuses to run as root
        id postgres >/dev/null 2>&1 || useradd --system --home-dir "$STATE" postgres
        chown postgres "$STATE"
        run_as=(runuser -u postgres --)
    fi
    if [ ! -s "$data/PG_VERSION" ]; then
        "${run_as[@]}" "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 >/dev/null
    fi
    echo "starting a private PostgreSQL on 127.0.0.1:$PG_PORT ($data)" >&2
    "${run_as[@]}" "$bin/pg_ctl" -D "$data" -l "$data.log" -w \
        -o "-p $PG_PORT -k $STATE -c listen_addresses=127.0.0.1" start >/dev/null
    for db in test root; do
        "${run_as[@]}" "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE DATABASE $db" postgres \
            2>/dev/null || true
    done
fi

if ! answers 127.0.0.1 "$REDIS_PORT"; then
    command -v redis-server >/dev/null || apt_install redis-server
    echo "starting a private Redis on 127.0.0.1:$REDIS_PORT" >&2
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
        --dir /tmp --logfile "$STATE/redis-$REDIS_PORT.log" >/dev/null
    for _ in $(seq 50); do answers 127.0.0.1 "$REDIS_PORT" && break; sleep 0.1; done
fi
