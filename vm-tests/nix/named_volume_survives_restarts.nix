# Workload scenario named_volume_survives_restarts
# (vm-tests/tests/workloads.rs): a container (declared in the node's
# configuration, restart = "always") appends a line to a file in the named
# volume `cache` each time it runs. Its restarts and a daemon restart keep
# what was written (in /var/lib/shoal/volumes/cache), the container reads
# earlier runs' lines, and `shoal volume ls` lists the volume and its path.
{ pkgs }:
let
  common = import ./common.nix { inherit pkgs; };
in
pkgs.testers.runNixOSTest {
  name = "shoal-named_volume_survives_restarts";
  nodes = common.workloadCluster [ "a" ] {
    counter = {
      inherit (common) image;
      command = common.shell "echo \"run $RANDOM$RANDOM\" >> /data/count; cat /data/count; sleep 1";
      volumes = [ "cache:/data" ];
      restart = "always";
    };
  };
  testScript = ''
    ${common.prelude}
    ${common.workloadPrelude}

    volume = "/var/lib/shoal/volumes/cache"


    def lines():
        status, output = a.execute(f"cat {volume}/count")
        return output.splitlines() if status == 0 else []


    start_all()
    a.wait_for_unit("shoal.service")

    with subtest("runs of the container add lines to the volume"):
        before = wait_for("two runs' lines in the volume", lambda: lines() if len(lines()) >= 2 else None)
        assert all(line.startswith("run ") for line in before), before

    with subtest("volume ls lists the volume and its path"):
        listing = json.loads(a.succeed("shoal volume ls --json"))
        listed = listing if isinstance(listing, list) else listing["volumes"]
        cache = next((entry for entry in listed if entry["name"] == "cache"), None)
        assert cache is not None, f"volume ls does not list cache: {listing}"
        assert cache["path"] == volume, f"volume ls: {listing}"

    with subtest("a daemon restart keeps the volume"):
        before_restart = lines()
        a.succeed("systemctl restart shoal.service")
        a.wait_for_unit("shoal.service")
        after = wait_for(
            "two more runs after the daemon restart",
            lambda: lines() if len(lines()) >= len(before_restart) + 2 else None,
        )
        assert after[:len(before_restart)] == before_restart, f"lines lost across the daemon restart: {before_restart} -> {after}"
        assert after[:len(before)] == before, f"lines lost across container restarts: {before} -> {after}"

    with subtest("the container reads what earlier runs wrote"):
        wait_for("the container's output to show the first run", lambda: True if before[0] in a.succeed("shoal logs counter") else None)
  '';
}
