package route_test

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/mcpd/mcpd/route"
	bolt "go.etcd.io/bbolt"
)

// Pick: the lowest load (compared exactly), then the idlest, then the
// name; never an offline agent or one at its max_inflight; registrations
// end with their connections.
func Test_Pick(t *testing.T) {
	db, err := bolt.Open(filepath.Join(t.TempDir(), "state.db"), 0o600, &bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	up := func(fn func(tx *bolt.Tx) error) {
		t.Helper()
		if err := db.Update(fn); err != nil {
			t.Fatal(err)
		}
	}
	up(route.CreateBuckets)
	reg := func(now int64, agent, conn string, max int) {
		up(func(tx *bolt.Tx) error {
			_, err := route.Register(tx, now, route.RegisterArgs{Agent: agent, Conn: conn, Caps: []route.Cap{{Name: "c", MaxInflight: max}}})
			return err
		})
	}
	pick := func() string {
		var name string
		up(func(tx *bolt.Tx) error {
			a, err := route.Pick(tx, "c")
			if a != nil {
				name = a.Name
			}
			return err
		})
		return name
	}
	assign := func(now int64, agent string) {
		up(func(tx *bolt.Tx) error { return route.Assigned(tx, now, agent, "c") })
	}
	reg(10, "b", "n1/1/b", 3)
	reg(20, "a", "n1/1/a", 3)
	if got := pick(); got != "b" { // the idlest (active since 10)
		t.Fatalf("first pick %s, want b", got)
	}
	assign(30, "b")
	if got := pick(); got != "a" { // 0/3 < 1/3
		t.Fatalf("then %s, want a", got)
	}
	reg(40, "big", "n1/1/big", 9)
	assign(41, "a")
	assign(42, "big")
	assign(43, "big")
	// a and b at 1/3, big at 2/9 < 1/3.
	if got := pick(); got != "big" {
		t.Fatalf("by exact load: %s, want big", got)
	}
	reg(50, "full", "n1/1/full", 1)
	assign(51, "full")
	up(func(tx *bolt.Tx) error {
		_, err := route.ConnClosed(tx, 60, "n1/1/big")
		return err
	})
	if got := pick(); got != "b" { // a and b at 1/3: b idle since 30, a since 41
		t.Fatalf("after big went offline: %s, want b", got)
	}
	if !(route.Ratio{Inflight: 2, Max: 9}).Less(route.Ratio{Inflight: 1, Max: 3}) || (route.Ratio{Inflight: 1, Max: 3}).Less(route.Ratio{Inflight: 2, Max: 6}) {
		t.Fatal("Ratio.Less")
	}
	err = db.Update(func(tx *bolt.Tx) error {
		_, err := route.Register(tx, 70, route.RegisterArgs{Agent: "x", Conn: "n1/1/x", Caps: []route.Cap{{Name: "c", MaxInflight: 0}}})
		return err
	})
	if !errors.Is(err, route.ErrBadRequest) {
		t.Fatalf("max_inflight 0: %v", err)
	}
}
