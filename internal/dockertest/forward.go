package dockertest

import (
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/talkingdata/ipam/internal/testproc"
)

// Forward makes target (host:port, reachable from the test's network namespace, such as an
// etcdtest server on loopback) reachable from inside dockerd's network namespace, where a
// managed plugin with host networking runs. It listens on a free 127.0.0.1 port there and
// copies each connection to target; it returns that address and stops when the test ends.
func (d *Daemon) Forward(t testing.TB, target string) string {
	t.Helper()
	var l net.Listener
	if err := testproc.InNetNS(filepath.Join("/run/netns", d.netns), func() (err error) {
		l, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatalf("dockertest: listening in netns %s: %v", d.netns, err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return // closed at cleanup
			}
			go pipe(c, target)
		}
	}()
	return l.Addr().String()
}

// pipe copies between c and a new connection to target until either side closes.
func pipe(c net.Conn, target string) {
	defer c.Close()
	u, err := net.DialTimeout("tcp", target, 5*time.Second)
	if err != nil {
		return // c closes: the client sees the refusal as a dropped connection
	}
	defer u.Close()
	done := make(chan struct{}, 2)
	go func() { io.Copy(u, c); done <- struct{}{} }()
	go func() { io.Copy(c, u); done <- struct{}{} }()
	<-done
}
