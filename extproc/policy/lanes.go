package policy

import (
	"fmt"
	"math"
	"sort"
	"time"
)

// Lanes: a policy's traffic split into priority lanes, each with a reserved
// share of the caller's limits and an optional wait for capacity.
//
//	lanes:
//	  interactive: {priority: 2, share: 0.7, default: true}
//	  batch:       {priority: 1, share: 0.3, max_wait: 8s}
//
// A YAML map has no order, so each lane names its priority (higher is
// served first; distinct values). Lane k's group is the lanes at or below
// its priority, held to the sum of their shares of every limit; a request
// of a lane is admitted only if it fits every group that contains it, so a
// higher lane may use what lower lanes leave unused and never the reverse.
// The route picks the lane (route metadata), never the client.

// Lane is one compiled lane of a policy.
type Lane struct {
	Name     string
	Priority int
	Share    float64
	// GroupShare is the share of the group this lane heads: its own share
	// and every lower lane's.
	GroupShare float64
	// MaxWait is how long a request of the lane may wait for capacity a
	// rate, concurrency or upstream limit will give back; 0 answers at once.
	MaxWait time.Duration
}

// MaxLanes bounds a policy's lanes: each lane below the top adds one group
// of limit keys to every limited level of an admission.
const MaxLanes = 8

type laneFile struct {
	Priority *int     `json:"priority"`
	Share    *float64 `json:"share"`
	MaxWait  duration `json:"max_wait"`
	Default  bool     `json:"default"`
}

// compileLanes compiles a policy's lanes, sorted by priority, highest
// first, and returns the index of the default lane.
func compileLanes(at string, in map[string]laneFile, q Queue) ([]Lane, int, error) {
	if len(in) == 0 {
		return nil, 0, nil
	}
	if len(in) > MaxLanes {
		return nil, 0, fmt.Errorf("%s: %d lanes, at most %d", at, len(in), MaxLanes)
	}
	longest := q.LongestWait()
	out := make([]Lane, 0, len(in))
	def, defaults := "", 0
	sum := 0.0
	for _, name := range sortedKeys(in) {
		f, lat := in[name], at+"."+name
		if !validName(name) {
			return nil, 0, fmt.Errorf("%s: a lane name must be 1-64 letters, digits, '.', '_' or '-'", lat)
		}
		if f.Priority == nil {
			return nil, 0, fmt.Errorf("%s.priority: required (a map has no order; higher is served first)", lat)
		}
		if f.Share == nil || !(*f.Share > 0 && *f.Share <= 1) {
			return nil, 0, fmt.Errorf("%s.share: required, in (0, 1]", lat)
		}
		if f.MaxWait.Duration > longest {
			return nil, 0, fmt.Errorf("%s.max_wait: %s is longer than Envoy lets a request body wait (queue.max_message_timeout %s, less %s for the admission and the answer); raise both, or wait less",
				lat, f.MaxWait.Duration, q.MaxMessageTimeout, QueueMargin)
		}
		if f.Default {
			def, defaults = name, defaults+1
		}
		sum += *f.Share
		out = append(out, Lane{Name: name, Priority: *f.Priority, Share: *f.Share, MaxWait: f.MaxWait.Duration})
	}
	if sum > 1+1e-9 {
		return nil, 0, fmt.Errorf("%s: the shares add up to %v, more than 1", at, sum)
	}
	switch {
	case defaults > 1:
		return nil, 0, fmt.Errorf("%s: more than one lane says default: true", at)
	case defaults == 0 && len(out) > 1:
		return nil, 0, fmt.Errorf("%s: one lane must say default: true (the lane of routes that name none)", at)
	case defaults == 0:
		def = out[0].Name
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Priority > out[j].Priority })
	for i := 1; i < len(out); i++ {
		if out[i].Priority == out[i-1].Priority {
			return nil, 0, fmt.Errorf("%s: lanes %s and %s have the same priority %d", at, out[i-1].Name, out[i].Name, out[i].Priority)
		}
	}
	group := 0.0
	for i := len(out) - 1; i >= 0; i-- {
		group += out[i].Share
		out[i].GroupShare = math.Min(group, 1)
	}
	for i := range out {
		if out[i].Name == def {
			return out, i, nil
		}
	}
	return out, 0, nil
}

// Lane returns the lane a route names, or the default lane when it names
// none; known is false when it names one the policy does not have (the
// default lane is used). nil for a policy without lanes.
func (p *Policy) Lane(name string) (lane *Lane, index int, known bool) {
	if len(p.Lanes) == 0 {
		return nil, 0, name == ""
	}
	for i := range p.Lanes {
		if p.Lanes[i].Name == name {
			return &p.Lanes[i], i, true
		}
	}
	return &p.Lanes[p.DefaultLane], p.DefaultLane, name == ""
}

