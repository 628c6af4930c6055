package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/talkingdata/ipam/etcdstore"
	"github.com/talkingdata/ipam/internal/etcdtest"
	"github.com/talkingdata/ipam/internal/testproc"
)

// TestDuplicateHostIDRefused: a daemon with the host id of a running one
// on another machine (another boot id, here bind-mounted over the kernel's
// in a mount namespace of its own) exits before serving, naming the other
// and --host-id. The same machine's next daemon, after a kill -9, takes
// the id over at once instead of waiting for the old lease to expire.
func TestDuplicateHostIDRefused(t *testing.T) {
	unshare, err := exec.LookPath("unshare")
	testproc.Require(t, os.Geteuid() == 0 && err == nil, "the duplicate host id test needs root and unshare (util-linux) to give a daemon another boot id")
	srv := etcdtest.Start(t)
	dir := t.TempDir()
	bin := buildDaemon(t, dir)
	args := []string{"--etcd-endpoints", srv.Endpoints()[0], "--host-id", "twin"}
	sock, data := filepath.Join(dir, "td.sock"), filepath.Join(dir, "data")
	first := startDaemon(t, bin, sock, data, args...)
	hostname, _ := os.Hostname()

	otherBoot := filepath.Join(dir, "boot_id")
	if err := os.WriteFile(otherBoot, []byte("00000000-0000-4000-8000-000000000001\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	twinSock := filepath.Join(dir, "twin.sock")
	cmd := exec.CommandContext(ctx, unshare, append([]string{"-m", "--propagation", "private", "--", "sh", "-c",
		`mount --bind "$0" ` + bootIDFile + ` && exec "$@"`, otherBoot,
		bin, "--socket", twinSock, "--data-dir", filepath.Join(dir, "twin-data")}, args...)...)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	took := time.Since(start)
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("the twin: %v after %s; want exit status 1\n%s", err, took, out)
	}
	t.Logf("the twin exited after %s:\n%s", took.Round(time.Millisecond), out)
	// The first renews its lease every 5s: seen within that and the polls.
	if took > 15*time.Second {
		t.Errorf("the twin exited after %s; want the first's renewal seen within about 7s", took)
	}
	for _, want := range []string{fmt.Sprintf("%q", hostname), fmt.Sprintf("pid %d", first.cmd.Process.Pid), "--host-id or IPAM_HOST_ID"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the twin's output does not name %s:\n%s", want, out)
		}
	}
	if _, err := os.Lstat(twinSock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the refused twin made its socket: %v", err)
	}
	if rec := hostKey(t, srv, "twin"); rec.PID != first.cmd.Process.Pid {
		t.Fatalf("host key after the twin's refusal: pid %d; want the first's, %d", rec.PID, first.cmd.Process.Pid)
	}

	// A crash leaves the key and its live lease behind.
	if err := first.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	first.cmd.Wait()
	start = time.Now()
	next := startDaemon(t, bin, sock, data, args...)
	took = time.Since(start)
	t.Logf("the next daemon of this machine served after %s", took.Round(time.Millisecond))
	// Waiting out the lease would take its 15s TTL.
	if took > 8*time.Second {
		t.Errorf("the next daemon of this machine served after %s; want it to take over at once", took)
	}
	if rec := hostKey(t, srv, "twin"); rec.PID != next.cmd.Process.Pid {
		t.Fatalf("host key after the restart: pid %d; want the new daemon's, %d", rec.PID, next.cmd.Process.Pid)
	}
}

// hostKey is the liveness record of host in the daemon's default prefix.
func hostKey(t *testing.T, srv *etcdtest.Server, host string) etcdstore.HostRecord {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := srv.Client(t).Get(ctx, "/talkingdata/ipam/hosts/"+host)
	if err != nil || len(r.Kvs) != 1 {
		t.Fatalf("host key of %s: %v %v", host, r, err)
	}
	var rec etcdstore.HostRecord
	if err := json.Unmarshal(r.Kvs[0].Value, &rec); err != nil {
		t.Fatal(err)
	}
	return rec
}
