package schedule_test

import (
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/mcpd/mcpd/schedule"
	bolt "go.etcd.io/bbolt"
)

func mustDB(t *testing.T) *bolt.DB {
	t.Helper()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "state.db"), 0o600, &bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := db.Update(schedule.CreateBuckets); err != nil {
		t.Fatal(err)
	}
	return db
}

func ms(s string) int64 {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t.UnixMilli()
}

func def(name, expr, misfire string) schedule.Schedule {
	return schedule.Schedule{Name: name, Cron: expr, Misfire: misfire, Origin: "rhythm", Action: schedule.Action{Queue: "jobs"}}
}

// Due: each tick within the grace fires; older ticks follow the policy.
func Test_Due(t *testing.T) {
	base := ms("2026-11-30T06:00:00Z")
	for _, c := range []struct {
		name    string
		s       schedule.Schedule
		last    int64
		now     int64
		grace   int64
		want    string
		wantErr bool
	}{
		{"nothing due yet", def("a", "* * * * * *", "skip"), base, base + 999, 5000, "[]", false},
		{"one second", def("a", "* * * * * *", "skip"), base, base + 1000, 5000, "[{1000 false 0}]", false},
		{"three within grace", def("a", "* * * * * *", "skip"), base, base + 3500, 5000, "[{1000 false 0} {2000 false 0} {3000 false 0}]", false},
		{"late ticks skipped", def("a", "* * * * * *", "skip"), base, base + 10_500, 5000, "[{5000 true 5} {6000 false 0} {7000 false 0} {8000 false 0} {9000 false 0} {10000 false 0}]", false},
		{"late ticks once", def("a", "* * * * * *", "once"), base, base + 10_500, 5000, "[{5000 false 4} {6000 false 0} {7000 false 0} {8000 false 0} {9000 false 0} {10000 false 0}]", false},
		{"daily at 06:30 in Paris, an hour late", schedule.Schedule{Name: "d", Cron: "30 6 * * *", TZ: "Europe/Paris", Misfire: "once", Origin: "o", Action: schedule.Action{Queue: "q"}},
			base - 86_400_000, base + 3600_000, 60_000, "[{-1800000 false 0}]", false}, // 05:30Z, UTC+1 in November
		{"bad expression", def("a", "61 * * * *", "skip"), base, base + 1000, 5000, "", true},
		{"bad zone", schedule.Schedule{Name: "z", Cron: "* * * * *", TZ: "Mars/Olympus", Misfire: "skip"}, base, base, 0, "", true},
		{"paused", schedule.Schedule{Name: "p", Cron: "* * * * * *", Misfire: "skip", Paused: true}, base, base + 9000, 5000, "[]", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := c.s
			s.Last = c.last
			got, err := schedule.Due(&s, c.now, c.grace)
			if (err != nil) != c.wantErr {
				t.Fatalf("err %v", err)
			}
			if err != nil {
				return
			}
			var out []string
			for _, p := range got {
				out = append(out, fmt.Sprintf("{%d %v %d}", p.Tick-base, p.Skip, p.Missed))
			}
			if g := fmt.Sprint(out); g != c.want && !(len(out) == 0 && c.want == "[]") {
				t.Fatalf("got %s, want %s", g, c.want)
			}
		})
	}
}

// A tick fires once: a second claim of it, or of an earlier one, is a
// conflict; pausing refuses ticks and resuming does not catch up; the
// history keeps the newest MaxHistory firings.
func Test_ClaimOnce(t *testing.T) {
	db := mustDB(t)
	base := ms("2026-11-30T06:00:00Z")
	up := func(fn func(tx *bolt.Tx) error) error { return db.Update(fn) }
	if err := up(func(tx *bolt.Tx) error { return schedule.Add(tx, base, def("r", "* * * * * *", "skip")) }); err != nil {
		t.Fatal(err)
	}
	if err := up(func(tx *bolt.Tx) error { return schedule.Add(tx, base, def("r", "* * * * * *", "skip")) }); !errors.Is(err, schedule.ErrConflict) {
		t.Fatalf("a second add: %v", err)
	}
	fire := func(tick int64) error {
		return up(func(tx *bolt.Tx) error {
			s, err := schedule.Claim(tx, "r", tick)
			if err != nil {
				return err
			}
			return schedule.Record(tx, s, schedule.Firing{Tick: tick, At: tick})
		})
	}
	if err := fire(base + 1000); err != nil {
		t.Fatal(err)
	}
	for _, tick := range []int64{base + 1000, base + 500, base} {
		if err := fire(tick); !errors.Is(err, schedule.ErrConflict) {
			t.Fatalf("tick +%d again: %v", tick-base, err)
		}
	}
	if err := up(func(tx *bolt.Tx) error { return schedule.Set(tx, base+1500, "r", "pause") }); err != nil {
		t.Fatal(err)
	}
	if err := fire(base + 2000); !errors.Is(err, schedule.ErrConflict) {
		t.Fatalf("a paused schedule fired: %v", err)
	}
	if err := up(func(tx *bolt.Tx) error { return schedule.Set(tx, base+60_000, "r", "resume") }); err != nil {
		t.Fatal(err)
	}
	var s *schedule.Schedule
	_ = db.View(func(tx *bolt.Tx) error { s, _ = schedule.Load(tx, "r"); return nil })
	if plans, _ := schedule.Due(s, base+61_000, 5000); len(plans) != 1 || plans[0].Tick != base+61_000 {
		t.Fatalf("after resume: %+v", plans)
	}
	for i := range schedule.MaxHistory + 5 {
		if err := fire(base + 61_000 + int64(i)*1000); err != nil {
			t.Fatal(err)
		}
	}
	var h []schedule.Firing
	_ = db.View(func(tx *bolt.Tx) error {
		h, _ = schedule.History(tx, "r", 0)
		s, _ = schedule.Load(tx, "r")
		return nil
	})
	if len(h) != schedule.MaxHistory || h[0].Tick != base+61_000+5000 || s.Fired != int64(schedule.MaxHistory+6) {
		t.Fatalf("history %d from +%d, fired %d", len(h), h[0].Tick-base, s.Fired)
	}
	if err := up(func(tx *bolt.Tx) error { return schedule.Set(tx, base, "r", "delete") }); err != nil {
		t.Fatal(err)
	}
	_ = db.View(func(tx *bolt.Tx) error {
		for _, b := range schedule.Buckets {
			if n := tx.Bucket(b).Stats().KeyN; n != 0 {
				t.Errorf("%s: %d entries after delete", b, n)
			}
		}
		return nil
	})
}
