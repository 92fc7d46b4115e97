package task_test

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/mcpd/mcpd/route"
	"github.com/mcpd/mcpd/task"
	bolt "go.etcd.io/bbolt"
)

func (w *world) list(f task.ListFilter) *task.ListPage {
	w.t.Helper()
	var p *task.ListPage
	if err := w.db.View(func(tx *bolt.Tx) error {
		var err error
		p, err = task.List(tx, f)
		return err
	}); err != nil {
		w.t.Fatalf("list %+v: %v", f, err)
	}
	return p
}

func pageIDs(p *task.ListPage) string {
	var ids []string
	for _, k := range p.Tasks {
		ids = append(ids, k.ID)
	}
	return strings.Join(ids, " ")
}

// List walks the tasks newest first by the number of their ids (t10
// after t9, not between t1 and t2), filters them by state, capability,
// graph and roots, and pages with a cursor.
func Test_Task_List(t *testing.T) {
	w := newWorld(t)
	w.register("x", one(1))
	g1, _ := w.submit("origin", "", spec("a", "work"), spec("b", "work", "a")) // t1 assigned, t2 waiting
	h := spec("h", "work")
	h.Approval = true
	g2, _ := w.submit("origin", "", h) // t3 held
	g3, _ := w.submit("other", "", spec("p", "idle"), spec("q", "idle"), spec("r", "idle"))
	pa := w.take("x")
	if pa.Task.ID != g1.IDs["a"] {
		t.Fatalf("x got %s", pa.Task.ID)
	}
	sub, err := w.submit("x", pa.Task.ID, spec("s1", "idle"), spec("s2", "idle")) // t7 t8, under t1
	if err != nil {
		t.Fatal(err)
	}
	g5, _ := w.submit("origin", "", spec("u", "idle"), spec("v", "idle"), spec("z", "idle")) // t9 t10 t11
	// Ids count up across submissions, a submission's in its order.
	if g2.IDs["h"] != "t3" || g3.IDs["p"] != "t4" || sub.IDs["s1"] != "t7" || g5.IDs["u"] != "t9" || g5.IDs["z"] != "t11" {
		t.Fatalf("ids: %v %v %v %v", g2.IDs, g3.IDs, sub.IDs, g5.IDs)
	}

	all := "t11 t10 t9 t8 t7 t6 t5 t4 t3 t2 t1"
	if got := pageIDs(w.list(task.ListFilter{})); got != all {
		t.Fatalf("every task: %s", got)
	}
	// Pages of 3 make the same list; the last has no cursor.
	var walked []string
	cursor := ""
	for i := 0; ; i++ {
		p := w.list(task.ListFilter{Limit: 3, Before: cursor})
		if len(p.Tasks) > 3 || i > 5 {
			t.Fatalf("page %d: %s next %q", i, pageIDs(p), p.Next)
		}
		walked = append(walked, pageIDs(p))
		if p.Next == "" {
			break
		}
		if p.Next != p.Tasks[len(p.Tasks)-1].ID {
			t.Fatalf("next %q after %s", p.Next, pageIDs(p))
		}
		cursor = p.Next
	}
	if got := strings.Join(walked, " "); got != all || len(walked) != 4 {
		t.Fatalf("paged: %q", walked)
	}
	// A full last page has no cursor either (the walk looks one further).
	if p := w.list(task.ListFilter{Limit: 2, Before: "t3"}); pageIDs(p) != "t2 t1" || p.Next != "" {
		t.Fatalf("the last two: %s next %q", pageIDs(p), p.Next)
	}
	if p := w.list(task.ListFilter{Before: "t1"}); len(p.Tasks) != 0 || p.Tasks == nil {
		t.Fatalf("before the first: %+v", p)
	}
	if got := pageIDs(w.list(task.ListFilter{Before: "t999"})); got != all {
		t.Fatalf("before an id not made yet: %s", got)
	}

	// Filters.
	if got := pageIDs(w.list(task.ListFilter{States: []string{"held"}})); got != g2.IDs["h"] {
		t.Fatalf("held: %s", got)
	}
	if got := pageIDs(w.list(task.ListFilter{States: []string{"waiting", "assigned"}})); got != "t2 t1" {
		t.Fatalf("waiting or assigned: %s", got)
	}
	if got := pageIDs(w.list(task.ListFilter{Capability: "work"})); got != "t3 t2 t1" {
		t.Fatalf("capability work: %s", got)
	}
	if got := pageIDs(w.list(task.ListFilter{Capability: "idle", States: []string{"ready"}, Limit: 4})); got != "t11 t10 t9 t8" {
		t.Fatalf("ready idle tasks: %s", got)
	}
	// A graph is what was submitted in it, not what is delegated under it.
	if got := pageIDs(w.list(task.ListFilter{Graph: g1.Root})); got != "t2 t1" {
		t.Fatalf("graph %s: %s", g1.Root, got)
	}
	if p := w.list(task.ListFilter{Graph: g5.Root, Limit: 2}); pageIDs(p) != "t11 t10" || p.Next != "t10" {
		t.Fatalf("graph %s, a page of 2: %s next %q", g5.Root, pageIDs(p), p.Next)
	} else if p := w.list(task.ListFilter{Graph: g5.Root, Limit: 2, Before: p.Next}); pageIDs(p) != "t9" || p.Next != "" {
		t.Fatalf("graph %s, the second page: %s next %q", g5.Root, pageIDs(p), p.Next)
	}
	if got := pageIDs(w.list(task.ListFilter{Graph: sub.Root})); got != "t8 t7" {
		t.Fatalf("the delegated graph %s: %s", sub.Root, got)
	}
	if p := w.list(task.ListFilter{Graph: "g99"}); len(p.Tasks) != 0 || p.Next != "" {
		t.Fatalf("an unknown graph: %+v", p)
	}

	// Roots: one row per graph submitted with no parent, its first task.
	if got := pageIDs(w.list(task.ListFilter{Roots: true})); got != "t9 t4 t3 t1" {
		t.Fatalf("roots: %s", got)
	}
	if p := w.list(task.ListFilter{Roots: true, Limit: 2}); pageIDs(p) != "t9 t4" || p.Next != "t4" {
		t.Fatalf("roots, a page of 2: %s next %q", pageIDs(p), p.Next)
	} else if p := w.list(task.ListFilter{Roots: true, Limit: 2, Before: p.Next}); pageIDs(p) != "t3 t1" || p.Next != "" {
		t.Fatalf("roots, the second page: %s next %q", pageIDs(p), p.Next)
	}
	if got := pageIDs(w.list(task.ListFilter{Roots: true, States: []string{"held"}})); got != "t3" {
		t.Fatalf("held roots: %s", got)
	}
	if got := pageIDs(w.list(task.ListFilter{Roots: true, Graph: sub.Root})); got != "" {
		t.Fatalf("roots of a delegated graph: %s", got)
	}
	if got := pageIDs(w.list(task.ListFilter{Roots: true, Graph: g5.Root})); got != "t9" {
		t.Fatalf("root of %s: %s", g5.Root, got)
	}

	// A held task comes whole: what an approver reads before deciding.
	k := w.list(task.ListFilter{States: []string{"held"}}).Tasks[0]
	if k.Capability != "work" || !strings.Contains(string(k.Input), `"body":"h"`) || k.Intent != "find the bug" || k.Origin != "origin" ||
		!slices.Equal(k.Chain, []string{"origin"}) || k.Submitter() != "origin" || len(k.Hops) != 1 || k.Hops[0].Task != k.ID ||
		k.Created != t0 || !k.Approval || len(k.History) != 2 || k.History[1].Event != "held" {
		t.Fatalf("the held task: %+v", k)
	}
	// A delegated one carries its whole chain.
	if k := w.list(task.ListFilter{Graph: sub.Root, Limit: 1}).Tasks[0]; !slices.Equal(k.Chain, []string{"origin", "x"}) || len(k.Hops) != 2 || k.Parent != pa.Task.ID {
		t.Fatalf("a delegated task: %+v", k)
	}
}

func Test_Task_ListRefused(t *testing.T) {
	w := newWorld(t)
	w.register("x", route.Cap{Name: "work", MaxInflight: 1})
	for _, f := range []task.ListFilter{
		{States: []string{"running"}},
		{States: []string{"held", ""}},
		{Capability: "no spaces"},
		{Graph: "t1"},
		{Graph: "g"},
		{Graph: "g01"},
		{Before: "g1"},
		{Before: "t0"},
		{Before: "t-1"},
		{Before: "t99999999999999999999999"},
		{Limit: -1},
		{Limit: task.MaxListLimit + 1},
	} {
		err := w.db.View(func(tx *bolt.Tx) error {
			_, err := task.List(tx, f)
			return err
		})
		if !errors.Is(err, task.ErrBadRequest) {
			t.Errorf("%+v: %v", f, err)
		}
	}
	if p := w.list(task.ListFilter{Limit: task.MaxListLimit}); p.Tasks == nil || len(p.Tasks) != 0 || p.Next != "" {
		t.Fatalf("no tasks: %+v", p)
	}
}
