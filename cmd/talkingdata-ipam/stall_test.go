package main

import (
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/talkingdata/ipam/internal/etcdtest"
)

// The daemon cuts clients that stall after their headers at
// --request-timeout, and a call beyond the connection cap waits for their
// slots instead of failing.
func TestDaemonCutsStalledClients(t *testing.T) {
	const timeout = 2 * time.Second
	srv := etcdtest.Start(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "td.sock")
	startDaemon(t, buildDaemon(t, dir), sock, filepath.Join(dir, "data"),
		"--etcd-endpoints", srv.Endpoints()[0], "--request-timeout", timeout.String())

	stalled := make([]net.Conn, maxConns)
	for i := range stalled {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := io.WriteString(c, "POST /IpamDriver.RequestPool HTTP/1.1\r\nHost: plugin\r\nContent-Length: 30\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		stalled[i] = c
	}
	start := time.Now()
	out := post(t, sock, "IpamDriver.RequestPool", map[string]any{"Pool": "198.18.0.0/28"})
	took := time.Since(start)
	if out["PoolID"] != "198.18.0.0/28" {
		t.Fatalf("RequestPool behind %d stalled clients: %v", maxConns, out)
	}
	// Generous margins: the bound is the deadline, not a speed target.
	if took < timeout/2 || took > timeout+3*time.Second {
		t.Fatalf("RequestPool behind %d stalled clients answered after %v, want about %v", maxConns, took, timeout)
	}
	for i, c := range stalled {
		c.SetReadDeadline(start.Add(timeout + 3*time.Second))
		if _, err := io.Copy(io.Discard, c); err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatalf("stalled connection %d still open %v after the call beyond the cap began", i, time.Since(start))
			}
		}
	}
}
