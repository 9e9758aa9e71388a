# Issue 14, named as the netns test in vm-tests/tests/scenarios.rs: a fleet of
# 48 nodes split 24|24 by nftables rules in the guests. Each half writes a
# service of its own and sees only its own; after the heal every node lists
# both (SWIM finds the other half again and the first exchange carries what
# each side wrote). Once the heal's writes are older than the compact window,
# anti-entropy runs on compact summaries: n0 and n47 serve their metrics, and
# both must have sent compact summaries after the heal, fewer refused than sent.
{ pkgs }:
let
  inherit (pkgs) lib;
  common = import ./common.nix { inherit pkgs; };
  names = lib.genList (index: "n${toString index}") 48;
  left = lib.genList (index: "n${toString index}") 24;
  right = lib.genList (index: "n${toString (index + 24)}") 24;
  list = machines: "[${lib.concatStringsSep ", " machines}]";
in
pkgs.testers.runNixOSTest {
  name = "shoal-fleet-of-48-split-in-halves";
  # The two nodes whose summaries are counted serve their metrics on loopback.
  nodes = lib.mapAttrs
    (name: node:
      if lib.elem name [ "n0" "n47" ] then {
        imports = [ node ];
        services.shoal.metrics.listen = "127.0.0.1:9464";
        environment.systemPackages = [ pkgs.curl ];
      } else node)
    (common.cluster names);
  testScript = { nodes, ... }: ''
    ${common.prelude}

    machines = ${list names}
    left = ${list left}
    right = ${list right}
    address = {
    ${lib.concatStringsSep "\n" (map (name: "    ${name}: \"${nodes.${name}.networking.primaryIPAddress}\",") names)}
    }


    def split(machine, others):
        """Drop all traffic between `machine` and every machine of `others`."""
        listed = ", ".join(address[other] for other in others)
        machine.succeed(
            "nft add table inet shoal_cut",
            "nft add chain inet shoal_cut input '{ type filter hook input priority -10; policy accept; }'",
            "nft add chain inet shoal_cut output '{ type filter hook output priority -10; policy accept; }'",
            f"nft add rule inet shoal_cut input ip saddr {{ {listed} }} drop",
            f"nft add rule inet shoal_cut output ip daddr {{ {listed} }} drop",
        )


    def summaries(machine, form):
        """The node's count of anti-entropy summaries of `form` sent (compact, full, compact_refused)."""
        text = machine.succeed("curl --silent --fail --max-time 3 http://127.0.0.1:9464/metrics")
        series = f'shoal_sync_summaries_total{{form="{form}"}} '
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(series))


    start_all()
    for machine in machines:
        machine.wait_for_unit("shoal.service")
    wait_converged(machines, 48)
    n0.succeed("shoal service apply -f ${common.spec { replicas = 1; }}")
    wait_converged(machines, 48)

    with subtest("split 24|24: each half writes and sees only its own"):
        for machine in left:
            split(machine, right)
        for machine in right:
            split(machine, left)
        n0.succeed("shoal service apply -f ${common.spec { name = "left"; replicas = 1; }}")
        n47.succeed("shoal service apply -f ${common.spec { name = "right"; replicas = 1; }}")
        wait_converged(left, 48)
        wait_converged(right, 48)
        for machine in left:
            assert "right" not in services(machine)
        for machine in right:
            assert "left" not in services(machine)

    with subtest("heal: every node lists both"):
        for machine in machines:
            heal(machine)
        wait_converged(machines, 48)
        for machine in machines:
            assert {"web", "left", "right"} <= set(services(machine))

    with subtest("after the compact window, anti-entropy runs on compact summaries"):
        at_heal = {machine.name: summaries(machine, "compact") for machine in [n0, n47]}
        n0.sleep(35)
        for machine in [n0, n47]:
            compact = summaries(machine, "compact") - at_heal[machine.name]
            refused = summaries(machine, "compact_refused")
            assert compact > 0 and refused < compact, f"{machine.name}: {compact} compact since the heal, {refused} refused"
  '';
}
