package openai

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"strings"

	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// FilesPath is where files are uploaded: multipart/form-data with a purpose
// field and a file part (https://platform.openai.com/docs/api-reference/files/create).
const FilesPath = "/v1/files"

// BatchPurpose is the purpose of a batch input file.
const BatchPurpose = "batch"

// FileUpload is what tokenwarden reads of a POST /v1/files body: its
// purpose and, for a batch file, its requests.
type FileUpload struct {
	// Purpose is the form's purpose field, "" when the body has none (or
	// is not a form it could read).
	Purpose string
	// Lines are a batch file's requests; nil for any other purpose.
	Lines []BatchFileLine
}

// ErrNotForm is returned for a body that is not multipart/form-data.
var ErrNotForm = errors.New("not a multipart/form-data body")

// maxFormField bounds a form field other than the file that is read (the
// purpose); longer, the purpose is not one the API knows.
const maxFormField = 64

// ParseFileUpload reads a file upload from r, streaming: the form's parts
// are read in order, the file part, when the purpose is batch or not yet
// known (the form may put purpose after the file), read by ParseBatchFile
// within lim; the file of any other purpose is skipped unread. err is for
// a batch file only (Purpose is batch): one that cannot be estimated
// within lim, or a form that holds none. A body whose purpose is not batch
// returns nil and no lines, whatever its file holds.
func ParseFileUpload(contentType string, r io.Reader, lim BatchFileLimits) (FileUpload, error) {
	mt, params, err := mime.ParseMediaType(contentType)
	if err != nil || mt != "multipart/form-data" || params["boundary"] == "" {
		return FileUpload{}, ErrNotForm
	}
	mr := multipart.NewReader(r, params["boundary"])
	var up FileUpload
	var lines []BatchFileLine
	var fileErr error
	files := 0
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return up, batchOnly(&up, fmt.Errorf("%w: the form cannot be read: %v", ErrBatchFileInvalid, err))
		}
		switch p.FormName() {
		case "purpose":
			b, err := io.ReadAll(io.LimitReader(p, maxFormField+1))
			if err != nil {
				return up, batchOnly(&up, fmt.Errorf("%w: the form cannot be read: %v", ErrBatchFileInvalid, err))
			}
			if len(b) > maxFormField {
				b = nil // no purpose the API knows is this long
			}
			up.Purpose = strings.TrimSpace(string(b))
		case "file":
			files++
			if up.Purpose != "" && up.Purpose != BatchPurpose {
				continue // skipped unread by NextPart
			}
			lines, fileErr = ParseBatchFile(p, lim)
		}
	}
	if up.Purpose != BatchPurpose {
		return FileUpload{Purpose: up.Purpose}, nil
	}
	switch {
	case files != 1:
		return up, fmt.Errorf("%w: the form holds %d files, not one", ErrBatchFileInvalid, files)
	case fileErr != nil:
		return up, fileErr
	}
	up.Lines = lines
	return up, nil
}

// batchOnly returns err for a batch upload (or one whose purpose is not
// yet read), nil for any other purpose: what tokenwarden cannot read of
// someone else's upload is the provider's to judge.
func batchOnly(up *FileUpload, err error) error {
	if up.Purpose != "" && up.Purpose != BatchPurpose {
		return nil
	}
	return err
}

// ParseFileObject reads the id of the File object a successful upload
// answers (https://platform.openai.com/docs/api-reference/files/object).
func ParseFileObject(body []byte) (id string, err error) {
	var f struct {
		ID     string `json:"id"`
		Object string `json:"object"`
	}
	if err := json.Unmarshal(body, &f); err != nil || f.Object != "file" || !validObjectID(f.ID) {
		return "", fmt.Errorf("%w: not a file object", ErrBatchFileInvalid)
	}
	return f.ID, nil
}

// BatchesPath is where a batch is created; BatchPath(id) is one batch.
const BatchesPath = "/v1/batches"

// BatchCreate is what a POST /v1/batches body names
// (https://platform.openai.com/docs/api-reference/batch/create).
type BatchCreate struct {
	InputFileID string
	Endpoint    string
}

// ParseBatchCreate reads a batch creation body.
func ParseBatchCreate(body []byte) (BatchCreate, error) {
	var b struct {
		InputFileID string `json:"input_file_id"`
		Endpoint    string `json:"endpoint"`
	}
	if err := json.Unmarshal(body, &b); err != nil {
		return BatchCreate{}, wire.Invalid("the body is not a JSON object")
	}
	if !validObjectID(b.InputFileID) {
		return BatchCreate{}, wire.Invalid("input_file_id: required, a file id")
	}
	return BatchCreate{InputFileID: b.InputFileID, Endpoint: b.Endpoint}, nil
}

// BatchIDOfPath returns the batch id of GET /v1/batches/{id} (the query
// ignored); ok is false for any other path, cancel included.
func BatchIDOfPath(path string) (id string, ok bool) {
	id, ok = wire.PathID(path, BatchesPath+"/", "")
	return id, ok && validObjectID(id)
}

// validObjectID reports an id tokenwarden may keep and key a store record
// by: the API's ids (file-…, batch_…) are short and plain.
func validObjectID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}
