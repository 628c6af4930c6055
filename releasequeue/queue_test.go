package releasequeue

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/talkingdata/ipam/pool"
)

// answer is a Releaser that answers every release alike, and, for one
// kind of address, checks what the file holds while the release is tried.
type answer struct {
	released bool
	err      error
	during   func()
}

func (a answer) ReleasePending(context.Context, pool.Pending) (bool, error) {
	if a.during != nil {
		a.during()
	}
	return a.released, a.err
}

// TestApply: what happens to a kept release after an attempt, for a
// container (safe to repeat) and a shared address (applied at most once:
// out of the file while tried), and that the file tells a restarted
// daemon the same.
func TestApply(t *testing.T) {
	noSpace := fmt.Errorf("updating: %w", pool.ErrNoSpace)
	transient := fmt.Errorf("updating: %w", pool.ErrTransient)
	for _, tc := range []struct {
		name       string
		kind       pool.Kind
		released   bool
		err        error
		kept, full bool
	}{
		{"container, still no space", pool.KindContainer, false, noSpace, true, true},
		{"container, no answer", pool.KindContainer, false, transient, true, false},
		{"container, applied", pool.KindContainer, true, nil, false, false},
		{"container, record gone", pool.KindContainer, false, nil, false, false},
		{"container, refused", pool.KindContainer, false, pool.ErrUnavailable, false, false},
		{"gateway, still no space", pool.KindGateway, false, noSpace, true, true},
		{"gateway, no answer", pool.KindGateway, false, transient, false, false},
		{"gateway, applied", pool.KindGateway, true, nil, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			log := slog.New(slog.NewTextHandler(io.Discard, nil))
			r := pool.Pending{Subnet: netip.MustParsePrefix("198.18.0.0/24"), Addr: netip.MustParseAddr("198.18.0.7"),
				Record: pool.Allocation{Kind: tc.kind, Host: "h1", Since: time.Now().UTC()}}
			var onFile int
			during := func() {
				again, err := Open(dir, nil, time.Second, log)
				if err != nil {
					t.Fatal(err)
				}
				onFile = again.Len()
			}
			q, err := Open(dir, answer{tc.released, tc.err, during}, time.Second, log)
			if err != nil {
				t.Fatal(err)
			}
			if err := q.Add(r); err != nil {
				t.Fatal(err)
			}
			if full := q.pass(context.Background()); full != tc.full {
				t.Errorf("pass reported full=%v, want %v", full, tc.full)
			}
			if want := map[bool]int{true: 0, false: 1}[tc.kind != pool.KindContainer]; onFile != want {
				t.Errorf("%d releases on file while it was tried, want %d", onFile, want)
			}
			again, err := Open(dir, nil, time.Second, log)
			if err != nil {
				t.Fatal(err)
			}
			want := map[bool]int{true: 1, false: 0}[tc.kept]
			if q.Len() != want || again.Len() != want {
				t.Fatalf("kept %d, on file %d; want %d", q.Len(), again.Len(), want)
			}
			if want == 1 && !again.items[0].Record.Since.Equal(r.Record.Since) {
				t.Fatalf("read back %+v, want %+v", again.items[0], r)
			}
		})
	}
}

// TestOpenRefusesGarbage: a file that is not the queue stops the daemon
// rather than being overwritten with fewer releases.
func TestOpenRefusesGarbage(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, FileName), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, nil, time.Second, slog.New(slog.NewTextHandler(io.Discard, nil))); err == nil {
		t.Fatal("Open accepted a malformed file")
	}
}
