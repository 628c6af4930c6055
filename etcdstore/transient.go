package etcdstore

import (
	"context"
	"errors"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/talkingdata/ipam/pool"
)

// markedError tells pool what an etcd error means (mark is one of its
// sentinels, pool.ErrTransient or pool.ErrNoSpace) and keeps err's
// message, so an error that ends a request reads as before.
type markedError struct{ err, mark error }

func (e markedError) Error() string        { return e.err.Error() }
func (e markedError) Unwrap() error        { return e.err }
func (e markedError) Is(target error) bool { return target == e.mark }

// marked marks the error of a write: pool.ErrNoSpace when etcd refused it
// for want of space (its NOSPACE alarm is raised, or the write would raise
// it), which it does before applying anything, so the write did not
// commit; else as transient does.
func marked(ctx context.Context, err error) error {
	if errors.Is(err, rpctypes.ErrNoSpace) || errors.Is(err, rpctypes.ErrGRPCNoSpace) {
		return markedError{err, pool.ErrNoSpace}
	}
	return transient(ctx, err)
}

// transient marks err as pool.ErrTransient when it says that the call did
// not reach a leader or that its outcome is unknown: gRPC's Unavailable
// (no connection, a connection lost mid-call, and etcd's own "no leader",
// "leader changed" and "request timed out" errors all carry it), or a
// deadline that is not the caller's (etcd's server gave up on the
// proposal). The caller's own deadline or cancellation is not transient:
// the request is over.
func transient(ctx context.Context, err error) error {
	if err == nil || over(ctx) || !retryable(err) {
		return err
	}
	return markedError{err, pool.ErrTransient}
}

// over says whether the caller's ctx has ended, counting a deadline that
// has passed even if ctx's own timer has not fired yet: a batch's context
// for the same deadline may fire first, and its error is then the caller's.
func over(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	deadline, ok := ctx.Deadline()
	return ok && !time.Now().Before(deadline)
}

func retryable(err error) bool {
	var etcdErr rpctypes.EtcdError
	if errors.As(err, &etcdErr) {
		return etcdErr.Code() == codes.Unavailable
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return true // not the caller's: one attempt's bound (attemptTimeout)
	}
	st, ok := status.FromError(err)
	if !ok {
		return false
	}
	switch st.Code() {
	case codes.Unavailable, codes.DeadlineExceeded:
		return true
	case codes.Unknown:
		// etcd's server answers a proposal it stopped waiting for this way.
		return strings.Contains(st.Message(), context.DeadlineExceeded.Error())
	}
	return false
}

// attemptTimeout bounds one attempt of a call on the allocation path. etcd
// answers such a call in milliseconds; one sent to a member whose leader
// has just died is held until etcd's own request timeout (5 s plus two
// election timeouts: 7 s by default) and then fails, too late for a
// request with 10 s in all. Cut off after 2 s and retried (every caller
// recognises an attempt that did commit), the request reaches the leader
// elected meanwhile, about 1 to 2.5 s after the old one died.
const attemptTimeout = 2 * time.Second

// attempt bounds one call by attemptTimeout (within ctx) and asks that the
// member know a leader: one that has lost it answers at once, so the retry
// need not wait.
func attempt(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(clientv3.WithRequireLeader(ctx), attemptTimeout)
}

// bounded runs call as one attempt (see attempt), tells the frozen-member
// probe of an attempt that timed out, and marks the error for the caller
// (marked: ErrNoSpace, ErrTransient).
func bounded[T any](s *Store, ctx context.Context, call func(context.Context) (T, error)) (T, error) {
	actx, cancel := attempt(ctx)
	defer cancel()
	v, err := call(actx)
	s.timedOut(ctx, err)
	return v, marked(ctx, err)
}

// get and txn are the allocation path's reads and transactions, one
// bounded attempt each.
func (s *Store) get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	return bounded(s, ctx, func(actx context.Context) (*clientv3.GetResponse, error) { return s.cli.Get(actx, key, opts...) })
}

func (s *Store) txn(ctx context.Context, cmps []clientv3.Cmp, then, orElse []clientv3.Op) (*clientv3.TxnResponse, error) {
	return bounded(s, ctx, func(actx context.Context) (*clientv3.TxnResponse, error) {
		return s.cli.Txn(actx).If(cmps...).Then(then...).Else(orElse...).Commit()
	})
}
