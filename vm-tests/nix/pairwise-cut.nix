# Scenario 7, asymmetric cut: nftables rules inside a and c drop their
# traffic to each other while both still reach b; writes on a and on c reach
# the other side through b, and the cut heals cleanly.
{ pkgs }:
let
  common = import ./common.nix { inherit pkgs; };
in
pkgs.testers.runNixOSTest {
  name = "shoal-pairwise-cut";
  nodes = common.cluster [ "a" "b" "c" ];
  testScript = { nodes, ... }: ''
    ${common.prelude}

    machines = [a, b, c]
    start_all()
    for machine in machines:
        machine.wait_for_unit("shoal.service")
    wait_converged(machines, 3)

    with subtest("a and c cannot reach each other, both reach b"):
        cut(a, "${nodes.c.networking.primaryIPAddress}")
        cut(c, "${nodes.a.networking.primaryIPAddress}")
        a.fail("ping -c 1 -W 1 ${nodes.c.networking.primaryIPAddress}")
        a.succeed("ping -c 1 -W 1 ${nodes.b.networking.primaryIPAddress}")
        c.succeed("ping -c 1 -W 1 ${nodes.b.networking.primaryIPAddress}")

    with subtest("writes cross the cut through b"):
        a.succeed("shoal service apply -f ${common.spec { name = "from-a"; replicas = 1; }}")
        c.succeed("shoal service apply -f ${common.spec { name = "from-c"; replicas = 1; }}")

        def both_everywhere(last_try):
            return all({"from-a", "from-c"} <= set(services(m)) for m in machines)

        retry(both_everywhere, 120)
        wait_replicas(machines, "from-a", 1)
        wait_replicas(machines, "from-c", 1)

    with subtest("heal"):
        heal(a)
        heal(c)
        a.succeed("ping -c 1 -W 1 ${nodes.c.networking.primaryIPAddress}")
        wait_converged(machines, 3)
  '';
}
