package wire

import (
	"strings"
	"testing"
)

func TestServiceTier(t *testing.T) {
	long := strings.Repeat("x", MaxServiceTierLength)
	for _, tc := range []struct {
		name, doc, cur, want string
	}{
		{"a string", `{"t":"flex"}`, "", "flex"},
		{"replaces the current one", `{"t":"priority"}`, "default", "priority"},
		{"escapes decoded", `{"t":"pr\u0069ority"}`, "", "priority"},
		{"absent keeps cur", `{}`, "flex", "flex"},
		{"null keeps cur", `{"t":null}`, "flex", "flex"},
		{"empty keeps cur", `{"t":""}`, "flex", "flex"},
		{"a number is no tier", `{"t":1}`, "flex", "flex"},
		{"an object is no tier", `{"t":{"t":"x"}}`, "", ""},
		{"at the bound", `{"t":"` + long + `"}`, "", long},
		{"over the bound", `{"t":"` + long + `x"}`, "flex", "flex"},
		{"escaped over the bound", `{"t":"` + strings.Repeat(`\u0078`, MaxServiceTierLength+1) + `"}`, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var v [1]Value
			if !Lookup([]byte(tc.doc), []string{"t"}, v[:]) {
				t.Fatal("invalid test document")
			}
			if got := ServiceTier(v[0], tc.cur); got != tc.want {
				t.Errorf("ServiceTier = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestServiceTierRepeatedDoesNotAllocate(t *testing.T) {
	var v [1]Value
	Lookup([]byte(`{"t":"priority"}`), []string{"t"}, v[:])
	cur := ServiceTier(v[0], "")
	if n := testing.AllocsPerRun(100, func() { cur = ServiceTier(v[0], cur) }); n != 0 {
		t.Errorf("allocations = %v, want 0", n)
	}
}
