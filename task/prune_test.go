package task_test

import (
	"bytes"
	"slices"
	"testing"

	"github.com/mcpd/mcpd/route"
	"github.com/mcpd/mcpd/task"
	bolt "go.etcd.io/bbolt"
)

// candidates reads the root graphs PruneCandidates finds, following its
// cursor through slices of maxTasks.
func (w *world) candidates(before int64, maxTasks int) []string {
	w.t.Helper()
	var all []string
	after := ""
	for range 1000 {
		var roots []string
		var next string
		if err := w.db.View(func(tx *bolt.Tx) (err error) {
			roots, next, err = task.PruneCandidates(tx, before, after, maxTasks)
			return err
		}); err != nil {
			w.t.Fatal(err)
		}
		all = append(all, roots...)
		if next == "" {
			return all
		}
		if next == after {
			w.t.Fatalf("the cursor did not move from %q", after)
		}
		after = next
	}
	w.t.Fatal("the cursor never reached the end")
	return nil
}

func (w *world) prune(before int64, roots ...string) task.PruneResult {
	w.t.Helper()
	var res task.PruneResult
	w.must(func(tx *task.Tx) (err error) {
		res, err = tx.Prune(roots, before)
		return err
	})
	return res
}

// keys lists the keys of a bucket.
func (w *world) keys(bucket string) []string {
	var out []string
	_ = w.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte(bucket)).ForEach(func(k, v []byte) error {
			out = append(out, string(k))
			return nil
		})
	})
	return out
}

// A tree of tasks goes only when every task in it, delegated ones
// included, has ended before the cutoff; then it goes whole, with its
// lineage and dependency entries and its submissions' dedup records,
// and nothing else does.
func Test_Prune_WholeEndedTreesOnly(t *testing.T) {
	w := newWorld(t)
	w.register("editor", route.Cap{Name: "edit", MaxInflight: 10})
	w.register("reviewer", route.Cap{Name: "review", MaxInflight: 10})

	// Tree A: draft → polish, and a review delegated under draft. All end.
	a, _ := w.submit("origin", "", spec("draft", "edit"), spec("polish", "edit", "draft"))
	pd := w.take("editor")
	sub, err := w.submit("editor", pd.Task.ID, spec("r", "review"))
	if err != nil {
		t.Fatal(err)
	}
	w.done("reviewer", w.take("reviewer"), `"ok"`)
	w.done("editor", pd, `"draft"`)
	w.done("editor", w.take("editor"), `"polished"`)
	// Tree D: its root task ended, but what it delegated still runs.
	d, _ := w.submit("origin", "", spec("p", "edit"))
	pp := w.take("editor")
	dsub, err := w.submit("editor", pp.Task.ID, spec("c", "review"))
	if err != nil {
		t.Fatal(err)
	}
	w.take("reviewer")
	w.done("editor", pp, `"p"`)
	// Tree B: still assigned.
	b, _ := w.submit("origin", "", spec("x", "edit"))
	w.take("editor")
	ended := w.now
	// Tree C: cancelled later.
	w.now += 60_000
	c, _ := w.submit("origin", "", spec("y", "edit"))
	w.take("editor")
	w.must(func(tx *task.Tx) error {
		_, err := tx.Cancel(task.CancelArgs{Task: c.Root, Operator: "alice"})
		return err
	})
	w.now += 60_000

	cutoff := ended + 1
	if got := w.candidates(cutoff, 5000); !slices.Equal(got, []string{a.Root}) {
		t.Fatalf("candidates before the cutoff: %v, want %s", got, a.Root)
	}
	// Slices of one tree at a time find the same.
	if got := w.candidates(cutoff, 1); !slices.Equal(got, []string{a.Root}) {
		t.Fatalf("candidates one slice at a time: %v", got)
	}
	before := map[string]int{}
	for _, bk := range []string{"task.tasks", "task.lineage", "task.dependents", "task.submits"} {
		before[bk] = len(w.keys(bk))
	}
	// Named with trees that do not qualify: a sub-graph, an unfinished
	// tree, one that ended after the cutoff, one that is partly running,
	// and a graph that does not exist.
	res := w.prune(cutoff, sub.Root, b.Root, a.Root, c.Root, d.Root, "g999")
	if res != (task.PruneResult{Graphs: 1, Tasks: 3}) {
		t.Fatalf("pruned %+v, want the 3 tasks of tree %s", res, a.Root)
	}
	gone := []string{a.IDs["draft"], a.IDs["polish"], sub.IDs["r"]}
	for _, id := range gone {
		var k *task.Task
		_ = w.db.View(func(tx *bolt.Tx) (err error) { k, err = task.Get(tx, id); return err })
		if k != nil {
			t.Fatalf("task %s is still stored", id)
		}
	}
	for _, key := range w.keys("task.lineage") {
		anc, id, _ := bytes.Cut([]byte(key), []byte{0})
		if slices.Contains(gone, string(id)) || string(anc) == a.Root || string(anc) == sub.Root {
			t.Fatalf("lineage entry %q left", key)
		}
	}
	for _, key := range w.keys("task.dependents") {
		dep, id, _ := bytes.Cut([]byte(key), []byte{0})
		if slices.Contains(gone, string(id)) || slices.Contains(gone, string(dep)) {
			t.Fatalf("dependents entry %q left", key)
		}
	}
	// Lineage: draft and polish under their graph (2), r under the graph,
	// draft and its graph (3). Dependents: polish on draft. Submissions:
	// the root graph's and the delegated one's.
	for bk, want := range map[string]int{"task.tasks": 3, "task.lineage": 5, "task.dependents": 1, "task.submits": 2} {
		if got := before[bk] - len(w.keys(bk)); got != want {
			t.Errorf("%s: %d entries removed, want %d", bk, got, want)
		}
	}
	// The trees kept are whole.
	if got := w.states(d.IDs["p"], dsub.IDs["c"], b.IDs["x"], c.IDs["y"]); got != "succeeded assigned assigned cancelled" {
		t.Fatalf("kept trees: %s", got)
	}
	if again := w.prune(cutoff, a.Root); again != (task.PruneResult{}) {
		t.Fatalf("a second prune removed %+v", again)
	}
	var trees, tasks uint64
	_ = w.db.View(func(tx *bolt.Tx) error { trees, tasks = task.Pruned(tx); return nil })
	if trees != 1 || tasks != 3 {
		t.Fatalf("pruned counters %d trees %d tasks", trees, tasks)
	}
	// Later the cancelled tree passes the cutoff too.
	if got := w.candidates(w.now, 5000); !slices.Equal(got, []string{c.Root}) {
		t.Fatalf("candidates later: %v, want %s", got, c.Root)
	}
}

