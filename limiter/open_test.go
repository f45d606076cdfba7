package limiter

import (
	"testing"
	"time"

	"github.com/tokenwarden/tokenwarden/limiter/redistest"
)

// TestOpenedStoreKeepsOptionalInterfaces: the gate and the budgets report
// type-assert the store Open returns for Notes (OpenAI batch files, the
// batch ledger) and Rebinder (a batch's reservation renamed after the
// provider's id). The LeaseKeeper on top must forward both, or serve
// refuses every OpenAI batch and never rebinds an Anthropic one.
func TestOpenedStoreKeepsOptionalInterfaces(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	for _, c := range []struct {
		name string
		o    OpenOptions
	}{
		{"memory", OpenOptions{}},
		{"redis", OpenOptions{Redis: "redis://" + srv.Addr()}},
		{"redis-direct", OpenOptions{Redis: "redis://" + srv.Addr(), Direct: true}},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.o.Logger = quiet
			op, err := Open(c.o)
			if err != nil {
				t.Fatal(err)
			}
			defer op.Close()
			ns, ok := op.Store.(Notes)
			if !ok {
				t.Fatalf("%T is not Notes", op.Store)
			}
			rb, ok := op.Store.(Rebinder)
			if !ok {
				t.Fatalf("%T is not a Rebinder", op.Store)
			}
			org := newTenant("open-" + c.name)
			if err := ns.PutNote(ctxb, Note{Tenant: org, Key: "file-1", Value: []byte("est"), TTL: time.Hour}); err != nil {
				t.Fatal(err)
			}
			if v, ok, err := ns.GetNote(ctxb, org, "file-1"); err != nil || !ok || string(v) != "est" {
				t.Fatalf("note read back: %q %v %v", v, ok, err)
			}
			if err := ns.AddNoteCount(ctxb, org, "spent", 7, time.Hour); err != nil {
				t.Fatal(err)
			}
			if n, err := ns.NoteCounts(ctxb, org, []string{"spent"}); err != nil || len(n) != 1 || n[0] != 7 {
				t.Fatalf("counter: %v %v", n, err)
			}
			bs := []Budget{dayBudget("day", time.Now(), 1000)}
			mustAdmit(t, op.Store, AdmitRequest{Tenant: org, RequestID: "submit", Limits: Limits{LeaseTTL: time.Hour}, Cost: 600, Budgets: bs, Detached: true})
			if op.Leases != nil && op.Leases.Open() != 0 {
				t.Fatalf("the keeper tracks %d reservations; a detached one has no lease to renew and would never leave", op.Leases.Open())
			}
			if ok, err := rb.Rebind(ctxb, RebindRequest{Tenant: org, From: "submit", To: "batch:1"}); err != nil || !ok {
				t.Fatalf("rebind through the opened store: %v %v", ok, err)
			}
			if r := mustSettle(t, op.Store, SettleRequest{Tenant: org, RequestID: "batch:1", Cost: 250, Budgets: bs}); !r.Settled || r.Budgets[0].Spent != 250 {
				t.Fatalf("settle under the rebound id: %+v", r)
			}
		})
	}
}
