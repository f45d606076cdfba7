package sim

import (
	"fmt"
	"strconv"
	"time"

	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
)

// direction is one side of the exchange (Envoy's DecodingProcessorState /
// EncodingProcessorState, https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/processor_state.h):
// the request (decoding) or the response (encoding).
// It owns the held headers and body, the callback state, the message timer and
// the STREAMED chunk queue.
type direction struct {
	x       *exchange
	request bool
	dirMode // current effective mode; mode_override replaces it

	cb                cbState
	timer             *time.Timer
	timerC            <-chan time.Time
	timeoutOverridden bool // override_message_timeout honoured once per state
	attrsSent         bool

	hdrs      *headerMap
	endStream bool // the headers message had end_of_stream=true
	continued bool // headers passed on (upstream started / response head delivered)
	removeCL  bool // content-length stripped when headers were processed (see shouldRemoveContentLength)

	src         chan bodyEvent
	srcDone     bool // source delivered end of body
	held        []byte
	trailers    []Header
	queue       []queuedChunk // STREAMED chunks awaiting replies, FIFO
	queuedBytes int
	passThrough bool // the rest of the body flows unprocessed (NONE, partial done, replaced)
	dropRest    bool // CONTINUE_AND_REPLACE: original body chunks are drained
	bodyDone    bool // end of body (and trailers) forwarded
}

type queuedChunk struct {
	data []byte
	eos  bool
}

func (d *direction) name() string {
	if d.request {
		return "request"
	}
	return "response"
}

// readable returns the source channel when the loop should accept data, nil
// (never ready) while a watermark applies: a STREAMED queue over the buffer
// limit pauses reading, it is not an error (ProcessorState::enqueueStreamingChunk
// calls requestWatermark, https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/processor_state.cc).
func (d *direction) readable() <-chan bodyEvent {
	if d.src == nil || d.srcDone || d.x.finished {
		return nil
	}
	limit := d.x.cfg.BufferLimit
	if d.cb == cbHeaders && d.bodyMode != extprocfilterv3.ProcessingMode_BUFFERED && len(d.held) > limit {
		return nil
	}
	if d.queuedBytes > limit {
		return nil
	}
	if out := d.out(); out != nil && out.buffered() > limit {
		return nil
	}
	return d.src
}

func (d *direction) out() *pipe {
	if !d.continued {
		return nil
	}
	if d.request {
		return d.x.upBody
	}
	return d.x.down
}

func (d *direction) armTimer(t time.Duration) {
	if d.timer == nil {
		d.timer = time.NewTimer(t)
	} else {
		d.timer.Reset(t)
	}
	d.timerC = d.timer.C
}

func (d *direction) stopTimer() {
	if d.timer != nil {
		d.timer.Stop()
	}
	d.timerC = nil
}

// finishCall is Envoy's ProcessorState::onFinishProcessorCall
// (https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/processor_state.cc): stop the timer (even with
// STREAMED chunks still queued, so message_timeout is not a strict per-chunk
// deadline) and move to next.
func (d *direction) finishCall(next cbState) {
	d.stopTimer()
	d.cb = next
	d.timeoutOverridden = false
}

// onHeaders is decodeHeaders/encodeHeaders.
func (d *direction) onHeaders() {
	x := d.x
	if x.processingComplete || x.finished {
		d.continueHeaders()
		d.flushHeld()
		return
	}
	strip := d.shouldRemoveContentLength()
	if d.sendHeaders {
		hh := &extprocv3.HttpHeaders{Headers: d.hdrs.proto(x.cfg.LegacyHeaderValue), EndOfStream: d.endStream}
		m := &extprocv3.ProcessingRequest{}
		if d.request {
			m.Request = &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: hh}
		} else {
			m.Request = &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: hh}
		}
		// The processor sees the original headers; content-length is
		// stripped from what is forwarded (see shouldRemoveContentLength).
		if !x.send(d, m, cbHeaders) {
			return
		}
		if strip {
			d.hdrs.remove("content-length")
			d.removeCL = true
		}
		return
	}
	if strip {
		d.hdrs.remove("content-length")
		d.removeCL = true
	}
	// Headers not sent: they continue at once; a BUFFERED body is still
	// collected and sent, but its header mutations can no longer apply.
	d.continueHeaders()
	if d.endStream {
		d.finishBody()
	}
}

