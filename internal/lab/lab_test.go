package lab

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/talkingdata/ipam/internal/dockertest"
	"github.com/talkingdata/ipam/internal/testproc"
)

// TestLab brings a lab up, checks every part of it, and checks that down leaves nothing, also
// of a container and of a stray process started in a host's namespace.
func TestLab(t *testing.T) {
	t.Parallel()
	l := Up(t)

	t.Run("etcd", func(t *testing.T) {
		var health []struct {
			Endpoint string
			Health   bool
		}
		out := l.Exec(t, 1, "etcdctl", "--endpoints", strings.Join(l.Etcd(), ","), "endpoint", "health", "-w", "json")
		if err := json.Unmarshal([]byte(out), &health); err != nil || len(health) != 3 {
			t.Fatalf("endpoint health: %v: %s", err, out)
		}
		for _, h := range health {
			if !h.Health {
				t.Errorf("%s unhealthy", h.Endpoint)
			}
		}
		var members struct {
			Header struct {
				ClusterID uint64 `json:"cluster_id"`
			}
			Members []struct {
				Name       string
				ClientURLs []string
			}
		}
		out = l.Etcdctl(t, "member", "list", "-w", "json")
		if err := json.Unmarshal([]byte(out), &members); err != nil {
			t.Fatalf("member list: %v: %s", err, out)
		}
		if len(members.Members) != 3 {
			t.Fatalf("member list: %d members, want 3: %s", len(members.Members), out)
		}
		for _, m := range members.Members {
			if want := "http://198.18.0.2" + strings.TrimPrefix(m.Name, "etcd") + ":2379"; len(m.ClientURLs) != 1 || m.ClientURLs[0] != want {
				t.Errorf("member %s: client URLs %v, want %s", m.Name, m.ClientURLs, want)
			}
		}
		// Every member answers, from the test process too, and all are in the same cluster.
		hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: l.DialContext}}
		for _, ep := range l.Etcd() {
			resp, err := hc.Get(ep + "/health")
			if err != nil {
				t.Fatalf("GET %s/health: %v", ep, err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if !strings.Contains(string(body), `"health":"true"`) {
				t.Errorf("%s/health: %s", ep, body)
			}
			out := l.Exec(t, 2, "etcdctl", "--endpoints", ep, "endpoint", "status", "-w", "json")
			if !strings.Contains(out, `"cluster_id":`+strconv.FormatUint(members.Header.ClusterID, 10)) {
				t.Errorf("%s is not in cluster %d: %s", ep, members.Header.ClusterID, out)
			}
		}
	})

	t.Run("hosts", func(t *testing.T) {
		if l.Hosts() != 3 {
			t.Fatalf("Hosts() = %d", l.Hosts())
		}
		for i := 1; i <= l.Hosts(); i++ {
			if want := "198.18.0.1" + strconv.Itoa(i); l.HostAddr(i).String() != want {
				t.Errorf("HostAddr(%d) = %v, want %s", i, l.HostAddr(i), want)
			}
			if addr := l.Exec(t, i, "ip", "-4", "-o", "addr", "show", "dev", "eth0"); !strings.Contains(addr, l.HostAddr(i).String()+"/16") {
				t.Errorf("h%d eth0: %s", i, addr)
			}
			if route := l.Exec(t, i, "ip", "route", "show", "default"); !strings.Contains(route, "via 198.18.0.1 dev eth0") {
				t.Errorf("h%d default route: %q", i, route)
			}
			if want := "2001:db8::1" + strconv.Itoa(i); l.HostAddr6(i).String() != want {
				t.Errorf("HostAddr6(%d) = %v, want %s", i, l.HostAddr6(i), want)
			}
			if addr := l.Exec(t, i, "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global"); !strings.Contains(addr, l.HostAddr6(i).String()+"/64") || strings.Contains(addr, "tentative") {
				t.Errorf("h%d eth0 (IPv6): %s", i, addr)
			}
			if route := l.Exec(t, i, "ip", "-6", "route", "show", "default"); !strings.Contains(route, "via 2001:db8::1 dev eth0") {
				t.Errorf("h%d IPv6 default route: %q", i, route)
			}
			if v := l.Docker(t, i, "version", "--format", "{{.Server.Version}}"); v == "" {
				t.Errorf("h%d: dockerd has no version", i)
			}
			if img := l.Docker(t, i, "images", "--format", "{{.Repository}}:{{.Tag}}"); img != l.Image() {
				t.Errorf("h%d images: %q, want %s", i, img, l.Image())
			}
			// exec sets DOCKER_HOST for the host, and the lab's binaries come first on PATH.
			if info := l.Exec(t, i, "docker", "info", "--format", "{{.Name}} {{.DockerRootDir}}"); !strings.Contains(info, filepath.Join(l.Dir, "h"+strconv.Itoa(i), "data")) {
				t.Errorf("h%d: docker info through exec: %q", i, info)
			}
			if p := l.Exec(t, i, "sh", "-c", "command -v ipamctl"); filepath.Base(filepath.Dir(p)) != "path" {
				t.Errorf("h%d: ipamctl on PATH is %q", i, p)
			}
			if !strings.Contains(l.PluginLog(i), "h"+strconv.Itoa(i)) {
				t.Errorf("h%d plugin log does not name its host:\n%s", i, l.PluginLog(i))
			}
		}
		// The host's view is its own namespace: no br0 yet, and not the machine's interfaces.
		if links := l.Exec(t, 2, "ip", "-o", "link"); strings.Contains(links, "br0") || strings.Count(links, "\n") != 1 {
			t.Errorf("h2 links:\n%s", links)
		}
	})

	t.Run("plugins", func(t *testing.T) {
		for i := 1; i <= l.Hosts(); i++ {
			sock := l.PluginSocket(i)
			if fi, err := os.Stat(sock); err != nil || fi.Mode().Type() != os.ModeSocket {
				t.Fatalf("h%d socket %s: %v", i, sock, err)
			}
			hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
				DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					return (&net.Dialer{}).DialContext(ctx, "unix", sock)
				}}}
			resp, err := hc.Post("http://plugin/Plugin.Activate", "application/json", nil)
			if err != nil {
				t.Fatalf("h%d Plugin.Activate: %v", i, err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !strings.Contains(string(body), `"IpamDriver"`) {
				t.Errorf("h%d Plugin.Activate: %d %s", i, resp.StatusCode, body)
			}
		}
		// Also through curl, as a test would from a host (curl is not among the test deps).
		if testproc.LookTool("curl") == "" {
			return
		}
		if out := l.Exec(t, 3, "curl", "-sf", "--unix-socket", l.PluginSocket(3), "-X", "POST", "http://x/Plugin.Activate"); !strings.Contains(out, "IpamDriver") {
			t.Errorf("curl Plugin.Activate: %s", out)
		}
	})

	t.Run("lan", func(t *testing.T) {
		for _, dst := range []string{l.HostAddr(3).String(), l.Router().String(), "198.18.0.22", l.HostAddr6(3).String(), l.Router6().String()} {
			if out := l.Exec(t, 1, "ping", "-c1", "-W2", dst); !strings.Contains(out, "1 received") {
				t.Errorf("ping %s from h1: %s", dst, out)
			}
		}
		if l.Prefix().String() != "198.18.0.0/16" || l.Router().String() != "198.18.0.1" {
			t.Errorf("Prefix() = %v, Router() = %v", l.Prefix(), l.Router())
		}
		if l.Prefix6().String() != "2001:db8::/64" || l.Router6().String() != "2001:db8::1" {
			t.Errorf("Prefix6() = %v, Router6() = %v", l.Prefix6(), l.Router6())
		}
	})

	t.Run("errors", func(t *testing.T) {
		out, err := l.Try(1, "sh", "-c", "echo out; echo oops >&2; exit 3")
		if err == nil || out != "out" || !strings.Contains(err.Error(), "oops") || !strings.Contains(err.Error(), "exit status 3") {
			t.Errorf("Try: %q, %v", out, err)
		}
		if _, err := l.TryDocker(2, "inspect", "no-such-container"); err == nil || !strings.Contains(err.Error(), "no-such-container") {
			t.Errorf("TryDocker: %v", err)
		}
	})

	// Things down must clean up: a running container (shim, docker-init, sleep in the
	// containers' cgroup) and a process started in a host's namespace.
	ctr := l.Docker(t, 2, "run", "-d", "--init", "--network", "none", l.Image(), "sleep", "600")
	ctrPid, _ := strconv.Atoi(l.Docker(t, 2, "inspect", "-f", "{{.State.Pid}}", ctr))
	stray, err := l.nodeCmd(context.Background(), "h3", "sleep", "600")
	if err != nil {
		t.Fatal(err)
	}
	stray.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := stray.Start(); err != nil {
		t.Fatal(err)
	}
	strayDone := make(chan error, 1)
	go func() { strayDone <- stray.Wait() }()
	if t.Failed() {
		return
	}

	start := time.Now()
	l.Down(t)
	t.Logf("down took %v", time.Since(start).Round(10*time.Millisecond))
	if ctrPid == 0 || testproc.Alive(ctrPid) {
		t.Errorf("container process %d alive after down", ctrPid)
	}
	select {
	case <-strayDone:
	case <-time.After(5 * time.Second):
		t.Errorf("process started in h3 (pid %d) alive after down", stray.Process.Pid)
		_ = syscall.Kill(-stray.Process.Pid, syscall.SIGKILL)
	}
	// down again: nothing to do, no error.
	var out strings.Builder
	if err := downOne(l.ID, &out); err != nil || !strings.Contains(out.String(), "nothing to remove") {
		t.Errorf("second down: %v: %s", err, out.String())
	}
	if left := l.Leftovers(); len(left) > 0 {
		t.Errorf("left after the second down: %v", left)
	}
	if out, err := exec.Command("ip", "netns", "list").Output(); err != nil || strings.Contains(string(out), "tdlab-"+l.ID) {
		t.Errorf("ip netns list: %v\n%s", err, out)
	}
}

