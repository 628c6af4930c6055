package lab

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/talkingdata/ipam/internal/etcdproc"
	"github.com/talkingdata/ipam/internal/testproc"
)

// status prints each component of the lab and whether it is alive; false if any is not.
func (l *Lab) status(w io.Writer) bool {
	state := "ready"
	if _, err := os.Stat(filepath.Join(l.Dir, "ready")); err != nil {
		state = "incomplete (up unfinished or failed)"
	}
	if _, up := livePid(filepath.Join(l.Dir, "up.pid")); up {
		state = "coming up (up is running)"
	}
	fmt.Fprintf(w, "lab %s  %s  %s\n", l.ID, l.Dir, state)
	ok := state == "ready"
	row := func(good bool, name, state, detail string) {
		fmt.Fprintf(w, "  %-10s %-6s %s\n", name, state, detail)
		ok = ok && good
	}

	sw := l.ns("sw")
	if addrs, err := l.TryNode("sw", "ip", "-br", "addr", "show", "router"); err == nil && strings.Contains(addrs, router.String()+"/") {
		row(true, "switch", "up", "netns "+sw+", router "+router.String())
	} else {
		row(false, "switch", "DOWN", "netns "+sw+": no router address")
	}
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: l.DialContext}}
	for k, ep := range l.Etcd() {
		name := "etcd" + strconv.Itoa(k+1)
		pid, alive := testproc.PidFile(l.etcdPidFile(k + 1))
		switch {
		case !alive:
			row(false, name, "DEAD", "log "+filepath.Join(l.Dir, name, "etcd.log"))
		case etcdproc.Healthy(hc, ep):
			row(true, name, "alive", fmt.Sprintf("pid %d, %s healthy", pid, ep))
		default:
			row(false, name, "alive", fmt.Sprintf("pid %d, %s UNHEALTHY", pid, ep))
		}
	}
	for k := 1; k <= l.hosts; k++ {
		h := "h" + strconv.Itoa(k)
		if addrs, err := l.TryNode(h, "ip", "-4", "-br", "addr", "show", "up"); err == nil {
			var nics []string
			for _, line := range strings.Split(addrs, "\n") {
				if f := strings.Fields(line); len(f) > 2 && f[0] != "lo" {
					nics = append(nics, strings.Split(f[0], "@")[0]+" "+strings.Join(f[2:], " "))
				}
			}
			row(true, h, "up", "netns "+l.ns(h)+", "+strings.Join(nics, ", "))
		} else {
			row(false, h, "DOWN", "no netns "+l.ns(h))
		}
		pid, alive := testproc.PidFile(l.pluginPidFile(k))
		fi, err := os.Stat(l.PluginSocket(k))
		switch {
		case !alive:
			row(false, h+"/plugin", "DEAD", "log "+filepath.Join(l.hostDir(k), "plugin.log"))
		case err == nil && fi.Mode().Type() == os.ModeSocket:
			row(true, h+"/plugin", "alive", fmt.Sprintf("pid %d, socket ok", pid))
		default:
			row(false, h+"/plugin", "alive", fmt.Sprintf("pid %d, NO SOCKET", pid))
		}
		pid, alive = testproc.PidFile(filepath.Join(l.hostDir(k), "dockerd.pid"))
		if !alive {
			row(false, h+"/dockerd", "DEAD", "log "+filepath.Join(l.hostDir(k), "dockerd.log"))
		} else if v := l.dockerVersion(k, 3*time.Second); v != "" {
			row(true, h+"/dockerd", "alive", fmt.Sprintf("pid %d, %s, %s", pid, l.DockerHost(k), v))
		} else {
			row(false, h+"/dockerd", "alive", fmt.Sprintf("pid %d, %s, NOT ANSWERING", pid, l.DockerHost(k)))
		}
	}
	return ok
}
