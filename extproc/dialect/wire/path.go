package wire

import "strings"

// PathID returns the id in a path of the form prefix + id + suffix (the
// query ignored), as the providers name a resource in their paths
// (/v1/files/{id}/content, /v1/messages/batches/{id}/results); ok is false
// for any other path or an empty id. The dialect checks the id's form.
func PathID(path, prefix, suffix string) (id string, ok bool) {
	p, _, _ := strings.Cut(path, "?")
	rest, ok := strings.CutPrefix(p, prefix)
	if !ok {
		return "", false
	}
	id, ok = strings.CutSuffix(rest, suffix)
	return id, ok && id != ""
}
