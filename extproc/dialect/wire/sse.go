package wire

import "bytes"

// MaxSSELine bounds the bytes an SSEDecoder buffers for one line and for one
// event's data. Provider events are a few hundred bytes; a longer line is a
// broken or hostile stream, and buffering it without bound would let one
// response exhaust memory.
const MaxSSELine = 1 << 20

// SSEHandler receives decoded events. name and data alias the decoder's
// buffers and are valid only during the call.
type SSEHandler interface {
	Event(name, data []byte)
}

// SSEDecoder decodes a text/event-stream incrementally, following the
// WHATWG framing rules: lines end in "\n", "\r\n" or "\r" (a "\r\n" may be
// split across chunks); a blank line ends an event; several data lines join
// with "\n"; lines starting with ':' are comments; a field without a colon
// has an empty value; one space after the colon is dropped; an event with no
// data is not dispatched. The zero value is ready to use. It allocates only
// while its buffers grow to the largest line and event seen, so steady-state
// decoding allocates nothing.
type SSEDecoder struct {
	line      []byte // a line split across chunks
	event     []byte
	data      []byte
	hasData   bool
	skipLF    bool // the previous chunk ended in '\r'
	discard   bool // dropping the rest of an over-long line
	dropEvent bool // the current event lost a line or overflowed
	started   bool
	dropped   int
}

// Dropped returns how many events were discarded because a line or their
// data exceeded MaxSSELine.
func (d *SSEDecoder) Dropped() int { return d.dropped }

// Write decodes one chunk, calling h for every event it completes.
func (d *SSEDecoder) Write(chunk []byte, h SSEHandler) {
	for len(chunk) > 0 {
		if d.skipLF {
			d.skipLF = false
			if chunk[0] == '\n' {
				chunk = chunk[1:]
				continue
			}
		}
		i := lineEnd(chunk)
		if i < 0 {
			d.partial(chunk)
			return
		}
		line := chunk[:i]
		if chunk[i] == '\r' {
			if i+1 == len(chunk) {
				d.skipLF = true
			} else if chunk[i+1] == '\n' {
				i++
			}
		}
		chunk = chunk[i+1:]
		if d.discard {
			d.discard = false
			continue
		}
		if len(d.line) > 0 {
			if len(d.line)+len(line) > MaxSSELine {
				d.overflow()
				d.line = d.line[:0]
				continue
			}
			d.appendLine(line)
			line = d.line
			d.line = d.line[:0] // line is consumed before the buffer is reused
		}
		d.processLine(line, h)
	}
}

// lineEnd returns the index of the first '\n' or '\r', or -1.
func lineEnd(b []byte) int {
	n := bytes.IndexByte(b, '\n')
	limit := b
	if n >= 0 {
		limit = b[:n]
	}
	if r := bytes.IndexByte(limit, '\r'); r >= 0 {
		return r
	}
	return n
}

func (d *SSEDecoder) partial(b []byte) {
	if d.discard {
		return
	}
	if len(d.line)+len(b) > MaxSSELine {
		d.overflow()
		d.discard = true
		d.line = d.line[:0]
		return
	}
	d.appendLine(b)
}

// appendLine appends to the carry buffer, growing it geometrically but never
// past MaxSSELine (callers check the total first).
func (d *SSEDecoder) appendLine(b []byte) {
	if need := len(d.line) + len(b); need > cap(d.line) {
		grown := make([]byte, len(d.line), min(max(2*cap(d.line), need, 256), MaxSSELine))
		copy(grown, d.line)
		d.line = grown
	}
	d.line = append(d.line, b...)
}

func (d *SSEDecoder) overflow() {
	if !d.dropEvent {
		d.dropped++
	}
	d.dropEvent = true
}

func (d *SSEDecoder) processLine(line []byte, h SSEHandler) {
	if !d.started {
		d.started = true
		line = bytes.TrimPrefix(line, []byte("\uFEFF"))
	}
	if len(line) > MaxSSELine {
		d.overflow()
		return
	}
	if len(line) == 0 {
		d.dispatch(h)
		return
	}
	if line[0] == ':' {
		return
	}
	field, value := line, line[len(line):]
	if c := bytes.IndexByte(line, ':'); c >= 0 {
		field, value = line[:c], line[c+1:]
		if len(value) > 0 && value[0] == ' ' {
			value = value[1:]
		}
	}
	switch string(field) {
	case "event":
		d.event = append(d.event[:0], value...)
	case "data":
		if len(d.data)+len(value)+1 > MaxSSELine {
			d.overflow()
			return
		}
		d.data = append(d.data, value...)
		d.data = append(d.data, '\n')
		d.hasData = true
	}
}

func (d *SSEDecoder) dispatch(h SSEHandler) {
	if d.hasData && !d.dropEvent {
		h.Event(d.event, d.data[:len(d.data)-1])
	}
	d.event, d.data = d.event[:0], d.data[:0]
	d.hasData, d.dropEvent = false, false
}
