package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

const authenticateMethod = "/etcdserverpb.Auth/Authenticate"

// tokenAuth logs in to etcd in place of clientv3's Username/Password.
// clientv3 sends its old token along with the Authenticate call that is
// to replace it, and etcd 3.4 refuses any request with an unknown token:
// once the token expires (after --auth-token-ttl, 5 minutes, without a
// call) or etcd restarts, that client never gets a new one. Here
// Authenticate carries no token, and a call refused for its token logs in
// again and is retried once.
type tokenAuth struct {
	user, password string
	cli            *clientv3.Client
	lock           chan struct{} // held while logging in; a channel so waiting honours ctx

	mu     sync.Mutex
	token  string
	noAuth bool // etcd said auth is off: do not log in before every call
}

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (a *tokenAuth) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	if ri, ok := credentials.RequestInfoFromContext(ctx); ok && ri.Method == authenticateMethod {
		return nil, nil
	}
	if tok, _ := a.current(); tok != "" {
		return map[string]string{rpctypes.TokenFieldNameGRPC: tok}, nil
	}
	return nil, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials:
// plain http:// endpoints keep working, as with clientv3's own login.
func (a *tokenAuth) RequireTransportSecurity() bool { return false }

func (a *tokenAuth) current() (token string, noAuth bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.token, a.noAuth
}

// login gets a new token unless the one that failed, stale, has already
// been replaced.
func (a *tokenAuth) login(ctx context.Context, stale string) error {
	select {
	case a.lock <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("logging in as etcd user %q: %w", a.user, ctx.Err())
	}
	defer func() { <-a.lock }()
	if tok, _ := a.current(); tok != stale {
		return nil
	}
	resp, err := a.cli.Auth.Authenticate(ctx, a.user, a.password)
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case errors.Is(err, rpctypes.ErrAuthNotEnabled):
		a.token, a.noAuth = "", true
		return nil
	case err != nil:
		return fmt.Errorf("logging in as etcd user %q: %w", a.user, err)
	}
	a.token, a.noAuth = resp.Token, false
	return nil
}

func (a *tokenAuth) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if method == authenticateMethod {
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	tok, noAuth := a.current()
	if tok == "" && !noAuth {
		if err := a.login(ctx, ""); err != nil {
			return err
		}
		tok, _ = a.current()
	}
	err := invoker(ctx, method, req, reply, cc, opts...)
	if e := rpctypes.Error(err); errors.Is(e, rpctypes.ErrInvalidAuthToken) || errors.Is(e, rpctypes.ErrAuthOldRevision) || errors.Is(e, rpctypes.ErrUserEmpty) {
		if err := a.login(ctx, tok); err != nil {
			return err
		}
		err = invoker(ctx, method, req, reply, cc, opts...)
	}
	return err
}
