#!/usr/bin/env bash
# The one setup path of README.md's two commands: scripts/demo.sh and
# scripts/test-all.sh both start here, so they cannot disagree about what a
# machine needs. It installs every tool the demo and the test suite call on a
# Debian 12 machine that has a Rust toolchain, or says exactly what is missing
# and how to install it.
#
#   scripts/setup-host.sh                  Debian packages (apt-get, as root), the
#                                          rustup components rustfmt and clippy,
#                                          and the Nix linters from crates.io
#   scripts/setup-host.sh --packages-only  the Debian packages alone (no Rust
#                                          toolchain needed: a fresh Debian root)
#   scripts/setup-host.sh --requirements   print the table below and exit
#
# Not root and a Debian package missing: it prints the missing packages, what
# each is for, and the one command that installs them, then exits 1. Anything
# else it cannot set up is an error too (under CI=true as everywhere): a
# prerequisite is never skipped. Once done it probes every requirement again,
# so a table entry whose package does not provide it fails here.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

# Every tool the demo and the suite call, in one table: scripts/check-fresh-host.sh
# reads it (--requirements) to verify a fresh Debian root after this script
# ran in it, and to check that every program the Rust code spawns is listed.
# A tool added to the suite goes here, with where it comes from.
#
#   KIND              NAME                  SOURCE
#   command           on PATH               Debian package
#   file              must exist            Debian package
#   python-module     importable by Debian's /usr/bin/python3   Debian package
#   rustup-component  `cargo SUBCOMMAND`    rustup component
#   crate             binary on PATH        crate@version for cargo install
requirements() {
    sed -e 's/[[:space:]]*#.*//' -e '/^$/d' <<'TABLE'
command           cc                      build-essential   # links every Rust binary
file              /usr/include/stdio.h    build-essential   # libc headers for cc
command           pkg-config              pkg-config        # finds libseccomp (youki's libcontainer)
file              /usr/include/seccomp.h  libseccomp-dev    # the issue's linker error without it
file              /bin/busybox            busybox-static    # the demo's and the tests' images
command           sh                      dash              # oci's spawn tests
command           tar                     tar               # nix-checks copies the tree
command           cat                     coreutils         # the lab's byte counters, in a netns
command           ip                      iproute2          # container networking, netns lab
command           nft                     nftables          # the lab's cuts and loss
command           ping                    iputils-ping      # lab reachability
command           nsenter                 util-linux        # daemons and probes inside a netns
command           skopeo                  skopeo            # oci image tests
command           nix                     nix-bin           # nix-checks: flake check
command           nix-instantiate         nix-bin           # nix-checks: parse, eval
command           git                     git               # nix-checks: the files git sees
command           python3                 python3           # nix-checks' helpers
python-module     pyflakes                python3-pyflakes  # VM test scripts (not pip: Debian 12 refuses it)
python-module     tomli_w                 python3-tomli-w   # drift test: JSON to TOML as nixpkgs does
rustup-component  fmt                     rustfmt           # cargo fmt --check
rustup-component  clippy                  clippy            # cargo clippy -D warnings
crate             deadnix                 deadnix@1.3.1     # nix-checks: unused Nix code
crate             nixpkgs-fmt             nixpkgs-fmt@1.3.0 # nix-checks: Nix formatting
TABLE
}

say() { printf 'setup-host: %s\n' "$*"; }
fail() { printf 'setup-host: error: %s\n' "$*" >&2; exit 1; }

packages_only=false
case "${1:-}" in
    "") ;;
    --packages-only) packages_only=true ;;
    --requirements) requirements; exit 0 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    *) fail "unknown argument $1 (see --help)" ;;
esac

export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

# present KIND NAME: whether the requirement holds on this machine. Commands
# are looked up in the sbin directories too, which are not on a user's PATH
# on Debian (nft is /usr/sbin/nft).
present() {
    case $1 in
        command) PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin" command -v "$2" >/dev/null 2>&1 ;;
        file) [[ -e $2 ]] ;;
        python-module) [[ -x /usr/bin/python3 ]] && /usr/bin/python3 -c "import $2" >/dev/null 2>&1 ;;
        rustup-component) cargo "$2" --version >/dev/null 2>&1 ;;
        crate) command -v "$2" >/dev/null 2>&1 ;;
        *) fail "unknown requirement kind $1" ;;
    esac
}

# missing KIND...: "KIND NAME SOURCE" of every unmet requirement of those kinds.
missing() {
    local kind name source
    while read -r kind name source; do
        for wanted in "$@"; do
            if [[ $kind == "$wanted" ]] && ! present "$kind" "$name"; then
                echo "$kind $name $source"
            fi
        done
    done < <(requirements)
}

debian_kinds=(command file python-module)

# ---- Debian packages -------------------------------------------------------
mapfile -t unmet < <(missing "${debian_kinds[@]}")
if ((${#unmet[@]})); then
    packages=$(printf '%s\n' "${unmet[@]}" | awk '{ print $3 }' | sort -u | tr '\n' ' ')
    packages=${packages% }
    if [[ $(id -u) -ne 0 ]]; then
        say "missing Debian packages: $packages"
        for entry in "${unmet[@]}"; do
            read -r _ name package <<<"$entry"
            printf '  %-18s for %s\n' "$package" "$name"
        done
        say "install them as root with:"
        echo "  sudo sh -c 'apt-get update && apt-get install -y $packages'"
        say "then run this again"
        exit 1
    fi
    say "installing Debian packages: $packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || say "warning: apt-get update failed; trying the package lists at hand"
    # shellcheck disable=SC2086 # one word per package
    apt-get install -y -qq $packages >/dev/null || fail "apt-get install $packages failed"
    mapfile -t unmet < <(missing "${debian_kinds[@]}")
    ((${#unmet[@]} == 0)) || fail "still missing after installing $packages (is the table in $0 right?):
$(printf '  %s\n' "${unmet[@]}")"
fi
say "Debian packages: all present"

if $packages_only; then
    say "--packages-only: Rust components and crates not checked"
    exit 0
fi

# ---- Rust toolchain ----------------------------------------------------------
command -v cargo >/dev/null 2>&1 \
    || fail "no Rust toolchain (cargo): install one with rustup (https://rustup.rs), then run this again"

mapfile -t unmet < <(missing rustup-component)
if ((${#unmet[@]})); then
    components=$(printf '%s\n' "${unmet[@]}" | awk '{ print $3 }' | tr '\n' ' ')
    command -v rustup >/dev/null 2>&1 \
        || fail "cargo has no ${components% } and rustup is not installed to add them (install Rust with rustup, https://rustup.rs)"
    say "adding rustup components: $components"
    # shellcheck disable=SC2086 # one word per component
    rustup component add $components || fail "rustup component add $components failed"
fi

mapfile -t unmet < <(missing crate)
for entry in "${unmet[@]}"; do
    read -r _ binary crate <<<"$entry"
    say "installing $binary from crates.io ($crate)"
    cargo install --locked --quiet --target-dir "${NIX_TOOLS_TARGET_DIR:-$root/target/nixtools}" "$crate" \
        || fail "cargo install $crate failed"
done

mapfile -t unmet < <(missing rustup-component crate)
((${#unmet[@]} == 0)) || fail "still missing after installing (is the table in $0 right?):
$(printf '  %s\n' "${unmet[@]}")"
say "Rust components and crates: all present"
