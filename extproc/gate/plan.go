package gate

import (
	"fmt"
	"path"
	"strconv"
	"time"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/contract"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
)

// Body plans and admits the whole request body: one parse, the model rules,
// every edit applied in one copy, then one admission round trip. Only the
// first body of an exchange is read; a repeated one (Envoy has been seen to
// send a final body twice) changes nothing.
func (x *Exchange) Body(body []byte) BodyVerdict {
	if x.phase != phaseBody {
		return BodyVerdict{Body: body}
	}
	if x.oa.kind != oaNone {
		return x.openaiBatchBody(body)
	}
	if x.batch {
		return x.batchBody(body)
	}
	req, err := x.dialect.Parse(body)
	if err != nil {
		return BodyVerdict{Reply: x.refuse(err)}
	}
	x.req = req
	x.requestedModel = req.Model

	model, reason, err := x.resolveModel(req.Model)
	if err != nil {
		return BodyVerdict{Reply: x.refuse(err)}
	}
	x.model, x.rewriteReason = model, reason
	var canonical string
	var known bool
	x.pricedAt = x.g.opts.Now()
	x.price, canonical, known = x.cfg.Prices.Lookup(model, x.pricedAt)
	x.modelLabel = policy.OtherLabel
	if known {
		x.modelLabel = canonical
	} else {
		x.unpriced = true
		x.g.obs.Unconfigured(UnconfiguredModel)
		if x.g.unpriced.add(model) {
			x.g.log.Warn("model has no price; charged at the fallback price", "model", model, "policy", x.policy.Name)
		}
	}

	// The input estimate, calibrated by what this org's settles of the model
	// measured (calibrate.go). The size tiers above judged the raw estimate:
	// the factor is the resolved model's, known only after them.
	x.rawInput = x.req.InputTokens
	x.reserve(body, calibrated(x.req.InputTokens, x.g.calib.factor(x.tenant, x.modelLabel)))

	newBody, changed, newPath, reply := x.edit(body)
	if reply != nil {
		return BodyVerdict{Reply: reply}
	}
	if reason != "" {
		x.g.obs.ModelRewrite(x.policy.Name, reason)
	}
	if x.req.HasPrefix && x.g.prefixes.observe(x.policy.Name, x.tenant, x.req.PrefixFingerprint) {
		x.g.obs.PrefixChange(x.policy.Name)
	}

	if reply := x.lookup(newBody, newPath); reply != nil {
		return BodyVerdict{Reply: reply}
	}
	x.q.pend = pendingBody{body: body, out: newBody, changed: changed, path: newPath}
	return x.admitOrWait()
}

// attempt is one try at admission: the upstream's own state, then the
// store. wait reports a denial that capacity will cure within the lane's
// wait (x.retryIn > 0): nothing is answered or recorded, and the request
// may wait in the queue (queue.go).
func (x *Exchange) attempt() (v BodyVerdict, wait bool) {
	x.retryIn, x.q.held, x.decisionTag = 0, nil, ""
	x.q.deciding = true
	defer func() { x.q.deciding = false }()
	if reply := x.upstreamGate(); reply != nil {
		return x.decided(reply)
	}
	if reply := x.paceGate(); reply != nil {
		return x.decided(reply)
	}
	x.phase = phaseForwarded
	p := &x.q.pend
	if x.enforces() {
		if reply := x.admit(); reply != nil {
			return x.decided(reply)
		}
		if x.output.Tokens > 0 && x.decision.OutputTokens < x.output.Tokens {
			var reply *Reply
			if p.out, p.path, reply = x.clamp(p.body); reply != nil {
				return BodyVerdict{Reply: reply}, false
			}
			p.changed = true
		}
	} else {
		x.decisionTag = "allowed"
	}
	return x.forward(), false
}

// decided turns a denial into the verdict, or into a wait when reject kept
// it for the end of one.
func (x *Exchange) decided(reply *Reply) (BodyVerdict, bool) {
	if x.q.held != nil && x.q.held.reply == reply {
		x.phase = phaseBody
		return BodyVerdict{}, true
	}
	return BodyVerdict{Reply: reply}, false
}

