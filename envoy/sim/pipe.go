package sim

import (
	"io"
	"math/rand/v2"
	"sync"
)

// pipe carries released body bytes from the event loop to a reader (the
// client, or the upstream for the request body). Writes never block: the loop
// must keep serving timers; backpressure is applied by the loop itself, which
// stops reading its source while buffered() exceeds the buffer limit, as
// Envoy's watermarks do (ProcessorState::enqueueStreamingChunk and
// requestWatermark in https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/processor_state.cc).
type pipe struct {
	mu       sync.Mutex
	bufs     [][]byte
	n        int
	err      error // set by finish; returned once bufs are drained
	closed   bool  // the reader closed
	readable chan struct{}
	drained  chan<- struct{} // pokes the loop when the reader consumed data or closed
	gone     chan struct{}   // closed when the reader closes
}

func newPipe(drained chan<- struct{}) *pipe {
	return &pipe{readable: make(chan struct{}, 1), drained: drained, gone: make(chan struct{})}
}

func poke(c chan<- struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// write queues b without copying: every slice the loop releases is owned by
// it (fresh source reads, processor-supplied bodies, the caller's immutable
// Request.Body) and never written to again.
func (p *pipe) write(b []byte) {
	if len(b) == 0 {
		return
	}
	p.mu.Lock()
	if p.err == nil && !p.closed {
		p.bufs = append(p.bufs, b)
		p.n += len(b)
	}
	p.mu.Unlock()
	poke(p.readable)
}

// finish ends the stream: nil means a clean io.EOF after the buffered data.
// Only the first call counts.
func (p *pipe) finish(err error) {
	if err == nil {
		err = io.EOF
	}
	p.mu.Lock()
	if p.err == nil {
		p.err = err
	}
	p.mu.Unlock()
	poke(p.readable)
}

func (p *pipe) finished() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err != nil
}

func (p *pipe) buffered() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n
}

// Read returns released data in order; it blocks until data or the end.
func (p *pipe) Read(b []byte) (int, error) {
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return 0, io.ErrClosedPipe
		}
		if len(p.bufs) > 0 {
			n := copy(b, p.bufs[0])
			if n == len(p.bufs[0]) {
				p.bufs = p.bufs[1:]
			} else {
				p.bufs[0] = p.bufs[0][n:]
			}
			p.n -= n
			p.mu.Unlock()
			if p.drained != nil {
				poke(p.drained)
			}
			return n, nil
		}
		if p.err != nil {
			err := p.err
			p.mu.Unlock()
			return 0, err
		}
		p.mu.Unlock()
		<-p.readable
	}
}

// Close marks the reader gone; buffered data is dropped.
func (p *pipe) Close() error {
	p.mu.Lock()
	if !p.closed {
		p.closed = true
		p.bufs, p.n = nil, 0
		close(p.gone)
	}
	p.mu.Unlock()
	poke(p.readable)
	if p.drained != nil {
		poke(p.drained)
	}
	return nil
}

// bodyEvent is one data callback from a body source (decodeData/encodeData).
type bodyEvent struct {
	data     []byte
	eos      bool     // end of body (trailers, if any, follow in the same event)
	trailers []Header // set on the eos event when the message has trailers
	err      error    // source failed: downstream or upstream reset
}

// chunker splits reads per Chunking.
type chunker struct {
	c   Chunking
	rng *rand.Rand
}

func newChunker(c Chunking, exchangeN uint64, dir uint64) *chunker {
	k := &chunker{c: c}
	if c.Random || c.EmptyLast == EmptyLastRandom {
		k.rng = rand.New(rand.NewPCG(c.Seed, exchangeN*2+dir))
	}
	return k
}

func (k *chunker) split(b []byte) [][]byte {
	var out [][]byte
	for len(b) > 0 {
		n := len(b)
		switch {
		case k.c.Random:
			n = 1 + k.rng.IntN(k.c.MaxSize)
		case k.c.Size > 0:
			n = k.c.Size
		}
		n = min(n, len(b))
		out = append(out, b[:n:n])
		b = b[n:]
	}
	return out
}

// emptyLast reports whether this body ends with a separate empty chunk when
// the source itself does not force one.
func (k *chunker) emptyLast() bool {
	switch k.c.EmptyLast {
	case EmptyLastAlways:
		return true
	case EmptyLastRandom:
		return k.rng.IntN(2) == 0
	}
	return false
}

// source feeds a body into the event loop, one data callback per piece. It
// blocks on the channel, so the loop applies backpressure simply by not
// receiving.
type source struct {
	ch       chan bodyEvent
	stop     <-chan struct{}
	k        *chunker
	trailers func() []Header
}

func (s *source) emit(ev bodyEvent) bool {
	select {
	case s.ch <- ev:
		return true
	case <-s.stop:
		return false
	}
}

// last emits the final data callback: end of body, with the trailers.
func (s *source) last(data []byte) {
	var tr []Header
	if s.trailers != nil {
		tr = s.trailers()
	}
	s.emit(bodyEvent{data: data, eos: true, trailers: tr})
}

// runBytes delivers an in-memory body: the last piece carries end_of_stream
// unless an empty final chunk is chosen or trailers follow.
func (s *source) runBytes(b []byte) {
	pieces := s.k.split(b)
	empty := s.k.emptyLast()
	for i, p := range pieces {
		if i == len(pieces)-1 && !empty {
			s.last(p)
			return
		}
		if !s.emit(bodyEvent{data: p}) {
			return
		}
	}
	s.last(nil)
}

// runReader delivers a streamed body as it is read; EOF reported separately
// from data becomes an empty end_of_stream chunk, as an HTTP/1 chunked
// terminator does.
func (s *source) runReader(r io.Reader, closer io.Closer) {
	if closer != nil {
		defer closer.Close()
	}
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		pieces := s.k.split(buf[:n])
		for i, p := range pieces {
			b := append([]byte(nil), p...)
			if err == io.EOF && i == len(pieces)-1 && !s.k.emptyLast() {
				s.last(b)
				return
			}
			if !s.emit(bodyEvent{data: b}) {
				return
			}
		}
		if err == io.EOF {
			s.last(nil)
			return
		}
		if err != nil {
			s.emit(bodyEvent{err: err})
			return
		}
	}
}