// A prune naming something other than graph ids, or too many, is
// refused and removes nothing.
func Test_Prune_Refused(t *testing.T) {
	w := newWorld(t)
	w.register("x", one(10))
	g, _ := w.submit("origin", "", spec("a", "work"))
	w.done("x", w.take("x"), `1`)
	w.now += 1000
	for _, roots := range [][]string{{g.Root, "t1"}, {g.Root, ""}, slices.Repeat([]string{g.Root}, task.MaxPruneRoots+1)} {
		err := w.do(func(tx *task.Tx) error { _, err := tx.Prune(roots, w.now); return err })
		if err == nil {
			t.Fatalf("prune %v: no error", roots[:2])
		}
	}
	if got := w.states(g.IDs["a"]); got != "succeeded" {
		t.Fatalf("state %s", got)
	}
}

// BenchmarkPruneCandidates reads one slice of retention's size from a
// store of 3,000 ended trees of three tasks each (a root graph of two and
// one task delegated under it), as the leader does every 10 s.
func BenchmarkPruneCandidates(b *testing.B) {
	w := newWorld(b)
	w.register("editor", route.Cap{Name: "edit", MaxInflight: 10})
	w.register("reviewer", route.Cap{Name: "review", MaxInflight: 10})
	for range 3000 {
		w.submit("origin", "", spec("a", "edit"), spec("b", "edit", "a"))
		pa := w.take("editor")
		if _, err := w.submit("editor", pa.Task.ID, spec("r", "review")); err != nil {
			b.Fatal(err)
		}
		w.done("reviewer", w.take("reviewer"), `1`)
		w.done("editor", pa, `1`)
		w.done("editor", w.take("editor"), `1`)
	}
	w.now += 1000
	for b.Loop() {
		var roots []string
		_ = w.db.View(func(tx *bolt.Tx) (err error) {
			roots, _, err = task.PruneCandidates(tx, w.now, "", 5000)
			return err
		})
		if len(roots) == 0 {
			b.Fatal("no candidates")
		}
	}
}
