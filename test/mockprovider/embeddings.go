package mockprovider

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
)

// The OpenAI embeddings API (https://platform.openai.com/docs/api-reference/embeddings):
// POST /v1/embeddings, JSON only. Each string input counts ceil(bytes/4)
// tokens and each token id one; the vectors are deterministic, of
// `dimensions` entries (default 16, far below the real models' but the
// same shape), as floats or, with encoding_format base64, as the
// little-endian float32 bytes the SDKs decode.

type embeddingsRequest struct {
	Model          string          `json:"model"`
	Input          json.RawMessage `json:"input"`
	EncodingFormat string          `json:"encoding_format"`
	Dimensions     *int            `json:"dimensions"`
}

// embeddingInputs counts the tokens of each input.
func embeddingInputs(raw json.RawMessage) ([]int64, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return nil, errors.New("missing")
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return []int64{ceilTokens(len(s))}, nil
	}
	var strs []string
	if json.Unmarshal(raw, &strs) == nil {
		out := make([]int64, len(strs))
		for i, s := range strs {
			out[i] = ceilTokens(len(s))
		}
		return out, nil
	}
	var ids []int64
	if json.Unmarshal(raw, &ids) == nil {
		return []int64{int64(len(ids))}, nil
	}
	var arrays [][]int64
	if json.Unmarshal(raw, &arrays) == nil {
		out := make([]int64, len(arrays))
		for i, a := range arrays {
			out[i] = int64(len(a))
		}
		return out, nil
	}
	return nil, errors.New("invalid")
}

func (p *Provider) handleEmbeddings(w http.ResponseWriter, r *http.Request) {
	c, body, ok := p.openaiStart(w, r)
	if !ok {
		return
	}
	var req embeddingsRequest
	if err := json.Unmarshal(body, &req); err != nil {
		p.openaiError(w, c, http.StatusBadRequest, oaiErrorInner{Message: "We could not parse the JSON body of your request.", Type: "invalid_request_error"}, "")
		return
	}
	if req.Model == "" {
		p.openaiError(w, c, http.StatusBadRequest, oaiErrorInner{Message: "you must provide a model parameter", Type: "invalid_request_error", Param: strPtr("model")}, "")
		return
	}
	inputs, err := embeddingInputs(req.Input)
	if err != nil || len(inputs) == 0 {
		p.openaiError(w, c, http.StatusBadRequest, oaiErrorInner{
			Message: "'input' : input must be a string, an array of strings, an array of tokens, or an array of token arrays",
			Type:    "invalid_request_error", Param: strPtr("input"),
		}, "")
		return
	}
	dims := 16
	if req.Dimensions != nil {
		if *req.Dimensions < 1 || *req.Dimensions > 3072 {
			p.openaiError(w, c, http.StatusBadRequest, oaiErrorInner{Message: fmt.Sprintf("Invalid 'dimensions': %d.", *req.Dimensions),
				Type: "invalid_request_error", Param: strPtr("dimensions")}, "")
			return
		}
		dims = *req.Dimensions
	}
	var prompt int64
	for _, n := range inputs {
		prompt += n
	}
	if !p.openaiModelAdmitted(w, c, req.Model, prompt, 0) {
		return
	}
	type embedding struct {
		Object    string `json:"object"`
		Index     int    `json:"index"`
		Embedding any    `json:"embedding"`
	}
	type usage struct {
		PromptTokens int64 `json:"prompt_tokens"`
		TotalTokens  int64 `json:"total_tokens"`
	}
	resp := struct {
		Object string      `json:"object"`
		Data   []embedding `json:"data"`
		Model  string      `json:"model"`
		Usage  *usage      `json:"usage,omitempty"`
	}{Object: "list", Model: req.Model}
	g := rng{s: c.seed}
	for i := range inputs {
		vec := make([]float32, dims)
		var norm float64
		for j := range vec {
			vec[j] = float32(int64(g.next()%2001)-1000) / 1000
			norm += float64(vec[j]) * float64(vec[j])
		}
		for j := range vec {
			vec[j] = float32(float64(vec[j]) / math.Sqrt(max(norm, 1e-9)))
		}
		var e any = vec
		if req.EncodingFormat == "base64" {
			b := make([]byte, 4*dims)
			for j, v := range vec {
				binary.LittleEndian.PutUint32(b[4*j:], math.Float32bits(v))
			}
			e = base64.StdEncoding.EncodeToString(b)
		}
		resp.Data = append(resp.Data, embedding{Object: "embedding", Index: i, Embedding: e})
	}
	u := usage{PromptTokens: prompt, TotalTokens: prompt}
	entry := LedgerEntry{RequestID: c.id, Model: req.Model, Dialect: DialectEmbeddings, Computed: Tokens{InputTokens: prompt}, NoUsage: c.k.noUsage, Complete: true}
	if !c.k.noUsage {
		resp.Usage = &u
		entry.Usage = []json.RawMessage{marshal(u)}
		entry.Reported = entry.Computed
	}
	p.ledger.add(entry)
	w.Header().Set("openai-processing-ms", processingMS(c.start))
	writeJSON(w, http.StatusOK, resp)
}
