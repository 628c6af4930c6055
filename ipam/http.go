package ipam

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	api "github.com/docker/go-plugins-helpers/ipam"
	"github.com/docker/go-plugins-helpers/sdk"
)

// MaxBodyBytes caps a request body. dockerd's requests are a few hundred
// bytes; anything near this is not dockerd.
const MaxBodyBytes = 64 << 10

// Handler serves the plugin protocol for d. It is our own mux around the
// go-plugins-helpers types rather than that package's handler, because
// that one reads bodies without a size limit and answers malformed JSON
// with plain text, which dockerd shows as a confusing error.
func Handler(d api.Ipam, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/Plugin.Activate", func(w http.ResponseWriter, r *http.Request) {
		reply(w, map[string][]string{"Implements": {"IpamDriver"}}, nil)
	})
	mux.HandleFunc("/IpamDriver.GetCapabilities", func(w http.ResponseWriter, r *http.Request) {
		res, err := d.GetCapabilities()
		reply(w, res, err)
	})
	mux.HandleFunc("/IpamDriver.GetDefaultAddressSpaces", func(w http.ResponseWriter, r *http.Request) {
		res, err := d.GetDefaultAddressSpaces()
		reply(w, res, err)
	})
	mux.Handle("/IpamDriver.RequestPool", call(d.RequestPool))
	mux.Handle("/IpamDriver.ReleasePool", call(func(r *api.ReleasePoolRequest) (any, error) { return struct{}{}, d.ReleasePool(r) }))
	mux.Handle("/IpamDriver.RequestAddress", call(d.RequestAddress))
	mux.Handle("/IpamDriver.ReleaseAddress", call(func(r *api.ReleaseAddressRequest) (any, error) { return struct{}{}, d.ReleaseAddress(r) }))
	return logged(mux, log)
}

// Server serves h (a Handler) so that no connection outlives timeout
// (--request-timeout) without a call running on it. The handler reads the
// body before the call's own deadline starts, so the read needs its own:
// a client that sends headers and then stalls is cut off after timeout,
// as is one that keeps a connection idle. dockerd sends each request whole
// at once, far within that.
func Server(h http.Handler, timeout time.Duration) *http.Server {
	return &http.Server{Handler: h, ReadTimeout: timeout, IdleTimeout: timeout}
}

// call decodes a bounded JSON body into Req and replies with fn's answer.
func call[Req, Res any](fn func(*Req) (Res, error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			reply[any](w, nil, fmt.Errorf("method %s not allowed: the plugin protocol uses POST", r.Method))
			return
		}
		var req Req
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
		if err := dec.Decode(&req); err != nil {
			reply[any](w, nil, requestError(r.URL.Path, err))
			return
		}
		if _, err := dec.Token(); err != io.EOF {
			reply[any](w, nil, fmt.Errorf("invalid %s request: trailing data after the JSON object", r.URL.Path[1:]))
			return
		}
		res, err := fn(&req)
		reply(w, res, err)
	})
}

func requestError(path string, err error) error {
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return fmt.Errorf("invalid %s request: body larger than %d bytes", path[1:], MaxBodyBytes)
	}
	return fmt.Errorf("invalid %s request: %w", path[1:], err)
}

// reply writes res, or err as {"Err": …} with status 500 as dockerd expects.
func reply[Res any](w http.ResponseWriter, res Res, err error) {
	if err != nil {
		sdk.EncodeResponse(w, api.NewErrorResponse(err.Error()), true)
		return
	}
	sdk.EncodeResponse(w, res, false)
}

// logged logs each call's method and duration at debug level.
func logged(h http.Handler, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		h.ServeHTTP(w, r)
		log.Debug("plugin call", "method", r.URL.Path, "took", time.Since(start))
	})
}
