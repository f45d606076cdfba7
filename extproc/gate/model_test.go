package gate

import (
	"testing"

	"github.com/tokenwarden/tokenwarden/extproc/dialect"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter"
)

const modelPolicyYAML = `
policies:
  default:
    models:
      allow: ["claude-*", "gpt-*"]
      aliases: {fast: claude-haiku-4-5, smart: claude-opus-4-5}
      tiers:
        - {from: "auto", max_input_tokens: 500, tools: false, model: claude-haiku-4-5}
        - {from: "auto", max_input_tokens: 20000, model: claude-sonnet-4-5}
        - {from: "auto", model: claude-opus-4-5}
      downgrade:
        - {when_budget_used: 0.8, window: month, from: "claude-opus-*", to: claude-sonnet-4-5}
        - {when_budget_used: 0.95, window: month, from: "claude-*", to: claude-haiku-4-5}
    budgets: [{window: month, usd: 100}]
`

func TestResolveModel(t *testing.T) {
	cfg, err := policy.Parse([]byte(modelPolicyYAML))
	if err != nil {
		t.Fatal(err)
	}
	g := &Gate{budgets: newBudgetCache(), opts: Options{Now: newClock().Now}}
	pol, _ := cfg.Policy("t", "")
	cases := []struct {
		name       string
		model      string
		req        wire.Request
		monthUsed  float64
		want       string
		wantReason string
		wantErr    bool
	}{
		{name: "as asked", model: "claude-sonnet-4-5", want: "claude-sonnet-4-5"},
		{name: "alias", model: "fast", want: "claude-haiku-4-5", wantReason: "alias"},
		{name: "not allowed", model: "llama-3", wantErr: true},
		{name: "alias to an allowed model only", model: "gpt-4o", want: "gpt-4o"},
		{name: "tier small without tools", model: "auto", req: wire.Request{InputTokens: 100}, want: "claude-haiku-4-5", wantReason: "tier"},
		{name: "tier small with tools goes up", model: "auto", req: wire.Request{InputTokens: 100, HasTools: true}, want: "claude-sonnet-4-5", wantReason: "tier"},
		{name: "tier medium", model: "auto", req: wire.Request{InputTokens: 5000}, want: "claude-sonnet-4-5", wantReason: "tier"},
		{name: "tier large", model: "auto", req: wire.Request{InputTokens: 50000}, want: "claude-opus-4-5", wantReason: "tier"},
		{name: "below the first downgrade", model: "claude-opus-4-5", monthUsed: 0.79, want: "claude-opus-4-5"},
		{name: "at the first downgrade", model: "claude-opus-4-5", monthUsed: 0.80, want: "claude-sonnet-4-5", wantReason: "downgrade"},
		{name: "sonnet untouched at 0.9", model: "claude-sonnet-4-5", monthUsed: 0.9, want: "claude-sonnet-4-5"},
		{name: "strongest downgrade wins", model: "claude-opus-4-5", monthUsed: 0.96, want: "claude-haiku-4-5", wantReason: "downgrade"},
		{name: "downgrade after alias", model: "smart", monthUsed: 0.85, want: "claude-sonnet-4-5", wantReason: "downgrade"},
		{name: "gpt never downgraded", model: "gpt-5", monthUsed: 0.99, want: "gpt-5"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g.budgets.store("t", []limiter.BudgetState{{Name: "month", Cap: 1000, Spent: int64(tc.monthUsed * 1000)}})
			x := &Exchange{g: g, cfg: cfg, policy: pol, tenant: "t", req: tc.req}
			got, reason, err := x.resolveModel(tc.model)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("want an error, got %q", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want || reason != tc.wantReason {
				t.Fatalf("resolveModel(%q) = %q (%q), want %q (%q)", tc.model, got, reason, tc.want, tc.wantReason)
			}
		})
	}
}

func TestDialectForPathIgnoresQuery(t *testing.T) {
	for path, want := range map[string]string{
		"/v1/messages":              "anthropic",
		"/v1/messages?beta=true":    "anthropic",
		"/v1/chat/completions":      "openai",
		"/v1/chat/completions?x=1":  "openai",
		"/v1/messages/count_tokens": "",
		"/v1/models":                "",
		"/v1/messagesX":             "",
		"/v1/responses":             "openai_responses",
		"/v1/responses?beta=true":   "openai_responses",
		"/v1/responses/compact":     "openai_responses",
		"/v1/responses/resp_1":      "",
		"/v1/embeddings":            "openai_embeddings",
		"/v1beta/models/gemini-2.5-flash:generateContent":               "gemini",
		"/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse": "gemini",
		"/v1beta/models/gemini-2.5-flash:countTokens":                   "",
	} {
		d := dialect.ForPath(path)
		got := ""
		if d != nil {
			got = d.Name()
		}
		if got != want {
			t.Errorf("dialect.ForPath(%q) = %q, want %q", path, got, want)
		}
	}
}

func TestPeerCaller(t *testing.T) {
	cases := map[string]policy.Caller{
		"spiffe://cluster.local/ns/search/sa/indexer": {"", "search", "search.indexer", ""},
		"spiffe://cluster.local/ns/search":            {"", "", policy.IdentityName("spiffe://cluster.local/ns/search"), ""},
		"service-a":                                   {"", "", "service-a", ""},
	}
	for in, want := range cases {
		if got := peerCaller(in); got != want {
			t.Errorf("peerCaller(%q) = %v, want %v", in, got, want)
		}
	}
}
