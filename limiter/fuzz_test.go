package limiter

import (
	"strings"
	"testing"
)

// unescapeTag inverts tagEscaper, to prove the tenant mapping one-to-one.
var unescapeTag = strings.NewReplacer("%25", "%", "%7B", "{", "%7D", "}")

func FuzzTenantPrefix(f *testing.F) {
	for _, s := range []string{"acme", "", "{", "}", "a{b}c", "%7B", "%", "{}{}", "tw:{x}:", "ü{"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, tenant string) {
		p := tenantPrefix(tenant)
		if !strings.HasPrefix(p, "tw:{") || !strings.HasSuffix(p, "}:") {
			t.Fatalf("prefix %q", p)
		}
		tag := p[len("tw:{") : len(p)-len("}:")]
		// Redis hashes the text between the first { and the next }: it must
		// be exactly the escaped tenant, so a tenant's keys share one slot.
		if strings.ContainsAny(tag, "{}") {
			t.Fatalf("tag %q of %q contains a brace", tag, tenant)
		}
		if back := unescapeTag.Replace(tag); back != tenant {
			t.Fatalf("tag %q decodes to %q, not %q", tag, back, tenant)
		}
	})
}

// replyFrom decodes fuzz bytes into a script-reply-shaped value: arrays,
// integers and strings, so the reply parsers meet every shape.
func replyFrom(data []byte) any {
	v, _ := decodeReply(data, 0)
	return v
}

func decodeReply(data []byte, depth int) (any, []byte) {
	if len(data) == 0 {
		return int64(0), nil
	}
	op, data := data[0], data[1:]
	switch {
	case op%3 == 0 && depth < 4:
		n := int(op/3) % 8
		out := make([]any, 0, n)
		for range n {
			var v any
			v, data = decodeReply(data, depth+1)
			out = append(out, v)
		}
		return out, data
	case op%3 == 1:
		return int64(op) - 100, data
	default:
		n := min(int(op%7), len(data))
		return string(data[:n]), data[n:]
	}
}

func FuzzParseReplies(f *testing.F) {
	f.Add([]byte{21, 1, 4, 1, 1, 0, 0, 0})
	f.Add([]byte{15, 1, 4, 0, 0, 0})
	f.Add([]byte{21, 1, 1, 1, 1, 9, 3, 1, 1, 1, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		v := replyFrom(data)
		_, _ = parseSettle(v) // must not panic on any shape
		o, err := parseAdmit(v, 1)
		if err != nil || o.code == codeDuplicate {
			return
		}
		if len(o.budgets) != 1 || o.budgets[0].window < 0 || o.budgets[0].window > 2 {
			t.Fatalf("parseAdmit accepted budgets %+v from %v", o.budgets, v)
		}
		// Building a Decision never panics, and rejects unknown codes.
		req := AdmitRequest{Tenant: "t", RequestID: "r", Budgets: []Budget{{Name: "day"}}}
		_, err = o.decision(&req)
		if known := o.code >= codeAllowed && o.code <= codeBudget0; known != (err == nil) {
			t.Fatalf("code %d: decision error %v", o.code, err)
		}
	})
}
