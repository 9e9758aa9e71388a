#!/usr/bin/env bash
# Runs shoal's fuzz targets (fuzz/, cargo-fuzz and libFuzzer), each for a bounded time;
# .ci/run calls it after the README's test command. The targets and what they check are in
# fuzz/src/lib.rs.
#
#   scripts/fuzz.sh                 every target, FUZZ_SECONDS each (default 60)
#   scripts/fuzz.sh TARGET...       only these (codec_apply spec_file api_request sync_wire)
#   scripts/fuzz.sh seeds           rewrite fuzz/seeds/ from fuzz/src/seeds.rs (stable only)
#   scripts/fuzz.sh --list          the targets
#
# First, on stable, the committed seeds are checked against what fuzz/src/seeds.rs makes
# and replayed through every target's checks (`cargo test` in fuzz/). Fuzzing itself needs
# a nightly toolchain (rustup's `nightly`) and cargo-fuzz, which this script installs when
# missing. Without nightly it says so and exits 0, except under CI=true, where that is an
# error: the README's test command needs stable alone, this script needs nightly too.
#
# Each target starts from its working corpus (fuzz/corpus/TARGET, not committed) and the
# committed seeds (fuzz/seeds/TARGET), with a dictionary (fuzz/dicts/TARGET.dict), debug
# assertions and overflow checks on, and AddressSanitizer. A crash, a timeout of one input
# (FUZZ_INPUT_TIMEOUT_S, default 30) or a memory blow-up (FUZZ_RSS_MB_MAX, default 2048)
# fails the target: its reproducer is under fuzz/artifacts/TARGET/, its log under
# fuzz/logs/; the other targets still run, and the script then exits 1 naming them.
# Replay one input with `cargo +nightly fuzz run TARGET FILE` in the repository root.
# Builds go to CARGO_TARGET_DIR, by default the workspace's target/ (nightly builds land in
# its x86_64-unknown-linux-gnu/ directory, apart from the stable ones).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

step() { printf '\n==> %s\n' "$*"; }
say() { printf 'fuzz: %s\n' "$*"; }
fail() { printf 'fuzz: error: %s\n' "$*" >&2; exit 1; }

targets_all=(codec_apply spec_file api_request sync_wire)
# Largest input per target: a snapshot of the sample state is under 2 KiB.
declare -A max_len=([codec_apply]=16384 [spec_file]=8192 [api_request]=8192 [sync_wire]=8192)
cargo_fuzz_version=0.13.2

export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
seconds=${FUZZ_SECONDS:-60}
input_timeout_s=${FUZZ_INPUT_TIMEOUT_S:-30}
rss_mb_max=${FUZZ_RSS_MB_MAX:-2048}
[[ $seconds =~ ^[1-9][0-9]*$ ]] || fail "FUZZ_SECONDS must be a whole number of seconds, got ${seconds@Q}"

targets=()
case "${1:-}" in
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    --list) printf '%s\n' "${targets_all[@]}"; exit 0 ;;
    seeds)
        step "writing fuzz/seeds/ (cargo run --example write_seeds)"
        cargo run --manifest-path fuzz/Cargo.toml --locked --example write_seeds
        exit 0
        ;;
    "") targets=("${targets_all[@]}") ;;
    *)
        for target in "$@"; do
            [[ " ${targets_all[*]} " == *" $target "* ]] \
                || fail "unknown target $target (targets: ${targets_all[*]})"
            targets+=("$target")
        done
        ;;
esac

# ---- stable: the seeds ---------------------------------------------------------
step "fuzz seeds: up to date and passing every target's checks (stable)"
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
cargo test --manifest-path fuzz/Cargo.toml --locked

# ---- nightly and cargo-fuzz ----------------------------------------------------
step "fuzzing: nightly toolchain and cargo-fuzz"
if ! nightly=$(cargo +nightly --version 2>&1); then
    message="no nightly toolchain (cargo-fuzz needs one): install it with \`rustup toolchain install nightly\`"
    if [[ ${CI:-} == true ]]; then
        fail "$message"
    fi
    say "$message; skipping the fuzz targets (under CI=true this is an error)"
    exit 0
fi
say "$nightly"
if ! cargo fuzz --version >/dev/null 2>&1; then
    say "installing cargo-fuzz $cargo_fuzz_version from crates.io"
    cargo install --locked --quiet cargo-fuzz --version "$cargo_fuzz_version" \
        || fail "cargo install cargo-fuzz failed"
fi
say "$(cargo fuzz --version)"

build_flags=(--debug-assertions)
step "building the fuzz targets (cargo +nightly fuzz build)"
cargo +nightly fuzz build "${build_flags[@]}"

# ---- fuzzing ---------------------------------------------------------------------
mkdir -p fuzz/logs
failed=()
summary=()
for target in "${targets[@]}"; do
    step "fuzzing $target for ${seconds} s"
    mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
    log="fuzz/logs/$target.log"
    started=$SECONDS
    status=0
    cargo +nightly fuzz run "${build_flags[@]}" "$target" "$root/fuzz/corpus/$target" "$root/fuzz/seeds/$target" -- \
        -max_total_time="$seconds" -max_len="${max_len[$target]}" -dict="$root/fuzz/dicts/$target.dict" \
        -timeout="$input_timeout_s" -rss_limit_mb="$rss_mb_max" -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    elapsed=$((SECONDS - started))
    # libFuzzer's own figures: "Done N runs in S second(s)", then the final stats.
    done_line=$(grep -E '^Done [0-9]+ runs in [0-9]+ second' "$log" | tail -n 1 || true)
    stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -n 1; }
    last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 | grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [^ ]+' || true)
    if ((status != 0)); then
        failed+=("$target")
        summary+=("$target: FAILED after ${elapsed} s (exit $status); log $log")
        say "$target failed; the end of its log:"
        tail -n 60 "$log"
        say "reproducers: $(find "fuzz/artifacts/$target" -type f -printf '%p ' 2>/dev/null)"
    else
        summary+=("$target: ${done_line:-no run?} ($(stat average_exec_per_sec) exec/s, ${last:-no stats}, peak RSS $(stat peak_rss_mb) MB), no crash")
        say "${summary[-1]}"
    fi
done

step "fuzz summary"
printf '  %s\n' "${summary[@]}"
if ((${#failed[@]})); then
    fail "targets that found a problem: ${failed[*]} (reproducers under fuzz/artifacts/)"
fi
say "${#targets[@]} targets, ${seconds} s each: no crash"
