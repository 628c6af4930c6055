package etcdproc_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/talkingdata/ipam/internal/etcdproc"
	"github.com/talkingdata/ipam/internal/etcdtest"
	"github.com/talkingdata/ipam/internal/testproc"
)

// A three-member cluster on loopback comes up healthy, a member stopped and started again
// rejoins it as the member it was, and Stop leaves no member running.
func TestLoopbackCluster(t *testing.T) {
	bin, miss := etcdtest.Binary()
	testproc.Require(t, miss == "", miss)
	c := &etcdproc.Cluster{Bin: bin, Token: "etcdproc-test"}
	if err := c.StartLoopback(context.Background(), t.TempDir(), 3, "http"); err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	eps := c.Endpoints()
	if len(eps) != 3 || !strings.HasPrefix(eps[0], "http://127.0.0.1:") {
		t.Fatalf("Endpoints() = %v", eps)
	}
	hc := &http.Client{Timeout: time.Second}
	c.StopMember(1)
	if etcdproc.Healthy(hc, eps[1]) {
		t.Fatal("member 2 answers after StopMember")
	}
	if !etcdproc.Healthy(hc, eps[0]) {
		t.Fatal("two of three members are no quorum")
	}
	if err := c.StartMember(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	pids := []int{c.Proc(0).Pid(), c.Proc(1).Pid(), c.Proc(2).Pid()}
	c.Stop()
	for _, pid := range pids {
		if testproc.Alive(pid) {
			t.Errorf("pid %d alive after Stop", pid)
		}
	}
}
