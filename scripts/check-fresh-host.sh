#!/usr/bin/env bash
# Keeps README.md's promise that its two commands work on a fresh Debian 12
# machine: builds a minimal Debian 12 root (debootstrap --variant=minbase),
# runs scripts/setup-host.sh --packages-only in it (first not as root: it must
# fail, naming the packages and the command), and verifies that every
# requirement in setup-host.sh's table is then met inside that root. Before
# that, it checks the table against the code: every program the Rust sources
# spawn by name (Command::new("..."), command::run("...", ...)) must be a
# `command` in the table, so a tool added to the suite without an install
# step fails here instead of in a newcomer's first hour.
#
# The Rust toolchain parts of the table (rustup components, crates) cannot be
# checked in the root, which has no toolchain; the suite run before this one
# (scripts/test-all.sh) uses them.
#
# Needs root (debootstrap, chroot) and Debian's package registry. Everything
# lives in one directory under ${TMPDIR:-/tmp}, removed at exit, with
# /proc, /sys and /dev unmounted first. About a minute here (the issue measured 3 minutes for
# debootstrap alone elsewhere): most of it is downloading packages.
# Usage: scripts/check-fresh-host.sh [--keep]   (--keep leaves the root for a look)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

step() { printf '\n==> %s\n' "$*"; }
fail() { printf 'check-fresh-host: error: %s\n' "$*" >&2; exit 1; }

keep=false
[[ ${1:-} == --keep ]] && keep=true
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
started=$SECONDS

# ---- the table against the code ----------------------------------------------
step "every program the Rust code spawns is in scripts/setup-host.sh's table"
scripts/setup-host.sh --requirements >"${TMPDIR:-/tmp}/shoal-requirements.$$"
trap 'rm -f "${TMPDIR:-/tmp}/shoal-requirements.$$"' EXIT
python3 - "${TMPDIR:-/tmp}/shoal-requirements.$$" <<'PY' || fail "add the programs above to requirements() in scripts/setup-host.sh"
import pathlib, re, subprocess, sys

listed = {line.split()[1] for line in open(sys.argv[1]) if line.split()[0] == "command"}
# Programs spawned by a literal name: std's Command, the vm-tests helpers
# (command::run, command::run_in(netns, PROGRAM, ...) and `ip netns exec NETNS PROGRAM`),
# and oci's posix_spawn wrapper (run(PROGRAM, ...)).
patterns = [
    r'Command::new\(\s*"([^"/]+)"',
    r'command::run\(\s*"([^"/]+)"',
    r'run_in\(\s*(?:[^,()]|\([^()]*\))+,\s*"([^"/]+)"',
    r'"netns",\s*"exec",\s*[^,]+,\s*"([^"/]+)"',
    r'(?<![\w:])run\(\s*"([^"/]+)",',
    r'const IP: &str = "([^"]+)"',
]
# Names that are not host tools: a test of a missing program.
not_tools = {"shoal-no-such-program"}
files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", "*.rs"],
                       capture_output=True, text=True, check=True).stdout.split()
spawned = {}
for path in files:
    text = pathlib.Path(path).read_text()
    for pattern in patterns:
        for match in re.finditer(pattern, text, re.S):
            spawned.setdefault(match.group(1), set()).add(path)
missing = sorted(set(spawned) - listed - not_tools)
for name in missing:
    print(f"  {name}: spawned in {', '.join(sorted(spawned[name]))}, not a `command` in the table")
print(f"{len(spawned)} programs spawned by name: {', '.join(sorted(spawned))}")
sys.exit(1 if missing else 0)
PY

# ---- a minimal Debian 12 root ------------------------------------------------------
[[ $(id -u) -eq 0 ]] || fail "needs root (debootstrap and chroot)"
if ! command -v debootstrap >/dev/null 2>&1; then
    step "installing debootstrap"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || true
    apt-get install -y -qq debootstrap >/dev/null || fail "apt-get install debootstrap failed"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/shoal-fresh-host.XXXXXX")
