package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// Option keys dockerd sends with an endpoint's RequestAddress.
const optMAC = "com.docker.network.endpoint.macaddress"

// plugin speaks the remote IPAM protocol to one host's plugin socket, as dockerd's plugin client
// does: JSON POSTs over a unix socket, keep-alive connections.
type plugin struct {
	host int
	name string // "h1"
	hc   *http.Client
}

func newPlugin(host int, socket string, timeout time.Duration) *plugin {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, "unix", socket)
		},
		MaxIdleConns:        128,
		MaxIdleConnsPerHost: 128,
		IdleConnTimeout:     30 * time.Second,
		DisableCompression:  true,
	}
	return &plugin{host: host, name: fmt.Sprintf("h%d", host), hc: &http.Client{Transport: tr, Timeout: timeout}}
}

// callError is an answer that is not a success. Transport errors (no connection, a connection
// cut before the answer, our own timeout) are the ones dockerd's plugin client retries by
// itself; an error answer ({"Err": …}, status 500) is returned to the user.
type callError struct {
	Transport bool
	Msg       string
}

func (e *callError) Error() string {
	if e.Transport {
		return "transport: " + e.Msg
	}
	return "plugin: " + e.Msg
}

func isTransport(err error) bool {
	var ce *callError
	return errors.As(err, &ce) && ce.Transport
}

// call POSTs req to /IpamDriver.<method> and decodes a success into res.
func (p *plugin) call(ctx context.Context, method string, req, res any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://plugin/IpamDriver."+method, bytes.NewReader(body))
	if err != nil {
		return err
	}
	hr.Header.Set("Content-Type", "application/vnd.docker.plugins.v1.2+json")
	resp, err := p.hc.Do(hr)
	if err != nil {
		return &callError{Transport: true, Msg: err.Error()}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return &callError{Transport: true, Msg: "reading the answer: " + err.Error()}
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Err string }
		if json.Unmarshal(b, &e) != nil || e.Err == "" {
			e.Err = fmt.Sprintf("status %d: %q", resp.StatusCode, b)
		}
		return &callError{Msg: e.Err}
	}
	if err := json.Unmarshal(b, res); err != nil {
		return &callError{Msg: fmt.Sprintf("malformed answer %q: %v", b, err)}
	}
	return nil
}

type requestPoolRequest struct {
	AddressSpace string
	Pool         string
	SubPool      string
	Options      map[string]string
	V6           bool
}

type requestPoolResponse struct {
	PoolID string
	Pool   string
	Data   map[string]string
}

type requestAddressRequest struct {
	PoolID  string
	Address string
	Options map[string]string
}

type requestAddressResponse struct {
	Address string
	Data    map[string]string
}

type releaseAddressRequest struct {
	PoolID  string
	Address string
}

type releasePoolRequest struct {
	PoolID string
}