// A failed up (here: dockerd exits at once, after etcd and the plugins are running) leaves a
// half-built lab that down removes.
func TestDownAfterFailedUp(t *testing.T) {
	t.Parallel()
	o := Options{Hosts: 2, Engines: []dockertest.Engine{{Dockerd: "/bin/false", Docker: dockertest.SystemEngine().Docker}}}
	l := prepare(t, o)
	var log strings.Builder
	if err := l.up(&log); err == nil || !strings.Contains(err.Error(), "dockerd of h1 exited") {
		t.Fatalf("up with a failing dockerd: %v\n%s", err, log.String())
	}
	if !hasProcess(l.Leftovers()) {
		t.Fatalf("nothing of the failed up is running: %v", l.Leftovers())
	}
	l.Down(t)
}

// TestMain runs the test binary as the lab's command line when a test asks for it, so that an
// up of its own process can be killed midway.
func TestMain(m *testing.M) {
	if os.Getenv("TDLAB_TEST_MAIN") == "1" {
		os.Exit(Main(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// An up killed midway (SIGKILL, nothing of it runs on) leaves daemons in every state of
// starting.
func TestDownAfterKilledUp(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, trigger string }{
		{"etcd starting", "etcd3/etcd.log"},
		{"dockerd starting", "h2/dockerd.log"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			l := prepare(t, Options{Hosts: 2})
			up := exec.Command(os.Args[0], "-i", l.ID, "up")
			up.Env = append(os.Environ(), "TDLAB_TEST_MAIN=1", "TDLAB_HOSTS=2", "TDLAB_OWNER_PID="+strconv.Itoa(os.Getpid()))
			up.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			var log strings.Builder
			up.Stdout, up.Stderr = &log, &log
			if err := up.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- up.Wait() }()
			deadline := time.After(upTimeout)
		wait:
			for {
				select {
				case err := <-exited:
					t.Fatalf("up ended (%v) before %s appeared:\n%s", err, tc.trigger, log.String())
				case <-deadline:
					t.Fatalf("no %s after %v", tc.trigger, upTimeout)
				case <-time.After(20 * time.Millisecond):
					if _, err := os.Stat(filepath.Join(l.Dir, tc.trigger)); err == nil {
						break wait
					}
				}
			}
			time.Sleep(50 * time.Millisecond) // let the daemons get halfway
			_ = syscall.Kill(-up.Process.Pid, syscall.SIGKILL)
			var ee *exec.ExitError
			if err := <-exited; !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("up was not killed midway (%v):\n%s", err, log.String())
			}
			if !hasProcess(l.Leftovers()) {
				t.Fatalf("nothing of the killed up is running: %v", l.Leftovers())
			}
			l.Down(t)
		})
	}
}

