package accounting

import "testing"

func TestModelFamily(t *testing.T) {
	tests := []struct {
		model, family string
		platform      bool
	}{
		// The family ID itself, and the direct API's variants of it.
		{"claude-sonnet-4-5", "claude-sonnet-4-5", false},
		{"claude-sonnet-4-5-20250929", "claude-sonnet-4-5", false},
		{"claude-3-5-haiku-latest", "claude-3-5-haiku", false},
		{"claude-3-7-sonnet-latest", "claude-3-7-sonnet", false},
		// A routing prefix is not a platform.
		{"anthropic/claude-opus-4-5", "claude-opus-4-5", false},
		{"anthropic/claude-opus-4-5-20251101", "claude-opus-4-5", false},
		// Bedrock: region and provider prefix, version suffix.
		{"anthropic.claude-haiku-4-5-20251001-v1:0", "claude-haiku-4-5", true},
		{"us.anthropic.claude-opus-4-5-20251101-v1:0", "claude-opus-4-5", true},
		{"eu.anthropic.claude-sonnet-4-20250514-v2", "claude-sonnet-4", true},
		// Vertex: an "@" snapshot.
		{"claude-opus-4-5@20251101", "claude-opus-4-5", true},
		{"claude-3-5-sonnet-v2@20241022", "claude-3-5-sonnet", true},
		// Not variants: kept as they are.
		{"claude-opus-4-5-preview", "claude-opus-4-5-preview", false},
		{"claude-opus-4-5-2025", "claude-opus-4-5-2025", false},
		{"", "", false},
		// OpenAI names pass through unchanged, dated snapshots included:
		// their dates are not one 8-digit segment.
		{"gpt-5", "gpt-5", false},
		{"gpt-5-nano-2025-08-07", "gpt-5-nano-2025-08-07", false},
		{"gpt-4o-mini", "gpt-4o-mini", false},
		{"gpt-4.1", "gpt-4.1", false},
		{"o3-mini", "o3-mini", false},
	}
	for _, tc := range tests {
		family, platform := ModelFamily(tc.model)
		if family != tc.family || platform != tc.platform {
			t.Errorf("ModelFamily(%q) = %q, %v; want %q, %v", tc.model, family, platform, tc.family, tc.platform)
		}
	}
}

func TestMinCacheTokens(t *testing.T) {
	tests := []struct {
		model string
		want  int64
	}{
		{"claude-fable-5-1", 512},
		{"claude-mythos-5-1-20261001", 512},
		{"claude-opus-5-5", 512},
		{"claude-opus-5", 512},
		{"claude-fable-5", 512},
		{"claude-mythos-5", 512},
		{"claude-opus-4-8", 1024},
		{"claude-sonnet-5", 1024},
		{"claude-sonnet-4-6", 1024},
		{"claude-sonnet-4-5-20250929", 1024},
		{"claude-opus-4-1-20250805", 1024},
		{"claude-opus-4-20250514", 1024},
		{"claude-opus-4-0", 1024},
		{"claude-4-opus-20250514", 1024},
		{"claude-sonnet-4-20250514", 1024},
		{"claude-3-7-sonnet-latest", 1024},
		{"claude-mythos-preview", 2048},
		{"claude-opus-4-7-20260416", 2048},
		{"claude-3-5-haiku-20241022", 2048},
		{"claude-3-haiku-20240307", 2048},
		{"claude-opus-4-6-20260205", 4096},
		{"claude-opus-4-5-20251101", 4096},
		{"claude-haiku-4-5", 4096},
		{"anthropic.claude-haiku-4-5-20251001-v1:0", 4096},
		{"us.anthropic.claude-opus-4-5-20251101-v1:0", 4096},
		{"claude-opus-4-5@20251101", 4096},
		{"anthropic/claude-sonnet-4-5", 1024},
		// Unknown: the conservative default, not a neighbour's value.
		{"claude-opus-5-1", UnknownModelMinCacheTokens},
		{"claude-opus-4-5-preview", UnknownModelMinCacheTokens},
		{"claude-3-5-sonnet-20241022", UnknownModelMinCacheTokens},
		{"gpt-5", UnknownModelMinCacheTokens},
		{"", UnknownModelMinCacheTokens},
	}
	for _, tc := range tests {
		if got := MinCacheTokens(tc.model); got != tc.want {
			t.Errorf("MinCacheTokens(%q) = %d, want %d", tc.model, got, tc.want)
		}
	}
}

