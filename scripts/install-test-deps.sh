#!/usr/bin/env bash
# Installs the Debian packages that the integration tests (internal/etcdtest, internal/dockertest)
# need: a real etcd, a real dockerd, a static busybox for the offline test image, the netns and
# mount-namespace tools, systemd-analyze for the unit files `make install` puts in place, and
# qemu for the tests that need kernel options the running kernel lacks (internal/vm). Then
# scripts/install-vm-kernel.sh puts Debian's kernel for those into .cache/vm-kernel, and
# scripts/install-engines.sh puts the newer Docker engines of the test matrix (26.1, 28.5, 29)
# and etcd 3.5 into the engine cache (.cache/engines), nothing of them system-wide.
# Idempotent; prints one line per package or engine it installs and nothing otherwise.
# It never starts the system dockerd or etcd: the tests start private ones.
set -euo pipefail

# libseccomp-dev: install-engines.sh builds Docker 29's runc with seccomp (cgo). kmod and
# xz-utils: install-vm-kernel.sh indexes and unpacks the VM's kernel.
pkgs=(docker.io docker-compose etcd-server etcd-client busybox-static iproute2 iputils-ping util-linux systemd libseccomp-dev
	qemu-system-x86 kmod xz-utils)

missing=()
for p in "${pkgs[@]}"; do
	if [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" != "install ok installed" ]]; then
		missing+=("$p")
	fi
done
# The VLAN, macvlan and ipvlan tests need these in the kernel; where they are modules, load
# them. On a kernel built without them, those tests run in a VM (internal/vm).
if [[ "$(id -u)" == 0 ]] && command -v modprobe >/dev/null; then
	for m in 8021q macvlan ipvlan; do
		modprobe -q "$m" 2>/dev/null || true
	done
fi

here="$(dirname "${BASH_SOURCE[0]}")"
if ((${#missing[@]} == 0)); then
	"$here/install-vm-kernel.sh"
	exec "$here/install-engines.sh"
fi

sudo=()
if [[ "$(id -u)" != 0 ]]; then
	sudo=(sudo)
fi

# policy-rc.d exit 101 tells invoke-rc.d and deb-systemd-invoke not to start services during
# installation (docker.io and etcd-server would otherwise start system daemons). Keep any
# existing policy aside and put it back afterwards.
policy=/usr/sbin/policy-rc.d
saved=""
if [[ -e "$policy" ]]; then
	saved="$(mktemp)"
	"${sudo[@]}" cp -p "$policy" "$saved"
fi
restore() {
	if [[ -n "$saved" ]]; then
		"${sudo[@]}" cp -p "$saved" "$policy"
		rm -f "$saved"
	else
		"${sudo[@]}" rm -f "$policy"
	fi
}
trap restore EXIT
printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
"${sudo[@]}" chmod 755 "$policy"

log="$(mktemp)"
if ! { "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		"${missing[@]}"; } >"$log" 2>&1; then
	cat "$log" >&2
	rm -f "$log"
	echo "install-test-deps: apt-get failed for: ${missing[*]}" >&2
	exit 1
fi
rm -f "$log"
for p in "${missing[@]}"; do
	echo "installed $p"
done
"$here/install-vm-kernel.sh"
"$here/install-engines.sh"
