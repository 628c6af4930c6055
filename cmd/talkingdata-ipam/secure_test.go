package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/talkingdata/ipam/internal/etcdtest"
	"github.com/talkingdata/ipam/internal/testproc"
)

// secureEnv holds what the daemon and ipamctl need to reach a StartSecure etcd: flags for the
// files and the user, the password in IPAM_ETCD_PASSWORD only.
type secureEnv struct {
	etcd          *etcdtest.SecureServer
	daemon, ctl   string // binaries
	dir           string
	flags         []string
	password, bad string // the right one, and a wrong one that must not show either
}

func newSecureEnv(t *testing.T) *secureEnv {
	t.Helper()
	s := etcdtest.StartSecure(t, etcdtest.SecureOptions{Auth: true})
	dir := t.TempDir()
	e := &secureEnv{
		etcd:     s,
		daemon:   filepath.Join(dir, "talkingdata-ipam"),
		ctl:      filepath.Join(dir, "ipamctl"),
		dir:      dir,
		password: s.Password,
		bad:      "wrong-" + s.Password[len(s.Password)-8:],
		flags: []string{
			"--etcd-endpoints", strings.Join(s.Endpoints(), ","),
			"--etcd-cacert", s.CACert, "--etcd-cert", s.ClientCert, "--etcd-key", s.ClientKey,
			"--etcd-username", s.User,
		},
	}
	for bin, pkg := range map[string]string{e.daemon: ".", e.ctl: "github.com/talkingdata/ipam/cmd/ipamctl"} {
		if out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", pkg, err, out)
		}
	}
	return e
}

// env is the test's environment without IPAM_* settings of its own, plus the password.
func (e *secureEnv) env(password string) []string {
	return append(testproc.EnvWithout("IPAM_"), "IPAM_ETCD_PASSWORD="+password)
}

// noSecret fails the test if out shows either password.
func (e *secureEnv) noSecret(t *testing.T, what, out string) {
	t.Helper()
	for _, pw := range []string{e.password, e.bad} {
		if strings.Contains(out, pw) {
			t.Errorf("%s shows the password %q:\n%s", what, pw, out)
		}
	}
}

// startDaemon runs the daemon at debug level with the password in the environment and returns
// it with its log file.
func (e *secureEnv) startDaemon(t *testing.T, name, prefix string) (*daemon, string) {
	t.Helper()
	sock := filepath.Join(e.dir, name+".sock")
	logPath := filepath.Join(e.dir, name+".log")
	args := append(append([]string{}, e.flags...), "--socket", sock, "--etcd-prefix", prefix, "--host-id", "h1", "--log-level", "debug")
	d := &daemon{exec.Command(e.daemon, args...)}
	d.cmd.Env = e.env(e.password)
	log, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	d.cmd.Stdout, d.cmd.Stderr = log, log
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.stop(t)
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("%s log:\n%s", name, b)
		}
	})
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			return d, sock
		}
		if d.cmd.ProcessState != nil || time.Now().After(deadline) {
			b, _ := os.ReadFile(logPath)
			t.Fatalf("daemon did not serve within 30s:\n%s", b)
		}
	}
}

