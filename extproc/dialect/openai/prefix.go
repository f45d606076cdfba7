package openai

import "github.com/tokenwarden/tokenwarden/extproc/dialect/wire"

// prefix fingerprints the stable prefix of a Chat Completions request while
// ParseRequest reads it: the tool (and legacy function) definitions and the
// leading system or developer messages, what should be identical from one
// request of a policy to the next and what OpenAI's automatic prefix cache
// keys on (https://platform.openai.com/docs/guides/prompt-caching), so that a
// template leaking a timestamp into it shows up in
// tokenwarden_prompt_prefix_changes_total rather than as a cold cache.
//
// It hashes the raw bytes of those values (whitespace included: the provider
// sees it), each section apart so the body's key order does not matter, with
// wire.Hash64's fixed seed so every replica agrees. The gateway's own
// rewrites (model, stream_options) do not touch them. The zero value is
// ready to use.
type prefix struct {
	tools, fns, sys wire.Hash64
	n               int  // tools, functions and messages hashed
	past            bool // a message that is neither system nor developer was seen
	// instr hashes the Responses API's instructions, which the API puts
	// before every input item wherever the key sits in the body.
	instr    wire.Hash64
	hasInstr bool
}

// instructionsText hashes the raw bytes of a Responses request's
// instructions string.
func (p *prefix) instructionsText(raw []byte) {
	p.instr.Write(raw)
	p.hasInstr = true
	p.n++
}

// definitions hashes the raw bytes of a tools (or functions) array of n
// definitions.
func (p *prefix) definitions(tools bool, raw []byte, n int) {
	h := &p.fns
	if tools {
		h = &p.tools
	}
	h.Write(raw)
	p.n += n
}

// message hashes the raw bytes of one message, given its role still
// escaped, while the messages so far have all been system or developer
// messages. The role is compared as written: "sys\u0074em" ends the prefix.
func (p *prefix) message(raw, role []byte) {
	if p.past {
		return
	}
	if string(role) != "system" && string(role) != "developer" {
		p.past = true
		return
	}
	p.sys.Write(raw)
	_ = p.sys.WriteByte(0) // never in valid JSON: separates messages
	p.n++
}

// sum returns the fingerprint; ok is false when there is neither a tool nor
// a leading system or developer message.
func (p *prefix) sum() (fp uint64, ok bool) {
	if p.n == 0 {
		return 0, false
	}
	if p.hasInstr {
		return wire.CombineHashes(p.tools.Sum64(), p.fns.Sum64(), p.sys.Sum64(), p.instr.Sum64()), true
	}
	return wire.CombineHashes(p.tools.Sum64(), p.fns.Sum64(), p.sys.Sum64()), true
}
