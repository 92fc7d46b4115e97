package task

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/mcpd/mcpd/route"
	"github.com/vmihailenco/msgpack/v5"
	bolt "go.etcd.io/bbolt"
)

// Buckets of state.db this package owns.
var (
	bucketTasks      = []byte("task.tasks")      // id -> Task
	bucketReady      = []byte("task.ready")      // capability 0 seq(8) -> id: routable tasks, oldest first
	bucketDependents = []byte("task.dependents") // dep 0 id -> nil
	bucketLineage    = []byte("task.lineage")    // ancestor 0 id -> nil: the tasks a graph or task reaches
	bucketTimers     = []byte("task.timers")     // at(8) id -> nil: lease ends and retry times
	bucketCounters   = []byte("task.counters")   // name -> uint64
	bucketSensitive  = []byte("task.sensitive")  // capability -> operator: tasks held for approval
	bucketHeld       = []byte("task.held")       // agent 0 id -> nil: the tasks assigned to an agent
	bucketSubmits    = []byte("task.submits")    // from 0 envelope id -> submitRec: submissions, for retries
)

// Buckets lists them for CreateBuckets and dumps.
var Buckets = [][]byte{bucketTasks, bucketReady, bucketDependents, bucketLineage, bucketTimers, bucketCounters, bucketSensitive, bucketHeld, bucketSubmits}

// CreateBuckets makes sure every bucket exists.
func CreateBuckets(tx *bolt.Tx) error {
	for _, b := range Buckets {
		if _, err := tx.CreateBucketIfNotExists(b); err != nil {
			return fmt.Errorf("create bucket %s: %w", b, err)
		}
	}
	return nil
}

// Effect is something a command produced for a connection (or, with an
// empty target, for every node). It matches package queue's Effect.
type Effect interface{ Target() string }

// Tx is one command's view: the bbolt write transaction, the stamped
// time, the local node, and the effects produced.
type Tx struct {
	tx    *bolt.Tx
	now   int64
	local string
	dirty map[string]bool // capabilities with tasks or room to route
	cache map[string]*Task
	order []string // ids in cache, in load order
	ended int      // tasks cancel ended, dependents included

	Effects []Effect
}

// NewTx wraps a bbolt write transaction at time now on node local. Its
// maps are made when a command first needs them: most entries carry no
// task command.
func NewTx(tx *bolt.Tx, now int64, local string) *Tx {
	return &Tx{tx: tx, now: now, local: local}
}

func (t *Tx) markDirty(capName string) {
	if t.dirty == nil {
		t.dirty = map[string]bool{}
	}
	t.dirty[capName] = true
}

func (t *Tx) b(name []byte) *bolt.Bucket { return t.tx.Bucket(name) }

func (t *Tx) isLocal(conn string) bool {
	node, _, ok := strings.Cut(conn, "/")
	return t.local != "" && ok && node == t.local
}

func (t *Tx) next(counter string) (uint64, error) { return t.add(counter, 1) }

// add adds d to a counter and returns its new value.
func (t *Tx) add(counter string, d uint64) (uint64, error) {
	n := counterValue(t.tx, counter) + d
	return n, t.b(bucketCounters).Put([]byte(counter), binary.BigEndian.AppendUint64(nil, n))
}