// continueHeaders passes the headers on: the router starts the upstream
// request, or the response head goes to the client.
func (d *direction) continueHeaders() {
	if d.continued || d.hdrs == nil {
		return
	}
	x := d.x
	if x.finished {
		return
	}
	d.continued = true
	if d.request {
		x.startUpstream()
		return
	}
	st, _ := d.hdrs.get(":status")
	code, _ := strconv.Atoi(st)
	x.deliverHead(code, d.hdrs.regular(), false, "")
}

// forward releases body bytes past the filter.
func (d *direction) forward(b []byte) {
	if len(b) == 0 {
		return
	}
	out := d.out()
	if out == nil {
		return
	}
	out.write(b)
	if d.request && !d.x.cfg.NoRecordBody {
		d.x.mu.Lock()
		d.x.sent.Body = append(d.x.sent.Body, b...)
		d.x.mu.Unlock()
	}
}

// forwardEnd ends the body (with trailers) past the filter.
func (d *direction) forwardEnd() {
	if d.bodyDone {
		return
	}
	d.bodyDone = true
	x := d.x
	if d.request {
		if x.sent != nil {
			x.mu.Lock()
			x.sent.Trailers = d.trailers
			x.mu.Unlock()
		}
		if x.upBody != nil {
			x.upBody.finish(nil)
		}
		return
	}
	x.mu.Lock()
	x.respTrailers = d.trailers
	x.mu.Unlock()
	x.eof = true
	x.finished = true
}

// flushHeld forwards everything held (after processing ended) and the end of
// the body if it is known.
func (d *direction) flushHeld() {
	if !d.continued {
		return
	}
	for _, c := range d.queue {
		d.forward(c.data)
	}
	d.queue, d.queuedBytes = nil, 0
	d.forward(d.held)
	d.held = nil
	if d.srcDone || d.endStream {
		d.forwardEnd()
	}
}

// clearAsync is Envoy's clearAsyncState (https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/ext_proc.cc,
// https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/processor_state.cc) after processing completes without
// an error reply: everything paused continues unmodified.
func (d *direction) clearAsync() {
	d.finishCall(cbIdle)
	d.passThrough = true
	d.continueHeaders()
	d.flushHeld()
}

// finishBody handles the end of the body once all data was processed: send
// trailers if the mode asks for them, else end.
func (d *direction) finishBody() {
	x := d.x
	if len(d.trailers) > 0 && d.sendTrailers && !x.processingComplete {
		ht := &extprocv3.HttpTrailers{Trailers: (&headerMap{h: d.trailers}).proto(x.cfg.LegacyHeaderValue)}
		m := &extprocv3.ProcessingRequest{}
		if d.request {
			m.Request = &extprocv3.ProcessingRequest_RequestTrailers{RequestTrailers: ht}
		} else {
			m.Request = &extprocv3.ProcessingRequest_ResponseTrailers{ResponseTrailers: ht}
		}
		x.send(d, m, cbTrailers)
		return
	}
	d.forwardEnd()
}

func (d *direction) sendBody(b []byte, eos bool, cb cbState) bool {
	hb := &extprocv3.HttpBody{Body: b, EndOfStream: eos}
	m := &extprocv3.ProcessingRequest{}
	if d.request {
		m.Request = &extprocv3.ProcessingRequest_RequestBody{RequestBody: hb}
	} else {
		m.Request = &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: hb}
	}
	return d.x.send(d, m, cb)
}

