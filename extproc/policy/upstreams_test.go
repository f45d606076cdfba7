package policy

import (
	"strings"
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/limiter"
)

func TestUpstreamsConfig(t *testing.T) {
	cases := []struct {
		name, yaml, err string
		check           func(t *testing.T, u Upstreams)
	}{
		{name: "defaults", yaml: ``, check: func(t *testing.T, u Upstreams) {
			want := Pacing{Enabled: true, EngageBelow: 0.25, ReleaseAbove: 0.5, Headroom: 0.95, Burst: 0.05}
			if u.Pacing != want {
				t.Errorf("pacing %+v, want %+v", u.Pacing, want)
			}
			if h := u.Host("api.openai.com"); h.Window != time.Minute || h.Declared() {
				t.Errorf("undeclared host %+v", h)
			}
		}},
		{name: "declared", yaml: `
upstreams:
  pacing: {enabled: false, engage_below: 0.1, release_above: 0.3, headroom: 0.9, burst: 0.2}
  hosts:
    api.anthropic.com: {window: 30s, limits: {requests: 50, input_tokens: 30000, output_tokens: 8000}}`,
			check: func(t *testing.T, u Upstreams) {
				want := Pacing{Enabled: false, EngageBelow: 0.1, ReleaseAbove: 0.3, Headroom: 0.9, Burst: 0.2}
				if u.Pacing != want {
					t.Errorf("pacing %+v, want %+v", u.Pacing, want)
				}
				h := u.Host("api.anthropic.com")
				if h.Window != 30*time.Second || h.Limits != [limiter.PaceDims]int64{50, 0, 30000, 8000} {
					t.Errorf("host %+v", h)
				}
			}},
		{name: "fraction out of range", yaml: "upstreams: {pacing: {headroom: 1.5}}", err: "upstreams.pacing.headroom"},
		{name: "zero fraction", yaml: "upstreams: {pacing: {engage_below: 0}}", err: "upstreams.pacing.engage_below"},
		{name: "release below engage", yaml: "upstreams: {pacing: {engage_below: 0.6}}", err: "upstreams.pacing.release_above"},
		{name: "host with a port", yaml: "upstreams: {hosts: {'api.openai.com:443': {}}}", err: "lower-case DNS name"},
		{name: "upper-case host", yaml: "upstreams: {hosts: {API.openai.com: {}}}", err: "lower-case DNS name"},
		{name: "window too short", yaml: "upstreams: {hosts: {api.openai.com: {window: 100ms}}}", err: "window"},
		{name: "negative limit", yaml: "upstreams: {hosts: {api.openai.com: {limits: {tokens: -1}}}}", err: "limits.tokens"},
		{name: "unknown field", yaml: "upstreams: {hosts: {api.openai.com: {limits: {rpm: 1}}}}", err: "rpm"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := Parse([]byte("policies: {}\n" + c.yaml))
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("err %v, want one naming %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			c.check(t, cfg.Upstreams)
		})
	}
}
