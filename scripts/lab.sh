#!/usr/bin/env bash
# lab.sh — a multi-host talkingdata IPAM lab on one machine, for tests and by hand. Needs root.
#
#   scripts/lab.sh [-i ID] up                build a lab (a fresh random id unless -i / $TDLAB_ID)
#   scripts/lab.sh [-i ID] status            each component and whether it is alive (all labs without an id)
#   scripts/lab.sh [-i ID] exec NODE [CMD…]  run CMD (default: a shell) in NODE's network namespace
#   scripts/lab.sh [-i ID] docker HOST ARGS… the docker CLI against HOST's dockerd
#   scripts/lab.sh [-i ID] env               print the lab's env file
#   scripts/lab.sh down [ID…]                tear labs down (every tdlab-* lab found without an id)
#   scripts/lab.sh list                      ids of the labs found
#   scripts/lab.sh prune                     tear down labs whose owner ($TDLAB_OWNER_PID at up) is gone
#   scripts/lab.sh [-i ID] etcd-kill K       SIGKILL etcd member K (1-3)
#   scripts/lab.sh [-i ID] etcd-start K [--no-wait]
#                                            restart member K on its data dir; waits until it answers
#   scripts/lab.sh [-i ID] plugin-kill H     SIGKILL host H's plugin (kill -9: its socket file stays)
#   scripts/lab.sh [-i ID] plugin-start H [--no-wait]
#                                            restart host H's plugin with the flags of up, on the same
#                                            socket (the daemon replaces the stale one); waits until
#                                            it has bound the socket
#
# NODE is h1…hN (or just 1…N), sw (the switch, which also holds the router 198.18.0.1) or etcd1…3;
# HOST is h1…hN or 1…N. exec, docker and env need no id when exactly one lab exists. exec runs in
# the machine's mount namespace with IPAM_ETCD_ENDPOINTS and TDLAB_ETCD_ENDPOINTS (the lab's
# etcd), on a host also DOCKER_HOST and IPAM_HOST_ID, and the lab's ipamctl, talkingdata-ipam and
# the host's docker CLI (Debian's /usr/bin/docker, matching dockerd 20.10, unless the host runs
# another engine) first on PATH:
#   scripts/lab.sh exec h1 ipamctl bridge setup --nic eth0
#   scripts/lab.sh exec h2 docker run --rm tdlab/busybox ip addr
#   scripts/lab.sh exec sw etcdctl --endpoints http://198.18.0.21:2379 member list
#
# Topology of lab ID, everything in 198.18.0.0/16 (dockerd's own networks in 198.19.128.0/18) and
# 2001:db8::/64 inside namespaces the lab creates (nothing is added to the machine's own network
# namespace):
#
#   netns tdlab-ID-sw      bridge sw0; veth "router" on it with 198.18.0.1/16 and 2001:db8::1/64
#   netns tdlab-ID-etcdK   eth0 198.18.0.2K/16 on sw0; etcd member etcdK, client http://198.18.0.2K:2379
#   netns tdlab-ID-hK      eth0 198.18.0.1K/16 and 2001:db8::1K/64 on sw0, default via 198.18.0.1
#                          and 2001:db8::1;
#                          talkingdata-ipam --host-id hK (socket /tmp/tdlab-ID/hK/plugins/talkingdata.sock)
#                          dockerd (socket /tmp/tdlab-ID/hK/docker.sock), in its own mount namespace
#                          where /tmp/tdlab-ID/hK/plugins is /run/docker/plugins; --bridge=none
#                          --iptables=false, default address pools in 198.19.128.0/18, containers
#                          under cgroup parent /tdlab-ID-hK;
#                          image tdlab/busybox:latest, the same image ID on every host.
#   /tmp/tdlab-ID/         state: env, logs, pid files, data. No br0 and no docker network is made.
#
# Environment:
#   TDLAB_ID          lab id ([a-z0-9], at most 16)        TDLAB_HOSTS       hosts, 1-9 (default 3)
#   TDLAB_BIN         directory with talkingdata-ipam and ipamctl to use (else a fresh build of
#                     the working tree into the state dir)
#   TDLAB_PLUGIN_ARGS extra daemon flags, split on spaces   TDLAB_OWNER_PID   see prune
#   TDLAB_DOCKERD, TDLAB_ETCD, TDLAB_DOCKER_CLI, TDLAB_GO, TDLAB_STORAGE_DRIVER: override programs
#   TDLAB_Hk_DOCKERD, TDLAB_Hk_DOCKER_CLI, TDLAB_Hk_DOCKERD_ARGS (split on spaces), TDLAB_Hk_PATH
#                     (directories put first on that dockerd's PATH: its containerd, runc,
#                     docker-init, docker-proxy): another engine on host k, e.g. a cluster in the
#                     middle of a rolling upgrade. For an engine of scripts/install-engines.sh they
#                     are DOCKERD, DOCKER, DOCKERD_ARGS and PATH of its root's engine.env (paths
#                     relative to the root); internal/lab sets them from $TALKINGDATA_LAB_ENGINES.
#
# Daemons outlive this script (setsid, nohup). `down` SIGKILLs everything of the lab (there is
# nothing to save): processes whose command line names /tmp/tdlab-ID/ or tdlab-ID-, processes in
# the lab's namespaces or its containers' cgroups, and their descendants; then it deletes the
# namespaces, mounts, cgroups and the state dir. It works on half-built labs and is idempotent.
set -euo pipefail
shopt -s nullglob

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SELF="$REPO/scripts/lab.sh"
readonly REPO SELF
readonly BASE=/tmp
readonly IMAGE=tdlab/busybox:latest
readonly NET=198.18.0 PLEN=16 ROUTER=198.18.0.1
# IPv6 addresses are added without duplicate address detection (nodad): the lab's addresses
# are unique by construction, and DAD would keep them unusable for a second or two.
readonly NET6=2001:db8:: PLEN6=64 ROUTER6=2001:db8::1
readonly NETCD=3
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin:/usr/bin:/bin"

die() {
	echo "lab.sh: $*" >&2
	exit 1
}
say() { echo "lab.sh: $*" >&2; }

