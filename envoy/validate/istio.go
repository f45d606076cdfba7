package validate

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
)

// EnvoyFilter is the subset of Istio's networking EnvoyFilter resource that this package reads.
// The fields mirror istio/api networking/v1alpha3/envoy_filter.proto; decoding is strict, so a
// misspelt or unsupported field is an error instead of a silently ignored patch.
type EnvoyFilter struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name        string            `json:"name"`
		Namespace   string            `json:"namespace,omitempty"`
		Labels      map[string]string `json:"labels,omitempty"`
		Annotations map[string]string `json:"annotations,omitempty"`
	} `json:"metadata"`
	Spec struct {
		WorkloadSelector *struct {
			Labels map[string]string `json:"labels"`
		} `json:"workloadSelector,omitempty"`
		TargetRefs    []map[string]string `json:"targetRefs,omitempty"`
		Priority      int                 `json:"priority,omitempty"`
		ConfigPatches []ConfigPatch       `json:"configPatches"`
	} `json:"spec"`
}

// ConfigPatch is one entry of EnvoyFilter.spec.configPatches.
type ConfigPatch struct {
	ApplyTo string `json:"applyTo"`
	Match   *struct {
		Context string `json:"context,omitempty"`
		Proxy   *struct {
			ProxyVersion string            `json:"proxyVersion,omitempty"`
			Metadata     map[string]string `json:"metadata,omitempty"`
		} `json:"proxy,omitempty"`
		Listener *struct {
			PortNumber  int    `json:"portNumber,omitempty"`
			Name        string `json:"name,omitempty"`
			FilterChain *struct {
				Name                string `json:"name,omitempty"`
				Sni                 string `json:"sni,omitempty"`
				TransportProtocol   string `json:"transportProtocol,omitempty"`
				ApplicationProtocol string `json:"applicationProtocols,omitempty"`
				DestinationPort     int    `json:"destinationPort,omitempty"`
				Filter              *struct {
					Name      string `json:"name,omitempty"`
					SubFilter *struct {
						Name string `json:"name,omitempty"`
					} `json:"subFilter,omitempty"`
				} `json:"filter,omitempty"`
			} `json:"filterChain,omitempty"`
		} `json:"listener,omitempty"`
		RouteConfiguration *struct {
			PortNumber int    `json:"portNumber,omitempty"`
			PortName   string `json:"portName,omitempty"`
			Gateway    string `json:"gateway,omitempty"`
			Name       string `json:"name,omitempty"`
			Vhost      *struct {
				Name   string `json:"name,omitempty"`
				Domain string `json:"domainName,omitempty"`
				Route  *struct {
					Name   string `json:"name,omitempty"`
					Action string `json:"action,omitempty"`
				} `json:"route,omitempty"`
			} `json:"vhost,omitempty"`
		} `json:"routeConfiguration,omitempty"`
		Cluster *struct {
			PortNumber int    `json:"portNumber,omitempty"`
			Service    string `json:"service,omitempty"`
			Subset     string `json:"subset,omitempty"`
			Name       string `json:"name,omitempty"`
		} `json:"cluster,omitempty"`
	} `json:"match,omitempty"`
	Patch struct {
		Operation   string          `json:"operation"`
		Value       json.RawMessage `json:"value,omitempty"`
		FilterClass string          `json:"filterClass,omitempty"`
	} `json:"patch"`
}

// PatchSummary describes one validated config patch.
type PatchSummary struct {
	ApplyTo, Context, Operation string
	// ExtProcCluster is the processor cluster of an inserted ext_proc filter, if any.
	ExtProcCluster string
	// Policy is the tokenwarden policy an HTTP_ROUTE patch selects, if any.
	Policy string
	// Disabled reports an HTTP_ROUTE patch that disables ext_proc.
	Disabled bool
}

// EnvoyFilterSummary describes an EnvoyFilter that passed validation.
type EnvoyFilterSummary struct {
	Name, Namespace string
	Patches         []PatchSummary
}

