#!/usr/bin/env bash
# Docker-free cross build of store-outbox for ARM store terminals, on a Debian
# bookworm x86-64 host: Debian's Rust 1.85 (rustc-web/cargo-web) with the
# target's std from multiarch (libstd-rust-web-dev:arm64/armhf), gcc cross
# linkers, qemu-user-static for a smoke test, and cargo-deb for the packages.
# (With a container engine, `CROSS_CONFIG=cross.toml cross build --release
# --target ...` can do the build instead; then run this with
# CARGO_TARGET_DIR=target STEPS="smoke deb", with the host binary built by
# `cargo build --release` in target/release for the receiver.)
#
# Steps (each idempotent):
#   install  add dpkg architectures, apt-get update + install only if something is missing
#   build    cargo build --release --locked for the host (x86-64) and each chosen ARM target
#   smoke    --version under qemu, then agent (ARM, qemu) -> receiver (host binary) round trip
#   deb      a .deb per chosen target (packaging/build-deb.sh: cargo-deb --no-build --target ...)
#
# Environment:
#   TARGETS           any of: x86_64 aarch64 armv7 (or amd64 arm64 armhf, or full triples),
#                     space/comma separated (default: "x86_64 aarch64 armv7")
#   STEPS             any of: install build smoke deb (default: "install build smoke deb")
#   SRC_DIR           crate to build (default: this script's repository); not written to
#   CARGO_TARGET_DIR  build output (default: $SRC_DIR/target/cross-1.85, apart from the
#                     everyday target/ so the two toolchains do not rebuild each other)
#   OUT_DIR           stripped binaries are copied to $OUT_DIR/<triple>/store-outbox
#                     (default: $CARGO_TARGET_DIR/dist)
#   DEB_OUT           .deb output (default: $CARGO_TARGET_DIR/debian)
#   LOCKED            1 (default) builds with --locked; 0 lets cargo 1.85 adjust Cargo.lock
#   SMOKE_TIMEOUT     seconds to wait for the agent socket / the delivery (default: 60)
#   RECEIVER_BIN      an x86-64 store-outbox binary for the smoke test's receiver; without
#                     it the host (x86_64) target is built too, with Rust 1.85
#   QUICK_BUILD       1: release builds without LTO and with 16 codegen units (what CI
#                     uses: about 3x faster to build, the binary is about 15 % larger; not
#                     for shipping). Default 0: the size-tuned [profile.release].
#
# Usage:  packaging/cross-build.sh                       # everything, all three targets
#         TARGETS=aarch64 STEPS="build smoke deb" packaging/cross-build.sh
#
# Timing on a 2-core VM shared with other builds, cold: 6.5-10.5 min per target
# (LTO "fat", one codegen unit); all three + smoke + .debs: 27.5 min.
#
# qemu: run ARM binaries with `-L /` (the multiarch loader and libc), NOT
# `-L /usr/<triple>`: see smoke_one below.
set -euo pipefail

log()  { printf '\n==> %s\n' "$*" >&2; }
info() { printf '    %s\n' "$*" >&2; }
die()  { printf '\nERROR: %s\n' "$*" >&2; exit 1; }

SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
SRC_DIR=${SRC_DIR:-$(cd "$SCRIPT_DIR/.." && pwd)}
TARGETS=${TARGETS:-"x86_64 aarch64 armv7"}
STEPS=${STEPS:-"install build smoke deb"}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$SRC_DIR/target/cross-1.85}
OUT_DIR=${OUT_DIR:-$CARGO_TARGET_DIR/dist}
export DEB_OUT=${DEB_OUT:-$CARGO_TARGET_DIR/debian}
LOCKED=${LOCKED:-1}
SMOKE_TIMEOUT=${SMOKE_TIMEOUT:-60}
if [[ ${QUICK_BUILD:-0} == 1 ]]; then
  # Cargo's profile overrides from the environment: same code, less optimisation work.
  export CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16
