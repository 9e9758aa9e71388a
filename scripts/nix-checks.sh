#!/usr/bin/env bash
# Offline checks of everything Nix in the repository (flake.nix, nixos-module/,
# vm-tests/nix/, vm-tests/nix-stub/), runnable without nixpkgs or network:
#   1. every .nix file parses (first: the linters exit 0 on files that do not);
#   2. deadnix --fail and nixpkgs-fmt --check (installed with cargo if missing),
#      and pyflakes on the VM test scripts (installed with pip if missing);
#   3. the stub's self-test (vm-tests/nix-stub/tests.nix), then
#      `nix flake check --no-build` with nixpkgs overridden by the stub in
#      vm-tests/nix-stub, on a copy of the files git sees (tracked or not
#      ignored), so it works from a clean clone and before a commit;
#   4. the drift test: the module's config for a sample host
#      (vm-tests/nix/drift.nix) must pass `shoal daemon --check-config`, every
#      typed settings option must be a key of `shoal daemon --print-config-keys`,
#      and the rendered services spec must pass the CLI's own spec validation;
#      plus the failures these checks exist for (an unknown key, a key in the
#      store) must actually fail.
# Usage: scripts/nix-checks.sh [SHOAL_BIN]   (or env SHOAL_BIN; default: the
# debug build in ${CARGO_TARGET_DIR:-target}, built with cargo when missing).
# Under CI=true a missing tool is a failure, never a skip.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

step() { printf '\n==> %s\n' "$*"; }
fail() { printf 'nix-checks: error: %s\n' "$*" >&2; exit 1; }

nix_flags=(--extra-experimental-features 'nix-command flakes')
work=$(mktemp -d "${TMPDIR:-/tmp}/shoal-nix-checks.XXXXXX")
trap 'rm -rf "$work"' EXIT

# ---- tools -------------------------------------------------------------------
for tool in nix nix-instantiate python3 git; do
    command -v "$tool" >/dev/null 2>&1 \
        || fail "$tool is not installed (Debian: apt-get install nix-bin python3 git)"
done
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
if ! python3 -m pyflakes --version >/dev/null 2>&1; then
    step "installing pyflakes from PyPI"
    python3 -m pip install --quiet pyflakes || fail "pip install pyflakes failed"
fi
for tool in deadnix nixpkgs-fmt; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        step "installing $tool from crates.io"
        command -v cargo >/dev/null 2>&1 || fail "$tool is missing and cargo is not installed"
        CARGO_TARGET_DIR="${NIX_TOOLS_TARGET_DIR:-$root/target/nixtools}" \
            cargo install --locked "$tool" >/dev/null || fail "cargo install $tool failed"
    fi
done

