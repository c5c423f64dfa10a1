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

# free_port: prints a TCP port on 127.0.0.1 that nothing listens on now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
