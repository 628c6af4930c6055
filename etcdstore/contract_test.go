package etcdstore_test

import (
	"testing"

	"github.com/talkingdata/ipam/etcdstore"
	"github.com/talkingdata/ipam/internal/etcdtest"
	"github.com/talkingdata/ipam/pool"
	"github.com/talkingdata/ipam/pool/storetest"
)

// TestStoreContract runs the Store contract on etcdstore against a real
// etcd, each part under its own prefix.
func TestStoreContract(t *testing.T) {
	cli := etcdtest.Start(t).Client(t)
	storetest.Run(t, func(t *testing.T) pool.Store { return etcdstore.New(cli, "/contract/"+t.Name()) })
}