// forward is the admitted request's verdict: its body and the header
// changes that go with it.
func (x *Exchange) forward() BodyVerdict {
	p := x.q.pend
	x.q.pend = pendingBody{} // the queue no longer holds it
	x.forwardedAt = x.g.opts.Now()
	v := BodyVerdict{Body: p.out, BodyChanged: p.changed}
	if p.changed {
		// A buffered body keeps its content-length, and Envoy refuses a body
		// whose length differs from it (ext_proc BodySendMode BUFFERED:
		// https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/ext_proc/v3/processing_mode.proto).
		v.Edits.set("content-length", strconv.Itoa(len(p.out)))
	}
	if p.path != "" {
		// The model is in the path (Gemini): Envoy still holds the request
		// headers while it waits for a buffered body's answer, so :path may
		// change here, and the route is picked again with it.
		v.Edits.set(":path", p.path)
	}
	// The resolved model, always, so envoy.yaml can route by model whether or
	// not tokenwarden rewrote it; the route is picked again with it.
	v.Edits.set(contract.ModelHeader, x.model)
	if x.req.Stream && x.newRewriter() != nil {
		// The client will receive this stream decoded and rewritten
		// whatever coding the provider uses, so the provider is asked for
		// none: nothing to decode, for the same bytes to the client. A
		// provider that ignores it is decoded (respCoding). Envoy applies
		// this only while it still holds the request headers (a BUFFERED
		// body), which is tokenwarden's configuration.
		v.Edits.set("accept-encoding", "identity")
	}
	return v
}

// edit applies every change the policy asks for — the model rewrite, what
// the dialect needs (usage on OpenAI streams), prompt-cache breakpoints —
// in one copy of the body. path is the request's new :path when the model
// rewrite is made there (Gemini), else "".
func (x *Exchange) edit(body []byte) (out []byte, changed bool, path string, reply *Reply) {
	var e wire.EditRequest
	if x.model != x.req.Model {
		e.Model = x.model
	}
	e.OutputLimit = x.clamped
	if pc := x.policy.PromptCache; pc.Inject {
		e.Cache = &wire.CacheRequest{TTL: pc.TTL, MinTokens: accounting.MinCacheTokens(x.model)}
	}
	var edits wire.Edits
	rep, err := x.dialect.Edit(body, &x.req, e, &edits)
	if err != nil && e.Cache != nil {
		// The body already parsed; a failure to place breakpoints is
		// tokenwarden's, and the request is better sent without them than
		// refused.
		x.g.log.Error("prompt-cache injection failed; forwarding without it", "policy", x.policy.Name, "err", err)
		e.Cache = nil
		edits = wire.Edits{}
		rep, err = x.dialect.Edit(body, &x.req, e, &edits)
	}
	if err != nil {
		return nil, false, "", x.refuse(err)
	}
	x.coding.edits = rep
	if edits.Len() == 0 {
		return body, false, rep.Path, nil
	}
	out, err = wire.Apply(body, &edits)
	if err != nil {
		x.g.log.Error("request edits could not be applied", "policy", x.policy.Name, "err", err)
		return nil, false, "", x.reject(500, wire.ErrorInternal, "", "tokenwarden: the request could not be prepared", ResultStoreError, nil)
	}
	return out, true, rep.Path, nil
}

// refuse answers a request tokenwarden will not forward as sent: a 400 in
// the dialect, naming what is wrong.
func (x *Exchange) refuse(err error) *Reply {
	return x.reject(400, wire.ErrorInvalidRequest, "", "tokenwarden: "+err.Error(), ResultInvalidRequest, nil)
}

// unsupportedEncoding refuses, at its headers, a request whose body is
// compressed: tokenwarden reads every body it admits, and neither provider
// documents compressed request bodies, so it is a 415 in the dialect with
// accept-encoding naming what would be accepted
// (https://www.rfc-editor.org/rfc/rfc9110#section-15.5.16). Nothing was
// reserved, nothing is charged.
func (x *Exchange) unsupportedEncoding(coding string) *Reply {
	if len(coding) > 32 {
		coding = coding[:32]
	}
	var h HeaderEdits
	h.set("accept-encoding", "identity")
	return x.reject(415, wire.ErrorMediaType, "",
		"tokenwarden: the request body must not be compressed (content-encoding "+strconv.Quote(coding)+"); send it uncompressed",
		ResultInvalidRequest, &h)
}

