package sim

import (
	"errors"
	"fmt"
	"regexp"
	"time"

	extprocfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	"google.golang.org/protobuf/proto"
)

// Envoy defaults: message_timeout and status_on_error from
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/ext_proc/v3/ext_proc.proto,
// per_connection_buffer_limit_bytes from
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/listener/v3/listener.proto, the
// graceful-close wait DefaultRemoteCloseTimeoutMilliseconds from
// https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/ext_proc.cc, and the
// header limits max_request_headers_kb
// (https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto)
// and common_http_protocol_options.max_headers_count
// (https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/protocol.proto).
const (
	DefaultMessageTimeout     = 200 * time.Millisecond // ext_proc config.h DefaultMessageTimeoutMs
	DefaultStatusOnError      = 500
	DefaultBufferLimit        = 1 << 20 // per_connection_buffer_limit_bytes
	DefaultRemoteCloseTimeout = time.Second
	DefaultStreamOpenTimeout  = 5 * time.Second // not Envoy's: see Config.StreamOpenTimeout
	DefaultMaxHeaders         = 100             // HCM max_headers_count
	DefaultMaxHeadersKB       = 60              // HCM max_request_headers_kb
)

// CloseMode selects how the filter closes the gRPC stream: Envoy's
// Filter::closeStreamMaybeGraceful (https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/ext_proc.cc)
// calls ProcessorStreamImpl::close or halfCloseAndDeleteOnRemoteClose
// (https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/common/ext_proc/grpc_client_impl.h).
type CloseMode int

const (
	// CloseDefault half-closes and immediately cancels (RST_STREAM): the
	// server sees io.EOF and a cancelled context.
	CloseDefault CloseMode = iota
	// CloseGraceful (runtime guard ext_proc_graceful_grpc_close) half-closes
	// and waits up to Config.RemoteCloseTimeout for the server to return
	// before cancelling.
	CloseGraceful
)

// MutationRules mirrors envoy.config.common.mutation_rules.v3.HeaderMutationRules
// (https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/common/mutation_rules/v3/mutation_rules.proto).
// The zero value is Envoy's default rule set.
type MutationRules struct {
	AllowAllRouting    bool           // allow host, :authority, :method, :scheme
	AllowEnvoy         bool           // allow x-envoy* headers
	DisallowSystem     bool           // disallow all ':' headers
	DisallowAll        bool           // disallow everything not matched by AllowExpression
	AllowExpression    *regexp.Regexp // matched names are allowed (after DisallowExpression)
	DisallowExpression *regexp.Regexp // matched names are disallowed, first rule checked
	DisallowIsError    bool           // a disallowed mutation fails the exchange (500) instead of being ignored
}

// EmptyLast says when a body ends with an empty end_of_stream chunk.
type EmptyLast int

const (
	// EmptyLastAuto sends a separate empty end_of_stream chunk exactly when the
	// source reports EOF separately from data (HTTP/1 chunked upstreams,
	// pipes); an in-memory Request.Body ends on its last data chunk.
	EmptyLastAuto EmptyLast = iota
	// EmptyLastAlways always ends with an empty end_of_stream chunk.
	EmptyLastAlways
	// EmptyLastRandom decides per body with the Chunking random source.
	EmptyLastRandom
)

// Chunking says how body bytes are split into data callbacks, which is what
// STREAMED mode turns into messages: one per decodeData/encodeData callback,
// with no relation to SSE event boundaries (BodySendMode STREAMED,
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/ext_proc/v3/processing_mode.proto).
type Chunking struct {
	// Size > 0 splits each read into pieces of at most Size bytes.
	Size int
	// Random splits each read at random byte boundaries (pieces of 1..MaxSize
	// bytes, MaxSize default 64), independent of SSE "\n\n" boundaries. The
	// generator is seeded from Seed and the exchange number, so a run is
	// reproducible.
	Random  bool
	Seed    uint64
	MaxSize int
	// EmptyLast controls the empty final chunk.
	EmptyLast EmptyLast
}