# The files git would commit: tracked, plus untracked ones not ignored.
mapfile -t files < <(git ls-files --cached --others --exclude-standard -- '*.nix' | sort -u)
existing=()
for file in "${files[@]}"; do [[ -f $file ]] && existing+=("$file"); done
files=("${existing[@]}")
((${#files[@]} > 0)) || fail "no .nix files found"

# ---- 1. parse ---------------------------------------------------------------
step "nix-instantiate --parse (${#files[@]} files)"
for file in "${files[@]}"; do
    nix-instantiate --parse "$file" >/dev/null || fail "$file does not parse"
done

# ---- 2. lint and format ----------------------------------------------------
step "deadnix --fail"
deadnix --fail "${files[@]}" || fail "deadnix found unused code (deadnix -e fixes most)"
step "nixpkgs-fmt --check"
nixpkgs-fmt --check "${files[@]}" || fail "not formatted (run: nixpkgs-fmt FILE...)"

# ---- 3. the stub's own semantics, then the flake check against it -----------
step "stub nixpkgs self-test (vm-tests/nix-stub/tests.nix)"
nix-instantiate --read-write-mode --eval --strict --json vm-tests/nix-stub/tests.nix >"$work/stub-tests.json" \
    || fail "the stub's self-test does not evaluate"
python3 - "$work/stub-tests.json" <<'PY' || fail "the stub nixpkgs does not behave like nixpkgs (cases above)"
import json, sys
cases = json.load(open(sys.argv[1]))
failing = [case["name"] for case in cases if not case["ok"]]
for name in failing:
    print(f"  failing: {name}")
print(f"{len(cases) - len(failing)}/{len(cases)} stub cases hold")
sys.exit(1 if failing else 0)
PY

# ---- 3b. flake check against the stub nixpkgs ---------------------------------
step "nix flake check --no-build (nixpkgs = vm-tests/nix-stub)"
tree="$work/tree"
mkdir -p "$tree"
git ls-files --cached --others --exclude-standard -z \
    | tar --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -xf - -C "$tree"
[[ -f $tree/flake.nix && -f $tree/vm-tests/nix-stub/flake.nix ]] || fail "copy of the tree is incomplete"
if ! nix "${nix_flags[@]}" flake check --no-build --no-write-lock-file \
    --override-input nixpkgs "path:$tree/vm-tests/nix-stub" "path:$tree" >"$work/flake-check.log" 2>&1; then
    grep -v -e "not writing modified lock file" -e "Added input 'nixpkgs'" -e "vm-tests/nix-stub?" \
        "$work/flake-check.log" >&2 || true
    fail "nix flake check failed (output above)"
fi
# Every VM test and the package are checks, for both systems.
nix "${nix_flags[@]}" eval --json --no-write-lock-file \
    --override-input nixpkgs "path:$tree/vm-tests/nix-stub" "path:$tree#checks" \
    --apply 'checks: builtins.mapAttrs (_: builtins.attrNames) checks' 2>/dev/null >"$work/checks.json" \
    || fail "cannot list the flake's checks"
python3 - "$work/checks.json" <<'PY' || fail "the flake's checks are not the expected set"
import json, sys
checks = json.load(open(sys.argv[1]))
expected = {"package", "deploy", "isolate", "partition", "pairwise-cut", "restart", "rogue", "tombstones"}
systems = {"x86_64-linux", "aarch64-linux"}
assert set(checks) == systems, f"systems {sorted(checks)} != {sorted(systems)}"
for system, names in checks.items():
    assert set(names) == expected, f"{system}: {sorted(names)} != {sorted(expected)}"
print(f"checks: {sorted(expected)} on {sorted(systems)}")
PY

# The VM test scripts as the NixOS test driver lints them: pyflakes with the
# driver's globals and the machine names as builtins.
step "pyflakes on the VM test scripts"
driver_globals="start_all,test_script,machines,vlans,driver,log,os,create_machine,subtest,run_tests,join_all,retry,serial_stdout_off,serial_stdout_on,polling_condition,Machine"
for test in deploy isolate partition pairwise-cut restart rogue tombstones; do
    attr="path:$tree#checks.x86_64-linux.$test"
    nix "${nix_flags[@]}" eval --raw --no-write-lock-file \
        --override-input nixpkgs "path:$tree/vm-tests/nix-stub" "$attr.testScript" \
        >"$work/$test.py" 2>/dev/null || fail "cannot render the test script of $test"
    machines=$(nix "${nix_flags[@]}" eval --raw --no-write-lock-file \
        --override-input nixpkgs "path:$tree/vm-tests/nix-stub" "$attr.nodes" \
        --apply 'nodes: builtins.concatStringsSep "," (builtins.attrNames nodes)' 2>/dev/null) \
        || fail "cannot list the machines of $test"
    PYFLAKES_BUILTINS="$driver_globals,$machines" python3 -m pyflakes "$work/$test.py" \
        || fail "vm-tests/nix/$test.nix: its test script does not pass pyflakes (above)"
    echo "$test: machines $machines, script clean"
done

# ---- 4. drift test ------------------------------------------------------------
step "drift test: the module's config against the daemon"
shoal_bin="${1:-${SHOAL_BIN:-}}"
if [[ -z $shoal_bin ]]; then
    shoal_bin="${CARGO_TARGET_DIR:-$root/target}/debug/shoal"
    if [[ ! -x $shoal_bin ]]; then
        command -v cargo >/dev/null 2>&1 || fail "no shoal binary (set SHOAL_BIN) and no cargo to build it"
        cargo build --locked -p shoal >/dev/null || fail "cargo build -p shoal failed"
    fi
fi
[[ -x $shoal_bin ]] || fail "shoal binary $shoal_bin is not executable"
echo "shoal binary: $shoal_bin"

render() { # render OUT_JSON NIX_ARGS
    nix-instantiate --eval --strict --json -E "import $root/vm-tests/nix/drift.nix { $2 }" >"$1" \
        || fail "rendering the module's config failed ($2)"
}
field() { python3 -c 'import json, sys; v = json.load(open(sys.argv[1]))[sys.argv[2]]; print(v if isinstance(v, str) else json.dumps(v))' "$1" "$2"; }

render "$work/sample.json" ""
[[ $(field "$work/sample.json" assertion_failures) == "[]" ]] \
    || fail "the sample host fails assertions: $(field "$work/sample.json" assertion_failures)"
[[ $(field "$work/sample.json" units_use_rendered_files) == "true" ]] \
    || fail "the units do not run the rendered config/spec files"
[[ $(field "$work/sample.json" firewall_udp_ports) == "[7443]" ]] \
    || fail "openFirewall does not open the listen port: $(field "$work/sample.json" firewall_udp_ports)"
field "$work/sample.json" config_toml >"$work/shoal.toml"
field "$work/sample.json" services_toml >"$work/services.toml"

"$shoal_bin" daemon --check-config "$work/shoal.toml" \
    || { cat "$work/shoal.toml" >&2; fail "the daemon refuses the module's config (above)"; }

"$shoal_bin" daemon --print-config-keys >"$work/daemon-keys"
[[ -s $work/daemon-keys ]] || fail "shoal daemon --print-config-keys printed nothing"
python3 - "$work/sample.json" "$work/daemon-keys" <<'PY' || fail "module options and daemon keys drifted apart"
import json, sys
typed = set(json.load(open(sys.argv[1]))["typed_keys"])
daemon = {line.strip() for line in open(sys.argv[2]) if line.strip()}
unknown = sorted(typed - daemon)
if unknown:
    print("typed options under services.shoal.settings that the daemon does not know:", *unknown, sep="\n  ")
    sys.exit(1)
set_by_module = {"node_name", "tls.ca_file", "tls.cert_file", "tls.key_file"}
untyped = sorted(daemon - typed - set_by_module)
print(f"{len(typed)} typed options, all daemon keys; daemon keys left to freeform settings: {untyped or 'none'}")
PY

# The spec is validated by the CLI before it connects: with no daemon, a
# valid spec fails only at the connection.
if output=$(SHOAL_SOCKET="$work/no-daemon.sock" "$shoal_bin" service apply -f "$work/services.toml" 2>&1); then
    fail "service apply succeeded without a daemon"
fi
grep -q "cannot connect to the daemon" <<<"$output" \
    || { cat "$work/services.toml" >&2; fail "the CLI refuses the module's services spec: $output"; }

step "drift test: the failures it guards against are caught"
render "$work/unknown.json" 'extraSettings = { sync.no_such_key_ms = 1; };'
field "$work/unknown.json" config_toml >"$work/unknown.toml"
grep -q no_such_key_ms "$work/unknown.toml" || fail "a freeform key was not rendered"
if output=$("$shoal_bin" daemon --check-config "$work/unknown.toml" 2>&1); then
    fail "the daemon accepted an unknown key: $output"
fi
grep -q no_such_key_ms <<<"$output" || fail "the daemon's error does not name the unknown key: $output"

render "$work/store-key.json" 'keyFile = "${builtins.storeDir}/0000000000000000000000000000000-node.key";'
grep -q "tls.keyFile" <<<"$(field "$work/store-key.json" assertion_failures)" \
    || fail "a key in the Nix store does not fail an assertion"

step "nix checks passed"
