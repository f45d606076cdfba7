package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
)

// Identity says who a caller is, from what the mesh authenticated. A
// request's caller comes from the first source that yields one; a client
// can only influence it through a value the mesh verified (a signed token, a
// certificate) or a header the operator declared trusted because the mesh
// sets it and strips client copies.
type Identity struct {
	Sources []IdentitySource
	// Unknown is what an unidentified caller gets.
	Unknown UnknownCaller
	// Unconfigured is what an identified caller not named under tenants:
	// gets; UnconfiguredBuckets bounds their state in UnconfiguredBuckets mode.
	Unconfigured        UnconfiguredMode
	UnconfiguredBuckets int
	// Lane, when its Field is set, is a claim of verified metadata naming
	// the caller's lane (a jwt_authn payload claim, an ext_authz answer),
	// used when the route names none.
	Lane LaneClaim
}

// LaneClaim locates a lane in Envoy dynamic metadata:
// filter_metadata[Namespace][Key][Field...] (Field a dot path).
type LaneClaim struct {
	Namespace, Key, Field string
	// path is Key and Field's parts, split once when compiled.
	path []string
}

// Path is the claim's path inside its namespace: Key (when set), then
// Field's dot-separated parts. Read on every request without a route lane,
// so it is split when the configuration is compiled; the slice is shared,
// read-only.
func (c *LaneClaim) Path() []string {
	if c.path == nil && c.Field != "" {
		return metadataPath(c.Key, c.Field)
	}
	return c.path
}

// metadataPath is key (when set) followed by field's dot-separated parts.
func metadataPath(key, field string) []string {
	parts := strings.Split(field, ".")
	if key == "" {
		return parts
	}
	return append([]string{key}, parts...)
}

// Level is one level of a caller's hierarchy, most general first.
type Level uint8

const (
	LevelOrg Level = iota
	LevelTeam
	LevelUser
	LevelKey
	levels
)

var levelNames = [levels]string{"org", "team", "user", "key"}

func (l Level) String() string {
	if l < levels {
		return levelNames[l]
	}
	return "level(" + strconv.Itoa(int(l)) + ")"
}

// SourceKind is where an identity comes from.
type SourceKind uint8

const (
	// SourceMetadata reads fields of Envoy dynamic metadata an earlier filter
	// wrote: jwt_authn's verified token payload, ext_authz's answer. It
	// reaches the processor only through the ext_proc filter's
	// metadata_options.forwarding_namespaces.
	SourceMetadata SourceKind = iota
	// SourcePeer reads the mTLS peer certificate Envoy verified, through a
	// request attribute (connection.uri_san_peer_certificate).
	SourcePeer
	// SourceAPIKey fingerprints the API key in a header: the caller is
	// "key-<16 hex of its SHA-256>"; the key is never kept.
	SourceAPIKey
	// SourceHeader reads a header the operator declared trusted.
	SourceHeader
)

// IdentitySource is one place a caller can come from.
type IdentitySource struct {
	Kind SourceKind
	// Namespace and Key locate the metadata (SourceMetadata): the fields
	// are read from filter_metadata[Namespace][Key] (Key empty: the
	// namespace itself).
	Namespace, Key string
	// Fields name, per level, the metadata field (a dot path for nested
	// claims) that holds it; "" leaves the level unset.
	Fields [levels]string
	// paths are Key and each field's parts (FieldPath), split once when
	// compiled rather than on every request.
	paths [levels][]string
	// Attribute is the request attribute of the peer identity (SourcePeer).
	Attribute string
	// Header is the header read (SourceAPIKey, SourceHeader), lower case.
	Header string
	// Level is the level a header's value gives (SourceHeader).
	Level Level
}

// FieldPath is the metadata path of level lvl's field inside Namespace:
// Key (when set), then the field's dot-separated parts; nil when the level
// has no field. The slice is shared, read-only.
func (s *IdentitySource) FieldPath(lvl Level) []string {
	if s.Fields[lvl] == "" {
		return nil
	}
	if p := s.paths[lvl]; p != nil {
		return p
	}
	return metadataPath(s.Key, s.Fields[lvl])
}

// UnknownCaller is the answer to a request no source identifies.
type UnknownCaller struct {
	// Default, when not empty, is the caller such requests are charged to;
	// otherwise they are refused with 401.
	Default string
}

// UnconfiguredMode is what an identified caller that the configuration
// does not name gets.
type UnconfiguredMode uint8

const (
	// UnconfiguredBuckets charges unconfigured callers to one of a fixed
	// number of shared buckets by a hash of their identity: each keeps the
	// default policy's limits among few others, and however many identities
	// appear (a client inventing API keys), state stays bounded.
	UnconfiguredBuckets UnconfiguredMode = iota
	// UnconfiguredOwn gives every identified caller its own state. Only for
	// identity sources whose issuer bounds the callers (the mesh's
	// certificates, the company's identity provider).
	UnconfiguredOwn
	// UnconfiguredDeny refuses callers the configuration does not name.
	UnconfiguredDeny
)

