# Workload scenario ports_host_mode (vm-tests/tests/workloads.rs): one replica
# of an httpd published as 8080:80 (declared in every node's configuration,
# host mode by default); from the outside machine, port 8080 answers on the
# node that runs it and on no other.
{ pkgs }:
let
  common = import ./common.nix { inherit pkgs; };
in
pkgs.testers.runNixOSTest {
  name = "shoal-ports_host_mode";
  nodes = common.workloadCluster [ "a" "b" "c" ]
    {
      web = {
        inherit (common) image;
        command = common.httpd "hello";
        tmpfs = [ "/tmp" ];
        ports = [ "8080:80" ];
      };
    } // { inherit (common) outside; };
  testScript = { nodes, ... }: ''
    ${common.prelude}
    ${common.workloadPrelude}

    ${common.startThreeWithOutside nodes}

    with subtest("one replica runs and ps lists its published port"):
        replica = one_running(machines, "web")
        assert "8080:80/tcp" in replica["ports"], replica

    with subtest("port 8080 answers on the replica's node only"):
        wait_answers(outside, address[replica["machine"]], 8080, "hello")
        for machine in machines:
            if machine.name != replica["machine"]:
                assert_unanswered(outside, address[machine.name], 8080, "it runs no replica of a host-mode port")

    with subtest("still one replica on the same node"):
        assert own_containers(machines, "web") == [replica], own_containers(machines, "web")
  '';
}
