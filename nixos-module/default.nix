# services.shoal: a shoal node on NixOS. The daemon's config file is
# rendered from `settings` (freeform TOML; the keys the module knows are
# typed), the TLS files reach the daemon through systemd credentials, and
# the services declared in `services.shoal.services` are applied once the
# daemon reports ready. See README.md next to this file.
{ config, options, lib, pkgs, ... }:
let
  inherit (lib) mkEnableOption mkIf mkOption literalExpression types;

  cfg = config.services.shoal;
  settingsFormat = pkgs.formats.toml { };

  # The credential names of LoadCredential=. The config file names them
  # relative: the daemon resolves a relative tls.* path against
  # $CREDENTIALS_DIRECTORY, which systemd sets for the unit, so a renamed
  # unit or a second instance finds its own files.
  credentials = {
    ca = "ca.pem";
    cert = "node.pem";
    key = "node.key";
  };

  # Unset typed options are null: leaving them out lets the daemon use its
  # own default, so the module never repeats (and never drifts from) them.
  withoutNulls = lib.filterAttrsRecursive (_: value: value != null);

  configFile = settingsFormat.generate "shoal.toml" (withoutNulls cfg.settings);

  socketPath =
    if cfg.settings.api.socket != null then cfg.settings.api.socket
    else "${cfg.settings.state_dir}/shoal.sock";

  # A port number as the daemon reads it (1-65535, no leading zeros), or null.
  portNumber = text:
    if builtins.match "[1-9][0-9]{0,4}" text == null then null
    else
      let port = lib.toInt text; in
      if port <= 65535 then port else null;

  # The port of a socket address as the daemon reads it ("IPv4:port" or
  # "[IPv6]:port"), or null when `address` is not one: a host name, no
  # port, a port out of 1-65535 or with leading zeros. Never an evaluation
  # error, so the assertions below can name the option.
  octet = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";
  ipv4Pattern = "${octet}\\.${octet}\\.${octet}\\.${octet}";
  ipPattern = "(${ipv4Pattern}|\\[[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*])";
  portOf = address:
    let parsed = builtins.match "${ipPattern}:([0-9]+)" address; in
    if parsed == null then null else portNumber (lib.last parsed);
  addressRule = "IP:port (an IPv4 address or a bracketed IPv6 address, no host name, and a port from 1 to 65535 without leading zeros)";

  listenPort = portOf cfg.settings.listen;
  badPeers = builtins.filter (peer: portOf peer == null) cfg.settings.peers;

  listenIsUnspecified = builtins.match "(0\\.0\\.0\\.0|\\[::]):[0-9]+" cfg.settings.listen != null;

  # ---- declared services: the issue 11 fields -------------------------------
  # Each rule below is the spec's grammar (see the top-level README); a
  # malformed entry fails an assertion naming the service's option, never an
  # evaluation error. The daemon checks the same again at `service apply`.

  # A published port, "[host_ip:]host_port:container_port[/tcp|/udp]", as
  # { hostIp (null: every address), hostPort, protocol }, or null.
  publishedPort = text:
    let parts = builtins.match "(([^:]*):)?([^:/]*):([^:/]*)(/(.*))?" text; in
    if parts == null then null
    else
      let
        hostIp = builtins.elemAt parts 1;
        hostPort = portNumber (builtins.elemAt parts 2);
        containerPort = portNumber (builtins.elemAt parts 3);
        protocol = builtins.elemAt parts 5;
      in
      if (hostIp != null && builtins.match ipv4Pattern hostIp == null)
        || hostPort == null || containerPort == null
        || !(builtins.elem protocol [ null "tcp" "udp" ])
      then null
      else { inherit hostIp hostPort; protocol = if protocol == null then "tcp" else protocol; };
  portRule = "[host_ip:]host_port:container_port[/tcp|/udp] (host_ip an IPv4 address, ports from 1 to 65535 without leading zeros; tcp when no protocol is given)";

  # Names of named volumes and of secrets: file names, never "." or "..".
  fileNamePattern = "[A-Za-z0-9][A-Za-z0-9_.-]*";
  volumePattern = "(/[^:]*|${fileNamePattern}):/[^:]*(:(ro|rw))?";
  volumeRule = "SOURCE:TARGET[:ro|:rw] (SOURCE an absolute host path or a volume name of ${fileNamePattern}, TARGET an absolute path, neither containing ':')";
  tmpfsPattern = "/[^:]*(:size=[1-9][0-9]*[kmg]?)?";
  tmpfsRule = "TARGET[:size=N[k|m|g]] (TARGET an absolute path without ':', N a positive number without leading zeros)";

  # Secrets reach the daemon as credentials of its unit (LoadCredential=),
  # and the spec names each where systemd puts it. A service name has no
  # '.', so `svc-<service>.<secret>` names one pair only, and the prefix
  # keeps them apart from the TLS credentials above.
  credentialsDirectory = "/run/credentials/shoal.service";
  secretCredential = service: secret: "svc-${service}.${secret}";
  # systemd's limit on a credential's name (a file name).
  credentialNameCharactersMax = 255;
  secretNameIsValid = service: secret:
    builtins.match fileNamePattern secret != null
    && builtins.stringLength (secretCredential service secret) <= credentialNameCharactersMax;
  secretCredentials = lib.concatLists (lib.mapAttrsToList
    (service: declared: lib.mapAttrsToList
      (secret: path: "${secretCredential service secret}:${path}")
      declared.secrets)
    cfg.services);

  # As the daemon's service names: 1-63 of [a-z0-9-], no dash at either end.
  isDnsLabel = name:
    builtins.match "[a-z0-9]([a-z0-9-]*[a-z0-9])?" name != null && builtins.stringLength name <= 63;

  # One assertion per service and field: the entries of `field` (a list)
  # that `isValid` refuses, named in the message.
  entryAssertions = field: isValid: rule: lib.mapAttrsToList
    (name: service:
      let bad = builtins.filter (entry: !(isValid entry)) service.${field}; in
      {
        assertion = bad == [ ];
        message = "services.shoal.services.${name}.${field}: ${lib.concatMapStringsSep ", " (entry: "\"${entry}\"") bad} must each be ${rule}";
      })
    cfg.services;
  serviceAssertions =
    entryAssertions "ports" (entry: publishedPort entry != null) portRule
    ++ entryAssertions "volumes" (entry: builtins.match volumePattern entry != null) volumeRule
    ++ entryAssertions "tmpfs" (entry: builtins.match tmpfsPattern entry != null) tmpfsRule
    ++ lib.mapAttrsToList
      (name: service:
        let bad = builtins.filter (secret: !(secretNameIsValid name secret)) (builtins.attrNames service.secrets); in
        {
          assertion = bad == [ ];
          message = "services.shoal.services.${name}.secrets: the names ${lib.concatMapStringsSep ", " (secret: "\"${secret}\"") bad} must each be ${fileNamePattern} (the file /run/secrets/NAME) and short enough for the credential name ${secretCredential name "NAME"} to have at most ${toString credentialNameCharactersMax} characters";
        })
      cfg.services
    ++ [{
      assertion = builtins.all isDnsLabel (builtins.attrNames cfg.services);
      message = "services.shoal.services: ${lib.concatMapStringsSep ", " (name: "\"${name}\"") (builtins.filter (name: !(isDnsLabel name)) (builtins.attrNames cfg.services))} must each be a service name: 1 to 63 lowercase letters, digits and inner dashes";
    }];

  # The host ports `openFirewall` opens: every declared service's published
  # ports of that protocol, except those bound to a loopback address.
  publishedPorts = lib.concatMap
    (service: builtins.filter (port: port != null) (map publishedPort service.ports))
    (builtins.attrValues cfg.services);
  firewallPorts = protocol: lib.unique (map (port: port.hostPort) (builtins.filter
    (port: port.protocol == protocol && (port.hostIp == null || !(lib.hasPrefix "127." port.hostIp)))
    publishedPorts));

  nonEmpty = value: if value == [ ] || value == { } then null else value;
  serviceSpec = name: service: withoutNulls {
    inherit name;
    # A Nix path literal is copied to the store (so it exists on a node
    # deployed from another machine); a derivation gives its store path; a
    # string is a path on the node, taken as written.
    image = "${service.image}";
    image_digest = service.imageDigest;
    inherit (service) command replicas restart resources;
    env = nonEmpty service.env;
    ports = nonEmpty service.ports;
    volumes = nonEmpty service.volumes;
    tmpfs = nonEmpty service.tmpfs;
    env_files = nonEmpty service.envFiles;
    secrets = nonEmpty (lib.mapAttrs
      (secret: _: "${credentialsDirectory}/${secretCredential name secret}")
      service.secrets);
    publish = if service.publish.mode == null then null else { inherit (service.publish) mode; };
    inherit (service) mode spread;
    constraints = nonEmpty service.constraints;
    # No field set: no check. Any field set renders the table, so the daemon's
    # validation names what is missing or wrong (`health.http: ...`).
    health = nonEmpty (withoutNulls service.health);
    # No field set: the daemon's defaults (no [update] table).
    update = nonEmpty (withoutNulls service.update);
  };
  servicesFile = settingsFormat.generate "shoal-services.toml" {
    service = lib.mapAttrsToList serviceSpec cfg.services;
  };

  optionalPositive = description: mkOption {
    type = types.nullOr types.ints.positive;
    default = null;
    description = "${description} `null` leaves the daemon's default.";
  };

  serviceModule = { name, ... }: {
    options = {
      image = mkOption {
        type = types.path;
        example = literalExpression "pkgs.callPackage ./examples/image.nix { }";
        description = ''
          The image: an OCI image layout directory, an oci-archive or a
          docker-archive tar (for instance a `dockerTools.buildImage` result
          with `compressor = "none"`). It must exist on every node that may
          run a replica: a derivation or a Nix path literal (`./web.tar`) is
          in the store and in the host's closure; a string
          (`"/var/lib/images/web.tar"`) is a path on the node, which you
          put there.
        '';
      };
      imageDigest = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        description = "If set, the image's manifest must have this digest.";
      };
      command = mkOption {
        type = types.nullOr (types.listOf types.str);
        default = null;
        example = [ "/bin/httpd" "-f" "-p" "8080" ];
        description = "The command; `null` runs the image's own entry point and command.";
      };
      env = mkOption {
        type = types.attrsOf types.str;
        default = { };
        example = { GREETING = "hello"; };
        description = "Environment variables of the service's containers.";
      };
      replicas = mkOption {
        type = types.ints.unsigned;
        default = 1;
        description = "How many containers of ${name} run across the cluster.";
      };
      restart = mkOption {
        type = types.enum [ "never" "on-failure" "always" ];
        default = "on-failure";
        description = "When a stopped container is started again.";
      };
      resources = {
        cpu_millis = optionalPositive "CPU per container, in thousandths of a core.";
        memory_bytes = optionalPositive "Memory limit per container, in bytes.";
        pids_max = optionalPositive "Process limit per container.";
      };
      ports = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "8080:80" "127.0.0.1:9000:9000" "5353:53/udp" ];
        description = ''
          Published ports, each ${portRule}. Which nodes accept them is
          `publish.mode`; `openFirewall` opens their host ports (except those
          bound to a loopback address).
        '';
      };
      mode = mkOption {
        type = types.nullOr (types.enum [ "replicated" "global" ]);
        default = null;
        description = ''
          `replicated`: `replicas` containers of ${name}. `global`: one on
          every live node that matches `constraints` (and has room); `replicas`
          is ignored. `null` leaves the daemon's default (replicated).
        '';
      };
      constraints = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "zone == eu-1" "role in (edge, core)" "disk != hdd" ];
        description = ''
          Node label conditions that must all hold where ${name} runs
          (`LABEL == VALUE`, `!=`, `in (A, B)`, `not in (A, B)`; labels come
          from each node's `services.shoal.labels`). The daemon checks them
          when the spec is applied and names a bad one.
        '';
      };
      spread = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "zone";
        description = "Spread the replicas of ${name} evenly over the values of this node label.";
      };
      health = {
        http = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "http://127.0.0.1:8080/healthz";
          description = ''
            Health check of each container of ${name}: a `GET` of this URL,
            healthy on a 2xx or 3xx status. The host must be `127.0.0.1` or
            `localhost`, meaning the container itself; the node probes the
            container's own address. Give one of `http`, `tcp` and `cmd`;
            with none (and no other `health` option) there is no check.
          '';
        };
        tcp = mkOption {
          type = types.nullOr types.port;
          default = null;
          example = 5432;
          description = "Health check: a TCP connection to this port of the container.";
        };
        cmd = mkOption {
          type = types.nullOr (types.listOf types.str);
          default = null;
          example = [ "/bin/sh" "-c" "test -e /run/ready" ];
          description = ''
            Health check: this program with its arguments, run inside each
            container of ${name} (its filesystem, user and environment);
            healthy when it exits 0 within `timeout_ms`. No shell is
            involved: use `[ "/bin/sh" "-c" "..." ]` for one.
          '';
        };
        interval_ms = optionalPositive "Time between probes (daemon default 30000; 500 to 3600000).";
        timeout_ms = optionalPositive "How long one probe may take (daemon default 30000; at most `interval_ms`).";
        retries = optionalPositive "Failed probes in a row that make a container unhealthy, which restarts it per `restart` (daemon default 3).";
        start_period_ms = mkOption {
          type = types.nullOr types.ints.unsigned;
          default = null;
          description = "Failures this long after a start do not count. `null` leaves the daemon's default (0).";
        };
      };
      update = {
        max_parallel = optionalPositive "Replicas of ${name} in transition at once during an update (daemon default 1).";
        order = mkOption {
          type = types.nullOr (types.enum [ "start-first" "stop-first" ]);
          default = null;
          description = ''
            `start-first` (the daemon's default): a new replica starts beside the
            old one, which stops once the new one counts. `stop-first`: the old
            one stops first (no extra room or host port needed). `null` leaves
            the daemon's default.
          '';
        };
        min_healthy_ms = mkOption {
          type = types.nullOr types.ints.unsigned;
          default = null;
          description = "A new replica counts after running (and passing its health check) this long. `null` leaves the daemon's default (3000).";
        };
        healthy_deadline_ms = optionalPositive "A new replica that does not count this long after its start fails the update (daemon default 60000).";
        auto_rollback = mkOption {
          type = types.nullOr types.bool;
          default = null;
          description = ''
            Whether a failed update writes the last good spec back on its own
            (the daemon's default, true); false pauses the update instead.
            `null` leaves the daemon's default.
          '';
        };
      };
      publish.mode = mkOption {
        type = types.nullOr (types.enum [ "host" "mesh" ]);
        default = null;
        description = ''
          `host`: only the nodes running a replica of ${name} accept its
          ports, and a node runs at most one replica per published port.
          `mesh`: every live node accepts them and forwards to a live replica
          anywhere. `null` leaves the daemon's default (host).
        '';
      };
      volumes = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "/srv/web:/data:ro" "cache:/var/cache/web" ];
        description = ''
          Mounts, each ${volumeRule}. An absolute SOURCE is bind-mounted from
          the node and must exist there. A name is a named volume: the
          node-local directory `<state_dir>/volumes/NAME`, created on first
          use and kept across container replacements and daemon restarts
          (`shoal volume ls`, `shoal volume rm`).
        '';
      };
      tmpfs = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "/tmp:size=64m" ];
        description = "Tmpfs mounts, each ${tmpfsRule}; 64m when no size is given.";
      };
      envFiles = mkOption {
        type = types.listOf types.externalPath;
        default = [ ];
        example = [ "/run/keys/web.env" ];
        description = ''
          Files of `KEY=VALUE` lines (`#` starts a comment) added to the
          environment, read on the node each time a container starts:
          absolute paths on the node, as strings outside the Nix store (the
          type refuses a store path or a path literal). Only the paths are in
          the cluster state. A missing or unreadable file is an error of that
          node's container, shown by `shoal ps`.
        '';
      };
      secrets = mkOption {
        type = types.attrsOf types.externalPath;
        default = { };
        example = { tls_key = "/run/keys/web.key"; };
        description = ''
          Files mounted read-only at `/run/secrets/NAME` in the containers
          (NAME: ${fileNamePattern}). Each path is an absolute path on the
          node, as a string outside the Nix store; it reaches the daemon as
          the credential `svc-${name}.NAME` of `shoal.service`
          (`LoadCredential=`), and the spec names
          `${credentialsDirectory}/svc-${name}.NAME`, so only that path is in
          the cluster state. systemd does not start `shoal.service` when one
          of these files is missing, and reads them when the daemon starts:
          a changed file reaches containers started after the next daemon
          restart. Declare the service on every node that may run it.
        '';
      };
    };
  };
