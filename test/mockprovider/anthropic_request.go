package mockprovider

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"
)

// anthropicRequest is the part of a Messages request the mock reads. Blocks
// stay raw so the cache prefix can be hashed on the bytes as sent.
type anthropicRequest struct {
	Model        string             `json:"model"`
	MaxTokens    *int64             `json:"max_tokens"`
	Messages     []anthropicMessage `json:"messages"`
	System       json.RawMessage    `json:"system"`
	Tools        []json.RawMessage  `json:"tools"`
	Stream       bool               `json:"stream"`
	CacheControl *cacheControl      `json:"cache_control"`
}

type anthropicMessage struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
}

type cacheControl struct {
	Type string `json:"type"`
	TTL  string `json:"ttl"`
}

// contentBlock holds the fields of any block type the token rule looks at.
type contentBlock struct {
	Type         string          `json:"type"`
	Text         *string         `json:"text"`
	Thinking     string          `json:"thinking"`
	Data         string          `json:"data"`
	Name         string          `json:"name"`
	Input        json.RawMessage `json:"input"`
	Content      json.RawMessage `json:"content"`
	Source       *blockSource    `json:"source"`
	CacheControl *cacheControl   `json:"cache_control"`
}

type blockSource struct {
	Type string `json:"type"`
	Data string `json:"data"`
}

type toolDef struct {
	Name         string          `json:"name"`
	Description  string          `json:"description"`
	InputSchema  json.RawMessage `json:"input_schema"`
	CacheControl *cacheControl   `json:"cache_control"`
}

// requestError is a 400 the client caused; its text is the API message.
type requestError struct{ msg string }

func (e *requestError) Error() string { return e.msg }

func badRequest(format string, args ...any) error {
	return &requestError{msg: fmt.Sprintf(format, args...)}
}

// promptBlock is one position of the flattened prompt: tools, then system,
// then message content blocks, in order.
type promptBlock struct {
	key       []byte // what the prefix hash covers
	tokens    int64
	cacheable bool
	marks     []string // TTLs of cache_control markers at this position
}

// flatPrompt is a parsed request reduced to what counting and caching need.
type flatPrompt struct {
	model     string
	blocks    []promptBlock
	explicit  int    // explicit cache_control markers
	autoTTL   string // top-level cache_control TTL, "" when absent
	lastUser  []byte // raw content of the last user message
	maxTokens int64  // -1 when absent
	stream    bool
}

func (f *flatPrompt) total() int64 {
	var t int64
	for _, b := range f.blocks {
		t += b.tokens
	}
	return t
}

// parseAnthropic validates and flattens a Messages (or count_tokens) body.
// needMaxTokens is false for count_tokens.
func parseAnthropic(body []byte, needMaxTokens bool, opts Options) (*flatPrompt, error) {
	var req anthropicRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, badRequest("request body is not valid JSON: %v", err)
	}
	if req.Model == "" {
		return nil, badRequest("model: Field required")
	}
	if req.Messages == nil {
		return nil, badRequest("messages: Field required")
	}
	if len(req.Messages) == 0 {
		return nil, badRequest("messages: at least one message is required")
	}
	f := &flatPrompt{model: req.Model, maxTokens: -1, stream: req.Stream}
	if needMaxTokens {
		if req.MaxTokens == nil {
			return nil, badRequest("max_tokens: Field required")
		}
		if *req.MaxTokens < 0 {
			return nil, badRequest("max_tokens: Input should be greater than or equal to 0")
		}
		f.maxTokens = *req.MaxTokens
	}
	if req.CacheControl != nil {
		ttl, err := checkCacheControl(req.CacheControl)
		if err != nil {
			return nil, err
		}
		f.autoTTL = ttl
	}
	for i, raw := range req.Tools {
		if err := f.addTool(raw); err != nil {
			return nil, fmt.Errorf("tools.%d: %w", i, err)
		}
	}
	if err := f.addSystem(req.System); err != nil {
		return nil, err
	}
	for i, m := range req.Messages {
		if m.Role != "user" && m.Role != "assistant" && m.Role != "system" {
			return nil, badRequest("messages.%d.role: Input should be 'user' or 'assistant'", i)
		}
		if err := f.addMessage(m, opts); err != nil {
			return nil, fmt.Errorf("messages.%d: %w", i, err)
		}
		if m.Role == "user" {
			f.lastUser = m.Content
		}
	}
	if f.lastUser == nil {
		f.lastUser = body
	}
	return f, nil
}

