# Shared pieces of shoal's NixOS VM tests: certificates made by the shoal
# binary in a derivation, a node configuration (the services.shoal module
# with the node's own key copied out of the store at boot), spec files, and
# the Python helpers every test script starts with; for the workload tests
# (issue 11), nodes with container subnets, an `outside` machine that is no
# cluster node, and their helpers.
{ pkgs }:
let
  inherit (pkgs) lib;

  image = pkgs.callPackage ../../nixos-module/examples/image.nix { };

  # Every node of every test, plus one with a certificate from another CA.
  members = [ "a" "b" "c" "d" "e" ];
in
rec {
  inherit image;

  certs = pkgs.runCommand "shoal-test-certs" { nativeBuildInputs = [ pkgs.shoal ]; } ''
    mkdir -p $out/ca $out/rogue-ca $out/nodes
    shoal ca init --dir $out/ca
    shoal ca init --dir $out/rogue-ca
    ${lib.concatMapStrings (name: ''
      shoal cert issue --node ${name} --ca-dir $out/ca --out-dir $out/nodes
    '') members}
    shoal cert issue --node rogue --ca-dir $out/rogue-ca --out-dir $out/nodes
  '';

  port = 7443;

  # A node named `name` that seeds from `peers`; `ca` is "ca" or "rogue-ca";
  # with `subnet`, its containers get addresses from it (containers.subnet).
  node = { name, peers, ca ? "ca", subnet ? null }: { config, nodes, pkgs, ... }: {
    imports = [ ../../nixos-module ];

    virtualisation.memorySize = 1024;
    # The firewall and the tests' cuts both use nftables.
    networking.nftables.enable = true;
    environment.systemPackages = [ pkgs.nftables ];
    system.extraDependencies = [ image ];

    # The key must not come from the store path: copy it out at boot.
    systemd.tmpfiles.rules = [
      "d /var/lib/shoal-keys 0700 root root -"
      "C /var/lib/shoal-keys/ca.pem - - - - ${certs}/${ca}/ca.pem"
      "C /var/lib/shoal-keys/node.pem - - - - ${certs}/nodes/${name}.pem"
      "C /var/lib/shoal-keys/node.key - - - - ${certs}/nodes/${name}.key"
      "z /var/lib/shoal-keys/node.key 0600 root root -"
    ];

    services.shoal = {
      enable = true;
      nodeName = name;
      openFirewall = true;
      tls = {
        caFile = "/var/lib/shoal-keys/ca.pem";
        certFile = "/var/lib/shoal-keys/node.pem";
        keyFile = "/var/lib/shoal-keys/node.key";
      };
      settings = {
        listen = "0.0.0.0:${toString port}";
        advertise = "${config.networking.primaryIPAddress}:${toString port}";
        peers = map (peer: "${nodes.${peer}.networking.primaryIPAddress}:${toString port}") peers;
        sync = {
          interval_ms = 500;
          # Heartbeats rarer than syncs leave the state unchanged for longer
          # stretches: windows for the concurrent digest reads below.
          heartbeat_interval_ms = 1000;
          down_after_ms = 4000;
        };
        # Quick SWIM failure detection, as the netns scenarios use.
        membership = {
          probe_period_ms = 300;
          probe_timeout_ms = 150;
          suspect_to_down_ms = 1200;
        };
      } // lib.optionalAttrs (subnet != null) { containers.subnet = subnet; };
    };
  };

  # A cluster of `names`, each seeding from all the others.
  cluster = names: lib.genAttrs names (name: node {
    inherit name;
    peers = lib.filter (peer: peer != name) names;
  });

  # ---- workloads (issue 11) -------------------------------------------------

  # Node `name`'s container subnet: 10.88.N.0/24, N its place in `members`.
  subnet = name: "10.88.${toString (1 + lib.length (lib.filter (member: member < name) members))}.0/24";

  # A cluster of `names` whose containers have addresses (and so ports and
  # egress), each node declaring `services` (services.shoal.services) alike:
  # an attribute set, or a function of the test's `nodes` giving one.
  workloadCluster = names: services: lib.genAttrs names (name: { nodes, ... }: {
    imports = [
      (node {
        inherit name;
        peers = lib.filter (peer: peer != name) names;
        subnet = subnet name;
      })
    ];
    services.shoal.services = if builtins.isFunction services then services nodes else services;
  });

  # The machine outside the cluster: a client of published ports (curl) and
  # an HTTP server that containers reach through their node. It answers
  # GET /egress with "outside-ok" and logs each client's address to the
  # journal (python's http.server: `ADDRESS - - [date] "GET /egress ..."`).
  outsidePort = 8000;
  outside = { pkgs, ... }: {
    environment.systemPackages = [ pkgs.curl ];
    networking.firewall.allowedTCPPorts = [ outsidePort ];
    systemd.services.outside-http = {
      description = "an HTTP server outside the shoal cluster";
      wantedBy = [ "multi-user.target" ];
      after = [ "network.target" ];
      environment.PYTHONUNBUFFERED = "1";
      serviceConfig.ExecStart = "${pkgs.python3}/bin/python3 -m http.server ${toString outsidePort} --bind 0.0.0.0 --directory ${outsideRoot}";
    };
  };
  outsideRoot = pkgs.runCommand "outside-http-root" { } ''
    mkdir $out
    echo outside-ok > $out/egress
  '';

  # A container command: `script` run by the image's busybox sh.
  shell = script: [ "/bin/sh" "-c" script ];
  # A script that idles and stops at once on SIGTERM (a shell runs its trap
  # only after a foreground command ends, so it waits on a background sleep).
  idle = "trap 'exit 0' TERM; while true; do sleep 1 & wait $!; done";
  # An httpd answering `body` on port 80; the image has no /tmp, so a
  # service using it mounts a tmpfs there (`tmpfs = [ "/tmp" ]`).
  httpd = body: shell "echo ${body} > /tmp/index.html; exec httpd -f -p 80 -h /tmp";

  spec = { name ? "web", replicas }: pkgs.writeText "${name}-${toString replicas}.toml" ''
    name = "${name}"
    image = "${image}"
    command = ["/bin/httpd", "-f", "-p", "8080", "-h", "/srv"]
    replicas = ${toString replicas}
  '';

  # Python helpers. The JSON shapes are the CLI's: `status --json` is the
  # daemon's StatusView, `service ls --json` a list of ServiceView, and
  # `ps --json` an object whose `containers` lists the container OR-Set
  # ({id, service, node, state, ip, ...}) cluster-wide.
  prelude = ''
    import json
    from concurrent.futures import ThreadPoolExecutor


    def status(machine):
        return json.loads(machine.succeed("shoal status --json"))


    def statuses(machines):
        """Every machine's status, asked at nearly the same moment. Each node
        writes a heartbeat into the state every heartbeat interval, so views
        read one machine after the other would rarely show the same digest."""
        with ThreadPoolExecutor(max_workers=len(machines)) as pool:
            return list(pool.map(status, machines))


    def services(machine):
        views = json.loads(machine.succeed("shoal service ls --json"))
        return {view["name"]: view for view in views}


    def containers(machine, service):
        records = json.loads(machine.succeed("shoal ps --json"))["containers"]
        return sorted(record["id"] for record in records if record["service"] == service)


    def wait_converged(machines, members):
        """Every machine knows exactly `members` and all report the same state
        digest at the same moment. (Each node's own `converged` flag compares
        its last known peer summaries, which lag a heartbeat behind; the
        digests read together are the direct check.)"""

        def check(last_try):
            views = statuses(machines)
            digests = {view["digest"] for view in views}
            ok = len(digests) == 1 and all(view["nodes"] == members for view in views)
            if last_try and not ok:
                print(json.dumps(views, indent=2))
            return ok

        retry(check, 120)


    def wait_replicas(machines, service, replicas):
        """Every machine's view of the cluster runs exactly `replicas` of `service`."""

        def check(last_try):
            counts = [len(containers(machine, service)) for machine in machines]
            if last_try:
                print(f"{service}: {counts}, expected {replicas} everywhere")
            return all(count == replicas for count in counts)

        retry(check, 180)


    def cut(machine, peer_address):
        """Drop all traffic between `machine` and `peer_address`, in the guest."""
        machine.succeed(
            "nft add table inet shoal_cut",
            "nft add chain inet shoal_cut input '{ type filter hook input priority -10; policy accept; }'",
            "nft add chain inet shoal_cut output '{ type filter hook output priority -10; policy accept; }'",
            f"nft add rule inet shoal_cut input ip saddr {peer_address} drop",
            f"nft add rule inet shoal_cut output ip daddr {peer_address} drop",
        )


    def heal(machine):
        machine.succeed("nft delete table inet shoal_cut")
  '';

  # Python helpers of the workload tests (after `prelude`). A container is a
  # dict as its own node reports it in `shoal ps --json`: machine, id, ip,
  # state, ports.
  workloadPrelude = ''
    import re


    def own_containers(machines, service):
        """Containers of `service` as each machine whose daemon answers reports
        its own."""
        found = []
        for machine in machines:
            status, output = machine.execute("shoal ps --json")
            if status != 0:
                continue
            for record in json.loads(output)["containers"]:
                if record["service"] == service and record["node"] == machine.name:
                    found.append({
                        "machine": machine.name,
                        "id": record["id"],
                        "ip": record.get("ip"),
                        "state": record["state"],
                        "ports": record.get("ports") or [],
                    })
        return found


    def wait_for(what, check, timeout=120):
        """Polls `check` until it returns something other than None; returns it."""
        found = []

        def attempt(last_try):
            value = check()
            if value is not None:
                found.append(value)
                return True
            if last_try:
                print(f"timed out waiting for {what}")
            return False

        retry(attempt, timeout)
        return found[0]


    def one_running(machines, service):
        """Waits until exactly one container of `service` exists and it runs."""

        def check():
            listed = own_containers(machines, service)
            if len(listed) == 1 and listed[0]["state"] == "running":
                return listed[0]
            return None

        return wait_for(f"one running replica of {service}", check)


    def get(client, address, port, path="/"):
        """GET http://address:port/path from `client`: (curl's status, body)."""
        return client.execute(f"curl --silent --show-error --max-time 3 http://{address}:{port}{path}")


    # curl's statuses for a port that does not answer: could not connect
    # (refused, unreachable), timed out, empty reply, connection reset.
    UNANSWERED = {7, 28, 52, 56}


    def wait_answers(client, address, port, body):
        """Waits until address:port answers `body` to `client`."""

        def check():
            status, output = get(client, address, port)
            return True if status == 0 and output.strip() == body else None

        wait_for(f"{address}:{port} to answer {body!r} to {client.name}", check)


    def assert_unanswered(client, address, port, why):
        status, output = get(client, address, port)
        assert status in UNANSWERED, f"{address}:{port} answered {client.name} ({why}): {status} {output!r}"


    def outside_clients(outside, path):
        """The client addresses of the outside server's requests for `path`."""
        log = outside.succeed("journalctl --no-pager -o cat -u outside-http.service")
        return {match.group(1) for match in re.finditer(rf'^(\S+) - - \[[^]]*\] "GET {re.escape(path)} ', log, re.MULTILINE)}


    def start_polling(outside, addresses):
        """Polls port 8080 of every address in turn from `outside`, every 50 ms,
        in the background; each answer (or FAILED) is a line of /tmp/answers."""
        targets = " ".join(addresses)
        outside.succeed(
            "(while true; do for ip in " + targets + "; do "
            "curl --silent --max-time 2 http://$ip:8080/ >> /tmp/answers || echo FAILED >> /tmp/answers; "
            "sleep 0.05; done; done) >/dev/null 2>&1 & echo $! > /tmp/client.pid"
        )


    def stop_polling(outside):
        """Stops `start_polling`; returns the answers, one per request."""
        outside.succeed("kill $(cat /tmp/client.pid)")
        return outside.succeed("cat /tmp/answers").split()
  '';

  # The update scenarios' service: three replicas of an httpd answering `body`
  # behind a mesh-mode port 8080, with an HTTP health check on /healthz (which
  # exists only when `healthy`), and `update` for its [update] table.
  checkedWeb = { body, healthy ? true, update ? { min_healthy_ms = 1000; } }: {
    inherit image update;
    command = shell ((if healthy then "echo ok > /tmp/healthz; " else "")
      + "echo ${body} > /tmp/index.html; exec httpd -f -p 80 -h /tmp");
    tmpfs = [ "/tmp" ];
    replicas = 3;
    ports = [ "8080:80" ];
    publish.mode = "mesh";
    health = {
      http = "http://127.0.0.1:80/healthz";
      interval_ms = 500;
      timeout_ms = 400;
      retries = 2;
    };
  };
  # The opening of a workload test script with nodes a, b and c and the
  # outside host: every machine up, each node's address in `address`, the
  # three members converged.
  startThreeWithOutside = nodes: ''
    machines = [a, b, c]
    address = {
    ${lib.concatMapStrings (name: "    \"${name}\": \"${nodes.${name}.networking.primaryIPAddress}\",\n") [ "a" "b" "c" ]}}
    start_all()
    for machine in machines:
        machine.wait_for_unit("shoal.service")
    outside.wait_for_unit("multi-user.target")
    wait_converged(machines, 3)
  '';
  # A spec file of `service` for `shoal service apply -f` (a service declared
  # in the NixOS configuration, written as the CLI takes it).
  specFile = name: service: (pkgs.formats.toml { }).generate "${name}.toml"
    (service // { inherit name; image = "${image}"; });
}
