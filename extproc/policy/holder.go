package policy

import (
	_ "embed"
	"sync/atomic"
)

//go:embed default.yaml
var defaultYAML []byte

// DefaultYAML is the embedded default configuration, used when serve runs
// without --config.
func DefaultYAML() []byte { return append([]byte(nil), defaultYAML...) }

// Holder publishes the current Config to concurrent readers. A request loads
// the pointer once at its start and uses that Config to its end, so a reload
// never changes the rules in the middle of a request.
type Holder struct {
	p atomic.Pointer[Config]
}

// NewHolder returns a Holder publishing c.
func NewHolder(c *Config) *Holder {
	h := &Holder{}
	h.p.Store(c)
	return h
}

// Load returns the current Config.
func (h *Holder) Load() *Config { return h.p.Load() }

// Store publishes c to every later Load.
func (h *Holder) Store(c *Config) { h.p.Store(c) }
