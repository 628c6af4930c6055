package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/talkingdata/ipam/internal/testproc"
)

// TestHoldOnError: a daemon that cannot start exits with its reason, or with --hold-on-error
// (what the managed plugin sets) logs the reason and waits for SIGTERM, and creates no socket.
func TestHoldOnError(t *testing.T) {
	dir := t.TempDir()
	bin := buildDaemon(t, dir)
	sock := filepath.Join(dir, "td.sock")
	for _, tc := range []struct {
		name string
		env  []string
	}{
		{"no endpoints", nil},
		{"unreadable TLS file", []string{"IPAM_ETCD_ENDPOINTS=https://127.0.0.1:1", "IPAM_ETCD_CACERT=" + filepath.Join(dir, "missing.pem")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := append(append(testproc.EnvWithout("IPAM_"), "IPAM_EMBEDDED_ETCD=false", "IPAM_SOCKET="+sock), tc.env...)
			cmd := exec.Command(bin)
			cmd.Env = env
			out, err := cmd.CombinedOutput()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.HasPrefix(string(out), "talkingdata-ipam: ") {
				t.Fatalf("without --hold-on-error: %v, %q; want exit status 1 and the reason", err, out)
			}

			var stderr bytes.Buffer
			cmd = exec.Command(bin)
			cmd.Env = append(env, "IPAM_HOLD_ON_ERROR=true")
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err := <-done:
				t.Fatalf("with --hold-on-error the daemon ended at once: %v, %q", err, stderr.String())
			case <-time.After(time.Second):
			}
			if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("a daemon that holds made its socket: %v", err)
			}
			if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-done:
				if !errors.As(err, &exit) || exit.ExitCode() != 1 {
					t.Fatalf("after SIGTERM: %v, want exit status 1", err)
				}
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
				t.Fatal("still running 10s after SIGTERM")
			}
			if got, want := stderr.String(), string(out)+"talkingdata-ipam: not serving; waiting to be stopped (--hold-on-error)\n"; got != want {
				t.Fatalf("stderr %q, want %q", got, want)
			}
		})
	}
}
