// Package route owns agent presence and capability routing as plain
// functions over a bbolt transaction: which agents are online (they
// registered on a connection that is still open), what each can do and
// with how many tasks at once, how loaded each is, and which agent a task
// of a capability goes to.
//
// Like package queue it reads no clock, draws no random number and
// iterates no Go map where order matters: every function is evaluated
// against the leader-stamped time the caller passes, so every replica
// makes the same choice. Presence changes are commands (a register, a
// connection closing, a node declared down), so every node agrees who is
// online.
package route

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/vmihailenco/msgpack/v5"
	bolt "go.etcd.io/bbolt"
)

// Buckets of state.db this package owns.
var (
	bucketAgents = []byte("route.agents") // agent -> Agent
	bucketCaps   = []byte("route.caps")   // capability 0 agent -> nil: agents registered for it
	bucketConns  = []byte("route.conns")  // conn -> agent: registered connections
)

// Buckets lists them for CreateBuckets and dumps.
var Buckets = [][]byte{bucketAgents, bucketCaps, bucketConns}

// CreateBuckets makes sure every bucket exists.
func CreateBuckets(tx *bolt.Tx) error {
	for _, b := range Buckets {
		if _, err := tx.CreateBucketIfNotExists(b); err != nil {
			return fmt.Errorf("create bucket %s: %w", b, err)
		}
	}
	return nil
}

// Limits of a registration, constants of the replicated state machine.
const (
	MaxCaps        = 64
	MaxInflight    = 1000
	MaxCapLen      = 128
	MaxMetaLen     = 4096
	RecentOutcomes = 64 // the outcomes "recent" counts cover
)

// ErrBadRequest is a registration the state machine refuses.
var ErrBadRequest = errors.New("bad request")

// Cap is one capability of an agent: how many of its tasks the agent
// takes at once, and how many it holds now.
type Cap struct {
	Name        string `msgpack:"n" json:"name"`
	MaxInflight int    `msgpack:"m" json:"max_inflight"`
	Inflight    int    `msgpack:"i" json:"inflight"`
}

// Agent is an agent's presence and load.
type Agent struct {
	Name  string          `msgpack:"a" json:"name"`
	Conns []string        `msgpack:"c" json:"-"` // registered connections still open, sorted
	Caps  []Cap           `msgpack:"k" json:"capabilities"`
	Meta  json.RawMessage `msgpack:"m,omitempty" json:"meta,omitempty"`
	// Since is when the agent last came online (its first open
	// registered connection), Seen when it last went offline.
	Since int64 `msgpack:"s" json:"since"`
	Seen  int64 `msgpack:"o,omitempty" json:"offline_since,omitempty"`
	// Active is when it was last given a task or finished one: the
	// idlest agent is the one with the oldest Active.
	Active    int64  `msgpack:"t" json:"last_active"`
	Succeeded int64  `msgpack:"ok" json:"succeeded"`
	Failed    int64  `msgpack:"ko" json:"failed"`
	Recent    uint64 `msgpack:"r" json:"-"` // the last outcomes, newest in bit 0 (1: failure)
	RecentN   int    `msgpack:"rn" json:"-"`
}

// Online reports whether the agent has a registered connection open.
func (a *Agent) Online() bool { return len(a.Conns) > 0 }

// Conn is the connection tasks for the agent are pushed to: its
// registered connection with the lowest id.
func (a *Agent) Conn() string {
	if len(a.Conns) == 0 {
		return ""
	}
	return a.Conns[0]
}

// RecentCounts returns the successes and failures among the agent's last
// outcomes (at most RecentOutcomes).
func (a *Agent) RecentCounts() (ok, failed int) {
	for i := range a.RecentN {
		if a.Recent&(1<<i) != 0 {
			failed++
		} else {
			ok++
		}
	}
	return ok, failed
}

func (a *Agent) cap(name string) *Cap {
	for i := range a.Caps {
		if a.Caps[i].Name == name {
			return &a.Caps[i]
		}
	}
	return nil
}

// Ratio is inflight / max_inflight for a capability, as a fraction.
type Ratio struct{ Inflight, Max int }

// Less compares loads without floating point: a/b < c/d.
func (l Ratio) Less(o Ratio) bool { return l.Inflight*o.Max < o.Inflight*l.Max }

func get(b *bolt.Bucket, key []byte, v any) (bool, error) {
	raw := b.Get(key)
	if raw == nil {
		return false, nil
	}
	if err := msgpack.Unmarshal(raw, v); err != nil {
		return true, fmt.Errorf("decode %s: %w", key, err)
	}
	return true, nil
}

func put(b *bolt.Bucket, key []byte, v any) error {
	raw, err := msgpack.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put(key, raw)
}