// DefaultUnconfiguredBuckets is identity.unconfigured_buckets when unset.
const DefaultUnconfiguredBuckets = 64

// MaxIdentitySources bounds identity.from.
const MaxIdentitySources = 8

// Default metadata namespaces: where Envoy's jwt_authn and ext_authz
// filters write, and the key under which Istio's RequestAuthentication has
// jwt_authn put the verified payload
// (payload_in_metadata: https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/jwt_authn/v3/config.proto).
const (
	JWTNamespace      = "envoy.filters.http.jwt_authn"
	JWTPayloadKey     = "payload"
	ExtAuthzNamespace = "envoy.filters.http.ext_authz"
	// PeerAttribute is the first URI SAN of the downstream peer certificate
	// (https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/advanced/attributes).
	PeerAttribute = "connection.uri_san_peer_certificate"
)

type identityFile struct {
	From                []identitySourceFile `json:"from"`
	Unknown             string               `json:"unknown"`
	Unconfigured        string               `json:"unconfigured"`
	UnconfiguredBuckets *int                 `json:"unconfigured_buckets"`
	Lane                *laneClaimFile       `json:"lane"`
}

// laneClaimFile is identity.lane: a verified claim naming the lane.
type laneClaimFile struct {
	Namespace string  `json:"namespace"`
	Key       *string `json:"key"`
	Claim     string  `json:"claim"`
}

type identitySourceFile struct {
	JWT      *metadataSourceFile `json:"jwt"`
	ExtAuthz *metadataSourceFile `json:"ext_authz"`
	Peer     *peerSourceFile     `json:"peer"`
	APIKeyOf string              `json:"api_key_of"`
	Header   string              `json:"header"`
	Trusted  bool                `json:"trusted"`
	Level    string              `json:"level"`
}

type metadataSourceFile struct {
	Namespace string `json:"namespace"`
	Key       string `json:"key"`
	Org       string `json:"org"`
	Team      string `json:"team"`
	User      string `json:"user"`
	APIKey    string `json:"key_id"`
}

type peerSourceFile struct {
	Attribute string `json:"attribute"`
}

func compileIdentity(f identityFile) (Identity, error) {
	out := Identity{UnconfiguredBuckets: DefaultUnconfiguredBuckets}
	if len(f.From) == 0 {
		return out, fmt.Errorf("identity.from: name at least one source (jwt, ext_authz, peer, api_key_of, or a trusted header)")
	}
	if len(f.From) > MaxIdentitySources {
		return out, fmt.Errorf("identity.from: %d sources; at most %d", len(f.From), MaxIdentitySources)
	}
	if l := f.Lane; l != nil {
		if l.Claim == "" {
			return out, fmt.Errorf("identity.lane.claim: name the claim that holds the lane")
		}
		out.Lane = LaneClaim{Namespace: l.Namespace, Key: JWTPayloadKey, Field: l.Claim}
		if out.Lane.Namespace == "" {
			out.Lane.Namespace = JWTNamespace
		}
		if l.Key != nil {
			out.Lane.Key = *l.Key
		}
		out.Lane.path = metadataPath(out.Lane.Key, out.Lane.Field)
	}
	for i, s := range f.From {
		src, err := compileSource(fmt.Sprintf("identity.from[%d]", i), s)
		if err != nil {
			return out, err
		}
		out.Sources = append(out.Sources, src)
	}
	switch u := f.Unknown; {
	case u == "" || u == "deny":
	case strings.HasPrefix(u, "default:"):
		name := strings.TrimPrefix(u, "default:")
		if !validName(name) {
			return out, fmt.Errorf("identity.unknown: default caller %q must be 1-64 letters, digits, '.', '_' or '-'", name)
		}
		out.Unknown.Default = name
	default:
		return out, fmt.Errorf("identity.unknown: %q is not deny or default:<name>", u)
	}
	switch f.Unconfigured {
	case "", "buckets":
		out.Unconfigured = UnconfiguredBuckets
	case "own":
		out.Unconfigured = UnconfiguredOwn
	case "deny":
		out.Unconfigured = UnconfiguredDeny
	default:
		return out, fmt.Errorf("identity.unconfigured: %q is not buckets, own or deny", f.Unconfigured)
	}
	if b := f.UnconfiguredBuckets; b != nil {
		if *b < 1 || *b > 65536 {
			return out, fmt.Errorf("identity.unconfigured_buckets: %d must be between 1 and 65536", *b)
		}
		out.UnconfiguredBuckets = *b
	}
	return out, nil
}

