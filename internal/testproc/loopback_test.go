package testproc

import "testing"

// TestLoopbackAddrNeverRepeats: the kernel offers closed ports again, and an etcd member given
// one port for both its URLs failed to start (etcdstore's TestLeaderKillFailsNoRequest).
func TestLoopbackAddrNeverRepeats(t *testing.T) {
	seen := map[string]bool{}
	for range 2000 {
		addr := FreeLoopbackAddr(t)
		if seen[addr] {
			t.Fatalf("%s handed out twice", addr)
		}
		seen[addr] = true
	}
}
