package etcdstore

import (
	"crypto/tls"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Config says how to reach etcd.
type Config struct {
	Endpoints          []string
	CACert, Cert, Key  string // TLS files; any of them turns TLS on
	Username, Password string
	DialTimeout        time.Duration
}

// Dial returns a client for cfg. It does not wait for etcd: every call is
// bounded by its own context, so an unreachable etcd turns into errors
// instead of a daemon that cannot start.
func Dial(cfg Config) (*clientv3.Client, error) {
	c := clientv3.Config{
		Endpoints:   cfg.Endpoints,
		DialTimeout: cfg.DialTimeout,
		Username:    cfg.Username,
		Password:    cfg.Password,
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
	cli, err := clientv3.New(c)
	if err != nil {
		return nil, fmt.Errorf("connecting to etcd %s: %w", strings.Join(cfg.Endpoints, ","), err)
	}
	return cli, nil
}
