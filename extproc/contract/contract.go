// Package contract holds the strings tokenwarden shares with Envoy's
// configuration (envoy/*.yaml, deploy/istio), the local gateway and the
// clients that read its headers. Changing one is a breaking change for every
// deployed envoy.yaml; the validators in envoy/validate check the shipped
// files against these values.
package contract

// MetadataNamespace is the dynamic-metadata namespace tokenwarden writes. It
// must be listed in the ext_proc filter's
// metadata_options.receiving_namespaces.untyped, or Envoy drops what is
// written there
// (https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/ext_proc/v3/ext_proc.proto,
// MetadataOptions), and access logs read it as %DYNAMIC_METADATA(tokenwarden:…)%.
const MetadataNamespace = "tokenwarden"

// AttributesKey is the one key of ProcessingRequest.attributes under which
// Envoy's ext_proc filter puts every request attribute it evaluated.
const AttributesKey = "envoy.filters.http.ext_proc"

// PolicyAttribute is the request attribute, listed in the filter's
// request_attributes, whose value names the route's policy (route metadata
// filter_metadata: {tokenwarden: {policy: NAME}}). The path expression
// arrives as a plain string; bare xds.route_metadata would arrive as the
// message's text form
// (https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/advanced/attributes).
const PolicyAttribute = "xds.route_metadata.filter_metadata['tokenwarden']['policy']"

// LaneAttribute is the request attribute naming the route's lane (route
// metadata filter_metadata: {tokenwarden: {lane: NAME}}), read like
// PolicyAttribute. A route that names none gets its policy's default lane.
const LaneAttribute = "xds.route_metadata.filter_metadata['tokenwarden']['lane']"

// Headers tokenwarden sets. A client's own copy of ModelHeader is removed
// before routing, so a route that matches on it matches tokenwarden's value.
const (
	// ModelHeader carries the resolved model on the request to the upstream,
	// set with clear_route_cache so envoy.yaml can route by model.
	ModelHeader = "x-tokenwarden-model"
	// ModelRewrittenHeader tells the client its model was rewritten:
	// "requested -> served".
	ModelRewrittenHeader = "x-tokenwarden-model-rewritten"
	// DeniedHeader names what refused a request (requests, tokens,
	// concurrency, budget_day, ...).
	DeniedHeader = "x-tokenwarden-denied"
	// OutputClampedHeader, on the response to the client, says that the
	// request's output bound (max_tokens, max_output_tokens, …) was lowered
	// to this many tokens so the request fits its budgets
	// (budget_reservation: full).
	OutputClampedHeader = "x-tokenwarden-output-clamped"
	// RateLimitPrefix starts the headers of the caller's tokenwarden limits
	// (limit-, remaining-, reset-requests and -tokens), apart from the
	// provider's own x-ratelimit-* headers, which are never overwritten.
	RateLimitPrefix = "x-tokenwarden-ratelimit-"
)
