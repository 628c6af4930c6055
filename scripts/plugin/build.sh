#!/usr/bin/env bash
# Builds the managed (v2) plugin directory: DIR/config.json and DIR/rootfs with the static daemon.
# Usage: scripts/plugin/build.sh DIR   (then: docker plugin create talkingdata/ipam:latest DIR)
# Needs only the Go toolchain: no image, no registry.
set -euo pipefail
dir="$(realpath -m "${1:?usage: $0 DIR}")"
cd "$(dirname "$0")/../.."
rm -rf "$dir"
# runc creates the mount points (/proc, /dev, /run/docker/plugins, /etc/hosts …) itself; the
# binary is static, so nothing else belongs in the root.
mkdir -p "$dir/rootfs/usr/bin"
CGO_ENABLED=0 "${GO:-go}" build -trimpath -o "$dir/rootfs/usr/bin/talkingdata-ipam" ./cmd/talkingdata-ipam
cp scripts/plugin/config.json "$dir/config.json"
