package sim

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// headerMap is an ordered, lower-case header map with duplicates, like
// Envoy's HeaderMapImpl; pseudo-headers are kept first.
type headerMap struct {
	h []Header
}

func (m *headerMap) get(name string) (string, bool) { return headerValue(m.h, name) }

func (m *headerMap) has(name string) bool {
	_, ok := m.get(name)
	return ok
}

// set is Envoy's setCopy: the first entry takes the value, later duplicates
// go; a new header is appended (pseudo-headers before regular ones).
func (m *headerMap) set(name, value string) {
	out := m.h[:0]
	found := false
	for _, h := range m.h {
		if h.Name == name {
			if found {
				continue
			}
			found = true
			h.Value = value
		}
		out = append(out, h)
	}
	m.h = out
	if !found {
		m.add(name, value)
	}
}

// add is Envoy's addCopy.
func (m *headerMap) add(name, value string) {
	if strings.HasPrefix(name, ":") {
		i := 0
		for i < len(m.h) && strings.HasPrefix(m.h[i].Name, ":") {
			i++
		}
		m.h = append(m.h, Header{})
		copy(m.h[i+1:], m.h[i:])
		m.h[i] = Header{name, value}
		return
	}
	m.h = append(m.h, Header{name, value})
}

func (m *headerMap) remove(name string) {
	out := m.h[:0]
	for _, h := range m.h {
		if h.Name != name {
			out = append(out, h)
		}
	}
	m.h = out
}

// regular returns the non-pseudo headers.
func (m *headerMap) regular() []Header {
	var out []Header
	for _, h := range m.h {
		if !strings.HasPrefix(h.Name, ":") {
			out = append(out, h)
		}
	}
	return out
}

func (m *headerMap) byteSize() int {
	n := 0
	for _, h := range m.h {
		n += len(h.Name) + len(h.Value)
	}
	return n
}

// proto renders the map as Envoy's MutationUtils::headersToProto does
// (https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/mutation_utils.cc):
// one entry per header, value in raw_value unless the legacy guard is set
// (runtime guard send_header_raw_value, https://github.com/envoyproxy/envoy/blob/main/source/common/runtime/runtime_features.cc).
func (m *headerMap) proto(legacy bool) *corev3.HeaderMap {
	hm := &corev3.HeaderMap{Headers: make([]*corev3.HeaderValue, 0, len(m.h))}
	for _, h := range m.h {
		hv := &corev3.HeaderValue{Key: h.Name}
		if legacy {
			hv.Value = h.Value
		} else {
			hv.RawValue = []byte(h.Value)
		}
		hm.Headers = append(hm.Headers, hv)
	}
	return hm
}

type checkOp int

const (
	opSet checkOp = iota
	opAppend
	opRemove
)

type checkResult int

const (
	checkOK checkResult = iota
	checkIgnore
	checkFail
)

// allowed is Envoy's Checker::isAllowed (https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/common/mutation_rules/mutation_rules.cc),
// configured by HeaderMutationRules (https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/common/mutation_rules/v3/mutation_rules.proto).
func (r *MutationRules) allowed(op checkOp, name string) bool {
	system := strings.HasPrefix(name, ":")
	if op == opRemove && (name == "host" || system) {
		return false // pseudo-headers and host can never be removed
	}
	if op == opAppend && system {
		return false
	}
	if r.DisallowExpression != nil && r.DisallowExpression.MatchString(name) {
		return false
	}
	if r.AllowExpression != nil && r.AllowExpression.MatchString(name) {
		return true
	}
	if r.DisallowAll {
		return false
	}
	switch name {
	case "host", ":authority", ":method", ":scheme":
		return r.AllowAllRouting
	}
	if strings.HasPrefix(name, "x-envoy") {
		return r.AllowEnvoy
	}
	if r.DisallowSystem && system {
		return false
	}
	return true
}

// check is Envoy's Checker::check (https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/common/mutation_rules/mutation_rules.cc):
// a disallowed header is IGNORE (or FAIL
// with disallow_is_error); an invalid value is always FAIL.
func (r *MutationRules) check(op checkOp, name, value string) checkResult {
	if !r.allowed(op, name) {
		if r.DisallowIsError {
			return checkFail
		}
		return checkIgnore
	}
	if op != opRemove && !validValue(name, value) {
		return checkFail
	}
	return checkOK
}

