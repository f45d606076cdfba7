package mockprovider

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"
)

var (
	// errInjected: x-mock-error-after fired; the caller sends its dialect's
	// error frame with writeFrame and ends the stream.
	errInjected = errors.New("mock: scripted mid-stream error")
	// errDisconnect: x-mock-disconnect-after fired; the caller records the
	// ledger and calls abort.
	errDisconnect = errors.New("mock: scripted disconnect")
)

// streamer writes SSE events one by one, each flushed on its own (or split
// into several flushed writes), applying the per-request stream knobs.
type streamer struct {
	w     http.ResponseWriter
	rc    *http.ResponseController
	ctx   context.Context
	k     knobs
	rand  rng // drives padding, obfuscation and split offsets
	sent  int // events fully written
	delay *time.Timer
}

func newStreamer(w http.ResponseWriter, r *http.Request, k knobs, seed uint64) *streamer {
	return &streamer{w: w, rc: http.NewResponseController(w), ctx: r.Context(), k: k, rand: rng{s: seed}}
}

// send writes one event, unless a knob says the stream ends here.
func (s *streamer) send(frame []byte) error {
	if s.k.disconnectAfter >= 0 && s.sent >= s.k.disconnectAfter {
		return errDisconnect
	}
	if s.k.errorAfter >= 0 && s.sent >= s.k.errorAfter {
		return errInjected
	}
	if s.sent > 0 && s.k.chunkDelay > 0 {
		if err := s.sleep(s.k.chunkDelay); err != nil {
			return err
		}
	}
	if err := s.writeFrame(frame); err != nil {
		return err
	}
	s.sent++
	return nil
}

func (s *streamer) sleep(d time.Duration) error {
	if s.delay == nil {
		s.delay = time.NewTimer(d)
	} else {
		s.delay.Reset(d)
	}
	select {
	case <-s.delay.C:
		return nil
	case <-s.ctx.Done():
		s.delay.Stop()
		return fmt.Errorf("client went away: %w", context.Cause(s.ctx))
	}
}

// writeFrame writes bytes as one flushed write, or as several when
// x-mock-split asks, so readers meet events cut at arbitrary offsets.
func (s *streamer) writeFrame(frame []byte) error {
	for len(frame) > 0 {
		n := len(frame)
		switch {
		case s.k.splitSize > 0:
			n = min(n, s.k.splitSize)
		case s.k.splitRandom:
			n = 1 + s.rand.intn(len(frame))
		}
		if _, err := s.w.Write(frame[:n]); err != nil {
			return fmt.Errorf("write event: %w", err)
		}
		if err := s.rc.Flush(); err != nil {
			return fmt.Errorf("flush event: %w", err)
		}
		frame = frame[n:]
	}
	return nil
}

// play sends frames in order, calling sent(i) after frame i went out. An
// injected error writes errFrame and ends the stream; a scripted disconnect
// returns true, and the caller records what was sent, then calls abort. A
// client that goes away just ends the stream.
func (s *streamer) play(frames [][]byte, errFrame []byte, sent func(i int)) (disconnect bool) {
	for i, f := range frames {
		err := s.send(f)
		switch {
		case errors.Is(err, errInjected):
			_ = s.writeFrame(errFrame)
			return false
		case errors.Is(err, errDisconnect):
			return true
		case err != nil:
			return false
		}
		sent(i)
	}
	return false
}

// abort ends the response without its terminating chunk: hijack and close
// the TCP connection (HTTP/1.1), or abort the handler where hijacking is not
// possible (HTTP/2), which net/http turns into a stream reset.
func (s *streamer) abort() {
	conn, _, err := s.rc.Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	_ = conn.Close()
}

// pad inserts 0–15 spaces before the final '}' of an event's JSON, as the
// real Anthropic API does.
func (s *streamer) pad(data []byte) []byte {
	n := s.rand.intn(16)
	if n == 0 || len(data) == 0 || data[len(data)-1] != '}' {
		return data
	}
	out := make([]byte, 0, len(data)+n)
	out = append(out, data[:len(data)-1]...)
	for range n {
		out = append(out, ' ')
	}
	return append(out, '}')
}

// namedEvent frames an Anthropic event: event line, data line, blank line.
func namedEvent(name string, data []byte) []byte {
	out := make([]byte, 0, len(name)+len(data)+17)
	out = append(out, "event: "...)
	out = append(out, name...)
	out = append(out, "\ndata: "...)
	out = append(out, data...)
	return append(out, "\n\n"...)
}

// dataEvent frames an OpenAI chunk: data line, blank line.
func dataEvent(data []byte) []byte {
	out := make([]byte, 0, len(data)+8)
	out = append(out, "data: "...)
	out = append(out, data...)
	return append(out, "\n\n"...)
}