func counterValue(tx *bolt.Tx, counter string) uint64 {
	if v := tx.Bucket(bucketCounters).Get([]byte(counter)); len(v) == 8 {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

func (t *Tx) newID(prefix string) (string, error) {
	n, err := t.next(prefix)
	return prefix + strconv.FormatUint(n, 10), err
}

// load returns a task, or nil. Loaded tasks are written back by flush.
func (t *Tx) load(id string) (*Task, error) {
	if k, ok := t.cache[id]; ok {
		return k, nil
	}
	raw := t.b(bucketTasks).Get([]byte(id))
	if raw == nil {
		return nil, nil
	}
	k := &Task{}
	if err := msgpack.Unmarshal(raw, k); err != nil {
		return nil, fmt.Errorf("decode task %q: %w", id, err)
	}
	t.keep(k)
	return k, nil
}

// keep adds a task to the ones flush writes.
func (t *Tx) keep(k *Task) {
	if t.cache == nil {
		t.cache = map[string]*Task{}
	}
	if _, ok := t.cache[k.ID]; !ok {
		t.order = append(t.order, k.ID)
	}
	t.cache[k.ID] = k
}

// changed records a task's change for the watchers.
func (t *Tx) changed(k *Task) {
	cp := *k
	t.Effects = append(t.Effects, &Updated{Task: &cp})
}

func (t *Tx) flush() error {
	for _, id := range t.order {
		raw, err := msgpack.Marshal(t.cache[id])
		if err != nil {
			return err
		}
		if err := t.b(bucketTasks).Put([]byte(id), raw); err != nil {
			return err
		}
	}
	t.order = t.order[:0]
	clear(t.cache)
	return nil
}

func readyKey(capName string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(append([]byte(capName), 0), seq)
}

func pairKey(a, b string) []byte { return append(append([]byte(a), 0), b...) }

func timerKey(at int64, id string) []byte {
	return append(binary.BigEndian.AppendUint64(nil, uint64(at)), id...)
}

// pairs lists the ids stored under prefix a in a pair bucket.
func (t *Tx) pairs(bucket []byte, a string) []string {
	var out []string
	p := append([]byte(a), 0)
	c := t.b(bucket).Cursor()
	for k, _ := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, _ = c.Next() {
		out = append(out, string(k[len(p):]))
	}
	return out
}

// makeReady puts a task in its capability's routing queue.
func (t *Tx) makeReady(k *Task) error {
	seq, err := t.next("ready")
	if err != nil {
		return err
	}
	k.State, k.NotBefore = StateReady, 0
	t.markDirty(k.Capability)
	return t.b(bucketReady).Put(readyKey(k.Capability, seq), []byte(k.ID))
}

// unready takes a task out of its capability's routing queue.
func (t *Tx) unready(k *Task) error {
	p := append([]byte(k.Capability), 0)
	c := t.b(bucketReady).Cursor()
	for key, v := c.Seek(p); key != nil && bytes.HasPrefix(key, p); key, v = c.Next() {
		if string(v) == k.ID {
			return c.Delete()
		}
	}
	return nil
}

// Finish routes what a command made routable: for each capability that
// gained ready tasks or an agent with room, in name order, the oldest
// ready tasks go to the agents route.Pick chooses until either runs out.
// Then the changed tasks are written.
func (t *Tx) Finish() error {
	for len(t.dirty) > 0 {
		caps := make([]string, 0, len(t.dirty))
		for c := range t.dirty {
			caps = append(caps, c)
		}
		slices.Sort(caps)
		clear(t.dirty)
		for _, c := range caps {
			if err := t.route(c); err != nil {
				return err
			}
		}
	}
	return t.flush()
}

func (t *Tx) route(capName string) error {
	p := append([]byte(capName), 0)
	for {
		c := t.b(bucketReady).Cursor()
		key, v := c.Seek(p)
		if key == nil || !bytes.HasPrefix(key, p) {
			return nil
		}
		a, err := route.Pick(t.tx, capName)
		if err != nil || a == nil {
			return err
		}
		if err := c.Delete(); err != nil {
			return err
		}
		k, err := t.load(string(v))
		if err != nil {
			return err
		}
		if k == nil || k.State != StateReady {
			return fmt.Errorf("ready entry for task %q in state %v", v, k)
		}
		if err := t.assign(k, a); err != nil {
			return err
		}
	}
}

// assign leases a ready task to an agent and pushes it to the agent's
// connection.
func (t *Tx) assign(k *Task, a *route.Agent) error {
	if err := route.Assigned(t.tx, t.now, a.Name, k.Capability); err != nil {
		return err
	}
	k.State, k.Attempt = StateAssigned, k.Attempt+1
	k.Agent, k.Conn, k.LeaseUntil = a.Name, a.Conn(), t.now+k.TimeoutMs
	k.log(t.now, "assigned", a.Name, k.Attempt, "")
	if err := t.b(bucketTimers).Put(timerKey(k.LeaseUntil, k.ID), nil); err != nil {
		return err
	}
	if err := t.b(bucketHeld).Put(pairKey(a.Name, k.ID), nil); err != nil {
		return err
	}
	t.changed(k)
	return t.push(k)
}

// push hands an assigned task to its agent's connection, when it is on
// this node.
func (t *Tx) push(k *Task) error {
	if t.isLocal(k.Conn) {
		deps := make(map[string]json.RawMessage, len(k.Deps))
		for i, d := range k.Deps {
			dk, err := t.load(d)
			if err != nil {
				return err
			}
			if dk != nil {
				deps[k.DepRefs[i]] = dk.Output
			}
		}
		cp := *k
		t.Effects = append(t.Effects, &Push{Conn: k.Conn, Task: &cp, DepsOutput: deps})
	}
	return nil
}

// Bolt is the underlying write transaction (for package route, which
// shares it).
func (t *Tx) Bolt() *bolt.Tx { return t.tx }

// Get reads a task, or nil, from any transaction.
func Get(tx *bolt.Tx, id string) (*Task, error) {
	raw := tx.Bucket(bucketTasks).Get([]byte(id))
	if raw == nil {
		return nil, nil
	}
	k := &Task{}
	if err := msgpack.Unmarshal(raw, k); err != nil {
		return nil, fmt.Errorf("decode task %q: %w", id, err)
	}
	return k, nil
}

// Reached lists the tasks a graph or task id reaches (what was
// submitted in the graph, or delegated under the task), in id order of
// the index.
func Reached(tx *bolt.Tx, id string) []string {
	var out []string
	p := append([]byte(id), 0)
	c := tx.Bucket(bucketLineage).Cursor()
	for k, _ := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, _ = c.Next() {
		out = append(out, string(k[len(p):]))
	}
	return out
}

// Rehome pushes again, with the same attempt, the tasks an online agent
// holds whose connection is no longer registered (it closed, or the agent
// came back on a new one), to the connection tasks go to now. Revocations
// then reach that connection too.
func (t *Tx) Rehome(a *route.Agent) error {
	if !a.Online() {
		return nil
	}
	for _, id := range t.pairs(bucketHeld, a.Name) {
		k, err := t.load(id)
		if err != nil {
			return err
		}
		if k == nil || k.State != StateAssigned || k.Agent != a.Name || slices.Contains(a.Conns, k.Conn) {
			continue
		}
		k.Conn = a.Conn()
		if err := t.push(k); err != nil {
			return err
		}
	}
	return nil
}

// SensitiveCaps lists the capabilities marked sensitive, with the
// operator who marked each.
func SensitiveCaps(tx *bolt.Tx) map[string]string {
	out := map[string]string{}
	_ = tx.Bucket(bucketSensitive).ForEach(func(k, v []byte) error {
		out[string(k)] = string(v)
		return nil
	})
	return out
}

// Lookup returns a task as this transaction sees it (with the command's
// changes), or nil.
func (t *Tx) Lookup(id string) (*Task, error) { return t.load(id) }
