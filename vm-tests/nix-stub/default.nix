# `import nixpkgs { system; overlays; }` for the stub, as with the real one.
import ./pkgs
