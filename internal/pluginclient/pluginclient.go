// Package pluginclient speaks Docker's remote IPAM plugin protocol to a plugin's unix socket the
// way dockerd's plugin client does: JSON POSTs to /Plugin.Activate and /IpamDriver.<Method> with
// the plugin media type, over keep-alive connections. The chaos harness and ipambench share it so
// that both load the plugin exactly as dockerd would.
package pluginclient

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

const (
	// MediaType is the content type dockerd sends with plugin calls.
	MediaType = "application/vnd.docker.plugins.v1.2+json"
	// OptMAC is the option key dockerd sends the endpoint's MAC address with.
	OptMAC = "com.docker.network.endpoint.macaddress"
	// maxAnswer bounds how much of an answer is read; real answers are a few hundred bytes.
	maxAnswer = 1 << 20
)

// Client is one plugin socket. It is safe for concurrent use; every call in flight holds one
// connection, and up to maxIdle of them are kept open between calls.
type Client struct {
	socket string
	hc     *http.Client
}

// maxIdle is above the highest concurrency anyone drives one socket with (ipambench: 128), so
// a steady load reuses its connections instead of dialling per call, as dockerd's does.
const maxIdle = 256

// New returns a client for the plugin listening on socket. timeout bounds each call (0: only the
// caller's context does); dockerd has none for legacy plugins, the plugin bounds itself.
func New(socket string, timeout time.Duration) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, "unix", socket)
		},
		MaxIdleConns:        maxIdle,
		MaxIdleConnsPerHost: maxIdle,
		IdleConnTimeout:     30 * time.Second,
		DisableCompression:  true,
	}
	return &Client{socket: socket, hc: &http.Client{Transport: tr, Timeout: timeout}}
}

// Socket is the path the client dials.
func (c *Client) Socket() string { return c.socket }

// Close drops the idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// CallError is an answer that is not a success. Transport errors (no connection, a connection
// cut before the answer, our own timeout) are the ones dockerd's plugin client retries by
// itself; an error answer ({"Err": …}, status 500) is returned to the user.
type CallError struct {
	Transport bool
	Msg       string
}

func (e *CallError) Error() string {
	if e.Transport {
		return "transport: " + e.Msg
	}
	return "plugin: " + e.Msg
}

// IsTransport reports whether err is a CallError that never got an answer.
func IsTransport(err error) bool {
	var ce *CallError
	return errors.As(err, &ce) && ce.Transport
}

// Call POSTs req to /<method> (e.g. "IpamDriver.RequestAddress") and decodes a success into res.
// Any failure is a *CallError.
func (c *Client) Call(ctx context.Context, method string, req, res any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return &CallError{Msg: fmt.Sprintf("encoding the %s request: %v", method, err)}
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://plugin/"+method, bytes.NewReader(body))
	if err != nil {
		return &CallError{Msg: fmt.Sprintf("building the %s request: %v", method, err)}
	}
	hr.Header.Set("Content-Type", MediaType)
	hr.Header.Set("Accept", MediaType)
	resp, err := c.hc.Do(hr)
	if err != nil {
		return &CallError{Transport: true, Msg: err.Error()}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return &CallError{Transport: true, Msg: "reading the answer: " + err.Error()}
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Err string }
		if json.Unmarshal(b, &e) != nil || e.Err == "" {
			e.Err = fmt.Sprintf("status %d: %q", resp.StatusCode, b)
		}
		return &CallError{Msg: e.Err}
	}
	if err := json.Unmarshal(b, res); err != nil {
		return &CallError{Msg: fmt.Sprintf("malformed %s answer %q: %v", method, b, err)}
	}
	return nil
}
