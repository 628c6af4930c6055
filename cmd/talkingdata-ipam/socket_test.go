package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/talkingdata/ipam/ipam"
)

func TestSocketPath(t *testing.T) {
	for in, want := range map[string]string{
		"talkingdata":      "/run/docker/plugins/talkingdata.sock",
		"other.sock":       "/run/docker/plugins/other.sock",
		"/tmp/x/plug.sock": "/tmp/x/plug.sock",
		"./rel.sock":       "./rel.sock",
	} {
		if got := socketPath(in); got != want {
			t.Errorf("socketPath(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestListenReplacesOnlyStaleSockets(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "td.sock")

	l, got, err := listen(path, "no-such-group-here")
	if err != nil || got != path {
		t.Fatalf("listen: %v %s", err, got)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o660 {
		t.Fatalf("socket mode: %v %v, want 0660", fi.Mode(), err)
	}
	if _, _, err := listen(path, ""); err == nil || !strings.Contains(err.Error(), "in use by a running daemon") {
		t.Fatalf("second daemon on a live socket: %v", err)
	}
	// A daemon killed with -9 leaves its socket file behind.
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	l, _, err = listen(path, "")
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	l.Close()

	regular := filepath.Join(dir, "file.sock")
	os.WriteFile(regular, []byte("keep me"), 0o600)
	if _, _, err := listen(regular, ""); err == nil || !strings.Contains(err.Error(), "is not a socket") {
		t.Fatalf("listen over a regular file: %v", err)
	}
	link := filepath.Join(dir, "link.sock")
	os.Symlink(regular, link)
	if _, _, err := listen(link, ""); err == nil || !strings.Contains(err.Error(), "is not a socket") {
		t.Fatalf("listen over a symlink: %v", err)
	}
	if b, _ := os.ReadFile(regular); string(b) != "keep me" {
		t.Fatal("the file behind the symlink was touched")
	}
}

// Connections beyond the cap wait for a slot rather than being refused,
// and stalled connections give their slots up at the request timeout.
func TestConnectionCapQueues(t *testing.T) {
	const timeout, slots = time.Second, 2
	sock := filepath.Join(t.TempDir(), "cap.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := ipam.Server(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "{}") }), timeout)
	go srv.Serve(limitConns(l, slots))
	defer srv.Close()

	for range slots {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, "POST /Plugin.Activate HTTP/1.1\r\nHost: plugin\r\nContent-Length: 2\r\n\r\n") // and no body
	}
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	start := time.Now()
	resp, err := hc.Post("http://plugin/Plugin.Activate", "application/json", strings.NewReader("{}"))
	took := time.Since(start)
	if err != nil {
		t.Fatalf("a call beyond the cap failed after %v: %v", took, err)
	}
	resp.Body.Close()
	// It waited for a stalled client to be cut off, and no longer.
	if took < timeout/2 || took > timeout+2*time.Second {
		t.Fatalf("a call beyond the cap was answered after %v, want about %v", took, timeout)
	}
}
