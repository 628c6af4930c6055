package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
)

// tlsDiag remembers why the last TLS connection to etcd failed before etcd
// answered: a wrong CA, or etcd refusing our client certificate. gRPC only
// tells a call waiting for a connection that its deadline passed.
type tlsDiag struct {
	credentials.TransportCredentials
	last *atomic.Pointer[error] // shared with clones
}

func (d *tlsDiag) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := d.TransportCredentials.ClientHandshake(ctx, authority, raw)
	if err != nil {
		if ctx.Err() == nil { // not gRPC giving up on the attempt
			d.last.Store(&err)
		}
		return nil, nil, err
	}
	return &diagConn{Conn: conn, d: d}, info, nil
}

func (d *tlsDiag) Clone() credentials.TransportCredentials {
	return &tlsDiag{TransportCredentials: d.TransportCredentials.Clone(), last: d.last}
}

// unary adds the last TLS failure to a call that ran out of time.
func (d *tlsDiag) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	err := invoker(ctx, method, req, reply, cc, opts...)
	last := d.last.Load()
	var told *tlsFailure // by the login within this call
	if err == nil || ctx.Err() == nil || last == nil || errors.As(err, &told) {
		return err
	}
	if c := status.Code(err); c == codes.DeadlineExceeded || c == codes.Canceled {
		// Not a gRPC status any more: clientv3 would replace one that
		// says DeadlineExceeded with the bare ctx.Err().
		err = ctx.Err()
	}
	return &tlsFailure{err, *last}
}

type tlsFailure struct{ err, cause error }

func (e *tlsFailure) Error() string {
	return fmt.Sprintf("%v (the TLS connection to etcd failed: %v)", e.err, e.cause)
}

func (e *tlsFailure) Unwrap() error { return e.err }

// diagConn records a read error that ends a TLS connection before etcd
// said anything: with TLS 1.3, etcd refuses a client certificate only
// after the client's side of the handshake is done.
type diagConn struct {
	net.Conn
	d        *tlsDiag
	answered bool // only gRPC's reader goroutine reads
}

func (c *diagConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	switch {
	case c.answered:
	case n > 0:
		c.answered = true
		c.d.last.Store(nil)
	case err != nil && !errors.Is(err, net.ErrClosed): // not gRPC closing it
		c.d.last.Store(&err)
	}
	return n, err
}
