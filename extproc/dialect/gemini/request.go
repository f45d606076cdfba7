package gemini

import (
	"fmt"
	"strings"

	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// The request body of generateContent (https://ai.google.dev/api/generate-content#request-body).
// Its JSON is the proto3 mapping of GenerateContentRequest, whose parsers
// accept a field's lowerCamelCase name and its proto name alike
// (https://protobuf.dev/programming-guides/json/): systemInstruction and
// system_instruction are one field. So each governed field is read under
// both spellings, and a body giving it twice, in either, is refused: the
// API would read one of them, tokenwarden perhaps the other.

// ParseRequest reads a generateContent body in one pass: contents
// (required), systemInstruction, tools and generationConfig.maxOutputTokens
// (the output bound), and estimates the input tokens. The model and
// streaming are the path's, which GenerateContent.Parse adds; this reports
// neither. Content cached with cachedContent is not in the body and is
// left to settlement. Malformed bodies yield an error matching
// wire.ErrInvalidRequest whose message is meant for the client's 400.
func ParseRequest(body []byte) (wire.Request, error) {
	req, _, err := parseRequest(body)
	return req, err
}

// canonicalKey maps the proto names of the governed top-level fields to the
// lowerCamelCase names KeySet knows them by.
func canonicalKey(key []byte) []byte {
	switch string(key) {
	case "system_instruction":
		return systemInstructionKey
	case "generation_config":
		return generationConfigKey
	}
	return key
}

var (
	systemInstructionKey = []byte("systemInstruction")
	generationConfigKey  = []byte("generationConfig")
)

// parseRequest is ParseRequest, also returning a "model" the body names
// ("" when none), for Parse to hold against the path's.
func parseRequest(body []byte) (wire.Request, string, error) {
	var (
		req          wire.Request
		r            wire.Reader
		c            wire.TokenCounter
		seen         wire.KeySet
		sys, tools   wire.Hash64
		hasPrefix    bool
		haveContents bool
		bodyModel    string
	)
	r.Reset(body)
	if err := wire.ExpectObject(&r); err != nil {
		return req, "", err
	}
	it := r.Object()
	req.Index.Append = wire.Insertion{At: r.Pos()}
	for key, ok := r.NextKey(&it); ok; key, ok = r.NextKey(&it) {
		key = canonicalKey(key)
		if err := seen.Add(key); err != nil {
			return req, "", wire.Fail(&r, err)
		}
		var err error
		switch string(key) {
		case "contents":
			haveContents = true
			req.Messages, err = estimateContents(&r, &c)
		case "systemInstruction":
			start := r.Pos()
			if err = estimateSystem(&r, &c); err == nil && r.Pos() > start {
				sys.Write(r.Slice(start, r.Pos()))
				hasPrefix = true
			}
		case "tools":
			start := -1
			if r.Peek() == wire.KindArray {
				start = r.Pos()
			}
			var n int
			n, err = wire.EstimateTools(&r, &c)
			req.HasTools = n > 0
			if start >= 0 && err == nil && n > 0 {
				tools.Write(r.Slice(start, r.Pos()))
				hasPrefix = true
			}
		case "generationConfig":
			req.MaxTokens, err = readGenerationConfig(&r, &req.Index.OutputLimit)
		case "model":
			if r.Peek() == wire.KindString {
				bodyModel, _ = r.String()
			} else {
				r.Skip()
			}
		default: // cachedContent, safetySettings, toolConfig, labels…
			r.Skip()
		}
		if err != nil {
			return req, "", wire.Fail(&r, err)
		}
		req.Index.Append = wire.Insertion{At: r.Pos(), Comma: true}
	}
	if err := wire.End(&r); err != nil {
		return req, "", err
	}
	if !haveContents {
		return req, "", wire.Invalid("contents: field required")
	}
	req.InputTokens = c.Tokens() + wire.RequestOverheadTokens
	if hasPrefix {
		req.PrefixFingerprint, req.HasPrefix = wire.CombineHashes(tools.Sum64(), sys.Sum64()), true
	}
	return req, bodyModel, nil
}

// readGenerationConfig consumes generationConfig (an object or null) and
// returns maxOutputTokens, 0 when absent. It is the output bound whatever
// else the config says: thinking tokens count towards it on the models
// that think.
func readGenerationConfig(r *wire.Reader, idx *wire.OutputLimitIndex) (int64, error) {
	r.Peek()
	if start := r.Pos(); r.Null() {
		idx.NestedNull = wire.Span{Start: start, End: r.Pos()}
		return 0, nil
	}
	if r.Peek() != wire.KindObject {
		return 0, wire.Invalid("generationConfig: must be an object")
	}
	var (
		maxOut int64
		seen   bool
	)
	it := r.Object()
	idx.Nested, idx.NestedFound = wire.Insertion{At: r.Pos()}, true
	for key, ok := r.NextKey(&it); ok; key, ok = r.NextKey(&it) {
		if string(key) != "maxOutputTokens" && string(key) != "max_output_tokens" {
			if strings.EqualFold(string(key), "maxOutputTokens") || strings.EqualFold(string(key), "max_output_tokens") {
				return 0, wire.Invalid("generationConfig: the key " + quote(string(key)) + " differs from maxOutputTokens only in case")
			}
			r.Skip()
			idx.Nested = wire.Insertion{At: r.Pos(), Comma: true}
			continue
		}
		if seen {
			return 0, wire.Invalid("generationConfig.maxOutputTokens: duplicate key")
		}
		seen = true
		v, err := wire.ReadOutputLimit(r, "generationConfig.maxOutputTokens", idx)
		if err != nil {
			return 0, err
		}
		maxOut = v
		idx.Nested = wire.Insertion{At: r.Pos(), Comma: true}
	}
	return maxOut, nil
}

// estimateContents consumes contents, a list of Content objects ({role,
// parts}), adding the per-message overhead for each, and returns how many
// there are.
func estimateContents(r *wire.Reader, c *wire.TokenCounter) (int, error) {
	if r.Peek() != wire.KindArray {
		return 0, wire.Invalid("contents: must be an array")
	}
	n := 0
	it := r.Array()
	for r.NextElem(&it) {
		if r.Peek() != wire.KindObject {
			return n, wire.Invalid(fmt.Sprintf("contents.%d: must be an object", n))
		}
		c.AddTokens(wire.MessageOverheadTokens)
		if err := estimateContent(r, c); err != nil {
			return n, wire.Within(fmt.Sprintf("contents.%d", n), err)
		}
		n++
	}
	return n, nil
}

// estimateSystem consumes systemInstruction: a Content object, or (as some
// clients send it) a plain string, or null.
func estimateSystem(r *wire.Reader, c *wire.TokenCounter) error {
	switch r.Peek() {
	case wire.KindNull:
		r.Skip()
		return nil
	case wire.KindString:
		c.AddTokens(wire.MessageOverheadTokens)
		r.EstimateString(c)
		return nil
	case wire.KindObject:
		c.AddTokens(wire.MessageOverheadTokens)
		return wire.Within("systemInstruction", estimateContent(r, c))
	}
	return wire.Invalid("systemInstruction: must be an object")
}

// estimateContent consumes one Content object.
func estimateContent(r *wire.Reader, c *wire.TokenCounter) error {
	it := r.Object()
	for key, ok := r.NextKey(&it); ok; key, ok = r.NextKey(&it) {
		if string(key) != "parts" {
			r.Skip() // role
			continue
		}
		if r.Peek() != wire.KindArray {
			if r.Null() {
				continue
			}
			return wire.Invalid("parts: must be an array")
		}
		pit := r.Array()
		for i := 0; r.NextElem(&pit); i++ {
			if r.Peek() != wire.KindObject {
				return wire.Invalid(fmt.Sprintf("parts.%d: must be an object", i))
			}
			estimatePart(r, c)
		}
	}
	return nil
}

// estimatePart consumes one Part (https://ai.google.dev/api/caching#Part):
// text costs its text; inline data a fixed estimate by its MIME type
// (documents by their base64 size); file data, which is only a URI, the
// fixed estimate of its type; function calls and responses their JSON plus
// the per-call framing; a thought signature is opaque and costs nothing.
func estimatePart(r *wire.Reader, c *wire.TokenCounter) {
	it := r.Object()
	for key, ok := r.NextKey(&it); ok; key, ok = r.NextKey(&it) {
		switch string(key) {
		case "text":
			if r.Peek() == wire.KindString {
				r.EstimateString(c)
			} else {
				r.EstimateValue(c)
			}
		case "inlineData", "inline_data":
			mime, dataLen := readBlob(r)
			c.AddTokens(mediaTokens(mime, dataLen))
		case "fileData", "file_data":
			mime, _ := readBlob(r)
			c.AddTokens(mediaTokens(mime, -1))
		case "functionCall", "function_call", "functionResponse", "function_response":
			r.EstimateValue(c)
			c.AddTokens(wire.ToolCallOverheadTokens)
		case "thought", "thoughtSignature", "thought_signature", "videoMetadata", "video_metadata":
			r.Skip()
		default: // executableCode, codeExecutionResult…
			r.EstimateValue(c)
		}
	}
}

// The MIME type classes a blob's estimate depends on.
type media uint8

const (
	mediaDocument media = iota
	mediaImage
	mediaAV
)

// readBlob consumes a Blob or FileData object and returns its MIME type's
// class and the length of its base64 data (-1 when it has none).
func readBlob(r *wire.Reader) (media, int) {
	if r.Peek() != wire.KindObject {
		r.Skip()
		return mediaDocument, -1
	}
	m, n := mediaDocument, -1
	it := r.Object()
	for key, ok := r.NextKey(&it); ok; key, ok = r.NextKey(&it) {
		switch string(key) {
		case "mimeType", "mime_type":
			if r.Peek() != wire.KindString {
				r.Skip()
				continue
			}
			raw, _ := r.RawString()
			switch {
			case hasPrefixFold(raw, "image/"):
				m = mediaImage
			case hasPrefixFold(raw, "audio/"), hasPrefixFold(raw, "video/"):
				m = mediaAV
			}
		case "data":
			start, end := r.Skip()
			n = end - start
		default:
			r.Skip()
		}
	}
	return m, n
}

func hasPrefixFold(b []byte, prefix string) bool {
	return len(b) >= len(prefix) && strings.EqualFold(wire.View(b[:len(prefix)]), prefix)
}

// mediaTokens is the estimate of a blob: images and audio or video a fixed
// count, documents their base64 size (dataLen, -1 for a file by URI, which
// gets the fixed document estimate).
func mediaTokens(m media, dataLen int) int64 {
	switch m {
	case mediaImage:
		return wire.ImageTokens
	case mediaAV:
		return wire.MediaTokens
	}
	if dataLen < 0 {
		return wire.DocumentTokens
	}
	return wire.Base64DocumentTokens(dataLen)
}
