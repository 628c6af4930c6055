package dockertest

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// BusyboxImage is the name ImportBusybox gives the image.
const BusyboxImage = "tdtest/busybox:latest"

const busyboxPath = "/bin/busybox" // Debian's busybox-static

// ImportBusybox imports, once per daemon, an image whose root holds the host's static
// /bin/busybox with a symlink for every applet (sh, sleep, ip, ping, ifconfig, route, cat, ls,
// hostname, wget, …), and returns its name. No registry is needed.
//
// busybox sleep as PID 1 ignores SIGTERM, so `docker stop` and Stop/Restart wait the 10s stop
// timeout before SIGKILL when such a container runs: start long-lived ones with --init
// (docker-init forwards the signal) or --stop-timeout 1. (`docker import` cannot set STOPSIGNAL.)
func (d *Daemon) ImportBusybox(t testing.TB) string {
	t.Helper()
	d.imgOnce.Do(func() {
		tarball, err := BusyboxRootfs()
		if err != nil {
			d.imgErr = err
			return
		}
		if _, d.imgErr = d.docker(bytes.NewReader(tarball),
			"import", "--change", `CMD ["/bin/sh"]`, "-", BusyboxImage); d.imgErr == nil {
			d.img = BusyboxImage
		}
	})
	if d.imgErr != nil {
		t.Fatalf("dockertest: busybox image: %v", d.imgErr)
	}
	return d.img
}

// BusyboxRootfs builds the image's root filesystem as a tar, once per process; ImportBusybox and
// the lab import it.
var BusyboxRootfs = sync.OnceValues(func() ([]byte, error) {
	// A dynamically linked busybox would need the host's libc inside the image.
	f, err := elf.Open(busyboxPath)
	if err != nil {
		return nil, fmt.Errorf("%s (Debian package busybox-static): %w", busyboxPath, err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			f.Close()
			return nil, fmt.Errorf("%s is dynamically linked; install busybox-static", busyboxPath)
		}
	}
	f.Close()
	bin, err := os.ReadFile(busyboxPath)
	if err != nil {
		return nil, err
	}
	list, err := exec.Command(busyboxPath, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list: %w", busyboxPath, err)
	}

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	now := time.Now()
	add := func(h *tar.Header, body []byte) error {
		h.ModTime, h.Size = now, int64(len(body))
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		_, err := tw.Write(body)
		return err
	}
	dirs := []struct {
		name string
		mode int64
	}{{"bin", 0o755}, {"dev", 0o755}, {"etc", 0o755}, {"proc", 0o555}, {"root", 0o700},
		{"sys", 0o555}, {"tmp", 0o1777}, {"var", 0o755}, {"run", 0o755}}
	for _, dir := range dirs {
		if err := add(&tar.Header{Typeflag: tar.TypeDir, Name: dir.name + "/", Mode: dir.mode}, nil); err != nil {
			return nil, err
		}
	}
	files := []struct {
		name string
		mode int64
		body []byte
	}{
		{"bin/busybox", 0o755, bin},
		// Some applets (id, whoami, ps) and `docker run -u` look users up here.
		{"etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")},
		{"etc/group", 0o644, []byte("root:x:0:\nnogroup:x:65534:\n")},
	}
	for _, fl := range files {
		if err := add(&tar.Header{Typeflag: tar.TypeReg, Name: fl.name, Mode: fl.mode}, fl.body); err != nil {
			return nil, err
		}
	}
	for _, applet := range strings.Fields(string(list)) {
		if applet == "busybox" || strings.Contains(applet, "/") {
			continue
		}
		h := &tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + applet, Linkname: "busybox", Mode: 0o777}
		if err := add(h, nil); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
})
