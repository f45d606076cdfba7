package wire

// StreamRewriter gives the client back the SSE stream it would have
// received had tokenwarden not edited its request — OpenAI's usage chunk,
// when tokenwarden asked for it and the client did not — byte for byte
// otherwise. It is fed the decoded stream chunk by chunk, split anywhere,
// and answers each chunk with the bytes to forward in its place; it holds
// back only an incomplete trailing event (at most MaxSSELine bytes of it),
// which Flush releases at the end of the stream.
type StreamRewriter interface {
	// Rewrite appends to dst the bytes to forward for chunk and returns
	// the extended slice; it never retains chunk.
	Rewrite(dst, chunk []byte) []byte
	// Flush appends whatever is still held back, at the end of the stream.
	Flush(dst []byte) []byte
}