func TestSecureDaemonTLSAuth(t *testing.T) {
	e := newSecureEnv(t)
	const id = "198.18.0.0/28"
	mac := func(n string) map[string]string {
		return map[string]string{"com.docker.network.endpoint.macaddress": "02:42:c6:12:00:" + n}
	}

	d, sock := e.startDaemon(t, "daemon", "/talkingdata/ipam")
	if out := post(t, sock, "IpamDriver.RequestPool", map[string]any{"Pool": id}); out["PoolID"] != id {
		t.Fatalf("RequestPool: %v", out)
	}
	got := post(t, sock, "IpamDriver.RequestAddress", map[string]any{"PoolID": id, "Options": mac("01")})
	if a, _ := got["Address"].(string); !strings.HasPrefix(a, "198.18.0.") {
		t.Fatalf("RequestAddress: %v", got)
	}
	// etcd forgets its tokens when it restarts; the daemon logs in again.
	e.etcd.Restart(t)
	if got := post(t, sock, "IpamDriver.RequestAddress", map[string]any{"PoolID": id, "Options": mac("02")}); got["Err"] != "" && got["Err"] != nil {
		t.Fatalf("RequestAddress after etcd restarted: %v", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := e.etcd.Client(t).Get(ctx, "/talkingdata/ipam/used/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || r.Count != 2 {
		t.Fatalf("etcd holds %d used entries (%v), want 2", r.Count, err)
	}

	// ipamctl with the same settings: a listing, and a command that fails.
	out := e.ctlOK(t, e.password, "pool", "ls")
	if !strings.Contains(out, id) {
		t.Errorf("pool ls does not list %s:\n%s", id, out)
	}
	e.ctlFails(t, e.password, "does not exist", "pool", "show", "198.18.1.0/24")
	e.ctlFails(t, e.password, "missing arguments", "pool", "show")
	e.ctlFails(t, e.bad, "authentication failed", "pool", "ls")
	e.ctlFails(t, e.password, "permission denied", "--etcd-prefix", "/other", "pool", "ls")

	d.stop(t)
	log, _ := os.ReadFile(filepath.Join(e.dir, "daemon.log"))
	if !strings.Contains(string(log), "level=DEBUG") || !strings.Contains(string(log), "address allocated") {
		t.Errorf("daemon log lacks the debug and info lines it should have:\n%s", log)
	}
	e.noSecret(t, "daemon log", string(log))
}

// TestSecureDaemonRefused: etcd refusing the daemon, for a wrong password or a key outside the
// user's prefix, says so without showing the password.
func TestSecureDaemonRefused(t *testing.T) {
	e := newSecureEnv(t)

	// A wrong password: the daemon does not start.
	args := append(append([]string{}, e.flags...), "--socket", filepath.Join(e.dir, "bad.sock"), "--log-level", "debug")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.daemon, args...)
	cmd.Env = e.env(e.bad)
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "authentication failed") || !strings.Contains(string(out), `etcd user "ipam"`) {
		t.Errorf("daemon with a wrong password: %v, output:\n%s", err, out)
	}
	t.Logf("wrong password: %s", bytes.TrimSpace(out))
	e.noSecret(t, "daemon output", string(out))

	// Outside the prefix: the daemon serves, and the plugin call names the refusal.
	d, sock := e.startDaemon(t, "other", "/other")
	got := post(t, sock, "IpamDriver.RequestPool", map[string]any{"Pool": "198.18.0.0/28"})
	if msg, _ := got["Err"].(string); !strings.Contains(msg, "permission denied") {
		t.Errorf("RequestPool under /other: %v, want permission denied", got)
	}
	d.stop(t)
	log, _ := os.ReadFile(filepath.Join(e.dir, "other.log"))
	e.noSecret(t, "daemon log", string(log))
}

// TestSecureHelpHidesPassword: --help of both binaries names IPAM_ETCD_PASSWORD but never
// shows its value, nor one given with --etcd-password.
func TestSecureHelpHidesPassword(t *testing.T) {
	e := newSecureEnv(t)
	for _, argv := range [][]string{
		{e.daemon, "--help"},
		{e.daemon, "--etcd-password", e.bad, "--help"},
		{e.ctl, "--help"},
		{e.ctl, "--etcd-password", e.bad, "--help"},
		{e.ctl, "pool", "ls", "--help"},
		{e.ctl, "--etcd-password", e.bad, "pool", "--help"},
	} {
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Env = e.env(e.password)
		out, _ := cmd.CombinedOutput()
		what := filepath.Base(argv[0]) + " " + strings.Join(argv[1:], " ")
		// The global help names the variable; a sub-command's need not.
		if !strings.Contains(what, "pool") && !strings.Contains(string(out), "[$IPAM_ETCD_PASSWORD]") {
			t.Errorf("%s does not mention IPAM_ETCD_PASSWORD:\n%s", what, out)
		}
		e.noSecret(t, what, string(out))
	}
}

func (e *secureEnv) runCtl(t *testing.T, password string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(e.ctl, append(append(append([]string{}, e.flags...), "--timeout", "10s"), args...)...)
	cmd.Env = e.env(password)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	what := "ipamctl " + strings.Join(args, " ")
	e.noSecret(t, what+" stdout", stdout.String())
	e.noSecret(t, what+" stderr", stderr.String())
	return stdout.String() + stderr.String(), err
}

func (e *secureEnv) ctlOK(t *testing.T, password string, args ...string) string {
	t.Helper()
	out, err := e.runCtl(t, password, args...)
	if err != nil {
		t.Fatalf("ipamctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (e *secureEnv) ctlFails(t *testing.T, password, want string, args ...string) {
	t.Helper()
	out, err := e.runCtl(t, password, args...)
	if err == nil || !strings.Contains(out, want) {
		t.Errorf("ipamctl %s: %v, output %q, want a failure saying %q", strings.Join(args, " "), err, out, want)
	}
}