// validValue is Envoy's Checker::isValidValue
// (https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/common/mutation_rules/mutation_rules.cc).
func validValue(name, value string) bool {
	if !validHeaderValue(value) {
		return false
	}
	switch name {
	case "host", ":authority":
		return value != "" && !strings.ContainsAny(value, " /?#@\\")
	case ":scheme":
		return value == "http" || value == "https"
	case ":status":
		n, err := strconv.Atoi(value)
		return err == nil && n >= 200 && n <= 999
	}
	return true
}

// validHeaderValue rejects NUL, CR and LF (HeaderUtility::headerValueIsValid).
func validHeaderValue(v string) bool {
	return !strings.ContainsAny(v, "\x00\r\n")
}

// validHeaderName accepts RFC 9110 tokens, with a leading ':' for
// pseudo-headers.
func validHeaderName(n string) bool {
	n = strings.TrimPrefix(n, ":")
	if n == "" {
		return false
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// mutationOptions are the per-call parameters of applyHeaderMutation.
type mutationOptions struct {
	rules               *MutationRules
	legacy              bool // send_header_raw_value=false: read `value`
	removeContentLength bool // set_headers content-length is skipped (see shouldRemoveContentLength)
	replacing           bool // CONTINUE_AND_REPLACE: :method may change
	maxHeaders, maxKB   int
}

// errMutation marks errors that fail the exchange with status_on_error
// regardless of failure_mode_allow (the error branch of Filter::onReceiveMessage,
// https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/ext_proc.cc).
type errMutation struct{ msg string }

func (e *errMutation) Error() string { return e.msg }

func mutationErr(format string, args ...any) error {
	return &errMutation{fmt.Sprintf(format, args...)}
}

// applyHeaderMutation is Envoy's MutationUtils::applyHeaderMutations
// (https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/mutation_utils.cc):
// size pre-check, all removes, then all sets, then a size post-check. It
// returns how many mutations the rules rejected (ignored).
func applyHeaderMutation(m *headerMap, mut *extprocv3.HeaderMutation, o mutationOptions) (rejected int, err error) {
	if mut == nil {
		return 0, nil
	}
	if len(mut.GetRemoveHeaders()) > o.maxHeaders || len(mut.GetSetHeaders()) > o.maxHeaders {
		return 0, mutationErr("header mutation count exceeds the maximum of %d", o.maxHeaders)
	}
	for _, name := range mut.GetRemoveHeaders() {
		if !validHeaderName(name) {
			return rejected, mutationErr("Invalid character in remove_headers mutation.")
		}
		lname := strings.ToLower(name)
		switch o.rules.check(opRemove, lname, "") {
		case checkOK:
			m.remove(lname)
		case checkIgnore:
			rejected++
		case checkFail:
			return rejected, mutationErr("Invalid attempt to remove %s", lname)
		}
	}
	for _, sh := range mut.GetSetHeaders() {
		hv := sh.GetHeader()
		if hv == nil {
			continue
		}
		lname := strings.ToLower(hv.GetKey())
		if o.removeContentLength && lname == "content-length" {
			continue // silently skipped while content-length is being stripped (shouldRemoveContentLength)
		}
		if hv.GetValue() != "" && len(hv.GetRawValue()) != 0 {
			return rejected, mutationErr("Only one of value or raw_value in the HeaderValue message should be set, may not be both.")
		}
		if !validHeaderName(hv.GetKey()) {
			return rejected, mutationErr("Invalid character in set_headers mutation: %q", hv.GetKey())
		}
		// send_header_raw_value: only raw_value is read, so a value-only
		// mutation sets the header to "" (envoyproxy/envoy#31555).
		value := string(hv.GetRawValue())
		if o.legacy {
			value = hv.GetValue()
		}
		appendHdr := sh.GetAppend().GetValue() // append_action is ignored by ext_proc
		op := opSet
		if appendHdr && m.has(lname) {
			op = opAppend
		}
		res := o.rules.check(op, lname, value)
		if o.replacing && lname == ":method" {
			res = checkOK
		}
		switch res {
		case checkOK:
			if appendHdr {
				m.add(lname, value)
			} else {
				m.set(lname, value)
			}
		case checkIgnore:
			rejected++
		case checkFail:
			return rejected, mutationErr("Invalid attempt to modify HTTP header: %s", lname)
		}
	}
	if len(m.h) > o.maxHeaders || m.byteSize() > o.maxKB*1024 {
		return rejected, mutationErr("header map exceeds limits after mutation")
	}
	return rejected, nil
}

// bodyMutation returns the new bytes for a BodyMutation
// (https://www.envoyproxy.io/docs/envoy/latest/api-v3/service/ext_proc/v3/external_processor.proto;
// MutationUtils::applyBodyMutations in https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/mutation_utils.cc):
// body replaces, clear_body drains; ok is false when the mutation changes
// nothing.
func bodyMutation(bm *extprocv3.BodyMutation) (b []byte, ok bool) {
	switch m := bm.GetMutation().(type) {
	case *extprocv3.BodyMutation_Body:
		return m.Body, true
	case *extprocv3.BodyMutation_ClearBody:
		if m.ClearBody {
			return nil, true
		}
	}
	return nil, false
}

// attributeValue converts an attribute the way Envoy's CEL value conversion
// does (ExpressionManager::evaluateAttributes in https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/matching_utils.cc):
// bool stays bool, integers become numbers, everything else is printed to a
// string.
func attributeValue(v any) (*structpb.Value, bool) {
	switch t := v.(type) {
	case nil:
		return nil, false
	case bool:
		return structpb.NewBoolValue(t), true
	case int:
		return structpb.NewNumberValue(float64(t)), true
	case int32:
		return structpb.NewNumberValue(float64(t)), true
	case int64:
		return structpb.NewNumberValue(float64(t)), true
	case uint:
		return structpb.NewNumberValue(float64(t)), true
	case uint32:
		return structpb.NewNumberValue(float64(t)), true
	case uint64:
		return structpb.NewNumberValue(float64(t)), true
	case string:
		return structpb.NewStringValue(t), true
	case []byte:
		return structpb.NewStringValue(string(t)), true
	case fmt.Stringer:
		return structpb.NewStringValue(t.String()), true
	}
	return structpb.NewStringValue(fmt.Sprint(v)), true
}

// mergeMetadata applies ProcessingResponse.dynamic_metadata
// (https://www.envoyproxy.io/docs/envoy/latest/api-v3/service/ext_proc/v3/external_processor.proto;
// Filter::setDynamicMetadata in https://github.com/envoyproxy/envoy/blob/main/source/extensions/filters/http/ext_proc/ext_proc.cc):
// each top-level key is a namespace, written only when listed in receiving
// (metadata_options.receiving_namespaces, https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/ext_proc/v3/ext_proc.proto), and
// merged with proto MergeFrom semantics (new keys override). It returns the
// namespaces that were dropped.
func mergeMetadata(dst *structpb.Struct, md *structpb.Struct, receiving []string) (dropped []string) {
	for ns, v := range md.GetFields() {
		if !contains(receiving, ns) {
			dropped = append(dropped, ns)
			continue
		}
		src := v.GetStructValue() // a non-struct value merges as empty
		cur := dst.Fields[ns].GetStructValue()
		if cur == nil {
			cur = &structpb.Struct{Fields: map[string]*structpb.Value{}}
		}
		// MergeFrom on a map field replaces each entry whose key the source
		// has; the values are the decoded answer's own and nothing writes to
		// them after, so they are shared rather than cloned (proto.Merge's
		// deep copy was about a quarter of what a metered answer cost this
		// side over the floor's, in BenchmarkExchange's profile).
		for k, v := range src.GetFields() {
			cur.Fields[k] = v
		}
		dst.Fields[ns] = structpb.NewStructValue(cur)
	}
	return dropped
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func cloneStruct(s *structpb.Struct) *structpb.Struct {
	if s == nil {
		return &structpb.Struct{Fields: map[string]*structpb.Value{}}
	}
	return proto.Clone(s).(*structpb.Struct)
}

// detailsString is what sendImmediateResponse does to details: whitespace
// becomes '_'.
func detailsString(s string) string {
	return strings.Map(func(r rune) rune {
		switch r {
		case ' ', '\t', '\n', '\r', '\v', '\f':
			return '_'
		}
		return r
	}, s)
}

var errSpurious = errors.New("spurious message")
