package accounting

import (
	"testing"
	"time"
	_ "time/tzdata" // hermetic zone data: the DST cases must not depend on the host's tzdata
)

func mustLoc(t testing.TB, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatalf("LoadLocation(%s): %v", name, err)
	}
	return loc
}

func TestParseWindowKind(t *testing.T) {
	tests := []struct {
		in   string
		want WindowKind
		ok   bool
	}{
		{"day", Day, true}, {"week", Week, true}, {"month", Month, true},
		{"Day", "", false}, {"daily", "", false}, {"", "", false}, {" day", "", false}, {"year", "", false},
	}
	for _, tc := range tests {
		got, err := ParseWindowKind(tc.in)
		if got != tc.want || (err == nil) != tc.ok {
			t.Errorf("ParseWindowKind(%q) = %q, %v; want %q, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func FuzzParseWindowKind(f *testing.F) {
	for _, s := range []string{"day", "week", "month", "DAY", "", "mon", "month\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		k, err := ParseWindowKind(s)
		if err != nil {
			if k != "" {
				t.Fatalf("error with kind %q", k)
			}
			return
		}
		if string(k) != s {
			t.Fatalf("ParseWindowKind(%q) = %q", s, k)
		}
		if start, end := WindowAt(k, time.UTC, time.Unix(0, 0)); !start.Before(end) {
			t.Fatalf("accepted kind %q gives an empty window", k)
		}
	})
}

func TestWindowAt(t *testing.T) {
	// Times are written in the zone under test; the expected window's length
	// is asserted as well as its bounds, since DST shows up there.
	tests := []struct {
		name       string
		kind       WindowKind
		zone       string
		now        string
		start, end string
		length     time.Duration
	}{
		{"utc day", Day, "UTC", "2026-11-21 08:30", "2026-11-21 00:00", "2026-11-22 00:00", 24 * time.Hour},
		{"day starts inclusive", Day, "UTC", "2026-11-21 00:00", "2026-11-21 00:00", "2026-11-22 00:00", 24 * time.Hour},
		{"day ends exclusive", Day, "UTC", "2026-11-21 23:59:59.999999999", "2026-11-21 00:00", "2026-11-22 00:00", 24 * time.Hour},

		{"new york spring forward: 23h day", Day, "America/New_York", "2026-03-08 12:00", "2026-03-08 00:00", "2026-03-09 00:00", 23 * time.Hour},
		{"new york fall back: 25h day", Day, "America/New_York", "2026-11-01 01:30", "2026-11-01 00:00", "2026-11-02 00:00", 25 * time.Hour},
		{"berlin spring forward: 23h day", Day, "Europe/Berlin", "2026-03-29 03:30", "2026-03-29 00:00", "2026-03-30 00:00", 23 * time.Hour},
		{"berlin fall back: 25h day", Day, "Europe/Berlin", "2026-10-25 23:00", "2026-10-25 00:00", "2026-10-26 00:00", 25 * time.Hour},
		{"lord howe: 30-minute DST end, 24.5h day", Day, "Australia/Lord_Howe", "2026-04-05 10:00", "2026-04-05 00:00", "2026-04-06 00:00", 24*time.Hour + 30*time.Minute},
		{"lord howe: 30-minute DST start, 23.5h day", Day, "Australia/Lord_Howe", "2026-10-04 10:00", "2026-10-04 00:00", "2026-10-05 00:00", 23*time.Hour + 30*time.Minute},
		// DST began at midnight: 00:00 never happened, the day began at 01:00.
		{"são paulo: skipped midnight", Day, "America/Sao_Paulo", "2018-11-04 12:00", "2018-11-04 01:00", "2018-11-05 00:00", 23 * time.Hour},
		{"são paulo: day before the skipped midnight", Day, "America/Sao_Paulo", "2018-11-03 23:30", "2018-11-03 00:00", "2018-11-04 01:00", 24 * time.Hour},
		{"havana: skipped midnight", Day, "America/Havana", "2024-03-10 00:00", "2024-03-10 01:00", "2024-03-11 00:00", 23 * time.Hour},
		// DST ended at 01:00 back to 00:00: the day starts at the first midnight.
		{"havana: repeated midnight hour", Day, "America/Havana", "2024-11-03 12:00", "2024-11-03 00:00", "2024-11-04 00:00", 25 * time.Hour},
		{"east of utc: tokyo", Day, "Asia/Tokyo", "2026-11-21 08:30", "2026-11-21 00:00", "2026-11-22 00:00", 24 * time.Hour},
		{"west of utc: pago pago", Day, "Pacific/Pago_Pago", "2026-11-21 08:30", "2026-11-21 00:00", "2026-11-22 00:00", 24 * time.Hour},
		{"utc+14: kiritimati", Day, "Pacific/Kiritimati", "2026-01-01 00:30", "2026-01-01 00:00", "2026-01-02 00:00", 24 * time.Hour},
		// Samoa skipped 2011-12-30 entirely (−10 → +14): the 29th ran into the 31st.
		{"samoa: the day that did not exist", Day, "Pacific/Apia", "2011-12-29 23:00", "2011-12-29 00:00", "2011-12-31 00:00", 24 * time.Hour},

		{"week: saturday", Week, "UTC", "2026-11-21 08:30", "2026-11-16 00:00", "2026-11-23 00:00", 7 * 24 * time.Hour},
		{"week: sunday belongs to the week before", Week, "UTC", "2026-11-22 23:59", "2026-11-16 00:00", "2026-11-23 00:00", 7 * 24 * time.Hour},
		{"week: monday midnight starts a new one", Week, "UTC", "2026-11-23 00:00", "2026-11-23 00:00", "2026-11-30 00:00", 7 * 24 * time.Hour},
		{"week across the new year", Week, "Europe/Berlin", "2027-01-01 12:00", "2026-12-28 00:00", "2027-01-04 00:00", 7 * 24 * time.Hour},
		{"week with spring forward", Week, "America/New_York", "2026-03-08 12:00", "2026-03-02 00:00", "2026-03-09 00:00", 7*24*time.Hour - time.Hour},
		{"week with fall back", Week, "Europe/Berlin", "2026-10-22 12:00", "2026-10-19 00:00", "2026-10-26 00:00", 7*24*time.Hour + time.Hour},

		{"month: november", Month, "UTC", "2026-11-21 08:30", "2026-11-01 00:00", "2026-12-01 00:00", 30 * 24 * time.Hour},
		{"month: december to january", Month, "America/New_York", "2026-12-31 23:59", "2026-12-01 00:00", "2027-01-01 00:00", 31 * 24 * time.Hour},
		{"month: january", Month, "America/New_York", "2027-01-01 00:00", "2027-01-01 00:00", "2027-02-01 00:00", 31 * 24 * time.Hour},
		{"month: february, leap year", Month, "UTC", "2024-02-29 12:00", "2024-02-01 00:00", "2024-03-01 00:00", 29 * 24 * time.Hour},
		{"month: february, common year", Month, "UTC", "2026-02-28 23:00", "2026-02-01 00:00", "2026-03-01 00:00", 28 * 24 * time.Hour},
		{"month: february 2000, leap century", Month, "UTC", "2000-02-15 00:00", "2000-02-01 00:00", "2000-03-01 00:00", 29 * 24 * time.Hour},
		{"month: february 2100, common century", Month, "UTC", "2100-02-15 00:00", "2100-02-01 00:00", "2100-03-01 00:00", 28 * 24 * time.Hour},
		{"month with spring forward", Month, "Europe/Berlin", "2026-03-15 00:00", "2026-03-01 00:00", "2026-04-01 00:00", 31*24*time.Hour - time.Hour},
		{"month with fall back", Month, "America/New_York", "2026-11-30 23:00", "2026-11-01 00:00", "2026-12-01 00:00", 30*24*time.Hour + time.Hour},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			loc := mustLoc(t, tc.zone)
			now, start, end := parseLocal(t, tc.now, loc), parseLocal(t, tc.start, loc), parseLocal(t, tc.end, loc)
			gotStart, gotEnd := WindowAt(tc.kind, loc, now)
			if !gotStart.Equal(start) || !gotEnd.Equal(end) {
				t.Fatalf("WindowAt(%s) = [%v, %v), want [%v, %v)", tc.now, gotStart, gotEnd, start, end)
			}
			if got := gotEnd.Sub(gotStart); got != tc.length {
				t.Fatalf("window lasts %v, want %v", got, tc.length)
			}
			if gotStart.Location() != loc || gotEnd.Location() != loc {
				t.Fatalf("bounds in %v and %v, want %v", gotStart.Location(), gotEnd.Location(), loc)
			}
		})
	}
}

