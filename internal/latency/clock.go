package latency

import (
	"container/heap"
	"encoding/binary"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Go's timers wait in epoll with a timeout in whole milliseconds when the process has nothing
// else to do, so time.Sleep(250µs) takes about 1.1ms here: a 250µs link would be measured as a
// 1ms one. sleepUntil instead parks the caller until one OS thread, its timer slack set to 1ns,
// wakes in ppoll (a nanosecond timeout) at the earliest due time; an eventfd brings it back
// when an earlier time is added. The overshoot is then the thread's wake-up, tens of µs.

type waiter struct {
	due  time.Time
	wake chan struct{}
}

type waiters []waiter

func (w waiters) Len() int           { return len(w) }
func (w waiters) Less(i, j int) bool { return w[i].due.Before(w[j].due) }
func (w waiters) Swap(i, j int)      { w[i], w[j] = w[j], w[i] }
func (w *waiters) Push(x any)        { *w = append(*w, x.(waiter)) }
func (w *waiters) Pop() any {
	old := *w
	x := old[len(old)-1]
	*w = old[:len(old)-1]
	return x
}

var clock struct {
	once    sync.Once
	mu      sync.Mutex
	pending waiters
	efd     int
	err     error // no eventfd: sleepUntil falls back to time.Sleep
}

// sleepUntil returns at due or shortly after.
func sleepUntil(due time.Time) {
	if time.Until(due) <= 0 {
		return
	}
	clock.once.Do(startClock)
	if clock.err != nil {
		time.Sleep(time.Until(due))
		return
	}
	w := waiter{due: due, wake: make(chan struct{})}
	clock.mu.Lock()
	heap.Push(&clock.pending, w)
	first := clock.pending[0].wake == w.wake
	clock.mu.Unlock()
	if first {
		var one [8]byte
		binary.NativeEndian.PutUint64(one[:], 1)
		unix.Write(clock.efd, one[:]) // cannot fail short of 2^64-1 pokes unread
	}
	<-w.wake
}

func startClock() {
	clock.efd, clock.err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if clock.err == nil {
		go runClock()
	}
}

// runClock owns its thread for good: the slack setting is the thread's.
func runClock() {
	runtime.LockOSThread()
	unix.Prctl(unix.PR_SET_TIMERSLACK, 1, 0, 0, 0) // best effort: default slack is 50µs
	fds := []unix.PollFd{{Fd: int32(clock.efd), Events: unix.POLLIN}}
	var buf [8]byte
	for {
		clock.mu.Lock()
		now := time.Now()
		for len(clock.pending) > 0 && !clock.pending[0].due.After(now) {
			close(heap.Pop(&clock.pending).(waiter).wake)
		}
		var timeout *unix.Timespec
		if len(clock.pending) > 0 {
			ts := unix.NsecToTimespec(int64(clock.pending[0].due.Sub(now)))
			timeout = &ts
		}
		clock.mu.Unlock()
		// EINTR and the like only make the loop look again.
		if n, _ := unix.Ppoll(fds, timeout, nil); n > 0 {
			unix.Read(clock.efd, buf[:])
		}
	}
}
