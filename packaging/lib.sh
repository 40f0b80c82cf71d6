# Shell helpers shared by packaging/check.sh, packaging/cross-build.sh and
# packaging/vm-check.sh (sourced; each script defines its own `die` and `info`).

# free_port: a TCP port nothing listens on, from 20000-49999.
free_port() {
  local p
  for _ in $(seq 50); do
    p=$((20000 + RANDOM % 30000))
    [[ -z $(ss -Hltn "sport = :$p" 2>/dev/null) ]] && { echo "$p"; return; }
  done
  die "no free TCP port found on 127.0.0.1"
}

# wait_for <seconds> <test command...>: runs the command every 0.2 s until it
# succeeds (0) or the time is up (1).
wait_for() {
  local end=$((SECONDS + $1)); shift
  until "$@"; do
    (( SECONDS < end )) || return 1
    sleep 0.2
  done
}

# ensure_cargo_deb [cargo install flags...]: installs the cargo-deb the
# packaging is written for when none is on the PATH (check.sh and vm-check.sh
# each work alone on a fresh machine).
CARGO_DEB_VERSION=${CARGO_DEB_VERSION:-3.8.0}
ensure_cargo_deb() {
  command -v cargo-deb >/dev/null && return
  info "cargo install cargo-deb --version $CARGO_DEB_VERSION --locked $*"
  cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked "$@"
}
