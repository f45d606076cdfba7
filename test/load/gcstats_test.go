package load

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// ReadGCStat reads the Go collector's three series from an exposition, and
// refuses an endpoint that lacks them rather than reporting zeros.
func TestReadGCStat(t *testing.T) {
	body := "# HELP go_gc_duration_seconds x\n" +
		"go_gc_duration_seconds{quantile=\"1\"} 0.0075\n" +
		"go_gc_duration_seconds_sum 0.25\n" +
		"go_gc_duration_seconds_count 118\n" +
		"go_memstats_alloc_bytes_total 9.73481008e+08\n" +
		"go_memstats_alloc_bytes 1.2e+07\n"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/empty" {
			fmt.Fprint(w, "up 1\n")
			return
		}
		fmt.Fprint(w, body)
	}))
	defer srv.Close()
	got, err := ReadGCStat(context.Background(), srv.URL+"/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if want := (GCStat{AllocBytes: 973481008, Cycles: 118, Pause: 250 * time.Millisecond}); got != want {
		t.Errorf("got %+v, want %+v", got, want)
	}
	if d := got.Sub(GCStat{AllocBytes: 1, Cycles: 18, Pause: 50 * time.Millisecond}); d != (GCStat{AllocBytes: 973481007, Cycles: 100, Pause: 200 * time.Millisecond}) {
		t.Errorf("Sub: %+v", d)
	}
	if _, err := ReadGCStat(context.Background(), srv.URL+"/empty"); err == nil {
		t.Error("an endpoint without the Go collector's series must be an error")
	}
}
