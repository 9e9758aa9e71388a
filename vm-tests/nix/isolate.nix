# Scenario 2, isolate and heal: node c is cut off with block(); both sides
# keep accepting writes to the same service; after unblock() every node ends
# on the same last-writer-wins winner and the same state.
{ pkgs }:
let
  common = import ./common.nix { inherit pkgs; };
in
pkgs.testers.runNixOSTest {
  name = "shoal-isolate";
  nodes = common.cluster [ "a" "b" "c" ];
  testScript = ''
    ${common.prelude}

    machines = [a, b, c]
    start_all()
    for machine in machines:
        machine.wait_for_unit("shoal.service")
    wait_converged(machines, 3)

    a.succeed("shoal service apply -f ${common.spec { replicas = 1; }}")
    wait_converged(machines, 3)

    with subtest("both sides accept writes while c is isolated"):
        c.block()
        a.succeed("shoal service apply -f ${common.spec { replicas = 2; }}")
        # c writes later, so its write carries the later clock and must win.
        c.sleep(2)
        c.succeed("shoal service apply -f ${common.spec { replicas = 3; }}")
        wait_converged([a, b], 3)
        assert services(b)["web"]["spec"]["replicas"] == 2
        assert services(c)["web"]["spec"]["replicas"] == 3

    with subtest("after heal every node has the same winner"):
        c.unblock()
        wait_converged(machines, 3)
        winners = {
            (view["version"], view["spec"]["replicas"])
            for view in (services(machine)["web"] for machine in machines)
        }
        assert len(winners) == 1, winners
        (_, replicas) = winners.pop()
        assert replicas == 3, f"the later write (on c) lost: {replicas}"
        wait_replicas(machines, "web", 3)
  '';
}
