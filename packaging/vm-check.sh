#!/usr/bin/env bash
# The package under the real systemd, and real power cuts (issues 17 and 24):
# boots a Debian bookworm VM (qemu, TCG: no KVM needed), installs the
# project's .deb in it and checks, with systemd as PID 1:
#
#   install  READY reached (Type=notify: active), `systemctl reload` applies a
#            new subscription, `systemctl kill -s KILL` -> restarted,
#            `systemctl kill -s STOP` -> killed by the watchdog and restarted
#            within WatchdogSec + RestartSec, the sandbox holds (the agent, in
#            its own mount namespace and as its user, cannot write /usr,
#            /home, /etc, /root), `dpkg -i` of a newer version keeps the
#            backlog, journald has readable logs; then a clean reboot
#   reboot   the backlog and the previous boot's journal survived
#   cut N    producers on the socket, loopback HTTP and the spool directory
#            (guest-side, reporting each acknowledgement on the serial port
#            only after the reply), then the qemu process is SIGKILLed at a
#            random moment (disk cache=none, or writeback where O_DIRECT is
#            refused; never unsafe): a power cut for the guest. Next boot:
#            every acknowledged event answers `duplicate: true` when sent
#            again and is listed by `events --json`, PRAGMA integrity_check
#            is ok, every handed-over spool file is stored exactly once
#   cut-reload
#            (power cut POWER_CUTS+1) the same producers while a reloader
#            rewrites the config (central's max_in_flight changed, a
#            subscription added or removed, each time) and runs `systemctl
#            reload` again and again; the power is cut 0-1.5 s after a
#            reload began (2-8 s into the load). Next boot: the same checks,
#            the agent active, and it runs the config on disk (the last one
#            written): status shows its subscriptions, urls, max_in_flight,
#            no reload failure
#   cut-dpkg (power cut POWER_CUTS+2) a backlog (300 events for a
#            subscription whose endpoint is down, filtered to their type),
#            the producers (riding out the restart) and `dpkg -i` of a newer
#            version (+vm2); the power is cut at a random moment of the dpkg
#            run (drawn within 90 % of the time the install boot's upgrade
#            took). Next boot: the agent active before anything is
#            repaired and dpkg's state (dpkg-query, dpkg --audit) reported;
#            where dpkg was interrupted the check runs `dpkg --configure -a`
#            (or `dpkg -i` again when the unpacking was cut or had not
#            begun) as an admin would, and says so; the same checks; every
#            event acknowledged for the backlog still pending, then
#            delivered once its endpoint is up
#   final    the same checks, then the subscription drains to a receiver on
#            the host (`store-outbox receive`, which checks signatures and
#            per-entity order across every power cut); then a second agent on
#            a small real ext4 disk fills it: storage_full, still running,
#            nothing refused stored, everything acknowledged kept, events
#            taken again once space is freed
#
# Run as root on Debian bookworm (x86-64), from anywhere:
#
#   packaging/vm-check.sh
#
# Only Debian packages: qemu-system-x86 and its libraries are fetched with
# `apt-get download` and unpacked with `dpkg-deb -x` (installing them is
# refused next to bookworm-backports' qemu-utils), the guest root is made by
# debootstrap and turned into an ext4 image with `mkfs.ext4 -d` (no loop
# mount). Both are cached in $CACHE_DIR/vm.
#
# Environment:
#   POWER_CUTS=N        power cuts under load (default 3; each adds a boot, about
#                       2 min); the reload and dpkg cuts come on top (two boots)
#   SKIP_BUILD=1        package the binary already in $CARGO_TARGET_DIR/release
#   QUICK_BUILD=1       release build without LTO (as .ci/run and check.sh)
#   CACHE_DIR           default /var/cache/store-outbox-ci (shared with check.sh);
#                       the VM root is rebuilt when older than CACHE_MAX_AGE_DAYS
#                       (default 30) or with REFRESH_VM=1
#   MIRROR              Debian mirror for debootstrap (default http://deb.debian.org/debian)
#   VM_SMP, VM_MEM      guest CPUs (default 2) and memory in MiB (default 1024)
#   KEEP_VM=1           keep $WORK (image, serial logs) for inspection
#   RESULTS=FILE        also write the results (CHECK/INFO lines, figures) to FILE
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=packaging/lib.sh
. "$REPO/packaging/lib.sh"
unset STORE_OUTBOX_CONFIG STORE_OUTBOX_LOG RUST_LOG
export PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
CACHE_DIR=${CACHE_DIR:-/var/cache/store-outbox-ci}
VM_CACHE=$CACHE_DIR/vm
CACHE_MAX_AGE_DAYS=${CACHE_MAX_AGE_DAYS:-30}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
POWER_CUTS=${POWER_CUTS:-3}
VM_SMP=${VM_SMP:-2}
VM_MEM=${VM_MEM:-1024}
# What the guest root holds; part of the cache key.
VM_PACKAGES=systemd-sysv,systemd,udev,linux-image-amd64,python3,procps
ROOT_RECIPE=2
SECRET=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
BOOT_TIMEOUT=${BOOT_TIMEOUT:-900}
WORK=$(mktemp -d /tmp/store-outbox-vm.XXXXXX)

