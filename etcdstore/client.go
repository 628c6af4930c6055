package etcdstore

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
)

// How the client finds its way back to etcd. gRPC's defaults back off
// reconnects up to 2 minutes, so a restarted etcd went unnoticed for
// seconds after it answered again; and without keepalive a frozen member
// (SIGSTOP, a hung VM) keeps its TCP connection and is picked forever.
const (
	// One connection attempt (TCP, TLS, HTTP/2 preface) to a host that
	// drops packets or a member that is frozen gives up after this and
	// starts afresh, rather than after gRPC's 20s.
	minConnectTimeout = 2 * time.Second
	// 10s is gRPC's floor for pings (shorter is raised to it), and pings
	// are sent only while a call is open, as etcd's server counts pings
	// on an idle connection as abuse.
	keepAliveTime, keepAliveTimeout = 10 * time.Second, 3 * time.Second
)

// Retrying a refused connection is cheap, so retries are at most 0.8s
// apart; the jitter (±20%) spreads many daemons' retries.
var reconnectBackoff = backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 800 * time.Millisecond}

// Config says how to reach etcd.
type Config struct {
	Endpoints          []string
	CACert, Cert, Key  string // TLS files; any of them turns TLS on
	Username, Password string
	DialTimeout        time.Duration
	// Observe, if set, is told of every etcd call: its gRPC method (such
	// as "/etcdserverpb.KV/Txn"), how long it took and how it ended (nil
	// on success). The daemon's metrics count etcd errors through it.
	Observe func(method string, took time.Duration, err error)
}

// Dial returns a client for cfg. It does not wait for etcd: every call is
// bounded by its own context, so an unreachable etcd turns into errors
// instead of a daemon that cannot start. With a username it tries to log in
// for up to DialTimeout, and fails only if etcd refuses the password.
func Dial(cfg Config) (*clientv3.Client, error) {
	c := clientv3.Config{
		Endpoints:            cfg.Endpoints,
		DialTimeout:          cfg.DialTimeout,
		DialKeepAliveTime:    keepAliveTime,
		DialKeepAliveTimeout: keepAliveTimeout,
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: reconnectBackoff, MinConnectTimeout: minConnectTimeout})},
		// The client's own zap logger is chatty about every reconnect; our
		// errors already name the endpoints.
		Logger: zap.NewNop(),
	}
	if cfg.CACert != "" || cfg.Cert != "" || cfg.Key != "" {
		info := transport.TLSInfo{TrustedCAFile: cfg.CACert, CertFile: cfg.Cert, KeyFile: cfg.Key}
		tc, err := info.ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("loading etcd TLS files: %w", err)
		}
		c.TLS = tc
	}
	if c.TLS == nil {
		for _, ep := range cfg.Endpoints {
			if strings.HasPrefix(ep, "https://") {
				c.TLS = &tls.Config{MinVersion: tls.VersionTLS12}
			}
		}
	}
	if c.TLS != nil && len(cfg.Endpoints) > 0 && strings.HasPrefix(cfg.Endpoints[0], "https://") {
		// The credentials clientv3 would use (it picks them by the first
		// endpoint's scheme), noting why connections fail.
		d := &tlsDiag{TransportCredentials: credentials.NewTLS(c.TLS), last: new(atomic.Pointer[error])}
		c.DialOptions = append(c.DialOptions, grpc.WithTransportCredentials(d), grpc.WithChainUnaryInterceptor(d.unary))
	}
	if cfg.Observe != nil {
		observe := cfg.Observe
		c.DialOptions = append(c.DialOptions, grpc.WithChainUnaryInterceptor(
			func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
				start := time.Now()
				err := invoker(ctx, method, req, reply, cc, opts...)
				observe(method, time.Since(start), err)
				return err
			}))
	}
	var auth *tokenAuth
	if cfg.Username != "" {
		auth = &tokenAuth{user: cfg.Username, password: cfg.Password, lock: make(chan struct{}, 1)}
		c.DialOptions = append(c.DialOptions, grpc.WithPerRPCCredentials(auth), grpc.WithChainUnaryInterceptor(auth.unary))
	}
	cli, err := clientv3.New(c)
	if err != nil {
		return nil, fmt.Errorf("connecting to etcd %s: %w", strings.Join(cfg.Endpoints, ","), err)
	}
	if auth != nil {
		auth.cli = cli
		// Refused credentials fail now; an etcd that does not answer (or
		// fails otherwise) is logged in to by the first call that reaches it.
		if cfg.DialTimeout > 0 {
			ctx, cancel := context.WithTimeout(context.Background(), cfg.DialTimeout)
			defer cancel()
			if err := auth.login(ctx, ""); errors.Is(err, rpctypes.ErrAuthFailed) {
				cli.Close()
				return nil, fmt.Errorf("etcd %s: %w", strings.Join(cfg.Endpoints, ","), err)
			}
		}
	}
	return cli, nil
}
