# Workload scenario egress_masquerade (vm-tests/tests/workloads.rs): a
# container (declared in every node's configuration) fetches from the HTTP
# server on the outside machine, which is no cluster node and has no route to
# the container subnets. The server sees only the address of the container's
# node (masquerade), and the container gets the answer (its output, through
# `shoal logs`).
{ pkgs }:
let
  common = import ./common.nix { inherit pkgs; };
in
pkgs.testers.runNixOSTest {
  name = "shoal-egress_masquerade";
  nodes = common.workloadCluster [ "a" "b" ]
    (nodes: {
      fetch = {
        inherit (common) image;
        command = common.shell "trap 'exit 0' TERM; while true; do wget -q -O - -T 2 http://${nodes.outside.networking.primaryIPAddress}:${toString common.outsidePort}/egress; echo; sleep 1 & wait $!; done";
      };
    }) // { inherit (common) outside; };
  testScript = { nodes, ... }: ''
    ${common.prelude}
    ${common.workloadPrelude}

    machines = [a, b]
    address = {
        "a": "${nodes.a.networking.primaryIPAddress}",
        "b": "${nodes.b.networking.primaryIPAddress}",
    }
    start_all()
    for machine in machines:
        machine.wait_for_unit("shoal.service")
    outside.wait_for_unit("outside-http.service")
    wait_converged(machines, 2)

    with subtest("the outside server sees the node's address only"):
        replica = one_running(machines, "fetch")
        clients = wait_for("a request from the container at the outside server", lambda: outside_clients(outside, "/egress") or None)
        node_address = address[replica["machine"]]
        assert clients == {node_address}, f"the outside server saw {clients}, not only {replica['machine']}'s address {node_address} (container {replica['ip']})"

    with subtest("the container got the answer"):
        machine = next(machine for machine in machines if machine.name == replica["machine"])
        wait_for("the container's output to hold the answer", lambda: True if "outside-ok" in machine.succeed("shoal logs fetch") else None)
  '';
}
