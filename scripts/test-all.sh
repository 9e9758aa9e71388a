#!/usr/bin/env bash
# The whole test suite, as README.md's Quickstart runs it and .ci/run calls it.
# Installs what it needs when missing (scripts/setup-host.sh); a prerequisite
# that cannot be set up is a failure, never a skip. One `step` per part: a new
# part is one more step below.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

# ---- prerequisites -------------------------------------------------------
# The one setup path, shared with scripts/demo.sh: Debian packages, rustup
# components and the Nix linters; it fails, naming what is missing, when it
# cannot set something up.
step "setting up the host (scripts/setup-host.sh)"
scripts/setup-host.sh
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

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

# The cluster simulator's 1000 seeds take about 6 minutes unoptimised and under one
# optimised; the workspace run above runs 20 of them.
step "cluster simulator: 1000 seeds (release)"
cargo test -p shoal --release --locked --test cluster_simulator

step "nix checks (flake, module, VM tests, drift)"
scripts/nix-checks.sh "${CARGO_TARGET_DIR:-target}/debug/shoal"

# The cluster scenarios start real daemons in network namespaces; one at a
# time, so two cores are not shared between clusters. They use the
# target/debug/shoal that the workspace tests built, and the 48-node one the
# optimised daemon (48 unoptimised ones need more than two cores), linked here
# from the release library the cluster simulator's step built.
step "cluster scenarios in network namespaces"
cargo build -p shoal --release --locked --bin shoal
cargo test -p shoal-vm-tests --locked -- --test-threads 1

step "all checks passed"
