package vm

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/talkingdata/ipam/internal/dockertest"
	"github.com/talkingdata/ipam/internal/testproc"
)

// ErrNotInstalled: no qemu, busybox or cached kernel.
var ErrNotInstalled = errors.New("vm: not installed: run scripts/install-test-deps.sh as root (`make test-deps`)")

const qemu = "qemu-system-x86_64"

// Command is what Run runs in the VM, as root: Args[0] with Args[1:], in Dir, with only Env.
type Command struct {
	Dir       string
	Args, Env []string
}

// Run boots the VM, runs cmd and powers the VM off; ctx bounds it all (qemu is killed). It returns
// cmd's output (stdout and stderr) and exit status, or an error, with the VM's console, when cmd
// did not finish.
func Run(ctx context.Context, cmd Command) (out []byte, status int, err error) {
	vmlinux, modules, err := findKernel()
	if err != nil {
		return nil, 0, err
	}
	// The run's directory: the initramfs, cmd as a shell script and what init.sh writes back.
	// The VM mounts it read-write at the same path.
	dir, err := os.MkdirTemp("", "vm-run-")
	if err != nil {
		return nil, 0, err
	}
	defer os.RemoveAll(dir)
	initramfs := filepath.Join(dir, "initramfs")
	if err := writeInitramfs(initramfs, modules); err != nil {
		return nil, 0, err
	}
	if err := os.WriteFile(filepath.Join(dir, "cmd"), []byte(cmd.script()), 0o644); err != nil {
		return nil, 0, err
	}

	// panic=-1: a VM whose init dies reboots, and -no-reboot ends qemu, rather than hang.
	cmdline := "console=ttyS0 quiet panic=-1 vm.dir=" + dir + " vm.modules=" + modules
	if khz := tscKHz(); khz != "" {
		cmdline += " tsc_early_khz=" + khz // without it microvm boots now and then hung calibrating the TSC
	}
	var console bytes.Buffer
	// One vCPU: with two, a lab test took longer on this 2-core machine, where other tests
	// keep the cores busy too.
	q := exec.CommandContext(ctx, qemu,
		"-M", "microvm", "-accel", "tcg", "-cpu", "max", "-m", "4096", "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
		"-kernel", vmlinux, "-initrd", initramfs, "-append", cmdline,
		"-fsdev", "local,id=host,path=/,security_model=none,readonly=on,multidevs=remap",
		"-device", "virtio-9p-device,fsdev=host,mount_tag=host",
		"-fsdev", "local,id=run,path="+dir+",security_model=none",
		"-device", "virtio-9p-device,fsdev=run,mount_tag=run")
	q.Stdout, q.Stderr = &console, &console
	q.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := testproc.Start(q); err != nil {
		return nil, 0, fmt.Errorf("vm: %w", err)
	}
	qerr := q.Wait() // qemu exits 0 whatever cmd did: the status file tells

	out, _ = os.ReadFile(filepath.Join(dir, "output")) // none if cmd never started: the status tells
	b, serr := os.ReadFile(filepath.Join(dir, "status"))
	if serr == nil {
		status, serr = strconv.Atoi(strings.TrimSpace(string(b)))
	}
	if serr != nil || qerr != nil || ctx.Err() != nil {
		return out, 0, fmt.Errorf("vm: %s did not finish (qemu: %v, %v); console:\n%s\noutput:\n%s",
			cmd.Args[0], qerr, errors.Join(ctx.Err(), serr), console.Bytes(), out)
	}
	return out, status, nil
}

// script is cmd as a shell script for init.sh.
func (cmd Command) script() string {
	var b strings.Builder
	fmt.Fprintf(&b, "cd %s && exec env -i", shellQuote(cmd.Dir))
	for _, s := range slices.Concat(cmd.Env, cmd.Args) {
		b.WriteString(" " + shellQuote(s))
	}
	b.WriteString("\n")
	return b.String()
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// findKernel returns the cached kernel and its modules' directory (lib/modules/<version>).
func findKernel() (vmlinux, modules string, err error) {
	for _, tool := range []string{qemu, busybox} {
		if _, err := exec.LookPath(tool); err != nil {
			return "", "", fmt.Errorf("%w (no %s)", ErrNotInstalled, tool)
		}
	}
	root, err := dockertest.RepoRoot()
	if err != nil {
		return "", "", err
	}
	dir := filepath.Join(root, ".cache", "vm-kernel")
	versions, _ := filepath.Glob(filepath.Join(dir, "lib", "modules", "*"))
	vmlinux = filepath.Join(dir, "vmlinux")
	if _, err := os.Stat(vmlinux); err != nil || len(versions) != 1 {
		return "", "", fmt.Errorf("%w (no kernel in %s)", ErrNotInstalled, dir)
	}
	return vmlinux, versions[0], nil
}

// tscKHz is the host's TSC rate in kHz, from /proc/cpuinfo's "cpu MHz" (TCG's TSC is the
// host's), or "" if unknown.
func tscKHz() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if k, v, ok := strings.Cut(s.Text(), ":"); ok && strings.TrimSpace(k) == "cpu MHz" {
			mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				return ""
			}
			return strconv.Itoa(int(mhz * 1000))
		}
	}
	return ""
}
