package ipam

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/talkingdata/ipam/pool"
)

// TestExplain: every way etcd fails to settle a call within the request's
// time gives the one documented message (OPERATIONS, "Failures and
// recovery"); etcd out of space points at its recovery; other errors pass
// through.
func TestExplain(t *testing.T) {
	d := &Driver{StoreName: "etcd http://198.18.0.21:2379", Timeout: 10 * time.Second}
	const noAnswer = "no answer from etcd http://198.18.0.21:2379 within 10s (--request-timeout)"
	done, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		name string
		ctx  context.Context
		err  error
		want string
	}{
		{"request deadline", done, errors.New("rpc error: code = Canceled"), noAnswer},
		{"a deadline inside", context.Background(), fmt.Errorf("claiming: %w", context.DeadlineExceeded), noAnswer},
		{"transient errors outlived the retries", context.Background(), fmt.Errorf("claiming: %w (gave up after 9 attempts)", fmt.Errorf("%w: etcdserver: leader changed", pool.ErrTransient)), noAnswer},
		{"out of space", context.Background(), fmt.Errorf("updating 198.18.0.5: %w", fmt.Errorf("%w: etcdserver: mvcc: database space exceeded", pool.ErrNoSpace)),
			`etcd http://198.18.0.21:2379 is out of space (its NOSPACE alarm is raised): it refuses every change until an operator makes room; see docs/OPERATIONS.md, "etcd out of space (NOSPACE)"`},
		{"unknown pool", context.Background(), fmt.Errorf("%w: 198.18.0.0/24", pool.ErrUnknownPool), "re-create the Docker network"},
		{"other", context.Background(), fmt.Errorf("%w: 198.18.0.5 is in use", pool.ErrUnavailable), "198.18.0.5 is in use"},
	} {
		if got := d.explain(tc.ctx, tc.err); got == nil || !strings.Contains(got.Error(), tc.want) {
			t.Errorf("%s: explain(%v) = %v; want it to say %q", tc.name, tc.err, got, tc.want)
		}
	}
}
