package task

import (
	"encoding/binary"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/mcpd/mcpd/route"
	"github.com/vmihailenco/msgpack/v5"
	bolt "go.etcd.io/bbolt"
)

// Bounds of a page of List.
const (
	DefaultListLimit = 100
	MaxListLimit     = 1000
)

// States lists the task states, from waiting to the end states.
var States = []string{StateWaiting, StateHeld, StateReady, StateAssigned, StateSucceeded, StateFailed, StateCancelled}

// ListFilter selects the tasks List answers. Every field set must hold.
type ListFilter struct {
	States     []string // in one of these states; none: any state
	Capability string   // of this capability
	// Graph is a graph id (a submit's root): the tasks submitted in it,
	// not those delegated under them (which are in graphs of their own).
	Graph string
	// Roots keeps one task per graph submitted with no parent (not
	// delegated under a task): the first task of its submission. The
	// other filters apply to that task.
	Roots  bool
	Before string // a task id, the cursor of a page: only tasks created before it
	Limit  int    // 1 to MaxListLimit; 0 is DefaultListLimit
}

// ListPage is a page of List: tasks newest first, and the cursor of the
// next page (Before), "" when there is none.
type ListPage struct {
	Tasks []*Task
	Next  string
}

// idSeq is the number of an id newID made with prefix: prefix and the
// value of that counter ("t7", "g3"). Task ids' numbers give the order
// tasks were created in (the bucket's key order does not: "t10" sorts
// before "t2"). ok is false for anything else.
func idSeq(id, prefix string) (uint64, bool) {
	s, ok := strings.CutPrefix(id, prefix)
	if !ok || s == "" || s[0] == '0' || len(s) > 20 {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 64)
	return n, err == nil
}

func taskSeq(id string) (uint64, bool) { return idSeq(id, "t") }

func taskID(n uint64) string { return "t" + strconv.FormatUint(n, 10) }

// Check validates a filter: unknown states, malformed ids or capability
// names and limits out of bounds are ErrBadRequest.
func (f *ListFilter) Check() error {
	for _, s := range f.States {
		if !slices.Contains(States, s) {
			return bad("state %q: one of %s", s, strings.Join(States, ", "))
		}
	}
	if f.Capability != "" && !route.ValidCapName(f.Capability) {
		return bad("capability %q: %s", f.Capability, route.CapNameRule)
	}
	if _, ok := idSeq(f.Graph, "g"); f.Graph != "" && !ok {
		return bad("graph %q: a graph id, like g1", f.Graph)
	}
	if _, ok := taskSeq(f.Before); f.Before != "" && !ok {
		return bad("before %q: a task id, like t1 (the next cursor of the previous page)", f.Before)
	}
	if f.Limit < 0 || f.Limit > MaxListLimit {
		return bad("limit: 1 to %d", MaxListLimit)
	}
	return nil
}

// listHead is the part of a stored task List filters on, decoded
// without the rest (input, hops, history).
type listHead struct {
	State      string `msgpack:"s"`
	Capability string `msgpack:"c"`
	Graph      string `msgpack:"g"`
	Parent     string `msgpack:"p,omitempty"`
}

func readHead(b *bolt.Bucket, id string) (*listHead, error) {
	raw := b.Get([]byte(id))
	if raw == nil {
		return nil, nil
	}
	var h listHead
	if err := msgpack.Unmarshal(raw, &h); err != nil {
		return nil, fmt.Errorf("decode task %q: %w", id, err)
	}
	return &h, nil
}

// List reads a page of tasks, newest first, from any transaction: at
// most Limit of those the filter selects, created before the cursor.
//
// Tasks are never deleted and their ids count up, so List walks the ids
// down from the newest (or from the cursor) and needs no index nor sort.
// Each task is decoded only as far as its state, capability, graph and
// parent until it matches. The walk stops at the first match beyond
// Limit (that makes Next): without filters it reads Limit+1 tasks, but
// a filter that few tasks match reads every older task at worst, as
// CountStates does. With Graph it reads only the tasks under that graph
// (the lineage index).
func List(tx *bolt.Tx, f ListFilter) (*ListPage, error) {
	if err := f.Check(); err != nil {
		return nil, err
	}
	limit := f.Limit
	if limit == 0 {
		limit = DefaultListLimit
	}
	b := tx.Bucket(bucketTasks)

	// The candidates' numbers, newest first: every id below the cursor,
	// or those of the graph.
	var from uint64
	if v := tx.Bucket(bucketCounters).Get([]byte("t")); len(v) == 8 {
		from = binary.BigEndian.Uint64(v)
	}
	if n, ok := taskSeq(f.Before); ok && n-1 < from {
		from = n - 1
	}
	var next func() (uint64, bool)
	if f.Graph != "" {
		var seqs []uint64
		for _, id := range Reached(tx, f.Graph) {
			if n, ok := taskSeq(id); ok && n <= from {
				seqs = append(seqs, n)
			}
		}
		slices.Sort(seqs)
		next = func() (uint64, bool) {
			if len(seqs) == 0 {
				return 0, false
			}
			n := seqs[len(seqs)-1]
			seqs = seqs[:len(seqs)-1]
			return n, true
		}
	} else {
		n := from + 1
		next = func() (uint64, bool) {
			if n <= 1 {
				return 0, false
			}
			n--
			return n, true
		}
	}

	page := &ListPage{Tasks: []*Task{}}
	for n, ok := next(); ok; n, ok = next() {
		id := taskID(n)
		h, err := readHead(b, id)
		if err != nil {
			return nil, err
		}
		if h == nil ||
			(len(f.States) > 0 && !slices.Contains(f.States, h.State)) ||
			(f.Capability != "" && h.Capability != f.Capability) ||
			(f.Graph != "" && h.Graph != f.Graph) {
			continue
		}
		if f.Roots {
			if h.Parent != "" {
				continue
			}
			// A submission's tasks take consecutive ids: the first of
			// its graph is the one whose predecessor is in another.
			if n > 1 {
				prev, err := readHead(b, taskID(n-1))
				if err != nil {
					return nil, err
				}
				if prev != nil && prev.Graph == h.Graph {
					continue
				}
			}
		}
		if len(page.Tasks) == limit {
			page.Next = page.Tasks[limit-1].ID
			break
		}
		k, err := Get(tx, id)
		if err != nil {
			return nil, err
		}
		page.Tasks = append(page.Tasks, k)
	}
	return page, nil
}
