#!/usr/bin/env bash
# Builds the statenode container image with no registry: FROM scratch, with exactly what the
# release binaries load at run time, copied from this machine.
#
#   deploy/build-image.sh [TAG]        # default statenode:<version>; also tags statenode:latest
#
# The image holds /usr/bin/statenode (the entry point) and /usr/bin/statectl, their shared
# libraries (ldd), the dynamic loader, /etc/passwd and /etc/group with the unprivileged user
# statenode (10001), and /etc/nsswitch.conf so glibc resolves peer names through /etc/hosts and
# DNS (the container runtime writes /etc/hosts and /etc/resolv.conf).
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
tag=${1:-statenode:$version}

cargo build --release --locked -p statenode -p statenode-client --bin statenode --bin statectl

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
root=$ctx/rootfs
mkdir -p "$root/usr/bin" "$root/etc" "$root/tmp" "$ctx/data"
chmod 1777 "$root/tmp"
for bin in statenode statectl; do
  # Without the debug info (the release profile keeps it for profiling); symbols stay.
  install -m 0755 "target/release/$bin" "$root/usr/bin/$bin"
  strip --strip-debug "$root/usr/bin/$bin"
  # Every shared object it loads, and the loader, at the paths ldd names.
  for lib in $(ldd "target/release/$bin" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
done

cat > "$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/:/nonexistent
statenode:x:10001:10001:statenode:/var/lib/statenode:/nonexistent
PASSWD
cat > "$root/etc/group" <<'GROUP'
root:x:0:
statenode:x:10001:
GROUP
# glibc (2.34+) carries the files and dns lookups itself; no libnss_* to copy.
echo 'hosts: files dns' > "$root/etc/nsswitch.conf"

cp deploy/Dockerfile "$ctx/Dockerfile"
docker build --quiet --tag "$tag" --tag statenode:latest \
  --label "org.opencontainers.image.version=$version" \
  --label "org.opencontainers.image.revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
  "$ctx" >/dev/null
size=$(docker image inspect --format '{{.Size}}' "$tag")
echo "built $tag ($((size / 1024 / 1024)) MiB)"
