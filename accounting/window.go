package accounting

import (
	"fmt"
	"sync/atomic"
	"time"
)

// WindowKind is the length of a budget window. Windows are calendar-aligned
// in a time zone: a day is midnight to midnight local time (23 or 25 hours
// across a DST change), a week starts Monday 00:00 (ISO 8601), a month is a
// calendar month (28–31 days), not 30 days.
type WindowKind string

// The window kinds, spelled as in tokenwarden.yaml.
const (
	Day   WindowKind = "day"
	Week  WindowKind = "week"
	Month WindowKind = "month"
)

// ParseWindowKind accepts exactly "day", "week" or "month".
func ParseWindowKind(s string) (WindowKind, error) {
	switch k := WindowKind(s); k {
	case Day, Week, Month:
		return k, nil
	}
	return "", fmt.Errorf("budget window %q: want day, week or month", s)
}

// WindowAt returns the window of the given kind that contains now, as the
// half-open interval [start, end): start ≤ now < end always holds, and the end
// of one window is exactly the start of the next. A nil loc means UTC.
//
// A window starts at the first instant of its first local calendar day. Where
// a DST change skips local midnight (clocks jump from 23:59:59 to 01:00), that
// is the instant of the jump. An unknown kind (not from ParseWindowKind)
// yields zero times.
func WindowAt(kind WindowKind, loc *time.Location, now time.Time) (start, end time.Time) {
	w, ok := locate(kind, loc, now)
	if !ok {
		return time.Time{}, time.Time{}
	}
	return w.start(0), w.start(1)
}

// WindowsAround returns the previous, current and next windows around now,
// each as {start, end}; consecutive windows share their boundary. An unknown
// kind yields zero times.
func WindowsAround(kind WindowKind, loc *time.Location, now time.Time) [3][2]time.Time {
	w, ok := locate(kind, loc, now)
	if !ok {
		return [3][2]time.Time{}
	}
	start, end := w.start(0), w.start(1)
	prev, next := w.neighbour(-1, start), w.neighbour(2, end)
	return [3][2]time.Time{{prev, start}, {start, end}, {end, next}}
}

// neighbour returns start(n), or start(n±1) and so on away from the current
// period, skipping periods that are empty because the zone skipped their
// whole calendar day (Pacific/Apia has no 2011-12-30); edge is the boundary
// the result must lie strictly beyond.
func (w window) neighbour(n int, edge time.Time) time.Time {
	dir := 1
	if n < 0 {
		dir = -1
	}
	t := w.start(n)
	// A zone skips at most one calendar day at a time, so one more step
	// always reaches a non-empty period.
	for range 2 {
		if t.Compare(edge) == dir {
			break
		}
		n += dir
		t = w.start(n)
	}
	return t
}

// window identifies one calendar period by the local date inside it.
type window struct {
	kind    WindowKind
	loc     *time.Location
	y, d    int
	m       time.Month
	shifted int // periods to add to the one containing (y, m, d)
}

// locate finds the period containing now. Computing it from now's local date
// is right except where a DST change moves local time back across midnight,
// making local dates non-monotonic; the loop then steps to the neighbouring
// period so that start ≤ now < end holds whatever the zone does.
func locate(kind WindowKind, loc *time.Location, now time.Time) (window, bool) {
	switch kind {
	case Day, Week, Month:
	default:
		return window{}, false
	}
	if loc == nil {
		loc = time.UTC
	}
	y, m, d := now.In(loc).Date()
	w := window{kind: kind, loc: loc, y: y, m: m, d: d}
	// A few steps suffice: offsets change by at most a day, and only a
	// period of one skipped day can be empty.
	for range 4 {
		switch {
		case now.Before(w.start(0)):
			w.shifted--
		case !now.Before(w.start(1)):
			w.shifted++
		default:
			return w, true
		}
	}
	return w, true
}

// start returns the first instant of the period n periods after w's.
func (w window) start(n int) time.Time {
	n += w.shifted
	y, m, d := w.y, w.m, w.d
	switch w.kind {
	case Day:
		d += n
	case Week:
		wd := time.Date(y, m, d, 12, 0, 0, 0, time.UTC).Weekday()
		d += -(int(wd)+6)%7 + 7*n // back to Monday, then n weeks on
	case Month:
		m += time.Month(n)
		d = 1
	}
	return dayStart(y, m, d, w.loc)
}

// dayStart returns the first instant of local date (y, m, d), which may be
// unnormalised (day 32, month 13). time.Date resolves a local midnight that a
// DST jump skips to an instant before it, on the previous day; the day then
// really begins where that zone period ends, at the jump.
func dayStart(y int, m time.Month, d int, loc *time.Location) time.Time {
	t := time.Date(y, m, d, 0, 0, 0, 0, loc)
	want := time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
	ty, tm, td := t.Date()
	if time.Date(ty, tm, td, 0, 0, 0, 0, time.UTC).Before(want) {
		_, end := t.ZoneBounds()
		if !end.IsZero() {
			return end
		}
	}
	return t
}

// Windows keeps WindowsAround of one kind and zone for the instants of the
// current window: every admission asks for the same windows until the
// window ends, and working them out (calendar arithmetic in the zone, three
// times) was a measurable part of each request. The zero value is not
// ready; use NewWindows. Safe for concurrent use.
type Windows struct {
	kind WindowKind
	loc  *time.Location
	last atomic.Pointer[[3][2]time.Time]
}

// NewWindows returns the windows of kind in loc (nil means UTC).
func NewWindows(kind WindowKind, loc *time.Location) *Windows {
	return &Windows{kind: kind, loc: loc}
}

// Around is WindowsAround(kind, loc, now). The answer for the last window
// asked about is reused while now lies inside its current window (start ≤
// now < end); any other instant, earlier or later, is worked out afresh, so
// a clock that moves back (a test's) gets exact answers too.
func (w *Windows) Around(now time.Time) [3][2]time.Time {
	if ws := w.last.Load(); ws != nil && !now.Before(ws[1][0]) && now.Before(ws[1][1]) {
		return *ws
	}
	ws := WindowsAround(w.kind, w.loc, now)
	if !ws[1][0].IsZero() {
		w.last.Store(&ws)
	}
	return ws
}