// parseLocal reads "2006-01-02 15:04[:05[.999999999]]" in loc. For wall
// times that do not exist (skipped by DST) it takes the instant right after
// the jump, which is what the test cases mean.
func parseLocal(t *testing.T, s string, loc *time.Location) time.Time {
	t.Helper()
	for _, layout := range []string{"2006-01-02 15:04", "2006-01-02 15:04:05.999999999"} {
		v, err := time.ParseInLocation(layout, s, loc)
		if err != nil {
			continue
		}
		if v.In(loc).Format(layout) != s {
			// time.Date resolved a skipped wall time to before the jump.
			_, end := v.ZoneBounds()
			return end
		}
		return v
	}
	t.Fatalf("bad time %q", s)
	return time.Time{}
}

func TestWindowAtNilLocationIsUTC(t *testing.T) {
	now := time.Date(2026, 11, 21, 8, 30, 0, 0, mustLoc(t, "Asia/Kolkata"))
	start, end := WindowAt(Day, nil, now)
	if !start.Equal(time.Date(2026, 11, 21, 0, 0, 0, 0, time.UTC)) || !end.Equal(time.Date(2026, 11, 22, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("WindowAt(nil loc) = [%v, %v)", start, end)
	}
}

func TestUnknownKindGivesZeroWindows(t *testing.T) {
	now := time.Date(2026, 11, 21, 8, 30, 0, 0, time.UTC)
	if s, e := WindowAt("year", time.UTC, now); !s.IsZero() || !e.IsZero() {
		t.Fatalf("WindowAt(year) = [%v, %v)", s, e)
	}
	if w := WindowsAround("", time.UTC, now); w != ([3][2]time.Time{}) {
		t.Fatalf("WindowsAround(\"\") = %v", w)
	}
}

func TestWindowsAround(t *testing.T) {
	tests := []struct {
		kind WindowKind
		zone string
		now  string
		want [4]string // the four boundaries
	}{
		{Day, "America/New_York", "2026-03-08 12:00", [4]string{"2026-03-07 00:00", "2026-03-08 00:00", "2026-03-09 00:00", "2026-03-10 00:00"}},
		{Week, "Europe/Berlin", "2027-01-01 12:00", [4]string{"2026-12-21 00:00", "2026-12-28 00:00", "2027-01-04 00:00", "2027-01-11 00:00"}},
		{Month, "Asia/Tokyo", "2027-01-01 05:00", [4]string{"2026-12-01 00:00", "2027-01-01 00:00", "2027-02-01 00:00", "2027-03-01 00:00"}},
		{Month, "America/Los_Angeles", "2024-02-29 23:00", [4]string{"2024-01-01 00:00", "2024-02-01 00:00", "2024-03-01 00:00", "2024-04-01 00:00"}},
		{Day, "America/Sao_Paulo", "2018-11-03 12:00", [4]string{"2018-11-02 00:00", "2018-11-03 00:00", "2018-11-04 01:00", "2018-11-05 00:00"}},
	}
	for _, tc := range tests {
		t.Run(string(tc.kind)+" "+tc.zone+" "+tc.now, func(t *testing.T) {
			loc := mustLoc(t, tc.zone)
			got := WindowsAround(tc.kind, loc, parseLocal(t, tc.now, loc))
			var want [3][2]time.Time
			for i := range 3 {
				want[i] = [2]time.Time{parseLocal(t, tc.want[i], loc), parseLocal(t, tc.want[i+1], loc)}
			}
			for i := range 3 {
				if !got[i][0].Equal(want[i][0]) || !got[i][1].Equal(want[i][1]) {
					t.Fatalf("window %d = %v, want %v", i, got[i], want[i])
				}
			}
		})
	}
}

// zonesUnderTest covers both hemispheres, both sides of UTC, half-hour and
// 45-minute offsets, 30-minute DST, DST at midnight, and a skipped day.
var zonesUnderTest = []string{
	"UTC", "America/New_York", "Europe/Berlin", "Australia/Lord_Howe", "America/Sao_Paulo",
	"America/Havana", "Asia/Kolkata", "Asia/Kathmandu", "Pacific/Chatham", "Pacific/Apia",
	"Pacific/Kiritimati", "America/St_Johns", "Asia/Beirut", "Africa/Casablanca",
}

// checkWindowInvariants asserts what every window must satisfy whatever the
// zone does: it contains now, it is what WindowAt says at its own start and
// just before its end, WindowsAround agrees and tiles, the length is sane, and
// the start falls on the right local calendar boundary.
func checkWindowInvariants(t *testing.T, kind WindowKind, loc *time.Location, now time.Time) {
	t.Helper()
	start, end := WindowAt(kind, loc, now)
	if now.Before(start) || !now.Before(end) {
		t.Fatalf("%s %v at %v: [%v, %v) does not contain now", kind, loc, now, start, end)
	}
	if s, e := WindowAt(kind, loc, start); !s.Equal(start) || !e.Equal(end) {
		t.Fatalf("%s %v: WindowAt(start %v) = [%v, %v), want [%v, %v)", kind, loc, start, s, e, start, end)
	}
	if s, e := WindowAt(kind, loc, end.Add(-1)); !s.Equal(start) || !e.Equal(end) {
		t.Fatalf("%s %v: WindowAt(end-1ns) = [%v, %v), want [%v, %v)", kind, loc, s, e, start, end)
	}
	around := WindowsAround(kind, loc, now)
	if !around[1][0].Equal(start) || !around[1][1].Equal(end) ||
		!around[0][1].Equal(start) || !around[2][0].Equal(end) {
		t.Fatalf("%s %v at %v: WindowsAround %v disagrees with [%v, %v)", kind, loc, now, around, start, end)
	}
	if s, e := WindowAt(kind, loc, end); !s.Equal(end) || !e.Equal(around[2][1]) {
		t.Fatalf("%s %v: the window after [%v, %v) is [%v, %v), want [%v, %v)", kind, loc, start, end, s, e, around[2][0], around[2][1])
	}
	// Offsets change by at most a day (Samoa's skipped day), so lengths stay
	// within a day of the nominal.
	var lo, hi time.Duration
	switch kind {
	case Day:
		lo, hi = 0, 48*time.Hour
	case Week:
		lo, hi = 6*24*time.Hour-1, 8*24*time.Hour
	case Month:
		lo, hi = 27*24*time.Hour, 32*24*time.Hour
	}
	if l := end.Sub(start); l <= lo || l > hi {
		t.Fatalf("%s %v: [%v, %v) lasts %v", kind, loc, start, end, l)
	}
	ls := start.In(loc)
	if h, m, _ := ls.Clock(); h > 1 || (h == 1 && m > 0) {
		// Only a DST jump at midnight moves a start off 00:00, and only to ≤ 01:00.
		t.Fatalf("%s %v: window starts at local %v", kind, loc, ls)
	}
	switch {
	case kind == Week && ls.Weekday() != time.Monday && loc.String() != "Pacific/Apia":
		t.Fatalf("week %v starts on %v", loc, ls)
	case kind == Month && ls.Day() != 1:
		t.Fatalf("month %v starts on %v", loc, ls)
	}
}

func TestWindowInvariantsAcrossZonesAndYears(t *testing.T) {
	from := time.Date(2010, 12, 1, 0, 0, 0, 0, time.UTC)
	to := time.Date(2012, 2, 1, 0, 0, 0, 0, time.UTC)
	from2 := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	to2 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	// A step that is not a divisor of an hour lands at every minute offset over time.
	const step = 97 * time.Minute
	for _, zone := range zonesUnderTest {
		loc := mustLoc(t, zone)
		for _, kind := range []WindowKind{Day, Week, Month} {
			for _, r := range [][2]time.Time{{from, to}, {from2, to2}} {
				for now := r[0]; now.Before(r[1]); now = now.Add(step) {
					checkWindowInvariants(t, kind, loc, now)
				}
			}
		}
	}
}

func FuzzWindowAt(f *testing.F) {
	f.Add(int64(1_541_300_400), uint8(4), uint8(0)) // São Paulo, 2018-11-04 (skipped midnight)
	f.Add(int64(1_730_610_000), uint8(5), uint8(0)) // Havana, 2024-11-03 (repeated hour)
	f.Add(int64(1_325_239_200), uint8(9), uint8(1)) // Apia, around the skipped 2011-12-30
	f.Add(int64(1_709_251_200), uint8(0), uint8(2)) // UTC, 2024-03-01
	f.Add(int64(-62_135_596_800), uint8(1), uint8(2))
	f.Add(int64(253_402_300_799), uint8(3), uint8(1))
	locs := make([]*time.Location, len(zonesUnderTest))
	for i, z := range zonesUnderTest {
		locs[i] = mustLoc(f, z)
	}
	kinds := []WindowKind{Day, Week, Month}
	f.Fuzz(func(t *testing.T, unix int64, zone, kind uint8) {
		// Years 1–9999: beyond them calendar arithmetic is not meaningful here.
		if unix < -62_135_596_800 || unix > 253_402_300_799-40*24*3600 {
			return
		}
		checkWindowInvariants(t, kinds[int(kind)%len(kinds)], locs[int(zone)%len(locs)], time.Unix(unix, 0))
	})
}

// TestWindowsCacheMatchesWindowsAround: the cached windows are exactly
// WindowsAround's at every instant, forward, backward and across DST
// changes and window ends.
func TestWindowsCacheMatchesWindowsAround(t *testing.T) {
	ny, err := time.LoadLocation("America/New_York")
	if err != nil {
		t.Skip(err)
	}
	for _, loc := range []*time.Location{nil, time.UTC, ny} {
		for _, kind := range []WindowKind{Day, Week, Month} {
			w := NewWindows(kind, loc)
			at := time.Date(2026, 3, 7, 22, 0, 0, 0, time.UTC)
			steps := []time.Duration{0, time.Hour, 5 * time.Hour, -7 * time.Hour, 26 * time.Hour, 24 * time.Hour * 9, -24 * time.Hour * 40, time.Nanosecond, -time.Nanosecond}
			for i := range 200 {
				at = at.Add(steps[i%len(steps)] + time.Duration(i)*17*time.Minute)
				if got, want := w.Around(at), WindowsAround(kind, loc, at); got != want {
					t.Fatalf("%s %v at %v: %v, want %v", kind, loc, at, got, want)
				}
			}
		}
	}
	if got := NewWindows("fortnight", nil).Around(time.Now()); got != ([3][2]time.Time{}) {
		t.Fatalf("unknown kind: %v", got)
	}
}
