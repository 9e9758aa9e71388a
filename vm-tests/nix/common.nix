# Shared pieces of shoal's NixOS VM tests: certificates made by the shoal
# binary in a derivation, a node configuration (the services.shoal module
# with the node's own key copied out of the store at boot), spec files, and
# the Python helpers every test script starts with.
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

  # A node named `name` that seeds from `peers`; `ca` is "ca" or "rogue-ca".
  node = { name, peers, ca ? "ca" }: { config, nodes, pkgs, ... }: {
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
      };
    };
  };

  # A cluster of `names`, each seeding from all the others.
  cluster = names: lib.genAttrs names (name: node {
    inherit name;
    peers = lib.filter (peer: peer != name) names;
  });

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
}
