package accounting

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"
)

// DatedPrice is a price and the instant it takes effect. A zero From means
// "since before any date the table knows".
type DatedPrice struct {
	From  time.Time
	Price Price
}

// Schedule is one model's prices over time, in effect order: the price in
// force at t is the last one whose From is not after t. Only the first may
// have a zero From; a request at an instant before the first From is priced
// by the first entry, the earliest price the table knows.
type Schedule []DatedPrice

// Flat is the schedule of a price that never changed.
func Flat(p Price) Schedule { return Schedule{{Price: p}} }

// At returns the price in force at t. It does not allocate.
func (s Schedule) At(t time.Time) Price {
	for i := len(s) - 1; i > 0; i-- {
		if !t.Before(s[i].From) {
			return s[i].Price
		}
	}
	return s[0].Price
}

// validate checks that s is non-empty, in strictly increasing effect order
// with only the first entry undated, and that every price is valid.
func (s Schedule) validate() error {
	if len(s) == 0 {
		return errors.New("no prices")
	}
	for i, d := range s {
		if i > 0 {
			if d.From.IsZero() {
				return fmt.Errorf("price %d: only the first price may omit from", i+1)
			}
			if !d.From.After(s[i-1].From) {
				return fmt.Errorf("price %d: from %s is not after the previous price's", i+1, d.From.Format(time.RFC3339))
			}
		}
		if err := d.Price.validate(); err != nil {
			return fmt.Errorf("price %d: %w", i+1, err)
		}
	}
	return nil
}

func (s Schedule) equal(o Schedule) bool {
	if len(s) != len(o) {
		return false
	}
	for i := range s {
		if !s[i].From.Equal(o[i].From) || s[i].Price != o[i].Price {
			return false
		}
	}
	return true
}

// USDPerMTok is a price as configuration writes it, in USD per million
// tokens, with JSON (and so sigs.k8s.io/yaml) field names matching the
// `prices:` section of tokenwarden.yaml and the entries of prices.yaml.
// Input and Output are required; a nil cache class is derived as
// PriceFromUSDPerMTok describes.
type USDPerMTok struct {
	// From is when the price takes effect: a date ("2026-09-01", from
	// 00:00 UTC) or an RFC 3339 instant. Empty: since always.
	From         string   `json:"from,omitempty"`
	Input        *float64 `json:"input"`
	Output       *float64 `json:"output"`
	CacheWrite5m *float64 `json:"cache_write_5m,omitempty"`
	CacheWrite1h *float64 `json:"cache_write_1h,omitempty"`
	CacheRead    *float64 `json:"cache_read,omitempty"`
	// LongContext prices requests whose total input exceeds its threshold.
	LongContext *LongContextUSD `json:"long_context,omitempty"`
	// Tiers are service-tier multipliers: {batch: 0.5, priority: "9/5"}.
	Tiers *Tiers `json:"tiers,omitempty"`
}

// LongContextUSD is a long-context tier as configuration writes it: every
// class of a request whose total input exceeds Above tokens costs these
// prices. Input and Output are required; a nil cache class is derived from
// this tier's input as PriceFromUSDPerMTok describes.
type LongContextUSD struct {
	Above        int64    `json:"above"`
	Input        *float64 `json:"input"`
	Output       *float64 `json:"output"`
	CacheWrite5m *float64 `json:"cache_write_5m,omitempty"`
	CacheWrite1h *float64 `json:"cache_write_1h,omitempty"`
	CacheRead    *float64 `json:"cache_read,omitempty"`
}

// Price converts u: its classes with PriceFromUSDPerMTok, its long-context
// tier likewise, its tiers as given. From is not part of a Price (see
// Dated).
func (u USDPerMTok) Price() (Price, error) {
	p, err := classesFromUSD(u.Input, u.Output, u.CacheWrite5m, u.CacheWrite1h, u.CacheRead)
	if err != nil {
		return Price{}, err
	}
	if lc := u.LongContext; lc != nil {
		if lc.Above <= 0 {
			return Price{}, fmt.Errorf("price long_context: above %d: want a positive number of input tokens", lc.Above)
		}
		l, err := classesFromUSD(lc.Input, lc.Output, lc.CacheWrite5m, lc.CacheWrite1h, lc.CacheRead)
		if err != nil {
			return Price{}, fmt.Errorf("long_context: %w", err)
		}
		p.LongContext = LongContext{Above: lc.Above, Rates: l.base()}
	}
	if u.Tiers != nil {
		p.Tiers = *u.Tiers
	}
	if err := p.validate(); err != nil {
		return Price{}, err
	}
	return p, nil
}

func classesFromUSD(in, out, w5, w1, rd *float64) (Price, error) {
	if in == nil || out == nil {
		return Price{}, errors.New("price: input and output (USD per million tokens) are required")
	}
	opt := func(v *float64) float64 {
		if v == nil {
			return math.NaN()
		}
		return *v
	}
	return PriceFromUSDPerMTok(*in, *out, opt(w5), opt(w1), opt(rd))
}

// Dated converts u into a DatedPrice, reading From with ParseEffective.
func (u USDPerMTok) Dated() (DatedPrice, error) {
	var d DatedPrice
	var err error
	if u.From != "" {
		if d.From, err = ParseEffective(u.From); err != nil {
			return DatedPrice{}, err
		}
	}
	if d.Price, err = u.Price(); err != nil {
		return DatedPrice{}, err
	}
	return d, nil
}

// ParseEffective reads an effective date: "2026-09-01" is that day from
// 00:00 UTC (providers announce price changes by date; UTC is the reading
// that is the same on every replica), or an RFC 3339 instant.
func ParseEffective(s string) (time.Time, error) {
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t, nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("from %q: want a date (2026-09-01) or an RFC 3339 instant", s)
	}
	return t.UTC(), nil
}

// ModelPrice is one model's entry under `prices:` in tokenwarden.yaml:
// either one price (a mapping, as before effective dates existed) or a list
// of prices with effective dates, each but the first with `from`:
//
//	my-llama: {input: 0.2, output: 0.6}
//	gpt-x:
//	  - {input: 1, output: 4}
//	  - {from: 2026-09-01, input: 0.5, output: 2, tiers: {batch: 0.5}}
type ModelPrice []USDPerMTok

// UnmarshalJSON accepts a JSON object (one price) or an array of them. It
// decodes strictly, as the rest of tokenwarden.yaml is: an unknown field is
// an error.
func (o *ModelPrice) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if len(b) > 0 && b[0] == '[' {
		var list []USDPerMTok
		if err := dec.Decode(&list); err != nil {
			return err
		}
		*o = list
		return nil
	}
	var one USDPerMTok
	if err := dec.Decode(&one); err != nil {
		return err
	}
	*o = ModelPrice{one}
	return nil
}

// Schedule converts the override's prices, checking their order.
func (o ModelPrice) Schedule() (Schedule, error) {
	s := make(Schedule, 0, len(o))
	for i, u := range o {
		d, err := u.Dated()
		if err != nil {
			if len(o) == 1 {
				return nil, err
			}
			return nil, fmt.Errorf("price %d: %w", i+1, err)
		}
		s = append(s, d)
	}
	if err := s.validate(); err != nil {
		return nil, err
	}
	return s, nil
}
