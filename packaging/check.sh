#!/usr/bin/env bash
# CI step for packaging (issue 6): the Debian package, the systemd unit, the
# ARM builds. Run as root on Debian bookworm (x86-64), from anywhere:
#
#   packaging/check.sh
#
# Steps, in order (each prints what it checked, in figures, and the summary
# at the end lists them all):
#   tools        apt-get install what is missing (lintian, debootstrap, dpkg-dev,
#                file, systemd for systemd-analyze); cargo install cargo-deb 3.8.0
#   deb          packaging/build-deb.sh: cargo build --release --locked + cargo-deb
#   lintian      on the .deb: fails on any error, and on a warning that
#                packaging/README.md does not explain
#   security     systemd-analyze security --offline=true: fails above 2.0
#   verify       systemd-analyze verify in a staged root (the .deb unpacked over a
#                copy of the host's units), with and without the limits drop-in;
#                systemd-sysusers/-tmpfiles --root on the same root
#   debootstrap  dpkg -i into Debian bookworm roots (minbase, and minbase +
#                systemd not running), then: user, group, directories and their
#                modes/owners, conffile, unit enabled and not started, the agent
#                running as store-outbox on the packaged config with a POS user
#                in the group (socket, spool), upgrade keeps the database,
#                remove keeps it, purge deletes it and the user; and, with a
#                stub systemctl, the running-systemd branch (start, restart, stop)
#   arm          packaging/cross-build.sh (Rust 1.85, arm64 + armhf, qemu smoke
#                test, .debs) and lintian on the ARM .debs
#
# Environment (the slow parts can be skipped):
#   SKIP_BUILD=1        package the binary already in $CARGO_TARGET_DIR/release
#   SKIP_DEBOOTSTRAP=1  skip the bookworm-root install test (about 1-2 min when the
#                       roots must be made, 15-35 s with the cached roots)
#   SKIP_ARM=1          skip the ARM builds (about 28 min cold on 2 cores; about
#                       7 min after a source change, dependencies cached; with
#                       QUICK_BUILD=1 about a third of that)
#   QUICK_BUILD=1       what .ci/run sets: release builds without LTO and with 16
#                       codegen units, cargo-deb installed as a debug build. The
#                       packages are complete but their binaries are about 15 %
#                       larger than the size-tuned ones build-deb.sh makes by default
#   CARGO_TARGET_DIR    x86-64 build output (default: <repo>/target)
#   CROSS_TARGET_DIR    ARM build output (default: <repo>/target/cross-1.85; Rust 1.85
#                       artifacts are kept apart from the everyday toolchain's)
#   CACHE_DIR           debootstrap roots, as tarballs (default: /var/cache/store-outbox-ci);
#                       rebuilt when older than CACHE_MAX_AGE_DAYS (default 30) or with REFRESH_ROOTS=1
#   MIRROR              Debian mirror for debootstrap (default: http://deb.debian.org/debian)
#   KEEP_ROOTS=1        leave the bookworm roots in $WORK for inspection
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
# The agent's own settings must not leak from this shell into the checks.
unset STORE_OUTBOX_CONFIG STORE_OUTBOX_LOG RUST_LOG
export PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
CACHE_DIR=${CACHE_DIR:-/var/cache/store-outbox-ci}
CACHE_MAX_AGE_DAYS=${CACHE_MAX_AGE_DAYS:-30}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
CARGO_DEB_VERSION=3.8.0
MAX_EXPOSURE=2.0
WORK=$(mktemp -d /tmp/store-outbox-check.XXXXXX)
# free_port, wait_for, ensure_cargo_deb
# shellcheck source=packaging/lib.sh
source "$REPO/packaging/lib.sh"

SUMMARY=()
CHECKS=0
T_ALL=$SECONDS

