// Package schedule owns recurring schedules (the "battle rhythm"): their
// definitions, their state and their firing history in state.db, and the
// leader's computation of which ticks are due.
//
// The replicated part (Add, Set, Fire, the readers) reads no clock and no
// time zone: the leader computes each tick from the cron expression and
// proposes it as a command stamped with it, and the state machine only
// checks that the tick comes after the last one it recorded. So a
// schedule fires exactly once per tick across leader changes: a tick two
// leaders both propose is applied once and refused the second time.
package schedule

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/robfig/cron/v3"
	"github.com/vmihailenco/msgpack/v5"
	bolt "go.etcd.io/bbolt"
)

// Buckets of state.db this package owns.
var (
	bucketDefs    = []byte("sched.defs")    // name -> Schedule
	bucketHistory = []byte("sched.history") // name 0 tick(8) -> Firing
)

// Buckets lists them for CreateBuckets and dumps.
var Buckets = [][]byte{bucketDefs, bucketHistory}

// CreateBuckets makes sure every bucket exists.
func CreateBuckets(tx *bolt.Tx) error {
	for _, b := range Buckets {
		if _, err := tx.CreateBucketIfNotExists(b); err != nil {
			return fmt.Errorf("create bucket %s: %w", b, err)
		}
	}
	return nil
}

// Errors the state machine answers with.
var (
	ErrBadRequest = errors.New("bad request")
	ErrNotFound   = errors.New("not found")
	ErrConflict   = errors.New("conflict")
)

// Misfire policies: what happens to ticks that passed more than the grace
// time ago without firing (the cluster had no leader, or was down).
const (
	MisfireSkip = "skip" // they are recorded as skipped; the next tick fires
	MisfireOnce = "once" // they fire once, at the latest of them
)

// Limits, constants of the replicated state machine.
const (
	MaxNameLen    = 64
	MaxCronLen    = 256
	MaxBodyLen    = 64 << 10
	MaxHistory    = 1000 // firings kept per schedule
	DefaultOrigin = "rhythm"
)

// Action is what a firing does: enqueue Body to Queue, or submit a task
// of Capability with Input.
type Action struct {
	Queue      string          `msgpack:"q,omitempty" json:"queue,omitempty"`
	Body       json.RawMessage `msgpack:"b,omitempty" json:"body,omitempty"`
	Capability string          `msgpack:"c,omitempty" json:"capability,omitempty"`
	Input      json.RawMessage `msgpack:"i,omitempty" json:"input,omitempty"`
}

// Schedule is a stored schedule.
type Schedule struct {
	Name    string `msgpack:"n" json:"name"`
	Cron    string `msgpack:"cr" json:"cron"`
	TZ      string `msgpack:"tz,omitempty" json:"tz,omitempty"`
	Action  Action `msgpack:"a" json:"action"`
	Misfire string `msgpack:"m" json:"misfire"`
	Origin  string `msgpack:"o" json:"origin"`
	Paused  bool   `msgpack:"p,omitempty" json:"paused"`
	Created int64  `msgpack:"c" json:"created"`
	By      string `msgpack:"by" json:"by"`
	// Last is the last tick fired or skipped (or the creation or resume
	// time): the next tick is the first after it.
	Last    int64 `msgpack:"l" json:"last_tick"`
	Fired   int64 `msgpack:"f" json:"fired"`
	Skipped int64 `msgpack:"s" json:"skipped"`
}

// Firing is one line of a schedule's history.
type Firing struct {
	Tick   int64  `msgpack:"t" json:"tick"`
	At     int64  `msgpack:"a" json:"at"`
	Skip   bool   `msgpack:"s,omitempty" json:"skipped,omitempty"`
	Missed int    `msgpack:"m,omitempty" json:"missed,omitempty"` // earlier late ticks it stands for
	Result string `msgpack:"r,omitempty" json:"result,omitempty"` // the message's seq, or the task graph
	Error  string `msgpack:"e,omitempty" json:"error,omitempty"`
}

