package openai

import (
	"bytes"

	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// UsageChunkRemover undoes, on a Chat Completions stream, what
// stream_options.include_usage adds
// (https://platform.openai.com/docs/api-reference/chat/create#chat-create-stream_options):
// the chunk before "data: [DONE]" whose "choices" is empty and whose
// "usage" is set is dropped whole, event framing included, and the
// "usage" member every other chunk then carries ("usage":null) is cut out
// of it, with its separating comma. Every other byte goes through as the
// provider sent it: event framing, line endings, comments, other fields
// and their order, whitespace, "[DONE]", error events, anything that is
// not a single-line JSON object. The stream parser still reads the usage:
// it is fed the stream as received, before this.
//
// It implements wire.StreamRewriter. Events are found by the SSE framing
// rules (https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):
// lines end in "\n", "\r\n" or "\r", a blank line ends an event. An event
// held back past wire.MaxSSELine is forwarded unchanged as it comes.
type UsageChunkRemover struct {
	held []byte // the start of an incomplete event
	// Where the scan of the incomplete event stands, as offsets into it.
	pos       int  // next byte to scan
	lineStart int  // start of the current line
	cr        bool // the last line ended in '\r' just before pos: a '\n' there belongs to it
	blank     bool // ... and that line was blank: the event ends with it
	dataLines int
	vStart    int // the value of the first data line
	vEnd      int
	// passing: the event outgrew wire.MaxSSELine and goes through
	// unchanged; midLine: its current line already has bytes.
	passing bool
	midLine bool
}

var _ wire.StreamRewriter = (*UsageChunkRemover)(nil)

// Rewrite implements wire.StreamRewriter.
func (r *UsageChunkRemover) Rewrite(dst, chunk []byte) []byte {
	buf := chunk
	if len(r.held) > 0 {
		r.held = append(r.held, chunk...)
		buf = r.held
	}
	for len(buf) > 0 {
		n, ok := r.scan(buf)
		if !ok {
			break
		}
		if r.passing {
			dst = append(dst, buf[:n]...)
		} else {
			dst = r.event(dst, buf[:n])
		}
		buf = buf[n:]
		r.reset()
	}
	switch {
	case r.passing:
		// The rest of a too-long event goes at once.
		dst = append(dst, buf...)
		r.midLine = r.midLine || r.lineStart < len(buf)
		r.pos, r.lineStart = 0, 0
		r.held = r.held[:0]
	case len(buf) > wire.MaxSSELine:
		dst = append(dst, buf...)
		r.passing = true
		r.midLine = r.lineStart < len(buf)
		r.pos, r.lineStart = 0, 0
		r.held = r.held[:0]
	default:
		// append copies with memmove: buf may be the tail of held itself.
		r.held = append(r.held[:0], buf...)
	}
	return dst
}

// Flush implements wire.StreamRewriter: an event the stream ended inside
// is judged as if a blank line had ended it.
func (r *UsageChunkRemover) Flush(dst []byte) []byte {
	ev := r.held
	if len(ev) > 0 && !r.passing {
		if !r.cr && r.lineStart < len(ev) {
			r.noteLine(ev, r.lineStart, len(ev))
		}
		dst = r.event(dst, ev)
	}
	r.held = r.held[:0]
	r.reset()
	r.passing, r.midLine = false, false
	return dst
}

func (r *UsageChunkRemover) reset() {
	r.pos, r.lineStart, r.cr, r.blank = 0, 0, false, false
	r.dataLines, r.vStart, r.vEnd = 0, 0, 0
	if r.passing {
		r.passing, r.midLine = false, false
	}
}

// scan continues the scan of the event that starts at ev[0] and reports
// its length once its blank line (and, after a '\r', a '\n' that may
// belong to it) is in.
func (r *UsageChunkRemover) scan(ev []byte) (int, bool) {
	p := r.pos
	for p < len(ev) {
		if r.cr {
			r.cr = false
			if ev[p] == '\n' {
				p++
				r.lineStart = p
			}
			if r.blank {
				return p, true
			}
			continue
		}
		e := lineEnd(ev[p:])
		if e < 0 {
			p = len(ev)
			break
		}
		e += p
		blank := e == r.lineStart && !r.midLine
		r.midLine = false
		if !blank && !r.passing {
			r.noteLine(ev, r.lineStart, e)
		}
		p = e + 1
		r.lineStart = p
		if ev[e] == '\r' {
			r.cr, r.blank = true, blank
			continue
		}
		if blank {
			return p, true
		}
	}
	r.pos = p
	return 0, false
}

// lineEnd returns the index of the first '\n' or '\r', or -1.
func lineEnd(b []byte) int {
	n := bytes.IndexByte(b, '\n')
	limit := b
	if n >= 0 {
		limit = b[:n]
	}
	if c := bytes.IndexByte(limit, '\r'); c >= 0 {
		return c
	}
	return n
}

// noteLine records a data line of the current event: ev[start:end], its
// terminator excluded.
func (r *UsageChunkRemover) noteLine(ev []byte, start, end int) {
	line := ev[start:end]
	if len(line) < 4 || string(line[:4]) != "data" {
		return
	}
	switch {
	case len(line) == 4:
		start = end
	case line[4] == ':':
		start += 5
		if start < end && ev[start] == ' ' {
			start++
		}
	default:
		return // another field ("database: …")
	}
	r.dataLines++
	if r.dataLines == 1 {
		r.vStart, r.vEnd = start, end
	}
}

// event appends the rewritten form of one whole event.
func (r *UsageChunkRemover) event(dst, ev []byte) []byte {
	if r.dataLines != 1 {
		return append(dst, ev...)
	}
	drop, from, to := usageEdit(ev[r.vStart:r.vEnd])
	switch {
	case drop:
		return dst
	case from == to:
		return append(dst, ev...)
	}
	dst = append(dst, ev[:r.vStart+from]...)
	return append(dst, ev[r.vStart+to:]...)
}

// usageEdit decides what to do with one chunk's JSON: drop it (empty
// "choices" and a non-null "usage": the usage chunk), or cut
// data[from:to] (its "usage" member), or nothing (from == to) — which is
// also the answer for anything that is not one valid JSON object with at
// most one "usage" member.
func usageEdit(data []byte) (drop bool, from, to int) {
	var rd wire.Reader
	rd.Reset(data)
	if rd.Peek() != wire.KindObject {
		return false, 0, 0
	}
	var (
		it                   = rd.Object()
		prevEnd              = rd.Pos() // end of the previous value, or just after '{'
		n                    int
		usages               int
		uFirst               bool
		uPrev, uKey, uEnd    int
		uNull                bool
		choicesSeen, noChoic bool
	)
	for key, ok := rd.NextKey(&it); ok; key, ok = rd.NextKey(&it) {
		keyStart := skipWS(data, prevEnd)
		if n > 0 {
			keyStart = skipWS(data, keyStart+1) // past the ','
		}
		k := rd.Peek()
		start, end := rd.Skip()
		switch string(key) {
		case "usage":
			usages++
			uFirst, uPrev, uKey, uEnd = n == 0, prevEnd, keyStart, end
			uNull = k == wire.KindNull
		case "choices":
			if !choicesSeen {
				choicesSeen = true
				noChoic = k == wire.KindArray && skipWS(data, start+1) == end-1
			}
		}
		prevEnd = end
		n++
	}
	if rd.Err() != nil || !rd.End() || usages != 1 {
		return false, 0, 0
	}
	if noChoic && !uNull {
		return true, 0, 0
	}
	if !uFirst {
		// ,"usage":null — from the end of the value before it.
		return false, uPrev, uEnd
	}
	// The first member: up to the next member's key, or the value's end
	// when it is the only one.
	to = skipWS(data, uEnd)
	if to < len(data) && data[to] == ',' {
		return false, uKey, skipWS(data, to+1)
	}
	return false, uKey, uEnd
}

func skipWS(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}