func TestMaxOutputTokens(t *testing.T) {
	for _, tc := range []struct {
		model string
		want  int64
	}{
		{"claude-3-haiku-20240307", 4096},
		{"claude-3-5-sonnet-latest", 8192},
		{"claude-opus-4-1-20250805", 32_000},
		{"us.anthropic.claude-sonnet-4-5-20250929-v1:0", 64_000},
		{"claude-3-7-sonnet-20250219", 128_000},
		{"claude-opus-4-6", 128_000},
		{"gpt-4o", 16_384},
		{"gpt-4o-mini", 16_384},
		{"gpt-4.1-nano", 32_768},
		{"gpt-5-pro", 272_000},
		{"gpt-5-mini", 128_000},
		{"o4-mini", 100_000},
		{"gemini-2.5-flash", 65_536},
		{"text-embedding-3-small", 0},
		{"claude-fable-5", UnknownModelMaxOutputTokens},
		{"my-llama", UnknownModelMaxOutputTokens},
	} {
		if got := MaxOutputTokens(tc.model); got != tc.want {
			t.Errorf("MaxOutputTokens(%q) = %d, want %d", tc.model, got, tc.want)
		}
	}
}

// TestMaxOutputCoversPriceTable: every model the embedded price table knows
// has a max-output figure, or is one whose figure could not be confirmed on
// its provider's page (then the policy's default_max_output_tokens applies).
// A model added to the price table must be placed in one or the other.
func TestMaxOutputCoversPriceTable(t *testing.T) {
	unconfirmed := map[string]bool{
		"claude-opus-4-7": true, "claude-opus-4-8": true, "claude-opus-5": true, "claude-sonnet-5": true,
		"claude-sonnet-5-5": true, "claude-fable-5": true, "claude-mythos-5": true, "claude-fable-5-1": true,
		"claude-mythos-5-1": true,
		"gpt-5.2":           true, "gpt-5.2-pro": true, "gpt-5.3": true, "gpt-5.3-codex": true, "gpt-5.4": true,
		"gpt-5.4-mini": true, "gpt-5.4-nano": true, "gpt-5.4-pro": true, "gpt-5.5": true, "gpt-5.5-pro": true,
		"gpt-5.6-sol": true, "gpt-5.6-terra": true, "gpt-5.6-luna": true,
		"gemini-3.1-pro-preview": true, "gemini-3-flash-preview": true, "gemini-3.1-flash-lite": true,
		"gemini-3.5-flash": true, "gemini-3.5-flash-lite": true, "gemini-3.6-flash": true, "gemini-3.7-flash": true,
	}
	for _, m := range embedded.models {
		_, known := LookupMaxOutputTokens(m.name)
		switch {
		case known && unconfirmed[m.name]:
			t.Errorf("%s has a figure and is listed as unconfirmed", m.name)
		case !known && !unconfirmed[m.name]:
			t.Errorf("%s: no max-output figure; add it to maxOutput (cited) or to this test's unconfirmed list", m.name)
		}
	}
	for m := range maxOutput {
		if f, _ := ModelFamily(m); f != m {
			t.Errorf("maxOutput key %q is not a family ID (%q): it can never match", m, f)
		}
	}
}

func TestExplicitCacheBreakpoints(t *testing.T) {
	for _, tc := range []struct {
		model string
		want  bool
	}{
		// From gpt-5.6 on, whatever the variant.
		{"gpt-5.6", true},
		{"gpt-5.6-sol", true},
		{"gpt-5.6-terra", true},
		{"gpt-5.6-luna", true},
		{"gpt-5.6-pro", true},
		{"gpt-5.6-terra-2026-07-30", true},
		{"gpt-5.7", true},
		{"gpt-5.10-mini", true},
		{"gpt-6", true},
		{"gpt-6.1-nano", true},
		{"openai/gpt-5.6-luna", true},
		{"ft:gpt-5.6-terra:acme::abc123", true},
		// Before it.
		{"gpt-5.5", false},
		{"gpt-5.5-pro", false},
		{"gpt-5", false},
		{"gpt-5-nano-2025-08-07", false},
		{"gpt-4.1", false},
		{"gpt-4o", false},
		{"gpt-4o-mini", false},
		{"ft:gpt-4o-mini:acme::x", false},
		// Not a version the rule reads.
		{"gpt-5.6o", false},
		{"gpt-oss-120b", false},
		{"gpt-", false},
		{"gpt-5.", false},
		{"gpt-99999999", false},
		{"chatgpt-5.6", false},
		{"o3", false},
		{"o4-mini", false},
		{"claude-opus-5", false},
		{"gemini-3.6-flash", false},
		{"", false},
	} {
		if got := ExplicitCacheBreakpoints(tc.model); got != tc.want {
			t.Errorf("ExplicitCacheBreakpoints(%q) = %v, want %v", tc.model, got, tc.want)
		}
	}
	if got := MinCacheTokens("gpt-5.6-terra"); got != OpenAIMinCacheTokens {
		t.Errorf("MinCacheTokens(gpt-5.6-terra) = %d, want OpenAI's %d", got, OpenAIMinCacheTokens)
	}
}
