package ipam_test

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/talkingdata/ipam/etcdstore"
	"github.com/talkingdata/ipam/internal/etcdtest"
	"github.com/talkingdata/ipam/ipam"
	"github.com/talkingdata/ipam/pool"
)

// FuzzHandler feeds raw bodies to every plugin method through the real
// handler and driver, against a real etcd: whatever arrives, the answer is
// JSON, 200 or an error status with a non-empty Err, and nothing panics.
func FuzzHandler(f *testing.F) {
	methods := []string{"Plugin.Activate", "IpamDriver.GetCapabilities", "IpamDriver.GetDefaultAddressSpaces",
		"IpamDriver.RequestPool", "IpamDriver.ReleasePool", "IpamDriver.RequestAddress", "IpamDriver.ReleaseAddress"}
	for i := range methods {
		f.Add(uint8(i), `{}`)
	}
	f.Add(uint8(3), `{"Pool":"198.18.0.0/28","SubPool":"198.18.0.0/29","V6":false}`)
	f.Add(uint8(5), `{"PoolID":"198.18.0.0/28","Address":"198.18.0.3","Options":{"com.docker.network.endpoint.macaddress":"02:42:00:00:00:01"}}`)
	f.Add(uint8(5), `{"PoolID":"198.18.0.0/28","Options":{"RequestAddressType":"com.docker.network.gateway"}}`)
	f.Add(uint8(6), `{"PoolID":"198.18.0.0/28@198.18.0.0/29","Address":"198.18.0.3"}`)
	f.Add(uint8(5), `{"PoolID":"198.18.0.0/28;gateway=router","Address":"198.18.0.1","Options":{"RequestAddressType":"com.docker.network.gateway"}}`)
	f.Add(uint8(5), `{"PoolID":"2001:db8::/120","Address":"2001:db8::1","Options":null}`)
	f.Add(uint8(3), `{"V6":true}`)
	f.Add(uint8(3), `{"Pool":"2001:db8:1::/64","SubPool":"2001:db8:1::/124","V6":true}`)
	f.Add(uint8(5), `{"PoolID":"2001:db8:1::/64@2001:db8:1::/124","Options":{"com.docker.network.endpoint.macaddress":"02:42:00:00:00:01"}}`)
	f.Add(uint8(5), `{"PoolID":"2001:db8:1::/64@2001:db8:1::/124","Options":{"RequestAddressType":"com.docker.network.gateway"}}`)
	f.Add(uint8(3), `{"Pool":[1,2],"V6":"yes"}`)

	srv := etcdtest.Start(f)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	d := &ipam.Driver{
		Pools:      pool.New(etcdstore.New(srv.Client(f), "/fuzz"), pool.Config{Host: "fuzz"}),
		Timeout:    5 * time.Second,
		LocalAddrs: func() ([]netip.Addr, error) { return nil, nil },
		StoreName:  "etcd",
		Log:        log,
	}
	h := ipam.Handler(d, log)
	f.Fuzz(func(t *testing.T, method uint8, body string) {
		path := "/" + methods[int(method)%len(methods)]
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, path, strings.NewReader(body)))
		var reply map[string]any
		if err := json.Unmarshal(rec.Body.Bytes(), &reply); err != nil {
			t.Fatalf("%s %q: reply %q is not JSON", path, body, rec.Body.String())
		}
		if rec.Code != http.StatusOK {
			if msg, _ := reply["Err"].(string); msg == "" {
				t.Fatalf("%s %q: status %d without an Err: %v", path, body, rec.Code, reply)
			}
		}
	})
}
