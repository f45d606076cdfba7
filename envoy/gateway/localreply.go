package gateway

import (
	"bytes"
	"io"
	"strconv"
	"strings"

	"github.com/tokenwarden/tokenwarden/envoy/sim"
)

// renderLocalReply gives Envoy's own refusals the error shape of the API
// the client called, as envoy/envoy.yaml's local_reply_config does
// (https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/local_reply):
// a body over the buffer limit is a 413 the client's SDK can read, not
// Envoy's text/plain "Payload Too Large". Replies from the processor are
// already in the dialect and are left alone.
func renderLocalReply(path string, resp *sim.Response) {
	if resp.Status != 413 || resp.Details != "request_payload_too_large" {
		return
	}
	body := LocalReplyBody(path, resp.Status)
	if body == nil {
		return
	}
	kept := resp.Headers[:0]
	for _, h := range resp.Headers {
		if h.Name != "content-type" && h.Name != "content-length" {
			kept = append(kept, h)
		}
	}
	resp.Headers = append(kept,
		sim.Header{Name: "content-type", Value: "application/json"},
		sim.Header{Name: "content-length", Value: strconv.Itoa(len(body))})
	_, _ = io.Copy(io.Discard, resp.Body) // Envoy's own short text body: read, so the exchange ends cleanly
	_ = resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(body))
}

// The bodies envoy/envoy.yaml's local_reply_config sends, byte for byte
// (envoy/validate checks both say the same).
const (
	// TooLargeMessage is the message of both bodies.
	TooLargeMessage   = "Request body exceeds the gateway's buffer limit."
	anthropicTooLarge = `{"error":{"message":"` + TooLargeMessage + `","type":"request_too_large"},"type":"error"}`
	openaiTooLarge    = `{"error":{"code":"request_too_large","message":"` + TooLargeMessage + `","type":"invalid_request_error"}}`
)

// LocalReplyBody is the body of Envoy's own status reply on a path, in the
// API's error shape; nil when the status or path has none.
func LocalReplyBody(path string, status int) []byte {
	if status != 413 {
		return nil
	}
	switch {
	case strings.HasPrefix(path, "/v1/messages"):
		return []byte(anthropicTooLarge)
	case strings.HasPrefix(path, "/v1/chat/completions"), strings.HasPrefix(path, "/v1/responses"), strings.HasPrefix(path, "/v1/embeddings"):
		return []byte(openaiTooLarge)
	}
	return nil
}
