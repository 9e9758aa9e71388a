# Scenario 1, deploy: three nodes; a service declared in node a's NixOS
# configuration is applied at boot, known to every node, and its three
# replicas run across the cluster.
{ pkgs }:
let
  common = import ./common.nix { inherit pkgs; };
  nodes = common.cluster [ "a" "b" "c" ];
in
pkgs.testers.runNixOSTest {
  name = "shoal-deploy";
  nodes = nodes // {
    a = {
      imports = [ nodes.a ];
      services.shoal.services.web = {
        inherit (common) image;
        command = [ "/bin/httpd" "-f" "-p" "8080" "-h" "/srv" ];
        replicas = 3;
        resources.memory_bytes = 67108864;
      };
    };
  };
  testScript = ''
    ${common.prelude}

    machines = [a, b, c]
    start_all()
    for machine in machines:
        machine.wait_for_unit("shoal.service")
    a.wait_for_unit("shoal-services.service")

    with subtest("every node knows every node and the same state"):
        wait_converged(machines, 3)

    with subtest("the declared service reached every node"):
        for machine in machines:
            spec = services(machine)["web"]["spec"]
            assert spec["replicas"] == 3, spec

    with subtest("three replicas run across the cluster"):
        wait_replicas(machines, "web", 3)
  '';
}
