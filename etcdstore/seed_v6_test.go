package etcdstore

import (
	"context"
	"testing"
	"time"

	"github.com/talkingdata/ipam/pool"
)

// TestSeedIPv6AcrossWordBoundary: an IPv6 range whose addresses carry
// into the upper 64 bits is chunked, read back by key range and written
// like an IPv4 one, around keys already there.
func TestSeedIPv6AcrossWordBoundary(t *testing.T) {
	_, s, subnet := seedFixture(t, "2001:db8::/63")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// 8192 addresses: 2 chunks, the first across the boundary at 2048.
	const r = "2001:db8::ffff:ffff:ffff:f800-2001:db8:0:1::17ff"
	set := seedSetOf(t, r)
	present := []uint64{0, 2047, 2048, 4096, 8191}
	for _, i := range present {
		if _, err := s.cli.Put(ctx, s.k.free(subnet, pool.AddrAt(seedRange(t, r), i)), ""); err != nil {
			t.Fatal(err)
		}
	}
	added, err := s.Seed(ctx, subnet, set, nil)
	if err != nil || added != 8192-uint64(len(present)) {
		t.Fatalf("seeded %d, want %d: %v", added, 8192-len(present), err)
	}
	checkSeeded(t, ctx, s, subnet, set, nil)
	if again, err := s.Seed(ctx, subnet, set, nil); err != nil || again != 0 {
		t.Fatalf("re-run seeded %d: %v", again, err)
	}
}
