package etcdstore_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/talkingdata/ipam/etcdstore"
	"github.com/talkingdata/ipam/internal/etcdtest"
	"github.com/talkingdata/ipam/pool"
)

// secureConfig is what --etcd-cacert/--etcd-cert/--etcd-key give Dial.
func secureConfig(s *etcdtest.SecureServer) etcdstore.Config {
	return etcdstore.Config{Endpoints: s.Endpoints(), CACert: s.CACert, Cert: s.ClientCert, Key: s.ClientKey, DialTimeout: 2 * time.Second}
}

func dial(t *testing.T, cfg etcdstore.Config) *clientv3.Client {
	t.Helper()
	cli, err := etcdstore.Dial(cfg)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// allocateOne attaches host "h" to a /28 under prefix and allocates one container address.
func allocateOne(ctx context.Context, cli *clientv3.Client, prefix string) (netip.Addr, error) {
	p := pool.New(etcdstore.New(cli, prefix), pool.Config{Host: "h"})
	n, err := pool.NewNetwork("198.18.0.0/28", "")
	if err != nil {
		return netip.Addr{}, err
	}
	if err := p.Attach(ctx, n); err != nil {
		return netip.Addr{}, err
	}
	return p.Allocate(ctx, n, netip.Addr{}, pool.Allocation{Kind: pool.KindContainer, MAC: "02:42:c6:12:00:01"})
}

// usedCount counts used entries under prefix, read as root.
func usedCount(t *testing.T, s *etcdtest.SecureServer, prefix string) int64 {
	t.Helper()
	r, err := s.Client(t).Get(ctxT(t, 5*time.Second), prefix+"/used/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return r.Count
}

// mustFail runs fn under a short deadline and returns its error, failing the test if there is
// none or if it did not come back in time.
func mustFail(t *testing.T, what string, fn func(ctx context.Context) error) error {
	t.Helper()
	// Generous for a loaded CI machine (-race, packages in parallel): the
	// TLS cause is only known once a handshake attempt has ended.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	err := fn(ctx)
	if err == nil {
		t.Fatalf("%s succeeded", what)
	}
	if d := time.Since(start); d > 8*time.Second {
		t.Fatalf("%s took %v to fail", what, d)
	}
	t.Logf("%s: %v", what, err)
	return err
}

func TestTLSClientCert(t *testing.T) {
	s := etcdtest.StartSecure(t, etcdtest.SecureOptions{})
	cli := dial(t, secureConfig(s))
	ctx := ctxT(t, 10*time.Second)
	a, err := allocateOne(ctx, cli, "/talkingdata/ipam")
	if err != nil {
		t.Fatalf("allocate over TLS: %v", err)
	}
	if !netip.MustParsePrefix("198.18.0.0/28").Contains(a) {
		t.Fatalf("allocated %s", a)
	}
	if n := usedCount(t, s, "/talkingdata/ipam"); n != 1 {
		t.Fatalf("%d used entries, want 1", n)
	}
}

// failsTelling runs fn, which must fail, until its error is one ok accepts,
// three times at most. The TLS cause is known only once a handshake
// attempt has ended with etcd's answer; on a loaded machine gRPC may cut an
// attempt short before reading it, and then that call cannot say why.
// What is tested is that the cause is told when it is known.
func failsTelling(t *testing.T, what string, fn func(ctx context.Context) error, ok func(error) bool, want string) {
	t.Helper()
	var errs []string
	for range 3 {
		err := mustFail(t, what, fn)
		if ok(err) {
			return
		}
		errs = append(errs, err.Error())
	}
	t.Errorf("%s: errors %q, want %s", what, errs, want)
}

// TestTLSRefused: what the server or the client refuses during the handshake. Dial does not
// wait for etcd, so each shows up as the first call's error, within its deadline.
func TestTLSRefused(t *testing.T) {
	s := etcdtest.StartSecure(t, etcdtest.SecureOptions{})
	get := func(cfg etcdstore.Config) func(ctx context.Context) error {
		return func(ctx context.Context) error {
			cli, err := etcdstore.Dial(cfg)
			if err != nil {
				return err
			}
			defer cli.Close()
			_, err = cli.Get(ctx, "/talkingdata/ipam/meta/")
			return err
		}
	}
	const refused = "(the TLS connection to etcd failed: remote error: tls: " // etcd's alert follows
	for _, tc := range []struct {
		name string
		edit func(*etcdstore.Config)
		want string // in the error, besides the deadline
	}{
		{"no client certificate", func(c *etcdstore.Config) { c.Cert, c.Key = "", "" }, refused},
		{"client certificate of another CA", func(c *etcdstore.Config) { c.Cert, c.Key = s.OtherCert, s.OtherKey }, refused},
		{"server verified with another CA", func(c *etcdstore.Config) { c.CACert = s.OtherCA },
			"(the TLS connection to etcd failed: tls: failed to verify certificate: x509: certificate signed by unknown authority)"},
		// Plain gRPC to a TLS port: etcd just closes the connection, and
		// nothing says why.
		{"no TLS at all", func(c *etcdstore.Config) {
			c.CACert, c.Cert, c.Key = "", "", ""
			c.Endpoints = []string{strings.Replace(c.Endpoints[0], "https://", "http://", 1)}
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := secureConfig(s)
			tc.edit(&cfg)
			failsTelling(t, tc.name, get(cfg), func(err error) bool {
				return errors.Is(err, context.DeadlineExceeded) && strings.Contains(err.Error(), tc.want)
			}, "a deadline and "+tc.want)
		})
	}
	t.Run("with a password too", func(t *testing.T) {
		// The login in Dial runs into the refused certificate; Dial still
		// returns, and the first call says why it fails.
		cfg := secureConfig(s)
		cfg.Cert, cfg.Key = "", ""
		cfg.Username, cfg.Password = "ipam", "pw"
		cfg.DialTimeout = 300 * time.Millisecond // the login in Dial waits this long
		failsTelling(t, "no client certificate, with a password", get(cfg), func(err error) bool {
			return errors.Is(err, context.DeadlineExceeded) && strings.Contains(err.Error(), refused) &&
				strings.Contains(err.Error(), `logging in as etcd user "ipam"`)
		}, "a deadline logging in and "+refused)
	})
	t.Run("missing key file", func(t *testing.T) {
		cfg := secureConfig(s)
		cfg.Key = cfg.Key + ".missing"
		if _, err := etcdstore.Dial(cfg); err == nil || !strings.Contains(err.Error(), "loading etcd TLS files") {
			t.Fatalf("Dial with a missing key: %v", err)
		}
	})
}

func TestAuthPrefixRole(t *testing.T) {
	s := etcdtest.StartSecure(t, etcdtest.SecureOptions{Auth: true})
	cfg := secureConfig(s)
	cfg.Username, cfg.Password = s.User, s.Password
	cli := dial(t, cfg)

	ctx := ctxT(t, 10*time.Second)
	if _, err := allocateOne(ctx, cli, "/talkingdata/ipam"); err != nil {
		t.Fatalf("allocate under %s as %s: %v", s.Prefix, s.User, err)
	}
	if n := usedCount(t, s, "/talkingdata/ipam"); n != 1 {
		t.Fatalf("%d used entries, want 1", n)
	}

	err := mustFail(t, "allocate under /other", func(ctx context.Context) error {
		_, err := allocateOne(ctx, cli, "/other")
		return err
	})
	if !errors.Is(err, rpctypes.ErrPermissionDenied) || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("outside the prefix: err = %v, want permission denied", err)
	}
	if n := usedCount(t, s, "/other"); n != 0 {
		t.Errorf("%d used entries under /other", n)
	}
}

func TestAuthWrongPassword(t *testing.T) {
	s := etcdtest.StartSecure(t, etcdtest.SecureOptions{Auth: true})
	cfg := secureConfig(s)
	cfg.Username, cfg.Password = s.User, "not-"+s.Password
	start := time.Now()
	cli, err := etcdstore.Dial(cfg)
	if err == nil {
		cli.Close()
		t.Fatal("Dial with a wrong password succeeded")
	}
	t.Logf("wrong password (after %v): %v", time.Since(start).Round(time.Millisecond), err)
	if !errors.Is(err, rpctypes.ErrAuthFailed) || !strings.Contains(err.Error(), `logging in as etcd user "ipam"`) {
		t.Errorf("err = %v, want authentication failed naming the user", err)
	}
	if strings.Contains(err.Error(), cfg.Password) {
		t.Errorf("the error shows the password: %v", err)
	}

	// No password at all: the client certificate is no identity.
	cfg.Username, cfg.Password = "", ""
	cli = dial(t, cfg)
	err = mustFail(t, "no credentials", func(ctx context.Context) error {
		_, err := allocateOne(ctx, cli, "/talkingdata/ipam")
		return err
	})
	if !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Errorf("err = %v, want permission denied", err)
	}
}

