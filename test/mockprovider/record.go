package mockprovider

import (
	"net/http"
	"sync"
	"time"
)

// A request with x-mock-record: true has its response recorded as it went
// on the wire — status, headers and body bytes after compression — so a
// test can compare what a client received through a proxy with what the
// mock sent. The recorder sits below the compressor, where every
// handler's response passes. It sets Date itself, so the recorded headers
// are all the headers the mock sends; only the framing net/http adds
// (transfer-encoding: chunked on a body sent without a length) is not
// among them.

// Transcript is one recorded response.
type Transcript struct {
	Status int         `json:"status"`
	Header http.Header `json:"header"`
	Body   []byte      `json:"body"`
	// Done: the handler returned, so the body is whole.
	Done bool `json:"done"`
	// Truncated: the body passed maxTranscriptBody and was not kept whole.
	Truncated bool `json:"truncated,omitempty"`
}

const (
	maxTranscripts    = 1000
	maxTranscriptBody = 8 << 20
)

// transcripts keeps the last maxTranscripts recordings by request id.
type transcripts struct {
	mu    sync.Mutex
	byID  map[string]*Transcript
	order []string
}

func (ts *transcripts) start(id string) *Transcript {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.byID == nil {
		ts.byID = map[string]*Transcript{}
	}
	if _, ok := ts.byID[id]; !ok {
		ts.order = append(ts.order, id)
	}
	if len(ts.order) > maxTranscripts {
		delete(ts.byID, ts.order[0])
		ts.order = ts.order[1:]
	}
	t := &Transcript{}
	ts.byID[id] = t
	return t
}

func (ts *transcripts) get(id string) (Transcript, bool) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	t, ok := ts.byID[id]
	if !ok {
		return Transcript{}, false
	}
	c := *t
	c.Header = t.Header.Clone()
	c.Body = append([]byte(nil), t.Body...)
	return c, true
}

func (ts *transcripts) reset() {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	ts.byID, ts.order = nil, nil
}

// recordWriter records what passes through it into the provider's
// transcripts, keyed by the request id the handler set.
type recordWriter struct {
	http.ResponseWriter
	ts *transcripts
	t  *Transcript
}

func (r *recordWriter) WriteHeader(code int) {
	if r.t != nil {
		return
	}
	h := r.Header()
	if h.Get("date") == "" {
		h.Set("date", time.Now().UTC().Format(http.TimeFormat))
	}
	id := h.Get("request-id")
	if id == "" {
		id = h.Get("x-request-id")
	}
	t := r.ts.start(id)
	r.ts.mu.Lock()
	t.Status, t.Header = code, h.Clone()
	r.ts.mu.Unlock()
	r.t = t
	r.ResponseWriter.WriteHeader(code)
}

func (r *recordWriter) Write(b []byte) (int, error) {
	if r.t == nil {
		r.WriteHeader(http.StatusOK)
	}
	n, err := r.ResponseWriter.Write(b)
	r.ts.mu.Lock()
	if len(r.t.Body)+n <= maxTranscriptBody {
		r.t.Body = append(r.t.Body, b[:n]...)
	} else {
		r.t.Truncated = true
	}
	r.ts.mu.Unlock()
	return n, err
}

// Unwrap implements the ResponseController contract.
func (r *recordWriter) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func (r *recordWriter) done() {
	if r.t == nil {
		return
	}
	r.ts.mu.Lock()
	r.t.Done = true
	r.ts.mu.Unlock()
}

// Sent returns the recorded response to the request whose response
// carries requestID (request-id or x-request-id), if x-mock-record asked
// for it.
func (p *Provider) Sent(requestID string) (Transcript, bool) { return p.sent.get(requestID) }

func (p *Provider) handleSent(w http.ResponseWriter, r *http.Request) {
	t, ok := p.Sent(r.URL.Query().Get("request_id"))
	if !ok {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no recorded response with that request_id (send x-mock-record: true)"})
		return
	}
	writeJSON(w, http.StatusOK, t) // the body as base64, as encoding/json writes []byte
}
