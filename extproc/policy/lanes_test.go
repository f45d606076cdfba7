package policy

import (
	"strings"
	"testing"
	"time"
)

func TestLanesCompile(t *testing.T) {
	c, err := Parse([]byte(`
queue: {max_requests: 50, max_bytes: 1048576, message_timeout: 1s, max_message_timeout: 20s}
policies:
  shaped:
    lanes:
      bulk: {priority: 1, share: 0.2, max_wait: 19s}
      interactive: {priority: 9, share: 0.5, default: true}
      batch: {priority: 5, share: 0.3, max_wait: 5s}
`))
	if err != nil {
		t.Fatal(err)
	}
	if q := c.Queue; q.MaxRequests != 50 || q.MaxBytes != 1<<20 || q.MessageTimeout != time.Second || q.MaxMessageTimeout != 20*time.Second {
		t.Errorf("queue %+v", q)
	}
	p, _ := c.Policy("", "shaped")
	var names []string
	for _, l := range p.Lanes {
		names = append(names, l.Name)
	}
	if strings.Join(names, ",") != "interactive,batch,bulk" {
		t.Errorf("lanes by priority: %v", names)
	}
	// Each lane heads the group of itself and every lower lane.
	for i, want := range []float64{1, 0.5, 0.2} {
		if g := p.Lanes[i].GroupShare; g < want-1e-9 || g > want+1e-9 {
			t.Errorf("lane %s group share %v, want %v", p.Lanes[i].Name, g, want)
		}
	}
	for _, tc := range []struct {
		route, lane string
		known       bool
	}{
		{"", "interactive", true}, {"batch", "batch", true}, {"nonesuch", "interactive", false},
	} {
		if l, _, known := p.Lane(tc.route); l.Name != tc.lane || known != tc.known {
			t.Errorf("Lane(%q) = %s %v", tc.route, l.Name, known)
		}
	}
	if d, _ := Parse([]byte("policies: {}")); d.Queue.MessageTimeout != 2*time.Second || d.Queue.MaxMessageTimeout != 10*time.Second {
		t.Errorf("default queue %+v, want envoy.yaml's 2s and 10s", d.Queue)
	}
}

func TestLanesInvalid(t *testing.T) {
	for _, tc := range []struct{ name, lanes, want string }{
		{"no priority", `{a: {share: 0.5}}`, "policies.p.lanes.a.priority: required"},
		{"share zero", `{a: {priority: 1, share: 0}}`, "policies.p.lanes.a.share"},
		{"share above 1", `{a: {priority: 1, share: 1.5}}`, "policies.p.lanes.a.share"},
		{"sum above 1", `{a: {priority: 1, share: 0.6, default: true}, b: {priority: 2, share: 0.6}}`, "add up to 1.2"},
		{"no default", `{a: {priority: 1, share: 0.5}, b: {priority: 2, share: 0.5}}`, "default: true"},
		{"two defaults", `{a: {priority: 1, share: 0.5, default: true}, b: {priority: 2, share: 0.5, default: true}}`, "more than one"},
		{"same priority", `{a: {priority: 1, share: 0.5, default: true}, b: {priority: 1, share: 0.5}}`, "same priority"},
		{"wait beyond envoy", `{a: {priority: 1, share: 1, max_wait: 10s}}`, "max_wait: 10s is longer than Envoy"},
		{"bad name", `{"a b": {priority: 1, share: 1}}`, "lane name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte("policies:\n  p:\n    lanes: " + tc.lanes + "\n"))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want %q", err, tc.want)
			}
		})
	}
	if _, err := Parse([]byte("queue: {message_timeout: 0s}\npolicies: {}")); err == nil {
		t.Error("a zero message_timeout parsed")
	}
}

func TestLaneLimit(t *testing.T) {
	for _, tc := range []struct {
		limit int64
		share float64
		want  int64
	}{{0, 0.3, 0}, {10, 0.3, 3}, {1, 0.3, 1}, {600, 0.7, 420}, {32, 0.3, 9}} {
		if got := LaneLimit(tc.limit, tc.share); got != tc.want {
			t.Errorf("LaneLimit(%d, %v) = %d, want %d", tc.limit, tc.share, got, tc.want)
		}
	}
}
