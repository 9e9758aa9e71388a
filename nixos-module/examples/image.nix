# An image for a shoal service, built by Nix: busybox's httpd serving a page.
# `compressor = "none"` gives a plain docker-archive tar, which shoal reads
# directly. Use it as a service's image:
#   services.shoal.services.web.image = pkgs.callPackage ./examples/image.nix { };
{ dockerTools, buildEnv, busybox, writeText }:
let
  page = writeText "index.html" "hello from a shoal service\n";
in
dockerTools.buildImage {
  name = "shoal-example-web";
  tag = "latest";
  compressor = "none";
  copyToRoot = buildEnv {
    name = "shoal-example-web-root";
    paths = [ busybox ];
    pathsToLink = [ "/bin" ];
  };
  extraCommands = ''
    mkdir -p srv
    cp ${page} srv/index.html
  '';
  config = {
    Cmd = [ "/bin/httpd" "-f" "-p" "8080" "-h" "/srv" ];
    ExposedPorts."8080/tcp" = { };
  };
}
