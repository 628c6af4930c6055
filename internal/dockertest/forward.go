package dockertest

import (
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/talkingdata/ipam/internal/testproc"
)

const forwardDialTimeout = 5 * time.Second

// Forward makes target (host:port, reachable from the test's network namespace, such as an
// etcdtest server on loopback) reachable from inside dockerd's network namespace, where a
// managed plugin with host networking runs. It listens on a free 127.0.0.1 port there and
// copies each connection to target; it returns that address and stops when the test ends.
func (d *Daemon) Forward(t testing.TB, target string) string {
	t.Helper()
	var l net.Listener
	if err := testproc.InNetNS(d.netnsPath(), func() (err error) {
		l, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatalf("dockertest: listening in netns %s: %v", d.netns, err)
	}
	serve(t, l, func() (net.Conn, error) { return net.DialTimeout("tcp", target, forwardDialTimeout) })
	return l.Addr().String()
}

// Expose is Forward the other way: it makes target (host:port inside dockerd's network
// namespace, such as a tcp:// listener of dockerd's own) reachable from the test's, on a free
// 127.0.0.1 port there, and returns that address.
func (d *Daemon) Expose(t testing.TB, target string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("dockertest: %v", err)
	}
	serve(t, l, func() (c net.Conn, err error) {
		// The socket stays in the namespace it was made in.
		err = testproc.InNetNS(d.netnsPath(), func() (err error) {
			c, err = net.DialTimeout("tcp", target, forwardDialTimeout)
			return err
		})
		return c, err
	})
	return l.Addr().String()
}

func (d *Daemon) netnsPath() string { return filepath.Join("/run/netns", d.netns) }

// serve pipes each connection l accepts to a new one from dial, until the test ends.
func serve(t testing.TB, l net.Listener, dial func() (net.Conn, error)) {
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return // closed at cleanup
			}
			go pipe(c, dial)
		}
	}()
}

// pipe copies between c and a new connection from dial until either side closes.
func pipe(c net.Conn, dial func() (net.Conn, error)) {
	defer c.Close()
	u, err := dial()
	if err != nil {
		return // c closes: the client sees the refusal as a dropped connection
	}
	defer u.Close()
	done := make(chan struct{}, 2)
	go func() { io.Copy(u, c); done <- struct{}{} }()
	go func() { io.Copy(c, u); done <- struct{}{} }()
	<-done
}
