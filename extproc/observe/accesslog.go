package observe

import "github.com/tokenwarden/tokenwarden/extproc/gate"

// AccessLog is the dynamic metadata tokenwarden writes for a request, read
// by access logs as %DYNAMIC_METADATA(tokenwarden:<key>)%. Values are
// strings and float64 numbers only, so any encoder can carry them.
//
// A request answered locally carries who, under which policy, which model
// and the decision; a metered one adds its tokens per class, its cost and
// where the usage came from (measured, estimated, or missing from the
// provider's answer).
func AccessLog(o *gate.Outcome) map[string]any {
	if o == nil {
		return nil
	}
	var buf [MaxAccessLogFields]AccessLogField
	fields := AppendAccessLog(buf[:0], o)
	f := make(map[string]any, len(fields))
	for _, fl := range fields {
		if fl.Number {
			f[fl.Key] = fl.Num
		} else {
			f[fl.Key] = fl.Str
		}
	}
	return f
}

// AccessLogField is one access-log field: a string, or a number when
// Number is set.
type AccessLogField struct {
	Key    string
	Str    string
	Num    float64
	Number bool
}

// MaxAccessLogFields bounds what AppendAccessLog appends for one outcome.
const MaxAccessLogFields = 13

// AppendAccessLog appends AccessLog's fields for o to dst, unboxed: the
// answer that carries them builds its metadata from these without an
// interface value or a map per field. Nothing is appended for a nil o.
func AppendAccessLog(dst []AccessLogField, o *gate.Outcome) []AccessLogField {
	if o == nil {
		return dst
	}
	dst = append(dst,
		AccessLogField{Key: "tenant", Str: o.Tenant},
		AccessLogField{Key: "policy", Str: o.Policy},
		AccessLogField{Key: "requested_model", Str: o.RequestedModel},
		AccessLogField{Key: "model", Str: o.Model},
		AccessLogField{Key: "decision", Str: o.Decision},
	)
	if !o.Metered {
		return dst
	}
	u := o.Usage
	source := string(o.Source)
	if o.UsageMissing {
		source = "missing"
	}
	num := func(k string, v float64) AccessLogField { return AccessLogField{Key: k, Num: v, Number: true} }
	dst = append(dst,
		num("input_tokens", float64(u.InputTokens)),
		num("output_tokens", float64(u.OutputTokens)),
		num("cache_read_tokens", float64(u.CacheReadTokens)),
		num("cache_write_tokens", float64(u.CacheWriteTokens())),
		num("cost_usd", o.Cost.Total.USD()),
		num("cost_nano_usd", float64(o.Cost.Total)),
		AccessLogField{Key: "usage_source", Str: source},
	)
	if o.OutputClamped > 0 {
		dst = append(dst, num("output_clamped", float64(o.OutputClamped)))
	}
	return dst
}