// patchTypes maps applyTo to the Envoy message its patch value is.
var patchTypes = map[string]func() proto.Message{
	"HTTP_FILTER":         func() proto.Message { return &hcmv3.HttpFilter{} },
	"HTTP_ROUTE":          func() proto.Message { return &routev3.Route{} },
	"VIRTUAL_HOST":        func() proto.Message { return &routev3.VirtualHost{} },
	"ROUTE_CONFIGURATION": func() proto.Message { return &routev3.RouteConfiguration{} },
	"CLUSTER":             func() proto.Message { return &clusterv3.Cluster{} },
	"LISTENER":            func() proto.Message { return &listenerv3.Listener{} },
	"NETWORK_FILTER":      func() proto.Message { return &listenerv3.Filter{} },
}

var (
	patchContexts   = []string{"ANY", "SIDECAR_INBOUND", "SIDECAR_OUTBOUND", "GATEWAY"}
	patchOperations = []string{"MERGE", "ADD", "REMOVE", "INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST", "REPLACE"}
)

// ValidateEnvoyFilter decodes one Istio EnvoyFilter document and validates every patch value as
// the Envoy proto its applyTo names, with the same deep walk and ext_proc checks as
// ValidateBootstrap. MERGE values are partial by nature, so their root is not checked for
// required fields, but everything packed in an Any inside them is. Processor clusters cannot be
// resolved here; they must have the form of an Istio-generated cluster.
func ValidateEnvoyFilter(doc []byte) (EnvoyFilterSummary, error) {
	if docs := SplitDocuments(doc); len(docs) != 1 {
		return EnvoyFilterSummary{}, fmt.Errorf("want exactly one YAML document, got %d", len(docs))
	}
	var ef EnvoyFilter
	if err := yaml.UnmarshalStrict(doc, &ef); err != nil {
		return EnvoyFilterSummary{}, fmt.Errorf("decode EnvoyFilter: %w", err)
	}
	if ef.Kind != "EnvoyFilter" || (ef.APIVersion != "networking.istio.io/v1alpha3" && ef.APIVersion != "networking.istio.io/v1") {
		return EnvoyFilterSummary{}, fmt.Errorf("not an EnvoyFilter: apiVersion %q kind %q", ef.APIVersion, ef.Kind)
	}
	sum := EnvoyFilterSummary{Name: ef.Metadata.Name, Namespace: ef.Metadata.Namespace}
	if len(ef.Spec.ConfigPatches) == 0 {
		return sum, errors.New("spec.configPatches is empty")
	}
	var errs []error
	for i, p := range ef.Spec.ConfigPatches {
		ps, err := validatePatch(p, fmt.Sprintf("spec.configPatches[%d]", i))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		sum.Patches = append(sum.Patches, ps)
	}
	if err := errors.Join(errs...); err != nil {
		return EnvoyFilterSummary{}, err
	}
	return sum, nil
}

func validatePatch(p ConfigPatch, path string) (PatchSummary, error) {
	ps := PatchSummary{ApplyTo: p.ApplyTo, Operation: p.Patch.Operation}
	if p.Match != nil {
		ps.Context = p.Match.Context
	}
	newMsg, ok := patchTypes[p.ApplyTo]
	if !ok {
		return ps, fmt.Errorf("%s.applyTo: unsupported %q", path, p.ApplyTo)
	}
	if ps.Context != "" && !slices.Contains(patchContexts, ps.Context) {
		return ps, fmt.Errorf("%s.match.context: unknown %q (want one of %v)", path, ps.Context, patchContexts)
	}
	if !slices.Contains(patchOperations, ps.Operation) {
		return ps, fmt.Errorf("%s.patch.operation: unknown %q (want one of %v)", path, ps.Operation, patchOperations)
	}
	if ps.Operation == "REMOVE" {
		return ps, nil
	}
	if len(p.Patch.Value) == 0 {
		return ps, fmt.Errorf("%s.patch.value: missing for %s", path, ps.Operation)
	}
	m := newMsg()
	// The value is already JSON; Decode accepts it because JSON is YAML.
	if err := Decode(p.Patch.Value, m); err != nil {
		return ps, fmt.Errorf("%s.patch.value: %w", path, err)
	}
	deep := Deep
	if ps.Operation == "MERGE" {
		deep = DeepPartial
	}
	if err := deep(m); err != nil {
		return ps, fmt.Errorf("%s.patch.value: %w", path, err)
	}
	c := &checker{policies: map[string]bool{}}
	vpath := path + ".patch.value"
	switch v := m.(type) {
	case *hcmv3.HttpFilter:
		if v.GetName() == ExtProcFilter {
			c.checkPlacement(p, path)
			c.checkExtProcFilter(v, vpath)
			ps.ExtProcCluster = extProcClusterOf(v)
		}
	case *routev3.Route:
		c.checkRouteMetadata(v.GetMetadata(), vpath+".metadata")
		ps.Disabled = c.checkPerFilterConfig(v.GetTypedPerFilterConfig(), vpath, true)
		if pol := c.policyList(); len(pol) == 1 {
			ps.Policy = pol[0]
		}
	}
	return ps, errors.Join(c.errs...)
}

