package extproc

import (
	"context"
	"strings"
	"time"

	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter"
)

const (
	phaseRequestHeaders  = "request_headers"
	phaseRequestBody     = "request_body"
	phaseResponseHeaders = "response_headers"
	phaseResponseBody    = "response_body"
)

// Outcomes of a request, the values of tokenwarden_requests_total{outcome}.
const (
	outcomeOK             = "ok"              // usage measured from the provider
	outcomeUsageMissing   = "usage_missing"   // the response ended without usage: charged estimated
	outcomeEstimated      = "estimated"       // the stream was cut before usage: charged estimated
	outcomeUpstreamError  = "upstream_error"  // the provider answered with an error
	outcomeDenied         = "denied"          // tokenwarden answered 429
	outcomeInvalidRequest = "invalid_request" // tokenwarden answered 400
	outcomeStoreError     = "store_error"     // the store was down and the policy fails closed
)

// Limits on bodies the processor holds. Envoy bounds BUFFERED bodies by its
// own buffer limit; these bound the cases where the processor accumulates
// STREAMED chunks itself.
const (
	maxRequestBody  = 64 << 20
	maxResponseJSON = 16 << 20
)

// exchange is the state of one HTTP request and its response. It is used by
// one goroutine (the stream's), so it needs no locking.
type exchange struct {
	s   *Server
	ctx context.Context
	cfg *policy.Config

	dialect     dialect
	passThrough bool
	tenant      string
	routePolicy string
	policy      *policy.Policy
	requestID   string
	clientReqID string

	streamedRequest bool
	reqBody         []byte

	parsed         bool
	req            wire.Request
	requestedModel string
	model          string
	modelLabel     string
	rewriteReason  string
	price          accounting.Price
	estimate       accounting.Usage
	estimateCost   accounting.NanoUSD

	admitted    bool // a reservation exists in the store and must be settled
	decision    limiter.Decision
	decisionTag string
	forwardedAt time.Time

	status   int
	parser   wire.StreamParser
	respBody []byte
	finished bool
}

func (s *Server) newExchange(ctx context.Context) *exchange {
	return &exchange{s: s, ctx: ctx, cfg: s.opts.Config.Load(), decisionTag: "none"}
}

// handle answers one message from Envoy. after, when set, runs once the
// answer has been sent: the final settle, kept off the response's latency.
func (x *exchange) handle(req *extprocv3.ProcessingRequest) (resp *extprocv3.ProcessingResponse, after func()) {
	start := time.Now()
	var phase string
	switch r := req.Request.(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		phase = phaseRequestHeaders
		resp = x.onRequestHeaders(r.RequestHeaders, req)
	case *extprocv3.ProcessingRequest_RequestBody:
		phase = phaseRequestBody
		resp = x.onRequestBody(r.RequestBody)
	case *extprocv3.ProcessingRequest_RequestTrailers:
		return requestTrailersResponse(), nil
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		phase = phaseResponseHeaders
		resp, after = x.onResponseHeaders(r.ResponseHeaders)
	case *extprocv3.ProcessingRequest_ResponseBody:
		phase = phaseResponseBody
		resp, after = x.onResponseBody(r.ResponseBody)
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		// With trailers, no body message carries end_of_stream: the trailers
		// are the end of the response.
		resp = responseTrailersResponse()
		if !x.finished && x.parsed && !x.passThrough {
			f := x.finalUsage()
			resp = withMetadata(resp, f.metadata)
			after = f.settle
		}
		return resp, after
	default:
		return nil, nil
	}
	x.s.opts.Metrics.phase[phase].Observe(time.Since(start).Seconds())
	return resp, after
}

