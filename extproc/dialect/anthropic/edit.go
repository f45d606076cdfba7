package anthropic

import "github.com/tokenwarden/tokenwarden/extproc/dialect/wire"

// planEdits adds the edits of e to out from the Index ParseRequest recorded,
// without reading the body again: the model rewrite when e.Model differs
// from the request's, and the prompt-cache breakpoints e.Cache asks for
// (placeBreakpoints). A TTL other than 5m or 1h is refused before any edit
// is added.
func planEdits(req *wire.Request, e wire.EditRequest, out *wire.Edits) (wire.EditReport, error) {
	var rep wire.EditReport
	var long bool
	if e.Cache != nil {
		var err error
		if long, err = cacheTTL(e.Cache.TTL); err != nil {
			return rep, err
		}
	}
	if e.Model != "" && e.Model != req.Model {
		if err := wire.EditModel(&req.Index, e.Model, out); err != nil {
			return rep, err
		}
	}
	if e.OutputLimit > 0 {
		if err := wire.EditOutputLimit(&req.Index.OutputLimit, req.Index.Append, "max_tokens", e.OutputLimit, out); err != nil {
			return rep, err
		}
	}
	if e.Cache != nil {
		res, err := placeBreakpoints(&req.Index.Cache, long, e.Cache.MinTokens, out)
		if err != nil {
			return rep, err
		}
		rep.CacheExisting, rep.CacheAdded, rep.CacheSkipped = res.Existing, res.Added, res.Skipped
	}
	return rep, nil
}

// SetModel rewrites the top-level "model", preserving every other byte: a
// convenience for tests and tools, parse and edit in one call. The body need
// not be a whole request (model and messages are not required, scalars the
// edit does not read are not checked), but must be valid JSON whose members
// have the shapes ParseRequest requires.
func SetModel(body []byte, model string) ([]byte, error) {
	req, err := parseRequest(body, true)
	if err != nil {
		return nil, err
	}
	var edits wire.Edits
	if err := wire.EditModel(&req.Index, model, &edits); err != nil {
		return nil, err
	}
	return wire.Apply(body, &edits)
}
