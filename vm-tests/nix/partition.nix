# Scenario 3, partition 2|3: five nodes split into {a, b} and {c, d, e} by
# nftables rules in the guests. Both sides keep accepting writes and place
# the service on their own view; after the heal every node converges and the
# service runs exactly its replica count again (surplus containers stopped).
{ pkgs }:
let
  common = import ./common.nix { inherit pkgs; };
in
pkgs.testers.runNixOSTest {
  name = "shoal-partition";
  nodes = common.cluster [ "a" "b" "c" "d" "e" ];
  testScript = { nodes, ... }: ''
    ${common.prelude}

    machines = [a, b, c, d, e]
    left = [a, b]
    right = [c, d, e]
    address = {
        a: "${nodes.a.networking.primaryIPAddress}",
        b: "${nodes.b.networking.primaryIPAddress}",
        c: "${nodes.c.networking.primaryIPAddress}",
        d: "${nodes.d.networking.primaryIPAddress}",
        e: "${nodes.e.networking.primaryIPAddress}",
    }
    start_all()
    for machine in machines:
        machine.wait_for_unit("shoal.service")
    wait_converged(machines, 5)
    a.succeed("shoal service apply -f ${common.spec { replicas = 3; }}")
    wait_replicas(machines, "web", 3)

    with subtest("split 2|3: both sides accept writes"):
        for near in left:
            for far in right:
                cut(near, address[far])
                cut(far, address[near])
        a.succeed("shoal service apply -f ${common.spec { name = "left"; replicas = 1; }}")
        c.succeed("shoal service apply -f ${common.spec { name = "right"; replicas = 1; }}")
        wait_converged(left, 5)
        wait_converged(right, 5)
        for machine in left:
            assert "left" in services(machine) and "right" not in services(machine)
        for machine in right:
            assert "right" in services(machine) and "left" not in services(machine)

    with subtest("heal: one state, replica counts back to the specs"):
        for machine in machines:
            heal(machine)
        wait_converged(machines, 5)
        for machine in machines:
            assert {"web", "left", "right"} <= set(services(machine))
        wait_replicas(machines, "web", 3)
        wait_replicas(machines, "left", 1)
        wait_replicas(machines, "right", 1)
  '';
}