fi

DEB_RUSTC=/usr/bin/rustc   # installed by rustc-web (1.85); NOT rustup's ~/.cargo/bin/rustc
DEB_CARGO=/usr/bin/cargo   # installed by cargo-web (1.85)
HOST_TRIPLE=x86_64-unknown-linux-gnu
HOST_DEBARCH=amd64
WANT_RUST_MINOR=1.85
SECRET=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
CARGO_DEB_VERSION=3.8.0

has_step() { [[ " ${STEPS//,/ } " == *" $1 "* ]]; }

# ---- target table -----------------------------------------------------------
triple_of() {
  case "$1" in
    x86_64|amd64|x86-64|"$HOST_TRIPLE")               echo "$HOST_TRIPLE" ;;
    aarch64|arm64|aarch64-unknown-linux-gnu)         echo aarch64-unknown-linux-gnu ;;
    armv7|armhf|armv7-unknown-linux-gnueabihf)       echo armv7-unknown-linux-gnueabihf ;;
    *) die "unknown target '$1' (use x86_64, aarch64 or armv7)" ;;
  esac
}
debarch_of()  { case "$1" in aarch64-*) echo arm64 ;; armv7-*) echo armhf ;; *) echo amd64 ;; esac; }
gnu_of()      { case "$1" in aarch64-*) echo aarch64-linux-gnu ;; armv7-*) echo arm-linux-gnueabihf ;; esac; }
qemu_of()     { case "$1" in aarch64-*) echo qemu-aarch64-static ;; armv7-*) echo qemu-arm-static ;; esac; }
crosspkg_of() { case "$1" in
    aarch64-*) echo "gcc-aarch64-linux-gnu libc6-dev-arm64-cross libstd-rust-web-dev:arm64" ;;
    armv7-*)   echo "gcc-arm-linux-gnueabihf libc6-dev-armhf-cross libstd-rust-web-dev:armhf" ;;
  esac; }

