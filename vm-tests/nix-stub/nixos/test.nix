# The stub `testers.runNixOSTest`: evaluates every node's configuration with
# the stub NixOS options (addresses assigned as the real test framework does:
# 192.168.1.N on VLAN 1, N from the sorted node names), checks assertions,
# renders the test script (a function of `nodes` or a string) and returns a
# derivation that holds the script and every node's systemd units, so
# instantiating it evaluates all of them. It cannot run the VMs.
{ lib, pkgs, mkStub }:
args:
let
  a = builtins.removeAttrs args [ "name" "nodes" "testScript" "defaults" "skipTypeCheck" "skipLint" "interactive" "meta" "extraPythonPackages" "globalTimeout" ];
  names = lib.sort (x: y: x < y) (builtins.attrNames args.nodes);
  indexOf = name: builtins.length (builtins.filter (n: n < name) names) + 1;
  evalNode = name: import ./eval.nix { inherit lib pkgs; } {
    modules = [
      {
        networking.hostName = name;
        networking.primaryIPAddress = "192.168.1.${toString (indexOf name)}";
        virtualisation.vlans = [ 1 ];
      }
      (args.defaults or { })
      args.nodes.${name}
    ];
    specialArgs = { inherit nodes; };
  };
  evaluated = lib.genAttrs names evalNode;
  # What node modules and the test script see as `nodes`: the configurations,
  # lazily, without checking assertions (as the real framework; checking
  # them here would recurse when one node's assertions read another's
  # address). The derivation below holds the checked ones.
  nodes = lib.mapAttrs (_: node: node.config) evaluated;
  checkedNodes = lib.mapAttrs (_: node: node.checked) evaluated;
  script = if builtins.isFunction args.testScript then args.testScript { inherit nodes; } else args.testScript;
in
if a != { } then throw "runNixOSTest ${args.name}: unexpected argument(s) ${builtins.concatStringsSep ", " (builtins.attrNames a)}"
else if !(builtins.isString script) then throw "runNixOSTest ${args.name}: testScript is not a string"
else
  mkStub "vm-test-run-${args.name}"
    {
      testScript = script;
      nodeUnits = builtins.toJSON (lib.mapAttrs (_: c: { inherit (c) systemd networking environment; }) checkedNodes);
    } // {
    inherit nodes;
  }
