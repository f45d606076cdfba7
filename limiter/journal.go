package limiter

import (
	"bufio"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"
)

// Kinds of journal entries.
const (
	// OpCancel undoes an admission whose reply was lost.
	OpCancel = "cancel"
	// OpSettle is a settle the store did not take when it was made.
	OpSettle = "settle"
	// OpCharge is spend decided without the store (local or open failure
	// mode), or lost by it, to reconcile into its budget windows.
	OpCharge = "charge"
	// OpRebuild is this replica's share of budget windows a store reset
	// wiped, charged into the new store.
	OpRebuild = "rebuild"
	// KindPhantom is reported (besides OpCancel) for a cancel that found the
	// late admission had run in the store, and released it.
	KindPhantom = "phantom"
)

// journalOp is one thing this replica owes the shared store. Each is
// idempotent in the store (cancel by tombstone, settle by its record,
// charges by their marker id), so applying one twice — a crash between
// applying it and recording it done, a replay after a restart — changes
// nothing the second time.
type journalOp struct {
	Seq    uint64            `json:"seq"`
	Kind   string            `json:"kind"`
	At     time.Time         `json:"at"`
	Cancel *CancelRequest    `json:"cancel,omitempty"`
	Settle *SettleRequest    `json:"settle,omitempty"`
	Charge *ReconcileRequest `json:"charge,omitempty"`
	// AdmittedAt is when a settle's reservation was admitted on the store:
	// a settle the store no longer knows (it lost the reservation) is
	// charged instead, if it is young enough not to have expired there.
	AdmittedAt time.Time `json:"admitted_at,omitzero"`
	// Running marks a charge whose request has not ended: its Cost is the
	// estimate and is replaced when it settles. A later process replaying
	// the journal charges it at the estimate, as the store would charge an
	// expired reservation.
	Running bool `json:"running,omitempty"`
}

// journalLine is one line of the journal file: an entry (new, or replacing
// the one with the same Seq) or the Seq of one done.
type journalLine struct {
	Add  *journalOp `json:"add,omitempty"`
	Done uint64     `json:"done,omitempty"`
}

// journal is the bounded list of what this replica owes the shared store,
// kept in memory and, with a directory, appended to a file replayed at
// start. Without a directory it is lost when the process exits.
type journal struct {
	mu    sync.Mutex
	max   int
	seq   uint64
	ops   map[uint64]*journalOp
	path  string
	file  *os.File
	lines int
}

// journalFile is the journal's name inside its directory.
const journalFile = "journal.jsonl"

// openJournal loads dir's journal (dir may be empty: memory only). Entries
// still running in the file belong to a process that is gone: they are
// charged at their estimate.
func openJournal(dir string, size int) (*journal, error) {
	j := &journal{max: size, ops: map[uint64]*journalOp{}}
	if dir == "" {
		return j, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("limiter: journal: %w", err)
	}
	j.path = filepath.Join(dir, journalFile)
	if f, err := os.Open(j.path); err == nil {
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64<<10), 16<<20)
		for sc.Scan() {
			var l journalLine
			if json.Unmarshal(sc.Bytes(), &l) != nil {
				continue // a line cut by a crash mid-write
			}
			switch {
			case l.Add != nil:
				l.Add.Running = false
				j.ops[l.Add.Seq] = l.Add
				j.seq = max(j.seq, l.Add.Seq)
			case l.Done != 0:
				delete(j.ops, l.Done)
			}
		}
		f.Close()
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("limiter: journal: %w", err)
	}
	if err := j.rewrite(); err != nil {
		return nil, err
	}
	return j, nil
}

// add appends op and returns its Seq; false when the journal is full (the
// caller counts the drop).
func (j *journal) add(op journalOp) (uint64, bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if len(j.ops) >= j.max {
		return 0, false
	}
	j.seq++
	op.Seq = j.seq
	j.ops[op.Seq] = &op
	j.write(journalLine{Add: &op})
	return op.Seq, true
}

// update replaces the entry with op's Seq, if it is still there.
func (j *journal) update(op journalOp) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if _, ok := j.ops[op.Seq]; !ok {
		return
	}
	j.ops[op.Seq] = &op
	j.write(journalLine{Add: &op})
}

// done removes an applied entry; when none is left the file starts over.
func (j *journal) done(seq uint64) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if _, ok := j.ops[seq]; !ok {
		return
	}
	delete(j.ops, seq)
	j.write(journalLine{Done: seq})
	if j.file != nil && (len(j.ops) == 0 || j.lines > 4*len(j.ops)+4096) {
		_ = j.rewriteLocked()
	}
}

// ready returns the entries that can be applied now, oldest first.
func (j *journal) ready() []journalOp {
	j.mu.Lock()
	defer j.mu.Unlock()
	out := make([]journalOp, 0, len(j.ops))
	for _, op := range j.ops {
		if !op.Running {
			out = append(out, *op)
		}
	}
	slices.SortFunc(out, func(a, b journalOp) int { return cmp.Compare(a.Seq, b.Seq) })
	return out
}

// finishRunning makes every running entry ready at its estimate, at
// shutdown: their requests can no longer settle.
func (j *journal) finishRunning() {
	j.mu.Lock()
	defer j.mu.Unlock()
	for _, op := range j.ops {
		if op.Running {
			op.Running = false
			j.write(journalLine{Add: op})
		}
	}
}

func (j *journal) len() int {
	j.mu.Lock()
	defer j.mu.Unlock()
	return len(j.ops)
}

// persistent reports whether entries survive the process.
func (j *journal) persistent() bool { return j.path != "" }

func (j *journal) write(l journalLine) {
	if j.file == nil {
		return
	}
	b, err := json.Marshal(l)
	if err != nil {
		return
	}
	// One write per line with O_APPEND: a crash leaves at most the last
	// line cut, which loading skips. No fsync: the page cache survives the
	// process (a crash, SIGKILL, an OOM kill); only the node's own crash
	// loses the unsynced tail.
	if _, err := j.file.Write(append(b, '\n')); err == nil {
		j.lines++
	}
}

func (j *journal) rewrite() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.rewriteLocked()
}

// rewriteLocked writes the pending entries to a new file and renames it
// over the journal, so the file never holds more than the pending entries
// and a bounded tail of done ones.
func (j *journal) rewriteLocked() error {
	if j.path == "" {
		return nil
	}
	tmp := j.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("limiter: journal: %w", err)
	}
	w := bufio.NewWriter(f)
	seqs := make([]uint64, 0, len(j.ops))
	for s := range j.ops {
		seqs = append(seqs, s)
	}
	slices.Sort(seqs)
	for _, s := range seqs {
		b, _ := json.Marshal(journalLine{Add: j.ops[s]})
		w.Write(append(b, '\n'))
	}
	if err := errors.Join(w.Flush(), f.Sync(), f.Close()); err != nil {
		return fmt.Errorf("limiter: journal: %w", err)
	}
	if err := os.Rename(tmp, j.path); err != nil {
		return fmt.Errorf("limiter: journal: %w", err)
	}
	if j.file != nil {
		j.file.Close()
	}
	if j.file, err = os.OpenFile(j.path, os.O_APPEND|os.O_WRONLY, 0o600); err != nil {
		return fmt.Errorf("limiter: journal: %w", err)
	}
	j.lines = len(seqs)
	return nil
}

func (j *journal) close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.file == nil {
		return nil
	}
	err := j.rewriteLocked()
	j.file.Close()
	j.file = nil
	return err
}