chroot_dir="$work/root"
mounted=()
cleanup() {
    local status=$?
    local index
    for ((index = ${#mounted[@]} - 1; index >= 0; index--)); do
        umount -l "${mounted[index]}" 2>/dev/null || echo "warning: cannot unmount ${mounted[index]}" >&2
    done
    rm -f "${TMPDIR:-/tmp}/shoal-requirements.$$"
    if $keep; then
        echo "kept $chroot_dir"
    elif ! grep -q " $work/" /proc/self/mounts; then
        rm -rf "$work"
    else
        echo "warning: something is still mounted under $work; not removing it" >&2
    fi
    exit "$status"
}
trap cleanup EXIT

step "debootstrap --variant=minbase bookworm ($mirror)"
debootstrap_started=$SECONDS
debootstrap --variant=minbase bookworm "$chroot_dir" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 30 "$work/debootstrap.log" >&2; fail "debootstrap failed (log above)"; }
echo "minimal root in $((SECONDS - debootstrap_started)) s: $(du -sh "$chroot_dir" | cut -f1)"

for point in proc sys dev; do
    mount --rbind "/$point" "$chroot_dir/$point"
    mount --make-rslave "$chroot_dir/$point"
    mounted+=("$chroot_dir/$point")
done
cp /etc/resolv.conf "$chroot_dir/etc/resolv.conf"
# Packages must not start services in the root (they would keep it busy).
printf '#!/bin/sh\nexit 101\n' >"$chroot_dir/usr/sbin/policy-rc.d"
chmod +x "$chroot_dir/usr/sbin/policy-rc.d"
mkdir -p "$chroot_dir/opt/shoal/scripts"
cp scripts/setup-host.sh "$chroot_dir/opt/shoal/scripts/"

# The root has no cc, git, python3, nix, busybox or libseccomp yet: what a
# newcomer's machine lacks. Not as root, the setup must name the missing
# packages and the command that installs them, and fail.
step "scripts/setup-host.sh, not as root in the fresh root"
if chroot --userspec=65534:65534 "$chroot_dir" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/tmp \
    /bin/bash /opt/shoal/scripts/setup-host.sh --packages-only >"$work/not-root.log" 2>&1; then
    cat "$work/not-root.log" >&2
    fail "scripts/setup-host.sh succeeded without root on a fresh root"
fi
cat "$work/not-root.log"
grep -q "apt-get install -y .*libseccomp-dev" "$work/not-root.log" \
    || fail "scripts/setup-host.sh without root did not print the command that installs the missing packages"

step "scripts/setup-host.sh --packages-only, as root in the fresh root"
setup_started=$SECONDS
chroot "$chroot_dir" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root CI="${CI:-}" /bin/bash /opt/shoal/scripts/setup-host.sh --packages-only \
    || fail "scripts/setup-host.sh failed in a fresh Debian 12 root"
echo "setup in $((SECONDS - setup_started)) s"

# ---- every requirement, probed independently of setup-host.sh ---------------------
step "every requirement is met in the fresh root"
unmet=0
checked=0
while read -r kind name source; do
    case $kind in
        command) probe="command -v $name" ;;
        file) probe="test -e $name" ;;
        python-module) probe="/usr/bin/python3 -c 'import $name'" ;;
        rustup-component | crate) continue ;; # needs a Rust toolchain; the suite used them
        *) fail "unknown requirement kind $kind" ;;
    esac
    checked=$((checked + 1))
    if ! chroot "$chroot_dir" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        /bin/sh -c "$probe" >/dev/null 2>&1; then
        echo "  missing: $kind $name (from $source)"
        unmet=$((unmet + 1))
    fi
done < <(scripts/setup-host.sh --requirements)
((unmet == 0)) || fail "$unmet requirement(s) not met after setup in a fresh root"
echo "$checked requirements met"

step "fresh-host check passed in $((SECONDS - started)) s"
