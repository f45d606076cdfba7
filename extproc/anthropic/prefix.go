package anthropic

import "github.com/tokenwarden/tokenwarden/extproc/llm"

// Separators fed to the fingerprint between pieces. They are bytes valid
// JSON never holds outside a string escape, so no two different structures
// hash the same bytes.
const (
	sepKey   = 0x00 // after a member's key
	sepValue = 0x01 // after a member's value
	sepBlock = 0x02 // after an array element
)

// PrefixFingerprint hashes the stable prefix of a Messages API request — the
// tool definitions and the system prompt, the part of a prompt that should be
// identical from one request of a policy to the next — so that a template
// leaking a timestamp or a request id into it shows up as a stream of
// changes (tokenwarden_prompt_prefix_changes_total) rather than as a
// silently cold cache.
//
// The hash covers the raw bytes of every member of every tool and system
// block, in order, except cache_control members, and reads a string system
// prompt as the one text block InjectCacheControl turns it into: the
// gateway's own injection, or a client moving its breakpoints, does not
// change it. Whitespace between members is not hashed; whitespace inside
// member values is. The hash (llm.Hash64) has a fixed seed, so every replica
// agrees. ok is false when there is neither a tool nor a non-empty system
// prompt, or the body is not a valid JSON object.
func PrefixFingerprint(body []byte) (fp uint64, ok bool) {
	var (
		r             llm.Reader
		tools, system llm.Hash64
		nTools, nSys  int
	)
	r.Reset(body)
	if r.Peek() != llm.KindObject {
		return 0, false
	}
	it := r.Object()
	for key, more := r.NextKey(&it); more; key, more = r.NextKey(&it) {
		switch string(key) {
		case "tools":
			nTools += hashBlocks(&r, &tools)
		case "system":
			if r.Peek() == llm.KindString {
				start, end := r.Skip()
				if end-start > 2 { // not ""
					// The members of the text block it becomes.
					system.WriteString("type")
					_ = system.WriteByte(sepKey)
					system.WriteString(`"text"`)
					_ = system.WriteByte(sepValue)
					system.WriteString("text")
					_ = system.WriteByte(sepKey)
					system.Write(body[start:end])
					_ = system.WriteByte(sepValue)
					_ = system.WriteByte(sepBlock)
					nSys++
				}
				continue
			}
			nSys += hashBlocks(&r, &system)
		default:
			r.Skip()
		}
	}
	if !r.End() || nTools+nSys == 0 {
		return 0, false
	}
	return llm.CombineHashes(tools.Sum64(), system.Sum64()), true
}

// hashBlocks hashes an array of objects member by member, leaving out
// cache_control; other values are skipped. It returns the element count.
func hashBlocks(r *llm.Reader, h *llm.Hash64) int {
	if r.Peek() != llm.KindArray {
		r.Skip()
		return 0
	}
	n := 0
	it := r.Array()
	for r.NextElem(&it) {
		n++
		if r.Peek() != llm.KindObject {
			start, end := r.Skip()
			h.Write(r.Slice(start, end))
			_ = h.WriteByte(sepBlock)
			continue
		}
		bit := r.Object()
		for key, ok := r.NextKey(&bit); ok; key, ok = r.NextKey(&bit) {
			if string(key) == "cache_control" {
				r.Skip()
				continue
			}
			h.Write(key)
			_ = h.WriteByte(sepKey)
			start, end := r.Skip()
			h.Write(r.Slice(start, end))
			_ = h.WriteByte(sepValue)
		}
		_ = h.WriteByte(sepBlock)
	}
	return n
}
