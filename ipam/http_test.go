package ipam_test

import (
	"bufio"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/talkingdata/ipam/etcdstore"
	"github.com/talkingdata/ipam/internal/etcdtest"
	"github.com/talkingdata/ipam/ipam"
	"github.com/talkingdata/ipam/pool"
)

// serveSocket serves a driver on a unix socket through ipam.Server with
// the given request timeout, as the daemon does, and returns the socket.
func serveSocket(t *testing.T, timeout time.Duration) string {
	t.Helper()
	srv := etcdtest.Start(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	d := &ipam.Driver{Pools: pool.New(etcdstore.New(srv.Client(t), "/t"), pool.Config{Host: "h"}),
		Timeout: timeout, StoreName: "etcd", Log: log}
	sock := filepath.Join(t.TempDir(), "p.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	hs := ipam.Server(ipam.Handler(d, log), timeout)
	go hs.Serve(l)
	t.Cleanup(func() { hs.Close() })
	return sock
}

const requestPool = `{"Pool": "198.18.0.0/28"}`

// head is a RequestPool request's headers, announcing n bytes of body.
func head(n int) string {
	return "POST /IpamDriver.RequestPool HTTP/1.1\r\nHost: plugin\r\nContent-Type: application/json\r\n" +
		"Content-Length: " + strconv.Itoa(n) + "\r\n\r\n"
}

// closedWithin reads from c until the server closes it and fails the test
// unless that happens within limit.
func closedWithin(t *testing.T, c net.Conn, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	c.SetReadDeadline(start.Add(limit))
	_, err := io.Copy(io.Discard, c)
	took := time.Since(start)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("connection still open after %v", took)
	}
	return took
}

func TestServerCutsStalledClients(t *testing.T) {
	const timeout = time.Second
	// Generous: only a connection that outlives the deadline by far fails.
	const limit = timeout + 2*time.Second
	sock := serveSocket(t, timeout)
	dial := func(t *testing.T) net.Conn {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	for _, tc := range []struct{ name, send string }{
		{"nothing", ""},
		{"headers then nothing", head(len(requestPool))},
		{"half a body", head(len(requestPool)) + requestPool[:8]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := dial(t)
			if _, err := io.WriteString(c, tc.send); err != nil {
				t.Fatal(err)
			}
			t.Logf("closed after %v", closedWithin(t, c, limit))
		})
	}
	t.Run("idle after an answer", func(t *testing.T) {
		t.Parallel()
		c := dial(t)
		if _, err := io.WriteString(c, head(len(requestPool))+requestPool); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("RequestPool: %v %v", resp, err)
		}
		resp.Body.Close()
		t.Logf("closed after %v idle", closedWithin(t, c, limit))
	})
}

// A client slower than dockerd that still sends its body well within the
// timeout is served.
func TestServerServesSlowClient(t *testing.T) {
	const timeout = 2 * time.Second
	sock := serveSocket(t, timeout)
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, head(len(requestPool))); err != nil {
		t.Fatal(err)
	}
	time.Sleep(timeout / 4)
	if _, err := io.WriteString(c, requestPool); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(2 * timeout))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || out["PoolID"] != "198.18.0.0/28" {
		t.Fatalf("RequestPool from a slow client: status %d %v %v", resp.StatusCode, out, err)
	}
}
