package gate

import (
	"strings"

	"github.com/tokenwarden/tokenwarden/extproc/contract"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
	"github.com/tokenwarden/tokenwarden/extproc/policy"
)

// identify sets the exchange's caller and tenant from the configured
// identity sources, first that yields a caller wins. It returns the refusal
// to give instead, for a governed request, when the caller is unknown or not
// allowed without configuration; the refusal is built later, once the
// dialect is known.
func (x *Exchange) identify(h Headers, env Envoy) (refusal func() *Reply) {
	id := &x.cfg.Identity
	for i := range id.Sources {
		if c := callerFrom(&id.Sources[i], h, env); !c.Empty() {
			x.caller = c
			break
		}
	}
	tenant := x.caller.Tenant()
	switch {
	case tenant == "" && id.Unknown.Default != "":
		x.tenant = id.Unknown.Default
	case tenant == "":
		return func() *Reply {
			return x.refuseCaller(401, wire.ErrorUnauthenticated, "tokenwarden: the caller could not be identified from what the mesh authenticated")
		}
	case x.cfg.ConfiguredCaller(x.caller) || id.Unconfigured == policy.UnconfiguredOwn:
		x.tenant = tenant
	case id.Unconfigured == policy.UnconfiguredDeny:
		x.g.obs.Unconfigured(UnconfiguredCaller)
		return func() *Reply {
			return x.refuseCaller(403, wire.ErrorForbidden, "tokenwarden: this caller is not configured")
		}
	default:
		x.g.obs.Unconfigured(UnconfiguredCaller)
		x.tenant = id.Bucket(tenant)
	}
	return nil
}

// refuseCaller answers a governed request whose caller may not go on.
// Nothing is reserved and no state is kept for the caller.
func (x *Exchange) refuseCaller(code int, kind wire.ErrorKind, msg string) *Reply {
	x.decisionTag = "denied_identity"
	h := HeaderEdits{}
	h.set(contract.DeniedHeader, "identity")
	h.set("x-should-retry", "false")
	return x.reject(code, kind, "identity", msg, ResultDenied, &h)
}

// callerFrom reads one source.
func callerFrom(src *policy.IdentitySource, h Headers, env Envoy) policy.Caller {
	var c policy.Caller
	switch src.Kind {
	case policy.SourceMetadata:
		if env == nil {
			return c
		}
		for lvl := range src.Fields {
			path := src.FieldPath(policy.Level(lvl))
			if path == nil {
				continue
			}
			if v, ok := env.Metadata(src.Namespace, path...); ok && v != "" {
				c[lvl] = policy.IdentityName(v)
			}
		}
	case policy.SourcePeer:
		if env == nil {
			return c
		}
		if v, ok := env.Attribute(src.Attribute); ok && v != "" {
			c = peerCaller(v)
		}
	case policy.SourceAPIKey:
		if v, _ := h.Get(src.Header); strings.TrimSpace(v) != "" {
			c[policy.LevelKey] = policy.Fingerprint(v)
		}
	case policy.SourceHeader:
		if v, _ := h.Get(src.Header); strings.TrimSpace(v) != "" {
			c[src.Level] = policy.IdentityName(strings.TrimSpace(v))
		}
	}
	return c
}

// peerCaller reads a peer certificate's identity. An Istio workload's
// SPIFFE ID, spiffe://<trust domain>/ns/<namespace>/sa/<service account>,
// gives the namespace as team and "<namespace>.<service account>" as user
// (service account names repeat across namespaces, "default" above all);
// any other value is the user.
func peerCaller(v string) policy.Caller {
	var c policy.Caller
	if rest, ok := strings.CutPrefix(v, "spiffe://"); ok {
		parts := strings.Split(rest, "/")
		if len(parts) == 5 && parts[1] == "ns" && parts[3] == "sa" && parts[2] != "" && parts[4] != "" {
			c[policy.LevelTeam] = policy.IdentityName(parts[2])
			c[policy.LevelUser] = policy.IdentityName(parts[2] + "." + parts[4])
			return c
		}
	}
	c[policy.LevelUser] = policy.IdentityName(v)
	return c
}
