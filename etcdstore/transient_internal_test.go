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