// BodyTooLarge ends a request whose body, assembled from chunks, exceeds
// MaxRequestBody.
func (x *Exchange) BodyTooLarge() *Reply {
	if x.phase != phaseBody {
		return nil
	}
	return x.reject(413, wire.ErrorInvalidRequest, "", "tokenwarden: request body too large", ResultInvalidRequest, nil)
}

// Unsupported ends a request the gate cannot forward as the filter is
// configured, with a 500 in the dialect naming why.
func (x *Exchange) Unsupported(why string) *Reply {
	if x.phase != phaseBody {
		return nil
	}
	return x.reject(500, wire.ErrorInternal, "", "tokenwarden: "+why, ResultInvalidRequest, nil)
}

// resolveModel applies the policy's model rules: alias, size tiers, the
// allow list, then graduated downgrade by budget use. reason is "" when the
// model is the one the client asked for.
func (x *Exchange) resolveModel(requested string) (model, reason string, err error) {
	mp := &x.policy.Models
	model = requested
	if to, ok := mp.Aliases[requested]; ok {
		model, reason = to, "alias"
	}
	for _, t := range mp.Tiers {
		if t.From != "" {
			if ok, _ := path.Match(t.From, model); !ok {
				continue
			}
		}
		in := x.req.InputTokens
		if t.MinInputTokens > 0 && in < t.MinInputTokens || t.MaxInputTokens > 0 && in > t.MaxInputTokens {
			continue
		}
		if t.MaxOutput > 0 && x.req.MaxTokens > t.MaxOutput {
			continue
		}
		if t.Tools != nil && *t.Tools != x.req.HasTools {
			continue
		}
		if t.Model != model {
			model, reason = t.Model, "tier"
		}
		break
	}
	// The allow list judges what the client would get — after its alias and
	// size tier, which are the operator's own choices — but before a budget
	// downgrade, which is the operator's too and may leave the list.
	if !mp.Allowed(model) {
		return "", "", fmt.Errorf("model %q is not allowed by policy %q", requested, x.policy.Name)
	}
	now := x.g.opts.Now()
	for _, d := range mp.Downgrade { // highest threshold first
		if ok, _ := path.Match(d.From, model); !ok {
			continue
		}
		key, ok := x.downgradeLevel(d)
		if ok && x.g.budgets.ratio(x.tenant, key, d.Window, now) >= d.WhenBudgetUsed {
			model, reason = d.To, "downgrade"
			break
		}
	}
	return model, reason, nil
}

// downgradeLevel is the key of the level whose use a downgrade rule reads,
// among the levels this exchange is admitted against.
func (x *Exchange) downgradeLevel(d policy.Downgrade) (key string, ok bool) {
	return downgradeKey(x.admittedLevels(), d)
}

// admittedLevels are the levels the admission counts this request against,
// as policy.Resolve describes them, org first and the caller's own last: a
// caller outside orgs: is x.tenant as a one-level org.
func (x *Exchange) admittedLevels() []policy.ResolvedLevel {
	if len(x.levels) > 0 {
		return x.levels
	}
	return []policy.ResolvedLevel{{Level: policy.LevelOrg, Name: x.tenant}}
}

// downgradeKey is the key of the level of levels a downgrade rule reads:
// the level it names, else the caller's own (the last); ok is false when
// the caller has no such level — a team rule never downgrades a caller in
// no team.
func downgradeKey(levels []policy.ResolvedLevel, d policy.Downgrade) (key string, ok bool) {
	if len(levels) == 0 {
		return "", false
	}
	if !d.HasLevel {
		return levels[len(levels)-1].Key, true
	}
	for _, l := range levels {
		if l.Level == d.Level {
			return l.Key, true
		}
	}
	return "", false
}

// since is the time from forwarding to now; zero when never forwarded.
func (x *Exchange) since() time.Duration {
	if x.forwardedAt.IsZero() {
		return 0
	}
	return x.g.opts.Now().Sub(x.forwardedAt)
}
