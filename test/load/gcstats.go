package load

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// GCStat is a Go processor's garbage-collector counters at one moment, read
// from its Prometheus endpoint (the Go collector's series): how much it
// allocated, how many collections ran and how long their stop-the-world
// pauses took. Between two readings they say how much garbage an exchange
// makes and what collecting it stopped, figures that, unlike latencies, do
// not move with what else runs on the machine.
type GCStat struct {
	AllocBytes float64       // go_memstats_alloc_bytes_total
	Cycles     float64       // go_gc_duration_seconds_count
	Pause      time.Duration // go_gc_duration_seconds_sum
}

// gcSeries are the series ReadGCStat reads, by the field they go to.
var gcSeries = map[string]func(*GCStat, float64){
	"go_memstats_alloc_bytes_total": func(s *GCStat, v float64) { s.AllocBytes = v },
	"go_gc_duration_seconds_count":  func(s *GCStat, v float64) { s.Cycles = v },
	"go_gc_duration_seconds_sum":    func(s *GCStat, v float64) { s.Pause = time.Duration(v * float64(time.Second)) },
}

// ReadGCStat scrapes url (a /metrics endpoint) within two seconds.
func ReadGCStat(ctx context.Context, url string) (GCStat, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return GCStat{}, fmt.Errorf("load: gc stats: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return GCStat{}, fmt.Errorf("load: gc stats: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return GCStat{}, fmt.Errorf("load: gc stats: %s answered %s", url, resp.Status)
	}
	var s GCStat
	found := 0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		set := gcSeries[name]
		if !ok || set == nil {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil {
			return GCStat{}, fmt.Errorf("load: gc stats: %s: %w", name, err)
		}
		set(&s, v)
		found++
	}
	if err := sc.Err(); err != nil {
		return GCStat{}, fmt.Errorf("load: gc stats: %w", err)
	}
	if found != len(gcSeries) {
		return GCStat{}, fmt.Errorf("load: gc stats: %s lacks the Go collector's series", url)
	}
	return s, nil
}

// Sub is the counters' growth from start to s.
func (s GCStat) Sub(start GCStat) GCStat {
	return GCStat{AllocBytes: s.AllocBytes - start.AllocBytes, Cycles: s.Cycles - start.Cycles, Pause: s.Pause - start.Pause}
}

// Add sums two rounds' growth.
func (s GCStat) Add(o GCStat) GCStat {
	return GCStat{AllocBytes: s.AllocBytes + o.AllocBytes, Cycles: s.Cycles + o.Cycles, Pause: s.Pause + o.Pause}
}