// sendChunk is one STREAMED data callback: sent at once (pipelined) and
// queued until its reply releases it, in FIFO order (Filter::handleDataStreamedMode
// in https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/ext_proc.cc,
// ProcessorState::handleStreamedBodyResponse in https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/processor_state.cc).
func (d *direction) sendChunk(b []byte, eos bool) {
	d.queue = append(d.queue, queuedChunk{data: b, eos: eos})
	d.queuedBytes += len(b)
	d.sendBody(b, eos, cbStreamedBody)
}

// onData is decodeData/encodeData (Filter::onData in
// https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/ext_proc.cc).
func (d *direction) onData(ev bodyEvent) {
	x := d.x
	if ev.err != nil {
		if d.request {
			x.abort() // downstream reset
		} else if x.headSent {
			x.reset() // upstream reset mid-body
		} else {
			x.localReply(503, nil, nil, "upstream_reset_after_response_started")
		}
		return
	}
	if ev.eos {
		d.srcDone = true
		d.trailers = ev.trailers
	}
	if d.dropRest {
		return
	}
	lastData := ev.eos && len(d.trailers) == 0 // end_of_stream only without trailers
	limit := x.cfg.BufferLimit

	if x.processingComplete || d.passThrough {
		d.held = append(d.held, ev.data...)
		d.flushHeld()
		return
	}
	if d.cb == cbHeaders || d.cb == cbBufferedBody || d.cb == cbBufferedPartial || (!d.continued && d.cb != cbIdle) {
		// Header or buffered-body reply outstanding: hold the data
		// (StopIterationAndBuffer / StopIterationAndWatermark); a partial
		// body's remainder waits here for its reply.
		d.held = append(d.held, ev.data...)
		if d.bodyMode == extprocfilterv3.ProcessingMode_BUFFERED && len(d.held) > limit {
			d.tooLarge()
		}
		return
	}
	switch d.bodyMode {
	case extprocfilterv3.ProcessingMode_BUFFERED:
		d.held = append(d.held, ev.data...)
		if len(d.held) > limit {
			d.tooLarge()
			return
		}
		if d.srcDone {
			d.sendBuffered()
		}
	case extprocfilterv3.ProcessingMode_BUFFERED_PARTIAL:
		d.held = append(d.held, ev.data...)
		if len(d.held) >= limit || d.srcDone {
			d.sendPartial()
		}
	case extprocfilterv3.ProcessingMode_STREAMED:
		if len(ev.data) > 0 || lastData {
			d.sendChunk(ev.data, lastData)
		}
		if ev.eos && !lastData && len(d.queue) == 0 {
			d.finishBody()
		}
	default: // NONE
		if !d.continued {
			d.held = append(d.held, ev.data...)
			return
		}
		d.forward(ev.data)
		if ev.eos {
			d.finishBody()
		}
	}
}

// tooLarge is the filter manager's requestDataTooLarge (413) /
// responseDataTooLarge (500) for a BUFFERED body over the buffer limit
// (https://github.com/envoyproxy/envoy/blob/main/source/common/http/filter_manager.cc).
func (d *direction) tooLarge() {
	x := d.x
	if d.request {
		x.localReply(413, nil, []byte("Payload Too Large"), "request_payload_too_large")
		return
	}
	x.localReply(500, nil, []byte("Internal Server Error"), "response_payload_too_large")
}

func (d *direction) sendBuffered() {
	b := d.held
	d.sendBody(b, len(d.trailers) == 0, cbBufferedBody)
}

func (d *direction) sendPartial() {
	n := min(len(d.held), d.x.cfg.BufferLimit)
	eos := d.srcDone && n == len(d.held) && len(d.trailers) == 0
	d.sendBody(d.held[:n:n], eos, cbBufferedPartial)
}