func compileSource(at string, s identitySourceFile) (IdentitySource, error) {
	kinds := 0
	for _, set := range []bool{s.JWT != nil, s.ExtAuthz != nil, s.Peer != nil, s.APIKeyOf != "", s.Header != ""} {
		if set {
			kinds++
		}
	}
	if kinds != 1 {
		return IdentitySource{}, fmt.Errorf("%s: set exactly one of jwt, ext_authz, peer, api_key_of, header", at)
	}
	if (s.Trusted || s.Level != "") && s.Header == "" {
		return IdentitySource{}, fmt.Errorf("%s: trusted and level apply to a header source only", at)
	}
	switch {
	case s.JWT != nil:
		return compileMetadataSource(at+".jwt", *s.JWT, JWTNamespace, JWTPayloadKey)
	case s.ExtAuthz != nil:
		return compileMetadataSource(at+".ext_authz", *s.ExtAuthz, ExtAuthzNamespace, "")
	case s.Peer != nil:
		attr := s.Peer.Attribute
		if attr == "" {
			attr = PeerAttribute
		}
		return IdentitySource{Kind: SourcePeer, Attribute: attr}, nil
	case s.APIKeyOf != "":
		return IdentitySource{Kind: SourceAPIKey, Header: strings.ToLower(s.APIKeyOf)}, nil
	}
	if !s.Trusted {
		return IdentitySource{}, fmt.Errorf("%s.header: %q is a value any client can send, so it cannot say who the caller is; "+
			"declare it trusted: true only where the mesh sets it and removes client copies before ext_proc runs "+
			"(an early_header_mutation or jwt_authn claim_to_headers), or use a jwt, ext_authz or peer source", at, s.Header)
	}
	lvl := LevelOrg
	if s.Level != "" {
		var ok bool
		if lvl, ok = parseLevel(s.Level); !ok {
			return IdentitySource{}, fmt.Errorf("%s.level: %q is not org, team, user or key", at, s.Level)
		}
	}
	return IdentitySource{Kind: SourceHeader, Header: strings.ToLower(s.Header), Level: lvl}, nil
}

func compileMetadataSource(at string, m metadataSourceFile, namespace, key string) (IdentitySource, error) {
	src := IdentitySource{Kind: SourceMetadata, Namespace: namespace, Key: key}
	if m.Namespace != "" {
		src.Namespace = m.Namespace
	}
	if m.Key != "" {
		src.Key = m.Key
	}
	src.Fields = [levels]string{m.Org, m.Team, m.User, m.APIKey}
	if src.Fields == [levels]string{} {
		return src, fmt.Errorf("%s: map at least one of org, team, user, key_id to a field", at)
	}
	for lvl, f := range src.Fields {
		if f != "" {
			src.paths[lvl] = metadataPath(src.Key, f)
		}
	}
	return src, nil
}

func parseLevel(s string) (Level, bool) {
	for l, n := range levelNames {
		if n == s {
			return Level(l), true
		}
	}
	return 0, false
}

// Caller is who is calling, by level; empty levels are unknown.
type Caller [levels]string

// Empty reports whether no level is known.
func (c Caller) Empty() bool { return c == Caller{} }

// Tenant is the caller's most specific known level: what limits and
// budgets are kept for.
func (c Caller) Tenant() string {
	for l := levels - 1; ; l-- {
		if c[l] != "" {
			return c[l]
		}
		if l == 0 {
			return ""
		}
	}
}

// Fingerprint names the caller behind an API key without keeping the key:
// "key-" and the first 16 hex digits of its SHA-256. A "Bearer " prefix is
// ignored so authorization and x-api-key yield the same caller for one key.
func Fingerprint(apiKey string) string {
	apiKey = strings.TrimSpace(apiKey)
	if len(apiKey) > 7 && strings.EqualFold(apiKey[:7], "bearer ") {
		apiKey = strings.TrimSpace(apiKey[7:])
	}
	sum := sha256.Sum256([]byte(apiKey))
	return "key-" + hex.EncodeToString(sum[:8])
}

// IdentityName turns an identity value (a claim, a header) into a name that
// is safe in store keys, metrics and logs: a plain name is kept (e-mail
// addresses too), anything else becomes "id-" and 16 hex digits of its
// SHA-256, so the same value always maps to the same caller.
func IdentityName(v string) string {
	if validIdentity(v) {
		return v
	}
	sum := sha256.Sum256([]byte(v))
	return "id-" + hex.EncodeToString(sum[:8])
}

func validIdentity(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-' || c == '@' || c == '+') {
			return false
		}
	}
	return true
}

// Bucket is the shared tenant an unconfigured caller is charged to in
// UnconfiguredBuckets mode.
func (id *Identity) Bucket(tenant string) string {
	sum := sha256.Sum256([]byte(tenant))
	n := (uint64(sum[0])<<24 | uint64(sum[1])<<16 | uint64(sum[2])<<8 | uint64(sum[3])) % uint64(max(id.UnconfiguredBuckets, 1))
	return "unconfigured-" + strconv.FormatUint(n, 10)
}