func capKey(capName, agent string) []byte {
	return append(append([]byte(capName), 0), agent...)
}

// Load returns an agent's record, or nil.
func Load(tx *bolt.Tx, name string) (*Agent, error) {
	a := &Agent{}
	ok, err := get(tx.Bucket(bucketAgents), []byte(name), a)
	if err != nil || !ok {
		return nil, err
	}
	return a, nil
}

func save(tx *bolt.Tx, a *Agent) error { return put(tx.Bucket(bucketAgents), []byte(a.Name), a) }

// CapNameRule says what ValidCapName accepts, for error messages.
var CapNameRule = fmt.Sprintf("dot-separated, non-empty parts of [A-Za-z0-9_-], at most %d bytes", MaxCapLen)

// ValidCapName reports whether s names a capability: 1–128 bytes of
// [A-Za-z0-9._-], dot-separated non-empty parts.
func ValidCapName(s string) bool {
	if s == "" || len(s) > MaxCapLen {
		return false
	}
	for _, part := range strings.Split(s, ".") {
		if part == "" {
			return false
		}
		for i := 0; i < len(part); i++ {
			c := part[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
				return false
			}
		}
	}
	return true
}

// RegisterArgs is a register: the capabilities an agent offers on a
// connection.
type RegisterArgs struct {
	Agent string          `msgpack:"a"`
	Conn  string          `msgpack:"c"`
	Caps  []Cap           `msgpack:"k"`
	Meta  json.RawMessage `msgpack:"m,omitempty"`
}

// Check validates a registration's arguments.
func (r *RegisterArgs) Check() error {
	if r.Agent == "" || r.Conn == "" {
		return fmt.Errorf("%w: a registration names its agent and connection", ErrBadRequest)
	}
	if len(r.Caps) > MaxCaps || len(r.Meta) > MaxMetaLen || (len(r.Meta) > 0 && !json.Valid(r.Meta)) {
		return fmt.Errorf("%w: at most %d capabilities, and meta JSON of at most %d bytes", ErrBadRequest, MaxCaps, MaxMetaLen)
	}
	for i, c := range r.Caps {
		if !ValidCapName(c.Name) || c.MaxInflight < 1 || c.MaxInflight > MaxInflight || c.Inflight != 0 {
			return fmt.Errorf("%w: capability %q: a name of %s, and max_inflight 1..%d", ErrBadRequest, c.Name, CapNameRule, MaxInflight)
		}
		for _, d := range r.Caps[:i] {
			if d.Name == c.Name {
				return fmt.Errorf("%w: capability %q listed twice", ErrBadRequest, c.Name)
			}
		}
	}
	return nil
}

// Register records that an agent offers capabilities on a connection:
// the agent is online from now, and its capability list is this one (the
// latest registration of any of its connections wins). Tasks it holds of
// a capability it no longer lists stay counted until they end. It
// reports whether the agent came online, so that tasks waiting for its
// capabilities can be routed.
func Register(tx *bolt.Tx, now int64, r RegisterArgs) (cameOnline bool, err error) {
	if err := r.Check(); err != nil {
		return false, err
	}
	a, err := Load(tx, r.Agent)
	if err != nil {
		return false, err
	}
	if a == nil {
		a = &Agent{Name: r.Agent, Active: now}
	}
	cameOnline = !a.Online()
	if cameOnline {
		a.Since, a.Seen = now, 0
	}
	if !slices.Contains(a.Conns, r.Conn) {
		a.Conns = append(a.Conns, r.Conn)
		slices.Sort(a.Conns)
	}
	caps := make([]Cap, 0, len(r.Caps))
	for _, c := range r.Caps {
		if old := a.cap(c.Name); old != nil {
			c.Inflight = old.Inflight
		}
		caps = append(caps, c)
	}
	for _, old := range a.Caps {
		if old.Inflight > 0 && !slices.ContainsFunc(caps, func(c Cap) bool { return c.Name == old.Name }) {
			caps = append(caps, Cap{Name: old.Name, Inflight: old.Inflight}) // draining
		}
	}
	slices.SortFunc(caps, func(x, y Cap) int { return strings.Compare(x.Name, y.Name) })
	b := tx.Bucket(bucketCaps)
	for _, old := range a.Caps {
		if err := b.Delete(capKey(old.Name, a.Name)); err != nil {
			return false, err
		}
	}
	for _, c := range caps {
		if c.MaxInflight > 0 {
			if err := b.Put(capKey(c.Name, a.Name), nil); err != nil {
				return false, err
			}
		}
	}
	a.Caps, a.Meta = caps, r.Meta
	if err := tx.Bucket(bucketConns).Put([]byte(r.Conn), []byte(a.Name)); err != nil {
		return false, err
	}
	return cameOnline, save(tx, a)
}

