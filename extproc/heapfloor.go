package extproc

import (
	"context"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

// DefaultHeapFloor is the heap goal KeepHeapFloor holds the collector to
// when the live heap is small: 48 MiB.
const DefaultHeapFloor = 48 << 20

// maxHeapFloorPercent bounds the GC percent KeepHeapFloor sets: the goal is
// at most 11× the live heap, so a nearly empty heap is not allowed to grow
// without bound.
const maxHeapFloorPercent = 1000

// KeepHeapFloor makes the garbage collector aim for a heap of
// max(2 × live, floor) instead of Go's default 2 × live. A processor's live
// heap is small (about 10 MB in the small-JSON load) while every exchange
// allocates tens of kilobytes, so with the default the collector ran every
// few hundred exchanges and its mark workers took 13% of the processor's
// CPU (pprof; 5 cycles per 1,000 exchanges, 1 at GOGC=400, which cut the
// processor's CPU per exchange by a fifth in the same run). Above floor/2
// of live heap nothing changes, so memory grows by at most floor over
// Go's default, and only while the heap is small.
//
// After every collection it sets the GC percent for the next one from the
// heap that collection found live (runtime/metrics /gc/heap/live:bytes),
// so the goal is computed from a measured heap each cycle: a burst cannot
// run up against a percent chosen for a smaller heap. It stops, restoring
// the percent it found, when ctx ends or stop is called. An operator who
// sets GOGC has chosen; the caller does not start it then.
func KeepHeapFloor(ctx context.Context, floor uint64) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	// mu orders a cleanup's update against the restore: one that checked
	// ctx just before stop must not set the floor's percent after it.
	var mu sync.Mutex
	stopped := false
	previous := debug.SetGCPercent(heapFloorPercent(liveHeap(), floor))
	var arm func()
	arm = func() {
		// A cleanup runs after the collection that finds its object
		// unreachable: once per cycle, on the runtime's cleanup goroutine.
		runtime.AddCleanup(new([32]byte), func(struct{}) {
			mu.Lock()
			defer mu.Unlock()
			if stopped {
				return
			}
			debug.SetGCPercent(heapFloorPercent(liveHeap(), floor))
			arm()
		}, struct{}{})
	}
	arm()
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-ctx.Done()
		mu.Lock()
		defer mu.Unlock()
		stopped = true
		debug.SetGCPercent(previous)
	}()
	return func() { cancel(); <-done }
}

// heapFloorPercent is the GC percent whose goal, live × (1 + percent/100),
// is max(2 × live, floor), within [100, maxHeapFloorPercent]. A heap not yet
// measured (live 0, before the first collection) counts as 1 MiB.
func heapFloorPercent(live, floor uint64) int {
	live = max(live, 1<<20)
	if floor <= 2*live {
		return 100
	}
	return int(min((floor-live)*100/live, maxHeapFloorPercent))
}

// liveHeap is the heap the last collection marked live; 0 before the first.
func liveHeap() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}