# elapsed: seconds since up started, e.g. 1.25
elapsed() {
	local d=$((${EPOCHREALTIME//[.,]/} - T0_US))
	printf '%d.%02d' $((d / 1000000)) $((d % 1000000 / 10000))
}

valid_id() { [[ $1 =~ ^[a-z0-9]{1,16}$ ]]; }

# set_lab ID: the names every command derives from the id.
set_lab() {
	ID=$1
	valid_id "$ID" || die "invalid lab id '$ID': want 1-16 of [a-z0-9]"
	S="$BASE/tdlab-$ID"
	SW="tdlab-$ID-sw"
	NHOSTS=${TDLAB_HOSTS:-3}
	BIN=""
	if [[ -r $S/env ]]; then
		NHOSTS=$(sed -n 's/^TDLAB_HOSTS=//p' "$S/env")
		BIN=$(sed -n 's/^TDLAB_BIN=//p' "$S/env")
	fi
	[[ $NHOSTS =~ ^[1-9]$ ]] || die "TDLAB_HOSTS=$NHOSTS: want 1-9"
	EPS=""
	local k
	for ((k = 1; k <= NETCD; k++)); do
		EPS+="${EPS:+,}http://$NET.2$k:2379"
	done
}

# etcd_healthy ENDPOINTS TIMEOUT: each member answers a quorum read (asked from the switch).
# Without a leader the read waits for TIMEOUT: keep it short when polling.
etcd_healthy() {
	in_ns sw env -u ETCDCTL_ENDPOINTS ETCDCTL_API=3 etcdctl --endpoints "$1" \
		--dial-timeout 1s --command-timeout "$2" endpoint health >/dev/null 2>&1
}

ns_path() { echo "/run/netns/tdlab-$ID-$1"; }
in_ns() {
	local node=$1
	shift
	nsenter --net="$(ns_path "$node")" -- "$@"
}

# ---------------------------------------------------------------------------------------------
# processes

# proc_scan fills PPID_OF, STATE_OF and CMD_OF for every process, without forking.
proc_scan() {
	PPID_OF=() STATE_OF=() CMD_OF=()
	local p pid line rest args
	for p in /proc/[0-9]*; do
		pid=${p#/proc/}
		{ read -r line <"$p/stat"; } 2>/dev/null || continue
		rest=${line##*) }
		STATE_OF[$pid]=${rest%% *}
		rest=${rest#* }
		PPID_OF[$pid]=${rest%% *}
		args=()
		{ mapfile -d '' -t args <"$p/cmdline"; } 2>/dev/null || true
		CMD_OF[$pid]="${args[*]}"
	done
}
declare -A PPID_OF=() STATE_OF=() CMD_OF=()

# starttime PID: field 22 of /proc/PID/stat, to tell a process from a later one with its pid.
starttime() {
	local line rest f
	{ read -r line <"/proc/$1/stat"; } 2>/dev/null || return 1
	rest=${line##*) }
	read -r -a f <<<"$rest"
	echo "${f[19]}"
}

cgroup_dirs() {
	local d
	for d in /sys/fs/cgroup/*/"tdlab-$1-"* /sys/fs/cgroup/"tdlab-$1-"*; do echo "$d"; done
}

# lab_pids ID prints the live processes of lab ID: command line naming its state dir or its
# namespaces/cgroups, living in one of its network namespaces or its containers' cgroups, its
# unfinished `up`, and all their descendants. Never this script or its ancestors.
lab_pids() {
	local id=$1 pid ns f c
	local -a nsfiles=(/run/netns/"tdlab-$id-"*)
	local -A mine=() keep=()
	proc_scan
	for pid in "${!CMD_OF[@]}"; do
		if [[ ${CMD_OF[$pid]} == *"$BASE/tdlab-$id/"* || ${CMD_OF[$pid]} == *"tdlab-$id-"* ]]; then
			mine[$pid]=1
			continue
		fi
		for ns in "${nsfiles[@]}"; do
			if [[ /proc/$pid/ns/net -ef $ns ]]; then
				mine[$pid]=1
				break
			fi
		done
	done
	while read -r c; do
		[[ -n $c ]] || continue
		while read -r f; do
			for pid in $(<"$f"); do mine[$pid]=1; done
		done < <(find "$c" -name cgroup.procs 2>/dev/null)
	done < <(cgroup_dirs "$id")
	if [[ -r $BASE/tdlab-$id/up.pid ]]; then
		pid=$(<"$BASE/tdlab-$id/up.pid")
		if [[ -n ${CMD_OF[$pid]:-} && ${CMD_OF[$pid]} == *lab.sh* ]]; then mine[$pid]=1; fi
	fi
	# Never this script, its ancestors (`exec h1 lab.sh down` runs in a lab netns) or init; and
	# never what descends from them only through them.
	for ((pid = BASHPID; pid > 1; pid = ${PPID_OF[$pid]:-0})); do keep[$pid]=1; done
	keep[$$]=1
	keep[1]=1
	for pid in "${!keep[@]}"; do unset 'mine[$pid]'; done
	# Descendants: containerd and shims are not in dockerd's process group, and a killed `up`
	# may have children that name nothing of the lab yet.
	local -a queue=("${!mine[@]}")
	local -A kids=()
	for pid in "${!PPID_OF[@]}"; do kids[${PPID_OF[$pid]}]+=" $pid"; done
	while ((${#queue[@]})); do
		pid=${queue[-1]}
		unset 'queue[-1]'
		for c in ${kids[$pid]:-}; do
			if [[ -z ${mine[$c]:-} && -z ${keep[$c]:-} ]]; then
				mine[$c]=1
				queue+=("$c")
			fi
		done
	done
	for pid in "${!mine[@]}"; do
		[[ -n ${STATE_OF[$pid]:-} && ${STATE_OF[$pid]} != [ZX] ]] && echo "$pid"
	done
	return 0
}

# all_ids prints the ids of every lab that has anything left.
all_ids() {
	local x n pid
	{
		for x in "$BASE"/tdlab-*/ /run/netns/tdlab-* /sys/fs/cgroup/*/tdlab-* /sys/fs/cgroup/tdlab-*; do
			x=${x%/}
			n=${x##*/tdlab-}
			[[ $x == "$BASE"/tdlab-* && -d $x ]] || n=${n%-*}
			valid_id "$n" && echo "$n"
		done
		proc_scan
		for pid in "${!CMD_OF[@]}"; do
			[[ ${CMD_OF[$pid]} =~ $BASE/tdlab-([a-z0-9]{1,16})/ ]] && echo "${BASH_REMATCH[1]}"
		done
	} | sort -u
	return 0
}

# resolve_id: $ID from -i or $TDLAB_ID, else the only lab there is.
resolve_id() {
	if [[ -n ${ID:-} ]]; then
		set_lab "$ID"
		[[ -d $S ]] || die "no lab $ID ($S missing)"
		return
	fi
	local -a ids
	mapfile -t ids < <(all_ids)
	case ${#ids[@]} in
	0) die "no lab is running; start one with: $SELF up" ;;
	1) set_lab "${ids[0]}" ;;
	*) die "several labs (${ids[*]}): pick one with -i ID or TDLAB_ID" ;;
	esac
}

# ---------------------------------------------------------------------------------------------
# daemons: how up starts etcd members and plugins, and how the fault commands restart them

# dockerd_path DOCKERD [DIRS]: the PATH a dockerd runs with: DIRS (its engine's own, ':'-separated),
# then dockerd's directory (its containerd, runc, docker-init), then the system's.
dockerd_path() {
	echo "${2:+$2:}$(dirname "$1"):/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
}

# start_etcd K: spawn member K. On a restart its data dir exists and etcd ignores the
# --initial-cluster* flags, rejoining the cluster as the member it was. Needs ETCD and DPATH.
start_etcd() {
	local k=$1 a="$NET.2$1" d="$S/etcd$1" cluster="" j
	for ((j = 1; j <= NETCD; j++)); do cluster+="${cluster:+,}etcd$j=http://$NET.2$j:2380"; done
	mkdir -p "$d"
	spawn "$d/etcd.log" "$d/etcd.pid" nsenter --net="$(ns_path "etcd$k")" -- "$ETCD" \
		--name "etcd$k" --data-dir "$d/data" \
		--listen-client-urls "http://$a:2379" --advertise-client-urls "http://$a:2379" \
		--listen-peer-urls "http://$a:2380" --initial-advertise-peer-urls "http://$a:2380" \
		--initial-cluster "$cluster" --initial-cluster-token "tdlab-$ID" --initial-cluster-state new \
		--max-txn-ops 128 --logger zap --log-outputs stderr
}

# start_plugin K: spawn host K's plugin. Needs BIN, DPATH and PLUGIN_ARGS (extra flags, split on
# spaces).
start_plugin() {
	local k=$1 d="$S/h$1"
	local -a pargs=()
	read -r -a pargs <<<"${PLUGIN_ARGS:-}"
	mkdir -p "$d/plugins" "$d/data" "$d/exec"
	spawn "$d/plugin.log" "$d/plugin.pid" nsenter --net="$(ns_path "h$k")" -- "$BIN/talkingdata-ipam" \
		--host-id "h$k" --etcd-endpoints "$EPS" --socket "$d/plugins/talkingdata.sock" \
		--log-level debug "${pargs[@]}"
}

# restart_env: what start_etcd and start_plugin need, from a running lab's env file.
restart_env() {
	[[ -e $S/ready ]] || die "lab $ID is not (fully) up"
	envval() { sed -n "s/^$1=//p" "$S/env"; }
	ETCD=$(envval TDLAB_ETCD_BIN)
	DPATH=$(envval TDLAB_DPATH)
	PLUGIN_ARGS=$(envval TDLAB_PLUGIN_ARGS)
	[[ -n $ETCD ]] || find_tool ETCD etcd etcd-server "${TDLAB_ETCD:-}" # a lab from an older lab.sh
	if [[ -z $DPATH ]]; then
		local dockerd
		find_tool dockerd dockerd docker.io "${TDLAB_DOCKERD:-}"
		DPATH=$(dockerd_path "$dockerd")
	fi
}

# member_arg K / host_arg H: validated numbers.
member_arg() {
	[[ ${1:-} =~ ^[1-9]$ ]] && (($1 <= NETCD)) || die "no etcd member '${1:-}': want 1…$NETCD"
}
host_arg() {
	local h=${1:-}
	h=${h#h}
	[[ $h =~ ^[1-9]$ ]] && ((h <= NHOSTS)) || die "no host '${1:-}': lab $ID has h1…h$NHOSTS"
	echo "$h"
}

# fail_logs MSG LOG…: a restart failed; show the logs that tell why.
fail_logs() {
	local msg=$1 l
	shift
	{
		echo "lab.sh: lab $ID: $msg"
		for l in "$@"; do tail_log "$l"; done
	} >&2
	exit 1
}

# kill_daemon NAME PIDFILE: SIGKILL the process and wait until it is gone (its pid is no zombie
# for long: it is reparented to init, which reaps it).
kill_daemon() {
	local name=$1 pidf=$2 pid i
	alive "$pidf" || die "$name is not running"
	pid=$(<"$pidf")
	kill -KILL "$pid" 2>/dev/null || true
	for ((i = 0; i < 100; i++)); do
		alive "$pidf" || {
			echo "$name killed (pid $pid)"
			return 0
		}
		sleep 0.05
	done
	die "$name (pid $pid) still alive 5s after SIGKILL"
}

cmd_etcd_kill() {
	resolve_id
	member_arg "${1:-}"
	kill_daemon "etcd$1" "$S/etcd$1/etcd.pid"
}

cmd_etcd_start() {
	resolve_id
	member_arg "${1:-}"
	local k=$1 wait=1
	[[ ${2:-} != --no-wait ]] || wait=0
	restart_env
	alive "$S/etcd$k/etcd.pid" && die "etcd$k is already running (pid $(<"$S/etcd$k/etcd.pid"))"
	start_etcd "$k"
	if ((wait)); then
		local deadline=$((SECONDS + 30))
		until etcd_healthy "http://$NET.2$k:2379" 500ms; do
			alive "$S/etcd$k/etcd.pid" || fail_logs "etcd$k exited after the restart" "$S/etcd$k/etcd.log"
			((SECONDS < deadline)) || fail_logs "etcd$k not healthy 30s after the restart" "$S/etcd$k/etcd.log"
			sleep 0.1
		done
	fi
	echo "etcd$k started (pid $(<"$S/etcd$k/etcd.pid"))"
}

cmd_plugin_kill() {
	resolve_id
	local h
	h=$(host_arg "${1:-}")
	kill_daemon "plugin of h$h" "$S/h$h/plugin.pid"
}

# sock_id SOCKET: inode and change time, to tell a freshly bound socket from a stale one.
sock_id() { stat -c '%i %z' "$1" 2>/dev/null || true; }

cmd_plugin_start() {
	resolve_id
	local h wait=1 sock before
	h=$(host_arg "${1:-}")
	[[ ${2:-} != --no-wait ]] || wait=0
	restart_env
	alive "$S/h$h/plugin.pid" && die "the plugin of h$h is already running (pid $(<"$S/h$h/plugin.pid"))"
	sock="$S/h$h/plugins/talkingdata.sock"
	before=$(sock_id "$sock")
	start_plugin "$h"
	if ((wait)); then
		local deadline=$((SECONDS + 20))
		until [[ -S $sock && $(sock_id "$sock") != "$before" ]]; do
			alive "$S/h$h/plugin.pid" || fail_logs "the plugin of h$h exited after the restart" "$S/h$h/plugin.log"
			((SECONDS < deadline)) || fail_logs "the plugin of h$h has not bound $sock 20s after the restart" "$S/h$h/plugin.log"
			sleep 0.02
		done
	fi
	echo "plugin of h$h started (pid $(<"$S/h$h/plugin.pid"))"
}

# ---------------------------------------------------------------------------------------------
# up

find_tool() { # VAR NAME PACKAGE [OVERRIDE]
	local p=${4:-}
	[[ -n $p ]] || p=$(command -v "$2" 2>/dev/null) || die "no $2 (Debian package $3); scripts/install-test-deps.sh installs it"
	[[ -x $p ]] || die "$p is not executable"
	printf -v "$1" %s "$p"
}

# host_docker K SECONDS ARGS…: host K's docker CLI (up's HCLI) against its dockerd, given
# SECONDS to answer.
host_docker() {
	local k=$1 secs=$2
	shift 2
	DOCKER_CONFIG="$S/cli" timeout "$secs" "${HCLI[$k]:-$DOCKER}" -H "unix://$S/h$k/docker.sock" "$@"
}

# host_cli K: host K's docker CLI as up recorded it (a lab from an older lab.sh: docker_cli).
host_cli() {
	local c=""
	[[ ! -r $S/env ]] || c=$(sed -n "s/^TDLAB_H$1_DOCKER_CLI=//p" "$S/env")
	[[ -n $c ]] || c=$(docker_cli)
	echo "$c"
}

docker_cli() {
	if [[ -n ${TDLAB_DOCKER_CLI:-} ]]; then
		echo "$TDLAB_DOCKER_CLI"
	elif [[ -x /usr/bin/docker ]]; then
		echo /usr/bin/docker # Debian's, matching Debian's dockerd; /usr/local/bin may hold a newer one
	else
		command -v docker || die "no docker CLI (Debian package docker.io)"
	fi
}

# spawn LOG PIDFILE CMD…: start CMD detached (own session, no terminal, stdio to LOG). In a
# script without job control a background child is no group leader, so setsid does not fork and
# $! is CMD's pid after the exec chain setsid → nohup → env → nsenter → CMD.
spawn() {
	local logf=$1 pidf=$2
	shift 2
	setsid nohup env -i PATH="$DPATH" HOME=/root LANG=C.UTF-8 "$@" >>"$logf" 2>&1 </dev/null &
	echo $! >"$pidf"
}

alive() { # PIDFILE: the process is running and is still the one we started
	local pid
	pid=$(cat "$1" 2>/dev/null) || return 1
	[[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && [[ $(cat "/proc/$pid/stat" 2>/dev/null) != *") Z "* ]]
}

tail_log() { # LOG: the last lines, indented
	if [[ -s $1 ]]; then
		echo "--- $1 (last 25 lines)"
		tail -n 25 "$1" | sed 's/^/    /'
	else
		echo "--- $1: empty or missing"
	fi
}

# fail_up MSG LOG…: up failed; show the logs that tell why.
fail_up() {
	local msg=$1 l
	shift
	{
		echo "lab.sh: up $ID: $msg"
		for l in "$@"; do tail_log "$l"; done
	} >&2
	exit 1
}

up_exit() {
	local rc=$1
	rm -f "$S/up.pid"
	if ((rc != 0)); then
		echo "lab.sh: lab $ID is not (fully) up; logs are in $S; remove it with: $SELF down $ID" >&2
	fi
}

mk_ns() {
	ip netns add "tdlab-$ID-$1"
	ip -n "tdlab-$ID-$1" link set lo up
}

# attach NODE ADDR [ADDR6]: NODE's eth0 on the switch. The veth is created directly inside the
# two namespaces, so nothing appears in the machine's own namespace, even for a moment.
attach() {
	local node=$1 addr=$2 addr6=${3:-} ns="tdlab-$ID-$1"
	ip link add eth0 netns "$ns" type veth peer name "$node" netns "$SW"
	ip -n "$SW" link set "$node" master sw0 up
	ip -n "$ns" addr add "$addr/$PLEN" dev eth0
	[[ -z $addr6 ]] || ip -n "$ns" addr add "$addr6/$PLEN6" dev eth0 nodad
	ip -n "$ns" link set eth0 up
	ip -n "$ns" route add default via "$ROUTER"
	[[ -z $addr6 ]] || ip -n "$ns" -6 route add default via "$ROUTER6"
}

# storage_driver: overlay2 when an overlay mount works under $BASE, else vfs.
storage_driver() {
	if [[ -n ${TDLAB_STORAGE_DRIVER:-${TDTEST_STORAGE_DRIVER:-}} ]]; then
		echo "${TDLAB_STORAGE_DRIVER:-$TDTEST_STORAGE_DRIVER}"
		return
	fi
	local d="$S/ovl-probe"
	mkdir -p "$d"/{lower,upper,work,merged}
	if unshare -m --propagation private mount -t overlay overlay \
		-o "lowerdir=$d/lower,upperdir=$d/upper,workdir=$d/work" "$d/merged" 2>/dev/null; then
		echo overlay2
	else
		echo vfs
	fi
	rm -rf "$d"
}

# busybox_tar: an image root with the static busybox, a symlink per applet, passwd and group.
busybox_tar() {
	local bb=${TDLAB_BUSYBOX:-/bin/busybox} r="$S/rootfs" a
	[[ -x $bb ]] || die "no $bb (Debian package busybox-static)"
	if command -v ldd >/dev/null && [[ $(LC_ALL=C ldd "$bb" 2>&1 || true) != *'not a dynamic'* ]]; then
		die "$bb is dynamically linked; install busybox-static"
	fi
	mkdir -p "$r"/{bin,dev,etc,proc,root,sys,tmp,var,run}
	chmod 1777 "$r/tmp"
	chmod 0700 "$r/root"
	cp "$bb" "$r/bin/busybox"
	for a in $("$bb" --list); do
		[[ $a == busybox || $a == */* ]] || ln -s busybox "$r/bin/$a"
	done
	printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$r/etc/passwd"
	printf 'root:x:0:\nnogroup:x:65534:\n' >"$r/etc/group"
	tar --numeric-owner --owner=0 --group=0 -C "$r" -cf "$S/busybox.tar" .
	rm -rf "$r"
}

# Runs inside dockerd's new private mount namespace: $1 = plugin dir, $2 = tmpfs name, then
# dockerd's command. The tmpfs on /run hides the machine's /run/docker and /run/containerd.
# shellcheck disable=SC2016
readonly DOCKERD_SH='set -e
mount -t tmpfs -o mode=0755 "$2" /run
mkdir -p /run/docker/plugins
mount --bind "$1" /run/docker/plugins
for d in /etc/docker /usr/lib/docker/plugins; do
	if [ -d "$d" ]; then mount -t tmpfs -o mode=0755 "$2" "$d"; fi
done
shift 2
exec "$@"'

cmd_up() {
	local k
	T0_US=${EPOCHREALTIME//[.,]/}
	(($# == 0)) || die "up: unknown argument $1"
	[[ $(id -u) == 0 ]] || die "up needs root (namespaces, mounts, dockerd)"
	[[ -n ${ID:-} ]] || ID=$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
	set_lab "$ID"
	local -a nsf=(/run/netns/"tdlab-$ID-"*)
	[[ ! -e $S && ${#nsf[@]} == 0 ]] || die "lab $ID exists; remove it with: $SELF down $ID"

	local ETCD DOCKERD GO="" DOCKER
	find_tool ETCD etcd etcd-server "${TDLAB_ETCD:-}"
	find_tool DOCKERD dockerd docker.io "${TDLAB_DOCKERD:-}"
	DOCKER=$(docker_cli)
	local t
	for t in ip:iproute2 nsenter:util-linux unshare:util-linux setsid:util-linux etcdctl:etcd-client tar:tar; do
		command -v "${t%%:*}" >/dev/null || die "no ${t%%:*} (Debian package ${t#*:})"
	done
	DPATH=$(dockerd_path "$DOCKERD")
	# Each host's engine: dockerd, CLI, extra flags and PATH (default: the lab's).
	local v
	local -a HDOCKERD=() HARGS=() HDPATH=()
	declare -gA HCLI=()
	for ((k = 1; k <= NHOSTS; k++)); do
		v="TDLAB_H${k}_DOCKERD"
		HDOCKERD[k]=${!v:-$DOCKERD}
		[[ -x ${HDOCKERD[k]} ]] || die "$v=${HDOCKERD[k]} is not executable"
		v="TDLAB_H${k}_DOCKER_CLI"
		HCLI[$k]=${!v:-$DOCKER}
		[[ -x ${HCLI[$k]} ]] || die "$v=${HCLI[$k]} is not executable"
		v="TDLAB_H${k}_DOCKERD_ARGS"
		HARGS[k]=${!v:-}
		v="TDLAB_H${k}_PATH"
		HDPATH[k]=$(dockerd_path "${HDOCKERD[k]}" "${!v:-}")
	done

	mkdir -m 0755 "$S"
	echo $$ >"$S/up.pid"
	if [[ -n ${TDLAB_OWNER_PID:-} ]]; then
		echo "$TDLAB_OWNER_PID $(starttime "$TDLAB_OWNER_PID" || echo gone)" >"$S/owner"
	fi
	trap 'up_exit $?' EXIT
	mkdir -m 0700 "$S/cli" # DOCKER_CONFIG: keep the CLI away from ~/.docker
	say "lab $ID: $S"

	# Binaries: built in the background while the network and etcd come up.
	local buildpid=""
	if [[ -n ${TDLAB_BIN:-} ]]; then
		BIN=$(cd "$TDLAB_BIN" && pwd)
	else
		# Always a fresh build of the working tree (incremental, about a
		# second): a stale bin/ would test yesterday's code.
		BIN="$S/bin"
		GO=${TDLAB_GO:-$(command -v go || echo /usr/local/go/bin/go)}
		[[ -x $GO ]] || die "no go toolchain to build the binaries (set TDLAB_GO, or TDLAB_BIN to prebuilt ones)"
		(cd "$REPO" && CGO_ENABLED=0 "$GO" build -o "$BIN/" ./cmd/talkingdata-ipam ./cmd/ipamctl) >"$S/build.log" 2>&1 &
		buildpid=$!
	fi

	local -a hosts=()
	for ((k = 1; k <= NHOSTS; k++)); do hosts+=("h$k"); done

	# The env file first: status, exec and down work on a half-built lab too.
	{
		echo "TDLAB_ID=$ID"
		echo "TDLAB_DIR=$S"
		echo "TDLAB_HOSTS=$NHOSTS"
		echo "TDLAB_ETCD_MEMBERS=$NETCD"
		echo "TDLAB_ETCD_ENDPOINTS=$EPS"
		echo "TDLAB_ROUTER=$ROUTER"
		echo "TDLAB_PREFIXLEN=$PLEN"
		echo "TDLAB_ROUTER6=$ROUTER6"
		echo "TDLAB_PREFIXLEN6=$PLEN6"
		echo "TDLAB_IMAGE=$IMAGE"
		echo "TDLAB_BIN=$BIN"
		echo "TDLAB_DOCKER_CLI=$DOCKER"
		echo "TDLAB_ETCD_BIN=$ETCD"
		echo "TDLAB_DPATH=$DPATH"
		echo "TDLAB_PLUGIN_ARGS=${TDLAB_PLUGIN_ARGS:-}"
		echo "TDLAB_SWITCH_NETNS=$SW"
		for ((k = 1; k <= NETCD; k++)); do
			echo "TDLAB_ETCD${k}_NETNS=tdlab-$ID-etcd$k"
			echo "TDLAB_ETCD${k}_ADDR=$NET.2$k"
			echo "TDLAB_ETCD${k}_LOG=$S/etcd$k/etcd.log"
		done
		for ((k = 1; k <= NHOSTS; k++)); do
			echo "TDLAB_H${k}_NETNS=tdlab-$ID-h$k"
			echo "TDLAB_H${k}_ADDR=$NET.1$k"
			echo "TDLAB_H${k}_ADDR6=${NET6}1$k"
			echo "TDLAB_H${k}_DOCKER_HOST=unix://$S/h$k/docker.sock"
			echo "TDLAB_H${k}_PLUGIN_SOCKET=$S/h$k/plugins/talkingdata.sock"
			echo "TDLAB_H${k}_PLUGIN_LOG=$S/h$k/plugin.log"
			echo "TDLAB_H${k}_DOCKERD_LOG=$S/h$k/dockerd.log"
			echo "TDLAB_H${k}_DOCKERD=${HDOCKERD[k]}"
			echo "TDLAB_H${k}_DOCKER_CLI=${HCLI[$k]}"
		done
	} >"$S/env"

	# Network.
	mk_ns sw
	ip -n "$SW" link add sw0 type bridge
	ip -n "$SW" link set sw0 up
	ip -n "$SW" link add router type veth peer name p-router
	ip -n "$SW" link set p-router master sw0 up
	ip -n "$SW" addr add "$ROUTER/$PLEN" dev router
	ip -n "$SW" addr add "$ROUTER6/$PLEN6" dev router nodad
	ip -n "$SW" link set router up
	for ((k = 1; k <= NETCD; k++)); do
		mk_ns "etcd$k"
		attach "etcd$k" "$NET.2$k"
	done
	for ((k = 1; k <= NHOSTS; k++)); do
		mk_ns "h$k"
		attach "h$k" "$NET.1$k" "${NET6}1$k"
	done

	say "lab $ID: network ready ($(elapsed)s)"

	# etcd: one cluster of three members.
	for ((k = 1; k <= NETCD; k++)); do start_etcd "$k"; done

	# Meanwhile: the image root and the storage driver.
	busybox_tar
	local driver
	driver=$(storage_driver)

	local deadline=$((SECONDS + 30)) pending
	while :; do
		for ((k = 1; k <= NETCD; k++)); do
			alive "$S/etcd$k/etcd.pid" || fail_up "etcd$k exited" "$S/etcd$k/etcd.log"
		done
		! etcd_healthy "$EPS" 300ms || break
		((SECONDS < deadline)) || fail_up "etcd not healthy after 30s" "$S"/etcd*/etcd.log
		sleep 0.1
	done
	say "lab $ID: etcd cluster healthy ($(elapsed)s)"

	if [[ -n $buildpid ]] && ! wait "$buildpid"; then
		fail_up "building the binaries failed" "$S/build.log"
	fi
	local b
	for b in talkingdata-ipam ipamctl; do
		[[ -x $BIN/$b ]] || fail_up "no $BIN/$b" "$S/build.log"
	done
	# PATH for exec: the lab's binaries and the docker CLI that matches dockerd; on a host, that
	# host's CLI first.
	mkdir -p "$S/path"
	ln -s "$BIN/talkingdata-ipam" "$BIN/ipamctl" "$S/path/"
	ln -s "$DOCKER" "$S/path/docker"
	for ((k = 1; k <= NHOSTS; k++)); do
		mkdir -p "$S/h$k/path"
		ln -s "${HCLI[$k]}" "$S/h$k/path/docker"
	done

	# Plugins, started before dockerd (which finds a legacy plugin's socket on first use anyway).
	PLUGIN_ARGS=${TDLAB_PLUGIN_ARGS:-}
	for ((k = 1; k <= NHOSTS; k++)); do start_plugin "$k"; done
	deadline=$((SECONDS + 20))
	while :; do
		pending=0
		for ((k = 1; k <= NHOSTS; k++)); do
			alive "$S/h$k/plugin.pid" || fail_up "plugin of h$k exited" "$S/h$k/plugin.log"
			[[ -S $S/h$k/plugins/talkingdata.sock ]] || pending=1
		done
		((pending)) || break
		((SECONDS < deadline)) || fail_up "plugin sockets missing after 20s" "$S"/h*/plugin.log
		sleep 0.05
	done

	say "lab $ID: plugins serving ($(elapsed)s)"

	# dockerd, each in the host's netns and a private mount namespace.
	for ((k = 1; k <= NHOSTS; k++)); do
		local d="$S/h$k"
		# Its own file, so the machine's /etc/docker/daemon.json cannot change it. Networks dockerd
		# numbers itself (swarm's docker_gwbridge) stay inside 198.18.0.0/15.
		echo '{"default-address-pools": [{"base": "198.19.128.0/18", "size": 24}]}' >"$d/daemon.json"
		local -a dargs=()
		read -r -a dargs <<<"${HARGS[k]}"
		DPATH=${HDPATH[k]} spawn "$d/dockerd.log" "$d/dockerd.pid" nsenter --net="$(ns_path "h$k")" -- \
			unshare -m --propagation private -- /bin/sh -c "$DOCKERD_SH" sh "$d/plugins" "tdlab-$ID-h$k" \
			"${HDOCKERD[k]}" --config-file "$d/daemon.json" --data-root "$d/data" --exec-root "$d/exec" \
			--pidfile "$d/exec/dockerd.pid" --host "unix://$d/docker.sock" --storage-driver "$driver" \
			--bridge=none --iptables=false --ip6tables=false --cgroup-parent "/tdlab-$ID-h$k" "${dargs[@]}"
	done
	deadline=$((SECONDS + 60))
	local -A ready=()
	while :; do
		pending=0
		for ((k = 1; k <= NHOSTS; k++)); do
			[[ -z ${ready[$k]:-} ]] || continue
			alive "$S/h$k/dockerd.pid" || fail_up "dockerd of h$k exited" "$S/h$k/dockerd.log"
			if [[ -S $S/h$k/docker.sock ]] &&
				host_docker "$k" 5 version --format '{{.Server.Version}}' >/dev/null 2>&1; then
				ready[$k]=1
			else
				pending=1
			fi
		done
		((pending)) || break
		((SECONDS < deadline)) || fail_up "dockerd not answering after 60s" "$S"/h*/dockerd.log
		sleep 0.1
	done
	say "lab $ID: dockerd answering on ${hosts[*]} ($(elapsed)s, storage driver $driver)"

	# Imported once and loaded into the other hosts, so that every host has the same image ID: a
	# swarm service naming the image by ID runs it from the local store, where a name would make
	# each node try a registry first.
	host_docker 1 120 import --change 'CMD ["/bin/sh"]' - "$IMAGE" <"$S/busybox.tar" >"$S/h1/import.log" 2>&1 ||
		fail_up "docker import on h1 failed" "$S/h1/import.log"
	host_docker 1 120 save -o "$S/image.tar" "$IMAGE" >>"$S/h1/import.log" 2>&1 ||
		fail_up "docker save on h1 failed" "$S/h1/import.log"
	local -a loads=()
	for ((k = 2; k <= NHOSTS; k++)); do
		host_docker "$k" 120 load -i "$S/image.tar" >"$S/h$k/import.log" 2>&1 &
		loads+=($!)
	done
	for ((k = 2; k <= NHOSTS; k++)); do
		wait "${loads[k - 2]}" || fail_up "docker load on h$k failed" "$S/h$k/import.log"
	done
	rm -f "$S/busybox.tar" "$S/image.tar"

	touch "$S/ready"
	say "lab $ID: up in $(elapsed)s"
	cat <<EOF
lab $ID is up: env in $S/env
  etcd     $EPS
  hosts    $(for ((k = 1; k <= NHOSTS; k++)); do printf 'h%d=%s.1%d ' "$k" "$NET" "$k"; done)(router $ROUTER)
  exec     $SELF -i $ID exec h1 ip addr
  docker   $SELF -i $ID docker h1 ps
  down     $SELF down $ID
EOF
}

# ---------------------------------------------------------------------------------------------
# down

# down_one ID: kill, unmount, delete. Prints what it could not remove and fails then.
down_one() {
	set_lab "$1"
	local -a pids left=() found
	local -A killed=()
	local i f m pid
	found=("$S" /run/netns/"tdlab-$ID-"*)
	[[ -e $S ]] || found=("${found[@]:1}")
	for ((i = 0; i < 300; i++)); do # 300 × ~50ms: processes that fork while being killed
		mapfile -t pids < <(lab_pids "$ID")
		((${#pids[@]})) || break
		for pid in "${pids[@]}"; do killed[$pid]=1; done
		kill -KILL "${pids[@]}" 2>/dev/null || true
		sleep 0.05
	done
	for f in /run/netns/"tdlab-$ID-"*; do
		ip netns delete "${f##*/}" 2>/dev/null || { umount -l "$f" 2>/dev/null || true; rm -f "$f"; }
	done
	# dockerd's mounts live and die in its private mount namespace; should one be visible here,
	# detach it so rm cannot descend into someone else's files.
	while read -r m; do
		umount -l "$m" 2>/dev/null || true
	done < <(awk -v s="$S" '$5 == s || index($5, s "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r)
	for ((i = 0; i < 50; i++)); do # a cgroup stays busy for a moment after its last process died
		local -a cgs
		mapfile -t cgs < <(cgroup_dirs "$ID")
		((${#cgs[@]})) || break
		find "${cgs[@]}" -depth -type d -exec rmdir {} + 2>/dev/null || true
		sleep 0.1
	done
	if [[ -d $S ]]; then
		awk -v s="$S" '$5 == s || index($5, s "/") == 1 { bad = 1 } END { exit bad }' /proc/self/mountinfo &&
			rm -rf "$S"
	fi

	mapfile -t pids < <(lab_pids "$ID")
	((${#pids[@]} == 0)) || left+=("processes ${pids[*]}")
	for f in /run/netns/"tdlab-$ID-"*; do left+=("netns ${f##*/}"); done
	while read -r f; do [[ -z $f ]] || left+=("cgroup $f"); done < <(cgroup_dirs "$ID")
	while read -r f; do left+=("mount $f"); done < <(grep -e "tdlab-$ID-" -e "tdlab-$ID/" /proc/self/mountinfo | awk '{ print $5 }')
	[[ ! -e $S ]] || left+=("dir $S")
	if ((${#left[@]})); then
		say "lab $ID: could not remove: ${left[*]}"
		return 1
	fi
	if ((${#killed[@]} == 0 && ${#found[@]} == 0)); then
		echo "lab $ID: nothing to remove"
	else
		echo "lab $ID: down (killed ${#killed[@]} processes)"
	fi
}

cmd_down() {
	local -a ids=("$@")
	[[ $(id -u) == 0 ]] || die "down needs root"
	if ((${#ids[@]} == 0)) && [[ -n ${ID:-} ]]; then ids=("$ID"); fi
	if ((${#ids[@]} == 0)); then
		mapfile -t ids < <(all_ids)
		((${#ids[@]})) || {
			echo "no labs"
			return 0
		}
	fi
	local id rc=0
	for id in "${ids[@]}"; do
		valid_id "$id" || die "invalid lab id '$id'"
	done
	for id in "${ids[@]}"; do
		(down_one "$id") || rc=1
	done
	return "$rc"
}

cmd_prune() {
	local id pid start rc=0
	local -a ids
	mapfile -t ids < <(all_ids)
	for id in "${ids[@]}"; do
		if [[ -r $BASE/tdlab-$id/owner ]]; then
			read -r pid start <"$BASE/tdlab-$id/owner" || true
			[[ $(starttime "$pid" 2>/dev/null) == "$start" ]] && continue # owner still running
		elif [[ -d $BASE/tdlab-$id ]]; then
			continue # made by hand: only `down` removes it
		fi
		# owner gone, or remains of an interrupted down (no state dir)
		(down_one "$id") || rc=1
	done
	return "$rc"
}

# ---------------------------------------------------------------------------------------------
# status, exec, docker

status_one() {
	set_lab "$1"
	local state="ready" k dpid ver h bad=0
	[[ -d $S ]] || state="no state dir"
	[[ ! -d $S || -e $S/ready ]] || state="incomplete (up unfinished or failed)"
	if [[ -r $S/up.pid ]] && kill -0 "$(cat "$S/up.pid")" 2>/dev/null; then state="coming up (up is running)"; fi
	printf 'lab %s  %s  %s\n' "$ID" "$S" "$state"
	[[ $state == ready ]] || bad=1
	row() { printf '  %-10s %-6s %s\n' "$1" "$2" "$3"; }
	if [[ -e $(ns_path sw) ]]; then
		if in_ns sw ip -br addr show router 2>/dev/null | grep -q "$ROUTER/"; then
			row switch up "netns $SW, router $ROUTER"
		else
			row switch DOWN "netns $SW, no router address"
			bad=1
		fi
	else
		row switch DOWN "no netns $SW"
		bad=1
	fi
	for ((k = 1; k <= NETCD; k++)); do
		if alive "$S/etcd$k/etcd.pid"; then
			if etcd_healthy "http://$NET.2$k:2379" 2s; then
				h=healthy
			else
				h=UNHEALTHY
				bad=1
			fi
			row "etcd$k" alive "pid $(cat "$S/etcd$k/etcd.pid"), http://$NET.2$k:2379 $h"
		else
			row "etcd$k" DEAD "log $S/etcd$k/etcd.log"
			bad=1
		fi
	done
	for ((k = 1; k <= NHOSTS; k++)); do
		if [[ -e $(ns_path "h$k") ]]; then
			row "h$k" up "netns tdlab-$ID-h$k, $(in_ns "h$k" ip -4 -o addr show 2>/dev/null | awk '$2 != "lo" { printf "%s %s ", $2, $4 }')"
		else
			row "h$k" DOWN "no netns tdlab-$ID-h$k"
			bad=1
		fi
		if alive "$S/h$k/plugin.pid"; then
			[[ -S $S/h$k/plugins/talkingdata.sock ]] && h="socket ok" || {
				h="NO SOCKET"
				bad=1
			}
			row "h$k/plugin" alive "pid $(cat "$S/h$k/plugin.pid"), $h"
		else
			row "h$k/plugin" DEAD "log $S/h$k/plugin.log"
			bad=1
		fi
		if alive "$S/h$k/dockerd.pid"; then
			dpid=$(cat "$S/h$k/dockerd.pid")
			ver=$(DOCKER_CONFIG="$S/cli" timeout 3 "$(host_cli "$k")" -H "unix://$S/h$k/docker.sock" version --format '{{.Server.Version}} (API {{.Server.APIVersion}})' 2>/dev/null) || {
				ver="NOT ANSWERING"
				bad=1
			}
			row "h$k/dockerd" alive "pid $dpid, unix://$S/h$k/docker.sock, $ver"
		else
			row "h$k/dockerd" DEAD "log $S/h$k/dockerd.log"
			bad=1
		fi
	done
	return "$bad"
}

cmd_status() {
	local -a ids
	if [[ -n ${ID:-} ]]; then ids=("$ID"); else mapfile -t ids < <(all_ids); fi
	((${#ids[@]})) || {
		echo "no labs"
		return 0
	}
	local id rc=0
	for id in "${ids[@]}"; do
		(status_one "$id") || rc=1
	done
	return "$rc"
}

# node NAME: h2, 2 → h2; sw; etcd2.
node() {
	local n=$1
	[[ $n =~ ^[0-9]$ ]] && n="h$n"
	case $n in
	sw | etcd[1-3]) ;;
	h[1-9]) ((${n#h} <= NHOSTS)) || die "no host $n: lab $ID has $NHOSTS hosts" ;;
	*) die "unknown node '$1': want h1…h$NHOSTS, 1…$NHOSTS, sw or etcd1…etcd3" ;;
	esac
	echo "$n"
}

cmd_exec() {
	(($#)) || die "usage: exec NODE [CMD…]"
	resolve_id
	local n
	n=$(node "$1")
	shift
	[[ -e $(ns_path "$n") ]] || die "lab $ID has no netns tdlab-$ID-$n"
	unset DOCKER_CONTEXT DOCKER_TLS_VERIFY DOCKER_CERT_PATH
	# No ETCDCTL_ENDPOINTS: etcdctl 3.4 refuses to run when it and --endpoints are both given.
	unset ETCDCTL_ENDPOINTS
	export DOCKER_CONFIG="$S/cli" ETCDCTL_API=3 IPAM_ETCD_ENDPOINTS="$EPS" TDLAB_ETCD_ENDPOINTS="$EPS" \
		TDLAB_ID="$ID" TDLAB_NODE="$n" PATH="$S/path:$PATH"
	if [[ $n == h* ]]; then
		export DOCKER_HOST="unix://$S/$n/docker.sock" IPAM_HOST_ID="$n" PATH="$S/$n/path:$PATH"
	else
		unset DOCKER_HOST IPAM_HOST_ID
	fi
	(($#)) || set -- "${SHELL:-/bin/bash}"
	exec nsenter --net="$(ns_path "$n")" -- "$@"
}

cmd_docker() {
	(($#)) || die "usage: docker HOST ARGS…"
	resolve_id
	local n
	n=$(node "$1")
	shift
	[[ $n == h* ]] || die "docker: $n is not a host"
	exec env -u DOCKER_HOST -u DOCKER_CONTEXT -u DOCKER_TLS_VERIFY -u DOCKER_CERT_PATH \
		DOCKER_CONFIG="$S/cli" "$(host_cli "${n#h}")" -H "unix://$S/$n/docker.sock" "$@"
}

usage() {
	sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$SELF"
	exit "${1:-0}"
}

main() {
	ID=${TDLAB_ID:-}
	while (($#)); do
		case $1 in
		-i | --id)
			(($# >= 2)) || die "$1 needs an id"
			ID=$2
			shift 2
			;;
		-h | --help | help) usage 0 ;;
		*) break ;;
		esac
	done
	(($#)) || usage 2
	local cmd=$1
	shift
	case $cmd in
	up) cmd_up "$@" ;;
	down) cmd_down "$@" ;;
	status) cmd_status "$@" ;;
	exec) cmd_exec "$@" ;;
	docker) cmd_docker "$@" ;;
	env)
		resolve_id
		cat "$S/env"
		;;
	list) all_ids ;;
	prune) cmd_prune ;;
	etcd-kill) cmd_etcd_kill "$@" ;;
	etcd-start) cmd_etcd_start "$@" ;;
	plugin-kill) cmd_plugin_kill "$@" ;;
	plugin-start) cmd_plugin_start "$@" ;;
	*)
		echo "lab.sh: unknown command '$cmd'" >&2
		usage 2
		;;
	esac
}

main "$@"
