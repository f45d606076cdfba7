package gemini

import (
	"strconv"

	"github.com/tokenwarden/tokenwarden/extproc/dialect/wire"
)

// ErrorBody builds {"error":{"code":..,"message":..,"status":..}}, the
// Gemini API's error shape (https://ai.google.dev/gemini-api/docs/troubleshooting),
// which the genai SDKs parse into their APIError: code is the HTTP status,
// status its canonical name.
func ErrorBody(code int, status, message string) []byte {
	b := make([]byte, 0, 64+len(status)+len(message))
	b = append(b, `{"error":{"code":`...)
	b = strconv.AppendInt(b, int64(code), 10)
	b = append(b, `,"message":`...)
	b = wire.AppendJSONString(b, message)
	b = append(b, `,"status":`...)
	b = wire.AppendJSONString(b, status)
	return append(b, "}}"...)
}