func hasProcess(left []string) bool {
	for _, s := range left {
		if strings.HasPrefix(s, "process ") {
			return true
		}
	}
	return false
}

// Per-host engines come from Options or, on the command line, TDLAB_Hk_* variables; zero
// Engines leave a host on the system's dockerd, and more engines than hosts is an error, while
// $TALKINGDATA_LAB_ENGINES names beyond the last host are left out.
func TestEngines(t *testing.T) {
	e29 := dockertest.Engine{Name: "29", Dockerd: "/e/29/usr/sbin/dockerd", Docker: "/e/29/usr/bin/docker",
		Args: []string{"--debug"}, Path: []string{"/e/29/usr/sbin", "/e/29/usr/bin"}}
	l, err := newLab(Options{Engines: []dockertest.Engine{{}, e29}})
	if err != nil {
		t.Fatal(err)
	}
	if got := l.Engine(2); got.Name != "29" {
		t.Errorf("Engine(2) = %+v", got)
	}
	if got, sys := l.Engine(1), dockertest.SystemEngine(); got.Dockerd != sys.Dockerd || l.Engine(3).Docker != sys.Docker {
		t.Errorf("Engine(1) = %+v, Engine(3) = %+v, want the system's", got, l.Engine(3))
	}
	if _, err := newLab(Options{Hosts: 2, Engines: []dockertest.Engine{{}, e29, e29}}); err == nil {
		t.Error("3 engines for 2 hosts: no error")
	}

	t.Setenv("TDLAB_H2_DOCKERD", e29.Dockerd)
	t.Setenv("TDLAB_H2_DOCKER_CLI", e29.Docker)
	t.Setenv("TDLAB_H2_DOCKERD_ARGS", "--debug")
	t.Setenv("TDLAB_H2_PATH", "/e/29/usr/sbin:/e/29/usr/bin")
	o, err := envOptions()
	if err != nil {
		t.Fatal(err)
	}
	e29.Name = ""
	if len(o.Engines) != 2 || !o.Engines[0].IsZero() || !reflect.DeepEqual(o.Engines[1], e29) {
		t.Errorf("engines of TDLAB_H2_*: %+v", o.Engines)
	}

	t.Setenv("TALKINGDATA_LAB_ENGINES", " 20.10, 29 ,28.5")
	if got := strings.Join(envEngines(Options{}), "|"); got != "20.10|29|28.5" {
		t.Errorf("envEngines for 3 hosts = %q", got)
	}
	if got := strings.Join(envEngines(Options{Hosts: 2}), "|"); got != "20.10|29" {
		t.Errorf("envEngines for 2 hosts = %q", got)
	}
}
