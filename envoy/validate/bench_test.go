package validate

import "testing"

// BenchmarkValidateBootstrap measures a full decode + deep walk + checks of envoy.yaml.
func BenchmarkValidateBootstrap(b *testing.B) {
	doc := readFile(b, "../envoy.yaml")
	b.SetBytes(int64(len(doc)))
	for b.Loop() {
		if _, err := ValidateBootstrap(doc); err != nil {
			b.Fatal(err)
		}
	}
}
