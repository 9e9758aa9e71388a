# Workload scenario ports_mesh_mode (vm-tests/tests/workloads.rs): one replica
# of an httpd published as 8080:80 in mesh mode (declared in every node's
# configuration); every node answers on port 8080 and forwards to the replica.
# After the replica's node is cut off and its daemon stopped, the replica
# moves and every remaining node answers again; the lost node does not.
{ pkgs }:
let
  common = import ./common.nix { inherit pkgs; };
in
pkgs.testers.runNixOSTest {
  name = "shoal-ports_mesh_mode";
  nodes = common.workloadCluster [ "a" "b" "c" ]
    {
      web = {
        inherit (common) image;
        command = common.httpd "hello";
        tmpfs = [ "/tmp" ];
        ports = [ "8080:80" ];
        publish.mode = "mesh";
      };
    } // { inherit (common) outside; };
  testScript = { nodes, ... }: ''
    ${common.prelude}
    ${common.workloadPrelude}

    ${common.startThreeWithOutside nodes}

    with subtest("every node answers on the mesh port"):
        first = one_running(machines, "web")
        for machine in machines:
            wait_answers(outside, address[machine.name], 8080, "hello")

    with subtest("the replica's node is lost: the replica moves, the others still answer"):
        lost = next(machine for machine in machines if machine.name == first["machine"])
        remaining = [machine for machine in machines if machine is not lost]
        lost.block()
        # Only the daemon stops (KillMode=process), as a killed daemon does.
        lost.succeed("systemctl stop shoal.service")
        moved = one_running(remaining, "web")
        assert moved["machine"] != lost.name, f"the replica did not move off {lost.name}: {moved}"
        for machine in remaining:
            wait_answers(outside, address[machine.name], 8080, "hello")
        assert_unanswered(outside, address[lost.name], 8080, "its node is off the network")
  '';
}
