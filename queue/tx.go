package queue

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/vmihailenco/msgpack/v5"
	bolt "go.etcd.io/bbolt"
)

// Bucket names. Keys that combine a name and a number put the name first and
// a 0x00 separator after it (names never contain 0x00), numbers big-endian.
var (
	bucketQueues    = []byte("queues")     // name -> queueRec
	bucketMsgs      = []byte("msgs")       // name 0 seq -> msgRec
	bucketBodies    = []byte("bodies")     // name 0 seq -> envelope bytes
	bucketReady     = []byte("ready")      // name 0 (9-pri) seq -> nil
	bucketTimers    = []byte("timers")     // at seq name -> nil (due or lease end)
	bucketByConn    = []byte("byconn")     // conn 0 name 0 seq -> nil (leases per connection)
	bucketConsumers = []byte("consumers")  // id -> consumerRec
	bucketQCons     = []byte("qconsumers") // name 0 id -> nil
	bucketDedup     = []byte("dedup")      // from 0 id -> dedupRec
	bucketDedupExp  = []byte("dedupexp")   // at from 0 id -> nil
	bucketSubs      = []byte("subs")       // id -> subRec
	bucketCounters  = []byte("counters")   // name -> uint64
)

// Buckets lists every bucket the package owns, for CreateBuckets and dumps.
var Buckets = [][]byte{
	bucketQueues, bucketMsgs, bucketBodies, bucketReady, bucketTimers,
	bucketByConn, bucketConsumers, bucketQCons, bucketDedup, bucketDedupExp,
	bucketSubs, bucketCounters,
}

// CreateBuckets makes sure every bucket exists.
func CreateBuckets(tx *bolt.Tx) error {
	for _, b := range Buckets {
		if _, err := tx.CreateBucketIfNotExists(b); err != nil {
			return fmt.Errorf("create bucket %s: %w", b, err)
		}
	}
	return nil
}

// Tx is one command's view of the state: the bbolt write transaction, the
// leader-stamped time, and the effects produced for local connections.
type Tx struct {
	tx    *bolt.Tx
	now   int64
	local string
	dirty map[string]struct{}
	// readied names the queues where a message became ready during the
	// transaction, for Readied.
	readied []string
	rc      *recCache
	actor   string

	// Effects collects deliveries and events for connections of the local
	// node, in the order they were produced.
	Effects []Effect
}

// NewTx wraps a bbolt write transaction. now is the command's stamped time in
// unix milliseconds; local is the id of the node applying it (effects for
// connections of other nodes are not materialised).
func NewTx(tx *bolt.Tx, now int64, local string) *Tx {
	return &Tx{tx: tx, now: now, local: local}
}

// Now is the command's time in unix milliseconds.
func (t *Tx) Now() int64 { return t.now }

// SetNow moves the transaction to the time of the next command of a batch.
func (t *Tx) SetNow(now int64) { t.now = now }

func (t *Tx) b(name []byte) *bolt.Bucket { return t.tx.Bucket(name) }

func (t *Tx) isLocal(conn string) bool {
	return t.local != "" && ConnNode(conn) == t.local
}

// ConnNode is the node part of a connection id "node/epoch/n".
func ConnNode(conn string) string {
	if i := strings.IndexByte(conn, '/'); i >= 0 {
		return conn[:i]
	}
	return conn
}

func (t *Tx) markDirty(queue string) {
	if t.dirty == nil {
		t.dirty = make(map[string]struct{})
	}
	t.dirty[queue] = struct{}{}
}

func (t *Tx) markReadied(queue string) {
	if len(t.readied) == 0 || t.readied[len(t.readied)-1] != queue {
		t.readied = append(t.readied, queue)
	}
}

// Readied returns, and forgets, the queues where a message became ready
// since the last call, each once, in name order: the Redis face wakes
// the clients waiting on them.
func (t *Tx) Readied() []string {
	out := t.readied
	t.readied = nil
	slices.Sort(out)
	return slices.Compact(out)
}

// Finish ends one command: queues whose ready set or consumer capacity
// changed hand out deliveries, in name order so every replica agrees, and
// the changed records are written.
func (t *Tx) Finish() error {
	for len(t.dirty) > 0 {
		names := make([]string, 0, len(t.dirty))
		for n := range t.dirty {
			names = append(names, n)
		}
		sort.Strings(names)
		t.dirty = nil
		for _, n := range names {
			if err := t.dispatch(n); err != nil {
				return err
			}
		}
	}
	return t.flushRecords()
}

// nextID hands out the next value of a named counter (consumer and
// subscription ids), starting at 1.
func (t *Tx) nextID(name string) (uint64, error) {
	b := t.b(bucketCounters)
	var n uint64
	if v := b.Get([]byte(name)); v != nil {
		n = binary.BigEndian.Uint64(v)
	}
	n++
	return n, b.Put([]byte(name), u64(n))
}

func u64(n uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], n)
	return b[:]
}

func qkey(name string, seq uint64) []byte {
	k := make([]byte, 0, len(name)+9)
	k = append(k, name...)
	k = append(k, 0)
	return binary.BigEndian.AppendUint64(k, seq)
}

func splitQKey(k []byte) (string, uint64) {
	i := bytes.IndexByte(k, 0)
	return string(k[:i]), binary.BigEndian.Uint64(k[i+1:])
}

func readyKey(name string, pri uint8, seq uint64) []byte {
	k := make([]byte, 0, len(name)+10)
	k = append(k, name...)
	k = append(k, 0, 9-pri)
	return binary.BigEndian.AppendUint64(k, seq)
}

func timerKey(at int64, name string, seq uint64) []byte {
	k := make([]byte, 0, len(name)+16)
	k = binary.BigEndian.AppendUint64(k, uint64(at))
	k = binary.BigEndian.AppendUint64(k, seq)
	return append(k, name...)
}

func connKey(conn, name string, seq uint64) []byte {
	k := make([]byte, 0, len(conn)+len(name)+10)
	k = append(k, conn...)
	k = append(k, 0)
	return append(k, qkey(name, seq)...)
}

func prefix(name string) []byte {
	return append([]byte(name), 0)
}

func get(b *bolt.Bucket, key []byte, v any) (bool, error) {
	raw := b.Get(key)
	if raw == nil {
		return false, nil
	}
	if err := msgpack.Unmarshal(raw, v); err != nil {
		return true, fmt.Errorf("decode %s/%x: %w", "record", key, err)
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

// Bolt is the underlying write transaction, for the state other packages
// keep beside the queues (agent identities, the audit chain).
func (t *Tx) Bolt() *bolt.Tx { return t.tx }

// SetActor names who asked for the command being applied (fsm.Command's
// Actor), for the records that keep it.
func (t *Tx) SetActor(a string) { t.actor = a }

// Actor is who asked for the command being applied.
func (t *Tx) Actor() string { return t.actor }
