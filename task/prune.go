package task

import (
	"bytes"
	"fmt"

	"github.com/vmihailenco/msgpack/v5"
	bolt "go.etcd.io/bbolt"
)

// Retention: a tree of tasks (a graph submitted with no parent, the
// graphs delegated under its tasks, and so on down) is kept until every
// task in it has ended and the last of them changed longer ago than the
// retention; then it goes as a whole, with its index entries and its
// submissions' dedup records. A tree goes whole so that what is kept
// always holds a task's parent, dependencies and dependents.
//
// The leader finds the trees (PruneCandidates, a read) and proposes
// them; every replica checks each again at the command's time and
// removes those that still qualify (Prune), so a tree that changed in
// between, or a proposal a stale leader made, removes nothing it should
// not.

// MaxPruneRoots bounds the trees one prune command names.
const MaxPruneRoots = 1000

// pruneView is the part of a stored task Prune reads.
type pruneView struct {
	ID      string   `msgpack:"id"`
	Graph   string   `msgpack:"g"`
	Deps    []string `msgpack:"dp,omitempty"`
	Lineage []string `msgpack:"ln"`
	Chain   []string `msgpack:"ch"`
	Hops    []Hop    `msgpack:"hp"`
	State   string   `msgpack:"s"`
	Updated int64    `msgpack:"up"`
}

// tree loads every task a root graph reaches, when root is a root graph
// (the tasks submitted in it have no parent). ok is false when it is
// not, or reaches nothing.
func tree(tx *bolt.Tx, root string) (ks []*pruneView, ok bool, err error) {
	b := tx.Bucket(bucketTasks)
	for _, id := range Reached(tx, root) {
		raw := b.Get([]byte(id))
		if raw == nil {
			return nil, false, fmt.Errorf("graph %s reaches task %q, which is not stored", root, id)
		}
		k := &pruneView{}
		if err := msgpack.Unmarshal(raw, k); err != nil {
			return nil, false, fmt.Errorf("decode task %q: %w", id, err)
		}
		if len(k.Lineage) == 0 || k.Lineage[0] != root {
			return nil, false, nil
		}
		ks = append(ks, k)
	}
	return ks, len(ks) > 0, nil
}

// expired reports whether every task of a tree has ended, the last
// change before the time before.
func expired(ks []*pruneView, before int64) bool {
	for _, k := range ks {
		if !Final(k.State) || k.Updated >= before {
			return false
		}
	}
	return true
}

// PruneCandidates lists, from a read transaction, the root graphs after
// the graph id after (in the order of the lineage index) whose trees
// have all ended before the time before. It reads the tasks of at most
// about maxTasks trees' worth and at most MaxPruneRoots roots; next is
// the cursor to go on from, "" when the index was read to its end.
func PruneCandidates(tx *bolt.Tx, before int64, after string, maxTasks int) (roots []string, next string, err error) {
	c := tx.Bucket(bucketLineage).Cursor()
	seek := []byte("g")
	if after != "" {
		seek = append([]byte(after), 1) // past every key of after
	}
	read := 0
	for k, _ := c.Seek(seek); k != nil && k[0] == 'g'; k, _ = c.Seek(seek) {
		i := bytes.IndexByte(k, 0)
		if i < 0 {
			return nil, "", fmt.Errorf("lineage key %q has no separator", k)
		}
		g := string(k[:i])
		seek = append([]byte(g), 1)
		if read >= maxTasks || len(roots) >= MaxPruneRoots {
			return roots, after, nil
		}
		after = g
		ks, ok, err := tree(tx, g)
		if err != nil {
			return nil, "", err
		}
		read += max(len(ks), 1)
		if ok && expired(ks, before) {
			roots = append(roots, g)
		}
	}
	return roots, "", nil
}

// PruneResult is what Prune removed.
type PruneResult struct {
	Graphs int `msgpack:"g" json:"graphs"` // root graphs (trees)
	Tasks  int `msgpack:"t" json:"tasks"`
}

// Prune removes the trees of the root graphs named whose tasks have all
// ended, the last change before the time before; it skips the others
// (no longer a tree that qualifies, or not a root graph at all).
func (t *Tx) Prune(roots []string, before int64) (PruneResult, error) {
	var res PruneResult
	if len(roots) > MaxPruneRoots {
		return res, bad("roots: at most %d", MaxPruneRoots)
	}
	for _, g := range roots {
		if _, ok := idSeq(g, "g"); !ok {
			return res, bad("root %q: a graph id, like g1", g)
		}
	}
	// What earlier commands of the entry changed is written first, so
	// the trees are read as they are and nothing removed is written back.
	if err := t.flush(); err != nil {
		return res, err
	}
	for _, g := range roots {
		ks, ok, err := tree(t.tx, g)
		if err != nil {
			return res, err
		}
		if !ok || !expired(ks, before) {
			continue
		}
		if err := t.remove(ks); err != nil {
			return res, err
		}
		res.Graphs++
		res.Tasks += len(ks)
	}
	if res.Graphs > 0 {
		if _, err := t.add(counterPrunedTrees, uint64(res.Graphs)); err != nil {
			return res, err
		}
		if _, err := t.add(counterPrunedTasks, uint64(res.Tasks)); err != nil {
			return res, err
		}
	}
	return res, nil
}

// Counters of what retention removed since the store began.
const (
	counterPrunedTrees = "pruned.trees"
	counterPrunedTasks = "pruned.tasks"
)

// Pruned reads how many trees and tasks retention has removed.
func Pruned(tx *bolt.Tx) (trees, tasks uint64) {
	return counterValue(tx, counterPrunedTrees), counterValue(tx, counterPrunedTasks)
}

// remove deletes ended tasks with their lineage and dependency entries,
// and the dedup record of each graph's submission. Ended tasks have no
// timer, lease or routing entry.
func (t *Tx) remove(ks []*pruneView) error {
	// Each graph's first task (the lowest id): its submission's key
	// names that task's envelope.
	var graphs []string
	first := map[string]*pruneView{}
	for _, k := range ks {
		if f := first[k.Graph]; f == nil {
			graphs = append(graphs, k.Graph)
			first[k.Graph] = k
		} else if lessID(k.ID, f.ID) {
			first[k.Graph] = k
		}
		if err := t.b(bucketTasks).Delete([]byte(k.ID)); err != nil {
			return err
		}
		for _, anc := range k.Lineage {
			if err := t.b(bucketLineage).Delete(pairKey(anc, k.ID)); err != nil {
				return err
			}
		}
		for _, d := range k.Deps {
			if err := t.b(bucketDependents).Delete(pairKey(d, k.ID)); err != nil {
				return err
			}
		}
	}
	for _, g := range graphs {
		k := first[g]
		if len(k.Chain) == 0 || len(k.Hops) == 0 {
			continue
		}
		key := pairKey(k.Chain[len(k.Chain)-1], envID(k.Hops[len(k.Hops)-1].Env))
		raw := t.b(bucketSubmits).Get(key)
		if raw == nil {
			continue
		}
		var rec submitRec
		if err := msgpack.Unmarshal(raw, &rec); err != nil {
			return fmt.Errorf("decode submission %q: %w", key, err)
		}
		if rec.Root == g {
			if err := t.b(bucketSubmits).Delete(key); err != nil {
				return err
			}
		}
	}
	return nil
}

// lessID orders task ids by their number ("t9" before "t10").
func lessID(a, b string) bool {
	na, _ := taskSeq(a)
	nb, _ := taskSeq(b)
	return na < nb
}
