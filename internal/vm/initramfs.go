package vm

import (
	_ "embed"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

//go:embed init.sh
var initScript []byte

// bootModules are what init.sh needs before it can mount the host's /: virtio-mmio (microvm's
// bus), 9p over virtio, overlayfs. Everything else loads on demand from the kernel's cache.
var bootModules = []string{"virtio_mmio", "9pnet_virtio", "9p", "overlay"}

// busybox is static (Debian's busybox-static): the initramfs has no libc.
const busybox = "/bin/busybox"

// writeInitramfs writes to path an uncompressed initramfs (a newc cpio archive) holding busybox,
// init.sh and bootModules with their dependencies from modules, numbered in load order.
func writeInitramfs(path, modules string) error {
	mods, err := loadOrder(modules, bootModules)
	if err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := &cpioWriter{w: f}
	w.dir("proc")
	w.dir("dev")
	w.node("dev/console", 0o020600, 5, 1) // init's stdio; the kernel opens it before /init
	w.dir(".vm")
	w.file(".vm/busybox", 0o755, busybox)
	w.data("init", 0o755, initScript) // busybox's switch_root insists on a regular file /init
	w.dir("modules")
	for i, m := range mods {
		w.file(fmt.Sprintf("modules/%02d-%s", i, filepath.Base(m)), 0o644, filepath.Join(modules, m))
	}
	w.trailer()
	if err := w.err; err != nil {
		f.Close()
		return fmt.Errorf("vm: writing the initramfs: %w", err)
	}
	return f.Close()
}

// loadOrder returns the module files (relative to modules) that load names, each after what it
// depends on, each once. In depmod's modules.dep a module's dependencies are listed so that
// loading them in reverse order works.
func loadOrder(modules string, names []string) ([]string, error) {
	b, err := os.ReadFile(filepath.Join(modules, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("vm: %w", err)
	}
	deps := map[string][]string{} // module name → its file, then its dependencies' files
	for line := range strings.Lines(string(b)) {
		file, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		name := strings.TrimSuffix(filepath.Base(file), ".ko")
		deps[name] = append([]string{file}, strings.Fields(rest)...)
	}
	var order []string
	seen := map[string]bool{}
	for _, n := range names {
		files, ok := deps[n]
		if !ok {
			return nil, fmt.Errorf("vm: no module %s in %s", n, modules)
		}
		for i := len(files) - 1; i >= 0; i-- {
			if f := files[i]; !seen[f] {
				seen[f] = true
				order = append(order, f)
			}
		}
	}
	return order, nil
}

// cpioWriter writes a newc ("070701") cpio archive, the initramfs format; the first error sticks.
type cpioWriter struct {
	w   io.Writer
	n   int64
	ino int
	err error
}

func (c *cpioWriter) dir(name string) { c.header(name, 0o040755, 0, 0, 0) }

func (c *cpioWriter) node(name string, mode, major, minor int) {
	c.header(name, mode, 0, major, minor)
}

func (c *cpioWriter) file(name string, perm int, src string) {
	b, err := os.ReadFile(src)
	if err != nil && c.err == nil {
		c.err = err
	}
	c.data(name, perm, b)
}

func (c *cpioWriter) data(name string, perm int, b []byte) {
	c.header(name, 0o100000|perm, len(b), 0, 0)
	c.write(b)
	c.pad()
}

func (c *cpioWriter) trailer() { c.header("TRAILER!!!", 0, 0, 0, 0) }

// header: magic, then ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
// rdevmajor, rdevminor, namesize (with its NUL) and check, in 8 hex digits; then the name, the
// header and name padded to 4 bytes.
func (c *cpioWriter) header(name string, mode, size, major, minor int) {
	c.ino++
	nlink := 1
	if mode&0o040000 != 0 {
		nlink = 2
	}
	h := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%s\x00",
		c.ino, mode, 0, 0, nlink, 0, size, 0, 0, major, minor, len(name)+1, 0, name)
	c.write([]byte(h))
	c.pad()
}

func (c *cpioWriter) pad() { c.write(make([]byte, (4-c.n%4)%4)) }

func (c *cpioWriter) write(b []byte) {
	if c.err != nil {
		return
	}
	n, err := c.w.Write(b)
	c.n += int64(n)
	c.err = err
}