step() { printf '\n==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die()  { printf '\nFAILED: %s\n' "$*" >&2; exit 1; }
pass() { CHECKS=$((CHECKS + 1)); printf '    ok  %s\n' "$*"; }
summary() { SUMMARY+=("$*"); }

MOUNTS=()
PIDS=()
cleanup() {
  local p m
  for p in "${PIDS[@]-}"; do [[ -n $p ]] && kill "$p" 2>/dev/null || true; done
  for m in "${MOUNTS[@]-}"; do [[ -n $m ]] && umount -l "$m" 2>/dev/null || true; done
  if [[ ${KEEP_ROOTS:-0} == 1 ]]; then
    echo "roots kept in $WORK" >&2
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[[ $(id -u) -eq 0 ]] || die "run as root (apt-get, debootstrap, chroot)"
if [[ ${QUICK_BUILD:-0} == 1 ]]; then
  # Cargo's profile overrides from the environment reach build-deb.sh and cross-build.sh.
  export CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16
  CARGO_DEB_INSTALL_FLAGS=(--debug)
else
  CARGO_DEB_INSTALL_FLAGS=()
fi
[[ -f /etc/debian_version ]] || die "expects Debian bookworm"

# ---- tools ------------------------------------------------------------------
step "tools"
need=()
command -v lintian >/dev/null        || need+=(lintian)
command -v dpkg-shlibdeps >/dev/null || need+=(dpkg-dev)
command -v file >/dev/null           || need+=(file)
command -v systemd-analyze >/dev/null || need+=(systemd)
if [[ ${SKIP_DEBOOTSTRAP:-0} != 1 ]]; then command -v debootstrap >/dev/null || need+=(debootstrap); fi
if [[ ${#need[@]} -gt 0 ]]; then
  info "apt-get install ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || info "WARNING: apt-get update reported errors; trying the install anyway"
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
ensure_cargo_deb "${CARGO_DEB_INSTALL_FLAGS[@]}"
info "$(cargo-deb --version), $(lintian --version), $(systemd-analyze --version | head -1)"

# ---- deb --------------------------------------------------------------------
step "deb: build the x86-64 package"
t0=$SECONDS
cargo_version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/Cargo.toml" | head -1)
changelog_version=$(dpkg-parsechangelog -l "$REPO/packaging/debian/changelog" -S Version)
[[ ${changelog_version%-*} == "$cargo_version" ]] \
  || die "packaging/debian/changelog is at $changelog_version but Cargo.toml at $cargo_version: add a changelog entry (dch -v $cargo_version-1 -c packaging/debian/changelog)"
pass "changelog $changelog_version matches Cargo.toml $cargo_version"
if [[ ${SKIP_BUILD:-0} == 1 ]]; then
  DEB=$(NO_BUILD=1 "$REPO/packaging/build-deb.sh" | tail -1)
else
  DEB=$("$REPO/packaging/build-deb.sh" | tail -1)
fi
[[ -f $DEB ]] || die "no .deb built"
BIN=$CARGO_TARGET_DIR/release/store-outbox
deb_size=$(stat -c %s "$DEB"); deb_isize=$(dpkg-deb -f "$DEB" Installed-Size)
pass "$(basename "$DEB"): $deb_size bytes, Installed-Size $deb_isize KiB, binary $(stat -c %s "$BIN") bytes (stripped)"
[[ $(dpkg-deb -f "$DEB" Architecture) == amd64 ]] || die "Architecture is not amd64"
# No `grep -q` at the end of a pipe here: it exits at the first match, and
# with pipefail the writer's SIGPIPE fails the check at random.
control_files=$(dpkg-deb --ctrl-tarfile "$DEB" | tar -tf -)
grep -qx './conffiles' <<<"$control_files" || die "no conffiles in the .deb"
[[ $(dpkg-deb -I "$DEB" conffiles) == /etc/store-outbox/config.toml ]] || die "conffiles is not exactly /etc/store-outbox/config.toml"
pass "conffiles: /etc/store-outbox/config.toml"
expected_files=(
  ./usr/bin/store-outbox
  ./lib/systemd/system/store-outbox.service
  ./usr/lib/sysusers.d/store-outbox.conf
  ./usr/lib/tmpfiles.d/store-outbox.conf
  ./etc/store-outbox/config.toml
  ./usr/share/man/man1/store-outbox.1.gz
  ./usr/share/doc/store-outbox/copyright
  ./usr/share/doc/store-outbox/changelog.Debian.gz
  ./usr/share/doc/store-outbox/store-outbox-help.txt
  ./usr/share/doc/store-outbox/examples/limits.conf.example
  ./usr/share/doc/store-outbox/README.md
  ./DEBIAN/md5sums
)
listing=$(dpkg-deb -c "$DEB" | awk '{print $6}'; dpkg-deb --ctrl-tarfile "$DEB" | tar -tf - | sed 's|^\./|./DEBIAN/|')
for f in "${expected_files[@]}"; do
  grep -qx -- "$f" <<<"$listing" || die "$f missing from the .deb"
done
pass "${#expected_files[@]} expected files in the .deb"
"$BIN" check-config --config "$REPO/packaging/config.toml" >/dev/null \
  || die "packaging/config.toml does not pass check-config"
pass "packaging/config.toml passes check-config"
summary "deb        $(basename "$DEB"): $deb_size bytes, Installed-Size $deb_isize KiB ($((SECONDS - t0)) s)"

# ---- lintian ----------------------------------------------------------------
# run_lintian <deb>: fails on errors and on warnings not explained in packaging/README.md
run_lintian() {
  local deb=$1 out e w i tag
  out=$(lintian --display-info "$deb" 2>&1 | grep -v 'running with root privileges' || true)
  [[ -n $out ]] && printf '%s\n' "$out" | sed 's/^/    | /'
  e=$(grep -c '^E: ' <<<"$out" || true); w=$(grep -c '^W: ' <<<"$out" || true); i=$(grep -c '^I: ' <<<"$out" || true)
  [[ $e -eq 0 ]] || die "lintian: $e error(s) on $(basename "$deb")"
  for tag in $(grep '^W: ' <<<"$out" | awk '{print $3}' | sort -u); do
    grep -q -- "$tag" "$REPO/packaging/README.md" \
      || die "lintian warning $tag on $(basename "$deb") is not explained in packaging/README.md"
  done
  pass "lintian $(basename "$deb"): $e errors, $w warnings (all explained in packaging/README.md), $i info"
  summary "lintian    $(basename "$deb"): $e errors, $w warnings, $i info"
}
step "lintian"
run_lintian "$DEB"

# ---- security ---------------------------------------------------------------
step "security: systemd-analyze security --offline=true (max $MAX_EXPOSURE)"
unit=$REPO/systemd/store-outbox.service
sec=$(systemd-analyze security --offline=true --no-pager "$unit" 2>&1 || true)
exposure=$(sed -n 's/.*Overall exposure level for store-outbox.service: \([0-9.]*\).*/\1/p' <<<"$sec")
[[ -n $exposure ]] || { printf '%s\n' "$sec"; die "no exposure level in systemd-analyze's output"; }
grep '✗' <<<"$sec" | sed 's/^/    | /' || true
awk -v e="$exposure" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(e <= m) }' \
  || die "exposure $exposure is above $MAX_EXPOSURE"
# The same limit with systemd-analyze's own threshold (0-100 scale).
systemd-analyze security --offline=true --threshold=20 --no-pager "$unit" >/dev/null \
  || die "systemd-analyze security --threshold=20 failed"
pass "overall exposure $exposure (limit $MAX_EXPOSURE; $(grep -c '✗' <<<"$sec") settings left open, listed above)"
summary "security   exposure $exposure (limit $MAX_EXPOSURE)"

# ---- verify -----------------------------------------------------------------
# systemd-analyze verify needs /usr/bin/store-outbox, the man page and the
# standard units (sysinit.target ...) to exist: verify in a root that has
# them. Here: the .deb unpacked over a copy of the host's unit directory
# (bookworm's systemd 252); in the debootstrap step, again in a real bookworm
# root with the package installed.
# verify_in_root <root>: prints the messages, returns their count
verify_in_root() {
  local root=$1 out
  out=$(MANPATH=$root/usr/share/man systemd-analyze verify --root="$root" store-outbox.service 2>&1) || true
  [[ -n $out ]] && printf '%s\n' "$out" | sed 's/^/    | /' >&2
  [[ -z $out ]] && echo 0 || wc -l <<<"$out"
}
step "verify: systemd-analyze verify, sysusers.d, tmpfiles.d"
stage=$WORK/stage
mkdir -p "$stage/lib/systemd" "$stage/etc"
cp -a /lib/systemd/system "$stage/lib/systemd/"
# ExecReload's /bin/sh (Essential: on every Debian system).
mkdir -p "$stage/bin"
cp -L /bin/sh "$stage/bin/sh"
dpkg-deb -x "$DEB" "$stage"
n=$(verify_in_root "$stage")
[[ $n -eq 0 ]] || die "systemd-analyze verify: $n message(s)"
pass "systemd-analyze verify store-outbox.service: 0 messages"
# The drop-in example, every setting uncommented, must verify too.
mkdir -p "$stage/etc/systemd/system/store-outbox.service.d"
sed -e 's/^#\([A-Z[]\)/\1/' "$REPO/systemd/limits.conf.example" > "$stage/etc/systemd/system/store-outbox.service.d/limits.conf"
n=$(verify_in_root "$stage")
[[ $n -eq 0 ]] || die "systemd-analyze verify with limits.conf: $n message(s)"
pass "systemd-analyze verify with limits.conf.example (all $(grep -c '^#[A-Z]' "$REPO/systemd/limits.conf.example") settings on): 0 messages"
# sysusers.d and tmpfiles.d, applied offline to the staged root.
: > "$stage/etc/passwd"; : > "$stage/etc/group"
systemd-sysusers --root="$stage" "$stage/usr/lib/sysusers.d/store-outbox.conf" 2>&1 | sed 's/^/    | /'
grep -q '^store-outbox:x:[0-9]*:[0-9]*:[^:]*:/var/lib/store-outbox:/usr/sbin/nologin$' "$stage/etc/passwd" \
  || die "systemd-sysusers did not create the user as expected: $(cat "$stage/etc/passwd")"
pass "systemd-sysusers --root: $(grep '^store-outbox:' "$stage/etc/passwd")"
systemd-tmpfiles --root="$stage" --create "$stage/usr/lib/tmpfiles.d/store-outbox.conf"
for d in /var/lib/store-outbox:750 /var/spool/store-outbox:750 /var/spool/store-outbox/incoming:2770 \
         /var/spool/store-outbox/failed:2770 /run/store-outbox:750; do
  got=$(stat -c %a "$stage${d%%:*}")
  [[ $got == "${d##*:}" ]] || die "tmpfiles --root: ${d%%:*} is $got, expected ${d##*:}"
done
pass "systemd-tmpfiles --root: 5 directories with the expected modes"
summary "verify     systemd-analyze verify: 0 messages (unit, unit + limits drop-in); sysusers + tmpfiles OK"

# ---- debootstrap ------------------------------------------------------------
# make_root <name> <with_systemd>: a bookworm minbase root from the cache, or
# debootstrap'ed from $MIRROR and cached as $CACHE_DIR/bookworm-<name>.tar.gz
make_root() {
  local name=$1 with_systemd=$2 tarball=$CACHE_DIR/bookworm-$1.tar.gz root=$WORK/$1 t0=$SECONDS
  mkdir -p "$CACHE_DIR"
  if [[ ${REFRESH_ROOTS:-0} == 1 ]] || [[ -z $(find "$tarball" -mtime -"$CACHE_MAX_AGE_DAYS" 2>/dev/null) ]]; then
    local build=$WORK/build-$name
    if [[ $with_systemd == 1 ]]; then
      # minbase (made just before) + apt-get install systemd
      info "building $tarball (bookworm-minbase + apt-get install systemd)"
      mkdir -p "$build"
      tar -C "$build" -xzf "$CACHE_DIR/bookworm-minbase.tar.gz"
    else
      info "building $tarball (debootstrap --variant=minbase bookworm, $MIRROR)"
      debootstrap --variant=minbase bookworm "$build" "$MIRROR" > "$WORK/debootstrap-$name.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap-$name.log"; die "debootstrap failed (log above)"; }
    fi
    if [[ $with_systemd == 1 ]]; then
      cp /etc/resolv.conf "$build/etc/resolv.conf"
      mount -t proc proc "$build/proc"; MOUNTS+=("$build/proc")
      chroot "$build" sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null && apt-get clean' \
        > "$WORK/systemd-$name.log" 2>&1 || { tail -20 "$WORK/systemd-$name.log"; die "installing systemd in the root failed"; }
      umount "$build/proc"
    fi
    tar -C "$build" -czf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$build"
    info "cached $tarball ($(du -h "$tarball" | cut -f1)) in $((SECONDS - t0)) s"
  else
    info "using cached $tarball ($(du -h "$tarball" | cut -f1), $(( ($(date +%s) - $(stat -c %Y "$tarball")) / 86400 )) days old)"
  fi
  mkdir -p "$root"
  tar -C "$root" -xzf "$tarball"
  mount -t proc proc "$root/proc"; MOUNTS+=("$root/proc")
}

# expect_stat <root> <path> <mode> <owner:group>
expect_stat() {
  local got
  got=$(chroot "$1" stat -c '%a %U:%G' "$2" 2>/dev/null) || die "$2 does not exist"   # names from the root's passwd
  [[ $got == "$3 $4" ]] || die "$2 is '$got', expected '$3 $4'"
  pass "$2 $3 $4"
}

# exercise_agent <root>: the agent as store-outbox on the packaged config, a
# POS user in the group sends on the socket and through the spool, an outsider
# cannot; SIGTERM exits 0.
exercise_agent() {
  local root=$1 cfg=/etc/store-outbox/config.toml uid gid posuid posgid ouid ogid pid rc out
  chroot "$root" store-outbox check-config >/dev/null || die "check-config fails on the installed config"
  pass "store-outbox check-config (packaged /etc/store-outbox/config.toml)"
  # The agent binds 127.0.0.1:7390/7391 in the host's network namespace: if
  # those are taken here, run on a copy of the config with other ports.
  if [[ -n $(ss -Hltn 'sport = :7390 or sport = :7391' 2>/dev/null) ]]; then
    cfg=/etc/store-outbox/check.toml
    sed -e "s|^#http_listen = .*|http_listen = \"127.0.0.1:$(free_port)\"|" \
        -e "s|^#listen = .*|listen = \"127.0.0.1:$(free_port)\"|" "$root/etc/store-outbox/config.toml" > "$root$cfg"
    chgrp "$(chroot "$root" id -g store-outbox)" "$root$cfg"; chmod 0640 "$root$cfg"
    info "ports 7390/7391 are in use on this host: running on a copy of the config with free ports"
  fi
  uid=$(chroot "$root" id -u store-outbox); gid=$(chroot "$root" id -g store-outbox)
  chroot "$root" useradd --create-home --groups store-outbox pos1
  chroot "$root" useradd --create-home outsider
  posuid=$(chroot "$root" id -u pos1); posgid=$(chroot "$root" id -g pos1)
  # As the unit runs it: user and group store-outbox, UMask=0007, NO_COLOR=1.
  chroot --userspec="$uid:$gid" --groups="$gid" "$root" sh -c 'umask 0007; exec env NO_COLOR=1 /usr/bin/store-outbox run --config "$1"' sh "$cfg" \
    > "$WORK/agent.out" 2> "$WORK/agent.err" &
  pid=$!; PIDS+=("$pid")
  wait_for 30 test -S "$root/run/store-outbox/ingest.sock" || { cat "$WORK/agent.err"; die "the agent did not open /run/store-outbox/ingest.sock"; }
  expect_stat "$root" /run/store-outbox/ingest.sock 660 store-outbox:store-outbox
  out=$(chroot --userspec="$posuid:$posgid" --groups="$posgid,$gid" "$root" \
        store-outbox send --config "$cfg" --type SaleCreated --entity order:1 --id check-1 '{"total":9.5}') \
    || die "send as pos1 (in group store-outbox) failed: $out"
  grep -q '"ok":true' <<<"$out" || die "send as pos1: $out"
  pass "pos1 (group store-outbox) sends on the socket: $out"
  ouid=$(chroot "$root" id -u outsider); ogid=$(chroot "$root" id -g outsider)
  if chroot --userspec="$ouid:$ogid" "$root" cat /etc/store-outbox/config.toml >/dev/null 2>&1; then
    die "a user outside group store-outbox can read /etc/store-outbox/config.toml"
  fi
  cp "$root$cfg" "$root/tmp/outsider.toml"; chmod 0644 "$root/tmp/outsider.toml"
  if out=$(chroot --userspec="$ouid:$ogid" "$root" \
       store-outbox send --config /tmp/outsider.toml --type SaleCreated --entity order:1 '{}' 2>&1); then
    die "a user outside group store-outbox could send: $out"
  fi
  rm -f "$root/tmp/outsider.toml"
  pass "outsider (not in the group): cannot read the config; with a readable copy, cannot reach the socket"
  chroot --userspec="$posuid:$posgid" --groups="$posgid,$gid" "$root" sh -c '
    cd /var/spool/store-outbox/incoming &&
    printf "%s\n" "{\"type\":\"StockMovementCreated\",\"entity\":\"sku:1\",\"event_id\":\"check-2\",\"payload\":{\"delta\":-1}}" > .m1.ndjson.tmp &&
    mv .m1.ndjson.tmp 0001-m1.ndjson &&
    printf "not json\n" > .bad.ndjson.tmp && mv .bad.ndjson.tmp 0002-bad.ndjson' \
    || die "pos1 cannot write and rename into /var/spool/store-outbox/incoming"
  wait_for 20 test ! -e "$root/var/spool/store-outbox/incoming/0001-m1.ndjson" || die "the spool file was not taken"
  wait_for 20 test -e "$root/var/spool/store-outbox/failed/0002-bad.ndjson.error.json" || die "the bad spool file did not go to failed/"
  pass "pos1 renames files into incoming/: taken; a bad one moved to failed/ with .error.json"
  out=$(chroot "$root" store-outbox status --json --config "$cfg")
  grep -q '"accepted_total": 2' <<<"$out" || die "status: expected accepted_total 2: $out"
  pass "status --json: accepted_total 2 (socket + spool), agent_running true"
  # SQLite creates files 0644 & ~umask: with the unit's UMask=0007, 0640 (never world-readable)
  expect_stat "$root" /var/lib/store-outbox/outbox.db 640 store-outbox:store-outbox
  kill -TERM "$pid"; rc=0; wait "$pid" || rc=$?; PIDS=()
  [[ $rc -eq 0 ]] || { cat "$WORK/agent.err"; die "the agent exited $rc on SIGTERM"; }
  pass "agent (user store-outbox, packaged paths) stopped on SIGTERM: exit 0"
  chroot "$root" userdel -r pos1 2>/dev/null || true
  chroot "$root" userdel -r outsider 2>/dev/null || true
  rm -f "$root/etc/store-outbox/check.toml"
}

# install_checks <root> <with_systemd>
install_checks() {
  local root=$1 with_systemd=$2 pw uid gid home shell n out
  cp "$DEB" "$root/tmp/"
  chroot "$root" dpkg -i "/tmp/$(basename "$DEB")" </dev/null 2>&1 | sed 's/^/    | /'
  [[ $(chroot "$root" dpkg-query -W -f='${db:Status-Abbrev}' store-outbox) == "ii " ]] || die "store-outbox is not installed (ii)"
  pass "dpkg -i: installed (ii), maintainer scripts ran"
  pw=$(chroot "$root" getent passwd store-outbox) || die "no user store-outbox"
  IFS=: read -r _ _ uid gid _ home shell <<<"$pw"
  (( uid < 1000 )) || die "store-outbox uid $uid is not a system uid"
  [[ $home == /var/lib/store-outbox && $shell == /usr/sbin/nologin ]] || die "user store-outbox: $pw"
  [[ $(chroot "$root" getent group store-outbox | cut -d: -f3) == "$gid" ]] || die "group store-outbox is not the user's primary group"
  pass "user: $pw"
  expect_stat "$root" /var/lib/store-outbox 750 store-outbox:store-outbox
  expect_stat "$root" /var/spool/store-outbox 750 store-outbox:store-outbox
  expect_stat "$root" /var/spool/store-outbox/incoming 2770 store-outbox:store-outbox
  expect_stat "$root" /var/spool/store-outbox/failed 2770 store-outbox:store-outbox
  expect_stat "$root" /run/store-outbox 750 store-outbox:store-outbox
  expect_stat "$root" /etc/store-outbox 750 root:store-outbox
  expect_stat "$root" /etc/store-outbox/config.toml 640 root:store-outbox
  expect_stat "$root" /usr/bin/store-outbox 755 root:root
  expect_stat "$root" /lib/systemd/system/store-outbox.service 644 root:root
  chroot "$root" dpkg-query -W -f='${Conffiles}\n' store-outbox | grep '^ /etc/store-outbox/config.toml [0-9a-f]\{32\}$' >/dev/null \
    || die "/etc/store-outbox/config.toml is not a registered conffile"
  pass "conffile registered: /etc/store-outbox/config.toml"
  # Enabled (deb-systemd-helper works without a running systemd), not started.
  [[ -L $root/etc/systemd/system/multi-user.target.wants/store-outbox.service ]] \
    || die "store-outbox.service is not enabled (no multi-user.target.wants symlink)"
  pass "enabled: /etc/systemd/system/multi-user.target.wants/store-outbox.service -> $(readlink "$root/etc/systemd/system/multi-user.target.wants/store-outbox.service")"
  [[ ! -d $root/run/systemd/system ]] && [[ ! -e $root/run/store-outbox/ingest.sock ]] \
    || die "the agent seems to have been started in a root without a running systemd"
  pass "not started (no running systemd in the root)"
  if [[ $with_systemd == 1 ]]; then
    n=$(verify_in_root "$root")
    [[ $n -eq 0 ]] || die "systemd-analyze verify in the bookworm root: $n message(s)"
    pass "systemd-analyze verify --root=<bookworm root with systemd + the package>: 0 messages"
  fi

  exercise_agent "$root"

  # Upgrade (0.1.0-1 -> a rebuilt +check1 version): the database, its
  # events and a locally edited conffile stay; no conffile prompt.
  sed -i 's/^#store_id = "0042"/store_id = "0042"/' "$root/etc/store-outbox/config.toml"
  chroot "$root" dpkg -i "/tmp/$(basename "$DEB_UP")" </dev/null 2>&1 | sed 's/^/    | /'
  [[ $(chroot "$root" dpkg-query -W -f='${Version}' store-outbox) == "$UP_VERSION" ]] || die "upgrade to $UP_VERSION failed"
  grep -q '^store_id = "0042"' "$root/etc/store-outbox/config.toml" || die "upgrade lost the edited conffile"
  out=$(chroot "$root" store-outbox status --json)
  grep -q '"accepted_total": 2' <<<"$out" || die "after upgrade: expected accepted_total 2: $out"
  expect_stat "$root" /etc/store-outbox/config.toml 640 root:store-outbox
  pass "upgrade to $UP_VERSION: database kept (accepted_total 2), edited conffile kept, still enabled: $([[ -L $root/etc/systemd/system/multi-user.target.wants/store-outbox.service ]] && echo yes || die "upgrade disabled the unit")"

  # Remove: data, config and user stay; the unit is disabled.
  chroot "$root" dpkg -r store-outbox </dev/null 2>&1 | sed 's/^/    | /'
  [[ -f $root/var/lib/store-outbox/outbox.db ]] || die "dpkg -r deleted the database"
  [[ -f $root/etc/store-outbox/config.toml ]] || die "dpkg -r deleted the conffile"
  chroot "$root" getent passwd store-outbox >/dev/null || die "dpkg -r deleted the user"
  [[ ! -e $root/usr/bin/store-outbox ]] || die "dpkg -r left the binary"
  [[ ! -e $root/etc/systemd/system/multi-user.target.wants/store-outbox.service ]] || die "dpkg -r left the unit enabled"
  pass "dpkg -r: binary gone, unit disabled; outbox.db, config and user kept"

  # Reinstall over the kept data, then purge.
  chroot "$root" dpkg -i "/tmp/$(basename "$DEB")" </dev/null >/dev/null 2>&1 || die "reinstall after remove failed"
  out=$(chroot "$root" store-outbox status --json)
  grep -q '"accepted_total": 2' <<<"$out" || die "after reinstall: expected the kept database: $out"
  [[ -L $root/etc/systemd/system/multi-user.target.wants/store-outbox.service ]] || die "reinstall did not enable the unit again"
  pass "reinstall after remove: the kept outbox is used again (accepted_total 2), enabled again"
  chroot "$root" dpkg -P store-outbox </dev/null 2>&1 | sed 's/^/    | /'
  for p in /var/lib/store-outbox /var/spool/store-outbox /run/store-outbox /etc/store-outbox \
           /etc/systemd/system/multi-user.target.wants/store-outbox.service /etc/systemd/system/store-outbox.service; do
    [[ ! -e $root$p && ! -L $root$p ]] || die "dpkg -P left $p"
  done
  ! chroot "$root" getent passwd store-outbox >/dev/null || die "dpkg -P left the user"
  ! chroot "$root" getent group store-outbox >/dev/null || die "dpkg -P left the group"
  [[ -z $(chroot "$root" dpkg-query -W -f='${db:Status-Abbrev}' store-outbox 2>/dev/null | tr -d ' ') ]] \
    || die "dpkg -P: the package is still known to dpkg"
  pass "dpkg -P: outbox, spool, runtime dir, /etc/store-outbox, unit links, user and group gone"
}

# simulate_running_systemd <root>: the branch taken on a real store PC
# (/run/systemd/system exists). PID 1 here is not systemd, so a stub systemctl
# records what the maintainer scripts ask for: start on install, restart on
# upgrade, stop on remove, daemon-reload around each.
simulate_running_systemd() {
  local root=$1 log
  mkdir -p "$root/run/systemd/system" "$root/usr/local/sbin"
  cat > "$root/usr/local/sbin/systemctl" <<'STUB'
#!/bin/sh
echo "systemctl $*" >> /tmp/systemctl.log
case " $* " in *" is-enabled "*) echo enabled ;; *" is-active "*) exit 3 ;; esac
exit 0
STUB
  chmod 0755 "$root/usr/local/sbin/systemctl"
  : > "$root/tmp/systemctl.log"
  expect_calls() {  # expect_calls <what> <pattern>...
    local what=$1 p; shift
    log=$(cat "$root/tmp/systemctl.log"); : > "$root/tmp/systemctl.log"
    for p in "$@"; do
      grep -q -- "$p" <<<"$log" || { printf '%s\n' "$log" | sed 's/^/    | /'; die "$what: no '$p' among the systemctl calls"; }
    done
    pass "$what with systemd running: $(grep -v 'is-enabled\|is-active' <<<"$log" | sed 's/^systemctl //' | paste -sd';' | sed 's/;/; /g')"
  }
  chroot "$root" dpkg -i "/tmp/$(basename "$DEB")" </dev/null >/dev/null 2>&1 || die "install (systemd running) failed"
  expect_calls "install" "daemon-reload" "start store-outbox.service"
  chroot "$root" dpkg -i "/tmp/$(basename "$DEB_UP")" </dev/null >/dev/null 2>&1 || die "upgrade (systemd running) failed"
  expect_calls "upgrade" "daemon-reload" "restart store-outbox.service"
  chroot "$root" dpkg -r store-outbox </dev/null >/dev/null 2>&1 || die "remove (systemd running) failed"
  expect_calls "remove" "stop store-outbox.service" "daemon-reload"
  chroot "$root" dpkg -P store-outbox </dev/null >/dev/null 2>&1 || die "purge (systemd running) failed"
  ! chroot "$root" getent passwd store-outbox >/dev/null || die "purge (systemd running) left the user"
  rm -rf "$root/run/systemd/system" "$root/usr/local/sbin/systemctl"
}

if [[ ${SKIP_DEBOOTSTRAP:-0} == 1 ]]; then
  step "debootstrap: skipped (SKIP_DEBOOTSTRAP=1)"
  summary "debootstrap skipped (SKIP_DEBOOTSTRAP=1)"
else
  step "debootstrap: dpkg -i into Debian bookworm roots"
  t0=$SECONDS; c0=$CHECKS
  UP_VERSION=$cargo_version-1+check1
  # cargo-deb deletes other versions of the package from target/debian: keep
  # ours aside while it builds the upgrade package, then put it back.
  mkdir -p "$WORK/up"
  cp -p "$DEB" "$WORK/"
  DEB_UP=$(cd "$REPO" && cargo-deb --quiet --no-build --deb-version "$UP_VERSION" --output "$WORK/up" | tail -1)
  cp -p "$WORK/$(basename "$DEB")" "$DEB"
  [[ -f $DEB_UP ]] || die "could not build the upgrade package"
  for variant in "minbase:0" "minbase-systemd:1"; do
    name=${variant%%:*}; with_systemd=${variant##*:}
    step "debootstrap: bookworm $name ($([[ $with_systemd == 1 ]] && echo "systemd installed, not running: sysusers/tmpfiles path" || echo "no systemd: useradd/install fallback"))"
    make_root "$name" "$with_systemd"
    cp "$DEB_UP" "$WORK/$name/tmp/"
    install_checks "$WORK/$name" "$with_systemd"
    [[ $with_systemd == 1 ]] && simulate_running_systemd "$WORK/$name"
    umount "$WORK/$name/proc"
  done
  summary "debootstrap $((CHECKS - c0)) checks passed in 2 bookworm roots (minbase; minbase + systemd) ($((SECONDS - t0)) s)"
fi

# ---- arm --------------------------------------------------------------------
if [[ ${SKIP_ARM:-0} == 1 ]]; then
  step "arm: skipped (SKIP_ARM=1)"
  summary "arm        skipped (SKIP_ARM=1)"
else
  step "arm: packaging/cross-build.sh (Rust 1.85: aarch64 + armv7, qemu smoke test, .debs)"
  t0=$SECONDS
  arm_log=$WORK/cross-build.log
  cross_dir=${CROSS_TARGET_DIR:-$REPO/target/cross-1.85}
  set +e
  # The receiver of the smoke test is the x86-64 binary built above.
  CARGO_TARGET_DIR=$cross_dir DEB_OUT=$cross_dir/debian TARGETS="aarch64 armv7" RECEIVER_BIN=$BIN \
    "$REPO/packaging/cross-build.sh" > "$arm_log" 2>&1
  rc=$?
  set -e
  grep -E '^(==>|    (smoke |deb |[a-z0-9_]+-unknown-linux-gnu)|ERROR)' "$arm_log" | sed 's/^/    | /' || true
  [[ $rc -eq 0 ]] || { tail -30 "$arm_log"; die "cross-build.sh failed (exit $rc)"; }
  for tr in aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf; do
    grep -q "smoke $tr: OK" "$arm_log" || die "no smoke OK for $tr"
    pass "$tr: qemu smoke test OK"
  done
  for a in arm64 armhf; do
    deb=$(ls -t "$cross_dir/debian/store-outbox_${cargo_version}-1_$a.deb" 2>/dev/null | head -1)
    [[ -f $deb ]] || die "no $a .deb in $cross_dir/debian"
    run_lintian "$deb"
  done
  summary "arm        aarch64 + armv7 built, smoke-tested under qemu, .debs linted ($((SECONDS - t0)) s)"
fi

# ---- summary ----------------------------------------------------------------
step "summary: $CHECKS checks passed in $((SECONDS - T_ALL)) s"
for l in "${SUMMARY[@]}"; do info "$l"; done
