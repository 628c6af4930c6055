package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc/status"

	"github.com/talkingdata/ipam/etcdstore"
	"github.com/talkingdata/ipam/pool"
	"github.com/talkingdata/ipam/releasequeue"
)

// healthTimeout bounds /healthz's etcd read: a probe must answer, not hang.
const healthTimeout = 2 * time.Second

// metrics are the daemon's Prometheus metrics (docs/OPERATIONS.md,
// "Metrics and health").
type metrics struct {
	reg      *prometheus.Registry
	calls    *prometheus.HistogramVec
	inFlight prometheus.Gauge
	etcd     *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		calls: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "talkingdata_plugin_call_duration_seconds",
			Help:    "Plugin calls from dockerd by method (RequestAddress, ReleaseAddress, …) and result (ok or error).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"method", "result"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "talkingdata_plugin_calls_in_flight",
			Help: "Plugin calls being answered now.",
		}),
		etcd: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "talkingdata_etcd_requests_total",
			Help: "etcd calls by gRPC method (Txn, Range, …) and status code (OK, Unavailable, DeadlineExceeded, …); the client retries some of them itself.",
		}, []string{"method", "code"}),
	}
	m.reg.MustRegister(m.calls, m.inFlight, m.etcd, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// observeEtcd is etcdstore.Config.Observe.
func (m *metrics) observeEtcd(method string, _ time.Duration, err error) {
	m.etcd.WithLabelValues(method[strings.LastIndex(method, "/")+1:], status.Code(err).String()).Inc()
}

// instrument times every plugin call. An error answer is status 500 with
// {"Err": …}, as dockerd expects.
func (m *metrics) instrument(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m.inFlight.Inc()
		defer m.inFlight.Dec()
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		h.ServeHTTP(sw, r)
		result := "ok"
		if sw.status != http.StatusOK {
			result = "error"
		}
		m.calls.WithLabelValues(strings.TrimPrefix(r.URL.Path, "/IpamDriver."), result).Observe(time.Since(start).Seconds())
	})
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

// poolCollector reports the pools this daemon allocates from, as its
// watch-fed free-set copies see them: a scrape costs etcd nothing.
type poolCollector struct {
	store *etcdstore.Store
	size  *prometheus.Desc
	addrs *prometheus.Desc
	loads *prometheus.Desc
}

func newPoolCollector(store *etcdstore.Store) *poolCollector {
	return &poolCollector{
		store: store,
		size:  prometheus.NewDesc("talkingdata_pool_size", "Addresses seeded into the pool (its ranges).", []string{"pool"}, nil),
		addrs: prometheus.NewDesc("talkingdata_pool_addresses", "The pool's seeded addresses by state, adding up to talkingdata_pool_size: free, delayed (released, in their reuse delay) and held (neither: used by any kind). ipamctl pool ls USED also counts used addresses outside the seeded ranges, such as a router.",
			[]string{"pool", "state"}, nil),
		loads: prometheus.NewDesc("talkingdata_pool_copy_loads_total", "Whole-pool reads of this daemon's free-set copy: the first, then a reload whenever etcd no longer has the changes its watch missed (compaction) or the pool's ranges grew. A watch that etcd cancels during an election resumes without one.",
			[]string{"pool"}, nil),
	}
}

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.size
	ch <- c.addrs
	ch <- c.loads
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	for subnet, n := range c.store.CopyCounts() {
		p := subnet.String()
		ch <- prometheus.MustNewConstMetric(c.size, prometheus.GaugeValue, float64(n.Size), p)
		ch <- prometheus.MustNewConstMetric(c.addrs, prometheus.GaugeValue, float64(n.Free), p, "free")
		ch <- prometheus.MustNewConstMetric(c.addrs, prometheus.GaugeValue, float64(n.Delayed), p, "delayed")
		ch <- prometheus.MustNewConstMetric(c.addrs, prometheus.GaugeValue, float64(n.Size-n.Free-n.Delayed), p, "held")
		ch <- prometheus.MustNewConstMetric(c.loads, prometheus.CounterValue, float64(n.Loads), p)
	}
}

// serveMetrics serves /metrics and /healthz on addr until stop is called.
func serveMetrics(addr string, m *metrics, store *etcdstore.Store, pools *pool.Pools, pending *releasequeue.Queue, log *slog.Logger) (stop func(), err error) {
	m.reg.MustRegister(newPoolCollector(store), prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "talkingdata_releases_pending",
		Help: "Releases etcd refused for want of space (its NOSPACE alarm), kept in --data-dir to apply once it has room.",
	}, func() float64 { return float64(pending.Len()) }), prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "talkingdata_releases_in_flight",
		Help: "Releases dockerd was answered for whose etcd transaction has not ended yet.",
	}, func() float64 { return float64(pools.ReleasesInFlight()) }), prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "talkingdata_releases_failed_total",
		Help: "Releases dockerd was answered for whose etcd transaction failed: each address stays used until `ipamctl gc` releases it (the daemon logs which).",
	}, func() float64 { return float64(pools.ReleasesFailed()) }))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		hctx, cancel := context.WithTimeout(r.Context(), healthTimeout)
		defer cancel()
		if err := store.Ping(hctx); err != nil {
			http.Error(w, "etcd unreachable: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		alarms, err := store.Alarms(hctx)
		if err == nil {
			err = etcdstore.AlarmsError(alarms)
		}
		status := "ok"
		if err != nil {
			status = err.Error()
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		fmt.Fprintln(w, status)
		if n := pending.Len(); n > 0 {
			fmt.Fprintf(w, "%d releases etcd refused for want of space are kept in %s, to apply once it has room\n", n, releasequeue.FileName)
		}
	})
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-addr %s: %w", addr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics listener failed", "addr", addr, "err", err)
		}
	}()
	log.Info("serving metrics", "addr", l.Addr().String())
	return func() { _ = srv.Close() }, nil
}
