package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/talkingdata/ipam/internal/testproc"
)

// binDir holds the binaries TestMain builds once for all tests.
var binDir string

func TestMain(m *testing.M) {
	// A test run again by this binary (internal/vm runs one in a VM, where a
	// build takes a minute) uses the binaries built here.
	const inherit = "TDE2E_BIN_DIR"
	if d := os.Getenv(inherit); d != "" {
		binDir = d
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "tde2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	if err := os.Setenv(inherit, dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	build := exec.Command("go", "build", "-o", dir, "../cmd/talkingdata-ipam", "../cmd/ipamctl")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building binaries:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// plugin is one talkingdata-ipam daemon process.
type plugin struct {
	cmd *exec.Cmd
	log string
}

// startPlugin runs the daemon with its socket in dir and waits for it.
func startPlugin(t testing.TB, dir string, args ...string) *plugin {
	t.Helper()
	sock := filepath.Join(dir, "talkingdata.sock")
	p := &plugin{log: filepath.Join(t.TempDir(), "plugin.log")}
	out, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(filepath.Join(binDir, "talkingdata-ipam"), append([]string{"--socket", sock, "--log-level", "debug"}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr = out, out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	out.Close()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("plugin log:\n%s", testproc.Tail(p.log, 40))
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			return p
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(p.log)
			t.Fatalf("plugin did not create %s within 20s:\n%s", sock, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (p *plugin) stop() {
	if p.cmd.ProcessState != nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		p.cmd.Process.Kill()
		<-done
	}
}