step() { printf '\n==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die()  { printf '\nFAILED: %s\n' "$*" >&2; exit 1; }

QEMU_PID=
SERVER_PIDS=()
cleanup() {
  local p
  [[ -n $QEMU_PID ]] && kill -9 "$QEMU_PID" 2>/dev/null || true
  for p in "${SERVER_PIDS[@]-}"; do [[ -n $p ]] && kill "$p" 2>/dev/null || true; done
  if [[ ${KEEP_VM:-0} == 1 ]]; then
    echo "VM files kept in $WORK" >&2
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[[ $(id -u) -eq 0 ]] || die "run as root (debootstrap, chroot)"
if [[ ${QUICK_BUILD:-0} == 1 ]]; then
  export CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16
  ensure_cargo_deb --debug
else
  ensure_cargo_deb
fi
T_ALL=$SECONDS
mkdir -p "$VM_CACHE"

# ---- qemu, unpacked from Debian packages ------------------------------------
step "qemu-system-x86_64 (apt-get download + dpkg-deb -x, cached in $VM_CACHE)"
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v dpkg-parsechangelog >/dev/null || need+=(dpkg-dev)
if ((${#need[@]})); then
  info "apt-get install ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
qemu_version=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}' | tr ':~+' '___')
[[ -n $qemu_version && $qemu_version != "(none)" ]] || die "apt knows no qemu-system-x86 (apt-get update?)"
QEMU_DIR=$VM_CACHE/qemu-$qemu_version
if [[ ! -x $QEMU_DIR/usr/bin/qemu-system-x86_64 ]]; then
  mkdir -p "$WORK/qemu-debs"
  # apt fetches as _apt where it may.
  id _apt >/dev/null 2>&1 && chown _apt "$WORK/qemu-debs"
  # qemu-system-x86 with every dependency this host lacks (alternatives and
  # foreign architectures aside).
  wanted=()
  for p in $(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
               --no-replaces --no-enhances qemu-system-x86 | grep -v '^ ' | grep -v '^<' | grep -v ':' | sort -u); do
    s=$(dpkg-query -W -f='${db:Status-Status}' "$p:amd64" 2>/dev/null || dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [[ $s == installed ]] || wanted+=("$p")
  done
  info "apt-get download ${#wanted[@]} packages: ${wanted[*]}"
  (cd "$WORK/qemu-debs" && apt-get download "${wanted[@]}" >/dev/null) || die "apt-get download failed"
  rm -rf "$QEMU_DIR.tmp" && mkdir -p "$QEMU_DIR.tmp/fw"
  for d in "$WORK"/qemu-debs/*.deb; do dpkg-deb -x "$d" "$QEMU_DIR.tmp"; done
  # One firmware directory for -L: qemu's own blobs, SeaBIOS, iPXE.
  for f in "$QEMU_DIR.tmp"/usr/share/qemu/* "$QEMU_DIR.tmp"/usr/share/seabios/* "$QEMU_DIR.tmp"/usr/lib/ipxe/qemu/*; do
    [[ -e $f ]] && ln -sfn "$f" "$QEMU_DIR.tmp/fw/$(basename "$f")"
  done
  # The links point into the temporary directory: make them relative.
  (cd "$QEMU_DIR.tmp/fw" && for l in *; do
     t=$(readlink "$l"); ln -sfn "../${t#"$QEMU_DIR.tmp/"}" "$l"; done)
  mv "$QEMU_DIR.tmp" "$QEMU_DIR"
fi
# exec: started with `&`, the function's subshell becomes qemu itself, so
# $! is qemu's pid and SIGKILL reaches it (the power cut).
qemu_run() {
  LD_LIBRARY_PATH=$QEMU_DIR/usr/lib/x86_64-linux-gnu:$QEMU_DIR/lib/x86_64-linux-gnu \
  QEMU_MODULE_DIR=$QEMU_DIR/usr/lib/x86_64-linux-gnu/qemu \
    exec "$QEMU_DIR/usr/bin/qemu-system-x86_64" -L "$QEMU_DIR/fw" "$@"
}
info "$( (qemu_run --version) | head -1)"

# ---- the packages -----------------------------------------------------------
step "the .deb (packaging/build-deb.sh), and two newer versions of it for the upgrades"
DEB1=$(NO_BUILD=${SKIP_BUILD:-0} "$REPO/packaging/build-deb.sh" | tail -1)
[[ -f $DEB1 ]] || die "build-deb.sh gave no .deb"
version=$(dpkg-deb -f "$DEB1" Version)
# The same files under a higher version: dpkg runs the real upgrade path
# (prerm upgrade, new files, postinst configure <old version>, restart).
# +vm1 for the install boot's upgrade, +vm2 for the one the power cut
# interrupts (phase cut-dpkg).
dpkg-deb -R "$DEB1" "$WORK/deb-newer"
for n in 1 2; do
  sed -i "s/^Version: .*/Version: ${version}+vm$n/" "$WORK/deb-newer/DEBIAN/control"
  dpkg-deb --root-owner-group -b "$WORK/deb-newer" "$WORK/store-outbox-$((n + 1)).deb" >/dev/null
done
rm -rf "$WORK/deb-newer"
DEB2=$WORK/store-outbox-2.deb
DEB3=$WORK/store-outbox-3.deb
info "$(basename "$DEB1") ($version), ${version}+vm1 and ${version}+vm2"
BIN=$CARGO_TARGET_DIR/release/store-outbox

# ---- the guest root, cached ---------------------------------------------------
key=$(printf '%s\n' "$VM_PACKAGES" "$ROOT_RECIPE" "$MIRROR" | sha256sum | cut -c1-12)
ROOT_TAR=$VM_CACHE/bookworm-vm-$key.tar.gz
step "guest root ($ROOT_TAR)"
if [[ ${REFRESH_VM:-0} == 1 || ! -f $ROOT_TAR || -n $(find "$ROOT_TAR" -mtime +"$CACHE_MAX_AGE_DAYS" 2>/dev/null) ]]; then
  t0=$SECONDS
  build=$WORK/build
  info "debootstrap --variant=minbase --include=$VM_PACKAGES bookworm ($MIRROR)"
  debootstrap --variant=minbase --include="$VM_PACKAGES" bookworm "$build" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log"; die "debootstrap failed (log above)"; }
  echo vm-check >"$build/etc/hostname"
  printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\n' >"$build/etc/fstab"
  # DHCP on the user-mode network: the guest reaches the host as 10.0.2.2.
  printf '[Match]\nName=en* eth*\n[Network]\nDHCP=ipv4\n' >"$build/etc/systemd/network/10-vm.network"
  # A persistent journal (the reboot check reads the boot before).
  mkdir -p "$build/var/log/journal"
  chroot "$build" systemctl enable systemd-networkd.service >/dev/null 2>&1
  # Nothing else competes for the guest's slow emulated CPUs.
  chroot "$build" systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
    fstrim.timer systemd-networkd-wait-online.service >/dev/null 2>&1 || true
  chroot "$build" apt-get clean
  tar -C "$build" --numeric-owner -czpf "$ROOT_TAR.tmp" . && mv "$ROOT_TAR.tmp" "$ROOT_TAR"
  rm -rf "$build"
  info "built in $((SECONDS - t0)) s"
else
  info "cached ($(du -h "$ROOT_TAR" | cut -f1), $(( ($(date +%s) - $(stat -c %Y "$ROOT_TAR")) / 86400 )) days old)"
fi

# ---- this run's image -----------------------------------------------------------
step "disk image (mkfs.ext4 -d)"
root=$WORK/root
mkdir -p "$root"
tar -C "$root" --numeric-owner -xzpf "$ROOT_TAR"
mkdir -p "$root/root/vm"
install -m 0755 "$REPO/packaging/vm/guest-check.py" "$root/root/vm/guest-check.py"
cp "$DEB1" "$root/root/vm/store-outbox-1.deb"
cp "$DEB2" "$root/root/vm/store-outbox-2.deb"
cp "$DEB3" "$root/root/vm/store-outbox-3.deb"
cat >"$root/root/vm/config.base.toml" <<'EOF'
# Written by the VM check: the packaged paths, a known store.
[agent]
store_id = "vm"
agent_id = "vm-check"
data_dir = "/var/lib/store-outbox"

[ingest]
socket = "/run/store-outbox/ingest.sock"
spool_dir = "/var/spool/store-outbox"
EOF
cat >"$root/etc/systemd/system/vm-check.service" <<'EOF'
[Unit]
Description=store-outbox VM check (packaging/vm-check.sh)
After=local-fs.target systemd-networkd.service
[Service]
Type=simple
ExecStart=/usr/bin/python3 /root/vm/guest-check.py
[Install]
WantedBy=multi-user.target
EOF
chroot "$root" systemctl enable vm-check.service >/dev/null 2>&1
cp "$root"/boot/vmlinuz-* "$WORK/vmlinuz"
cp "$root"/boot/initrd.img-* "$WORK/initrd.img"
IMG=$WORK/disk.img
qemu-img create -q -f raw "$IMG" 3G
mkfs.ext4 -q -F -L vmroot -d "$root" "$IMG"
rm -rf "$root"
# A small data disk for the full-disk check (/dev/vdb in the guest).
DATA_IMG=$WORK/data.img
qemu-img create -q -f raw "$DATA_IMG" 24M
mkfs.ext4 -q -F -L vmdata "$DATA_IMG"
# cache=none (O_DIRECT): what the guest flushed is on the host disk; never
# unsafe (which would ignore the guest's flushes). writeback where the
# host's filesystem refuses O_DIRECT: the guest's flushes still reach it.
if dd if=/dev/zero of="$WORK/odirect" bs=4096 count=1 oflag=direct 2>/dev/null; then
  CACHE_MODE=none
else
  CACHE_MODE=writeback
fi
rm -f "$WORK/odirect"
info "3 GiB raw image, cache=$CACHE_MODE"

# ---- the host side: receiver and the acknowledgements -----------------------------
RECV_PORT=$(free_port)
"$BIN" receive --listen "127.0.0.1:$RECV_PORT" --secret "$SECRET" --json >"$WORK/received.jsonl" 2>"$WORK/receiver.log" &
SERVER_PIDS+=($!)
ACK_PORT=$(free_port)
mkdir -p "$WORK/serve"
: >"$WORK/serve/acks.txt"
python3 -m http.server --bind 127.0.0.1 --directory "$WORK/serve" "$ACK_PORT" >"$WORK/acks-server.log" 2>&1 &
SERVER_PIDS+=($!)
wait_for 30 bash -c "exec 3<>/dev/tcp/127.0.0.1/$RECV_PORT" 2>/dev/null || die "receiver did not start"
wait_for 30 bash -c "exec 3<>/dev/tcp/127.0.0.1/$ACK_PORT" 2>/dev/null || die "ack server did not start"

RESULTS_ALL=$WORK/results.txt
: >"$RESULTS_ALL"
BOOTS=0
# How long the install boot's `dpkg -i` upgrade took (its INFO line), in ms:
# the power cut during the later one is drawn within it.
DPKG_MS=5000
now_ms() { local t=${EPOCHREALTIME//[.,]/}; echo $((t / 1000)); }
# boot <phase> <cut> [more kernel arguments]: one boot of the VM until its
# DONE line and power-off, or a SIGKILL of qemu (the power cut) at a random
# moment. cut: 0 none; 1 2-12 s after PRODUCING; reload 0-1.5 s after a
# RELOAD-START line that comes 2-8 s after PRODUCING; dpkg 0-90 % of
# DPKG_MS after DPKG-START.
boot() {
  local phase=$1 cut=$2 t0=$SECONDS out serial
  shift 2
  BOOTS=$((BOOTS + 1))
  out=$WORK/ttyS1-$BOOTS.log
  serial=$WORK/console-$BOOTS.log
  : >"$out"
  qemu_run -accel tcg,thread=multi -cpu max -machine q35 -smp "$VM_SMP" -m "$VM_MEM" \
    -display none -no-reboot -monitor none \
    -kernel "$WORK/vmlinuz" -initrd "$WORK/initrd.img" \
    -append "root=/dev/vda rw console=ttyS0 quiet loglevel=3 systemd.show_status=false vmcheck.phase=$phase vmcheck.receiver=http://10.0.2.2:$RECV_PORT/hooks vmcheck.acks=http://10.0.2.2:$ACK_PORT/acks.txt $*" \
    -drive "file=$IMG,format=raw,if=virtio,cache=$CACHE_MODE" \
    -drive "file=$DATA_IMG,format=raw,if=virtio,cache=$CACHE_MODE" \
    -netdev user,id=n0 -device virtio-net-pci,netdev=n0,romfile= \
    -serial "file:$serial" -serial "file:$out" &
  QEMU_PID=$!
  local deadline=$((SECONDS + BOOT_TIMEOUT)) cut_at= armed_at= starts= now
  while kill -0 "$QEMU_PID" 2>/dev/null; do
    if ((SECONDS > deadline)); then
      kill -9 "$QEMU_PID"; wait "$QEMU_PID" 2>/dev/null || true; QEMU_PID=
      tail -30 "$serial" >&2
      die "boot $BOOTS ($phase) did not finish in $BOOT_TIMEOUT s"
    fi
    now=$(now_ms)
    if [[ -z $cut_at ]]; then
      case $cut in
        1) grep -q '^PRODUCING' "$out" && cut_at=$((now + 2000 + RANDOM % 10001)) ;;
        reload)
          if [[ -z $armed_at ]]; then
            grep -q '^PRODUCING' "$out" && armed_at=$((now + 2000 + RANDOM % 6001))
          elif ((now >= armed_at)); then
            # The next reload to begin from here on.
            if [[ -z $starts ]]; then
              starts=$(grep -c '^RELOAD-START ' "$out" || true)
            elif (($(grep -c '^RELOAD-START ' "$out" || true) > starts)); then
              cut_at=$((now + RANDOM % 1501))
            fi
          fi ;;
        dpkg) grep -q '^DPKG-START' "$out" && cut_at=$((now + (RANDOM * 32768 + RANDOM) % (DPKG_MS * 9 / 10 + 1))) ;;
      esac
    fi
    if [[ -n $cut_at ]] && ((now >= cut_at)); then
      kill -9 "$QEMU_PID"
      break
    fi
    if [[ $cut == 0 || $cut == 1 ]]; then sleep 0.5; else sleep 0.1; fi
  done
  wait "$QEMU_PID" 2>/dev/null || true
  QEMU_PID=
  tr -d '\r' <"$out" >"$out.txt"
  # A line cut off by the power cut is no report.
  [[ -z $(tail -c1 "$out.txt") ]] || sed -i '$d' "$out.txt"
  grep -E '^(ACK|HANDED|RELOAD-START|RELOAD-DONE) ' "$out.txt" >>"$WORK/serve/acks.txt" || true
  grep -E '^(CHECK|INFO) ' "$out.txt" | sed "s/^/[$phase] /" | tee -a "$RESULTS_ALL" | sed 's/^/    /'
  local acks handed when
  acks=$(grep -c '^ACK ' "$out.txt" || true)
  handed=$(grep -c '^HANDED ' "$out.txt" || true)
  grep -q '^CHECK FAIL' "$out.txt" && die "boot $BOOTS ($phase): a check failed (above)"
  if [[ $cut != 0 ]]; then
    [[ -n $cut_at ]] || die "boot $BOOTS ($phase): the guest never reached the moment to cut (see $serial and above)"
    when=
    case $cut in
      reload)
        local started done_ last
        started=$(grep -c '^RELOAD-START ' "$out.txt" || true)
        done_=$(grep -c '^RELOAD-DONE ' "$out.txt" || true)
        last=$(grep '^RELOAD-START ' "$out.txt" | tail -1 | cut -d' ' -f2)
        if ((started > done_)); then
          when=" within reload $last (config on disk, systemctl reload not returned; $done_ reloads returned before)"
        else
          when=" after reload $last returned ($done_ reloads returned)"
        fi ;;
      dpkg)
        if grep -q '^DPKG-END ' "$out.txt"; then
          when=" after dpkg -i had ended (the draw, within $DPKG_MS ms, was longer than this run)"
        else
          when=" during dpkg -i, $(grep -c '^DPKG-STATUS ' "$out.txt" || true) status lines in, the last: '$(grep '^DPKG-STATUS ' "$out.txt" | tail -1 | cut -d' ' -f2-)'"
        fi ;;
    esac
    echo "[$phase] INFO power cut after $((SECONDS - t0)) s of boot and load$when: $acks events acknowledged, $handed spool files handed over in this boot" | tee -a "$RESULTS_ALL" | sed 's/^/    /'
  else
    grep -q "^DONE $phase ok" "$out.txt" || { tail -30 "$serial" >&2; die "boot $BOOTS ($phase) did not end with DONE ok"; }
  fi
  info "boot $BOOTS ($phase): $((SECONDS - t0)) s"
}

step "boot 1: install, reload, KILL, STOP (watchdog), sandbox, upgrade"
boot install 0
took=$(awk '/^INFO dpkg -i upgrade took / {printf "%d", $6 * 1000}' "$WORK/ttyS1-$BOOTS.log.txt")
[[ -n $took ]] && ((took > 0)) && DPKG_MS=$took
step "boot 2: after the reboot; producers, then power cut 1"
boot reboot 1 vmcheck.cycle=1
for ((c = 2; c <= POWER_CUTS; c++)); do
  step "boot $((c + 1)): checks after power cut $((c - 1)); producers, then power cut $c"
  boot cut 1 "vmcheck.cycle=$c"
done
c=$((POWER_CUTS + 1))
step "boot $((c + 1)): checks after power cut $POWER_CUTS; producers and reloads, then power cut $c around a reload"
boot cut-reload reload "vmcheck.cycle=$c"
c=$((c + 1))
step "boot $((c + 1)): checks after power cut $((c - 1)), the config on disk; a backlog, producers, dpkg -i, then power cut $c during it"
boot cut-dpkg dpkg "vmcheck.cycle=$c"
step "boot $((c + 2)): dpkg's state after power cut $c, checks, the backlog delivered; drain"
boot final 0 "vmcheck.cycle=$((c + 1))"

step "the host's receiver: signatures and per-entity order across every power cut"
acked=$(grep -c '^ACK ' "$WORK/serve/acks.txt" || true)
python3 - "$WORK/received.jsonl" "$WORK/serve/acks.txt" <<'EOF' | tee -a "$RESULTS_ALL" | sed 's/^/    /'
import json, sys
received = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
acked = [l.split()[1] for l in open(sys.argv[2]) if l.startswith("ACK ")]
ids = {r["id"] for r in received}
bad_order = [r for r in received if r["order"] == "out_of_order"]
bad_sig = [r for r in received if r.get("signature_valid") is False]
missing = [i for i in acked if i not in ids]
ok = not bad_order and not bad_sig and not missing
dup = len(received) - len(ids)
print(f"[receiver] CHECK {'ok' if ok else 'FAIL'} delivered in order per entity, signed, every acknowledged event: "
      f"{len(received)} requests, {len(ids)} distinct events, {dup} repeats, {len(bad_order)} out of order, "
      f"{len(bad_sig)} bad signatures, {len(missing)} acknowledged but not delivered")
sys.exit(0 if ok else 1)
EOF
[[ ${PIPESTATUS[0]} == 0 ]] || die "the receiver's checks failed"

checks=$(grep -c ' CHECK ok ' "$RESULTS_ALL" || true)
step "summary"
info "$checks checks passed in $BOOTS boots, $((POWER_CUTS + 2)) power cuts ($POWER_CUTS under load, one around a reload, one during dpkg -i), $acked acknowledged events; cache=$CACHE_MODE; $((SECONDS - T_ALL)) s"
[[ -n ${RESULTS:-} ]] && cp "$RESULTS_ALL" "$RESULTS"
exit 0
