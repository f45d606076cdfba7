package gate

import (
	"strconv"
	"time"

	"github.com/tokenwarden/tokenwarden/accounting"
)

// Headers is read access to a request's or response's headers as Envoy
// reports them: names in lower case, pseudo-headers (":path", ":method",
// ":status") included.
type Headers interface {
	// Get returns the value of the first header named name.
	Get(name string) (value string, ok bool)
}

// Header is one header name and value.
type Header struct{ Name, Value string }

// HeaderList is a Headers over a slice, for tests and simple callers.
type HeaderList []Header

// Get implements Headers.
func (l HeaderList) Get(name string) (string, bool) {
	for _, h := range l {
		if h.Name == name {
			return h.Value, true
		}
	}
	return "", false
}

// Envoy is what Envoy knows about a request beyond its headers, none of
// which a client can set: the request attributes it evaluated and the
// dynamic metadata earlier filters wrote (jwt_authn, ext_authz) that the
// ext_proc filter forwards.
type Envoy interface {
	// Attribute returns the value of a request attribute, by the exact
	// expression text listed in the filter's request_attributes.
	Attribute(expr string) (string, bool)
	// Metadata returns the string (or number, printed) at a path in the
	// forwarded dynamic metadata of a namespace.
	Metadata(namespace string, path ...string) (string, bool)
}

// Request is what the gate learns at request headers.
type Request struct {
	Headers Headers
	// Envoy is what Envoy authenticated or configured; nil means nothing.
	Envoy Envoy
	// RoutePolicy is the policy the route names in its metadata, "" when it
	// names none. Only Envoy's configuration sets it; a client cannot.
	RoutePolicy string
	// RouteLane is the lane the route names in its metadata, "" when it
	// names none (the policy's default lane). Only Envoy's configuration
	// sets it.
	RouteLane string
	// EndOfStream reports a request without a body.
	EndOfStream bool
}

// EnvoyValues is an Envoy over plain maps, for tests and simple callers:
// Attributes by expression, Metadata by namespace as nested maps.
type EnvoyValues struct {
	Attrs map[string]string
	Meta  map[string]map[string]any
}

// Attribute implements Envoy.
func (e EnvoyValues) Attribute(expr string) (string, bool) {
	v, ok := e.Attrs[expr]
	return v, ok
}

// Metadata implements Envoy.
func (e EnvoyValues) Metadata(namespace string, path ...string) (string, bool) {
	var cur any = e.Meta[namespace]
	for _, p := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return "", false
		}
		cur = m[p]
	}
	return scalarString(cur)
}

// scalarString prints a metadata leaf: strings as they are, whole numbers
// without a fraction (JSON numbers arrive as float64), booleans; anything
// else is not an identity.
func scalarString(v any) (string, bool) {
	switch x := v.(type) {
	case string:
		return x, x != ""
	case float64:
		if x == float64(int64(x)) {
			return strconv.FormatInt(int64(x), 10), true
		}
		return strconv.FormatFloat(x, 'f', -1, 64), true
	case bool:
		return strconv.FormatBool(x), true
	}
	return "", false
}

// HeaderEdits are header changes: removals first, then sets, which
// overwrite.
type HeaderEdits struct {
	Set    []Header
	Remove []string
}

func (e *HeaderEdits) set(name, value string) { e.Set = append(e.Set, Header{name, value}) }

func (e *HeaderEdits) remove(name string) { e.Remove = append(e.Remove, name) }

// Empty reports whether there is nothing to change.
func (e *HeaderEdits) Empty() bool { return len(e.Set) == 0 && len(e.Remove) == 0 }

// Reply is an answer tokenwarden gives itself instead of the provider: its
// status, headers (content-type and content-length included) and body in
// the dialect's error shape.
type Reply struct {
	Status  int
	Headers []Header
	Body    []byte
	// Details names why, for Envoy's %RESPONSE_CODE_DETAILS%.
	Details string
}

// HeadersVerdict answers request headers.
type HeadersVerdict struct {
	// PassThrough: tokenwarden does not govern this request (not an LLM
	// call it meters); nothing more about it needs to reach the gate.
	PassThrough bool
	// ResponseOnly: the request has no body to admit (a batch's results
	// download); only its response is read.
	ResponseOnly bool
	// Reply, when set, ends the request with a local answer.
	Reply *Reply
	Edits HeaderEdits
}

