package main

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/talkingdata/ipam/internal/etcdtest"
	"github.com/talkingdata/ipam/internal/testproc"
)

// TestMetricsAndHealth runs the daemon with --metrics-addr against a real
// etcd: the pool gauges follow allocations, plugin calls are timed by
// method and result, etcd calls are counted, and /healthz fails once etcd
// is gone.
func TestMetricsAndHealth(t *testing.T) {
	srv := etcdtest.Start(t)
	dir := t.TempDir()
	bin := buildDaemon(t, dir)
	sock := filepath.Join(dir, "td.sock")
	addr := testproc.FreeLoopbackAddr(t)
	startDaemon(t, bin, sock, filepath.Join(dir, "data"), "--etcd-endpoints", srv.Endpoints()[0], "--metrics-addr", addr)

	const id = "198.18.0.0/28" // 14 addresses
	post(t, sock, "IpamDriver.RequestPool", map[string]any{"Pool": id})
	var got []string
	for i := 1; i <= 3; i++ {
		mac := map[string]string{"com.docker.network.endpoint.macaddress": fmt.Sprintf("02:42:c6:12:00:%02x", i)}
		a, _, _ := strings.Cut(post(t, sock, "IpamDriver.RequestAddress", map[string]any{"PoolID": id, "Options": mac})["Address"].(string), "/")
		got = append(got, a)
	}
	post(t, sock, "IpamDriver.ReleaseAddress", map[string]any{"PoolID": id, "Address": got[0]})
	if out := post(t, sock, "IpamDriver.RequestAddress", map[string]any{"PoolID": id, "Address": "198.19.0.1"}); out["Err"] == nil {
		t.Fatalf("an address outside the pool was granted: %v", out)
	}

	want := map[string]float64{
		`talkingdata_pool_size{pool="198.18.0.0/28"}`:                                            14,
		`talkingdata_pool_addresses{pool="198.18.0.0/28",state="free"}`:                          11,
		`talkingdata_pool_addresses{pool="198.18.0.0/28",state="delayed"}`:                       1, // the default 60 s reuse delay
		`talkingdata_pool_addresses{pool="198.18.0.0/28",state="held"}`:                          2,
		`talkingdata_plugin_call_duration_seconds_count{method="RequestAddress",result="ok"}`:    3,
		`talkingdata_plugin_call_duration_seconds_count{method="RequestAddress",result="error"}`: 1,
		`talkingdata_plugin_call_duration_seconds_count{method="ReleaseAddress",result="ok"}`:    1,
		`talkingdata_plugin_calls_in_flight`:                                                     0,
	}
	var m map[string]float64
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		m = scrape(t, "http://"+addr+"/metrics")
		var wrong []string
		for series, v := range want {
			if m[series] != v {
				wrong = append(wrong, fmt.Sprintf("%s = %g, want %g", series, m[series], v))
			}
		}
		if len(wrong) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics after 10s:\n%s", strings.Join(wrong, "\n"))
		}
	}
	if m[`talkingdata_etcd_requests_total{code="OK",method="Txn"}`] < 4 {
		t.Errorf("etcd Txn calls counted: %g, want at least the 4 allocations and releases", m[`talkingdata_etcd_requests_total{code="OK",method="Txn"}`])
	}

	if code, body := get(t, "http://"+addr+"/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz with etcd up: %d %s", code, body)
	}
	srv.Stop(t)
	code, body := get(t, "http://"+addr+"/healthz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "etcd unreachable") {
		t.Fatalf("/healthz with etcd down: %d %s", code, body)
	}
	m = scrape(t, "http://"+addr+"/metrics")
	var failed float64
	for series, v := range m {
		if strings.HasPrefix(series, "talkingdata_etcd_requests_total{") && !strings.Contains(series, `code="OK"`) {
			failed += v
		}
	}
	if failed == 0 {
		t.Error("no failed etcd call counted after etcd stopped")
	}
}

// TestPoolGaugesFromStart: after a restart, the gauges of the pools this
// host's networks use are there before dockerd calls on them, so an alert
// on them is not silent until then.
func TestPoolGaugesFromStart(t *testing.T) {
	srv := etcdtest.Start(t)
	dir := t.TempDir()
	bin := buildDaemon(t, dir)
	sock := filepath.Join(dir, "td.sock")
	d := startDaemon(t, bin, sock, filepath.Join(dir, "data"), "--etcd-endpoints", srv.Endpoints()[0])
	const id = "198.18.0.0/28" // 14 addresses
	post(t, sock, "IpamDriver.RequestPool", map[string]any{"Pool": id})
	for i := 1; i <= 2; i++ {
		mac := map[string]string{"com.docker.network.endpoint.macaddress": fmt.Sprintf("02:42:c6:12:00:%02x", i)}
		if out := post(t, sock, "IpamDriver.RequestAddress", map[string]any{"PoolID": id, "Options": mac}); out["Err"] != nil {
			t.Fatalf("RequestAddress: %v", out)
		}
	}
	d.stop(t)

	addr := testproc.FreeLoopbackAddr(t)
	startDaemon(t, bin, sock, filepath.Join(dir, "data"), "--etcd-endpoints", srv.Endpoints()[0], "--metrics-addr", addr)
	want := map[string]float64{
		`talkingdata_pool_size{pool="198.18.0.0/28"}`:                   14,
		`talkingdata_pool_addresses{pool="198.18.0.0/28",state="free"}`: 12,
		`talkingdata_pool_addresses{pool="198.18.0.0/28",state="held"}`: 2,
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		m := scrape(t, "http://"+addr+"/metrics")
		var wrong []string
		for series, v := range want {
			if got, ok := m[series]; !ok || got != v {
				wrong = append(wrong, fmt.Sprintf("%s = %g (present: %t), want %g", series, got, ok, v))
			}
		}
		if len(wrong) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("gauges 5s after a restart, with no plugin call:\n%s", strings.Join(wrong, "\n"))
		}
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	hc := &http.Client{Timeout: 10 * time.Second}
	resp, err := hc.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// scrape reads the text exposition into series → value.
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	code, body := get(t, url)
	if code != http.StatusOK {
		t.Fatalf("%s: %d %s", url, code, body)
	}
	m := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		i := strings.LastIndex(line, " ")
		if strings.HasPrefix(line, "#") || i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			m[line[:i]] = v
		}
	}
	return m
}
