# Scenario 6, rogue node: a fourth machine with a certificate from another
# CA seeds from the cluster. It learns nothing (the cluster's service never
# reaches it) and changes nothing (its service never reaches the cluster,
# and it never becomes a member).
{ pkgs }:
let
  common = import ./common.nix { inherit pkgs; };
in
pkgs.testers.runNixOSTest {
  name = "shoal-rogue";
  nodes = common.cluster [ "a" "b" "c" ] // {
    rogue = common.node { name = "rogue"; peers = [ "a" "b" "c" ]; ca = "rogue-ca"; };
  };
  testScript = ''
    ${common.prelude}

    machines = [a, b, c]
    start_all()
    for machine in machines + [rogue]:
        machine.wait_for_unit("shoal.service")
    wait_converged(machines, 3)

    a.succeed("shoal service apply -f ${common.spec { name = "web"; replicas = 1; }}")
    rogue.succeed("shoal service apply -f ${common.spec { name = "evil"; replicas = 3; }}")
    wait_converged(machines, 3)

    with subtest("the rogue node's attempts fail"):
        def refused(last_try):
            peers = status(rogue)["peers"]
            return bool(peers) and all(peer["last_error"] for peer in peers)

        retry(refused, 60)

    with subtest("it learned nothing and changed nothing"):
        # Several sync intervals of attempts.
        rogue.sleep(10)
        assert "web" not in services(rogue)
        assert status(rogue)["nodes"] == 1
        for machine in machines:
            assert "evil" not in services(machine)
            view = status(machine)
            assert view["nodes"] == 3, view
            assert all(peer["id"] != "rogue" for peer in view["peers"]), view
  '';
}
