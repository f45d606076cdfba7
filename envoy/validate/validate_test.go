package validate

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"

	"github.com/tokenwarden/tokenwarden/envoy/gateway"
)

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestRepositoryBootstraps validates every envoy/*.yaml in the repository and pins what each
// one is expected to route.
func TestRepositoryBootstraps(t *testing.T) {
	want := map[string]struct {
		clusters int
		policies []string
		disabled []string
	}{
		"envoy.yaml":                   {4, []string{"batch", "default"}, []string{"anthropic_models", "openai_models", "anthropic_count_tokens"}},
		"envoy-local.yaml":             {2, []string{"batch", "default"}, []string{"models"}},
		"envoy-openai-compatible.yaml": {2, []string{"self_hosted"}, []string{"passthrough"}},
		"envoy-jwt.yaml":               {3, []string{"default"}, nil},
	}
	files, err := filepath.Glob("../*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != len(want) {
		t.Errorf("found %v, want exactly the files %v (add new files to this table)", files, want)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			w, ok := want[filepath.Base(f)]
			if !ok {
				t.Fatalf("no expectation for %s", f)
			}
			s, err := ValidateBootstrap(readFile(t, f))
			if err != nil {
				t.Fatalf("ValidateBootstrap: %v", err)
			}
			if s.Listeners != 1 || s.Clusters != w.clusters || s.ExtProcFilters != 1 {
				t.Errorf("summary %v: want 1 listener, %d clusters, 1 ext_proc", s, w.clusters)
			}
			if !slices.Equal(s.Policies, w.policies) {
				t.Errorf("policies %v, want %v", s.Policies, w.policies)
			}
			if !slices.Equal(s.Disabled, w.disabled) {
				t.Errorf("disabled routes %v, want %v", s.Disabled, w.disabled)
			}
		})
	}
}

// TestTextMutations covers the configuration mistakes that must fail while decoding or in the
// deep walk (an out-of-range message_timeout, a lower-case enum, ExtProcPerRoute.disabled false,
// typos, missing clusters, unknown type URLs, ...), by editing envoy.yaml as a user would.
func TestTextMutations(t *testing.T) {
	base := string(readFile(t, "../envoy.yaml"))
	cases := []struct {
		name, old, new string
		want           []string
	}{
		{"message_timeout 7200s", "message_timeout: 2s", "message_timeout: 7200s",
			[]string{"typed_config<ExternalProcessor>", "invalid ExternalProcessor.MessageTimeout: value must be inside range [0s, 1h0m0s]"}},
		{"lower-case enum", "request_trailer_mode: SKIP", "request_trailer_mode: skip",
			[]string{`invalid value for enum field requestTrailerMode: "skip"`, "UPPER_CASE"}},
		{"ExtProcPerRoute disabled false", "disabled: true", "disabled: false",
			[]string{`typed_per_filter_config["envoy.filters.http.ext_proc"]<ExtProcPerRoute>: invalid ExtProcPerRoute.Disabled: value must equal true`}},
		{"typo in a field", "allow_mode_override: true", "allow_mode_overide: true",
			[]string{`unknown field "allow_mode_overide"`}},
		{"typo in a packed field", "suppress_envoy_headers: true", "supress_envoy_headers: true",
			[]string{`unknown field "supress_envoy_headers"`}},
		{"route to a missing cluster", "cluster: anthropic_api_haiku\n", "cluster: anthropic_api_haku\n",
			[]string{`route.cluster: cluster "anthropic_api_haku" does not exist`}},
		{"ext_proc to a missing cluster", "cluster_name: tokenwarden\n", "cluster_name: tokenwardn\n",
			[]string{`cluster "tokenwardn" does not exist`}},
		{"unknown type URL", "router.v3.Router", "router.v3.Routr",
			[]string{`unable to resolve "type.googleapis.com/envoy.extensions.filters.http.router.v3.Routr"`}},
		{"policy metadata not a string", "tokenwarden: { policy: batch }", "tokenwarden: { policy: 3 }",
			[]string{"policy: must be a non-empty policy name"}},
		{"unknown tokenwarden metadata key", "tokenwarden: { policy: batch }", "tokenwarden: { policy: batch, tier: gold }",
			[]string{`unknown key "tier"`}},
		{"access log key typo", "%DYNAMIC_METADATA(tokenwarden:cost_usd)%", "%DYNAMIC_METADATA(tokenwarden:cost)%",
			[]string{`the processor writes no key "cost"`}},
		{"access log namespace not received", "%DYNAMIC_METADATA(tokenwarden:tenant)%", "%DYNAMIC_METADATA(llm.extproc:tenant)%",
			[]string{`reads namespace "llm.extproc", which no ext_proc filter receives`}},
		{"yaml syntax", "static_resources:", "static_resources: [", []string{"yaml:"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if strings.Count(base, tc.old) == 0 {
				t.Fatalf("envoy.yaml no longer contains %q", tc.old)
			}
			doc := strings.Replace(base, tc.old, tc.new, 1)
			_, err := ValidateBootstrap([]byte(doc))
			if err == nil {
				t.Fatal("ValidateBootstrap succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not contain %q", err, w)
				}
			}
		})
	}
}

// TestShallowValidationMisses7200s pins why the deep walk exists (see the package comment): the
// generated ValidateAll does not descend into Any and accepts the out-of-range timeout.
func TestShallowValidationMisses7200s(t *testing.T) {
	doc := strings.Replace(string(readFile(t, "../envoy.yaml")), "message_timeout: 2s", "message_timeout: 7200s", 1)
	var b bootstrapv3.Bootstrap
	if err := Decode([]byte(doc), &b); err != nil {
		t.Fatal(err)
	}
	if err := b.ValidateAll(); err != nil {
		t.Fatalf("shallow ValidateAll unexpectedly failed (the deep walk may now be redundant): %v", err)
	}
	if err := Deep(&b); err == nil {
		t.Fatal("Deep accepted message_timeout 7200s")
	}
}

// withoutType resolves every type but one, as if its package had not been blank-imported.
type withoutType struct{ url protoreflect.FullName }

func (w withoutType) FindMessageByName(n protoreflect.FullName) (protoreflect.MessageType, error) {
	if n == w.url {
		return nil, protoregistry.NotFound
	}
	return protoregistry.GlobalTypes.FindMessageByName(n)
}

func (w withoutType) FindMessageByURL(url string) (protoreflect.MessageType, error) {
	if strings.HasSuffix(url, "/"+string(w.url)) {
		return nil, protoregistry.NotFound
	}
	return protoregistry.GlobalTypes.FindMessageByURL(url)
}

func (w withoutType) FindExtensionByName(n protoreflect.FullName) (protoreflect.ExtensionType, error) {
	return protoregistry.GlobalTypes.FindExtensionByName(n)
}

func (w withoutType) FindExtensionByNumber(m protoreflect.FullName, f protoreflect.FieldNumber) (protoreflect.ExtensionType, error) {
	return protoregistry.GlobalTypes.FindExtensionByNumber(m, f)
}

func TestMissingRouterImport(t *testing.T) {
	r := withoutType{url: (&routerv3.Router{}).ProtoReflect().Descriptor().FullName()}
	_, err := validateBootstrap(readFile(t, "../envoy.yaml"), r)
	want := `unable to resolve "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router": "not found"`
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("error %v, want it to contain %s", err, want)
	}
}

// mutate decodes envoy.yaml, lets f change the ext_proc filter config, the HCM or the bootstrap,
// and re-encodes it as JSON (which is YAML) for ValidateBootstrap.
type parts struct {
	b   *bootstrapv3.Bootstrap
	hcm *hcmv3.HttpConnectionManager
	ep  *extprocv3.ExternalProcessor
}

func mutate(t *testing.T, f func(p parts)) []byte {
	t.Helper()
	var b bootstrapv3.Bootstrap
	if err := Decode(readFile(t, "../envoy.yaml"), &b); err != nil {
		t.Fatal(err)
	}
	hcmAny := b.StaticResources.Listeners[0].FilterChains[0].Filters[0].GetTypedConfig()
	hcm := &hcmv3.HttpConnectionManager{}
	ep := &extprocv3.ExternalProcessor{}
	if err := hcmAny.UnmarshalTo(hcm); err != nil {
		t.Fatal(err)
	}
	if err := hcm.HttpFilters[0].GetTypedConfig().UnmarshalTo(ep); err != nil {
		t.Fatal(err)
	}
	f(parts{&b, hcm, ep})
	repack := func(dst *anypb.Any, m proto.Message) {
		a, err := anypb.New(m)
		if err != nil {
			t.Fatal(err)
		}
		*dst = anypb.Any{TypeUrl: a.TypeUrl, Value: a.Value}
	}
	for _, hf := range hcm.HttpFilters {
		if hf.GetName() == ExtProcFilter && hf.GetTypedConfig().MessageIs(ep) {
			repack(hf.GetTypedConfig(), ep)
		}
	}
	repack(hcmAny, hcm)
	j, err := protojson.Marshal(&b)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func TestSemanticChecks(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(p parts)
		want   string
	}{
		{"ext_proc after the router", func(p parts) {
			f := p.hcm.HttpFilters
			f[0], f[1] = f[1], f[0]
		}, "ext_proc after the router"},
		{"router not last", func(p parts) {
			p.hcm.HttpFilters = append(p.hcm.HttpFilters, proto.Clone(p.hcm.HttpFilters[0]).(*hcmv3.HttpFilter))
		}, "the router must be the last HTTP filter"},
		{"no router", func(p parts) { p.hcm.HttpFilters = p.hcm.HttpFilters[:1] }, "no envoy.filters.http.router filter"},
		{"no ext_proc", func(p parts) {
			p.hcm.HttpFilters = p.hcm.HttpFilters[1:]
			for _, vh := range p.hcm.GetRouteConfig().VirtualHosts {
				for _, r := range vh.Routes {
					delete(r.TypedPerFilterConfig, ExtProcFilter)
				}
			}
		}, "no envoy.filters.http.ext_proc filter"},
		{"per-route config without ext_proc", func(p parts) { p.hcm.HttpFilters = p.hcm.HttpFilters[1:] }, "per-route ext_proc configuration without an ext_proc filter"},
		{"allow_mode_override false", func(p parts) { p.ep.AllowModeOverride = false }, "allow_mode_override: must be true"},
		{"message_timeout 500ms", func(p parts) { p.ep.MessageTimeout = durationpb.New(5e8) }, "message_timeout: 500ms is below 1s"},
		{"message_timeout unset (Envoy default 200ms)", func(p parts) { p.ep.MessageTimeout = nil }, "message_timeout: 200ms is below 1s"},
		{"max below message timeout", func(p parts) { p.ep.MaxMessageTimeout = durationpb.New(1e9) }, "max_message_timeout: 1s is below message_timeout 2s"},
		{"namespace missing", func(p parts) { p.ep.MetadataOptions.ReceivingNamespaces.Untyped = []string{"llm.extproc"} }, `must contain "tokenwarden"`},
		{"policy attribute missing", func(p parts) { p.ep.RequestAttributes = []string{"xds.route_metadata"} }, "request_attributes: must list"},
		{"request body streamed", func(p parts) { p.ep.ProcessingMode.RequestBodyMode = extprocv3.ProcessingMode_STREAMED }, "request_body_mode: is STREAMED, must be BUFFERED"},
		{"processor beyond loopback in plaintext", func(p parts) {
			cl := p.b.StaticResources.Clusters[0]
			cl.LoadAssignment.Endpoints[0].LbEndpoints[0].GetEndpoint().Address.GetSocketAddress().Address = "10.0.0.5"
			cl.TransportSocket = nil
		}, "beyond loopback without mutual TLS"},
		{"processor TLS without a client certificate", func(p parts) {
			cl := p.b.StaticResources.Clusters[0]
			cl.LoadAssignment.Endpoints[0].LbEndpoints[0].GetEndpoint().Address.GetSocketAddress().Address = "10.0.0.5"
			up := &tlsv3.UpstreamTlsContext{}
			if err := cl.TransportSocket.GetTypedConfig().UnmarshalTo(up); err != nil {
				panic(err)
			}
			up.CommonTlsContext.TlsCertificates = nil
			a, _ := anypb.New(up)
			cl.TransportSocket.ConfigType = &corev3.TransportSocket_TypedConfig{TypedConfig: a}
		}, "beyond loopback without mutual TLS"},
		{"response headers skipped", func(p parts) { p.ep.ProcessingMode.ResponseHeaderMode = extprocv3.ProcessingMode_SKIP }, "response_header_mode: must not be SKIP"},
		{"response body none", func(p parts) { p.ep.ProcessingMode.ResponseBodyMode = extprocv3.ProcessingMode_NONE }, "response_body_mode: is NONE"},
		{"observability mode", func(p parts) { p.ep.ObservabilityMode = true }, "observability_mode: must be false"},
		{"route cache retained", func(p parts) { p.ep.RouteCacheAction = extprocv3.ExternalProcessor_RETAIN }, "route cache clearing is disabled"},
		{"route cache both set", func(p parts) {
			p.ep.DisableClearRouteCache = true
			p.ep.RouteCacheAction = extprocv3.ExternalProcessor_CLEAR
		}, "mutually exclusive"},
		{"processor cluster HTTP/1", func(p parts) {
			for _, c := range p.b.StaticResources.Clusters {
				if c.Name == "tokenwarden" {
					a, _ := anypb.New(&upstreamhttpv3.HttpProtocolOptions{UpstreamProtocolOptions: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_{
						ExplicitHttpConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig{
							ProtocolConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions{}}}})
					c.TypedExtensionProtocolOptions[httpProtocolOptionsKey] = a
				}
			}
		}, `cluster "tokenwarden" is not HTTP/2`},
		{"duplicate cluster", func(p parts) {
			p.b.StaticResources.Clusters = append(p.b.StaticResources.Clusters, p.b.StaticResources.Clusters[0])
		}, "duplicate cluster name"},
		{"per-route config of the wrong type", func(p parts) {
			a, _ := anypb.New(&routerv3.Router{})
			p.hcm.GetRouteConfig().VirtualHosts[0].Routes[0].TypedPerFilterConfig[ExtProcFilter] = a
		}, "want ExtProcPerRoute"},
		{"empty policy", func(p parts) {
			s, _ := structpb.NewStruct(map[string]any{"policy": ""})
			p.hcm.GetRouteConfig().VirtualHosts[0].Routes[3].Metadata.FilterMetadata[MetadataNamespace] = s
		}, "must be a non-empty policy name"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ValidateBootstrap(mutate(t, tc.mutate))
			if err == nil {
				t.Fatal("ValidateBootstrap succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q\ndoes not contain %q", err, tc.want)
			}
		})
	}
	// The unmutated round trip must pass, or every case above proves nothing.
	if _, err := ValidateBootstrap(mutate(t, func(parts) {})); err != nil {
		t.Fatalf("unmutated round trip: %v", err)
	}
}

// The shipped Envoy bootstraps render Envoy's 413 in each API's error shape
// exactly as the local gateway does, so a client sees the same refusal with
// either in front.
func TestLocalReplyBodiesMatchTheGateway(t *testing.T) {
	for _, file := range []string{"../envoy.yaml", "../envoy-local.yaml"} {
		var b bootstrapv3.Bootstrap
		if err := Decode(readFile(t, file), &b); err != nil {
			t.Fatal(err)
		}
		hcm := &hcmv3.HttpConnectionManager{}
		if err := b.StaticResources.Listeners[0].FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(hcm); err != nil {
			t.Fatal(err)
		}
		found := map[string]bool{}
		for _, m := range hcm.GetLocalReplyConfig().GetMappers() {
			var path string
			for _, f := range m.GetFilter().GetAndFilter().GetFilters() {
				if h := f.GetHeaderFilter().GetHeader(); h.GetName() == ":path" {
					path = h.GetStringMatch().GetPrefix()
				}
			}
			got, err := protojson.Marshal(m.GetBodyFormatOverride().GetJsonFormat())
			if err != nil {
				t.Fatal(err)
			}
			want := gateway.LocalReplyBody(path, 413)
			var g, w any
			if json.Unmarshal(got, &g) != nil || json.Unmarshal(want, &w) != nil || !reflect.DeepEqual(g, w) {
				t.Errorf("%s: 413 on %s renders %s, the gateway %s", file, path, got, want)
			}
			found[path] = true
		}
		if !found["/v1/messages"] || !found["/v1/chat/completions"] {
			t.Errorf("%s: local_reply_config covers %v, want /v1/messages and /v1/chat/completions", file, found)
		}
	}
}

// The JWT example is refused when the processor could not see the verified caller: the payload
// namespace not forwarded, or jwt_authn placed after ext_proc.
func TestJWTIdentityReachesTheProcessor(t *testing.T) {
	doc := string(readFile(t, "../envoy-jwt.yaml"))
	if _, err := ValidateBootstrap([]byte(doc)); err != nil {
		t.Fatalf("envoy-jwt.yaml: %v", err)
	}
	noForward := strings.Replace(doc, `untyped: ["envoy.filters.http.jwt_authn"]`, `untyped: []`, 1)
	if _, err := ValidateBootstrap([]byte(noForward)); err == nil || !strings.Contains(err.Error(), "must list envoy.filters.http.jwt_authn") {
		t.Errorf("payload not forwarded: %v", err)
	}
	var b bootstrapv3.Bootstrap
	if err := Decode([]byte(doc), &b); err != nil {
		t.Fatal(err)
	}
	hcm := &hcmv3.HttpConnectionManager{}
	f := b.StaticResources.Listeners[0].FilterChains[0].Filters[0]
	if err := f.GetTypedConfig().UnmarshalTo(hcm); err != nil {
		t.Fatal(err)
	}
	hcm.HttpFilters[0], hcm.HttpFilters[1] = hcm.HttpFilters[1], hcm.HttpFilters[0]
	a, _ := anypb.New(hcm)
	f.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: a}
	swapped, err := protojson.Marshal(&b)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ValidateBootstrap(swapped); err == nil || !strings.Contains(err.Error(), "jwt_authn after ext_proc") {
		t.Errorf("jwt_authn after ext_proc: %v", err)
	}
}
