package latency

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"
)

// echo is a TCP echo server on loopback; a half-close from the client ends its side.
func echo(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

func proxy(t *testing.T, delay time.Duration) *Proxy {
	t.Helper()
	p, err := Listen(echo(t), delay)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip sends one byte and waits for its echo.
func roundTrip(t *testing.T, c net.Conn) time.Duration {
	start := time.Now()
	if _, err := c.Write([]byte{1}); err != nil {
		t.Error(err)
		return 0
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Error(err)
		return 0
	}
	return time.Since(start)
}

// TestRoundTrip: a request and its answer each cross the delay once, and the delay is kept
// to within a fraction of a millisecond (Go's own timers would add about 1ms each way).
func TestRoundTrip(t *testing.T) {
	for _, delay := range []time.Duration{250 * time.Microsecond, 2 * time.Millisecond, 20 * time.Millisecond} {
		c := dial(t, proxy(t, delay).Addr())
		roundTrip(t, c) // connects
		var rtts []time.Duration
		for range 50 {
			rtts = append(rtts, roundTrip(t, c))
		}
		slices.Sort(rtts)
		if rtts[0] < 2*delay {
			t.Errorf("delay %s: fastest round trip %s, want at least %s", delay, rtts[0], 2*delay)
		}
		p50 := rtts[len(rtts)/2]
		t.Logf("delay %s: round trip min %s p50 %s max %s", delay, rtts[0], p50, rtts[len(rtts)-1])
		if p50 > 2*delay+time.Millisecond {
			t.Errorf("delay %s: round trip p50 %s, more than 1ms over %s", delay, p50, 2*delay)
		}
	}
}

// TestParallelConnections: connections wait out their delays side by side, not in turn.
func TestParallelConnections(t *testing.T) {
	const delay, conns = 50 * time.Millisecond, 20
	p := proxy(t, delay)
	cs := make([]net.Conn, conns)
	for i := range cs {
		cs[i] = dial(t, p.Addr())
	}
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Go(func() { roundTrip(t, c) }) // the proxy has dialled the target
	}
	wg.Wait()
	start := time.Now()
	for _, c := range cs {
		wg.Go(func() { roundTrip(t, c) })
	}
	wg.Wait()
	// In turn they would take conns × 2 × delay = 2s.
	if took := time.Since(start); took < 2*delay || took > 4*delay {
		t.Errorf("%d parallel round trips took %s, want about %s", conns, took, 2*delay)
	}
}

// TestThroughput: 8 MiB each way, in order and intact, take far less than one delay per chunk
// read (256 and more), and the byte counts say so.
func TestThroughput(t *testing.T) {
	const delay, size = 50 * time.Millisecond, 8 << 20
	p := proxy(t, delay)
	c := dial(t, p.Addr())
	data := make([]byte, size)
	rand.Read(data)
	start := time.Now()
	go func() {
		c.Write(data)
		c.(*net.TCPConn).CloseWrite() // the echo's EOF, passed on when due
	}()
	got, err := io.ReadAll(c)
	took := time.Since(start)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("echo of %d bytes: got %d bytes, equal %v, %v", size, len(got), bytes.Equal(got, data), err)
	}
	if took > 20*delay {
		t.Errorf("%d bytes through a %s link took %s: the delay limits throughput", size, delay, took)
	}
	if up, down := p.Bytes(); up != size || down != size {
		t.Errorf("bytes counted %d to the target, %d from it, want %d each", up, down, size)
	}
	t.Logf("%d MiB each way in %s", size>>20, took)
}

// TestClose: Close cuts open connections and returns.
func TestClose(t *testing.T) {
	p := proxy(t, time.Millisecond)
	c := dial(t, p.Addr())
	roundTrip(t, c)
	done := make(chan struct{})
	go func() { p.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return")
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("connection still open after Close")
	}
}
