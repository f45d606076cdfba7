package limiter

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"
)

// ledger is what this replica has charged into the shared store's current
// budget windows, so that a store that lost its data (a restart without
// persistence, FLUSHALL) can have them rebuilt: every replica charges its
// own share again, under ids that make the rebuild happen once per store
// epoch. Charges younger than tailAge are kept one by one and rebuilt under
// their own request id (skipped if the new store already has that id: it
// was settled after the reset); older ones are summed per window, which
// keeps the ledger as small as tenants × windows.
type ledger struct {
	mu      sync.Mutex
	id      string // names this ledger's rebuild charges; kept in the file
	epoch   string // the store epoch the ledger was last charged under
	agg     map[ledgerKey]int64
	tail    []ledgerEntry
	tailAge time.Duration
	max     int
	path    string
	dirty   bool
}

type ledgerKey struct {
	Tenant string `json:"tenant"`
	Name   string `json:"name"`
	Start  int64  `json:"start"` // unix µs
	End    int64  `json:"end"`
}

type ledgerEntry struct {
	at      time.Time
	tenant  string
	id      string
	cost    int64
	windows []WindowCharge
}

type ledgerFile struct {
	ID    string      `json:"id"`
	Epoch string      `json:"epoch"`
	Sums  []ledgerSum `json:"sums"`
}

type ledgerSum struct {
	ledgerKey
	Cost int64 `json:"cost"`
}

const ledgerFileName = "ledger.json"

func newID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func openLedger(dir string, tailAge time.Duration, max int) (*ledger, error) {
	l := &ledger{id: newID(), agg: map[ledgerKey]int64{}, tailAge: tailAge, max: max}
	if dir == "" {
		return l, nil
	}
	l.path = filepath.Join(dir, ledgerFileName)
	b, err := os.ReadFile(l.path)
	if errors.Is(err, os.ErrNotExist) {
		return l, nil
	}
	if err != nil {
		return nil, fmt.Errorf("limiter: ledger: %w", err)
	}
	var f ledgerFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("limiter: ledger %s: %w", l.path, err)
	}
	l.id, l.epoch = f.ID, f.Epoch
	for _, s := range f.Sums {
		l.agg[s.ledgerKey] += s.Cost
	}
	return l, nil
}

// add records one charge the store took; false when the ledger is full.
func (l *ledger) add(at time.Time, tenant, id string, cost int64, windows []WindowCharge) bool {
	if cost == 0 || len(windows) == 0 {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.tail) >= l.max {
		return false
	}
	l.tail = append(l.tail, ledgerEntry{at: at, tenant: tenant, id: id, cost: cost, windows: windows})
	l.dirty = true
	return true
}

// roll sums tail entries older than tailAge into their windows and forgets
// windows that have ended: only current windows are rebuilt. It reports
// keys dropped because the ledger is full.
func (l *ledger) roll(now time.Time) (dropped int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	cut := 0
	for cut < len(l.tail) && now.Sub(l.tail[cut].at) >= l.tailAge {
		e := l.tail[cut]
		for _, w := range e.windows {
			k := ledgerKey{Tenant: e.tenant, Name: w.Name, Start: unixMicros(w.Window.Start), End: unixMicros(w.Window.End)}
			if _, ok := l.agg[k]; !ok && len(l.agg) >= l.max {
				dropped++
				continue
			}
			l.agg[k] += e.cost
		}
		cut++
	}
	l.tail = append(l.tail[:0], l.tail[cut:]...)
	n := unixMicros(now)
	for k := range l.agg {
		if k.End <= n {
			delete(l.agg, k)
			l.dirty = true
		}
	}
	if cut > 0 {
		l.dirty = true
	}
	return dropped
}

// rebuild returns the charges that put this replica's share of the current
// windows into a store whose epoch is epoch.
func (l *ledger) rebuild(epoch string) []ReconcileRequest {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []ReconcileRequest
	for k, cost := range l.agg {
		w := Window{Start: fromMicros(k.Start), End: fromMicros(k.End)}
		out = append(out, ReconcileRequest{
			Tenant:    k.Tenant,
			RequestID: "rb~" + l.id + "~" + epoch + "~" + k.Name + "~" + strconv.FormatInt(k.Start, 10),
			Cost:      cost, Windows: []WindowCharge{{Name: k.Name, Window: w}},
		})
	}
	for _, e := range l.tail {
		out = append(out, ReconcileRequest{Tenant: e.tenant, RequestID: e.id + "~rb~" + epoch, Unless: e.id, Cost: e.cost, Windows: e.windows})
	}
	return out
}

// setEpoch records the epoch charges go to; it returns the previous one.
func (l *ledger) setEpoch(epoch string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	prev := l.epoch
	if prev != epoch {
		l.epoch, l.dirty = epoch, true
	}
	return prev
}

// save writes the ledger's sums (tail included) to its file, if it has one
// and changed.
func (l *ledger) save() error {
	l.mu.Lock()
	if l.path == "" || !l.dirty {
		l.mu.Unlock()
		return nil
	}
	f := ledgerFile{ID: l.id, Epoch: l.epoch}
	sums := map[ledgerKey]int64{}
	for k, v := range l.agg {
		sums[k] += v
	}
	for _, e := range l.tail {
		for _, w := range e.windows {
			sums[ledgerKey{Tenant: e.tenant, Name: w.Name, Start: unixMicros(w.Window.Start), End: unixMicros(w.Window.End)}] += e.cost
		}
	}
	for k, v := range sums {
		f.Sums = append(f.Sums, ledgerSum{ledgerKey: k, Cost: v})
	}
	l.dirty = false
	path := l.path
	l.mu.Unlock()
	b, err := json.Marshal(f)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("limiter: ledger: %w", err)
	}
	return os.Rename(tmp, path)
}