// Config is the filter-level ext_proc configuration plus the runtime guards
// that change its behaviour. Zero durations and sizes mean the Envoy default;
// the runtime guards are phrased so that false is Envoy's default.
type Config struct {
	// ProcessingMode is the filter-level processing_mode; nil means all
	// DEFAULT: headers SEND, bodies NONE, trailers SKIP
	// (https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/ext_proc/v3/processing_mode.proto).
	ProcessingMode       *extprocfilterv3.ProcessingMode
	AllowModeOverride    bool
	AllowedOverrideModes []*extprocfilterv3.ProcessingMode
	// MessageTimeout is message_timeout (0 → 200ms); MaxMessageTimeout is
	// max_message_timeout (0 disables override_message_timeout).
	MessageTimeout    time.Duration
	MaxMessageTimeout time.Duration
	// StreamOpenTimeout bounds opening the gRPC stream (0 → 5s), which in
	// grpc-go includes connecting; expiry is handled like message_timeout.
	StreamOpenTimeout time.Duration
	FailureModeAllow  bool
	// StatusOnError is status_on_error (0 → 500).
	StatusOnError int
	// ReceivingNamespaces is metadata_options.receiving_namespaces.untyped.
	ReceivingNamespaces []string
	// ForwardingNamespaces is metadata_options.forwarding_namespaces.untyped:
	// the namespaces of the request's dynamic metadata (Request.Metadata,
	// what jwt_authn or ext_authz wrote before ext_proc ran) copied into
	// every message's metadata_context.filter_metadata.
	ForwardingNamespaces []string
	// RequestAttributes / ResponseAttributes are the CEL expressions listed in
	// request_attributes / response_attributes.
	RequestAttributes  []string
	ResponseAttributes []string
	MutationRules      MutationRules
	// BufferLimit is the per-stream buffer limit (0 → 1 MiB).
	BufferLimit int
	// ClusterName is the :authority of the gRPC stream (envoy_grpc.cluster_name).
	ClusterName string
	// InitialMetadata is grpc_service.initial_metadata.
	InitialMetadata map[string]string
	// Close selects the close semantics; RemoteCloseTimeout (0 → 1s) bounds
	// the graceful wait.
	Close              CloseMode
	RemoteCloseTimeout time.Duration
	// DisableStreamCloseOptimization turns off ext_proc_stream_close_optimization
	// (on by default): the stream then closes only at the end of the exchange.
	DisableStreamCloseOptimization bool
	// DisableFailCloseSpurious turns off ext_proc_fail_close_spurious_resp (on
	// by default): spurious responses then fail open.
	DisableFailCloseSpurious bool
	// LegacyHeaderValue turns off send_header_raw_value (on by default):
	// header values are sent in `value` and set_headers reads `value`.
	LegacyHeaderValue bool
	// DisableImmediateResponse is disable_immediate_response: an
	// ImmediateResponse is then spurious.
	DisableImmediateResponse bool
	// MaxHeaders / MaxHeadersKB bound header maps after mutation (0 → HCM
	// defaults 100 / 60).
	MaxHeaders, MaxHeadersKB int
	// Chunking controls how bodies are split into data callbacks.
	Chunking Chunking
	// NoTrace disables Response.Trace and NoRecordBody the copy of the
	// upstream request body in Response.UpstreamRequest: both grow with the
	// body, which a gateway or a load run does not want.
	NoTrace, NoRecordBody bool
}

// normalized returns a copy with defaults filled in, or an error for
// configurations Envoy rejects or this package cannot emulate.
func (c Config) normalized() (Config, error) {
	if c.MessageTimeout < 0 || c.MaxMessageTimeout < 0 || c.RemoteCloseTimeout < 0 {
		return c, errors.New("sim: negative timeout")
	}
	if c.MessageTimeout > time.Hour || c.MaxMessageTimeout > time.Hour {
		return c, errors.New("sim: message timeouts must be within [0s, 1h]")
	}
	if c.MessageTimeout == 0 {
		c.MessageTimeout = DefaultMessageTimeout
	}
	if c.StatusOnError == 0 {
		c.StatusOnError = DefaultStatusOnError
	}
	if c.StatusOnError < 200 || c.StatusOnError > 599 {
		return c, fmt.Errorf("sim: status_on_error %d out of range", c.StatusOnError)
	}
	if c.BufferLimit <= 0 {
		c.BufferLimit = DefaultBufferLimit
	}
	if c.StreamOpenTimeout <= 0 {
		c.StreamOpenTimeout = DefaultStreamOpenTimeout
	}
	if c.RemoteCloseTimeout == 0 {
		c.RemoteCloseTimeout = DefaultRemoteCloseTimeout
	}
	if c.MaxHeaders <= 0 {
		c.MaxHeaders = DefaultMaxHeaders
	}
	if c.MaxHeadersKB <= 0 {
		c.MaxHeadersKB = DefaultMaxHeadersKB
	}
	if c.Chunking.MaxSize <= 0 {
		c.Chunking.MaxSize = 64
	}
	if c.ProcessingMode == nil {
		c.ProcessingMode = &extprocfilterv3.ProcessingMode{}
	} else {
		c.ProcessingMode = proto.Clone(c.ProcessingMode).(*extprocfilterv3.ProcessingMode)
	}
	for _, m := range []extprocfilterv3.ProcessingMode_BodySendMode{c.ProcessingMode.RequestBodyMode, c.ProcessingMode.ResponseBodyMode} {
		switch m {
		case extprocfilterv3.ProcessingMode_NONE, extprocfilterv3.ProcessingMode_STREAMED,
			extprocfilterv3.ProcessingMode_BUFFERED, extprocfilterv3.ProcessingMode_BUFFERED_PARTIAL:
		default:
			return c, fmt.Errorf("sim: body mode %v is not emulated", m)
		}
	}
	return c, nil
}

