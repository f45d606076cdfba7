package openai

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/tokenwarden/tokenwarden/accounting"
	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// The OpenAI Batch API is two steps: POST /v1/files uploads a JSONL file of
// requests, {custom_id, method: "POST", url, body} a line, purpose=batch;
// POST /v1/batches then names it (input_file_id) with the endpoint, and the
// batch runs within 24 hours at half price; GET /v1/batches/{id} reports its
// status and, once completed, its usage
// (https://platform.openai.com/docs/guides/batch,
// https://platform.openai.com/docs/api-reference/batch). These are the pure
// readers; the gate remembers a file's estimate and admits the batch.

// MaxBatchFileLines is the most requests one batch file may hold, the API's
// own limit (50,000 requests or 200 MB).
const MaxBatchFileLines = 50_000

// BatchFileLine is one request of a batch file as tokenwarden estimates it.
type BatchFileLine struct {
	CustomID string
	// URL is the endpoint the line calls, one of BatchEndpoints.
	URL     string
	Request wire.Request
}

// BatchEndpoints are the endpoints a batch file's lines may call that
// tokenwarden can estimate, each read as the request it is: Chat
// Completions, Responses and embeddings. The Batch API takes others
// (completions, moderations, images, videos); a file calling them is
// refused, never admitted unestimated.
var batchEndpoints = map[string]func([]byte) (wire.Request, error){
	"/v1/chat/completions": ParseRequest,
	"/v1/responses":        ParseResponsesRequest,
	"/v1/embeddings":       ParseEmbeddingsRequest,
}

// ErrBatchFileTooLarge is returned for a file of more lines or bytes than
// allowed: it is refused, never estimated in part.
var ErrBatchFileTooLarge = errors.New("the batch file is too large to estimate")

// ErrBatchFileInvalid is returned for a file that is not a batch of Chat
// Completions requests.
var ErrBatchFileInvalid = errors.New("invalid batch file")

// BatchFileLimits bound ParseBatchFile.
type BatchFileLimits struct {
	MaxLines int   // zero or above MaxBatchFileLines: MaxBatchFileLines
	MaxBytes int64 // zero: 200 MB, the API's own file limit
}

// ParseBatchFile reads a batch input file line by line from r, never holding
// more than one line beyond the parsed requests: every line must be a POST
// to one of the endpoints tokenwarden estimates (Chat Completions,
// Responses, embeddings) whose body parses as the request it is, so each is
// estimated like one.
func ParseBatchFile(r io.Reader, lim BatchFileLimits) ([]BatchFileLine, error) {
	if lim.MaxLines <= 0 || lim.MaxLines > MaxBatchFileLines {
		lim.MaxLines = MaxBatchFileLines
	}
	if lim.MaxBytes <= 0 {
		lim.MaxBytes = 200 << 20
	}
	lr := &io.LimitedReader{R: r, N: lim.MaxBytes + 1}
	sc := bufio.NewScanner(lr)
	sc.Buffer(make([]byte, 0, 64<<10), int(min(lim.MaxBytes, 64<<20))+1)
	var out []BatchFileLine
	for n := 1; sc.Scan(); n++ {
		if lr.N <= 0 {
			// Past the byte bound the file is refused whatever the line
			// read so far (perhaps cut short) holds.
			return nil, fmt.Errorf("%w: more than %d bytes", ErrBatchFileTooLarge, lim.MaxBytes)
		}
		raw := bytes.TrimSpace(sc.Bytes())
		if len(raw) == 0 {
			continue
		}
		if len(out) == lim.MaxLines {
			return nil, fmt.Errorf("%w: more than %d requests", ErrBatchFileTooLarge, lim.MaxLines)
		}
		var l struct {
			CustomID string          `json:"custom_id"`
			Method   string          `json:"method"`
			URL      string          `json:"url"`
			Body     json.RawMessage `json:"body"`
		}
		if err := json.Unmarshal(raw, &l); err != nil {
			return nil, fmt.Errorf("%w: line %d is not a JSON object: %v", ErrBatchFileInvalid, n, err)
		}
		parse := batchEndpoints[l.URL]
		if l.Method != "POST" || parse == nil || len(l.Body) == 0 {
			return nil, fmt.Errorf("%w: line %d is not a POST with a body to /v1/chat/completions, /v1/responses or /v1/embeddings", ErrBatchFileInvalid, n)
		}
		req, err := parse(l.Body)
		if err != nil {
			return nil, fmt.Errorf("batch file line %d (%q): %w", n, l.CustomID, err)
		}
		if req.Stream {
			return nil, fmt.Errorf("%w: line %d asks to stream, which batches do not", ErrBatchFileInvalid, n)
		}
		out = append(out, BatchFileLine{CustomID: l.CustomID, URL: l.URL, Request: req})
	}
	if lr.N <= 0 {
		return nil, fmt.Errorf("%w: more than %d bytes", ErrBatchFileTooLarge, lim.MaxBytes)
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, fmt.Errorf("%w: a line longer than %d bytes", ErrBatchFileTooLarge, lim.MaxBytes)
		}
		return nil, fmt.Errorf("reading the batch file: %w", err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: no requests", ErrBatchFileInvalid)
	}
	return out, nil
}

