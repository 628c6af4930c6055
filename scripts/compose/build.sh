#!/usr/bin/env bash
# Builds docker-compose.test.yml's images offline, FROM scratch:
#   talkingdata/ipam-daemon:test  static talkingdata-ipam and ipamctl (CGO_ENABLED=0)
#   talkingdata/etcd:test         Debian's etcd (etcd-server) with the two libraries it links
# DOCKER_HOST picks the dockerd; GO and DOCKER override the tools.
set -euo pipefail
cd "$(dirname "$0")/../.."
GO=${GO:-go}
DOCKER=${DOCKER:-docker}
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT

mkdir -p "$ctx/ipam"
CGO_ENABLED=0 "$GO" build -o "$ctx/ipam/talkingdata-ipam" ./cmd/talkingdata-ipam
CGO_ENABLED=0 "$GO" build -o "$ctx/ipam/ipamctl" ./cmd/ipamctl
cat >"$ctx/ipam/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY talkingdata-ipam ipamctl /
ENTRYPOINT ["/talkingdata-ipam"]
DOCKERFILE

etcd=$(command -v etcd) || { echo "build.sh: no etcd binary: apt-get install etcd-server" >&2; exit 1; }
mkdir -p "$ctx/etcd"
cp "$etcd" "$ctx/etcd/etcd"
# Every library the binary links, at its own path (ldd prints "lib => /path (addr)" or "/path (addr)").
ldd "$etcd" | awk '/=> \//{print $3} /^\t\//{print $1}' | while read -r lib; do
	mkdir -p "$ctx/etcd/rootfs$(dirname "$lib")"
	cp -L "$lib" "$ctx/etcd/rootfs$lib"
done
cat >"$ctx/etcd/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY rootfs/ /
COPY etcd /etcd
ENTRYPOINT ["/etcd"]
DOCKERFILE

DOCKER_BUILDKIT=0 "$DOCKER" build -q -t talkingdata/ipam-daemon:test "$ctx/ipam"
DOCKER_BUILDKIT=0 "$DOCKER" build -q -t talkingdata/etcd:test "$ctx/etcd"