TRIPLES=()
for t in ${TARGETS//,/ }; do
  tr=$(triple_of "$t")
  [[ " ${TRIPLES[*]-} " == *" $tr "* ]] || TRIPLES+=("$tr")
done
[[ ${#TRIPLES[@]} -gt 0 ]] || die "TARGETS is empty"
ARM_TRIPLES=()
for tr in "${TRIPLES[@]}"; do [[ $tr == "$HOST_TRIPLE" ]] || ARM_TRIPLES+=("$tr"); done
# The smoke test's receiver is the host binary, so build it whenever we smoke-test.
BUILD_TRIPLES=("${TRIPLES[@]}")
if has_step smoke && [[ ${#ARM_TRIPLES[@]} -gt 0 ]] && [[ -z ${RECEIVER_BIN:-} ]] \
   && [[ " ${BUILD_TRIPLES[*]} " != *" $HOST_TRIPLE "* ]]; then
  BUILD_TRIPLES=("$HOST_TRIPLE" "${BUILD_TRIPLES[@]}")
fi

[[ $(uname -m) == x86_64 ]] || die "this script expects an x86-64 build host (found $(uname -m))"
[[ -f /etc/debian_version ]] || die "this script expects Debian bookworm (no /etc/debian_version)"

# ---- step: install ----------------------------------------------------------
pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep '^install ok installed$' >/dev/null; }

# one_wanted_version <pkg[:arch]>...: all installed, at one version, and that
# version is Rust $WANT_RUST_MINOR.x.
one_wanted_version() {
  local p versions=()
  for p in "$@"; do
    pkg_installed "$p" || return 1
    versions+=("$(dpkg-query -W -f='${Version}' "$p")")
  done
  [[ $(printf '%s\n' "${versions[@]}" | sort -u | wc -l) -eq 1 && ${versions[0]} == "$WANT_RUST_MINOR".* ]]
}

# offered_versions <pkg[:arch]>: the versions apt offers for it, one a line.
offered_versions() {
  apt-cache madison "$1" 2>/dev/null | awk -F'|' '{gsub(/ /, "", $2); print $2}' | sort -u
}

# newest_common_version <pkg[:arch]>...: the newest version apt offers for
# every one of them (empty if none).
newest_common_version() {
  local p common="" first=1 versions
  for p in "$@"; do
    versions=$(offered_versions "$p" | grep "^${PREFIX:-}" || true)
    if [[ $first -eq 1 ]]; then
      common=$versions; first=0
    else
      common=$(comm -12 <(printf '%s\n' "$common") <(printf '%s\n' "$versions"))
    fi
  done
  printf '%s\n' "$common" | grep . | sort -V | tail -n 1 || true
}

# newest_common_rust <pkg[:arch]>...: the same, among the versions of Rust
# $WANT_RUST_MINOR.x only.
newest_common_rust() {
  PREFIX="$WANT_RUST_MINOR." newest_common_version "$@"
}

# lockstep_pins <version of the Rust packages>: pins (pkg:arch=version) for
# the Multi-Arch: same libraries the targets' Rust std pulls in, which must be
# at one version on every architecture. An x86-64 image older than its mirror
# can hold a version the mirror no longer has for ARM (2026-11-30: liblzma5
# 5.4.1-1 installed; 5.4.1-1+deb12u1 for arm64 and armhf, +deb12u2 for amd64
# only), and apt does not find the way out by itself: each such library goes
# to its installed version where every architecture has it, else to the
# newest version every architecture has.
lockstep_pins() {
  local v=$1 tr a base installed roots=() arches=() names=() common ok
  for tr in "${ARM_TRIPLES[@]}"; do
    a=$(debarch_of "$tr"); arches+=("$a"); roots+=("libstd-rust-web-dev:$a=$v")
  done
  # shellcheck disable=SC2207
  names=($(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
      --no-replaces --no-enhances "${roots[@]}" 2>/dev/null | grep -v '^ ' | grep -v '^<' \
      | sed 's/:[a-z0-9]*$//' | sort -u))
  for base in "${names[@]}"; do
    # The Rust packages themselves are pinned by the caller.
    [[ $base == libstd-rust-web-dev ]] && continue
    [[ $(dpkg-query -W -f='${db:Status-Status} ${Multi-Arch}' "$base:$HOST_DEBARCH" 2>/dev/null) == "installed same" ]] \
      || continue
    installed=$(dpkg-query -W -f='${Version}' "$base:$HOST_DEBARCH")
    ok=1
    for a in "${arches[@]}"; do
      offered_versions "$base:$a" | grep -qxF "$installed" || ok=0
    done
    if [[ $ok -eq 1 ]]; then
      # Said outright, or apt may look for a newer one (libzstd1, 2026-11-30).
      common=$installed
    else
      common=$(newest_common_version "$base:$HOST_DEBARCH" "${arches[@]/#/$base:}")
      [[ -n $common ]] || die "$base: no version is available for $HOST_DEBARCH and ${arches[*]} alike (apt-cache madison $base)"
      info "$base: $installed installed for $HOST_DEBARCH, not offered for ${arches[*]}: all at $common"
    fi
    printf '%s\n' "$base:$HOST_DEBARCH=$common" "${arches[@]/#/$base:}" | sed "2,\$s/\$/=$common/"
  done
}

step_install() {
  log "install: checking packages for: ${BUILD_TRIPLES[*]}"
  [[ $(id -u) -eq 0 ]] || die "install step needs root (apt-get, dpkg --add-architecture); run as root or drop 'install' from STEPS"
  local pkgs=(rustc-web cargo-web) need_update=0 missing=() tr a
  for tr in "${ARM_TRIPLES[@]}"; do
    # shellcheck disable=SC2207
    pkgs+=($(crosspkg_of "$tr"))
    a=$(debarch_of "$tr")
    if ! dpkg --print-foreign-architectures | grep -x "$a" >/dev/null; then
      info "dpkg --add-architecture $a"
      dpkg --add-architecture "$a"
      need_update=1
    fi
  done
  has_step smoke && [[ ${#ARM_TRIPLES[@]} -gt 0 ]] && pkgs+=(qemu-user-static file)
  # deb: dpkg-shlibdeps (cargo-deb's $auto depends); qemu runs ARM binaries for --help
  has_step deb && pkgs+=(dpkg-dev file)
  has_step deb && [[ ${#ARM_TRIPLES[@]} -gt 0 ]] && pkgs+=(qemu-user-static)
  # shellcheck disable=SC2207
  pkgs=($(printf '%s\n' "${pkgs[@]}" | awk '!seen[$0]++'))
  for p in "${pkgs[@]}"; do pkg_installed "$p" || missing+=("$p"); done
  # The host's rustc-web and every target's libstd-rust-web-dev must be one
  # version, of Rust $WANT_RUST_MINOR (the crate's rust-version, which this
  # build checks): a Debian update can reach one architecture's index before
  # another's (2026-11-30: bookworm-security had 1.96 for amd64 while arm64
  # and armhf had only 1.85), and bookworm-security now offers 1.96 on every
  # architecture (2026-12-01), which apt would take by default. Install the
  # newest $WANT_RUST_MINOR.x that all of them have (bookworm's own 1.85).
  local rust_pkgs=() pinned_rust=0
  for p in "${pkgs[@]}"; do
    [[ $p == rustc-web || $p == cargo-web || $p == libstd-rust-web-dev:* ]] && rust_pkgs+=("$p")
  done
  [[ ${#ARM_TRIPLES[@]} -gt 0 ]] && rust_pkgs+=("libstd-rust-web-dev:$HOST_DEBARCH")
  if ! one_wanted_version "${rust_pkgs[@]}"; then
    pinned_rust=1
  fi
  if [[ ${#missing[@]} -eq 0 && $need_update -eq 0 && $pinned_rust -eq 0 ]]; then
    info "all present, nothing to install"
  else
    info "missing: ${missing[*]:-(none)}"
    info "apt-get update"
    if ! apt-get update >&2; then
      # e.g. a transient 'File has unexpected size ... Mirror sync in progress?' on one index
      info "WARNING: apt-get update reported errors (see above); trying the install anyway"
    fi
    local install=() rust_version=""
    if [[ $pinned_rust -eq 1 ]]; then
      rust_version=$(newest_common_rust "${rust_pkgs[@]}")
      [[ -n $rust_version ]] || die "no version $WANT_RUST_MINOR.x of rustc-web is available for every architecture (${rust_pkgs[*]}): apt-cache madison ${rust_pkgs[*]}"
      info "Rust packages pinned to $rust_version, the newest $WANT_RUST_MINOR.x every architecture has"
      for p in "${missing[@]}"; do
        [[ " ${rust_pkgs[*]} " == *" $p "* ]] || install+=("$p")
      done
      for p in "${rust_pkgs[@]}"; do install+=("$p=$rust_version"); done
      local pins
      pins=$(lockstep_pins "$rust_version")
      # shellcheck disable=SC2206
      [[ -n $pins ]] && install+=($pins)
    else
      install=("${missing[@]}")
    fi
    if [[ ${#install[@]} -gt 0 ]]; then
      info "apt-get install ${install[*]}"
      local t0=$SECONDS
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends --allow-downgrades "${install[@]}" >&2 \
        || die "apt-get install failed for: ${install[*]}"
      info "installed in $((SECONDS - t0)) s"
    fi
  fi
  if has_step deb && ! command -v cargo-deb >/dev/null; then
    info "cargo install cargo-deb --version $CARGO_DEB_VERSION --locked"
    cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked >&2 \
      || die "cargo install cargo-deb failed"
  fi
  info "versions:"
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='      ${Package}:${Architecture} ${Version}\n' "$p" >&2
  done
}

# ---- step: build ------------------------------------------------------------
check_toolchain() {
  [[ -x $DEB_RUSTC ]] || die "$DEB_RUSTC not found: install rustc-web (STEPS=install)"
  [[ -x $DEB_CARGO ]] || die "$DEB_CARGO not found: install cargo-web (STEPS=install)"
  local v; v=$("$DEB_RUSTC" --version)
  [[ $v == "rustc $WANT_RUST_MINOR."* ]] || die "$DEB_RUSTC is '$v', expected rustc $WANT_RUST_MINOR.x (Debian rustc-web)"
  info "$v ($DEB_RUSTC), $("$DEB_CARGO" --version) ($DEB_CARGO)"
}

bin_of() {
  if [[ $1 == "$HOST_TRIPLE" ]]; then echo "$CARGO_TARGET_DIR/release/store-outbox"
  else echo "$CARGO_TARGET_DIR/$1/release/store-outbox"; fi
}

build_one() {
  local tr=$1 gnu up args=(build --release)
  [[ $LOCKED == 1 ]] && args+=(--locked)
  if [[ $tr != "$HOST_TRIPLE" ]]; then
    gnu=$(gnu_of "$tr")
    command -v "$gnu-gcc" >/dev/null || die "$gnu-gcc not found: install gcc-$gnu (STEPS=install)"
    [[ -d /usr/lib/rustlib/$tr/lib ]] || die "no Rust std for $tr in /usr/lib/rustlib: install libstd-rust-web-dev:$(debarch_of "$tr")"
    up=$(echo "$tr" | tr 'a-z-' 'A-Z_')
    export "CARGO_TARGET_${up}_LINKER=$gnu-gcc"   # final link
    export "CC_${tr//-/_}=$gnu-gcc"               # bundled SQLite, ring (cc crate)
    export "AR_${tr//-/_}=$gnu-ar"
    args+=(--target "$tr")
  fi
  log "build: $tr"
  info "(cd $SRC_DIR && RUSTC=$DEB_RUSTC CARGO_TARGET_DIR=$CARGO_TARGET_DIR $DEB_CARGO ${args[*]})"
  local t0=$SECONDS
  (cd "$SRC_DIR" && RUSTC=$DEB_RUSTC "$DEB_CARGO" "${args[@]}") \
    || die "cargo build for $tr failed (see above). If a locked dependency needs a newer rustc, pin it in a clone: cargo update -p <crate> --precise <older-version>"
  local dt=$((SECONDS - t0)) bin; bin=$(bin_of "$tr")
  [[ -x $bin ]] || die "build for $tr finished but $bin is missing"
  mkdir -p "$OUT_DIR/$tr"; cp -f "$bin" "$OUT_DIR/$tr/store-outbox"
  info "built in ${dt} s"
  info "$(ls -l "$bin")"
  info "$(file -b "$bin")"
  BUILD_REPORT+=("$(printf '%-32s %5ss %10s bytes' "$tr" "$dt" "$(stat -c %s "$bin")")")
}

step_build() {
  log "build: toolchain"
  check_toolchain
  [[ -f $SRC_DIR/Cargo.toml ]] || die "SRC_DIR=$SRC_DIR has no Cargo.toml (set SRC_DIR to the crate's clone)"
  grep -q '^name = "store-outbox"' "$SRC_DIR/Cargo.toml" || die "$SRC_DIR/Cargo.toml is not the store-outbox crate"
  local tr
  for tr in "${BUILD_TRIPLES[@]}"; do build_one "$tr"; done
}

# ---- step: smoke ------------------------------------------------------------
PIDS=()
SMOKE_DIRS=()
cleanup() {
  local p
  for p in "${PIDS[@]-}"; do
    [[ -n $p ]] && kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true
  done
  PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# free_port, wait_for
# shellcheck source=packaging/lib.sh
source "$SCRIPT_DIR/lib.sh"

smoke_one() {
  local tr=$1 host_bin arm_bin qemu q d port rp ap
  host_bin=${RECEIVER_BIN:-$(bin_of "$HOST_TRIPLE")}; arm_bin=$(bin_of "$tr"); qemu=$(qemu_of "$tr")
  [[ -x $host_bin ]] || die "host binary $host_bin missing (run with STEPS including build and x86_64)"
  [[ -x $arm_bin ]]  || die "ARM binary $arm_bin missing (run with STEPS including build)"
  command -v "$qemu" >/dev/null || die "$qemu not found: install qemu-user-static"
  # -L /: use the multiarch loader+libc (libc6:arm64/armhf, pulled in by libstd-rust-web-dev).
  # -L /usr/<gnu> is NOT safe here: its ld.so (libc6-*-cross 2.36-8cross1) then loads the multiarch
  # libc.so.6 (2.36-9+deb12uN) through the host's ld.so.cache, and the first pthread_create hangs
  # (aarch64) or segfaults (armhf). --version still works, since it starts no thread.
  q=("$qemu" -L /)

  log "smoke: $tr under ${q[*]}"
  info "\$ ${q[*]} $arm_bin --version"
  "${q[@]}" "$arm_bin" --version >&2 || die "$tr: --version under $qemu failed"

  d=$(mktemp -d /tmp/store-outbox-smoke.XXXXXX); SMOKE_DIRS+=("$d")
  port=$(free_port)
  cat > "$d/config.toml" <<EOF
[agent]
data_dir = "$d/data"

[ingest]
socket = "$d/s.sock"

[[subscription]]
name = "t"
url = "http://127.0.0.1:$port/h"
secret = "$SECRET"
EOF
  info "config: $d/config.toml (receiver port $port)"

  "$host_bin" receive --listen "127.0.0.1:$port" --json --secret "$SECRET" >"$d/recv.out" 2>"$d/recv.err" &
  rp=$!; PIDS+=("$rp")
  wait_for 15 grep -qs 'receiving webhooks' "$d/recv.err" \
    || { cat "$d/recv.err" >&2; die "$tr: receiver did not start on 127.0.0.1:$port"; }

  "${q[@]}" "$arm_bin" run --config "$d/config.toml" >"$d/agent.out" 2>"$d/agent.err" &
  ap=$!; PIDS+=("$ap")
  wait_for "$SMOKE_TIMEOUT" test -S "$d/s.sock" \
    || { cat "$d/agent.err" >&2; die "$tr: agent under $qemu did not open $d/s.sock within ${SMOKE_TIMEOUT}s"; }

  info "\$ ${q[*]} $arm_bin send --type SaleCreated --entity order:1 '{\"a\":1}' --config $d/config.toml"
  "${q[@]}" "$arm_bin" send --type SaleCreated --entity order:1 '{"a":1}' --config "$d/config.toml" >"$d/send.out" \
    || { cat "$d/send.out" "$d/agent.err" >&2; die "$tr: send failed"; }
  info "send: $(cat "$d/send.out")"

  wait_for "$SMOKE_TIMEOUT" grep -q '"type":"SaleCreated"' "$d/recv.out" \
    || { cat "$d/agent.err" "$d/recv.err" >&2; die "$tr: receiver got nothing within ${SMOKE_TIMEOUT}s"; }
  info "receiver: $(head -1 "$d/recv.out")"
  grep -q '"entity":"order:1"' "$d/recv.out"    || die "$tr: delivered event has the wrong entity"
  grep -q '"signature_valid":true' "$d/recv.out" || die "$tr: signature did not verify"
  grep -q '"order":"in_order"' "$d/recv.out"     || die "$tr: receiver reports the event out of order"

  kill -TERM "$ap"; local rc=0; wait "$ap" || rc=$?
  kill -TERM "$rp"; wait "$rp" || true
  PIDS=()
  [[ $rc -eq 0 ]] || { cat "$d/agent.err" >&2; die "$tr: agent exited $rc on SIGTERM (expected 0)"; }
  info "agent stopped cleanly on SIGTERM (exit 0)"
  rm -rf "$d"
  SMOKE_REPORT+=("$tr: OK (signature_valid=true, in_order)")
}

step_smoke() {
  [[ ${#ARM_TRIPLES[@]} -gt 0 ]] || { log "smoke: no ARM target chosen, skipping"; return; }
  local tr
  for tr in "${ARM_TRIPLES[@]}"; do smoke_one "$tr"; done
}

# ---- step: deb --------------------------------------------------------------
deb_one() {
  local tr=$1 bin deb arch want_arch isize dsize t0=$SECONDS d
  bin=$(bin_of "$tr")
  [[ -x $bin ]] || die "binary $bin missing (run with STEPS including build)"
  log "deb: $tr"
  if [[ $tr == "$HOST_TRIPLE" ]]; then
    deb=$(NO_BUILD=1 "$SRC_DIR/packaging/build-deb.sh" | tail -1)
  else
    deb=$("$SRC_DIR/packaging/build-deb.sh" "$tr" | tail -1)
  fi
  [[ -f $deb ]] || die "$tr: packaging/build-deb.sh did not produce a .deb"
  arch=$(dpkg-deb -f "$deb" Architecture); want_arch=$(debarch_of "$tr")
  [[ $arch == "$want_arch" ]] || die "$deb: Architecture is $arch, expected $want_arch"
  d=$(mktemp -d); SMOKE_DIRS+=("$d")
  dpkg-deb -x "$deb" "$d"
  cmp -s "$d/usr/bin/store-outbox" "$bin" || die "$deb: usr/bin/store-outbox is not $bin"
  info "$(basename "$deb"): Architecture $arch, Depends: $(dpkg-deb -f "$deb" Depends)"
  info "usr/bin/store-outbox: $(file -b "$d/usr/bin/store-outbox" | cut -d, -f1-2)"
  rm -rf "$d"
  isize=$(dpkg-deb -f "$deb" Installed-Size); dsize=$(stat -c %s "$deb")
  DEB_REPORT+=("$(printf '%-32s %-44s %9s bytes .deb, Installed-Size %5s KiB (%ss)' \
    "$tr" "$(basename "$deb")" "$dsize" "$isize" "$((SECONDS - t0))")")
}

step_deb() {
  command -v cargo-deb >/dev/null || die "cargo-deb not found: cargo install cargo-deb --version $CARGO_DEB_VERSION --locked (or STEPS=install)"
  local tr
  for tr in "${TRIPLES[@]}"; do deb_one "$tr"; done
}

# ---- main -------------------------------------------------------------------
BUILD_REPORT=(); SMOKE_REPORT=(); DEB_REPORT=()
log "targets: ${TRIPLES[*]}; steps: $STEPS; CARGO_TARGET_DIR=$CARGO_TARGET_DIR"
has_step install && step_install
has_step build   && step_build
has_step smoke   && step_smoke
has_step deb     && step_deb

log "summary"
for l in "${BUILD_REPORT[@]-}"; do [[ -n $l ]] && info "$l"; done
for l in "${SMOKE_REPORT[@]-}"; do [[ -n $l ]] && info "smoke $l"; done
for l in "${DEB_REPORT[@]-}"; do [[ -n $l ]] && info "deb $l"; done
[[ ${#BUILD_REPORT[@]} -gt 0 ]] && info "binaries copied to $OUT_DIR/<triple>/store-outbox"
[[ ${#DEB_REPORT[@]} -gt 0 ]] && info "packages in $DEB_OUT"
exit 0
