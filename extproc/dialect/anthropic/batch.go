package anthropic

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// Message Batches: POST /v1/messages/batches carries every request of the
// batch in its body, {"requests": [{"custom_id": ..., "params": {a Messages
// request}}, ...]}, processed by the provider within 24 hours at half price
// (https://docs.anthropic.com/en/api/creating-message-batches,
// https://docs.anthropic.com/en/docs/build-with-claude/batch-processing).

// MessagesPath is the Messages API; BatchPath is where a batch is created.
const (
	MessagesPath = "/v1/messages"
	BatchPath    = "/v1/messages/batches"
)

// MaxBatchRequests is the most requests one batch may hold, the API's own
// limit (100,000 requests or 256 MB, whichever comes first).
const MaxBatchRequests = 100_000

// BatchLine is one request of a batch as tokenwarden estimates it.
type BatchLine struct {
	CustomID string
	Request  wire.Request
}

// ErrBatchTooLarge is returned for a batch of more requests than maxLines.
var ErrBatchTooLarge = errors.New("the batch has too many requests to estimate")

// ErrBatchInvalid is returned for a batch body that is not one.
var ErrBatchInvalid = errors.New("invalid batch")

// ParseBatch reads a batch creation body: each line's params parsed as the
// Messages request it is, so each is estimated like one. A batch of more than
// maxLines requests (at most MaxBatchRequests) is refused, never estimated in
// part.
func ParseBatch(body []byte, maxLines int) ([]BatchLine, error) {
	if maxLines <= 0 || maxLines > MaxBatchRequests {
		maxLines = MaxBatchRequests
	}
	var f struct {
		Requests []struct {
			CustomID string          `json:"custom_id"`
			Params   json.RawMessage `json:"params"`
		} `json:"requests"`
	}
	if err := json.Unmarshal(body, &f); err != nil {
		return nil, fmt.Errorf("%w: the batch body is not a JSON object with requests: %v", ErrBatchInvalid, err)
	}
	if len(f.Requests) == 0 {
		return nil, fmt.Errorf("%w: the batch has no requests", ErrBatchInvalid)
	}
	if len(f.Requests) > maxLines {
		return nil, fmt.Errorf("%w: %d requests, more than the %d allowed", ErrBatchTooLarge, len(f.Requests), maxLines)
	}
	out := make([]BatchLine, len(f.Requests))
	for i, r := range f.Requests {
		if len(r.Params) == 0 {
			return nil, fmt.Errorf("%w: batch request %d has no params", ErrBatchInvalid, i)
		}
		req, err := ParseRequest(r.Params)
		if err != nil {
			return nil, fmt.Errorf("batch request %d (%q): %w", i, r.CustomID, err)
		}
		if req.Stream {
			return nil, fmt.Errorf("%w: batch request %d asks to stream, which batches do not", ErrBatchInvalid, i)
		}
		out[i] = BatchLine{CustomID: r.CustomID, Request: req}
	}
	return out, nil
}
