package pluginclient

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// A fake plugin on a unix socket: what dockerd's client must send, and how answers are read.
func TestClient(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "p.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got []string
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, r.Method+" "+r.URL.Path+" "+r.Header.Get("Content-Type")+" "+string(body))
		mu.Unlock()
		switch r.URL.Path {
		case "/Plugin.Activate":
			_, _ = w.Write([]byte(`{"Implements":["IpamDriver"]}`))
		case "/IpamDriver.RequestAddress":
			_, _ = w.Write([]byte(`{"Address":"198.18.0.5/16","Data":{}}`))
		case "/IpamDriver.ReleaseAddress":
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = w.Write([]byte(`{"Err":"pool: no such thing"}`))
		default:
			w.WriteHeader(http.StatusNotFound)
		}
	})
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(l) }()
	defer srv.Close()

	c := New(sock, 5*time.Second)
	defer c.Close()
	ctx := context.Background()
	if _, err := c.Activate(ctx); err != nil {
		t.Fatalf("Activate: %v", err)
	}
	res, err := c.RequestAddress(ctx, RequestAddressRequest{PoolID: "198.18.0.0/16", Options: map[string]string{OptMAC: "02:42:00:00:00:01"}})
	if err != nil || res.Address != "198.18.0.5/16" {
		t.Fatalf("RequestAddress = %+v, %v", res, err)
	}
	err = c.ReleaseAddress(ctx, "198.18.0.0/16", "198.18.0.5")
	if err == nil || IsTransport(err) || err.Error() != "plugin: pool: no such thing" {
		t.Fatalf("ReleaseAddress error = %v", err)
	}
	if _, err := c.GetDefaultAddressSpaces(ctx); err == nil || IsTransport(err) {
		t.Fatalf("a 404 answer = %v, want a non-transport error", err)
	}
	want := []string{
		"POST /Plugin.Activate " + MediaType + " null",
		"POST /IpamDriver.RequestAddress " + MediaType + ` {"PoolID":"198.18.0.0/16","Address":"","Options":{"com.docker.network.endpoint.macaddress":"02:42:00:00:00:01"}}`,
		"POST /IpamDriver.ReleaseAddress " + MediaType + ` {"PoolID":"198.18.0.0/16","Address":"198.18.0.5"}`,
	}
	mu.Lock()
	defer mu.Unlock()
	for i, w := range want {
		if got[i] != w {
			t.Errorf("request %d:\n got %s\nwant %s", i, got[i], w)
		}
	}

	dead := New(filepath.Join(t.TempDir(), "none.sock"), time.Second)
	var req json.RawMessage
	if err := dead.Call(ctx, "Plugin.Activate", nil, &req); !IsTransport(err) {
		t.Fatalf("no socket: %v, want a transport error", err)
	}
}
