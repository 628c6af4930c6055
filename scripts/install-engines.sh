#!/usr/bin/env bash
# Puts the Docker engines of the test matrix, and etcd 3.5, into a cache folder, each under its
# own private root; nothing is installed system-wide. It runs from install-test-deps.sh, which
# installs what it builds with (libseccomp-dev for runc).
#
#   <dir>/28.5/      Debian forky's dockerd 28.5, docker CLI, containerd 2.1, docker-init, Compose v2
#   <dir>/26.1/      the same from Debian trixie (dockerd 26.1, containerd 1.7, Compose 2.26)
#   <dir>/29/        dockerd and docker-proxy built from the moby v2 module (MOBY29_VERSION),
#                    runc built from source (RUNC_VERSION), forky's containerd, docker-init and
#                    docker CLI (Docker 29 refuses API versions below 1.44: the 20.10 CLI cannot
#                    talk to it)
#   <dir>/etcd-3.5/  Debian forky's etcd-server
#
# Each root's engine.env says what is where, as KEY=VALUE lines with paths relative to the root,
# so that nothing else needs to know the layout: DOCKERD, DOCKER, COMPOSE (only where there is
# one), DOCKERD_ARGS (extra dockerd flags, split on spaces), PATH (directories, ':'-separated, to
# put first on dockerd's PATH) and API_VERSION for an engine (internal/dockertest.FindEngine reads
# them); ETCD for etcd (the Makefile reads it). It is written last: a root without it is not
# installed completely.
#
# 20.10 is the system's docker.io, installed by install-test-deps.sh. Each root keeps bookworm's
# runc except 29 (forky's runc needs glibc 2.38; bookworm's runc 1.1.5 cannot start Docker 29's
# containers). Debian packages come from the mirror apt already uses (read from apt's own sources),
# with suite forky or trixie, through private index lists, never the system's.
#
# <dir> is $TALKINGDATA_ENGINE_DIR, default <repo>/.cache/engines. Arguments name the roots to
# install (default: all; --list prints them). Idempotent: a root whose .installed stamp matches
# its recipe is not fetched or built again, only its engine.env rewritten if that changed; it
# prints one line per root it installs or updates and nothing otherwise.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${TALKINGDATA_ENGINE_DIR:-$repo/.cache/engines}"
GO="${GO:-go}"
if ! command -v "$GO" >/dev/null && [[ -x /usr/local/go/bin/go ]]; then
	GO=/usr/local/go/bin/go
fi
MOBY29_VERSION="${MOBY29_VERSION:-v2.0.0-beta.18}" # beta.25 needs a swarmkit version the proxy does not serve
RUNC_VERSION="${RUNC_VERSION:-v1.3.0}"

# The recipe of each root: when it changes, the root is rebuilt.
declare -A suite=([28.5]=forky [26.1]=trixie [29]=forky [etcd-3.5]=forky)
declare -A debs=(
	[28.5]="docker.io docker-cli containerd tini-static docker-compose"
	[26.1]="docker.io docker-cli containerd tini docker-compose"
	[29]="docker-cli containerd tini-static docker-compose"
	[etcd-3.5]="etcd-server"
)
declare -A gobuilds=(
	[29]="github.com/moby/moby/v2/cmd/dockerd@$MOBY29_VERSION github.com/moby/moby/v2/cmd/docker-proxy@$MOBY29_VERSION github.com/opencontainers/runc@$RUNC_VERSION"
)
# Symlinks made in a root (forky's docker-init comes with docker.io, which 29 does not take).
declare -A links=([29]="usr/bin/docker-init=tini-static")
all=(28.5 26.1 29 etcd-3.5)

# For engine.env: extra dockerd flags, and the highest API version of the engine's first
# release (a moby-module build reports no release version: this is what identifies it).
declare -A dockerd_args=(
	# Bookworm's libseccomp does not know syscalls in Docker 29's default profile.
	[29]="--seccomp-profile=unconfined"
)
declare -A api=([26.1]=1.45 [28.5]=1.51 [29]=1.52)

if [[ "${1:-}" == --list ]]; then
	echo "${all[*]}"
	exit 0
fi

mkdir -p "$dir"
# One install at a time (two `make test-deps` at once would share the .new roots and lists).
exec 9>"$dir/.lock"
flock 9

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# quietly runs a command with its output in $log, shown only when it fails.
quietly() {
	if ! "$@" >"$log" 2>&1; then
		cat "$log" >&2
		echo "install-engines: failed: $*" >&2
		exit 1
	fi
}

