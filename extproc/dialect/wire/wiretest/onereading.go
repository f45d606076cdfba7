// Package wiretest holds test support for the dialect packages: checks that
// hold a parser's reading of a request to what other JSON decoders read.
package wiretest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// Kind is how a governed field is compared.
type Kind int

const (
	String Kind = iota // a string value
	Bool               // a boolean
	Number             // a number, compared as float64
	Count              // an array, compared by its length
)

// OneReading reads the governed top-level keys of a body a dialect's parser
// accepted, two ways: Go's encoding/json into a struct (it matches keys
// case-insensitively and keeps the last of duplicates, as Go servers do)
// and an exact-key decoder that sees every member in order (as
// case-sensitive servers read it). It fails t when a governed key appears
// twice or in another spelling — two providers could then read the body two
// ways, and the parser must have refused it — or when the two decoders
// disagree. It returns each key's value (a string, bool, float64 or int
// count; nil when absent or null), for the caller to compare with what its
// parser read.
func OneReading(t testing.TB, body []byte, keys map[string]Kind) map[string]any {
	t.Helper()
	members, err := topLevel(body)
	if err != nil {
		t.Fatalf("an accepted body is not a JSON object: %v\n%q", err, body)
	}
	names := make([]string, 0, len(keys))
	for k := range keys {
		names = append(names, k)
	}
	fields := make([]reflect.StructField, len(names))
	for i, k := range names {
		var zero any
		switch keys[k] {
		case String:
			zero = ""
		case Bool:
			zero = false
		case Number:
			zero = json.Number("")
		case Count:
			zero = []json.RawMessage(nil)
		}
		fields[i] = reflect.StructField{Name: fmt.Sprintf("F%d", i), Type: reflect.PointerTo(reflect.TypeOf(zero)),
			Tag: reflect.StructTag(`json:"` + k + `"`)}
	}
	st := reflect.New(reflect.StructOf(fields))
	if err := json.Unmarshal(body, st.Interface()); err != nil {
		t.Fatalf("encoding/json cannot read an accepted body's governed fields: %v\n%q", err, body)
	}
	out := map[string]any{}
	for i, k := range names {
		var exact []json.RawMessage
		for _, m := range members {
			switch {
			case m.key == k:
				exact = append(exact, m.raw)
			case strings.EqualFold(m.key, k): // Unicode simple folding, as encoding/json matches
				t.Fatalf("accepted a body with %q next to governed key %q: a case-insensitive decoder reads it as %s\n%q", m.key, k, k, body)
			}
		}
		if len(exact) > 1 {
			t.Fatalf("accepted a body with %d %q keys\n%q", len(exact), k, body)
		}
		var viaStruct any
		if f := st.Elem().Field(i); !f.IsNil() {
			viaStruct = decoded(f.Elem().Interface())
		}
		var viaExact any
		if len(exact) == 1 {
			var v any
			d := json.NewDecoder(bytes.NewReader(exact[0]))
			d.UseNumber()
			if err := d.Decode(&v); err != nil {
				t.Fatal(err)
			}
			viaExact = decoded(v)
		}
		if !reflect.DeepEqual(viaStruct, viaExact) {
			t.Fatalf("%s: encoding/json reads %#v, an exact-key decoder %#v\n%q", k, viaStruct, viaExact, body)
		}
		out[k] = viaStruct
	}
	return out
}

type member struct {
	key string
	raw json.RawMessage
}

// topLevel lists the members of a JSON object in order, duplicates kept.
func topLevel(body []byte) ([]member, error) {
	d := json.NewDecoder(bytes.NewReader(body))
	tok, err := d.Token()
	if err != nil || tok != json.Delim('{') {
		return nil, fmt.Errorf("not an object: %v", err)
	}
	var out []member
	for d.More() {
		k, err := d.Token()
		if err != nil {
			return nil, err
		}
		var raw json.RawMessage
		if err := d.Decode(&raw); err != nil {
			return nil, err
		}
		out = append(out, member{k.(string), raw})
	}
	return out, nil
}

func decoded(v any) any {
	switch x := v.(type) {
	case json.Number:
		f, _ := x.Float64()
		return f
	case []json.RawMessage:
		return len(x)
	case []any:
		return len(x)
	}
	return v
}
