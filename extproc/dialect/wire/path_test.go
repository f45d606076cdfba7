package wire

import "testing"

func TestPathID(t *testing.T) {
	cases := []struct {
		path, prefix, suffix, id string
		ok                       bool
	}{
		{"/v1/files/file-1/content", "/v1/files/", "/content", "file-1", true},
		{"/v1/files/file-1/content?x=1", "/v1/files/", "/content", "file-1", true},
		{"/v1/files//content", "/v1/files/", "/content", "", false},
		{"/v1/files/file-1", "/v1/files/", "/content", "", false},
		{"/v1/batches/batch_1", "/v1/batches/", "", "batch_1", true},
		{"/v1/batches/", "/v1/batches/", "", "", false},
		{"/v2/batches/batch_1", "/v1/batches/", "", "", false},
	}
	for _, c := range cases {
		if id, ok := PathID(c.path, c.prefix, c.suffix); id != c.id && ok || ok != c.ok {
			t.Errorf("PathID(%q, %q, %q) = %q, %v; want %q, %v", c.path, c.prefix, c.suffix, id, ok, c.id, c.ok)
		}
	}
}