# mirror prints the Debian archive URI apt uses for bookworm, from deb822 .sources files or
# one-line .list files.
mirror() {
	local f
	for f in /etc/apt/sources.list.d/*.sources; do
		[[ -e "$f" ]] || continue
		awk '
			function take() { if (uri != "" && deb && suites ~ / bookworm /) print uri }
			/^[[:space:]]*$/ { take(); uri=""; deb=0; suites=""; next }
			tolower($1) == "types:" && / deb( |$)/ { deb=1 }
			tolower($1) == "uris:" { uri=$2 }
			tolower($1) == "suites:" { $1=""; suites=$0" " }
			END { take() }
		' "$f"
	done
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[[ -e "$f" ]] || continue
		awk '$1 == "deb" { i=2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ } if ($(i+1) == "bookworm") print $i }' "$f"
	done
}

# apt_opts SUITE: options that make apt use only the private sources and lists of SUITE.
apt_opts() {
	local s="$dir/.apt/$1"
	echo "-o Dir::Etc::sourcelist=$s/sources.list -o Dir::Etc::sourceparts=- -o Dir::State::Lists=$s/lists" \
		"-o APT::Sandbox::User=root -o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false" \
		"-o Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false"
}

# fetch_debs SUITE PKG…: the .deb files of PKGs from SUITE into $dir/.apt/SUITE/debs, the
# suite's index fetched once per run of this script (and only when a root needs it).
declare -A updated=()
fetch_debs() {
	local s="$1" d="$dir/.apt/$1"
	shift
	mkdir -p "$d/lists/partial" "$d/debs"
	if [[ -z "${updated[$s]:-}" ]]; then
		local uri
		uri="$(mirror)"
		uri="${uri%%$'\n'*}"
		if [[ -z "$uri" ]]; then
			echo "install-engines: no Debian bookworm mirror in /etc/apt/sources.list{,.d}" >&2
			exit 1
		fi
		echo "deb $uri $s main" >"$d/sources.list"
		# shellcheck disable=SC2046
		quietly apt-get update -q $(apt_opts "$s")
		updated[$s]=1
	fi
	# shellcheck disable=SC2046
	(cd "$d/debs" && rm -f ./*.deb && quietly apt-get download -q $(apt_opts "$s") "$@")
}

# install NAME: (re)builds one root unless its stamp matches the recipe, then writes its
# engine.env if that is missing or stale.
install() {
	local name="$1" root="$dir/$1" start=$SECONDS what="engine.env written"
	local recipe="suite=${suite[$name]} debs=${debs[$name]} go=${gobuilds[$name]:-} links=${links[$name]:-}"
	if [[ ! -f "$root/.installed" || "$(cat "$root/.installed")" != "$recipe" ]]; then
		build "$name" "$recipe"
		what="installed ($((SECONDS - start))s)"
	fi
	local m
	m="$(manifest "$name")"
	if [[ "$(cat "$root/engine.env" 2>/dev/null)" == "$m" ]]; then
		return
	fi
	echo "$m" >"$root/engine.env.new"
	mv "$root/engine.env.new" "$root/engine.env"
	echo "install-engines: $name $what in $root: $(version "$name")"
}

# build NAME RECIPE: a fresh root, swapped in whole.
build() {
	local name="$1" root="$dir/$1"
	rm -rf "$root.new"
	mkdir -p "$root.new"
	# shellcheck disable=SC2086
	fetch_debs "${suite[$name]}" ${debs[$name]}
	local f
	for f in "$dir/.apt/${suite[$name]}/debs"/*.deb; do
		quietly dpkg-deb -x "$f" "$root.new"
		rm -f "$f" # unpacked; the index lists stay, so the next update fetches only what changed
	done
	if [[ -n "${gobuilds[$name]:-}" ]]; then
		mkdir -p "$root.new/usr/sbin"
		local m
		for m in ${gobuilds[$name]}; do
			# runc with seccomp (cgo, libseccomp-dev), as its Makefile builds it.
			local tags=()
			[[ "$m" != */runc@* ]] || tags=(-tags seccomp)
			quietly env GOBIN="$root.new/usr/sbin" CGO_ENABLED=1 GOFLAGS=-buildvcs=false \
				"$GO" install "${tags[@]}" "$m"
		done
	fi
	local l
	for l in ${links[$name]:-}; do
		ln -sfn "${l#*=}" "$root.new/${l%%=*}"
	done
	echo "$2" >"$root.new/.installed"
	rm -rf "$root"
	mv "$root.new" "$root"
}

# manifest NAME prints the engine.env of root NAME (see the top of this file).
manifest() {
	if [[ "$1" == etcd-* ]]; then
		echo "ETCD=usr/bin/etcd"
		return
	fi
	local compose=usr/libexec/docker/cli-plugins/docker-compose
	echo "DOCKERD=usr/sbin/dockerd"
	echo "DOCKER=usr/bin/docker"
	[[ ! -x "$dir/$1/$compose" ]] || echo "COMPOSE=$compose"
	echo "DOCKERD_ARGS=${dockerd_args[$1]:-}"
	echo "PATH=usr/sbin:usr/bin"
	echo "API_VERSION=${api[$1]}"
}

# version NAME: the first line of --version of root NAME's dockerd or etcd.
version() {
	local r="$dir/$1"
	"$r/$(sed -n 's/^\(DOCKERD\|ETCD\)=//p' "$r/engine.env")" --version | head -n1
}

names=("$@")
((${#names[@]})) || names=("${all[@]}")
for n in "${names[@]}"; do
	if [[ -z "${suite[$n]:-}" ]]; then
		echo "install-engines: unknown root $n (known: ${all[*]})" >&2
		exit 2
	fi
	install "$n"
done
