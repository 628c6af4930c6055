package etcdtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/talkingdata/ipam/internal/testpki"
)

// SecureOptions configures StartSecure.
type SecureOptions struct {
	// Auth turns on etcd's authentication: a root user, and User with Password whose role may
	// read and write keys under Prefix and nothing else.
	Auth     bool
	User     string // default "ipam"
	Password string // default: random, distinctive enough to grep logs for
	Prefix   string // default "/talkingdata/"
	// AuthTokenTTL is etcd's --auth-token-ttl: how long a simple token lives without being
	// used (default 5 minutes). Whole seconds.
	AuthTokenTTL time.Duration
}

// SecureServer is an etcd that serves its clients over TLS and requires a client certificate
// signed by its CA, optionally with auth enabled. All files live in the test's temp dir.
type SecureServer struct {
	*Server

	CACert                string // the CA that signed the server and client certificates
	ClientCert, ClientKey string // a client certificate the server accepts
	// A CA unrelated to the server, and a client certificate it signed: verifying the server
	// with OtherCA fails, and the server refuses OtherCert.
	OtherCA                string
	OtherCert, OtherKey    string
	User, Password         string // empty unless SecureOptions.Auth
	Prefix                 string // the key prefix User may use
	RootUser, RootPassword string // etcd's root, which Server.Client logs in as
}

// ClientCN is the common name of ClientCert. It names no etcd user: with auth enabled, etcd 3.4
// treats a client certificate's CN as the user when a request carries no token, and the tests
// must show that the certificate alone grants nothing.
const ClientCN = "talkingdata-ipam-test-client"

// StartSecure runs a fresh etcd with TLS and client-certificate authentication on its client
// URL (https://127.0.0.1:PORT), and with opts.Auth, etcd auth with a user limited to a prefix.
// Certificates (ECDSA P-256) are generated for this server alone. It is stopped when the test
// ends. Server.Client connects with ClientCert and, with auth, as root.
//
// With auth, etcd 3.4 keeps its tokens in memory: a Restart invalidates them, and clientv3
// 3.5+ cannot log in again (it sends the dead token along with Authenticate, which etcd 3.4
// refuses). Clients made with Server.Client before a Restart stay unusable; make new ones.
func StartSecure(t testing.TB, opts SecureOptions) *SecureServer {
	t.Helper()
	if opts.User == "" {
		opts.User = "ipam"
	}
	if opts.Password == "" {
		opts.Password = "pw-" + randHex(t, 12)
	}
	if opts.Prefix == "" {
		opts.Prefix = "/talkingdata/"
	}
	srv := newServer(t)
	pki := filepath.Join(srv.dir, "pki")
	if err := os.Mkdir(pki, 0o700); err != nil {
		t.Fatal(err)
	}
	ca := testpki.NewCA(t, "talkingdata-ipam test CA")
	other := testpki.NewCA(t, "unrelated test CA")
	s := &SecureServer{
		Server:   srv,
		CACert:   ca.WriteCert(t, pki, "ca"),
		OtherCA:  other.WriteCert(t, pki, "other-ca"),
		Prefix:   opts.Prefix,
		RootUser: "root",
	}
	serverCert, serverKey := ca.Issue(t, pki, "server", "127.0.0.1", true)
	s.ClientCert, s.ClientKey = ca.Issue(t, pki, "client", ClientCN, false)
	s.OtherCert, s.OtherKey = other.Issue(t, pki, "other-client", ClientCN, false)

	srv.scheme = "https"
	srv.extraArgs = []string{
		"--cert-file", serverCert, "--key-file", serverKey,
		"--client-cert-auth", "--trusted-ca-file", s.CACert,
	}
	if opts.AuthTokenTTL > 0 {
		srv.extraArgs = append(srv.extraArgs, "--auth-token-ttl", strconv.Itoa(int(opts.AuthTokenTTL.Seconds())))
	}
	tc, err := (transport.TLSInfo{TrustedCAFile: s.CACert, CertFile: s.ClientCert, KeyFile: s.ClientKey}).ClientConfig()
	if err != nil {
		t.Fatalf("etcdtest: client TLS: %v", err)
	}
	srv.tls = tc
	srv.launch(t)

	if opts.Auth {
		s.User, s.Password, s.RootPassword = opts.User, opts.Password, "root-"+randHex(t, 12)
		s.enableAuth(t)
		srv.user, srv.pass = s.RootUser, s.RootPassword
	}
	return s
}

// enableAuth creates root (etcd refuses `auth enable` without a root user holding the root
// role) and the limited user, then enables auth. It uses a client of its own: one that has
// no credentials stops working once auth is on.
func (s *SecureServer) enableAuth(t testing.TB) {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: s.Endpoints(), DialTimeout: 2 * time.Second, TLS: s.tls, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("etcdtest: client: %v", err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	steps := []struct {
		what string
		do   func() error
	}{
		{"add root role", func() error { _, err := c.RoleAdd(ctx, "root"); return err }},
		{"add root user", func() error { _, err := c.UserAdd(ctx, s.RootUser, s.RootPassword); return err }},
		{"grant root role", func() error { _, err := c.UserGrantRole(ctx, s.RootUser, "root"); return err }},
		{"add role " + s.User, func() error { _, err := c.RoleAdd(ctx, s.User); return err }},
		{"grant readwrite on " + s.Prefix, func() error {
			_, err := c.RoleGrantPermission(ctx, s.User, s.Prefix, clientv3.GetPrefixRangeEnd(s.Prefix),
				clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		}},
		{"add user " + s.User, func() error { _, err := c.UserAdd(ctx, s.User, s.Password); return err }},
		{"grant role " + s.User, func() error { _, err := c.UserGrantRole(ctx, s.User, s.User); return err }},
		{"enable auth", func() error { _, err := c.AuthEnable(ctx); return err }},
	}
	for _, st := range steps {
		if err := st.do(); err != nil {
			t.Fatalf("etcdtest: %s: %v", st.what, err)
		}
	}
}

func randHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}
