#!/.vm/busybox sh
# The test VM's init (see vm.go): busybox (/.vm/busybox) runs it twice.
#
# In the initramfs: load the modules in /modules (numbered in load order), mount the host's /
# read-only (9p tag "host") under a tmpfs overlay, so that the VM sees the host's programs and
# files while its writes stay in the VM, and the run's directory (vm.dir, tag "run") read-write at
# its host path. Then the overlay becomes / and this script runs again there as "stage2": a real
# root, as dockerd and kmod expect, where the kernel's module loader finds the modules of the
# kernel's cache (vm.modules). It runs $dir/cmd with output to $dir/output and exit status to
# $dir/status, then powers off. A missing status means that the command did not finish.
bb=/.vm/busybox

fail() {
	echo "vm init: $*"
	$bb poweroff -f
}

$bb mount -t proc proc /proc || fail "mounting /proc failed"
if [ "$1" = stage2 ]; then
	export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin # the host's programs
else
	export PATH=/bin
	$bb mkdir /bin && $bb --install -s /bin || fail "no busybox"
fi
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	vm.dir=*) dir="${arg#vm.dir=}" ;;
	vm.modules=*) modules="${arg#vm.modules=}" ;;
	esac
done

if [ "$1" = stage2 ]; then
	mount -t sysfs sysfs /sys &&
		mount -t cgroup2 cgroup2 /sys/fs/cgroup &&
		mount -t devtmpfs devtmpfs /dev &&
		mkdir -p /dev/pts /dev/shm &&
		mount -t devpts devpts /dev/pts &&
		mount -t tmpfs shm /dev/shm &&
		ln -s /proc/self/fd /dev/fd && # bash's <(…) and >(…); udev would make it
		ln -s fd/0 /dev/stdin && ln -s fd/1 /dev/stdout && ln -s fd/2 /dev/stderr &&
		mount -t tmpfs run /run &&
		mkdir -p /lib/modules &&
		ln -s "$modules" /lib/modules/ || fail "stage2 mounts failed"
	/bin/sh "$dir/cmd" >"$dir/output" 2>&1
	echo $? >"$dir/status"
	sync
	$bb poweroff -f
fi

for m in /modules/*.ko; do
	insmod "$m" || fail "insmod $m failed"
done
mkdir /host /upper /new &&
	mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288,cache=loose,ro host /host &&
	mount -t tmpfs -o mode=0755 upper /upper &&
	mkdir /upper/data /upper/work &&
	mount -t overlay -o lowerdir=/host,upperdir=/upper/data,workdir=/upper/work overlay /new &&
	mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 run "/new$dir" &&
	cp -a /.vm /new/ &&
	cp /init /new/.vm/init &&
	umount /proc || fail "mounting the host's / failed"
exec switch_root /new /.vm/busybox sh /.vm/init stage2
