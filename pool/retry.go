package pool

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// Pacing of attempts after a transient store error (ErrTransient). An etcd
// election takes about a second and dockerd does not retry a failed
// request, so the request tries again within its own deadline: soon at
// first, then at most every half second, jittered so that the requests one
// election failed together do not return together.
const (
	minRetryDelay = 50 * time.Millisecond
	maxRetryDelay = 500 * time.Millisecond
	// retryWindow bounds the retries of a request whose ctx has no deadline.
	retryWindow = 10 * time.Second
)

// retrier paces one request's attempts after transient errors. Only calls
// that are safe to repeat when an earlier attempt may have committed use
// it: see Allocate and Release.
type retrier struct {
	failed int // attempts that failed with a transient error
	last   error
	delay  time.Duration
	start  time.Time
}

// again reports whether to try once more after err, having waited: err is
// transient and ctx leaves time for another attempt.
func (r *retrier) again(ctx context.Context, err error) bool {
	if !errors.Is(err, ErrTransient) {
		return false
	}
	r.failed++
	r.last = err
	if r.start.IsZero() {
		r.start = time.Now()
	}
	r.delay = min(max(2*r.delay, minRetryDelay), maxRetryDelay)
	wait := r.delay/2 + rand.N(r.delay)
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = r.start.Add(retryWindow)
	}
	if time.Until(deadline) < wait {
		return false // an attempt cut off by the deadline would hide err
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// giveUp is the error that ends the request: err, with how many attempts
// failed and, if err is not the last transient error, that one too.
func (r *retrier) giveUp(err error) error {
	switch {
	case err == nil || r.failed == 0:
		return err
	case err == r.last:
		return fmt.Errorf("%w (gave up after %d attempts)", err, r.failed)
	}
	return fmt.Errorf("%w (after %d attempts that failed with: %v)", err, r.failed, r.last)
}

// retried calls call until it succeeds, fails for good, or r gives up.
// Only calls that are safe to repeat use it: reads, and changes that
// recognise their own earlier attempt.
func retried[T any](ctx context.Context, r *retrier, call func() (T, error)) (T, error) {
	for {
		v, err := call()
		if err == nil || !r.again(ctx, err) {
			return v, r.giveUp(err)
		}
	}
}

// retriedFound is retried for a call that also says whether it found
// what it looked for (Meta, Binding).
func retriedFound[T any](ctx context.Context, r *retrier, call func() (T, bool, error)) (T, bool, error) {
	type found struct {
		v  T
		ok bool
	}
	f, err := retried(ctx, r, func() (found, error) {
		v, ok, err := call()
		return found{v, ok}, err
	})
	return f.v, f.ok, err
}

// newOpID names one change to a counted record or a reference count, the
// same across its attempts: 64 random bits.
func newOpID() string { return fmt.Sprintf("%016x", rand.Uint64()) }
