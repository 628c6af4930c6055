package etcdtest

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// SmallQuota is a flag for Start: a 4 MiB database quota, which Exhaust
// fills in well under a second.
const SmallQuota = "--quota-backend-bytes=4194304"

// fillerKey lies outside every prefix the tests use.
const fillerKey = "/etcdtest/filler"

// Exhaust fills etcd's database with the history of one key, as churn
// without compaction does, until etcd refuses a write for want of space
// and raises its NOSPACE alarm. A compaction and a defragmentation free
// all of it again.
func (s *Server) Exhaust(t testing.TB) {
	t.Helper()
	cli := s.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	value := strings.Repeat("x", 100<<10)
	for {
		_, err := cli.Put(ctx, fillerKey, value)
		switch {
		case errors.Is(err, rpctypes.ErrNoSpace):
			return
		case err != nil:
			t.Fatalf("etcdtest: filling the database: %v", err)
		}
	}
}
