package gate

import (
	"bytes"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
	"github.com/tokenwarden/tokenwarden/limiter"
)

// reserve sets the request's estimate: its (calibrated) input and the output the policy
// reserves. Under budget_reservation: capped that is at most
// output_reservation tokens, so a huge max_tokens does not pin a budget —
// and may overshoot it. Under full it is the whole output the request may
// produce, which the store may clamp (x.output) to what every budget of
// every level still allows.
func (x *Exchange) reserve(body []byte, input int64) {
	out, full := x.requestedOutput(body)
	x.estimate = accounting.Usage{InputTokens: input, OutputTokens: out}
	x.estimateCost = x.price.Cost(x.estimate).Total
	x.output = limiter.Output{}
	if !full || out == 0 {
		return
	}
	// The store clamps by whole output tokens at one price: an estimate
	// (standard tier, its long-context cliff decided by the input alone)
	// costs exactly its input plus out × the output rate. Were it ever
	// not so, the request is reserved whole and not clamped.
	per := x.price.Rates(x.estimate).Output
	base := x.price.Cost(accounting.Usage{InputTokens: input}).Total
	if per <= 0 || base+accounting.NanoUSD(out)*per != x.estimateCost {
		return
	}
	x.output = limiter.Output{Tokens: out, Price: int64(per), Min: min(x.policy.MinOutputTokens, out)}
}

// requestedOutput is the output a request reserves under its policy, and
// whether it is a full reservation the store may clamp.
func (x *Exchange) requestedOutput(body []byte) (out int64, full bool) {
	req, p := &x.req, x.policy
	if req.NoOutput {
		return 0, false // embeddings: the input is the whole cost
	}
	if p.BudgetReservation != policy.ReservationFull {
		out = p.OutputReservation
		if req.MaxTokens > 0 && req.MaxTokens < out {
			out = req.MaxTokens
		}
		return out, false
	}
	switch {
	case req.MaxTokens > 0:
		out = req.MaxTokens
	case zeroBound(body, &req.Index.OutputLimit) && x.dialect.Name() != "gemini":
		// max_tokens: 0 generates nothing (Anthropic's cache pre-warm:
		// https://docs.anthropic.com/en/api/messages); a clamp must not
		// turn it into a request that does. Gemini's proto3 field reads 0
		// as unset, so there it is the model's maximum below.
		return 0, false
	default:
		// By the price table's canonical name when priced: it covers
		// every snapshot and alias the table lists.
		name := x.model
		if x.modelLabel != policy.OtherLabel {
			name = x.modelLabel
		}
		var known bool
		if out, known = accounting.LookupMaxOutputTokens(name); !known {
			out = p.DefaultMaxOutputTokens
		}
	}
	// A bound past anything a provider produces is no bound at all; it
	// would only put the reservation outside the store's limits.
	return min(out, accounting.MaxPlausibleTokens), true
}

// zeroBound reports an output bound written as the number 0 (not null).
func zeroBound(body []byte, idx *wire.OutputLimitIndex) bool {
	if !idx.Found() {
		return false
	}
	s := idx.Values[0]
	return s.Start >= 0 && s.End <= len(body) && s.Start < s.End && bytes.Equal(body[s.Start:s.End], []byte("0"))
}

// clamp writes the output the store granted into the request as its output
// bound, in one copy of the original body with every other edit (the copy
// the first edit made is dropped: a second copy, on clamped requests only),
// and makes the estimate what was reserved. A clamped answer is not the
// answer to the request as sent, so it is not cached.
func (x *Exchange) clamp(body []byte) (out []byte, path string, reply *Reply) {
	x.clamped = x.decision.OutputTokens
	x.estimate.OutputTokens = x.clamped
	x.estimateCost = x.price.Cost(x.estimate).Total
	x.rc.fill = false
	out, _, path, reply = x.edit(body)
	return out, path, reply
}

// leastReservation is the least the request can reserve: its estimate, or
// under a full reservation its input and the minimum output. A request
// whose least reservation exceeds a budget's whole cap can never be
// admitted; one that would be clamped after the window resets can.
func (x *Exchange) leastReservation() int64 {
	c := int64(x.estimateCost)
	if o := x.output; o.Tokens > 0 {
		c -= (o.Tokens - o.Min) * o.Price
	}
	return c
}
