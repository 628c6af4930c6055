package pool_test

import (
	"testing"

	"github.com/talkingdata/ipam/pool"
	"github.com/talkingdata/ipam/pool/storetest"
)

// TestStoreContract runs the Store contract on the in-memory store the
// rules' tests use, so that those tests exercise what etcdstore does.
func TestStoreContract(t *testing.T) {
	storetest.Run(t, func(*testing.T) pool.Store { return pool.NewMemStore() })
}
