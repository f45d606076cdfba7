package extproc

import (
	"context"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"
)

func TestHeapFloorPercent(t *testing.T) {
	const mib = 1 << 20
	for _, c := range []struct {
		name        string
		live, floor uint64
		want        int
	}{
		{"no floor", 10 * mib, 0, 100},
		{"a heap past half the floor keeps Go's default", 30 * mib, 48 * mib, 100},
		{"exactly half the floor", 24 * mib, 48 * mib, 100},
		{"a small heap aims at the floor", 8 * mib, 48 * mib, 500},
		{"10 MiB", 10 * mib, 48 * mib, 380},
		{"a tiny heap is held to 11× itself", 2 * mib, 48 * mib, 1000},
		{"not yet measured counts as 1 MiB", 0, 48 * mib, 1000},
		{"not yet measured, small floor", 0, 4 * mib, 300},
	} {
		if got := heapFloorPercent(c.live, c.floor); got != c.want {
			t.Errorf("%s: heapFloorPercent(%d MiB, %d MiB) = %d, want %d", c.name, c.live/mib, c.floor/mib, got, c.want)
		}
	}
}

func gcPercent() int64 {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return int64(s[0].Value.Uint64())
}

// The floor takes effect after a real collection and is undone by stop.
func TestKeepHeapFloorFollowsCollections(t *testing.T) {
	before := gcPercent()
	floor := uint64(8 * max(liveHeap(), 1<<20)) // well above what this test binary holds live
	stop := KeepHeapFloor(context.Background(), floor)
	debug.SetGCPercent(123) // only a collection's cleanup can set it back
	deadline := time.Now().Add(5 * time.Second)
	for {
		runtime.GC()
		want := heapFloorPercent(liveHeap(), floor)
		if got := gcPercent(); got == int64(want) && want > 100 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("GC percent %d after collections, want %d (live %d, floor %d)", gcPercent(), want, liveHeap(), floor)
		}
		time.Sleep(10 * time.Millisecond)
	}
	stop()
	if got := gcPercent(); got != before {
		t.Fatalf("GC percent %d after stop, want the %d it found", got, before)
	}
	runtime.GC()
	time.Sleep(50 * time.Millisecond) // a stopped floor's cleanup does nothing
	if got := gcPercent(); got != before {
		t.Fatalf("GC percent %d after a collection past stop, want %d", got, before)
	}
}
