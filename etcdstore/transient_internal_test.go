package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/talkingdata/ipam/pool"
)

// TestRetryable: what marks an etcd error as pool.ErrTransient (a call that
// did not reach a leader, or whose outcome is unknown), and what does not.
func TestRetryable(t *testing.T) {
	live := context.Background()
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	passed, cancel2 := context.WithDeadline(context.Background(), time.Now().Add(-time.Millisecond))
	defer cancel2()
	for _, tc := range []struct {
		name      string
		ctx       context.Context
		err       error
		transient bool
	}{
		{"unavailable", live, status.Error(codes.Unavailable, "error reading from server: EOF"), true},
		{"request timed out", live, rpctypes.ErrGRPCTimeout, true},
		{"leader changed", live, rpctypes.ErrGRPCLeaderChanged, true},
		{"no leader", live, rpctypes.ErrGRPCNoLeader, true},
		{"request timed out, client side", live, rpctypes.ErrTimeout, true},
		{"server gave up on the proposal", live, status.Error(codes.Unknown, "context deadline exceeded"), true},
		{"a batch's own bound", live, fmt.Errorf("claim: %w", context.DeadlineExceeded), true},
		{"caller cancelled", ended, status.Error(codes.Unavailable, "EOF"), false},
		{"caller's deadline passed", passed, context.DeadlineExceeded, false},
		{"refused by etcd", live, rpctypes.ErrGRPCCompacted, false},
		{"other unknown", live, status.Error(codes.Unknown, "something else"), false},
		{"not from etcd", live, errors.New("malformed owner index"), false},
	} {
		if got := errors.Is(transient(tc.ctx, tc.err), pool.ErrTransient); got != tc.transient {
			t.Errorf("%s: transient(%v) = %v, want %v", tc.name, tc.err, got, tc.transient)
		}
	}
}

// TestMarked: a write etcd refused for want of space is pool.ErrNoSpace,
// whether the client turned etcd's answer into its own error or not, and
// never transient; other errors are marked as transient marks them.
func TestMarked(t *testing.T) {
	live := context.Background()
	for _, tc := range []struct {
		name string
		err  error
		want error
	}{
		{"nospace, client side", rpctypes.ErrNoSpace, pool.ErrNoSpace},
		{"nospace, as sent", rpctypes.ErrGRPCNoSpace, pool.ErrNoSpace},
		{"nospace, wrapped", fmt.Errorf("swap: %w", rpctypes.ErrNoSpace), pool.ErrNoSpace},
		{"unavailable", rpctypes.ErrGRPCNoLeader, pool.ErrTransient},
	} {
		got := marked(live, tc.err)
		if !errors.Is(got, tc.want) || got.Error() != tc.err.Error() {
			t.Errorf("%s: marked(%v) = %v, want it marked %v with the same message", tc.name, tc.err, got, tc.want)
		}
		if tc.want == pool.ErrNoSpace && errors.Is(got, pool.ErrTransient) {
			t.Errorf("%s: marked(%v) is transient", tc.name, tc.err)
		}
	}
}