func (x *exchange) onRequestHeaders(h *extprocv3.HttpHeaders, req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
	var path, method string
	var clientModelHeader bool
	sources := x.cfg.Tenant.Sources
	var found [policy.MaxTenantSources]string
	for _, hv := range h.GetHeaders().GetHeaders() {
		switch hv.Key {
		case ":path":
			path = headerValue(hv)
		case ":method":
			method = headerValue(hv)
		case "x-request-id":
			x.clientReqID = headerValue(hv)
		case modelHeader:
			clientModelHeader = true
		}
		for i := 0; i < len(sources) && i < len(found); i++ {
			if found[i] == "" && (hv.Key == sources[i].Header || hv.Key == sources[i].APIKeyOf) {
				found[i] = headerValue(hv)
			}
		}
	}
	x.tenant = x.cfg.Tenant.Default
	for i := 0; i < len(sources) && i < len(found); i++ {
		if v := strings.TrimSpace(found[i]); v != "" {
			x.tenant = tenantFromSource(sources[i], v)
			break
		}
	}
	if attrs := req.GetAttributes()[attributesKey]; attrs != nil {
		x.routePolicy = attrs.GetFields()[PolicyAttribute].GetStringValue()
	}
	var known bool
	x.policy, known = x.cfg.Policy(x.tenant, x.routePolicy)
	if !known {
		// Route metadata is the operator's, so the names are few: warn once each.
		if _, warned := x.s.unknownPolicies.LoadOrStore(x.routePolicy, true); !warned {
			x.s.log.Warn("route names an unknown policy; using the tenant's or default policy", "policy", x.routePolicy, "used", x.policy.Name)
		}
	}

	// x-tokenwarden-model is tokenwarden's to set: routes may match on it, so a
	// client's own value is removed and the route picked again without it.
	var edits *headerEdits
	if clientModelHeader {
		edits = &headerEdits{}
		edits.Remove(modelHeader)
	}
	x.dialect = dialectFor(path)
	if x.dialect == nil || method != "POST" {
		x.passThrough = true
		x.finished = true
		x.s.opts.Metrics.Requests.WithLabelValues("passthrough", policy.OtherLabel, outcomeOK).Inc()
		return requestHeadersResponse(common(edits, nil, false, true), passThroughMode)
	}
	if h.GetEndOfStream() {
		return x.reject(400, errInvalidRequest, "", "tokenwarden: the request has no body", outcomeInvalidRequest, nil)
	}
	x.requestID = x.s.nextRequestID()
	// A request body Envoy would stream chunk by chunk is asked for whole, when
	// the filter allows overrides; otherwise onRequestBody copes with chunks.
	if pc := req.GetProtocolConfig(); pc != nil && pc.GetRequestBodyMode() == filterv3.ProcessingMode_STREAMED {
		return requestHeadersResponse(common(edits, nil, false, true), &filterv3.ProcessingMode{
			RequestBodyMode:  filterv3.ProcessingMode_BUFFERED,
			ResponseBodyMode: pc.GetResponseBodyMode(),
		})
	}
	return requestHeadersResponse(common(edits, nil, false, true), nil)
}

// tenantFromSource turns a source's header value into a tenant name that is
// safe in store keys and logs: an API key becomes its fingerprint, and a
// header value that is not a plain name is fingerprinted too.
func tenantFromSource(src policy.TenantSource, v string) string {
	if src.APIKeyOf != "" || !policy.ValidTenant(v) {
		return policy.Fingerprint(v)
	}
	return v
}

func (x *exchange) onRequestBody(b *extprocv3.HttpBody) *extprocv3.ProcessingResponse {
	if x.passThrough || x.finished || x.parsed {
		return requestBodyResponse(nil)
	}
	if !b.GetEndOfStream() {
		// STREAMED request body: hold every chunk back (clear it) and send the
		// whole, possibly rewritten, body with the last chunk's answer.
		x.streamedRequest = true
		if len(x.reqBody)+len(b.GetBody()) > maxRequestBody {
			return x.reject(413, errInvalidRequest, "", "tokenwarden: request body too large", outcomeInvalidRequest, nil)
		}
		x.reqBody = append(x.reqBody, b.GetBody()...)
		return requestBodyResponse(&extprocv3.CommonResponse{BodyMutation: &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_ClearBody{ClearBody: true}}})
	}
	body := b.GetBody()
	if x.streamedRequest {
		x.reqBody = append(x.reqBody, body...)
		body = x.reqBody
	}
	return x.admitRequest(body)
}