// headersResponse is Envoy's ProcessorState::handleHeadersResponse
// (https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/processor_state.cc).
func (d *direction) headersResponse(cr *extprocv3.CommonResponse) error {
	if d.cb != cbHeaders {
		return fmt.Errorf("%s headers response: %w", d.name(), errSpurious)
	}
	x := d.x
	d.finishCall(cbIdle)
	replace := cr.GetStatus() == extprocv3.CommonResponse_CONTINUE_AND_REPLACE
	n, err := applyHeaderMutation(d.hdrs, cr.GetHeaderMutation(), x.mutationOptions(d.removeCL, replace))
	if err != nil {
		return err
	}
	d.noteRejected(n)
	d.clearRouteCache(cr)
	kind := d.name() + "_headers"
	if replace {
		// CONTINUE_AND_REPLACE (CommonResponse.status, https://www.envoyproxy.io/docs/envoy/latest/api-v3/service/ext_proc/v3/external_processor.proto):
		// replace the body, strip content-length, no more messages in this
		// direction (ProcessorState::handleHeadersResponseWithContinueAndReplace,
		// applyReplacementBodyMutation in processor_state.cc).
		d.bodyMode = extprocfilterv3.ProcessingMode_NONE
		d.sendTrailers = false
		d.passThrough = true
		if nb, ok := bodyMutation(cr.GetBodyMutation()); ok {
			d.hdrs.remove("content-length")
			d.dropRest = true
			d.held = nil
			d.continueHeaders()
			if x.finished {
				return nil
			}
			d.forward(nb)
			d.forwardEnd()
			x.checkClose(kind, false)
			return nil
		}
		d.continueHeaders()
		d.flushHeld()
		x.checkClose(kind, false)
		return nil
	}
	x.checkClose(kind, false)
	d.afterHeaders()
	return nil
}

// afterHeaders decides how the body continues once the header reply is in
// (the continuation of Filter::onHeaders in https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/ext_proc.cc;
// ProcessorState::handleCompleteBodyAvailable and
// sendBufferedDataInStreamedMode in https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/processor_state.cc).
func (d *direction) afterHeaders() {
	x := d.x
	if d.endStream {
		d.continueHeaders()
		d.finishBody()
		return
	}
	if x.processingComplete {
		d.clearAsync()
		return
	}
	if d.bodyMode == extprocfilterv3.ProcessingMode_NONE {
		d.passThrough = true
		d.continueHeaders()
		d.forward(d.held)
		d.held = nil
		if d.srcDone {
			d.finishBody()
		}
		return
	}
	if d.srcDone {
		// The whole body arrived during the header round trip: one message,
		// tracked as a buffered callback, headers still held
		// (ProcessorState::handleCompleteBodyAvailable).
		d.sendBody(d.held, len(d.trailers) == 0, cbBufferedBody)
		return
	}
	switch d.bodyMode {
	case extprocfilterv3.ProcessingMode_STREAMED:
		d.continueHeaders()
		if len(d.held) > 0 && !x.finished {
			b := d.held
			d.held = nil
			d.sendChunk(b, false) // everything accumulated so far, as one chunk
		}
	case extprocfilterv3.ProcessingMode_BUFFERED_PARTIAL:
		if len(d.held) >= x.cfg.BufferLimit {
			d.sendPartial()
		}
	}
	// BUFFERED: keep holding headers and data until the end of the body.
}

