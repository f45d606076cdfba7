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
	f := map[string]any{
		"tenant":          o.Tenant,
		"policy":          o.Policy,
		"requested_model": o.RequestedModel,
		"model":           o.Model,
		"decision":        o.Decision,
	}
	if !o.Metered {
		return f
	}
	u := o.Usage
	source := string(o.Source)
	if o.UsageMissing {
		source = "missing"
	}
	f["input_tokens"] = float64(u.InputTokens)
	f["output_tokens"] = float64(u.OutputTokens)
	f["cache_read_tokens"] = float64(u.CacheReadTokens)
	f["cache_write_tokens"] = float64(u.CacheWriteTokens())
	f["cost_usd"] = o.Cost.Total.USD()
	f["cost_nano_usd"] = float64(o.Cost.Total)
	f["usage_source"] = source
	if o.OutputClamped > 0 {
		f["output_clamped"] = float64(o.OutputClamped)
	}
	return f
}