func validName(s string) bool {
	if s == "" || len(s) > MaxNameLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// Check validates a definition's form (the cron expression and time zone
// are parsed by Parse, on the node that proposes it).
func (s *Schedule) Check() error {
	switch {
	case !validName(s.Name):
		return fmt.Errorf("%w: name: 1 to %d bytes of [A-Za-z0-9._-]", ErrBadRequest, MaxNameLen)
	case s.Cron == "" || len(s.Cron) > MaxCronLen || len(s.TZ) > 64:
		return fmt.Errorf("%w: cron: 1 to %d bytes", ErrBadRequest, MaxCronLen)
	case s.Misfire != MisfireSkip && s.Misfire != MisfireOnce:
		return fmt.Errorf("%w: misfire: skip or once", ErrBadRequest)
	case (s.Action.Queue == "") == (s.Action.Capability == ""):
		return fmt.Errorf("%w: action: a queue to enqueue to, or a capability to submit a task of", ErrBadRequest)
	case len(s.Action.Body) > MaxBodyLen || len(s.Action.Input) > MaxBodyLen ||
		(len(s.Action.Body) > 0 && !json.Valid(s.Action.Body)) || (len(s.Action.Input) > 0 && !json.Valid(s.Action.Input)):
		return fmt.Errorf("%w: action: a JSON body of at most %d bytes", ErrBadRequest, MaxBodyLen)
	case s.Origin == "":
		return fmt.Errorf("%w: origin: the agent its messages come from", ErrBadRequest)
	}
	return nil
}

var parser = cron.NewParser(cron.SecondOptional | cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// Parse reads a cron expression (five fields, or six with seconds first,
// or a descriptor such as @hourly or @every 10s) in a time zone (empty:
// UTC).
func Parse(expr, tz string) (cron.Schedule, error) {
	loc := time.UTC
	if tz != "" {
		l, err := time.LoadLocation(tz)
		if err != nil {
			return nil, fmt.Errorf("%w: tz: %v", ErrBadRequest, err)
		}
		loc = l
	}
	s, err := parser.Parse(expr)
	if err != nil {
		return nil, fmt.Errorf("%w: cron: %v", ErrBadRequest, err)
	}
	if spec, ok := s.(*cron.SpecSchedule); ok {
		spec.Location = loc
	}
	return s, nil
}

func get(b *bolt.Bucket, key []byte, v any) (bool, error) {
	raw := b.Get(key)
	if raw == nil {
		return false, nil
	}
	return true, msgpack.Unmarshal(raw, v)
}

func put(b *bolt.Bucket, key []byte, v any) error {
	raw, err := msgpack.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put(key, raw)
}

// Load returns a schedule, or nil.
func Load(tx *bolt.Tx, name string) (*Schedule, error) {
	s := &Schedule{}
	ok, err := get(tx.Bucket(bucketDefs), []byte(name), s)
	if err != nil || !ok {
		return nil, err
	}
	return s, nil
}

// List calls fn for every schedule, in name order.
func List(tx *bolt.Tx, fn func(*Schedule) error) error {
	return tx.Bucket(bucketDefs).ForEach(func(k, v []byte) error {
		s := &Schedule{}
		if err := msgpack.Unmarshal(v, s); err != nil {
			return fmt.Errorf("decode schedule %q: %w", k, err)
		}
		return fn(s)
	})
}

// History returns a schedule's firings, oldest first, at most limit of
// the newest (0: all kept).
func History(tx *bolt.Tx, name string, limit int) ([]Firing, error) {
	var out []Firing
	p := append([]byte(name), 0)
	c := tx.Bucket(bucketHistory).Cursor()
	for k, v := c.Seek(p); k != nil && len(k) == len(p)+8 && string(k[:len(p)]) == string(p); k, v = c.Next() {
		var f Firing
		if err := msgpack.Unmarshal(v, &f); err != nil {
			return nil, err
		}
		out = append(out, f)
	}
	if limit > 0 && len(out) > limit {
		out = out[len(out)-limit:]
	}
	return out, nil
}

// Add stores a new schedule at time now; its first tick is the first
// after now. A name in use is ErrConflict.
func Add(tx *bolt.Tx, now int64, s Schedule) error {
	if err := s.Check(); err != nil {
		return err
	}
	if old, err := Load(tx, s.Name); err != nil || old != nil {
		if err == nil {
			err = fmt.Errorf("%w: a schedule %q exists", ErrConflict, s.Name)
		}
		return err
	}
	s.Created, s.Last, s.Fired, s.Skipped = now, now, 0, 0
	return put(tx.Bucket(bucketDefs), []byte(s.Name), &s)
}

// Set pauses, resumes or deletes a schedule. A resumed schedule fires
// from the first tick after now: what passed while it was paused is not
// caught up.
func Set(tx *bolt.Tx, now int64, name, what string) error {
	s, err := Load(tx, name)
	if err != nil {
		return err
	}
	if s == nil {
		return fmt.Errorf("%w: no schedule %q", ErrNotFound, name)
	}
	switch what {
	case "pause":
		s.Paused = true
	case "resume":
		if s.Paused {
			s.Paused, s.Last = false, max(s.Last, now)
		}
	case "delete":
		p := append([]byte(name), 0)
		b := tx.Bucket(bucketHistory)
		var ks [][]byte
		c := b.Cursor()
		for k, _ := c.Seek(p); k != nil && len(k) == len(p)+8 && string(k[:len(p)]) == string(p); k, _ = c.Next() {
			ks = append(ks, append([]byte(nil), k...))
		}
		for _, k := range ks {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketDefs).Delete([]byte(name))
	default:
		return fmt.Errorf("%w: pause, resume or delete", ErrBadRequest)
	}
	return put(tx.Bucket(bucketDefs), []byte(name), s)
}

// Claim checks that a tick may fire (the schedule exists, runs, and the
// tick comes after its last one) and records it as the last: the
// exactly-once step of a firing. It returns the schedule.
func Claim(tx *bolt.Tx, name string, tick int64) (*Schedule, error) {
	s, err := Load(tx, name)
	if err != nil {
		return nil, err
	}
	switch {
	case s == nil:
		return nil, fmt.Errorf("%w: no schedule %q", ErrNotFound, name)
	case s.Paused:
		return nil, fmt.Errorf("%w: schedule %q is paused", ErrConflict, name)
	case tick <= s.Last:
		return nil, fmt.Errorf("%w: schedule %q already fired or skipped up to %d", ErrConflict, name, s.Last)
	}
	s.Last = tick
	return s, nil
}

// Record stores a claimed firing and the schedule's new state, keeping
// at most MaxHistory firings.
func Record(tx *bolt.Tx, s *Schedule, f Firing) error {
	if f.Skip {
		s.Skipped += int64(f.Missed)
	} else {
		s.Fired++
		s.Skipped += int64(f.Missed)
	}
	if err := put(tx.Bucket(bucketDefs), []byte(s.Name), s); err != nil {
		return err
	}
	p := append([]byte(s.Name), 0)
	b := tx.Bucket(bucketHistory)
	if err := put(b, binary.BigEndian.AppendUint64(append([]byte(nil), p...), uint64(f.Tick)), &f); err != nil {
		return err
	}
	// Drop the oldest beyond the bound.
	var ks [][]byte
	c := b.Cursor()
	for k, _ := c.Seek(p); k != nil && len(k) == len(p)+8 && string(k[:len(p)]) == string(p); k, _ = c.Next() {
		ks = append(ks, append([]byte(nil), k...))
	}
	for _, k := range ks[:max(0, len(ks)-MaxHistory)] {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// Planned is a tick the leader proposes.
type Planned struct {
	Tick   int64
	Skip   bool
	Missed int
}

// maxCatchUp bounds the ticks Due walks after an outage.
const maxCatchUp = 1_000_000

// Due returns the ticks of a schedule due at now (unix ms), in order:
// each tick within graceMs of now fires; the ticks older than that are
// misfires and follow the policy (skip: one skipped record standing for
// all of them; once: one firing at the latest of them standing for the
// others).
func Due(s *Schedule, now, graceMs int64) ([]Planned, error) {
	if s.Paused {
		return nil, nil
	}
	c, err := Parse(s.Cron, s.TZ)
	if err != nil {
		return nil, err
	}
	var late, onTime []int64
	t := time.UnixMilli(s.Last)
	for i := 0; i < maxCatchUp; i++ {
		t = c.Next(t)
		if t.IsZero() || t.UnixMilli() > now {
			break
		}
		if tick := t.UnixMilli(); now-tick > graceMs {
			late = append(late, tick)
		} else {
			onTime = append(onTime, tick)
		}
	}
	var out []Planned
	if n := len(late); n > 0 {
		if s.Misfire == MisfireSkip {
			out = append(out, Planned{Tick: late[n-1], Skip: true, Missed: n})
		} else {
			out = append(out, Planned{Tick: late[n-1], Missed: n - 1})
		}
	}
	for _, tick := range onTime {
		out = append(out, Planned{Tick: tick})
	}
	return out, nil
}
