package extproc

import (
	"fmt"
	"runtime"
	"strings"
	"testing"

	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
)

// TestWaitingStreamStack: a stream waiting for its response body after an
// admitted request holds a small stack — the request's deep work ran on
// onOwnStack's helper — so a thousand slow streams cost 8 MB of stacks, not
// 16.
func TestWaitingStreamStack(t *testing.T) {
	h := newHarness(t)
	const streams = 100
	stacks := func() uint64 {
		runtime.GC() // the collector shrinks the stacks it can
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.StackInuse
	}
	// A first stream warms up what the server starts once (gRPC's
	// transport goroutines, the store's), so the figure below is per stream.
	warm := h.open()
	warm.must(requestHeaders("warm", filterv3.ProcessingMode_BUFFERED))
	warm.must(requestBody(streamBody, true))
	warm.closeSend()
	before := stacks()
	for i := range streams {
		s := h.open()
		s.must(requestHeaders(fmt.Sprintf("stack-%d", i), filterv3.ProcessingMode_BUFFERED))
		if resp := s.must(requestBody(streamBody, true)); resp.GetRequestBody() == nil {
			t.Fatalf("stream %d: body %v, want it admitted", i, resp)
		}
		s.must(responseHeaders(200, "text/event-stream", false))
	}
	per := (stacks() - before) / streams
	t.Logf("stack per waiting stream, client's and server's: %d bytes", per)
	if raceDetector {
		// The race detector's frames are larger: the bound is the plain build's.
		return
	}
	// The server's 8 KB and the client's ~3 KB; with the request's work on
	// the stream's own goroutine it is 16 KB and the client's (18.7 KB).
	if per > 14<<10 {
		t.Fatalf("%d bytes of stack per waiting stream, want at most %d: the stream's goroutine grew past 8 KB", per, 14<<10)
	}
}

// TestOwnStackPanic: a panic on onOwnStack's helper is raised again on the
// caller's goroutine — where Process's guard is — carrying the helper's
// own stack, which names where it happened.
func TestOwnStackPanic(t *testing.T) {
	st := &stream{} // no gate: requestHeaders panics on it
	defer func() {
		v := recover()
		hp, ok := v.(*helperPanic)
		if !ok {
			t.Fatalf("recovered %T %v, want *helperPanic", v, v)
		}
		if _, ok := hp.value.(runtime.Error); !ok {
			t.Errorf("panic value %v, want the runtime error", hp.value)
		}
		if !strings.Contains(string(hp.stack), "(*stream).requestHeaders") {
			t.Errorf("stack does not name requestHeaders:\n%s", hp.stack)
		}
	}()
	st.onOwnStack(requestHeaders("t", filterv3.ProcessingMode_BUFFERED))
	t.Fatal("onOwnStack returned, want the helper's panic raised again")
}
