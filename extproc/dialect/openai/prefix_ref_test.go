package openai

import "github.com/tokenwarden/tokenwarden/extproc/dialect/wire"

// Reference oracle: the separate pass that fingerprinted the stable prefix
// before ParseRequest took the fingerprint in its own pass (see prefix). The
// tests TestPrefixFingerprint and TestPrefixFingerprintNone pin down its
// meaning, and the parse is held to it (TestParsePrefixFingerprint,
// FuzzEditMatchesMultiPass).

// PrefixFingerprint hashes the stable prefix of a Chat Completions request —
// the tool (and legacy function) definitions and the leading system or
// developer messages, what should be identical from one request of a policy
// to the next and what OpenAI's automatic prefix cache keys on — so that a
// template leaking a timestamp into it shows up in
// tokenwarden_prompt_prefix_changes_total rather than as a cold cache.
//
// It hashes the raw bytes of those values (whitespace included: the provider
// sees it), each section apart so the body's key order does not matter, with
// wire.Hash64's fixed seed so every replica agrees. The gateway's own rewrites
// (model, stream_options) do not touch them. ok is false when there is
// neither a tool nor a leading system/developer message, or the body is not a
// valid JSON object.
func PrefixFingerprint(body []byte) (fp uint64, ok bool) {
	var (
		r                 wire.Reader
		tools, fns, sys   wire.Hash64
		nTools, nFns, nSy int
	)
	r.Reset(body)
	if r.Peek() != wire.KindObject {
		return 0, false
	}
	it := r.Object()
	for key, more := r.NextKey(&it); more; key, more = r.NextKey(&it) {
		switch string(key) {
		case "tools":
			nTools = hashArray(&r, &tools)
		case "functions":
			nFns = hashArray(&r, &fns)
		case "messages":
			nSy = hashLeadingSystem(&r, &sys)
		default:
			r.Skip()
		}
	}
	if !r.End() || nTools+nFns+nSy == 0 {
		return 0, false
	}
	return wire.CombineHashes(tools.Sum64(), fns.Sum64(), sys.Sum64()), true
}

// hashArray hashes the raw bytes of an array value and returns its length;
// anything else (null) is skipped and counts 0.
func hashArray(r *wire.Reader, h *wire.Hash64) int {
	if r.Peek() != wire.KindArray {
		r.Skip()
		return 0
	}
	start := r.Pos()
	n := 0
	it := r.Array()
	for r.NextElem(&it) {
		r.Skip()
		n++
	}
	h.Write(r.Slice(start, r.Pos()))
	return n
}

// hashLeadingSystem consumes the messages array and hashes the raw bytes of
// each message, up to the first one whose role is neither system nor
// developer. It returns how many it hashed.
func hashLeadingSystem(r *wire.Reader, h *wire.Hash64) int {
	if r.Peek() != wire.KindArray {
		r.Skip()
		return 0
	}
	n := 0
	leading := true
	it := r.Array()
	for r.NextElem(&it) {
		if !leading || r.Peek() != wire.KindObject {
			r.Skip()
			leading = false
			continue
		}
		start := r.Pos()
		var role []byte
		mit := r.Object()
		for key, ok := r.NextKey(&mit); ok; key, ok = r.NextKey(&mit) {
			if string(key) == "role" && r.Peek() == wire.KindString {
				role, _ = r.RawString()
				continue
			}
			r.Skip()
		}
		if string(role) != "system" && string(role) != "developer" {
			leading = false
			continue
		}
		h.Write(r.Slice(start, r.Pos()))
		_ = h.WriteByte(0) // never in valid JSON: separates messages
		n++
	}
	return n
}