// bodyResponse is Envoy's ProcessorState::handleBodyResponse
// (https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/processor_state.cc).
func (d *direction) bodyResponse(cr *extprocv3.CommonResponse) error {
	x := d.x
	kind := d.name() + "_body"
	switch d.cb {
	case cbBufferedBody, cbBufferedPartial:
		partial := d.cb == cbBufferedPartial
		if !d.continued {
			// Headers are still held: header mutations apply (the
			// BufferedBodyCallback branch of handleBodyResponse).
			n, err := applyHeaderMutation(d.hdrs, cr.GetHeaderMutation(), x.mutationOptions(d.removeCL, false))
			if err != nil {
				return err
			}
			d.noteRejected(n)
		} else if cr.GetHeaderMutation() != nil {
			x.record(Event{Kind: EventIgnored, Detail: d.name() + " body header_mutation after headers were sent"})
		}
		n := len(d.held)
		if partial {
			n = min(n, x.cfg.BufferLimit)
		}
		body, rest := d.held[:n:n], d.held[n:]
		if nb, ok := bodyMutation(cr.GetBodyMutation()); ok {
			if !d.continued {
				if cl, ok := d.hdrs.get("content-length"); ok {
					if v, err := strconv.Atoi(cl); err != nil || v != len(nb) {
						return mutationErr("mismatch between content length and the length of the mutated body")
					}
				}
			}
			body = nb
		}
		d.finishCall(cbIdle)
		d.clearRouteCache(cr)
		d.continueHeaders()
		if x.finished {
			return nil
		}
		d.held = nil
		d.forward(body)
		d.forward(rest)
		if partial {
			d.passThrough = true
		}
		if d.srcDone {
			d.finishBody()
		}
		return nil
	case cbStreamedBody:
		if len(d.queue) == 0 {
			return fmt.Errorf("%s body response with no chunk outstanding: %w", d.name(), errSpurious)
		}
		if _, ok := cr.GetBodyMutation().GetMutation().(*extprocv3.BodyMutation_StreamedResponse); ok {
			return fmt.Errorf("streamed_response in STREAMED mode: %w", errSpurious)
		}
		c := d.queue[0]
		d.queue = d.queue[1:]
		d.queuedBytes -= len(c.data)
		next := cbIdle
		if len(d.queue) > 0 {
			next = cbStreamedBody
		}
		d.finishCall(next)
		if cr.GetHeaderMutation() != nil {
			// Headers already went: ignored in STREAMED (CommonResponse.header_mutation,
			// https://www.envoyproxy.io/docs/envoy/latest/api-v3/service/ext_proc/v3/external_processor.proto).
			x.record(Event{Kind: EventIgnored, Detail: d.name() + " streamed body header_mutation"})
		}
		d.clearRouteCache(cr)
		out := c.data
		if nb, ok := bodyMutation(cr.GetBodyMutation()); ok {
			out = nb
		}
		d.forward(out)
		if c.eos {
			x.checkClose(kind, true)
			d.forwardEnd()
		} else if d.srcDone && len(d.queue) == 0 {
			d.finishBody() // trailers follow
		}
		return nil
	}
	return fmt.Errorf("%s body response in state %d: %w", d.name(), d.cb, errSpurious)
}

// trailersResponse is Envoy's ProcessorState::handleTrailersResponse
// (https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/processor_state.cc).
func (d *direction) trailersResponse(mut *extprocv3.HeaderMutation) error {
	if d.cb != cbTrailers {
		return fmt.Errorf("%s trailers response: %w", d.name(), errSpurious)
	}
	x := d.x
	d.finishCall(cbIdle)
	tm := &headerMap{h: d.trailers}
	n, err := applyHeaderMutation(tm, mut, x.mutationOptions(false, false))
	if err != nil {
		return err
	}
	d.noteRejected(n)
	d.trailers = tm.h
	x.checkClose(d.name()+"_trailers", false)
	d.forwardEnd()
	return nil
}

// clearRouteCache is DecodingProcessorState::clearRouteCache
// (https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/processor_state.cc): request path only, and only
// together with a header mutation (CommonResponse.clear_route_cache,
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/service/ext_proc/v3/external_processor.proto).
func (d *direction) clearRouteCache(cr *extprocv3.CommonResponse) {
	if !cr.GetClearRouteCache() {
		return
	}
	if !d.request || cr.GetHeaderMutation() == nil {
		d.x.record(Event{Kind: EventIgnored, Detail: "clear_route_cache"})
		return
	}
	d.x.record(Event{Kind: EventClearRouteCache})
}

func (d *direction) noteRejected(n int) {
	if n > 0 {
		d.x.record(Event{Kind: EventMutationRejected, Detail: fmt.Sprintf("%s: %d header mutations ignored", d.name(), n)})
	}
}
