package server

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are what an operator sees of the server on --metrics-listen,
// in Prometheus' format. Labels never carry repository or ref names.
type metrics struct {
	reg              *prometheus.Registry
	requests         *prometheus.CounterVec
	opened           *prometheus.CounterVec
	finished         *prometheus.CounterVec
	refusals         *prometheus.CounterVec
	phase            *prometheus.HistogramVec
	bytesIn          prometheus.Counter
	bytesOut         prometheus.Counter
	chunksIn         prometheus.Counter
	chunksOut        prometheus.Counter
	upstreamErrors   prometheus.Counter
	mirrorUpdates    *prometheus.CounterVec
	upstreamListings prometheus.Counter
	pushesParked     prometheus.Counter
	lsRefsAhead      *prometheus.CounterVec
	open             prometheus.Gauge
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_requests_total", Help: "API requests by method, route and status.",
		}, []string{"method", "route", "code"}),
		opened: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_exchanges_opened_total", Help: "Exchanges opened, by kind (push, fetch, refs, caps).",
		}, []string{"kind"}),
		finished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_exchanges_finished_total", Help: "Exchanges ended, by kind and outcome (done, failed).",
		}, []string{"kind", "outcome"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_refusals_total", Help: "Requests refused, by reason (auth, stale, too_large, limit, busy, ...).",
		}, []string{"reason"}),
		phase: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "relay_phase_seconds", Help: "How long the phases of exchanges take.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 14),
		}, []string{"phase"}),
		bytesIn:        prometheus.NewCounter(prometheus.CounterOpts{Name: "relay_body_bytes_in_total", Help: "Request body bytes read."}),
		bytesOut:       prometheus.NewCounter(prometheus.CounterOpts{Name: "relay_body_bytes_out_total", Help: "Response body bytes written."}),
		chunksIn:       prometheus.NewCounter(prometheus.CounterOpts{Name: "relay_upload_chunks_total", Help: "Upload chunks stored."}),
		chunksOut:      prometheus.NewCounter(prometheus.CounterOpts{Name: "relay_download_chunks_total", Help: "Download chunks written."}),
		upstreamErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "relay_upstream_errors_total", Help: "Failures to reach or use upstream."}),
		mirrorUpdates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_mirror_updates_total", Help: "Objects brought into this instance's mirrors, by source: upstream (a fetch), or push (the pack of a push that landed through another instance sharing the store).",
		}, []string{"from"}),
		lsRefsAhead: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_ls_refs_ahead_total", Help: "ls-refs run on the mirror beside its refresh: used, or dropped because the refresh moved its refs.",
		}, []string{"outcome"}),
		upstreamListings: prometheus.NewCounter(prometheus.CounterOpts{Name: "relay_upstream_listings_total", Help: "Listings of upstream's refs (a round trip to upstream each)."}),
		pushesParked:     prometheus.NewCounter(prometheus.CounterOpts{Name: "relay_pushes_begun_at_listing_total", Help: "Pushes whose conversation with upstream began at their listing."}),
		open:             prometheus.NewGauge(prometheus.GaugeOpts{Name: "relay_sessions_open", Help: "Unfinished exchanges this instance knows of."}),
	}
	m.reg.MustRegister(m.requests, m.opened, m.finished, m.refusals, m.phase, m.bytesIn, m.bytesOut,
		m.chunksIn, m.chunksOut, m.upstreamErrors, m.mirrorUpdates, m.upstreamListings, m.pushesParked, m.lsRefsAhead, m.open,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	return mux
}