// BodyVerdict answers the request body.
type BodyVerdict struct {
	// Reply, when set, ends the request with a local answer (refused,
	// denied, or the store failed closed); nothing was reserved.
	Reply *Reply
	// Body is the body to forward; BodyChanged reports it differs from the
	// one received.
	Body        []byte
	BodyChanged bool
	Edits       HeaderEdits
	// Wait, when set, means the request waits in the queue for capacity:
	// nothing is answered yet; Exchange.Wait gives the final verdict.
	Wait *Wait
	// Gone: the client went away while the request waited; there is no one
	// to answer, and nothing is held.
	Gone bool
}

// ResponseVerdict answers the response headers.
type ResponseVerdict struct {
	Edits HeaderEdits
	// Stream asks for the body chunk by chunk as it arrives (SSE): each
	// chunk is answered at once, never held whole.
	Stream bool
	// SkipBody: the body is not worth reading (an error response).
	SkipBody bool
	// Done: the request is metered; Outcome is final and Settle is due once
	// this answer is sent.
	Done bool
}

// ChunkVerdict answers one response body chunk.
type ChunkVerdict struct {
	// Done: the request is metered; Outcome is final and Settle is due once
	// this answer is sent.
	Done bool
	// Replace: the client receives Body instead of the chunk — none of it
	// when Body is empty. Otherwise the chunk goes on unchanged.
	Body    []byte
	Replace bool
}

// Result is how a request ended, the values of
// tokenwarden_requests_total{outcome}.
type Result string

const (
	ResultOK             Result = "ok"              // usage measured from the provider
	ResultUsageMissing   Result = "usage_missing"   // the response ended without usage (or an empty one): charged estimated
	ResultUsageInvalid   Result = "usage_invalid"   // the provider reported impossible usage: charged estimated
	ResultEstimated      Result = "estimated"       // the stream was cut before usage: charged estimated
	ResultBackground     Result = "background"      // a background response (Responses API): its usage comes later, elsewhere; charged its estimate
	ResultBatchReserved  Result = "batch_reserved"  // a batch the provider accepted: reserved until settled or charged its estimate at its lease's end
	ResultBatchResults   Result = "batch_results"   // a batch's results downloaded without settling it (already settled, unknown, or unreadable)
	ResultBatchFile      Result = "batch_file"      // an OpenAI batch input file uploaded: its estimate kept for the batch that names it
	ResultBatchStatus    Result = "batch_status"    // an OpenAI batch polled without settling it (unfinished, already settled, or unknown)
	ResultUpstreamError  Result = "upstream_error"  // the provider answered with an error
	ResultDenied         Result = "denied"          // tokenwarden answered 429
	ResultInvalidRequest Result = "invalid_request" // tokenwarden answered 4xx for the request itself
	ResultStoreError     Result = "store_error"     // the store failed and the policy fails closed
)

// Source says where a charge came from, the values of {source} on spend.
type Source string

const (
	SourceMeasured  Source = "measured"  // the provider's own usage
	SourceEstimated Source = "estimated" // tokenwarden's estimate
)

// PassThroughDialect is the dialect label of requests tokenwarden does not
// govern.
const PassThroughDialect = "passthrough"

// Outcome is one request as it ended, for metrics and the access log.
type Outcome struct {
	Dialect        string
	Tenant         string
	TenantLabel    string // Tenant if configured, else "other"
	Policy         string
	RequestedModel string
	Model          string // the model served (after rewrites)
	ModelLabel     string // the canonical model if priced, else "other"
	Result         Result
	// Decision is the admission's result: allowed, denied_<dimension>,
	// failed_open, failed_closed, local; or the Result when admission never
	// ran.
	Decision string
	// Metered reports a request that reached the provider; only then are
	// Usage, Cost, Source and Latency meaningful.
	Metered bool
	Usage   accounting.Usage
	Cost    accounting.Cost
	Source  Source
	// UsageMissing reports that the provider's answer carried no usage.
	UsageMissing bool
	// Unpriced reports a metered request whose model has no price: it was
	// charged at the fallback price (and ModelLabel is "other").
	Unpriced bool
	// Latency is from forwarding the request to the end of its response.
	Latency time.Duration
	// OutputClamped is the output bound the request was forwarded with when
	// its budgets could not hold its own (budget_reservation: full), else 0.
	OutputClamped int64
}