// dirMode is the part of a ProcessingMode that one direction uses
// (https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/ext_proc/v3/processing_mode.proto;
// DecodingProcessorState::setProcessingModeInternal in
// https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/processor_state.cc).
type dirMode struct {
	sendHeaders  bool // header mode != SKIP
	bodyMode     extprocfilterv3.ProcessingMode_BodySendMode
	sendTrailers bool // trailer mode == SEND
}

func modeFor(m *extprocfilterv3.ProcessingMode, request bool) dirMode {
	if request {
		return dirMode{
			sendHeaders:  m.GetRequestHeaderMode() != extprocfilterv3.ProcessingMode_SKIP,
			bodyMode:     m.GetRequestBodyMode(),
			sendTrailers: m.GetRequestTrailerMode() == extprocfilterv3.ProcessingMode_SEND,
		}
	}
	return dirMode{
		sendHeaders:  m.GetResponseHeaderMode() != extprocfilterv3.ProcessingMode_SKIP,
		bodyMode:     m.GetResponseBodyMode(),
		sendTrailers: m.GetResponseTrailerMode() == extprocfilterv3.ProcessingMode_SEND,
	}
}

// shouldRemoveContentLength is Envoy's ProcessorState::shouldRemoveContentLength
// (https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/processor_state.h):
// in these modes the processor cannot be trusted to keep content-length right, so
// Envoy removes it from the forwarded headers (the processor still sees it)
// and skips content-length in set_headers. See also the BodySendMode comment
// in https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/ext_proc/v3/processing_mode.proto.
func (m dirMode) shouldRemoveContentLength() bool {
	switch m.bodyMode {
	case extprocfilterv3.ProcessingMode_STREAMED, extprocfilterv3.ProcessingMode_BUFFERED_PARTIAL,
		extprocfilterv3.ProcessingMode_FULL_DUPLEX_STREAMED:
		return true
	case extprocfilterv3.ProcessingMode_BUFFERED:
		return !m.sendHeaders
	}
	return false
}

// noExternalProcess is Envoy's EncodingProcessorState::noExternalProcess
// (https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/processor_state.h):
// nothing in this direction would ever be sent.
func (m dirMode) noExternalProcess() bool {
	return !m.sendHeaders && !m.sendTrailers && m.bodyMode == extprocfilterv3.ProcessingMode_NONE
}

// effectiveOverride computes the mode a ProcessingResponse.mode_override
// yields (https://www.envoyproxy.io/docs/envoy/latest/api-v3/service/ext_proc/v3/external_processor.proto;
// Filter::onReceiveMessage and effectiveModeOverride in
// https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/ext_proc.cc):
// it is built on the filter-level mode, DEFAULT header/trailer values mean
// "no change", and both body modes always come from the override. It returns
// false when allowed_override_modes rejects the result.
func effectiveOverride(filter, ov *extprocfilterv3.ProcessingMode, allowed []*extprocfilterv3.ProcessingMode) (*extprocfilterv3.ProcessingMode, bool) {
	m := proto.Clone(filter).(*extprocfilterv3.ProcessingMode)
	if v := ov.GetRequestHeaderMode(); v != extprocfilterv3.ProcessingMode_DEFAULT {
		m.RequestHeaderMode = v
	}
	if v := ov.GetResponseHeaderMode(); v != extprocfilterv3.ProcessingMode_DEFAULT {
		m.ResponseHeaderMode = v
	}
	if v := ov.GetRequestTrailerMode(); v != extprocfilterv3.ProcessingMode_DEFAULT {
		m.RequestTrailerMode = v
	}
	if v := ov.GetResponseTrailerMode(); v != extprocfilterv3.ProcessingMode_DEFAULT {
		m.ResponseTrailerMode = v
	}
	m.RequestBodyMode = ov.GetRequestBodyMode()
	m.ResponseBodyMode = ov.GetResponseBodyMode()
	if len(allowed) == 0 {
		return m, true
	}
	// allowed_override_modes comparison ignores request_header_mode.
	cmp := proto.Clone(m).(*extprocfilterv3.ProcessingMode)
	cmp.RequestHeaderMode = extprocfilterv3.ProcessingMode_DEFAULT
	for _, a := range allowed {
		ac := proto.Clone(a).(*extprocfilterv3.ProcessingMode)
		ac.RequestHeaderMode = extprocfilterv3.ProcessingMode_DEFAULT
		if proto.Equal(cmp, ac) {
			return m, true
		}
	}
	return nil, false
}

func modeString(m *extprocfilterv3.ProcessingMode) string {
	return fmt.Sprintf("req{h=%v b=%v t=%v} resp{h=%v b=%v t=%v}",
		m.GetRequestHeaderMode(), m.GetRequestBodyMode(), m.GetRequestTrailerMode(),
		m.GetResponseHeaderMode(), m.GetResponseBodyMode(), m.GetResponseTrailerMode())
}
