package observe

import (
	"context"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// AdminOptions configures the admin HTTP handler.
type AdminOptions struct {
	Gatherer prometheus.Gatherer
	// Ready reports whether this replica should receive traffic, with
	// detail lines shown either way; nil means always.
	Ready func(ctx context.Context) (detail string, err error)
}

// AdminHandler serves what ScrapeHandler serves and the Go profiles under
// /debug/pprof/. It belongs on a loopback address: profiles reveal the
// process's internals.
func AdminHandler(o AdminOptions) http.Handler {
	mux := scrapeMux(o)
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	return mux
}

// ScrapeHandler serves /metrics, /healthz (the process is alive) and
// /readyz (the replica can make the decisions it is allowed to make): what
// Prometheus and the kubelet need, and nothing else.
func ScrapeHandler(o AdminOptions) http.Handler { return scrapeMux(o) }

func scrapeMux(o AdminOptions) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(o.Gatherer, promhttp.HandlerOpts{Timeout: 5 * time.Second}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), time.Second)
		defer cancel()
		var detail string
		if o.Ready != nil {
			var err error
			if detail, err = o.Ready(ctx); err != nil {
				http.Error(w, "not ready: "+err.Error()+"\n"+detail, http.StatusServiceUnavailable)
				return
			}
		}
		_, _ = w.Write([]byte("ready\n" + detail))
	})
	return mux
}
