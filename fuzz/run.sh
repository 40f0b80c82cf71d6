#!/usr/bin/env bash
# Short, bounded fuzz run of every target, for CI and for a quick local check.
#
#   fuzz/run.sh                          # every target, FUZZ_SECONDS each
#   FUZZ_SECONDS=300 fuzz/run.sh poslog_xml
#
# Environment:
#   FUZZ_SECONDS    seconds of fuzzing per target (default 20)
#   FUZZ_SANITIZER  none (default: builds on stable Rust, ~2x the execs/s) or
#                   address (needs nightly flags; RUSTC_BOOTSTRAP=1 is set for it)
#   FUZZ_RSS_MB     libFuzzer -rss_limit_mb (default 2048)
#
# Fuzzes a temporary copy of the seed corpus (fuzz/corpus/<target>/ stays as
# committed). Exits 1 if any target crashed, after trying all of them; the
# crashing input is under fuzz/artifacts/<target>/ (printed below).
set -euo pipefail

CARGO_FUZZ_VERSION=0.13.2
FUZZ_SECONDS=${FUZZ_SECONDS:-20}
FUZZ_SANITIZER=${FUZZ_SANITIZER:-none}
FUZZ_RSS_MB=${FUZZ_RSS_MB:-2048}

# target:max_len:dictionary. Events are small; files and documents get more room.
ALL_TARGETS=(
    event_json:4096:event.dict
    ndjson_file:8192:event.dict
    json_file:8192:event.dict
    poslog_xml:16384:poslog.dict
    config_toml:4096:config.dict
    socket_framing:8192:socket.dict
    http_head:4096:http.dict
    spool_file:16384:spool.dict
)

cd "$(dirname "$0")"
fuzz_dir=$PWD

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

build_flags=(--sanitizer "$FUZZ_SANITIZER" --codegen-units 16)
if [[ $FUZZ_SANITIZER != none ]]; then
    # -Zsanitizer is a nightly flag; allow it on a stable toolchain.
    export RUSTC_BOOTSTRAP=1
fi

selected=()
if [[ $# -gt 0 ]]; then
    for want in "$@"; do
        found=
        for entry in "${ALL_TARGETS[@]}"; do
            [[ ${entry%%:*} == "$want" ]] && selected+=("$entry") && found=1
        done
        [[ -n $found ]] || { echo "unknown target: $want (have: ${ALL_TARGETS[*]%%:*})" >&2; exit 2; }
    done
else
    selected=("${ALL_TARGETS[@]}")
fi

echo "== building fuzz targets (sanitizer: $FUZZ_SANITIZER)"
build_start=$SECONDS
cargo fuzz build "${build_flags[@]}"
echo "== build took $((SECONDS - build_start))s"

work=$(mktemp -d "${TMPDIR:-/tmp}/store-outbox-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT

summary=()
failed=0
for entry in "${selected[@]}"; do
    target=${entry%%:*}
    rest=${entry#*:}
    max_len=${rest%%:*}
    dict=$fuzz_dir/dict/${rest#*:}
    corpus=$work/corpus/$target
    mkdir -p "$corpus"
    cp -R "corpus/$target/." "$corpus/"
    seeds=$(find "$corpus" -type f | wc -l)
    log=$work/$target.log
    echo "== $target: ${FUZZ_SECONDS}s, max_len $max_len, $seeds seeds"
    status=0
    started=$SECONDS
    cargo fuzz run "${build_flags[@]}" "$target" "$corpus" -- \
        -max_total_time="$FUZZ_SECONDS" \
        -rss_limit_mb="$FUZZ_RSS_MB" \
        -max_len="$max_len" \
        -dict="$dict" \
        -timeout=10 \
        -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    took=$((SECONDS - started))
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    corpus_after=$(find "$corpus" -type f | wc -l)
    if [[ $status -eq 0 ]]; then
        summary+=("$(printf '%-14s ok     %10s runs  %8s exec/s  corpus %s -> %s  (%ss)' \
            "$target" "${runs:-?}" "${rate:-?}" "$seeds" "$corpus_after" "$took")")
    else
        failed=1
        # libFuzzer: "Test unit written to <path>"; paths are relative to fuzz/.
        artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
        [[ -n $artifact && $artifact != /* ]] && artifact=$fuzz_dir/$artifact
        echo "!! $target FAILED (exit $status):"
        # The panic message (or libFuzzer's reason: oom, timeout, leak) and how to reproduce.
        reason=$(grep -a -E -A2 "panicked at|ERROR: libFuzzer|^SUMMARY" "$log" | grep -a -v -E '^ +[0-9]+: |^ +at ' \
            | cut -c1-400 || true)
        if [[ -n $reason ]]; then head -n 30 <<<"$reason"; else tail -n 30 "$log"; fi
        echo "!! crashing input: ${artifact:-none written (see log above)}"
        summary+=("$(printf '%-14s CRASH  %10s runs  artifact: %s  (%ss)' "$target" "${runs:-?}" "${artifact:-?}" "$took")")
    fi
done

echo "== summary (${FUZZ_SECONDS}s per target, sanitizer $FUZZ_SANITIZER)"
printf '%s\n' "${summary[@]}"
exit "$failed"