func checkCacheControl(cc *cacheControl) (string, error) {
	if cc.Type != "ephemeral" {
		return "", badRequest("cache_control.type: Input should be 'ephemeral'")
	}
	switch cc.TTL {
	case "", "5m":
		return "5m", nil
	case "1h":
		return "1h", nil
	}
	return "", badRequest("cache_control.ttl: Input should be '5m' or '1h'")
}

func (f *flatPrompt) addTool(raw json.RawMessage) error {
	var t toolDef
	if err := json.Unmarshal(raw, &t); err != nil {
		return badRequest("tool definition must be an object")
	}
	stripped := stripCacheControl(raw)
	b := promptBlock{key: keyOf('t', "", stripped), cacheable: true}
	if t.InputSchema != nil {
		b.tokens = ceilTokens(len(t.Name) + len(t.Description) + len(t.InputSchema))
	} else {
		b.tokens = ceilTokens(len(stripped))
	}
	if t.CacheControl != nil {
		if err := f.mark(&b, t.CacheControl); err != nil {
			return err
		}
	}
	f.blocks = append(f.blocks, b)
	return nil
}

func (f *flatPrompt) addSystem(raw json.RawMessage) error {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return nil
	}
	if raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return badRequest("system: %v", err)
		}
		f.blocks = append(f.blocks, promptBlock{key: keyOf('s', "", raw), tokens: ceilTokens(len(s)), cacheable: s != ""})
		return nil
	}
	var blocks []json.RawMessage
	if err := json.Unmarshal(raw, &blocks); err != nil {
		return badRequest("system: Input should be a valid string or list of text blocks")
	}
	for i, rb := range blocks {
		b, err := f.contentBlock('s', "", rb, 0)
		if err != nil {
			return fmt.Errorf("system.%d: %w", i, err)
		}
		f.blocks = append(f.blocks, b)
	}
	return nil
}

func (f *flatPrompt) addMessage(m anthropicMessage, opts Options) error {
	raw := bytes.TrimSpace(m.Content)
	if len(raw) == 0 {
		return badRequest("content: Field required")
	}
	if raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return badRequest("content: %v", err)
		}
		f.blocks = append(f.blocks, promptBlock{
			key:    keyOf('m', m.Role+"\x00first", raw),
			tokens: ceilTokens(len(s)) + opts.MessageOverhead, cacheable: s != "",
		})
		return nil
	}
	var blocks []json.RawMessage
	if err := json.Unmarshal(raw, &blocks); err != nil {
		return badRequest("content: Input should be a valid string or list of content blocks")
	}
	if len(blocks) == 0 {
		// The overhead still needs a position; it cannot carry a breakpoint.
		f.blocks = append(f.blocks, promptBlock{key: keyOf('m', m.Role+"\x00empty", nil), tokens: opts.MessageOverhead})
		return nil
	}
	for i, rb := range blocks {
		b, err := f.contentBlock('m', m.Role, rb, opts.ImageTokens)
		if err != nil {
			return fmt.Errorf("content.%d: %w", i, err)
		}
		if i == 0 {
			b.tokens += opts.MessageOverhead
			b.key = keyOf('m', m.Role+"\x00first", b.key)
		}
		f.blocks = append(f.blocks, b)
	}
	return nil
}