in
{
  options.services.shoal = {
    enable = mkEnableOption "the shoal container orchestrator node";

    # shoal is not in nixpkgs: the flake's nixosModules.default sets this
    # (mkDefault), and so does its overlay through pkgs.shoal. Without
    # either, an assertion below says so before the default is needed.
    package = lib.mkPackageOption pkgs "shoal" {
      extraDescription = ''
        shoal is not in nixpkgs: the flake's `nixosModules.default` sets this
        to the flake's package; a module imported from the file needs the
        flake's `overlays.default` (for `pkgs.shoal`) or this option set.
      '';
    };

    labels = mkOption {
      type = types.attrsOf types.str;
      default = { };
      example = { zone = "eu-1"; role = "edge"; };
      description = ''
        This node's labels, published in its metadata (`shoal nodes` shows
        them); services select nodes by them with `constraints` and `spread`.
        Names and values are 1 to 63 characters of [A-Za-z0-9_.-].
      '';
    };

    drainOnStop = {
      enable = mkEnableOption ''
        draining this node when its unit stops, and undraining it when the
        unit has started. Stopping the unit (a reboot, a package upgrade)
        then first runs `shoal node drain <nodeName> --deadline-ms
        <deadlineMs> --wait`: the node takes no new replicas and its running
        replicas are started on other nodes before they stop here, and the
        stop waits until none runs here or the deadline passes; then the
        daemon stops as before (its containers are left running, as always).
        Once the unit has started again, `shoal node undrain <nodeName>`
        lets the node take replicas again. A failed drain or undrain (the
        daemon not answering, the deadline passed) is logged by systemd and
        does not fail the unit; `shoal nodes` shows a node still DRAINED.
        Every start undrains the node, so a drain set by hand
        (`shoal node drain`) also ends when the unit restarts. The unit's
        stop timeout is raised to the deadline plus 30 seconds'';
      deadlineMs = mkOption {
        type = types.ints.between 1000 86400000;
        default = 60000;
        example = 300000;
        description = ''
          How long, in milliseconds, the drain on stop may take
          (`--deadline-ms`): the node's replicas may keep running this long
          while they are replaced elsewhere, and the stop waits at most this
          long for them. 1000 to 86400000 (a day).
        '';
      };
    };

    metrics.listen = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "127.0.0.1:9464";
      description = ''
        The TCP address (${addressRule}) of the daemon's Prometheus
        endpoint, `GET /metrics` in the OpenMetrics text format (the
        config's `metrics.listen`); `null`, the default, serves none. It is
        plain HTTP without authentication: keep it on loopback or a
        management network. `openFirewall` does not open it.
      '';
    };

    nodeName = mkOption {
      type = types.str;
      default = config.networking.hostName;
      defaultText = literalExpression "config.networking.hostName";
      description = ''
        This node's id in the cluster. It must equal the node name in the
        node's certificate (`shoal cert issue --node NAME`).
      '';
    };

    settings = mkOption {
      default = { };
      description = ''
        The daemon's configuration file (TOML), see
        `shoal daemon --print-example-config`. Keys without a typed option
        here are passed through as written. `node_name`, `labels`,
        `metrics.listen` and `tls.*` are set from `nodeName`, `labels`,
        `metrics.listen` and `tls`.
      '';
      type = types.submodule {
        freeformType = settingsFormat.type;
        options = {
          state_dir = mkOption {
            type = types.str;
            default = "/var/lib/shoal";
            description = ''
              The daemon's database, API socket and container state. It must
              be below /var/lib: the unit creates it with StateDirectory.
            '';
          };
          listen = mkOption {
            type = types.str;
            default = "0.0.0.0:7443";
            example = "[::]:7443";
            description = "The UDP address of the HTTP/3 sync endpoint: ${addressRule}.";
          };
          advertise = mkOption {
            type = types.nullOr types.str;
            default = null;
            example = "192.0.2.10:7443";
            description = ''
              The address peers use to reach this node (${addressRule});
              required when `listen` is an unspecified address (0.0.0.0 or [::]).
            '';
          };
          peers = mkOption {
            type = types.listOf types.str;
            default = [ ];
            example = [ "192.0.2.11:7443" "192.0.2.12:7443" ];
            description = "Seed peers, each ${addressRule}; the rest are learned from the cluster state.";
          };
          log_format = mkOption {
            type = types.nullOr (types.enum [ "text" "json" ]);
            default = null;
            description = "Log format on the journal; `null` leaves the daemon's default (text).";
          };
          sync = {
            interval_ms = optionalPositive "Anti-entropy period.";
            jitter_ms = mkOption {
              type = types.nullOr types.ints.unsigned;
              default = null;
              description = "Random delay added to each anti-entropy round. `null` leaves the daemon's default.";
            };
            fanout = optionalPositive "Random live peers per anti-entropy round (default 1: pushes carry changes at once and SWIM starts an exchange with a member that comes back).";
            heartbeat_interval_ms = optionalPositive "Period of this node's metadata refresh, give or take a quarter, no sooner than a second per member after the last (liveness itself is SWIM's, see `membership`).";
            down_after_ms = optionalPositive "A peer SWIM has no entry for counts as down once its metadata is this old; must exceed `heartbeat_interval_ms`.";
            evict_after_ms = optionalPositive "Silence after which a member is evicted (unblocks tombstone collection).";
            max_clock_drift_ms = optionalPositive "A peer whose clock is further ahead is refused.";
            body_bytes_max = optionalPositive "Largest sync body accepted.";
            request_timeout_ms = optionalPositive "Timeout of one sync request.";
            eager_push = mkOption {
              type = types.nullOr types.bool;
              default = null;
              description = "Push local changes at once instead of waiting for the next round. `null` leaves the daemon's default.";
            };
            push_fanout = optionalPositive "Live members a local change is pushed to, and each member forwards a change new to it to (epidemic push); the daemon's default is ln N + 3 for N members.";
          };
          membership = {
            probe_period_ms = optionalPositive "SWIM: one member is probed per period; a failed node is down after about `probe_period_ms + probe_timeout_ms + suspect_to_down_ms`.";
            probe_timeout_ms = optionalPositive "SWIM: a probe unanswered this long is retried through other members; less than `probe_period_ms`.";
            suspect_to_down_ms = optionalPositive "SWIM: a suspected member that does not refute it within this is down; at least `probe_period_ms`.";
          };
          api.socket = mkOption {
            type = types.nullOr types.str;
            default = null;
            description = "The local API socket; `null` is `<state_dir>/shoal.sock`.";
          };
          capacity = {
            cpu_millis = optionalPositive "CPU this node offers to containers; `null` detects it.";
            memory_bytes = optionalPositive "Memory this node offers to containers; `null` detects it.";
          };
          containers = {
            enabled = mkOption {
              type = types.nullOr types.bool;
              default = null;
              description = "Run containers at all; when false the node syncs state but places nothing. `null` leaves the daemon's default (true).";
            };
            subnet = mkOption {
              type = types.nullOr types.str;
              default = null;
              example = "10.88.1.0/24";
              description = "This node's container subnet (a.b.c.d/len, one per node); containers get addresses, published ports and egress only with it.";
            };
            bridge = mkOption {
              type = types.nullOr types.str;
              default = null;
              description = "The node bridge holding the subnet's gateway. `null` leaves the daemon's default (shoal0).";
            };
            firewall = mkOption {
              type = types.nullOr types.bool;
              default = null;
              description = ''
                Keep shoal's own nftables table `ip shoal` (published ports,
                masquerade for containers' traffic leaving the cluster); nothing
                else of the host's firewall is touched. false: no table, so no
                published ports and no egress. `null` leaves the daemon's
                default (true).
              '';
            };
            reconcile_interval_ms = optionalPositive "How often the reconcile loop compares placement with what runs.";
            stop_grace_ms = optionalPositive "Time between SIGTERM and SIGKILL when a container is stopped.";
            log_bytes_max = optionalPositive "Each of a container's stdout and stderr keeps at most twice this.";
          };
        };
      };
    };

    # Certificates are public: a path literal or a store path is fine (it
    # reaches the node in the closure). The key is not: see keyFile.
    tls = {
      caFile = mkOption {
        type = types.path;
        example = "/var/lib/shoal-keys/ca.pem";
        description = "The cluster CA certificate (`shoal ca init`), an absolute path; public, so it may be in the store.";
      };
      certFile = mkOption {
        type = types.path;
        example = "/var/lib/shoal-keys/node.pem";
        description = "This node's certificate (`shoal cert issue`), an absolute path; public, so it may be in the store.";
      };
      keyFile = mkOption {
        type = types.externalPath;
        example = "/var/lib/shoal-keys/node.key";
        description = ''
          This node's private key: an absolute path on the node, as a string
          outside the Nix store (every local user can read the store). The
          type refuses a Nix path literal (`./node.key`) before anything
          copies it. It cannot undo `"''${./node.key}"`: evaluating that
          string copies the key into the store, world-readable, before the
          type refuses it; delete that store path and replace the key.
        '';
      };
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the UDP port of `settings.listen` in the firewall.";
    };

    services = mkOption {
      type = types.attrsOf (types.submodule serviceModule);
      default = { };
      example = literalExpression ''
        {
          web = {
            image = pkgs.callPackage ./examples/image.nix { };
            command = [ "/bin/httpd" "-f" "-p" "8080" ];
            replicas = 3;
            resources.memory_bytes = 67108864;
          };
        }
      '';
      description = ''
        Services applied (`shoal service apply`) when the node starts and
        whenever this set changes. An applied spec replaces the cluster's
        current one for that name (last writer wins across the cluster), so
        declare a service on every host alike or on one host only. Removing
        a declaration does not remove the service: use `shoal service rm`.
      '';
    };
  };

  meta = {
    # Only people in nixpkgs' maintainer list can be named here; shoal's
    # maintainers are this repository's.
    maintainers = [ ];
    doc = ./README.md;
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        # Only the default is left (priority 1500) and pkgs has no shoal.
        assertion = pkgs ? shoal || options.services.shoal.package.highestPrio < 1500;
        message = "services.shoal.package is not set and pkgs.shoal does not exist (shoal is not in nixpkgs): import the flake's nixosModules.default, add its overlays.default, or set services.shoal.package";
      }
      {
        assertion = builtins.match "[a-z0-9]([a-z0-9-]*[a-z0-9])?" cfg.nodeName != null
          && builtins.stringLength cfg.nodeName <= 63;
        message = "services.shoal.nodeName (${cfg.nodeName}) must be a DNS label: lowercase letters, digits and inner dashes, at most 63 characters";
      }
      {
        assertion = listenPort != null;
        message = "services.shoal.settings.listen (\"${cfg.settings.listen}\") must be ${addressRule}";
      }
      {
        assertion = cfg.settings.advertise == null || portOf cfg.settings.advertise != null;
        message = "services.shoal.settings.advertise (\"${toString cfg.settings.advertise}\") must be ${addressRule}";
      }
      {
        assertion = badPeers == [ ];
        message = "services.shoal.settings.peers: ${lib.concatMapStringsSep ", " (peer: "\"${peer}\"") badPeers} must each be ${addressRule}";
      }
      {
        assertion = cfg.metrics.listen == null || portOf cfg.metrics.listen != null;
        message = "services.shoal.metrics.listen (\"${toString cfg.metrics.listen}\") must be ${addressRule}";
      }
      {
        assertion = !listenIsUnspecified || cfg.settings.advertise != null;
        message = "services.shoal.settings.advertise must be set when settings.listen (${cfg.settings.listen}) is an unspecified address";
      }
      {
        assertion = builtins.match "/var/lib/[^/].*" cfg.settings.state_dir != null;
        message = "services.shoal.settings.state_dir (${cfg.settings.state_dir}) must be below /var/lib (the unit's StateDirectory)";
      }
      {
        assertion = builtins.all (text: builtins.match "[A-Za-z0-9_.-]{1,63}" text != null)
          (builtins.attrNames cfg.labels ++ builtins.attrValues cfg.labels);
        message = "services.shoal.labels: names and values must be 1 to 63 characters of [A-Za-z0-9_.-]";
      }
      {
        assertion = cfg.settings.containers.subnet == null
          || builtins.match "${ipv4Pattern}/([89]|[12][0-9]|30)" cfg.settings.containers.subnet != null;
        message = "services.shoal.settings.containers.subnet (\"${toString cfg.settings.containers.subnet}\") must be an IPv4 subnet a.b.c.d/len with len from 8 to 30";
      }
      {
        assertion = cfg.settings.containers.bridge == null
          || builtins.match "[A-Za-z0-9_.-]{1,15}" cfg.settings.containers.bridge != null;
        message = "services.shoal.settings.containers.bridge (\"${toString cfg.settings.containers.bridge}\") must be 1 to 15 characters of [A-Za-z0-9_.-]";
      }
    ] ++ serviceAssertions;

    services.shoal.settings = {
      node_name = cfg.nodeName;
      labels = lib.mkIf (cfg.labels != { }) cfg.labels;
      metrics = lib.mkIf (cfg.metrics.listen != null) { inherit (cfg.metrics) listen; };
      # Relative: resolved against $CREDENTIALS_DIRECTORY by the daemon.
      tls = {
        ca_file = credentials.ca;
        cert_file = credentials.cert;
        key_file = credentials.key;
      };
    };

    environment.systemPackages = [ cfg.package ];
    # The CLI finds the daemon when state_dir or api.socket is not the default.
    environment.variables.SHOAL_SOCKET = socketPath;

    networking.firewall.allowedUDPPorts = mkIf cfg.openFirewall
      (lib.unique (lib.optional (listenPort != null) listenPort ++ firewallPorts "udp"));
    networking.firewall.allowedTCPPorts = mkIf cfg.openFirewall (firewallPorts "tcp");

    systemd.services.shoal = {
      description = "shoal container orchestrator node";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      # Restart=on-failure, but a daemon that fails 5 times within 2 minutes
      # (a bad key, a port in use) stays failed instead of looping.
      startLimitBurst = 5;
      startLimitIntervalSec = 120;
      # The unit file names the config file, so a change restarts the
      # daemon anyway; the trigger says so explicitly.
      restartTriggers = [ configFile ];
      environment.SHOAL_SOCKET = socketPath;
      # Container networking runs `ip` (node bridge, veths, routes) and
      # `nft` (the table `ip shoal`: published ports, egress masquerade).
      path = [ pkgs.iproute2 pkgs.nftables ];

      serviceConfig = {
        # notify-reload (systemd 253 or later): `systemctl reload shoal`
        # sends SIGHUP, and the daemon reloads its certificates and answers
        # RELOADING=1 then READY=1. Credentials are copied at start, so a
        # rotated file reaches a reload only with systemd's
        # RefreshOnReload=credentials (260); otherwise restart the unit.
        Type = "notify-reload";
        NotifyAccess = "main";
        # The daemon pings at half this period.
        WatchdogSec = "30s";
        ExecStart = "${cfg.package}/bin/shoal daemon --config ${configFile}";
        # drainOnStop: "-", so a drain or undrain that fails does not fail
        # the unit (systemd logs it); the stop waits for the drain.
        ExecStartPost = mkIf cfg.drainOnStop.enable
          "-${cfg.package}/bin/shoal node undrain ${cfg.nodeName}";
        ExecStop = mkIf cfg.drainOnStop.enable
          "-${cfg.package}/bin/shoal node drain ${cfg.nodeName} --deadline-ms ${toString cfg.drainOnStop.deadlineMs} --wait";
        Restart = "on-failure";
        RestartSec = "2s";
        TimeoutStopSec =
          if cfg.drainOnStop.enable
          then "${toString (cfg.drainOnStop.deadlineMs / 1000 + 30)}s"
          else "30s";
        User = "root";

        StateDirectory = lib.removePrefix "/var/lib/" cfg.settings.state_dir;
        StateDirectoryMode = "0700";
        LoadCredential = [
          "${credentials.ca}:${cfg.tls.caFile}"
          "${credentials.cert}:${cfg.tls.certFile}"
          "${credentials.key}:${cfg.tls.keyFile}"
        ] ++ secretCredentials;

        # Containers get their own cgroups below the unit's.
        Delegate = true;
        # Containers outlive a daemon restart and are adopted by the next
        # daemon; stopping or restarting the unit signals the daemon only.
        KillMode = "process";
        LimitNOFILE = 1048576;
        TasksMax = "infinity";
        OOMScoreAdjust = -500;

        # Hardening. Everything a unit sets here is inherited by every
        # container the daemon starts, and the daemon must share the host's
        # mount namespace (container root filesystems are mounted there and
        # found again after a restart), so only these hold:
        UMask = "0077";
        LockPersonality = true;
        RestrictRealtime = true;
        SystemCallArchitectures = "native";
        # Left out, on purpose:
        # - ProtectSystem, ProtectHome, PrivateTmp, PrivateDevices, ProtectProc,
        #   ProtectKernelTunables/Modules/Logs: each gives the unit a private
        #   mount namespace, so container mounts would be invisible to the host
        #   and lost to the next daemon after a restart (no adoption).
        # - ReadOnlyPaths, InaccessiblePaths, TemporaryFileSystem, BindPaths:
        #   each makes a mount namespace too, and would hide from the daemon
        #   what services name on the host: bind-mount sources and env files
        #   (read as root where they are), named volumes (in the state
        #   directory) and the credentials directory (secrets).
        # - ProtectControlGroups: the daemon writes cgroups for containers.
        # - RestrictNamespaces, PrivateNetwork, ProtectHostname: containers are
        #   namespaces; ProtectHostname also forbids sethostname inside them.
        # - NoNewPrivileges, RestrictSUIDSGID, CapabilityBoundingSet,
        #   SystemCallFilter, RestrictAddressFamilies, MemoryDenyWriteExecute:
        #   inherited by every container, they would break images with setuid
        #   programs, layer unpacking, raw sockets or JITs; the runtime applies
        #   each container's own limits from its spec instead.
        # - DynamicUser/User: creating namespaces, cgroups and veths needs root.
      };
    };

    systemd.services.shoal-services = mkIf (cfg.services != { }) {
      description = "apply the shoal services declared in the NixOS configuration";
      wantedBy = [ "multi-user.target" ];
      # shoal.service is Type=notify: `after` waits until it is ready.
      wants = [ "shoal.service" ];
      after = [ "shoal.service" ];
      restartTriggers = [ servicesFile ];
      environment.SHOAL_SOCKET = socketPath;
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
        ExecStart = "${cfg.package}/bin/shoal service apply -f ${servicesFile}";
      };
    };
  };
}