// checkPlacement requires an ext_proc insertion to land before the router of an HTTP
// connection manager, and a sidecar insertion to be scoped to a port so that only the HTTP
// outbound listener is patched (EnvoyFilter applyTo HTTP_FILTER, operation INSERT_BEFORE and
// listener.portNumber: https://istio.io/latest/docs/reference/config/networking/envoy-filter/).
func (c *checker) checkPlacement(p ConfigPatch, path string) {
	if p.Patch.Operation != "INSERT_BEFORE" {
		c.errorf(path+".patch.operation", "ext_proc must be inserted with INSERT_BEFORE the router, got %s", p.Patch.Operation)
	}
	if p.Match == nil || p.Match.Listener == nil || p.Match.Listener.FilterChain == nil ||
		p.Match.Listener.FilterChain.Filter == nil || p.Match.Listener.FilterChain.Filter.Name != HCMFilter ||
		p.Match.Listener.FilterChain.Filter.SubFilter == nil || p.Match.Listener.FilterChain.Filter.SubFilter.Name != RouterFilter {
		c.errorf(path+".match.listener.filterChain.filter", "must match %s with subFilter %s", HCMFilter, RouterFilter)
		return
	}
	if p.Match.Context == "SIDECAR_OUTBOUND" && p.Match.Listener.PortNumber == 0 {
		c.errorf(path+".match.listener.portNumber", "a SIDECAR_OUTBOUND insertion must be port-scoped to the plain-HTTP outbound listener")
	}
}

func extProcClusterOf(f *hcmv3.HttpFilter) string {
	ep := &extprocv3.ExternalProcessor{}
	if f.GetTypedConfig().UnmarshalTo(ep) != nil {
		return "" // already reported by checkExtProcFilter
	}
	return ep.GetGrpcService().GetEnvoyGrpc().GetClusterName()
}

// SplitDocuments splits a YAML stream at "---" separator lines and drops documents holding only
// blank lines and comments.
func SplitDocuments(data []byte) [][]byte {
	var docs [][]byte
	var cur []byte
	flush := func() {
		if hasContent(cur) {
			docs = append(docs, cur)
		}
		cur = nil
	}
	for _, line := range bytes.SplitAfter(data, []byte("\n")) {
		if isSeparator(line) {
			flush()
			continue
		}
		cur = append(cur, line...)
	}
	flush()
	return docs
}

// isSeparator reports a document separator: "---" alone, or followed by whitespace and a
// comment. ("--- value", a document starting on the separator line, is left as content.)
func isSeparator(line []byte) bool {
	rest, ok := bytes.CutPrefix(bytes.TrimRight(line, "\r\n"), []byte("---"))
	if !ok || len(rest) == 0 {
		return ok
	}
	t := bytes.TrimSpace(rest)
	return (rest[0] == ' ' || rest[0] == '\t') && (len(t) == 0 || t[0] == '#')
}

func hasContent(d []byte) bool {
	for _, line := range bytes.Split(d, []byte("\n")) {
		if t := bytes.TrimSpace(line); len(t) > 0 && t[0] != '#' {
			return true
		}
	}
	return false
}
