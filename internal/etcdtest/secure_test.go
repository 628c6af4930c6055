package etcdtest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

func TestSecureTLSOnly(t *testing.T) {
	s := StartSecure(t, SecureOptions{})
	if eps := s.Endpoints(); len(eps) != 1 || !strings.HasPrefix(eps[0], "https://127.0.0.1:") {
		t.Fatalf("Endpoints() = %q, want one https loopback URL", eps)
	}
	if s.User != "" || s.Password != "" {
		t.Fatalf("no auth asked for, but User=%q Password=%q", s.User, s.Password)
	}
	c := s.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Put(ctx, "/anywhere/k", "v"); err != nil {
		t.Fatalf("put over TLS with the client certificate: %v", err)
	}
	assertValue(t, c, "/anywhere/k", "v")

	for _, f := range []string{s.CACert, s.ClientCert, s.ClientKey, s.OtherCA, s.OtherCert, s.OtherKey} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("exposed file: %v", err)
		}
	}

	// The TLS handshake itself: no client certificate, a certificate of another CA, and a
	// server that the other CA cannot vouch for are all refused.
	pool := x509.NewCertPool()
	caPEM, _ := os.ReadFile(s.CACert)
	pool.AppendCertsFromPEM(caPEM)
	addr := strings.TrimPrefix(s.Endpoints()[0], "https://")
	other, err := tls.LoadX509KeyPair(s.OtherCert, s.OtherKey)
	if err != nil {
		t.Fatal(err)
	}
	mine, err := tls.LoadX509KeyPair(s.ClientCert, s.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	handshake := func(cfg *tls.Config) error {
		cfg.MinVersion = tls.VersionTLS12
		hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
		resp, err := hc.Get("https://" + addr + "/health")
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	if err := handshake(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{mine}}); err != nil {
		t.Fatalf("GET /health with the client certificate: %v", err)
	}
	if err := handshake(&tls.Config{RootCAs: pool}); err == nil {
		t.Error("GET /health without a client certificate succeeded")
	}
	if err := handshake(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{other}}); err == nil {
		t.Error("GET /health with a certificate of another CA succeeded")
	}
	otherPool := x509.NewCertPool()
	otherPEM, _ := os.ReadFile(s.OtherCA)
	otherPool.AppendCertsFromPEM(otherPEM)
	var uae x509.UnknownAuthorityError
	if err := handshake(&tls.Config{RootCAs: otherPool, Certificates: []tls.Certificate{mine}}); !errors.As(err, &uae) {
		t.Errorf("verifying the server with another CA: err = %v, want an unknown authority", err)
	}

	// Restart keeps TLS.
	s.Restart(t)
	assertValue(t, c, "/anywhere/k", "v")
}

func TestSecureAuth(t *testing.T) {
	s := StartSecure(t, SecureOptions{Auth: true})
	if s.User != "ipam" || !strings.HasPrefix(s.Password, "pw-") || s.Prefix != "/talkingdata/" || s.RootPassword == "" {
		t.Fatalf("User=%q Password=%q Prefix=%q RootPassword set=%v", s.User, s.Password, s.Prefix, s.RootPassword != "")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	root := s.Client(t)
	if _, err := root.Put(ctx, "/other/k", "root"); err != nil {
		t.Fatalf("root put outside the prefix: %v", err)
	}
	// (etcd 3.4 has no AuthStatus RPC; the role's permissions say what was set up.)
	role, err := root.RoleGet(ctx, s.User)
	if err != nil || len(role.Perm) != 1 || string(role.Perm[0].Key) != s.Prefix ||
		string(role.Perm[0].RangeEnd) != clientv3.GetPrefixRangeEnd(s.Prefix) {
		t.Fatalf("role %s: %v, %v", s.User, role, err)
	}

	user := s.dial(t, s.User, s.Password)
	if _, err := user.Put(ctx, "/talkingdata/ipam/k", "v"); err != nil {
		t.Fatalf("%s put under %s: %v", s.User, s.Prefix, err)
	}
	if _, err := user.Get(ctx, "/talkingdata/", clientv3.WithPrefix()); err != nil {
		t.Fatalf("%s range over %s: %v", s.User, s.Prefix, err)
	}
	if _, err := user.Put(ctx, "/other/k", "v"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Errorf("%s put outside the prefix: err = %v, want permission denied", s.User, err)
	}
	if _, err := user.Get(ctx, "/other/k"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Errorf("%s get outside the prefix: err = %v, want permission denied", s.User, err)
	}
	// "/talkingdata" without the slash, and a sibling that shares the prefix's letters.
	if _, err := user.Put(ctx, "/talkingdatax/k", "v"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Errorf("%s put to /talkingdatax/: err = %v, want permission denied", s.User, err)
	}

	// The client certificate alone is no identity.
	anon := s.dial(t, "", "")
	if _, err := anon.Get(ctx, "/talkingdata/ipam/k"); err == nil {
		t.Error("a request with only the client certificate was allowed")
	} else {
		t.Logf("certificate only: %v", err)
	}

	// The client authenticates while it is created, so a wrong password fails right there.
	if _, err := s.tryDial(s.User, "wrong"); !errors.Is(err, rpctypes.ErrAuthFailed) {
		t.Errorf("wrong password: err = %v, want authentication failed", err)
	}

	// Auth and TLS survive a restart (with new clients: see StartSecure).
	s.Restart(t)
	assertValue(t, s.dial(t, s.User, s.Password), "/talkingdata/ipam/k", "v")
	if _, err := s.dial(t, "", "").Get(ctx, "/talkingdata/ipam/k"); err == nil {
		t.Error("after a restart, a request with only the client certificate was allowed")
	}
}

func (s *SecureServer) dial(t *testing.T, user, pass string) *clientv3.Client {
	t.Helper()
	c, err := s.tryDial(user, pass)
	if err != nil {
		t.Fatalf("dial as %q: %v", user, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (s *SecureServer) tryDial(user, pass string) (*clientv3.Client, error) {
	tc, err := (transport.TLSInfo{TrustedCAFile: s.CACert, CertFile: s.ClientCert, KeyFile: s.ClientKey}).ClientConfig()
	if err != nil {
		return nil, err
	}
	return clientv3.New(clientv3.Config{Endpoints: s.Endpoints(), DialTimeout: 2 * time.Second, TLS: tc,
		Username: user, Password: pass, Logger: zap.NewNop()})
}
