package limiter

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"
)

func runNotesConformance(t *testing.T, h harness) {
	notes := func(s Store) Notes {
		n, ok := s.(Notes)
		if !ok {
			t.Fatalf("%T keeps no notes", s)
		}
		return n
	}
	t.Run("NotesAreSharedPerTenantAndExpire", func(t *testing.T) {
		org := newTenant("notes")
		a, b := notes(h.store), notes(h.replica)
		if err := a.PutNote(ctxb, Note{Tenant: org, Key: "file:f-1", Value: []byte("est 1"), TTL: time.Hour}); err != nil {
			t.Fatal(err)
		}
		ttl := 200*time.Millisecond + h.slack
		if err := a.PutNote(ctxb, Note{Tenant: org, Key: "file:short", Value: []byte("x"), TTL: ttl}); err != nil {
			t.Fatal(err)
		}
		if v, ok, err := b.GetNote(ctxb, org, "file:f-1"); err != nil || !ok || string(v) != "est 1" {
			t.Fatalf("the other replica reads %q %v %v", v, ok, err)
		}
		if _, ok, err := b.GetNote(ctxb, newTenant("other"), "file:f-1"); err != nil || ok {
			t.Fatalf("another tenant reads the note: %v %v", ok, err)
		}
		if err := b.PutNote(ctxb, Note{Tenant: org, Key: "file:f-1", Value: []byte("est 2"), TTL: time.Hour}); err != nil {
			t.Fatal(err)
		}
		if v, _, _ := a.GetNote(ctxb, org, "file:f-1"); string(v) != "est 2" {
			t.Fatalf("replaced note reads %q", v)
		}
		h.advance(ttl + 50*time.Millisecond)
		if _, ok, err := a.GetNote(ctxb, org, "file:short"); err != nil || ok {
			t.Fatalf("an expired note is still read: %v %v", ok, err)
		}
		if _, ok, _ := a.GetNote(ctxb, org, "file:f-1"); !ok {
			t.Fatal("a live note was lost")
		}
	})
	t.Run("NoteCountsAdd", func(t *testing.T) {
		org := newTenant("notecount")
		a, b := notes(h.store), notes(h.replica)
		for _, d := range []int64{5, 7} {
			if err := a.AddNoteCount(ctxb, org, "bs:202601", d, time.Hour); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.AddNoteCount(ctxb, org, "bs:202601", 1, time.Minute); err != nil { // a shorter ttl never cuts it
			t.Fatal(err)
		}
		got, err := b.NoteCounts(ctxb, org, []string{"bs:202601", "bs:202602"})
		if err != nil || len(got) != 2 || got[0] != 13 || got[1] != 0 {
			t.Fatalf("counts %v %v; want [13 0]", got, err)
		}
	})
	t.Run("NotesRejectInvalid", func(t *testing.T) {
		a := notes(h.store)
		for _, n := range []Note{
			{Tenant: "", Key: "k", TTL: time.Hour},
			{Tenant: "t", Key: "", TTL: time.Hour},
			{Tenant: "t", Key: "a{b}", TTL: time.Hour},
			{Tenant: "t", Key: strings.Repeat("k", MaxNoteKey+1), TTL: time.Hour},
			{Tenant: "t", Key: "k", TTL: 0},
			{Tenant: "t", Key: "k", TTL: time.Hour, Value: make([]byte, MaxNoteBytes+1)},
		} {
			if err := a.PutNote(ctxb, n); !errors.Is(err, ErrInvalid) {
				t.Errorf("%q/%q ttl %s %dB: %v, want ErrInvalid", n.Tenant, n.Key, n.TTL, len(n.Value), err)
			}
		}
	})
}

func TestMemoryNotesAreBounded(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	m := NewMemory(MemoryOptions{Now: func() time.Time { return now }})
	for i := range MaxMemoryNotes {
		if err := m.PutNote(ctxb, Note{Tenant: "t", Key: "k" + strconv.Itoa(i), TTL: time.Minute}); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.PutNote(ctxb, Note{Tenant: "t", Key: "one-more", TTL: time.Minute}); !errors.Is(err, ErrNotesFull) {
		t.Fatalf("past the bound: %v", err)
	}
	if err := m.PutNote(ctxb, Note{Tenant: "t", Key: "k1", TTL: time.Minute}); err != nil {
		t.Fatalf("replacing a note at the bound: %v", err)
	}
	now = now.Add(2 * time.Minute) // every note expired: room again
	if err := m.PutNote(ctxb, Note{Tenant: "t", Key: "one-more", TTL: time.Minute}); err != nil {
		t.Fatalf("after expiry: %v", err)
	}
}
