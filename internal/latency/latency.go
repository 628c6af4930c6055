// Package latency is a TCP proxy on loopback that delays every byte by a fixed one-way delay in
// each direction: the LAN between a Docker host and etcd, for a kernel without netem
// (tools/ipambench's fifty-host phase).
//
// Each read is stamped with the time it arrived and written on once that time plus the delay
// has passed, in order. Reading goes on while earlier chunks wait, so a connection carries as
// much as it would without the proxy, only later (a link with latency, not a slow link), and
// every connection and direction has its own goroutines, so connections never wait for each
// other.
package latency

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

const (
	readSize = 32 << 10
	// queued bounds a direction's chunks in flight: reading pauses when its peer reads slower
	// than this many chunks per delay, as a real link's window would.
	queued      = 256
	dialTimeout = 5 * time.Second
)

// Proxy forwards connections accepted on its loopback address to a target.
type Proxy struct {
	Target string
	Delay  time.Duration // one way, in each direction

	ln                   net.Listener
	toTarget, fromTarget atomic.Int64 // bytes read from each side
	mu                   sync.Mutex
	conns                map[net.Conn]struct{} // both ends of every open connection
	closed               bool
	wg                   sync.WaitGroup
}

// Listen starts a proxy to target on 127.0.0.1 (a free port).
func Listen(target string, delay time.Duration) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("latency proxy to %s: %w", target, err)
	}
	p := &Proxy{Target: target, Delay: delay, ln: ln, conns: map[net.Conn]struct{}{}}
	p.wg.Go(p.accept)
	return p, nil
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Bytes are what the proxy has read so far from the clients (toTarget) and from the target
// (fromTarget), over all connections.
func (p *Proxy) Bytes() (toTarget, fromTarget int64) { return p.toTarget.Load(), p.fromTarget.Load() }

// Close stops accepting, cuts every connection and waits for their goroutines.
func (p *Proxy) Close() error {
	err := p.ln.Close()
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	return err
}

func (p *Proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		p.wg.Go(func() { p.serve(c) })
	}
}

// track adds c to the open connections, or closes it when the proxy is closing.
func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

// serve forwards one connection. The dial is not delayed: a connection's setup is not what is
// measured, and clients keep theirs open.
func (p *Proxy) serve(client net.Conn) {
	if !p.track(client) {
		return
	}
	defer p.untrack(client)
	target, err := net.DialTimeout("tcp", p.Target, dialTimeout)
	if err != nil {
		return // the client sees its connection closed, as with an unreachable peer
	}
	if !p.track(target) {
		return
	}
	defer p.untrack(target)
	var wg sync.WaitGroup
	wg.Go(func() { p.pipe(target, client, &p.toTarget) })
	p.pipe(client, target, &p.fromTarget)
	wg.Wait()
}

type chunk struct {
	due  time.Time
	data []byte
	err  error // the read's error: the last chunk, passed on when due
}

// pipe copies src to dst, each chunk delay after it was read. An EOF is passed on as a
// half-close when due; any other read or write error cuts both connections, so the other
// direction ends too.
func (p *Proxy) pipe(dst, src net.Conn, count *atomic.Int64) {
	chunks := make(chan chunk, queued)
	go func() {
		defer close(chunks)
		buf := make([]byte, readSize)
		for {
			n, err := src.Read(buf)
			c := chunk{due: time.Now().Add(p.Delay), err: err}
			if n > 0 {
				count.Add(int64(n))
				c.data = append([]byte(nil), buf[:n]...)
			}
			chunks <- c
			if err != nil {
				return
			}
		}
	}()
	for c := range chunks {
		sleepUntil(c.due)
		if len(c.data) > 0 {
			if _, err := dst.Write(c.data); err != nil {
				c.err = err
			}
		}
		switch {
		case c.err == nil:
			continue
		case errors.Is(c.err, io.EOF):
			if tc, ok := dst.(*net.TCPConn); ok {
				tc.CloseWrite()
			}
		default:
			src.Close()
			dst.Close()
		}
		for range chunks { // until the reader has seen the close
		}
		return
	}
}
