# shellcheck shell=bash
# Shared helpers for hack/ scripts (sourced, not run).

log() { echo "${0##*/}: $*" >&2; }
die() { log "$*"; exit 1; }

# apt_install PKG...: installs Debian packages when a command is missing (CI machines may be new).
apt_install() {
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  log "installing $* with apt-get"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || true
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

# need CMD [PKG]: makes sure CMD exists, installing PKG (default CMD) with apt when it does not.
need() {
  command -v "$1" >/dev/null 2>&1 || apt_install "${2:-$1}"
}

# need_all CMD[:PKG]...: like need for several commands, with one apt-get run for what is missing.
need_all() {
  local pair missing=()
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
}

# free_port: prints a TCP port on 127.0.0.1 that nothing listens on now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Daemons of a stack (hack/test-env, hack/cluster): the caller sets $STATE; each daemon NAME keeps
# its pid in $STATE/NAME.pid and its output in $STATE/logs/NAME.log.

# proc_alive PID: the process exists and is not a zombie (orphaned daemons are reaped by PID 1,
# which may take a moment; kill -0 alone would call them alive until then).
proc_alive() { kill -0 "$1" 2>/dev/null && [ "$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)" != Z ]; }

pid_alive() { [ -f "$STATE/$1.pid" ] && proc_alive "$(cat "$STATE/$1.pid")"; }

# wait_for NAME SECONDS CMD...: polls CMD until it succeeds; on timeout shows NAME's log.
wait_for() {
  local name=$1 secs=$2
  shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ] || ! pid_alive "$name"; then
      log "$name did not become ready in ${secs}s; last lines of $STATE/logs/$name.log:"
      tail -n 30 "$STATE/logs/$name.log" >&2 || true
      return 1
    fi
    sleep 0.2
  done
}

# start NAME CMD...: runs CMD detached (own session, no inherited stdout, so `$(… up)` returns)
# with its output in logs/NAME.log.
start() {
  local name=$1
  shift
  setsid "$@" </dev/null >"$STATE/logs/$name.log" 2>&1 9>&- &
  echo $! >"$STATE/$name.pid"
}

# stop NAME...: TERM the daemons' process groups (each was started in its own session) all at
# once, wait up to 5 s for them, KILL what is left. Postgres gets SIGINT, its fast shutdown
# (SIGTERM would wait for every client to disconnect).
stop() {
  local name pid sig pids=()
  for name in "$@"; do
    pid_alive "$name" || continue
    pid=$(cat "$STATE/$name.pid")
    pids+=("$pid")
    sig=TERM
    [ "$name" != postgres ] || sig=INT
    kill -"$sig" -- "-$pid" 2>/dev/null || kill -"$sig" "$pid" 2>/dev/null || true
  done
  [ ${#pids[@]} -gt 0 ] || return 0
  local _ alive
  for _ in $(seq 50); do
    alive=0
    for pid in "${pids[@]}"; do proc_alive "$pid" && alive=1; done
    [ $alive = 1 ] || break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
}

# pg_bindir: the newest installed PostgreSQL's bin directory (installing PostgreSQL if none).
pg_bindir() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$dir" ]; then
    apt_install postgresql
    dir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  fi
  echo "$dir"
}

# Postgres refuses to run as root, so as root it runs as the postgres user.
AS_PG=()
if [ "$(id -u)" = 0 ]; then
  AS_PG=(runuser -u postgres --)
fi

# start_postgres BINDIR PORT PASSWORD [LISTEN_ADDRESSES [HBA_LINE...]]: a throwaway Postgres in
# $STATE/postgres (user postgres, scram-sha-256), listening on LISTEN_ADDRESSES (default
# 127.0.0.1); each HBA_LINE is appended to pg_hba.conf (initdb only allows loopback clients).
start_postgres() {
  local bindir=$1 port=$2 password=$3 listen=${4:-127.0.0.1} pg=$STATE/postgres
  shift 3
  [ $# -gt 0 ] && shift
  mkdir -p "$pg"
  printf '%s\n' "$password" >"$pg/pwfile"
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql postgres
    chown -R postgres "$pg"
  fi
  "${AS_PG[@]}" "$bindir/initdb" -D "$pg/data" -U postgres --auth=scram-sha-256 --pwfile="$pg/pwfile" \
    -E UTF8 --locale=C.UTF-8 >"$STATE/logs/initdb.log" 2>&1 ||
    { tail -n 20 "$STATE/logs/initdb.log" >&2; die "initdb failed"; }
  rm -f "$pg/pwfile"
  local line
  for line in "$@"; do echo "$line" >>"$pg/data/pg_hba.conf"; done
  # Durability settings are off: this database is thrown away with the stack.
  start postgres "${AS_PG[@]}" "$bindir/postgres" -D "$pg/data" -p "$port" -k "$pg" \
    -c listen_addresses="$listen" -c max_connections=300 -c fsync=off \
    -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=128MB
  wait_for postgres 60 "$bindir/pg_isready" -q -h "${listen%%,*}" -p "$port"
}
