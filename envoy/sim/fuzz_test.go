package sim

import (
	"bytes"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/proto"
)

// FuzzHeaderMutation feeds arbitrary wire-format HeaderMutations (what a
// processor may send) through the mutation applier and checks the invariants
// Envoy guarantees: pseudo-headers and host are never removed, routing and
// x-envoy headers never change under default rules, every resulting name is
// lower-case and valid, every value is free of CR/LF/NUL.
func FuzzHeaderMutation(f *testing.F) {
	seed := func(m *extprocv3.HeaderMutation) {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	seed(&extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{setRaw("X-A", "1"), appendRaw("x-a", "2")}, RemoveHeaders: []string{":path", "host"}})
	seed(&extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{setRaw(":authority", "evil"), setRaw("x-envoy-x", "y"), setRaw("content-length", "5")}})
	seed(&extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "k", Value: "v", RawValue: []byte("r")}}}})
	seed(&extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{setRaw("x", "a\r\nb"), setRaw("", "")}, RemoveHeaders: []string{"", "x y"}})
	f.Add([]byte{0x0a, 0x02, 0x0a, 0x00})
	f.Fuzz(func(t *testing.T, wire []byte) {
		var mut extprocv3.HeaderMutation
		if proto.Unmarshal(wire, &mut) != nil {
			return
		}
		m := &headerMap{h: []Header{{":method", "POST"}, {":path", "/p"}, {":authority", "a"}, {":scheme", "http"},
			{"host", "h"}, {"x-envoy-keep", "1"}, {"x-a", "0"}}}
		_, err := applyHeaderMutation(m, &mut, mutationOptions{rules: &MutationRules{}, maxHeaders: 100, maxKB: 60})
		if err != nil {
			return
		}
		for _, must := range []Header{{":method", "POST"}, {":authority", "a"}, {":scheme", "http"}, {"host", "h"}, {"x-envoy-keep", "1"}} {
			if v, ok := m.get(must.Name); !ok || v != must.Value {
				t.Fatalf("%s changed to %q (present %v)", must.Name, v, ok)
			}
		}
		if !m.has(":path") {
			t.Fatal(":path removed")
		}
		for _, h := range m.h {
			if h.Name != strings.ToLower(h.Name) || !validHeaderName(h.Name) || !validHeaderValue(h.Value) {
				t.Fatalf("bad header %q: %q", h.Name, h.Value)
			}
		}
	})
}

// FuzzChunking checks the splitter: pieces concatenate to the input, are
// non-empty and never exceed the configured size.
func FuzzChunking(f *testing.F) {
	f.Add([]byte("event: ping\ndata: {}\n\n"), uint64(1), 5, true)
	f.Add([]byte("abcdefgh"), uint64(0), 3, false)
	f.Add([]byte{}, uint64(9), 1, true)
	f.Fuzz(func(t *testing.T, b []byte, seed uint64, size int, random bool) {
		if size <= 0 || size > 1<<16 {
			return
		}
		k := newChunker(Chunking{Random: random, Seed: seed, MaxSize: size, Size: size}, 1, 0)
		var out []byte
		for _, p := range k.split(b) {
			if len(p) == 0 || len(p) > size {
				t.Fatalf("piece of %d bytes (size %d)", len(p), size)
			}
			out = append(out, p...)
		}
		if !bytes.Equal(out, b) {
			t.Fatal("pieces do not reassemble the input")
		}
	})
}
