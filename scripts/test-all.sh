#!/usr/bin/env bash
# The whole test suite, as README.md's Quickstart runs it and .ci/run calls it.
# Installs what it needs when missing; under CI=true a prerequisite that cannot
# be set up is a failure, never a skip.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
fail() { printf 'error: %s\n' "$*" >&2; exit 1; }

# ---- prerequisites -------------------------------------------------------
need_apt=()
for pair in \
    "pkg-config:pkg-config" \
    "/usr/include/seccomp.h:libseccomp-dev" \
    "/bin/busybox:busybox-static" \
    "ip:iproute2" \
    "nft:nftables" \
    "ping:iputils-ping" \
    "skopeo:skopeo" \
    "nix-instantiate:nix-bin"; do
    probe=${pair%%:*} package=${pair##*:}
    if [[ $probe == /* ]]; then [[ -e $probe ]] || need_apt+=("$package")
    else command -v "$probe" >/dev/null 2>&1 || need_apt+=("$package"); fi
done
if ((${#need_apt[@]})); then
    step "installing ${need_apt[*]}"
    if [[ $(id -u) -ne 0 ]]; then
        [[ ${CI:-} == true ]] && fail "need root to install ${need_apt[*]}"
        echo "warning: not root, cannot install ${need_apt[*]}; tests that need them will fail" >&2
    else
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq || true
        apt-get install -y -qq "${need_apt[@]}" >/dev/null \
            || fail "apt-get install ${need_apt[*]} failed"
    fi
fi
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy

# ---- static checks -------------------------------------------------------
step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

# ---- tests ---------------------------------------------------------------
# Unit, property and integration tests of every crate but the cluster
# scenarios; the simulator runs a short smoke here and its full seed count in
# release below.
step "cargo test (workspace, except cluster scenarios)"
SHOAL_SIM_SEEDS=${SHOAL_SIM_SEEDS_DEBUG:-50} \
    cargo test --workspace --locked --exclude shoal-vm-tests

step "simulator: 1000 seeds (release)"
cargo test -p shoal-crdt --release --locked --test simulator

step "nix checks (flake, module, VM tests, drift)"
scripts/nix-checks.sh "${CARGO_TARGET_DIR:-target}/debug/shoal"

# The cluster scenarios start real daemons in network namespaces; one at a
# time, so two cores are not shared between clusters. They use the
# target/debug/shoal that the workspace tests built.
step "cluster scenarios in network namespaces"
cargo test -p shoal-vm-tests --locked -- --test-threads 1

step "all checks passed"
