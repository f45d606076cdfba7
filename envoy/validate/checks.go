package validate

import (
	"errors"
	"fmt"
	"net"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

// MinMessageTimeout is the smallest ext_proc message_timeout accepted: admission tokenises the
// body and makes a Redis round trip, and Envoy answers an expired message_timeout with a 504
// (Filter::onMessageTimeout in https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/ext_proc.cc).
// Envoy's own default, 200ms (https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/ext_proc/v3/ext_proc.proto),
// is below it on purpose.
const MinMessageTimeout = time.Second

// httpProtocolOptionsKey is the typed_extension_protocol_options key for upstream HTTP options.
const httpProtocolOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

// istioClusterName is the form of an Istio-generated cluster, outbound|<port>|<subset>|<FQDN>
// (BuildSubsetKey in https://github.com/istio/istio/blob/master/pilot/pkg/model/service.go).
var istioClusterName = regexp.MustCompile(`^outbound\|[0-9]+\|[^|]*\|[^|]+$`)

// checker accumulates cross-reference and tokenwarden-specific problems.
type checker struct {
	// clusters are the bootstrap's static clusters by name; nil when they are not known (Istio
	// patches), in which case ext_proc cluster names are checked by form only.
	clusters map[string]*clusterv3.Cluster
	errs     []error
	policies map[string]bool
	// namespaces are the receiving namespaces of the ext_proc filters of the HCM being checked.
	namespaces map[string]bool
	disabled   []string
	routes     int
}

func (c *checker) errorf(path, format string, args ...any) {
	c.errs = append(c.errs, fmt.Errorf("%s: %s", orRoot(path), fmt.Sprintf(format, args...)))
}

func (c *checker) policyList() []string {
	out := make([]string, 0, len(c.policies))
	for p := range c.policies {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

func checkBootstrap(b *bootstrapv3.Bootstrap) (Summary, error) {
	sr := b.GetStaticResources()
	c := &checker{clusters: map[string]*clusterv3.Cluster{}, policies: map[string]bool{}}
	for i, cl := range sr.GetClusters() {
		if _, dup := c.clusters[cl.GetName()]; dup {
			c.errorf(fmt.Sprintf("static_resources.clusters[%d]", i), "duplicate cluster name %q", cl.GetName())
		}
		c.clusters[cl.GetName()] = cl
	}
	s := Summary{Listeners: len(sr.GetListeners()), Clusters: len(sr.GetClusters())}
	for li, l := range sr.GetListeners() {
		chains := l.GetFilterChains()
		if d := l.GetDefaultFilterChain(); d != nil {
			chains = append(chains[:len(chains):len(chains)], d)
		}
		for fci, fc := range chains {
			for fi, f := range fc.GetFilters() {
				path := fmt.Sprintf("static_resources.listeners[%d](%s).filter_chains[%d].filters[%d]", li, l.GetName(), fci, fi)
				hcm := &hcmv3.HttpConnectionManager{}
				if !f.GetTypedConfig().MessageIs(hcm) {
					continue
				}
				if err := f.GetTypedConfig().UnmarshalTo(hcm); err != nil {
					c.errorf(path, "unpack HttpConnectionManager: %v", err)
					continue
				}
				s.ExtProcFilters += c.checkHCM(hcm, path+".typed_config")
			}
		}
	}
	if s.ExtProcFilters == 0 {
		c.errorf("static_resources", "no %s filter in any HTTP connection manager: tokenwarden would never be called", ExtProcFilter)
	}
	s.Routes, s.Policies, s.Disabled = c.routes, c.policyList(), c.disabled
	if err := errors.Join(c.errs...); err != nil {
		return Summary{}, err
	}
	return s, nil
}

// checkHCM checks the filter order, every ext_proc filter and the inline routes of one HTTP
// connection manager, and returns how many ext_proc filters it holds.
func (c *checker) checkHCM(hcm *hcmv3.HttpConnectionManager, path string) int {
	filters := hcm.GetHttpFilters()
	router, extProcs := -1, 0
	c.namespaces = map[string]bool{}
	var identityFilters []string // filters whose metadata names the caller, seen so far
	for i, f := range filters {
		fpath := fmt.Sprintf("%s.http_filters[%d](%s)", path, i, f.GetName())
		switch f.GetName() {
		case RouterFilter:
			router = i
		case JWTAuthnFilter, ExtAuthzFilter:
			if extProcs > 0 {
				// The caller's identity is written by this filter's decodeHeaders; ext_proc
				// before it would decide without it.
				c.errorf(fpath, "%s after ext_proc: the processor would not see the identity it writes", f.GetName())
			}
			identityFilters = append(identityFilters, f.GetName())
		case ExtProcFilter:
			extProcs++
			if router >= 0 {
				c.errorf(fpath, "ext_proc after the router: the router is terminal, so the processor would never see a request")
			}
			c.checkExtProcFilter(f, fpath)
			c.checkForwarded(f, identityFilters, fpath)
		}
	}
	switch {
	case router < 0:
		c.errorf(path, "no %s filter: requests would never reach a cluster", RouterFilter)
	case router != len(filters)-1:
		c.errorf(fmt.Sprintf("%s.http_filters[%d]", path, router), "the router must be the last HTTP filter (it is terminal)")
	}
	for i, al := range hcm.GetAccessLog() {
		c.checkAccessLog(al.GetTypedConfig(), fmt.Sprintf("%s.access_log[%d]", path, i))
	}
	if hcm.GetRouteConfig() != nil {
		for vi, vh := range hcm.GetRouteConfig().GetVirtualHosts() {
			vpath := fmt.Sprintf("%s.route_config.virtual_hosts[%d](%s)", path, vi, vh.GetName())
			c.checkPerFilterConfig(vh.GetTypedPerFilterConfig(), vpath, extProcs > 0)
			for ri, r := range vh.GetRoutes() {
				c.routes++
				c.checkRoute(r, fmt.Sprintf("%s.routes[%d](%s)", vpath, ri, routeLabel(r)), extProcs > 0)
			}
		}
	}
	return extProcs
}

// Filters that authenticate callers and write who they are as dynamic metadata under their own
// name (jwt_authn's payload_in_metadata, ext_authz's CheckResponse.dynamic_metadata).
const (
	JWTAuthnFilter = "envoy.filters.http.jwt_authn"
	ExtAuthzFilter = "envoy.filters.http.ext_authz"
)

// checkForwarded requires ext_proc to forward the metadata of the identity filters before it:
// only metadata_options.forwarding_namespaces reach the processor
// (https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/ext_proc/v3/ext_proc.proto).
func (c *checker) checkForwarded(f *hcmv3.HttpFilter, identityFilters []string, path string) {
	ep := &extprocv3.ExternalProcessor{}
	if f.GetTypedConfig().UnmarshalTo(ep) != nil {
		return
	}
	fwd := ep.GetMetadataOptions().GetForwardingNamespaces().GetUntyped()
	for _, name := range identityFilters {
		if !slices.Contains(fwd, name) {
			c.errorf(path+".typed_config.metadata_options.forwarding_namespaces.untyped", "must list %s: the caller it authenticates never reaches the processor otherwise", name)
		}
	}
}

// checkExtProcFilter unpacks an ext_proc HttpFilter and checks its configuration.
func (c *checker) checkExtProcFilter(f *hcmv3.HttpFilter, path string) {
	ep := &extprocv3.ExternalProcessor{}
	if !f.GetTypedConfig().MessageIs(ep) {
		c.errorf(path, "typed_config is %q, want ExternalProcessor", f.GetTypedConfig().GetTypeUrl())
		return
	}
	if err := f.GetTypedConfig().UnmarshalTo(ep); err != nil {
		c.errorf(path, "unpack ExternalProcessor: %v", err)
		return
	}
	c.checkExtProc(ep, path+".typed_config")
}

// checkExtProc applies Envoy's non-PGV load-time checks (verifyFilterConfig and
// verifyProcessingModeConfig in https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/config.cc) and what
// tokenwarden's processor depends on:
//   - message_timeout: an expired timer is a 504 (Filter::onMessageTimeout in
//     https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/ext_proc.cc);
//   - allow_mode_override: the processor switches SSE responses to STREAMED with
//     ProcessingResponse.mode_override (https://www.envoyproxy.io/docs/envoy/latest/api-v3/service/ext_proc/v3/external_processor.proto),
//     which Envoy ignores when send_body_without_waiting_for_header_response is set
//     (https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/ext_proc/v3/ext_proc.proto);
//   - route cache clearing: the model route re-matches only on CommonResponse.clear_route_cache,
//     which disable_clear_route_cache and route_cache_action RETAIN turn off;
//   - request_attributes: the policy arrives as the string value of the listed expression
//     (https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/advanced/attributes);
//   - metadata_options.receiving_namespaces: dynamic metadata in an unlisted namespace is
//     dropped (Filter::setDynamicMetadata in https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/ext_proc.cc).
func (c *checker) checkExtProc(ep *extprocv3.ExternalProcessor, path string) {
	switch {
	case ep.GetGrpcService() != nil && ep.GetHttpService() != nil:
		c.errorf(path, "exactly one of grpc_service and http_service may be set")
	case ep.GetGrpcService() == nil:
		c.errorf(path, "grpc_service is required: tokenwarden is a gRPC ExternalProcessor")
	default:
		c.checkGrpcCluster(ep.GetGrpcService(), path+".grpc_service")
	}
	timeout := 200 * time.Millisecond // Envoy's default when unset
	if ep.GetMessageTimeout() != nil {
		timeout = ep.GetMessageTimeout().AsDuration()
	}
	if timeout < MinMessageTimeout {
		c.errorf(path+".message_timeout", "%s is below %s: admission (tokenising plus a store round trip) would end in Envoy 504s", timeout, MinMessageTimeout)
	}
	if mx := ep.GetMaxMessageTimeout(); mx != nil && mx.AsDuration() != 0 && mx.AsDuration() < timeout {
		c.errorf(path+".max_message_timeout", "%s is below message_timeout %s", mx.AsDuration(), timeout)
	}
	if !ep.GetAllowModeOverride() {
		c.errorf(path+".allow_mode_override", "must be true: the processor switches SSE responses to STREAMED with mode_override")
	}
	if ep.GetObservabilityMode() {
		c.errorf(path+".observability_mode", "must be false: Envoy ignores every processor response in observability mode, so nothing can be admitted or denied")
	}
	if ep.GetSendBodyWithoutWaitingForHeaderResponse() {
		c.errorf(path+".send_body_without_waiting_for_header_response", "must be false: it disables mode_override")
	}
	if ep.GetDisableClearRouteCache() && ep.GetRouteCacheAction() != extprocv3.ExternalProcessor_DEFAULT {
		c.errorf(path, "disable_clear_route_cache and route_cache_action are mutually exclusive (Envoy rejects both set)")
	} else if ep.GetDisableClearRouteCache() || ep.GetRouteCacheAction() == extprocv3.ExternalProcessor_RETAIN {
		c.errorf(path, "route cache clearing is disabled: routes matching %s would never be re-evaluated", ModelHeader)
	}
	c.checkProcessingMode(ep.GetProcessingMode(), path+".processing_mode")
	if len(ep.GetAllowedOverrideModes()) > 0 && !anyStreamsResponse(ep.GetAllowedOverrideModes()) {
		c.errorf(path+".allowed_override_modes", "no allowed mode streams the response body: SSE responses could not be switched to STREAMED")
	}
	if !slices.Contains(ep.GetRequestAttributes(), PolicyAttribute) {
		c.errorf(path+".request_attributes", "must list %q: it is how the processor learns the route's policy", PolicyAttribute)
	}
	for _, ns := range ep.GetMetadataOptions().GetReceivingNamespaces().GetUntyped() {
		if c.namespaces != nil {
			c.namespaces[ns] = true
		}
	}
	if !slices.Contains(ep.GetMetadataOptions().GetReceivingNamespaces().GetUntyped(), MetadataNamespace) {
		c.errorf(path+".metadata_options.receiving_namespaces.untyped", "must contain %q: Envoy drops dynamic metadata from unlisted namespaces", MetadataNamespace)
	}
}

// checkProcessingMode requires the modes the processor is written for: it reads request
// headers, parses the whole request body once, reads response headers and a whole (JSON) or
// streamed (SSE) response body.
func (c *checker) checkProcessingMode(pm *extprocv3.ProcessingMode, path string) {
	if pm.GetRequestHeaderMode() == extprocv3.ProcessingMode_SKIP {
		c.errorf(path+".request_header_mode", "must not be SKIP: tenant and dialect come from request headers")
	}
	if pm.GetRequestBodyMode() != extprocv3.ProcessingMode_BUFFERED {
		c.errorf(path+".request_body_mode", "is %s, must be BUFFERED: the processor parses and rewrites the whole body once", pm.GetRequestBodyMode())
	}
	if pm.GetResponseHeaderMode() == extprocv3.ProcessingMode_SKIP {
		c.errorf(path+".response_header_mode", "must not be SKIP: provider rate-limit headers and the SSE switch happen there")
	}
	if m := pm.GetResponseBodyMode(); m != extprocv3.ProcessingMode_BUFFERED && m != extprocv3.ProcessingMode_STREAMED {
		c.errorf(path+".response_body_mode", "is %s, must be BUFFERED or STREAMED: usage is read from the response body", m)
	}
}

func anyStreamsResponse(modes []*extprocv3.ProcessingMode) bool {
	for _, m := range modes {
		if m.GetResponseBodyMode() == extprocv3.ProcessingMode_STREAMED {
			return true
		}
	}
	return false
}

// checkGrpcCluster checks that an envoy_grpc target names an existing HTTP/2 cluster (or, for
// Istio, has the form of a generated one). google_grpc targets are opaque URIs and not checked.
func (c *checker) checkGrpcCluster(gs *corev3.GrpcService, path string) {
	name := gs.GetEnvoyGrpc().GetClusterName()
	if gs.GetEnvoyGrpc() == nil {
		return
	}
	path += ".envoy_grpc.cluster_name"
	if c.clusters == nil {
		if !istioClusterName.MatchString(name) {
			c.errorf(path, "%q is not an Istio cluster name outbound|<port>|<subset>|<FQDN>", name)
		}
		return
	}
	cl, ok := c.clusters[name]
	if !ok {
		c.errorf(path, "cluster %q does not exist", name)
		return
	}
	if !isHTTP2(cl) {
		c.errorf(path, "cluster %q is not HTTP/2 (gRPC needs typed_extension_protocol_options %s with explicit_http_config.http2_protocol_options)", name, httpProtocolOptionsKey)
	}
	if !onlyLoopback(cl) && !presentsClientCertificate(cl) {
		// The processor accepts plaintext only on loopback; anywhere else any caller could
		// report invented usage, so Envoy must authenticate itself with mutual TLS.
		c.errorf(path, "cluster %q reaches the processor beyond loopback without mutual TLS (a transport_socket %s with a client certificate)", name, tlsTransportSocket)
	}
}

// tlsTransportSocket is the name of Envoy's TLS transport socket.
const tlsTransportSocket = "envoy.transport_sockets.tls"

// onlyLoopback reports whether every endpoint of a cluster is a loopback address.
func onlyLoopback(cl *clusterv3.Cluster) bool {
	n := 0
	for _, eps := range cl.GetLoadAssignment().GetEndpoints() {
		for _, lb := range eps.GetLbEndpoints() {
			addr := lb.GetEndpoint().GetAddress().GetSocketAddress().GetAddress()
			if ip := net.ParseIP(addr); addr != "localhost" && (ip == nil || !ip.IsLoopback()) {
				return false
			}
			n++
		}
	}
	return n > 0
}

// presentsClientCertificate reports whether a cluster's transport socket is TLS with a client
// certificate (a file pair or SDS) and a validation context for the processor's certificate.
func presentsClientCertificate(cl *clusterv3.Cluster) bool {
	ts := cl.GetTransportSocket()
	if ts.GetName() != tlsTransportSocket {
		return false
	}
	up := &tlsv3.UpstreamTlsContext{}
	if a := ts.GetTypedConfig(); a == nil || !a.MessageIs(up) || a.UnmarshalTo(up) != nil {
		return false
	}
	ctx := up.GetCommonTlsContext()
	hasCert := len(ctx.GetTlsCertificates()) > 0 || len(ctx.GetTlsCertificateSdsSecretConfigs()) > 0
	hasCA := ctx.GetValidationContext() != nil || ctx.GetValidationContextSdsSecretConfig() != nil || ctx.GetCombinedValidationContext() != nil
	return hasCert && hasCA
}

func isHTTP2(cl *clusterv3.Cluster) bool {
	opts := &upstreamhttpv3.HttpProtocolOptions{}
	a := cl.GetTypedExtensionProtocolOptions()[httpProtocolOptionsKey]
	if !a.MessageIs(opts) || a.UnmarshalTo(opts) != nil {
		return false
	}
	return opts.GetExplicitHttpConfig().GetHttp2ProtocolOptions() != nil
}

// checkRoute checks the cluster a route forwards to, its tokenwarden metadata and its
// per-filter configuration.
func (c *checker) checkRoute(r *routev3.Route, path string, extProc bool) {
	if c.clusters != nil {
		if name := r.GetRoute().GetCluster(); name != "" {
			if _, ok := c.clusters[name]; !ok {
				c.errorf(path+".route.cluster", "cluster %q does not exist", name)
			}
		}
		for i, wc := range r.GetRoute().GetWeightedClusters().GetClusters() {
			if _, ok := c.clusters[wc.GetName()]; !ok {
				c.errorf(fmt.Sprintf("%s.route.weighted_clusters.clusters[%d]", path, i), "cluster %q does not exist", wc.GetName())
			}
		}
	}
	c.checkRouteMetadata(r.GetMetadata(), path+".metadata")
	if c.checkPerFilterConfig(r.GetTypedPerFilterConfig(), path, extProc) {
		c.disabled = append(c.disabled, routeLabel(r))
	}
}

// checkRouteMetadata checks filter_metadata.tokenwarden: it holds exactly one key, policy, a
// non-empty string without whitespace (a policy name from tokenwarden.yaml).
func (c *checker) checkRouteMetadata(md *corev3.Metadata, path string) {
	ns, ok := md.GetFilterMetadata()[MetadataNamespace]
	if !ok {
		return
	}
	path += ".filter_metadata." + MetadataNamespace
	for k, v := range ns.GetFields() {
		if k != "policy" {
			c.errorf(path, "unknown key %q: the processor reads only \"policy\"", k)
			continue
		}
		sv, isString := v.GetKind().(*structpb.Value_StringValue)
		if !isString || sv.StringValue == "" || strings.ContainsAny(sv.StringValue, " \t\r\n") {
			c.errorf(path+".policy", "must be a non-empty policy name (a plain string), got %v", v.AsInterface())
			continue
		}
		c.policies[sv.StringValue] = true
	}
}

// checkPerFilterConfig checks the ext_proc entry of a typed_per_filter_config map and reports
// whether it disables ext_proc. Envoy requires the entry's type to match the filter.
func (c *checker) checkPerFilterConfig(cfg map[string]*anypb.Any, path string, extProc bool) (disabled bool) {
	a, ok := cfg[ExtProcFilter]
	if !ok {
		return false
	}
	path = fmt.Sprintf("%s.typed_per_filter_config[%q]", path, ExtProcFilter)
	if !extProc {
		c.errorf(path, "per-route ext_proc configuration without an ext_proc filter in the chain")
	}
	pr := &extprocv3.ExtProcPerRoute{}
	if !a.MessageIs(pr) {
		c.errorf(path, "is %q, want ExtProcPerRoute", a.GetTypeUrl())
		return false
	}
	if err := a.UnmarshalTo(pr); err != nil {
		c.errorf(path, "unpack ExtProcPerRoute: %v", err)
		return false
	}
	if gs := pr.GetOverrides().GetGrpcService(); gs != nil {
		c.checkGrpcCluster(gs, path+".overrides.grpc_service")
	}
	return pr.GetDisabled()
}

func routeLabel(r *routev3.Route) string {
	if r.GetName() != "" {
		return r.GetName()
	}
	m := r.GetMatch()
	switch {
	case m.GetPath() != "":
		return "path " + m.GetPath()
	case m.GetPrefix() != "":
		return "prefix " + m.GetPrefix()
	case m.GetPathSeparatedPrefix() != "":
		return "prefix " + m.GetPathSeparatedPrefix()
	}
	return "unnamed"
}

// MetadataKeys are the keys the processor writes in namespace tokenwarden at the end of each
// response; access logs may reference only these. cost_nano_usd is the exact integer behind
// cost_usd.
var MetadataKeys = []string{"tenant", "policy", "model", "requested_model", "input_tokens", "output_tokens",
	"cache_read_tokens", "cache_write_tokens", "cost_usd", "cost_nano_usd", "usage_source", "decision"}

var dynamicMetadataRef = regexp.MustCompile(`%DYNAMIC_METADATA\(([^:)]*)((?::[^:)]*)*)\)(?::[0-9]+)?%`)

// checkAccessLog checks %DYNAMIC_METADATA(ns:key)% references in a stdout access log format:
// the namespace must be one an ext_proc filter receives (or the value is always "-"), and
// tokenwarden keys must be ones the processor writes.
func (c *checker) checkAccessLog(a *anypb.Any, path string) {
	sl := &streamv3.StdoutAccessLog{}
	if !a.MessageIs(sl) || a.UnmarshalTo(sl) != nil {
		return // other loggers' formats are not inspected
	}
	f := sl.GetLogFormat()
	texts := []string{f.GetTextFormat(), f.GetTextFormatSource().GetInlineString()}
	var collect func(v *structpb.Value)
	collect = func(v *structpb.Value) {
		switch k := v.GetKind().(type) {
		case *structpb.Value_StringValue:
			texts = append(texts, k.StringValue)
		case *structpb.Value_StructValue:
			for _, x := range k.StructValue.GetFields() {
				collect(x)
			}
		case *structpb.Value_ListValue:
			for _, x := range k.ListValue.GetValues() {
				collect(x)
			}
		}
	}
	for _, v := range f.GetJsonFormat().GetFields() {
		collect(v)
	}
	reported := map[string]bool{}
	for _, text := range texts {
		for _, m := range dynamicMetadataRef.FindAllStringSubmatch(text, -1) {
			ns, key := m[1], strings.TrimPrefix(m[2], ":")
			if !c.namespaces[ns] && !reported[ns] {
				reported[ns] = true
				c.errorf(path, "%s reads namespace %q, which no ext_proc filter receives: it would always log \"-\"", m[0], ns)
			}
			if ns == MetadataNamespace && !slices.Contains(MetadataKeys, strings.Split(key, ":")[0]) {
				c.errorf(path, "%s: the processor writes no key %q (it writes %v)", m[0], key, MetadataKeys)
			}
		}
	}
}