// LaneLimit is a limit's share for a lane group: rounded down, at least 1
// so that a small limit never becomes unlimited (0); 0 stays unlimited.
func LaneLimit(limit int64, share float64) int64 {
	if limit <= 0 {
		return 0
	}
	return max(1, int64(math.Floor(float64(limit)*share+1e-9)))
}

// Queue bounds this replica's admission queue and states Envoy's message
// timeouts, which bound every wait: Envoy answers 504 when the processor
// holds a message longer than message_timeout, unless the processor first
// sends override_message_timeout, at most max_message_timeout and once per
// message
// (https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/ext_proc/v3/ext_proc.proto).
// They must match the ext_proc filter's settings in envoy.yaml.
type Queue struct {
	// MaxRequests and MaxBytes bound the requests waiting on this replica
	// and the bytes of their bodies; a request past either is answered at
	// once (and counted).
	MaxRequests int
	MaxBytes    int64
	// MessageTimeout and MaxMessageTimeout are the ext_proc filter's
	// message_timeout and max_message_timeout (0: overrides disabled).
	MessageTimeout    time.Duration
	MaxMessageTimeout time.Duration
}

// Queue defaults: the timeouts of the shipped envoy/envoy.yaml.
const (
	DefaultQueueRequests           = 1000
	DefaultQueueBytes              = 64 << 20
	DefaultMessageTimeout          = 2 * time.Second
	DefaultMaxMessageTimeout       = 10 * time.Second
	maxQueueRequests               = 100_000
	maxQueueBytes            int64 = 4 << 30
)

// QueueMargin is the part of Envoy's message timeout a wait leaves for the
// admission round trip after it and the answer's way back to Envoy.
const QueueMargin = 500 * time.Millisecond

// LongestWait is the longest a lane may wait: the longest Envoy holds a
// body message, less QueueMargin.
func (q Queue) LongestWait() time.Duration {
	return max(q.MessageTimeout, q.MaxMessageTimeout) - QueueMargin
}

type queueFile struct {
	MaxRequests       *int     `json:"max_requests"`
	MaxBytes          *int64   `json:"max_bytes"`
	MessageTimeout    duration `json:"message_timeout"`
	MaxMessageTimeout duration `json:"max_message_timeout"`
}

func compileQueue(f queueFile) (Queue, error) {
	q := Queue{MaxRequests: DefaultQueueRequests, MaxBytes: DefaultQueueBytes,
		MessageTimeout: DefaultMessageTimeout, MaxMessageTimeout: DefaultMaxMessageTimeout}
	if f.MaxRequests != nil {
		if *f.MaxRequests < 1 || *f.MaxRequests > maxQueueRequests {
			return q, fmt.Errorf("queue.max_requests: %d outside 1..%d", *f.MaxRequests, maxQueueRequests)
		}
		q.MaxRequests = *f.MaxRequests
	}
	if f.MaxBytes != nil {
		if *f.MaxBytes < 1 || *f.MaxBytes > maxQueueBytes {
			return q, fmt.Errorf("queue.max_bytes: %d outside 1..%d", *f.MaxBytes, maxQueueBytes)
		}
		q.MaxBytes = *f.MaxBytes
	}
	if f.MessageTimeout.set {
		q.MessageTimeout = f.MessageTimeout.Duration
	}
	if f.MaxMessageTimeout.set {
		q.MaxMessageTimeout = f.MaxMessageTimeout.Duration
	}
	if q.MessageTimeout < time.Millisecond || q.MessageTimeout > time.Hour {
		return q, fmt.Errorf("queue.message_timeout: %s outside 1ms..1h (the ext_proc filter's message_timeout)", q.MessageTimeout)
	}
	if q.MaxMessageTimeout > time.Hour {
		return q, fmt.Errorf("queue.max_message_timeout: %s above 1h", q.MaxMessageTimeout)
	}
	return q, nil
}

// LaneNames lists every lane of every policy, sorted, once each: the label
// values of the lane metrics.
func (c *Config) LaneNames() []string {
	seen := map[string]bool{}
	var out []string
	for _, p := range c.policies {
		for _, l := range p.Lanes {
			if !seen[l.Name] {
				seen[l.Name] = true
				out = append(out, l.Name)
			}
		}
	}
	sort.Strings(out)
	return out
}
