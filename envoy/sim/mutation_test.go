package sim

import (
	"regexp"
	"slices"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// TestApplyHeaderMutation is the pure table for header mutations as
// MutationUtils::applyHeaderMutations (https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/mutation_utils.cc)
// and the default HeaderMutationRules (https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/common/mutation_rules/v3/mutation_rules.proto) apply them.
func TestApplyHeaderMutation(t *testing.T) {
	base := func() *headerMap {
		return &headerMap{h: []Header{{":method", "POST"}, {":path", "/v1"}, {":authority", "a.example"}, {"host", "h"},
			{"x-a", "1"}, {"x-a", "2"}, {"x-envoy-foo", "e"}, {"content-length", "10"}}}
	}
	mut := func(set []*corev3.HeaderValueOption, rm ...string) *extprocv3.HeaderMutation {
		return &extprocv3.HeaderMutation{SetHeaders: set, RemoveHeaders: rm}
	}
	cases := []struct {
		name     string
		mut      *extprocv3.HeaderMutation
		opts     mutationOptions
		wantErr  string
		rejected int
		want     map[string][]string // name → all values after
	}{
		{name: "set overwrites all duplicates", mut: mut([]*corev3.HeaderValueOption{setRaw("X-A", "9")}),
			want: map[string][]string{"x-a": {"9"}}},
		{name: "append adds", mut: mut([]*corev3.HeaderValueOption{appendRaw("x-a", "3"), appendRaw("x-new", "n")}),
			want: map[string][]string{"x-a": {"1", "2", "3"}, "x-new": {"n"}}},
		{name: "removes before sets", mut: mut([]*corev3.HeaderValueOption{setRaw("x-a", "new")}, "x-a"),
			want: map[string][]string{"x-a": {"new"}}},
		{name: "value only sets empty", mut: mut([]*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-v", Value: "ignored"}}}),
			want: map[string][]string{"x-v": {""}}},
		{name: "legacy reads value", mut: mut([]*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-v", Value: "used"}}}),
			opts: mutationOptions{legacy: true}, want: map[string][]string{"x-v": {"used"}}},
		{name: "value and raw_value is an error", mut: mut([]*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-v", Value: "a", RawValue: []byte("b")}}}),
			wantErr: "Only one of value or raw_value"},
		{name: "append_action ignored", mut: mut([]*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-a", RawValue: []byte("z")},
			AppendAction: corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD}}), want: map[string][]string{"x-a": {"z"}}},
		{name: "routing headers ignored by default", mut: mut([]*corev3.HeaderValueOption{setRaw(":authority", "evil"), setRaw("host", "evil"),
			setRaw(":method", "GET"), setRaw(":scheme", "https")}), rejected: 4,
			want: map[string][]string{":authority": {"a.example"}, "host": {"h"}, ":method": {"POST"}}},
		{name: "allow_all_routing", mut: mut([]*corev3.HeaderValueOption{setRaw(":authority", "b.example")}),
			opts: mutationOptions{rules: &MutationRules{AllowAllRouting: true}}, want: map[string][]string{":authority": {"b.example"}}},
		{name: ":method with CONTINUE_AND_REPLACE", mut: mut([]*corev3.HeaderValueOption{setRaw(":method", "PUT")}),
			opts: mutationOptions{replacing: true}, want: map[string][]string{":method": {"PUT"}}},
		{name: "x-envoy disallowed", mut: mut([]*corev3.HeaderValueOption{setRaw("x-envoy-x", "1")}, "x-envoy-foo"), rejected: 2,
			want: map[string][]string{"x-envoy-foo": {"e"}, "x-envoy-x": nil}},
		{name: "allow_envoy", mut: mut(nil, "x-envoy-foo"), opts: mutationOptions{rules: &MutationRules{AllowEnvoy: true}},
			want: map[string][]string{"x-envoy-foo": nil}},
		{name: "pseudo and host never removed", mut: mut(nil, ":path", "host"), opts: mutationOptions{rules: &MutationRules{AllowAllRouting: true}},
			rejected: 2, want: map[string][]string{":path": {"/v1"}, "host": {"h"}}},
		{name: ":path may be set", mut: mut([]*corev3.HeaderValueOption{setRaw(":path", "/v2")}), want: map[string][]string{":path": {"/v2"}}},
		{name: "disallow_is_error", mut: mut([]*corev3.HeaderValueOption{setRaw("host", "x")}),
			opts: mutationOptions{rules: &MutationRules{DisallowIsError: true}}, wantErr: "Invalid attempt"},
		{name: "invalid value chars", mut: mut([]*corev3.HeaderValueOption{setRaw("x-b", "a\r\nb")}), wantErr: "Invalid attempt"},
		{name: "invalid name chars", mut: mut([]*corev3.HeaderValueOption{setRaw("x b", "1")}), wantErr: "Invalid character"},
		{name: "invalid remove name", mut: mut(nil, "x\x00"), wantErr: "Invalid character"},
		{name: "content-length skipped while stripping", mut: mut([]*corev3.HeaderValueOption{setRaw("content-length", "3")}),
			opts: mutationOptions{removeContentLength: true}, want: map[string][]string{"content-length": {"10"}}},
		{name: "disallow expression wins", mut: mut([]*corev3.HeaderValueOption{setRaw("x-secret", "1")}),
			opts:     mutationOptions{rules: &MutationRules{DisallowExpression: regexp.MustCompile("^x-secret$"), AllowExpression: regexp.MustCompile("^x-")}},
			rejected: 1, want: map[string][]string{"x-secret": nil}},
		{name: "disallow all with allow expression", mut: mut([]*corev3.HeaderValueOption{setRaw("x-ok", "1"), setRaw("y", "2")}),
			opts:     mutationOptions{rules: &MutationRules{DisallowAll: true, AllowExpression: regexp.MustCompile("^x-")}},
			rejected: 1, want: map[string][]string{"x-ok": {"1"}, "y": nil}},
		{name: ":status must be >= 200", mut: mut([]*corev3.HeaderValueOption{setRaw(":status", "101")}), wantErr: "Invalid attempt"},
		{name: "too many mutations", mut: mut(slices.Repeat([]*corev3.HeaderValueOption{setRaw("x", "1")}, 3)),
			opts: mutationOptions{maxHeaders: 2}, wantErr: "count exceeds"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := tc.opts
			if o.rules == nil {
				o.rules = &MutationRules{}
			}
			if o.maxHeaders == 0 {
				o.maxHeaders = 100
			}
			o.maxKB = 60
			m := base()
			rej, err := applyHeaderMutation(m, tc.mut, o)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if rej != tc.rejected {
				t.Errorf("rejected = %d, want %d", rej, tc.rejected)
			}
			for name, want := range tc.want {
				var got []string
				for _, h := range m.h {
					if h.Name == name {
						got = append(got, h.Value)
					}
				}
				if !slices.Equal(got, want) {
					t.Errorf("%s = %q, want %q", name, got, want)
				}
			}
			for i, h := range m.h {
				if i > 0 && strings.HasPrefix(h.Name, ":") && !strings.HasPrefix(m.h[i-1].Name, ":") {
					t.Errorf("pseudo-header %s after a regular header", h.Name)
				}
			}
		})
	}
}

// TestMergeMetadata: only receiving namespaces, merged, new keys override.
func TestMergeMetadata(t *testing.T) {
	dst := &structpb.Struct{Fields: map[string]*structpb.Value{}}
	s1, _ := structpb.NewStruct(map[string]any{"tokenwarden": map[string]any{"tenant": "acme", "tokens": 1}, "other": map[string]any{"x": 1}})
	s2, _ := structpb.NewStruct(map[string]any{"tokenwarden": map[string]any{"tokens": 42, "cost_nusd": 9}, "tw2": "not-a-struct"})
	if d := mergeMetadata(dst, s1, []string{"tokenwarden", "tw2"}); !slices.Equal(d, []string{"other"}) {
		t.Errorf("dropped = %v", d)
	}
	mergeMetadata(dst, s2, []string{"tokenwarden", "tw2"})
	got := dst.AsMap()
	tw := got["tokenwarden"].(map[string]any)
	if tw["tenant"] != "acme" || tw["tokens"] != float64(42) || tw["cost_nusd"] != float64(9) {
		t.Errorf("tokenwarden = %v", tw)
	}
	if _, ok := got["other"]; ok {
		t.Error("non-receiving namespace written")
	}
	if v, ok := got["tw2"].(map[string]any); !ok || len(v) != 0 {
		t.Errorf("non-struct namespace value must merge as empty, got %v", got["tw2"])
	}
}

// TestMutationsEndToEnd drives header/body mutations through the processor
// (CommonResponse header_mutation, body_mutation and clear_route_cache,
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/service/ext_proc/v3/external_processor.proto;
// content-length handling in ProcessorState::handleBodyResponse,
// https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/processor_state.cc) and checks what reaches the
// upstream and the client.
func TestMutationsEndToEnd(t *testing.T) {
	type result struct {
		status  int
		details string
		upBody  string
		upHdr   map[string]string // "" value means absent
		event   EventKind
	}
	newBody := `{"model":"claude-sonnet-4-5"}`
	cases := []struct {
		name   string
		cfg    Config
		script func(m *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse
		want   result
	}{
		{
			name: "buffered body mutation with matching content-length",
			cfg:  Config{ProcessingMode: mode(SEND, SKIP, BUFFERED, NONE)},
			script: func(m *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
				if m.GetRequestBody() != nil {
					return reply(m, &extprocv3.CommonResponse{
						HeaderMutation: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{setRaw("content-length", "29"), setRaw("x-llm-model", "sonnet")}},
						BodyMutation:   &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_Body{Body: []byte(newBody)}}, ClearRouteCache: true})
				}
				return passthrough(m)
			},
			want: result{status: 200, upBody: newBody, upHdr: map[string]string{"content-length": "29", "x-llm-model": "sonnet"}, event: EventClearRouteCache},
		},
		{
			name: "buffered body mutation with stale content-length",
			cfg:  Config{ProcessingMode: mode(SEND, SKIP, BUFFERED, NONE), FailureModeAllow: true},
			script: func(m *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
				if m.GetRequestBody() != nil {
					return reply(m, &extprocv3.CommonResponse{BodyMutation: &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_Body{Body: []byte(newBody)}}})
				}
				return passthrough(m)
			},
			want: result{status: 500, details: "mismatch_between_content_length_and_the_length_of_the_mutated_body"},
		},
		{
			name: "buffered body mutation after content-length removal",
			cfg:  Config{ProcessingMode: mode(SEND, SKIP, BUFFERED, NONE)},
			script: func(m *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
				if m.GetRequestBody() != nil {
					return reply(m, &extprocv3.CommonResponse{HeaderMutation: &extprocv3.HeaderMutation{RemoveHeaders: []string{"content-length"}},
						BodyMutation: &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_Body{Body: []byte(newBody)}}})
				}
				return passthrough(m)
			},
			want: result{status: 200, upBody: newBody, upHdr: map[string]string{"content-length": ""}},
		},
		{
			name: "clear_route_cache without header mutation is ignored",
			cfg:  Config{},
			script: func(m *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
				return reply(m, &extprocv3.CommonResponse{ClearRouteCache: true})
			},
			want: result{status: 200, upBody: `{"model":"claude-haiku"}`, event: EventIgnored},
		},
		{
			name: "header mutation in request headers response",
			cfg:  Config{},
			script: func(m *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
				if m.GetRequestHeaders() != nil {
					return reply(m, &extprocv3.CommonResponse{HeaderMutation: &extprocv3.HeaderMutation{
						SetHeaders: []*corev3.HeaderValueOption{setRaw("x-tenant", "acme"), setRaw(":path", "/v2/messages"), setRaw("host", "evil")}}})
				}
				return passthrough(m)
			},
			want: result{status: 200, upBody: `{"model":"claude-haiku"}`, upHdr: map[string]string{"x-tenant": "acme", ":path": "/v2/messages"}, event: EventMutationRejected},
		},
		{
			name: "disallowed with disallow_is_error is 500 even fail-open",
			cfg:  Config{MutationRules: MutationRules{DisallowIsError: true}, FailureModeAllow: true},
			script: func(m *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
				return reply(m, &extprocv3.CommonResponse{HeaderMutation: &extprocv3.HeaderMutation{RemoveHeaders: []string{"x-envoy-original-path"}}})
			},
			want: result{status: 500, details: "Invalid_attempt_to_remove_x-envoy-original-path"},
		},
		{
			name: "status_on_error",
			cfg:  Config{StatusOnError: 503},
			script: func(m *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
				return reply(m, &extprocv3.CommonResponse{HeaderMutation: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{
					{Header: &corev3.HeaderValue{Key: "x", Value: "a", RawValue: []byte("b")}}}}})
			},
			want: result{status: 503},
		},
		{
			name: "CONTINUE_AND_REPLACE replaces the body at request headers",
			cfg:  Config{ProcessingMode: mode(SEND, SKIP, BUFFERED, NONE)},
			script: func(m *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
				if m.GetRequestBody() != nil {
					// Must never happen: make the exchange fail visibly.
					return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{
						ImmediateResponse: &extprocv3.ImmediateResponse{Status: &typev3.HttpStatus{Code: 418}}}}
				}
				return reply(m, &extprocv3.CommonResponse{Status: extprocv3.CommonResponse_CONTINUE_AND_REPLACE,
					HeaderMutation: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{setRaw(":method", "PUT")}},
					BodyMutation:   &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_Body{Body: []byte("replaced")}}})
			},
			want: result{status: 200, upBody: "replaced", upHdr: map[string]string{"content-length": "", ":method": "PUT"}},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := startProc(t, replyAll(tc.script))
			f := newFilter(t, c, tc.cfg)
			up := &testUpstream{body: []byte("done")}
			body := `{"model":"claude-haiku"}`
			resp, _, _ := run(t, f, &Request{Method: "POST", Path: "/v1/messages", Body: []byte(body),
				Headers: []Header{{"content-length", "24"}, {"x-envoy-original-path", "/x"}}}, up)
			if resp.Status != tc.want.status {
				t.Fatalf("status = %d, want %d (details %q, trace %v)", resp.Status, tc.want.status, resp.Details, resp.Trace())
			}
			if tc.want.details != "" && resp.Details != tc.want.details {
				t.Errorf("details = %q, want %q", resp.Details, tc.want.details)
			}
			if tc.want.event != 0 && !hasEvent(resp.Trace(), tc.want.event) {
				t.Errorf("no %v event in %v", tc.want.event, resp.Trace())
			}
			if tc.want.status != 200 {
				if _, _, hits := up.request(); hits != 0 {
					t.Error("upstream called after an error")
				}
				return
			}
			sent := resp.UpstreamRequest()
			if string(sent.Body) != tc.want.upBody {
				t.Errorf("upstream body = %q, want %q", sent.Body, tc.want.upBody)
			}
			for k, want := range tc.want.upHdr {
				var got string
				var ok bool
				switch k {
				case ":path":
					got, ok = sent.Path, true
				case ":method":
					got, ok = sent.Method, true
				default:
					got, ok = headerOf(sent.Headers, k)
				}
				if want == "" && ok {
					t.Errorf("%s present upstream: %q", k, got)
				}
				if want != "" && got != want {
					t.Errorf("%s = %q, want %q", k, got, want)
				}
			}
		})
	}
}