// TestAuthTokenRenewed: etcd 3.4 forgets a token after --auth-token-ttl without calls, and all
// tokens when it restarts. clientv3's own login never recovers from either against etcd 3.4
// (it sends the dead token with Authenticate, which etcd 3.4 refuses); Dial's does.
func TestAuthTokenRenewed(t *testing.T) {
	s := etcdtest.StartSecure(t, etcdtest.SecureOptions{Auth: true, AuthTokenTTL: time.Second})
	cfg := secureConfig(s)
	cfg.Username, cfg.Password = s.User, s.Password
	cli := dial(t, cfg)
	p := pool.New(etcdstore.New(cli, "/talkingdata/ipam"), pool.Config{Host: "h"})
	n := mustNetwork(t, "198.18.0.0/28", "")
	allocate := func(when string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := p.Allocate(ctx, n, netip.Addr{}, pool.Allocation{Kind: pool.KindContainer}); err != nil {
			t.Fatalf("allocate %s: %v", when, err)
		}
	}
	if err := p.Attach(ctxT(t, 5*time.Second), n); err != nil {
		t.Fatal(err)
	}
	allocate("first")
	time.Sleep(3 * time.Second) // etcd 3.4 checks token TTLs every second
	allocate("after the token expired")
	s.Restart(t)
	allocate("after etcd restarted")
	if got := usedCount(t, s, "/talkingdata/ipam"); got != 3 {
		t.Fatalf("%d used entries, want 3", got)
	}
}

// TestAuthUserWithoutEtcdAuth: a username given to an etcd that has auth off is no error.
func TestAuthUserWithoutEtcdAuth(t *testing.T) {
	s := etcdtest.StartSecure(t, etcdtest.SecureOptions{})
	cfg := secureConfig(s)
	cfg.Username, cfg.Password = "ipam", "whatever"
	if _, err := allocateOne(ctxT(t, 10*time.Second), dial(t, cfg), "/talkingdata/ipam"); err != nil {
		t.Fatal(err)
	}
}

// TestAuthDialUnreachable: with a username, Dial tries to log in but still does not make an
// unreachable etcd fatal, so the daemon starts and reconnects by itself.
func TestAuthDialUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	start := time.Now()
	cli, err := etcdstore.Dial(etcdstore.Config{Endpoints: []string{"https://" + addr}, Username: "ipam", Password: "pw",
		DialTimeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatalf("Dial of an unreachable etcd: %v", err)
	}
	defer cli.Close()
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Dial took %v", d)
	}
	err = mustFail(t, "get from an unreachable etcd", func(ctx context.Context) error {
		_, err := cli.Get(ctx, "/k")
		return err
	})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want a deadline", err)
	}
}
