package main

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// pluginDir is where dockerd looks for legacy plugin sockets.
const pluginDir = "/run/docker/plugins"

// maxConns caps the plugin socket's open connections. dockerd holds a few
// (one per call in flight, two kept idle); a burst of container starts
// reaches tens.
const maxConns = 128

// socketPath resolves --socket: a bare name means pluginDir/NAME.sock.
func socketPath(s string) string {
	if strings.ContainsRune(s, '/') {
		return s
	}
	return filepath.Join(pluginDir, strings.TrimSuffix(s, ".sock")+".sock")
}

// listen creates the plugin socket, mode 0660 for root and group.
func listen(socket, group string) (net.Listener, string, error) {
	path := socketPath(socket)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, path, fmt.Errorf("creating socket directory: %w", err)
	}
	if err := removeStale(path); err != nil {
		return nil, path, err
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, path, fmt.Errorf("listening on %s: %w", path, err)
	}
	gid := -1
	if g, err := user.LookupGroup(group); err == nil {
		gid, _ = strconv.Atoi(g.Gid)
	}
	if err := os.Chown(path, 0, gid); err != nil {
		l.Close()
		return nil, path, fmt.Errorf("setting owner of %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		l.Close()
		return nil, path, fmt.Errorf("setting mode of %s: %w", path, err)
	}
	return l, path, nil
}

// removeStale deletes a socket left by a dead daemon. It refuses to touch
// anything that is not a socket (a symlink included), and a socket that
// still answers: that is another running daemon.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("checking %s: %w", path, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket (%s); remove it or choose another --socket", path, fi.Mode().Type())
	}
	if conn, err := net.DialTimeout("unix", path, time.Second); err == nil {
		conn.Close()
		return fmt.Errorf("%s is in use by a running daemon; stop it first", path)
	}
	return os.Remove(path)
}

// limitConns lets at most n of l's connections be open at once. Beyond
// that, new connections wait in the socket's backlog until one closes,
// rather than being refused: dockerd does not send a failed call again,
// so a burst is better late than failed, and ipam.Server closes every
// connection within --request-timeout, so the wait is bounded.
func limitConns(l net.Listener, n int) net.Listener {
	return &limitListener{Listener: l, slots: make(chan struct{}, n)}
}

type limitListener struct {
	net.Listener
	slots chan struct{}
}

func (l *limitListener) Accept() (net.Conn, error) {
	l.slots <- struct{}{}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.slots
		return nil, err
	}
	return &limitConn{Conn: c, free: sync.OnceFunc(func() { <-l.slots })}, nil
}

// limitConn frees its slot on the first Close; net/http may close twice.
type limitConn struct {
	net.Conn
	free func()
}

func (c *limitConn) Close() error {
	defer c.free()
	return c.Conn.Close()
}
