#!/usr/bin/env bash
# Builds the store-outbox Debian package for one target with cargo-deb.
#
#   packaging/build-deb.sh                               # x86-64 (host): build + .deb
#   packaging/build-deb.sh aarch64-unknown-linux-gnu     # arm64 .deb from a binary built before
#   packaging/build-deb.sh armv7-unknown-linux-gnueabihf # armhf .deb from a binary built before
#
# What it does:
#   1. builds the release binary (host target only, unless NO_BUILD=1); ARM
#      binaries come from packaging/cross-build.sh (or `cross build`), so for
#      an ARM triple it never builds;
#   2. generates the documentation assets next to the binary, where the
#      [package.metadata.deb] assets expect them (target/release/... means
#      "$CARGO_TARGET_DIR[/<triple>]/release/..." to cargo-deb):
#        store-outbox-help.txt  `store-outbox --help` and `help <command>` for
#                               every command (ARM binaries run under qemu-user)
#        store-outbox.1.gz      packaging/store-outbox.1, gzip -9n
#   3. runs `cargo-deb --no-build [--target <triple>]`;
#   4. adds DEBIAN/md5sums (cargo-deb 3.8 writes none; `dpkg --verify` and
#      debsums use it to spot changed files on a store PC) by unpacking and
#      repacking with dpkg-deb --root-owner-group, and prints the .deb's path on
#      stdout (last line).
#
# Environment:
#   CARGO_TARGET_DIR  build output (default: <repo>/target)
#   NO_BUILD=1        package an existing binary (host target)
#   DEB_OUT           directory for the .deb (default: $CARGO_TARGET_DIR/debian)
#   CARGO             cargo used for the host build (default: cargo)
#   SOURCE_DATE_EPOCH file times in the .deb (default: the latest changelog entry's date)
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
TRIPLE=${1:-}
HOST_TRIPLE=x86_64-unknown-linux-gnu
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
DEB_OUT=${DEB_OUT:-$CARGO_TARGET_DIR/debian}
CARGO=${CARGO:-cargo}
# Reproducible file times in the .deb: the date of the latest changelog entry.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(dpkg-parsechangelog -l "$REPO/packaging/debian/changelog" -S Timestamp)}

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

command -v cargo-deb >/dev/null || die "cargo-deb not found: cargo install cargo-deb --version 3.8.0 --locked"

deb_args=(--no-build --output "$DEB_OUT")
run=()
case "$TRIPLE" in
  "" | "$HOST_TRIPLE")
    reldir=$CARGO_TARGET_DIR/release
    if [[ -n $TRIPLE ]]; then
      # cargo-deb looks in $CARGO_TARGET_DIR/<triple>/release when given
      # --target; the host build lives in $CARGO_TARGET_DIR/release.
      TRIPLE=""
    fi
    if [[ ${NO_BUILD:-0} != 1 ]]; then
      log "cargo build --release --locked (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
      (cd "$REPO" && "$CARGO" build --release --locked)
    fi
    ;;
  aarch64-unknown-linux-gnu)
    reldir=$CARGO_TARGET_DIR/$TRIPLE/release
    run=(qemu-aarch64-static -L /)
    deb_args+=(--target "$TRIPLE" --no-strip)   # the release profile strips already
    ;;
  armv7-unknown-linux-gnueabihf)
    reldir=$CARGO_TARGET_DIR/$TRIPLE/release
    run=(qemu-arm-static -L /)
    deb_args+=(--target "$TRIPLE" --no-strip)
    ;;
  *) die "unknown target '$TRIPLE' (x86_64-unknown-linux-gnu, aarch64-unknown-linux-gnu, armv7-unknown-linux-gnueabihf)" ;;
esac

bin=$reldir/store-outbox
[[ -x $bin ]] || die "$bin not found: build it first (packaging/cross-build.sh for ARM)"
log "binary: $bin ($(file -b "$bin" | cut -d, -f1-2))"

# ---- documentation assets ---------------------------------------------------
log "generating $reldir/store-outbox-help.txt and store-outbox.1.gz"
help_out=$reldir/store-outbox-help.txt
{
  version=$("${run[@]}" "$bin" --version)
  echo "$version: command reference"
  echo "Generated from --help at package build time. Overview: man store-outbox."
  echo
  echo "================================================================"
  echo "store-outbox --help"
  echo "================================================================"
  "${run[@]}" "$bin" --help
  # Every command listed under "Commands:" (clap), except "help".
  cmds=$("${run[@]}" "$bin" --help | awk '/^Commands:/{on=1; next} on && /^$/{exit} on {print $1}' | grep -vx help)
  [[ -n $cmds ]] || die "no commands found in '$bin --help'"
  for c in $cmds; do
    echo
    echo "================================================================"
    echo "store-outbox $c --help"
    echo "================================================================"
    "${run[@]}" "$bin" "$c" --help
  done
} > "$help_out.tmp"
mv "$help_out.tmp" "$help_out"
gzip -9n < "$REPO/packaging/store-outbox.1" > "$reldir/store-outbox.1.gz"

# ---- package ----------------------------------------------------------------
mkdir -p "$DEB_OUT"
log "cargo-deb ${deb_args[*]}"
deb=$(cd "$REPO" && cargo-deb "${deb_args[@]}" | tail -1)
[[ -f $deb ]] || die "cargo-deb did not report a .deb (got '$deb')"

log "adding DEBIAN/md5sums"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dpkg-deb -R "$deb" "$tmp/pkg"
(cd "$tmp/pkg" && find . -path ./DEBIAN -prune -o -type f -print0 | LC_ALL=C sort -z \
   | xargs -0 md5sum | sed 's|  \./|  |' > DEBIAN/md5sums)
chmod 0644 "$tmp/pkg/DEBIAN/md5sums"
dpkg-deb --root-owner-group -Zxz -b "$tmp/pkg" "$deb.tmp" >/dev/null
mv "$deb.tmp" "$deb"
log "built $deb ($(stat -c %s "$deb") bytes)"
echo "$deb"