// contentBlock counts one block and records its (and nested) breakpoints.
func (f *flatPrompt) contentBlock(section byte, role string, raw json.RawMessage, imageTokens int64) (promptBlock, error) {
	var cb contentBlock
	if err := json.Unmarshal(raw, &cb); err != nil {
		return promptBlock{}, badRequest("content block must be an object")
	}
	if cb.Type == "" {
		return promptBlock{}, badRequest("type: Field required")
	}
	stripped := stripCacheControl(raw)
	b := promptBlock{key: keyOf(section, role, stripped), cacheable: true}
	switch cb.Type {
	case "text":
		if cb.Text == nil {
			return promptBlock{}, badRequest("text: Field required")
		}
		if *cb.Text == "" {
			return promptBlock{}, badRequest("text content blocks must be non-empty")
		}
		b.tokens = ceilTokens(len(*cb.Text))
	case "image":
		b.tokens = imageTokens
	case "document":
		if cb.Source != nil && cb.Source.Type == "text" {
			b.tokens = ceilTokens(len(cb.Source.Data))
		} else {
			b.tokens = imageTokens
		}
	case "tool_use", "server_tool_use":
		b.tokens = ceilTokens(len(cb.Name) + len(cb.Input))
	case "tool_result":
		n, err := f.toolResultTokens(cb.Content, &b, imageTokens)
		if err != nil {
			return promptBlock{}, err
		}
		b.tokens = n
	case "thinking":
		b.tokens, b.cacheable = ceilTokens(len(cb.Thinking)), false
	case "redacted_thinking":
		b.tokens, b.cacheable = ceilTokens(len(cb.Data)), false
	default:
		b.tokens = ceilTokens(len(stripped))
	}
	if cb.CacheControl != nil {
		if !b.cacheable {
			return promptBlock{}, badRequest("%s blocks cannot be marked with cache_control", cb.Type)
		}
		if err := f.mark(&b, cb.CacheControl); err != nil {
			return promptBlock{}, err
		}
	}
	return b, nil
}

// toolResultTokens counts a tool_result's content; markers on nested blocks
// count towards the limit and act at the tool_result's position.
func (f *flatPrompt) toolResultTokens(content json.RawMessage, b *promptBlock, imageTokens int64) (int64, error) {
	content = bytes.TrimSpace(content)
	if len(content) == 0 || bytes.Equal(content, []byte("null")) {
		return 0, nil
	}
	if content[0] == '"' {
		var s string
		if err := json.Unmarshal(content, &s); err != nil {
			return 0, badRequest("content: %v", err)
		}
		return ceilTokens(len(s)), nil
	}
	var nested []json.RawMessage
	if err := json.Unmarshal(content, &nested); err != nil {
		return 0, badRequest("content: Input should be a valid string or list of content blocks")
	}
	var n int64
	for i, rb := range nested {
		var cb contentBlock
		if err := json.Unmarshal(rb, &cb); err != nil {
			return 0, badRequest("content.%d: content block must be an object", i)
		}
		switch {
		case cb.Type == "text" && cb.Text != nil:
			n += ceilTokens(len(*cb.Text))
		case cb.Type == "image" || cb.Type == "document":
			n += imageTokens
		default:
			n += ceilTokens(len(rb))
		}
		if cb.CacheControl != nil {
			if err := f.mark(b, cb.CacheControl); err != nil {
				return 0, err
			}
		}
	}
	return n, nil
}

func (f *flatPrompt) mark(b *promptBlock, cc *cacheControl) error {
	ttl, err := checkCacheControl(cc)
	if err != nil {
		return err
	}
	b.marks = append(b.marks, ttl)
	f.explicit++
	return nil
}

func keyOf(section byte, role string, raw []byte) []byte {
	k := make([]byte, 0, len(raw)+len(role)+2)
	k = append(k, section)
	k = append(k, role...)
	k = append(k, 0)
	return append(k, raw...)
}

// stripCacheControl removes cache_control from a block (and from the blocks
// nested in its content) without touching any other byte, so that moving a
// breakpoint forward turn by turn keeps earlier prefixes identical.
func stripCacheControl(raw []byte) []byte {
	// sjson may edit its input in place; the caller's bytes must survive.
	out := append([]byte(nil), raw...)
	if gjson.GetBytes(out, "cache_control").Exists() {
		if s, err := sjson.DeleteBytes(out, "cache_control"); err == nil {
			out = s
		}
	}
	content := gjson.GetBytes(out, "content")
	if content.IsArray() {
		for i := len(content.Array()) - 1; i >= 0; i-- {
			path := fmt.Sprintf("content.%d.cache_control", i)
			if gjson.GetBytes(out, path).Exists() {
				if s, err := sjson.DeleteBytes(out, path); err == nil {
					out = s
				}
			}
		}
	}
	return out
}
