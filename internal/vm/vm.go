// Package vm runs a test in a virtual machine with Debian's stock kernel when the running kernel
// lacks an option the test needs: this repository's CI machine has neither 802.1Q VLANs nor
// ipvlan, and these tests run there all the same.
//
// qemu, in software emulation (TCG: a paravirtual /dev/kvm cannot run a stock kernel), boots the
// kernel that scripts/install-vm-kernel.sh caches in .cache/vm-kernel, with an initramfs made on
// each boot (initramfs.go, init.sh). The VM's root is the host's / over 9p, read-only, under a
// tmpfs overlay: the test binary, its working directory and every tool (ip, dockerd, …) are where
// they are on the host, and nothing the VM writes reaches the host but the run's own directory.
// The test binary runs itself there with -test.run naming just the test, and $TALKINGDATA_VM
// set, so that the test knows it is inside.
package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/talkingdata/ipam/internal/testproc"
)

// EnvInside is set in the VM's environment: a test that finds it is inside the VM.
const EnvInside = "TALKINGDATA_VM"

// RunUnless runs t in the VM unless ok (the running kernel has option, which t needs), and reports
// whether it did. Then the VM run's result is t's, with its output in t's log, and the caller
// returns at once. Inside the VM, a missing option fails t. Without qemu or the kernel, t skips
// (fails where CI=true).
func RunUnless(t *testing.T, ok bool, option string) bool {
	t.Helper()
	if ok {
		return false
	}
	if os.Getenv(EnvInside) != "" {
		t.Fatalf("%s: even the VM's kernel lacks %s", t.Name(), option)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	// Within the test's deadline, leaving the VM time to boot and to report a timeout (the
	// child's panic lists its goroutines).
	timeout := 10 * time.Minute
	if d, ok := t.Deadline(); ok {
		timeout = min(timeout, time.Until(d)-10*time.Second)
	}
	if timeout < time.Minute {
		t.Fatalf("this kernel lacks %s, and %s is too little time to run %s in a VM", option, timeout, t.Name())
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	start := time.Now()
	out, status, err := Run(ctx, Command{
		Dir: wd,
		Args: []string{exe, "-test.run=" + runPattern(t.Name()), "-test.count=1",
			"-test.v=" + strconv.FormatBool(testing.Verbose()), "-test.timeout=" + (timeout - 20*time.Second).String()},
		Env: append(os.Environ(), EnvInside+"=1"),
	})
	if errors.Is(err, ErrNotInstalled) {
		testproc.Require(t, false, fmt.Sprintf("this kernel lacks %s, and %v", option, err))
	}
	if err != nil {
		t.Fatalf("this kernel lacks %s; in a VM: %v", option, err)
	}
	msg := fmt.Sprintf("this kernel lacks %s: ran in a VM (%s, exit status %d):\n%s",
		option, time.Since(start).Round(100*time.Millisecond), status, out)
	if status != 0 {
		t.Error(msg)
	} else {
		t.Log(msg)
	}
	return true
}

// runPattern is the -test.run pattern that matches the test (or subtest) named name, and no other.
func runPattern(name string) string {
	parts := strings.Split(name, "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	return strings.Join(parts, "/")
}
