package main

import (
	"fmt"
	"log/slog"
	"net/url"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// The embedded etcd serves where etcdctl and ipamctl look by default.
const (
	embeddedClientURL = "http://127.0.0.1:2379"
	embeddedPeerURL   = "http://127.0.0.1:2380"
)

// embedded is the etcd running inside the daemon.
type embedded struct {
	*embed.Etcd
	stopping *atomic.Bool // set before Close: see etcdLog
}

// Close stops etcd; what it logs while closing is not an error.
func (e embedded) Close() {
	e.stopping.Store(true)
	e.Etcd.Close()
}

// startEmbedded runs a single-member etcd inside the daemon, for
// single-host use with nothing else installed.
func startEmbedded(dir string, log *slog.Logger) (embedded, error) {
	cfg := embed.NewConfig()
	cfg.Dir = dir
	cfg.Name = "talkingdata-ipam"
	client, _ := url.Parse(embeddedClientURL)
	peer, _ := url.Parse(embeddedPeerURL)
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*client}, []url.URL{*client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*peer}, []url.URL{*peer}
	cfg.InitialCluster = cfg.Name + "=" + embeddedPeerURL
	// Every allocation deletes a free key and every release puts one back:
	// without compaction the history of those keys grows forever.
	cfg.AutoCompactionMode = "periodic"
	cfg.AutoCompactionRetention = "1h"
	zl, stopping := newEtcdLog(log)
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zl)
	etcd, err := embed.StartEtcd(cfg)
	if err != nil {
		return embedded{}, fmt.Errorf("starting embedded etcd in %s (is another etcd on %s? then pass --etcd-endpoints): %w", dir, embeddedClientURL, err)
	}
	e := embedded{etcd, stopping}
	select {
	case <-e.Server.ReadyNotify():
		log.Info("embedded etcd ready", "dir", dir, "client", embeddedClientURL)
		return e, nil
	case err := <-e.Err():
		e.Close()
		return embedded{}, fmt.Errorf("embedded etcd in %s: %w", dir, err)
	case <-time.After(time.Minute):
		e.Server.Stop()
		return embedded{}, fmt.Errorf("embedded etcd in %s did not become ready within a minute", dir)
	}
}
