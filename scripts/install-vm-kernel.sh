#!/usr/bin/env bash
# Puts Debian's stock kernel (the one linux-image-amd64 depends on) into <repo>/.cache/vm-kernel,
# for the tests that internal/vm runs in a VM when the running kernel lacks an option they need
# (802.1Q VLANs, ipvlan):
#
#   vmlinux            the uncompressed kernel (qemu's microvm machine boots only that)
#   lib/modules/<ver>  its modules, with depmod's indexes
#
# The .deb is fetched with apt-get download and unpacked with dpkg-deb -x: nothing goes into the
# host's /boot or /lib/modules. internal/vm builds the initramfs itself on each boot. Runs from
# install-test-deps.sh, which installs what it needs (qemu-system-x86, kmod, xz-utils).
# Idempotent: a kernel in the cache is kept (delete the directory for a newer one); it prints one
# line when it installs and nothing otherwise.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="$repo/.cache/vm-kernel"
if [[ -d "$dir" ]]; then
	exit 0
fi
mkdir -p "$(dirname "$dir")"
work="$(mktemp -d "$dir.XXXXXX")" # beside $dir, so that the final mv is a rename
log="$(mktemp)"
trap 'rm -rf "$work" "$log"' EXIT
quietly() {
	if ! "$@" >"$log" 2>&1; then
		cat "$log" >&2
		echo "install-vm-kernel: failed: $*" >&2
		exit 1
	fi
}

# kernel_pkg: the versioned package that Debian's kernel metapackage depends on.
kernel_pkg() {
	apt-cache depends linux-image-amd64 | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }'
}
pkg="$(kernel_pkg)"
if [[ -z "$pkg" ]]; then
	echo "install-vm-kernel: apt knows no linux-image-amd64 (is this Debian?)" >&2
	exit 1
fi
# The system's package lists may name a kernel the mirror no longer has: refresh them once.
if ! (cd "$work" && apt-get download -q "$pkg") >"$log" 2>&1; then
	quietly apt-get update -q
	pkg="$(kernel_pkg)"
	(cd "$work" && quietly apt-get download -q "$pkg")
fi
ver="${pkg#linux-image-}"
quietly dpkg-deb -x "$work"/"$pkg"_*.deb "$work/deb"
quietly depmod -b "$work/deb" "$ver"

# vmlinuz is a decompressor followed by the xz-compressed kernel: start at the xz magic (its
# first five bytes: bash strings end at the sixth, a NUL) and stop at the end of that stream.
vmlinuz="$work/deb/boot/vmlinuz-$ver"
off="$(LC_ALL=C grep -abo -m1 $'\xfd7zXZ' "$vmlinuz" || true)"
off="${off%%:*}"
if [[ -z "$off" ]]; then
	echo "install-vm-kernel: no xz stream in $vmlinuz" >&2
	exit 1
fi
xz -dc --single-stream <(tail -c +$((off + 1)) "$vmlinuz") >"$work/vmlinux"

mkdir -p "$work/new/lib"
mv "$work/vmlinux" "$work/new/"
mv "$work/deb/lib/modules" "$work/new/lib/"
mv "$work/new" "$dir"
echo "install-vm-kernel: $pkg ($(dpkg-deb -f "$work"/"$pkg"_*.deb Version)) in $dir"
