package main

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestEmbeddedEtcdSingleHost runs the daemon as `make run` does, with no
// etcd given: it must serve from its embedded etcd on 127.0.0.1:2379,
// shut down cleanly, and find its state again after a restart.
func TestEmbeddedEtcdSingleHost(t *testing.T) {
	dir := t.TempDir()
	bin := buildDaemon(t, dir)
	sock := filepath.Join(dir, "td.sock")
	data := filepath.Join(dir, "data")
	const id = "198.18.0.0/28"
	mac := map[string]string{"com.docker.network.endpoint.macaddress": "02:42:c6:12:00:01"}

	d := startDaemon(t, bin, sock, data)
	if out := post(t, sock, "IpamDriver.RequestPool", map[string]any{"Pool": id}); out["PoolID"] != id {
		t.Fatalf("RequestPool: %v", out)
	}
	got := post(t, sock, "IpamDriver.RequestAddress", map[string]any{"PoolID": id, "Options": mac})
	addr, _, _ := strings.Cut(got["Address"].(string), "/")

	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"http://127.0.0.1:2379"}, DialTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := cli.Get(ctx, "/talkingdata/ipam/used/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || r.Count != 1 {
		t.Fatalf("embedded etcd at 127.0.0.1:2379 holds %d used entries (%v), want 1", r.Count, err)
	}
	d.stop(t)
	if _, err := os.Lstat(sock); err == nil {
		t.Fatal("socket left behind after a clean shutdown")
	}
	// A clean stop logs no error, etcd's included, in the daemon's format.
	logged, _ := os.ReadFile(filepath.Join(dir, "daemon.log"))
	if strings.Contains(string(logged), "level=ERROR") || strings.Contains(string(logged), `"level":`) {
		t.Fatalf("a clean stop logged errors or etcd's own JSON lines:\n%s", logged)
	}

	startDaemon(t, bin, sock, data)
	other := map[string]string{"com.docker.network.endpoint.macaddress": "02:42:c6:12:00:02"}
	again := post(t, sock, "IpamDriver.RequestAddress", map[string]any{"PoolID": id, "Address": addr, "Options": other})
	if !strings.Contains(again["Err"].(string), addr+" is in use") {
		t.Fatalf("after a restart, %s should still be used: %v", addr, again)
	}
}

func buildDaemon(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "talkingdata-ipam")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

type daemon struct{ cmd *exec.Cmd }

// startDaemon starts bin on sock with the embedded etcd in data, unless
// extra gives --etcd-endpoints.
func startDaemon(t *testing.T, bin, sock, data string, extra ...string) *daemon {
	t.Helper()
	d := &daemon{exec.Command(bin, append([]string{"--socket", sock, "--data-dir", data, "--host-id", "solo"}, extra...)...)}
	log, _ := os.Create(filepath.Join(filepath.Dir(sock), "daemon.log"))
	d.cmd.Stdout, d.cmd.Stderr = log, log
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.stop(t)
		if t.Failed() {
			b, _ := os.ReadFile(log.Name())
			t.Logf("daemon log:\n%s", b)
		}
	})
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return d
		}
		if time.Now().After(deadline) {
			t.Fatal("daemon did not serve within 30s")
		}
	}
}

func (d *daemon) stop(t *testing.T) {
	if d.cmd.ProcessState != nil {
		return
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- d.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("daemon exit after SIGTERM: %v", err)
		}
	case <-time.After(20 * time.Second):
		d.cmd.Process.Kill()
		<-done
		t.Error("daemon ignored SIGTERM for 20s")
	}
}

func post(t *testing.T, sock, method string, body any) map[string]any {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}, Timeout: 15 * time.Second}
	b, _ := json.Marshal(body)
	resp, err := hc.Post("http://plugin/"+method, "application/json", strings.NewReader(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out
}
