# Scenario 8, tombstones: while c is isolated, a adds and removes many
# services; after the heal the removes reach c, nothing removed comes back,
# and once every member has seen them the tombstones are collected on every
# node.
{ pkgs }:
let
  common = import ./common.nix { inherit pkgs; };
  count = 20;
  specs = map (index: common.spec { name = "temp-${toString index}"; replicas = 0; }) (pkgs.lib.range 1 count);
in
pkgs.testers.runNixOSTest {
  name = "shoal-tombstones";
  nodes = common.cluster [ "a" "b" "c" ];
  testScript = ''
    ${common.prelude}

    machines = [a, b, c]
    start_all()
    for machine in machines:
        machine.wait_for_unit("shoal.service")
    wait_converged(machines, 3)

    with subtest("many removes while c is away"):
        c.block()
        for spec in "${pkgs.lib.concatStringsSep " " (map toString specs)}".split():
            a.succeed(f"shoal service apply -f {spec}")
        for index in range(1, ${toString count} + 1):
            a.succeed(f"shoal service rm temp-{index}")
        peak = status(a)["tombstones"]
        assert peak >= ${toString count}, f"expected at least ${toString count} tombstones, got {peak}"

    with subtest("after the heal nothing comes back and tombstones are collected"):
        c.unblock()
        wait_converged(machines, 3)
        for machine in machines:
            assert not any(name.startswith("temp-") for name in services(machine))

        def collected(last_try):
            counts = [status(machine)["tombstones"] for machine in machines]
            if last_try:
                print(f"tombstones per node: {counts} (peak on a: {peak})")
            return all(count == 0 for count in counts)

        retry(collected, 120)
  '';
}
