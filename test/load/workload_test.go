package load

import (
	"bytes"
	"encoding/json"
	"io"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/envoy/sim"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/anthropic"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/openai"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

func TestWorkloadIsRealisticAndReproducible(t *testing.T) {
	mix := DefaultMix
	w, err := NewWorkload(mix, 7, 400)
	if err != nil {
		t.Fatal(err)
	}
	var nOpenAI, nSSE int
	tenants := map[string]bool{}
	minSize, maxSize := 1<<30, 0
	for i := range w.Specs {
		s := &w.Specs[i]
		if !json.Valid(s.Body) {
			t.Fatalf("spec %d: request body is not JSON", i)
		}
		minSize, maxSize = min(minSize, len(s.Body)), max(maxSize, len(s.Body))
		tenants[s.Tenant] = true
		var req wire.Request
		if s.OpenAI {
			nOpenAI++
			req, err = openai.ParseRequest(s.Body)
		} else {
			req, err = anthropic.ParseRequest(s.Body)
		}
		if err != nil {
			t.Fatalf("spec %d (openai=%v): the processor's parser rejects the body: %v", i, s.OpenAI, err)
		}
		if req.Stream != s.SSE {
			t.Errorf("spec %d: stream=%v in the body, spec says %v", i, req.Stream, s.SSE)
		}
		// The canned response must carry final usage the processor can read.
		if s.SSE {
			nSSE++
			var p wire.StreamParser = anthropic.NewStreamParser()
			if s.OpenAI {
				p = openai.NewStreamParser()
			}
			p.Write(s.Response)
			if u, final := p.Usage(); !final || u.OutputTokens == 0 {
				t.Errorf("spec %d: stream usage %+v final=%v", i, u, final)
			}
			if len(s.Events) < mix.SSEDeltas || s.Events[len(s.Events)-1] != len(s.Response) {
				t.Errorf("spec %d: %d event ends, last %d of %d bytes", i, len(s.Events), s.Events[len(s.Events)-1], len(s.Response))
			}
		} else {
			var ok bool
			if s.OpenAI {
				_, _, ok = openai.UsageFromJSON(s.Response)
			} else {
				_, _, ok = anthropic.UsageFromJSON(s.Response)
			}
			if !ok {
				t.Errorf("spec %d: no usage in the JSON response", i)
			}
		}
	}
	// 400 draws: the fractions land within a wide band of their targets.
	if nOpenAI < 150 || nOpenAI > 250 || nSSE < 150 || nSSE > 250 {
		t.Errorf("openai %d, sse %d of 400: the mix is not ~50/50", nOpenAI, nSSE)
	}
	if minSize < mix.MinBody*9/10 || maxSize > mix.MaxBody*11/10 || maxSize < mix.MaxBody/3 {
		t.Errorf("body sizes %d..%d outside ~[%d, %d]", minSize, maxSize, mix.MinBody, mix.MaxBody)
	}
	if len(tenants) < 50 {
		t.Errorf("only %d tenants of %d used", len(tenants), mix.Tenants)
	}
	again, err := NewWorkload(mix, 7, 400)
	if err != nil {
		t.Fatal(err)
	}
	for i := range w.Specs {
		if !bytes.Equal(w.Specs[i].Body, again.Specs[i].Body) || !bytes.Equal(w.Specs[i].Response, again.Specs[i].Response) {
			t.Fatalf("spec %d differs between two workloads with the same seed", i)
		}
	}
}

func TestMixValidate(t *testing.T) {
	bad := []func(*Mix){
		func(m *Mix) { m.OpenAI = 1.5 },
		func(m *Mix) { m.SSE = -0.1 },
		func(m *Mix) { m.MinBody = 10 },
		func(m *Mix) { m.MaxBody = m.MinBody - 1 },
		func(m *Mix) { m.Tenants = 0 },
		func(m *Mix) { m.SSEDeltas = 0 },
		func(m *Mix) { m.ChunkMax = 0 },
		func(m *Mix) { m.EventGap = -time.Second },
	}
	for i, f := range bad {
		m := DefaultMix
		f(&m)
		if m.Validate() == nil {
			t.Errorf("case %d: %+v accepted", i, m)
		}
	}
	if err := DefaultMix.Validate(); err != nil {
		t.Errorf("DefaultMix: %v", err)
	}
}

func TestSSEBodyChunking(t *testing.T) {
	w, err := NewWorkload(Mix{OpenAI: 0, SSE: 1, MinBody: 2048, MaxBody: 2048, Tenants: 1, SSEDeltas: 10, ChunkMax: 16}, 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	s := &w.Specs[0]
	read := func(mix Mix) [][]byte {
		g := newGate()
		g.open()
		resp, err := upstream(s, g, &mix, 9).RoundTrip(t.Context(), &sim.UpstreamRequest{Method: "POST", Path: "/v1/messages"})
		if err != nil {
			t.Fatal(err)
		}
		var reads [][]byte
		buf := make([]byte, 32<<10)
		for {
			n, err := resp.Body.Read(buf)
			if n > 0 {
				reads = append(reads, append([]byte(nil), buf[:n]...))
			}
			if err == io.EOF {
				return reads
			}
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	fast := read(w.Mix)
	if got := bytes.Join(fast, nil); !bytes.Equal(got, s.Response) {
		t.Fatal("chunked reads do not reassemble the response")
	}
	sizes := map[int]bool{}
	for _, r := range fast {
		if len(r) > 16 {
			t.Errorf("a %d-byte chunk exceeds ChunkMax 16", len(r))
		}
		sizes[len(r)] = true
	}
	if len(sizes) < 4 {
		t.Errorf("chunk sizes %v: boundaries are not random", sizes)
	}
	slow := w.Mix
	slow.EventGap = time.Microsecond
	events := read(slow)
	if len(events) != len(s.Events) {
		t.Fatalf("paced stream: %d reads for %d events", len(events), len(s.Events))
	}
	for i, e := range events {
		if !bytes.HasSuffix(e, []byte("\n\n")) {
			t.Errorf("paced read %d does not end an event: %q", i, e)
		}
	}
}