// ConnClosed ends a connection's registration; the agent goes offline
// with its last one. It returns the agent after the change, or nil when
// the connection had no registration.
func ConnClosed(tx *bolt.Tx, now int64, conn string) (*Agent, error) {
	name := tx.Bucket(bucketConns).Get([]byte(conn))
	if name == nil {
		return nil, nil
	}
	if err := tx.Bucket(bucketConns).Delete([]byte(conn)); err != nil {
		return nil, err
	}
	a, err := Load(tx, string(name))
	if err != nil || a == nil {
		return nil, fmt.Errorf("connection %q of agent %q with no record (%v)", conn, name, err)
	}
	a.Conns = slices.DeleteFunc(a.Conns, func(c string) bool { return c == conn })
	if !a.Online() {
		a.Seen = now
	}
	return a, save(tx, a)
}

// Conns lists the registered connections whose id match says to end (a
// node's, when it is declared down or restarted), in id order.
func Conns(tx *bolt.Tx, match func(conn string) bool) []string {
	var out []string
	_ = tx.Bucket(bucketConns).ForEach(func(k, _ []byte) error {
		if match(string(k)) {
			out = append(out, string(k))
		}
		return nil
	})
	return out
}

// Pick chooses the agent a task of a capability goes to: online,
// registered for it with room (inflight below max_inflight), the lowest
// load, ties to the one idle longest, then to the name that sorts first.
// It returns nil when no agent can take it.
func Pick(tx *bolt.Tx, capName string) (*Agent, error) {
	var best *Agent
	var bestLoad Ratio
	p := append([]byte(capName), 0)
	c := tx.Bucket(bucketCaps).Cursor()
	for k, _ := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, _ = c.Next() {
		a, err := Load(tx, string(k[len(p):]))
		if err != nil {
			return nil, err
		}
		if a == nil || !a.Online() {
			continue
		}
		cp := a.cap(capName)
		if cp == nil || cp.MaxInflight == 0 || cp.Inflight >= cp.MaxInflight {
			continue
		}
		l := Ratio{cp.Inflight, cp.MaxInflight}
		if best == nil || l.Less(bestLoad) || (!bestLoad.Less(l) && a.Active < best.Active) {
			best, bestLoad = a, l
		}
	}
	return best, nil
}

// Assigned counts a task of a capability against an agent.
func Assigned(tx *bolt.Tx, now int64, agent, capName string) error {
	a, err := Load(tx, agent)
	if err != nil || a == nil {
		return fmt.Errorf("assigning to agent %q with no record (%v)", agent, err)
	}
	cp := a.cap(capName)
	if cp == nil {
		return fmt.Errorf("assigning %q to agent %q, not registered for it", capName, agent)
	}
	cp.Inflight++
	a.Active = now
	return save(tx, a)
}

// Finished ends a task of a capability an agent held: ok false counts a
// failure (a task.fail or a lapsed lease).
func Finished(tx *bolt.Tx, now int64, agent, capName string, ok bool) error {
	a, err := Load(tx, agent)
	if err != nil || a == nil {
		return fmt.Errorf("finishing a task of agent %q with no record (%v)", agent, err)
	}
	if cp := a.cap(capName); cp != nil && cp.Inflight > 0 {
		cp.Inflight--
		if cp.Inflight == 0 && cp.MaxInflight == 0 {
			a.Caps = slices.DeleteFunc(a.Caps, func(c Cap) bool { return c.Name == capName })
		}
	}
	a.Active = now
	a.Recent <<= 1
	if ok {
		a.Succeeded++
	} else {
		a.Failed++
		a.Recent |= 1
	}
	a.RecentN = min(a.RecentN+1, RecentOutcomes)
	return save(tx, a)
}

// Released ends a task of a capability an agent held without an outcome
// of the agent's (the task was cancelled).
func Released(tx *bolt.Tx, agent, capName string) error {
	a, err := Load(tx, agent)
	if err != nil || a == nil {
		return fmt.Errorf("releasing a task of agent %q with no record (%v)", agent, err)
	}
	if cp := a.cap(capName); cp != nil && cp.Inflight > 0 {
		cp.Inflight--
		if cp.Inflight == 0 && cp.MaxInflight == 0 {
			a.Caps = slices.DeleteFunc(a.Caps, func(c Cap) bool { return c.Name == capName })
		}
	}
	return save(tx, a)
}

// List calls fn for every agent that ever registered, in name order.
func List(tx *bolt.Tx, fn func(*Agent) error) error {
	return tx.Bucket(bucketAgents).ForEach(func(k, v []byte) error {
		a := &Agent{}
		if err := msgpack.Unmarshal(v, a); err != nil {
			return fmt.Errorf("decode agent %q: %w", k, err)
		}
		return fn(a)
	})
}
