package openai

import (
	"errors"

	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// errNotParsed is Edit given a Request whose Index ParseRequest did not
// fill: a caller's bug, refused rather than spliced at offset 0.
var errNotParsed = errors.New("openai: the request's Index was not filled by ParseRequest")

// Edits from the Index ParseRequest recorded: the model rewrite and
// stream_options.include_usage, without reading the body again. Each
// replaces or inserts bytes at a recorded offset, so every other byte of the
// client's JSON is kept.

// The insertions that ask a stream for its usage chunk
// (https://platform.openai.com/docs/api-reference/chat/create#chat-create-stream_options).
const (
	streamOptionsMember = `"stream_options":{"include_usage":true}`
	streamOptionsObject = `{"include_usage":true}`
	includeUsageMember  = `"include_usage":true`
)

// planEdits adds the edits of e to out: the model rewrite when e.Model differs
// from the request's, include_usage on a stream that does not ask for
// usage, and the explicit prompt-cache breakpoints e.Cache asks for, on a
// model that takes them (cache.go).
func planEdits(req *wire.Request, e wire.EditRequest, out *wire.Edits) (wire.EditReport, error) {
	rep, err := editModelAndCache(req, e, "messages", chatTextOpen, out)
	if err != nil {
		return rep, err
	}
	if e.OutputLimit > 0 {
		// max_completion_tokens is the bound every current model reads;
		// max_tokens is deprecated and refused by reasoning models
		// (https://platform.openai.com/docs/api-reference/chat/create#chat-create-max_completion_tokens).
		if err := wire.EditOutputLimit(&req.Index.OutputLimit, req.Index.Append, "max_completion_tokens", e.OutputLimit, out); err != nil {
			return rep, err
		}
	}
	if req.Stream && !req.StreamUsageRequested {
		forced, err := forceStreamUsage(req, out)
		if err != nil {
			return rep, err
		}
		rep.StreamUsageForced = forced
	}
	return rep, nil
}

// editModelAndCache adds the edits both OpenAI APIs share: the model
// rewrite, and the breakpoints, placed for the model the request will be
// sent with (the rewritten one, if any); list and textOpen are the API's
// (see placeBreakpoints). The policy's TTL is not read: OpenAI's markers
// inherit the request's one TTL.
func editModelAndCache(req *wire.Request, e wire.EditRequest, list, textOpen string, out *wire.Edits) (wire.EditReport, error) {
	var rep wire.EditReport
	model := req.Model
	if e.Model != "" && e.Model != req.Model {
		if err := wire.EditModel(&req.Index, e.Model, out); err != nil {
			return rep, err
		}
		model = e.Model
	}
	if e.Cache != nil {
		res, err := placeBreakpoints(&req.Index.Cache, model, list, textOpen, e.Cache.MinTokens, out)
		if err != nil {
			return rep, err
		}
		rep.CacheExisting, rep.CacheAdded, rep.CacheSkipped = res.Existing, res.Added, res.Skipped
	}
	return rep, nil
}

// forceStreamUsage adds the edit that sets stream_options.include_usage to
// true: stream_options is created when absent, replaced when null, and
// otherwise keeps its other members. It reports false, adding nothing, when
// include_usage is already true.
func forceStreamUsage(req *wire.Request, out *wire.Edits) (bool, error) {
	so := &req.Index.StreamOptions
	var ok bool
	switch {
	case req.Index.Append.At == 0:
		// Every parsed body is an object, so a member goes after '{' at
		// the earliest: this Request did not come from ParseRequest.
		return false, errNotParsed
	case !so.Value.Found():
		at := req.Index.Append
		if at.Comma {
			ok = out.Add(at.At, at.At, ","+streamOptionsMember)
		} else {
			ok = out.Add(at.At, at.At, streamOptionsMember)
		}
	case so.Null:
		ok = out.Add(so.Value.Start, so.Value.End, streamOptionsObject)
	case so.IncludeUsageTwice:
		return false, wire.Invalid("stream_options.include_usage: duplicate key")
	case !so.IncludeUsage.Found():
		at := so.Append
		if at.Comma {
			ok = out.Add(at.At, at.At, ","+includeUsageMember)
		} else {
			ok = out.Add(at.At, at.At, includeUsageMember)
		}
	case req.StreamUsageRequested:
		return false, nil
	default:
		ok = out.Add(so.IncludeUsage.Start, so.IncludeUsage.End, "true")
	}
	if !ok {
		return false, wire.ErrTooManyEdits
	}
	return true, nil
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

// ForceStreamUsage sets stream_options.include_usage to true so the stream
// ends with a usage chunk, creating stream_options when absent or null and
// keeping its other fields; every other byte is preserved. changed is false
// when include_usage was already true (the body is returned as is). Like
// SetModel it is parse and edit in one call, on the same bodies.
func ForceStreamUsage(body []byte) (out []byte, changed bool, err error) {
	req, err := parseRequest(body, true)
	if err != nil {
		return nil, false, err
	}
	var edits wire.Edits
	changed, err = forceStreamUsage(&req, &edits)
	if err != nil {
		return nil, false, err
	}
	if !changed {
		return body, false, nil
	}
	if out, err = wire.Apply(body, &edits); err != nil {
		return nil, false, err
	}
	return out, true, nil
}
