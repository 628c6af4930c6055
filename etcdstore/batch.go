package etcdstore

import (
	"context"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/talkingdata/ipam/pool"
)

// Every allocation must be a durable etcd write, but not an etcd
// transaction of its own: the claims and swaps this process has in flight
// at the same moment ride in one transaction of nested transactions. Each
// keeps its own compares, so each still succeeds or fails alone, while
// etcd pays one raft entry, one fsync and one apply for the lot.
const (
	// maxBatch nested transactions per transaction. etcd allows 128 ops
	// per level, and a nested transaction gets what its parent leaves:
	// 64 each, far more than a claim's four compares and four reads.
	maxBatch = 64
	// maxInFlight batches are committed at once, so a batch forms while
	// the previous one is on the wire. A lone request goes at once.
	maxInFlight = 2
	// defaultLinger is how long a release dockerd was answered for
	// (pool.MayLinger) waits for another request to ride with: the next
	// container's claim usually follows within it, and the two then cost
	// one raft entry instead of two, the claim no longer queueing behind
	// the release's commit.
	defaultLinger = 2 * time.Millisecond
)

// subTxn is one request's transaction.
type subTxn struct {
	cmps         []clientv3.Cmp
	then, orElse []clientv3.Op
	// writes are the keys then puts or deletes. etcd refuses a
	// transaction whose nested transactions write the same key, so
	// requests sharing one go in different batches.
	writes []string
}

type pendingTxn struct {
	ctx  context.Context
	txn  subTxn
	done chan batchResult // buffered: the flusher never waits for a caller that gave up
}

type batchResult struct {
	resp *pb.TxnResponse
	rev  int64 // the revision the transaction committed at, or read
	err  error
}

// batcher coalesces concurrent subTxns into shared transactions.
type batcher struct {
	kv       clientv3.KV
	timedOut func(context.Context, error) // told of every attempt's error
	mu       sync.Mutex
	queue    []*pendingTxn
	inFlight int
	linger   time.Duration
	lingerer *time.Timer // armed while a lingering request waits for company
}

// do commits t, alone or with others, and returns its own response (its
// Succeeded and the responses of its then or else ops) and the revision
// of the shared transaction. An error means the outcome is unknown, as for
// any failed etcd call, unless it is marked pool.ErrNoSpace (refused for
// want of space: not committed); one worth retrying is marked
// pool.ErrTransient.
func (b *batcher) do(ctx context.Context, t subTxn) (*pb.TxnResponse, int64, error) {
	p := &pendingTxn{ctx: ctx, txn: t, done: make(chan batchResult, 1)}
	b.mu.Lock()
	b.queue = append(b.queue, p)
	switch {
	case !pool.MayLinger(ctx):
		b.start()
	case b.inFlight == 0 && b.lingerer == nil:
		var t *time.Timer
		t = time.AfterFunc(b.linger, func() { b.lingered(&t) })
		b.lingerer = t
	}
	// Else a flush running now, or the timer armed, takes it.
	b.mu.Unlock()
	select {
	case r := <-p.done:
		return r.resp, r.rev, marked(ctx, r.err)
	case <-ctx.Done():
		return nil, 0, ctx.Err()
	}
}

// start starts a flush unless maxInFlight are running; b.mu is held.
func (b *batcher) start() {
	if b.inFlight < maxInFlight && len(b.queue) > 0 {
		b.inFlight++
		go b.flush()
	}
}

// lingered sends what lingering requests no other one took along, unless
// its timer *t was stopped meanwhile (b.lingerer is another or none).
func (b *batcher) lingered(t **time.Timer) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.lingerer != *t {
		return
	}
	b.lingerer = nil
	if b.inFlight == 0 {
		b.start()
	}
}

// flush commits batches until the queue is empty.
func (b *batcher) flush() {
	for {
		batch := b.next()
		if batch == nil {
			return
		}
		b.commit(batch)
	}
}

// next takes up to maxBatch queued requests whose writes do not overlap,
// dropping those whose callers gave up; nil when there are none.
func (b *batcher) next() []*pendingTxn {
	b.mu.Lock()
	defer b.mu.Unlock()
	var batch, rest []*pendingTxn
	written := map[string]bool{}
	for _, p := range b.queue {
		if p.ctx.Err() != nil {
			continue // never sent: the caller's error stands
		}
		if len(batch) == maxBatch || overlaps(written, p.txn.writes) {
			rest = append(rest, p)
			continue
		}
		for _, k := range p.txn.writes {
			written[k] = true
		}
		batch = append(batch, p)
	}
	b.queue = rest
	if len(rest) == 0 && b.lingerer != nil {
		// Nothing waits any more: the next lingering request gets its
		// full linger. A timer that fired already finds nothing to send.
		b.lingerer.Stop()
		b.lingerer = nil
	}
	if len(batch) == 0 {
		b.inFlight--
		return nil
	}
	return batch
}

func overlaps(written map[string]bool, keys []string) bool {
	for _, k := range keys {
		if written[k] {
			return true
		}
	}
	return false
}

func (b *batcher) commit(batch []*pendingTxn) {
	ctx, cancel := batchContext(batch)
	defer cancel()
	if len(batch) == 1 {
		t := batch[0].txn
		r, err := b.kv.Txn(ctx).If(t.cmps...).Then(t.then...).Else(t.orElse...).Commit()
		b.timedOut(batch[0].ctx, err)
		if err != nil {
			batch[0].done <- batchResult{err: err}
			return
		}
		batch[0].done <- batchResult{resp: (*pb.TxnResponse)(r), rev: r.Header.Revision}
		return
	}
	ops := make([]clientv3.Op, len(batch))
	for i, p := range batch {
		ops[i] = clientv3.OpTxn(p.txn.cmps, p.txn.then, p.txn.orElse)
	}
	r, err := b.kv.Txn(ctx).Then(ops...).Commit()
	b.timedOut(batch[0].ctx, err)
	for i, p := range batch {
		if err != nil {
			p.done <- batchResult{err: err}
			continue
		}
		p.done <- batchResult{resp: r.Responses[i].GetResponseTxn(), rev: r.Header.Revision}
	}
}

// batchContext lasts as long as the latest deadline among the requests
// (one caller giving up must not cancel the others' writes), and no longer
// than one attempt (see attempt): each caller retries on its own.
func batchContext(batch []*pendingTxn) (context.Context, context.CancelFunc) {
	end := time.Now().Add(attemptTimeout)
	latest := time.Time{}
	for _, p := range batch {
		d, ok := p.ctx.Deadline()
		if !ok {
			latest = end
			break
		}
		if d.After(latest) {
			latest = d
		}
	}
	if latest.After(end) {
		latest = end
	}
	return context.WithDeadline(clientv3.WithRequireLeader(context.Background()), latest)
}