// BatchStatus is what a GET /v1/batches/{id} answer says about settling:
// the batch's id and status and, once reported, its usage at the batch tier.
type BatchStatus struct {
	ID       string
	Status   string
	Usage    accounting.Usage
	HasUsage bool
	// OutputFileID names the file of the batch's answers, "" until it has one.
	OutputFileID string
}

// ParseBatchObject reads a Batch object (the answer to POST /v1/batches or
// GET /v1/batches/{id}). usage is present only on batches created after
// 2025-09-07 and has no cache-write field.
func ParseBatchObject(body []byte) (BatchStatus, error) {
	var b struct {
		ID           string  `json:"id"`
		Object       string  `json:"object"`
		Status       string  `json:"status"`
		OutputFileID *string `json:"output_file_id"`
		Usage        *struct {
			InputTokens        int64 `json:"input_tokens"`
			InputTokensDetails struct {
				CachedTokens int64 `json:"cached_tokens"`
			} `json:"input_tokens_details"`
			OutputTokens int64 `json:"output_tokens"`
		} `json:"usage"`
	}
	if err := json.Unmarshal(body, &b); err != nil {
		return BatchStatus{}, fmt.Errorf("%w: not a batch object: %v", ErrBatchFileInvalid, err)
	}
	if b.Object != "batch" || !validObjectID(b.ID) {
		return BatchStatus{}, fmt.Errorf("%w: not a batch object", ErrBatchFileInvalid)
	}
	s := BatchStatus{ID: b.ID, Status: b.Status}
	if f := b.OutputFileID; f != nil && validObjectID(*f) {
		s.OutputFileID = *f
	}
	if u := b.Usage; u != nil {
		cached := u.InputTokensDetails.CachedTokens
		if u.InputTokens < 0 || u.OutputTokens < 0 || cached < 0 || cached > u.InputTokens {
			return BatchStatus{}, fmt.Errorf("%w: batch usage out of range", ErrBatchFileInvalid)
		}
		s.HasUsage = true
		s.Usage = accounting.Usage{InputTokens: u.InputTokens - cached, CacheReadTokens: cached,
			OutputTokens: u.OutputTokens, ServiceTier: "batch"}
	}
	return s, nil
}

// BatchOutputLine is one line of a batch's output file as settling needs
// it: whether the request succeeded and what it used, at the batch tier.
type BatchOutputLine struct {
	Succeeded bool
	Usage     accounting.Usage
	Model     string
}

// ParseBatchOutputLine reads one line of a batch output file,
// {id, custom_id, response: {status_code, request_id, body}, error}
// (https://platform.openai.com/docs/guides/batch), its body read as the
// answer of url (one of the endpoints ParseBatchFile takes). A line whose
// response is not a 200 is a request that failed, not billed.
func ParseBatchOutputLine(line []byte, url string) (BatchOutputLine, error) {
	var l struct {
		Response *struct {
			StatusCode int             `json:"status_code"`
			Body       json.RawMessage `json:"body"`
		} `json:"response"`
	}
	if err := json.Unmarshal(line, &l); err != nil {
		return BatchOutputLine{}, fmt.Errorf("%w: an output line is not a JSON object: %v", ErrBatchFileInvalid, err)
	}
	if l.Response == nil || l.Response.StatusCode != 200 {
		return BatchOutputLine{}, nil
	}
	var u accounting.Usage
	var model string
	var ok bool
	switch url {
	case "/v1/chat/completions", "/v1/embeddings":
		u, model, ok = UsageFromJSON(l.Response.Body)
	case "/v1/responses":
		u, model, ok = ResponsesUsageFromJSON(l.Response.Body)
	default:
		return BatchOutputLine{}, fmt.Errorf("%w: output of %q is not read", ErrBatchFileInvalid, url)
	}
	if !ok {
		return BatchOutputLine{}, fmt.Errorf("%w: a succeeded output line has no usage", ErrBatchFileInvalid)
	}
	u.ServiceTier = "batch"
	return BatchOutputLine{Succeeded: true, Usage: u, Model: model}, nil
}

// FileContentID returns the file id of GET /v1/files/{id}/content (the
// query ignored); ok is false for any other path.
func FileContentID(path string) (id string, ok bool) {
	id, ok = wire.PathID(path, FilesPath+"/", "/content")
	return id, ok && validObjectID(id)
}
