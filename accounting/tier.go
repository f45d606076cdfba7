package accounting

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ServiceTier is a service tier as it is priced: providers bill batch, flex
// and priority processing at multiples of their standard price.
type ServiceTier uint8

// The priced service tiers. Standard is the zero value.
const (
	TierStandard ServiceTier = iota
	TierBatch
	TierFlex
	TierPriority
)

// ParseServiceTier reads a service tier as the response reports it, which is
// what the request is billed at (the request's own value is only a wish:
// OpenAI's "auto" is served as "default", or as "flex" or "priority" where
// the project is set up for them):
//
//   - OpenAI's top-level "service_tier" of a Chat Completions or Responses
//     response: "default", "flex", "priority", "scale"
//     (https://platform.openai.com/docs/api-reference/chat/object#chat/object-service_tier);
//   - Anthropic's usage.service_tier: "standard", "priority", "batch"
//     (https://docs.anthropic.com/en/api/messages, "usage").
//
// Anything else — "", "default", "standard", "auto", "scale" (reserved
// capacity, billed per unit of capacity rather than per token), a value a
// provider adds later — prices as standard: a tier is a discount or a
// surcharge only when the table knows it.
func ParseServiceTier(s string) ServiceTier {
	switch s {
	case "batch":
		return TierBatch
	case "flex":
		return TierFlex
	case "priority":
		return TierPriority
	}
	return TierStandard
}

// String returns the tier's name as tokenwarden.yaml spells it.
func (t ServiceTier) String() string {
	switch t {
	case TierBatch:
		return "batch"
	case TierFlex:
		return "flex"
	case TierPriority:
		return "priority"
	}
	return "standard"
}

// Multiplier is an exact rational factor Num/Den applied to a class's total,
// so tier prices stay integer nano-USD (a half of $0.075/MTok is 37.5
// nano-USD per token, which no integer per-token price can hold). The zero
// value is ×1.
type Multiplier struct {
	Num, Den int64
}

// maxMultiplierTerm bounds Num and Den (after reduction). Published tiers are
// simple fractions (1/2, 9/5, 5/2); the bound keeps every product of a
// token count, a price and a numerator within 128 bits.
const maxMultiplierTerm = 1000

// unit reports ×1: the zero value or n/n. A multiplier with a term that is
// not positive (only a hand-built Price can hold one; tables reject it)
// also counts as ×1, so Cost never divides by zero.
func (m Multiplier) unit() bool { return m.Num <= 0 || m.Den <= 0 || m.Num == m.Den }

func (m Multiplier) validate() error {
	if m == (Multiplier{}) {
		return nil
	}
	if m.Num <= 0 || m.Den <= 0 || m.Num > maxMultiplierTerm || m.Den > maxMultiplierTerm {
		return fmt.Errorf("multiplier %d/%d: want a positive fraction with terms at most %d", m.Num, m.Den, maxMultiplierTerm)
	}
	return nil
}

// String prints the multiplier as a fraction ("1/2"; "1" for ×1).
func (m Multiplier) String() string {
	if m.unit() {
		return "1"
	}
	return strconv.FormatInt(m.Num, 10) + "/" + strconv.FormatInt(m.Den, 10)
}

// ParseMultiplier reads a multiplier written as a decimal ("0.5", "1.8",
// "2") or a fraction ("1/2", "9/5"), exactly: "0.5" is 1/2, not the float64
// nearest to it. The result is in lowest terms and must be positive with
// terms at most 1000.
func ParseMultiplier(s string) (Multiplier, error) {
	s = strings.TrimSpace(s)
	var num, den int64
	var err error
	if a, b, ok := strings.Cut(s, "/"); ok {
		if num, err = strconv.ParseInt(strings.TrimSpace(a), 10, 64); err == nil {
			den, err = strconv.ParseInt(strings.TrimSpace(b), 10, 64)
		}
	} else {
		num, den, err = parseDecimal(s)
	}
	if err != nil || num <= 0 || den <= 0 {
		return Multiplier{}, fmt.Errorf("multiplier %q: want a positive decimal (0.5) or fraction (1/2)", s)
	}
	g := gcd(num, den)
	m := Multiplier{Num: num / g, Den: den / g}
	if err := m.validate(); err != nil {
		return Multiplier{}, fmt.Errorf("multiplier %q: %w", s, err)
	}
	return m, nil
}

// parseDecimal reads "12.345" as 12345/1000; exponents are not accepted.
func parseDecimal(s string) (num, den int64, err error) {
	intPart, frac, _ := strings.Cut(s, ".")
	if intPart == "" && frac == "" || len(frac) > 6 || strings.ContainsAny(s, "eE+-") {
		return 0, 0, errors.New("not a plain decimal")
	}
	den = 1
	for range len(frac) {
		den *= 10
	}
	if intPart == "" {
		intPart = "0"
	}
	num, err = strconv.ParseInt(intPart+frac, 10, 64)
	return num, den, err
}

func gcd(a, b int64) int64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// UnmarshalJSON accepts a JSON number (0.5, read from its text exactly) or a
// string ("1/2", "0.5"), as YAML through sigs.k8s.io/yaml produces either.
func (m *Multiplier) UnmarshalJSON(b []byte) error {
	s := string(b)
	if u, err := strconv.Unquote(s); err == nil {
		s = u
	}
	v, err := ParseMultiplier(s)
	if err != nil {
		return err
	}
	*m = v
	return nil
}

// MarshalJSON writes the fraction as a string.
func (m Multiplier) MarshalJSON() ([]byte, error) { return []byte(strconv.Quote(m.String())), nil }
