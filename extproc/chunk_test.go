package extproc

import (
	"bytes"
	"sync"
	"testing"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/tokenwarden/tokenwarden/extproc/gate"
)

// TestChunkAnswer: a chunk the gate does not rewrite is answered with an
// empty BodyResponse (forwarded unchanged); a rewritten one with `body`, or
// `clear_body` when nothing of it is to reach the client.
func TestChunkAnswer(t *testing.T) {
	mutation := func(v gate.ChunkVerdict) *extprocv3.BodyMutation {
		r := chunkAnswer(v, nil).GetResponseBody()
		if r == nil {
			t.Fatal("not a response_body answer")
		}
		return r.GetResponse().GetBodyMutation()
	}
	if m := mutation(gate.ChunkVerdict{}); m != nil {
		t.Errorf("unchanged chunk answered with %v", m)
	}
	if m := mutation(gate.ChunkVerdict{Body: []byte("ignored")}); m != nil {
		t.Errorf("a Body without Replace changes nothing, got %v", m)
	}
	if m := mutation(gate.ChunkVerdict{Replace: true, Body: []byte("data: x\n\n")}); string(m.GetBody()) != "data: x\n\n" {
		t.Errorf("replacement %v", m)
	}
	if m := mutation(gate.ChunkVerdict{Replace: true}); !m.GetClearBody() {
		t.Errorf("an empty replacement must drop the chunk, got %v", m)
	}
}

// TestUnchangedChunkShared: the one answer every unchanged chunk shares is
// the empty response_body answer, stays so however many streams marshal it
// at once (run with -race), and is not what a metered or rewritten chunk
// gets.
func TestUnchangedChunkShared(t *testing.T) {
	c := codec{protoCodec()}
	want, err := c.Marshal(&extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{}}})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				got, err := c.Marshal(chunkAnswer(gate.ChunkVerdict{}, nil))
				if err != nil || !bytes.Equal(got.Materialize(), want.Materialize()) {
					t.Errorf("shared answer marshals as %x, %v; want %x", got.Materialize(), err, want.Materialize())
					return
				}
			}
		})
	}
	wg.Wait()
	if chunkAnswer(gate.ChunkVerdict{Replace: true}, nil) == unchangedChunk || chunkAnswer(gate.ChunkVerdict{}, &gate.Outcome{}) == unchangedChunk {
		t.Error("a rewritten or final chunk must get an answer of its own")
	}
}
