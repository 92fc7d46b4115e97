package queue

import (
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

// mustRecord records events into a fresh record.
func mustRecord(t testing.TB, es ...TimelineEvent) *msgRec {
	t.Helper()
	m := &msgRec{}
	for _, e := range es {
		m.record(e)
	}
	return m
}

// The stored form of a timeline round-trips through the record (times
// going back too, a who repeated), and an empty one is left out.
func Test_Timeline_Codec(t *testing.T) {
	es := []TimelineEvent{
		{At: 1_764_000_000_000, Kind: EvEnqueued, Who: "alice"},
		{At: 1_764_000_000_000, Kind: EvDelivered, Attempt: 1, Who: "n1/1/7", Consumer: 3},
		{At: 1_763_999_999_000, Kind: EvRejected, Attempt: 1, Who: "n1/1/7", Detail: "bad"},
		{At: 1_764_000_001_000, Kind: EvDead, Attempt: 1, Detail: "rejected: bad"},
		{At: 1_764_000_002_000, Kind: EvRedriven},
		{At: 1_764_000_002_000, Kind: EvDelivered, Attempt: 1, Who: "n1/1/7", Consumer: 1 << 40},
	}
	m := mustRecord(t, es...)
	m.Pri, m.Enqueued = 1, 1_764_000_000_000
	raw, err := msgpack.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var back msgRec
	if err := msgpack.Unmarshal(raw, &back); err != nil || !reflect.DeepEqual(&back, m) {
		t.Fatalf("record round trip: %+v %v", back, err)
	}
	if got, err := decodeTimeline(back.History); err != nil || !reflect.DeepEqual(got, es) {
		t.Fatalf("decoded %+v %v", got, err)
	}

	empty, err := msgpack.Marshal(&msgRec{Pri: 1})
	if err != nil {
		t.Fatal(err)
	}
	var plain map[string]any
	if err := msgpack.Unmarshal(empty, &plain); err != nil {
		t.Fatal(err)
	}
	if _, ok := plain["h"]; ok {
		t.Fatalf("an empty timeline is stored: %v", plain)
	}
}

// A timeline written by a later version, with fields and kinds this one
// does not know, or written without trailing fields, decodes and takes
// new events.
func Test_Timeline_UnknownFields(t *testing.T) {
	h, err := msgpack.Marshal([]any{
		[]any{5, 1}, // no attempt, who, consumer, detail
		[]any{7, 9, 2, "x", 4, "d", "a later field", map[string]any{"k": []any{1.5, true}}},
		[]any{1, 3, 2, nil}, // the same who as before
	})
	if err != nil {
		t.Fatal(err)
	}
	m := &msgRec{History: h}
	m.record(TimelineEvent{At: 20, Kind: EvDelivered, Attempt: 3, Who: "x"})
	want := []TimelineEvent{{At: 5, Kind: EvEnqueued}, {At: 12, Kind: EventKind(9), Attempt: 2, Who: "x", Consumer: 4, Detail: "d"},
		{At: 6, Kind: EvNacked, Attempt: 2, Who: "x"}, {At: 20, Kind: EvDelivered, Attempt: 3, Who: "x"}}
	got, err := decodeTimeline(m.History)
	if err != nil || !reflect.DeepEqual(got, want) || got[1].Kind.String() != "event9" {
		t.Fatalf("decoded %+v %v, want %+v", got, err, want)
	}
	// A timeline that cannot be read starts again with the new event,
	// the lost ones counted as one dropped.
	for _, bad := range [][]byte{{0x91}, {0x91, 0x91, 0x01}, {0x92, 0x92, 0x01, 0x01}, {0xc1}, {0x91, 0x92, 0x01, 0x01, 0x00}} {
		if _, err := decodeTimeline(bad); err == nil {
			t.Errorf("decoded %x", bad)
		}
		m := &msgRec{History: bad, Dropped: 2}
		e := TimelineEvent{At: 1, Kind: EvNacked, Attempt: 1, Who: "c", Detail: "why"}
		m.record(e)
		if got, err := decodeTimeline(m.History); err != nil || !reflect.DeepEqual(got, []TimelineEvent{e}) || m.Dropped != 3 {
			t.Errorf("recorded onto %x: %+v (%d dropped), %v; want only the new event, 3 dropped", bad, got, m.Dropped, err)
		}
	}
}

// Against a plain list: any sequence of events leaves the first and the
// latest MaxTimeline-1, the count of the others, and what it stores
// decodes to them.
func Test_Timeline_Model(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 11))
	whos := []string{"", "alice", "n1/1/1", "n1/1/1", "n2/4/9", "redis:w", "operator:o"}
	details := []string{"", "", "max_attempts", "node down", string(make([]byte, 300))}
	for run := range 200 {
		var model []TimelineEvent
		m := &msgRec{}
		at := r.Int64N(1 << 42)
		for range r.IntN(3 * MaxTimeline) {
			at += r.Int64N(100_000) - 1000
			e := TimelineEvent{At: at, Kind: EventKind(1 + r.IntN(8)), Attempt: r.IntN(3) * r.IntN(2000),
				Who: whos[r.IntN(len(whos))], Detail: details[r.IntN(len(details))]}
			if r.IntN(3) == 0 {
				e.Consumer = r.Uint64N(1 << uint(1+r.IntN(63)))
			}
			m.record(e)
			e.Detail = clip(e.Detail, MaxDetailLen)
			model = append(model, e)
			if len(model) > MaxTimeline {
				model = append(model[:1], model[2:]...)
			}
		}
		got, err := decodeTimeline(m.History)
		if err != nil || !reflect.DeepEqual(got, model) {
			t.Fatalf("run %d: got %+v %v\nwant %+v", run, got, err, model)
		}
	}
}

// Whatever bytes a record holds, reading them fails cleanly or works, and
// recording onto them makes a timeline that can be read and ends with
// the new event.
func FuzzTimeline(f *testing.F) {
	f.Add(mustRecord(f, TimelineEvent{At: 1, Kind: EvEnqueued, Who: "a"}, TimelineEvent{At: 2, Kind: EvDelivered, Attempt: 1, Who: "c", Consumer: 2}).History)
	f.Add([]byte{0x91, 0x92, 0x01, 0x01})
	f.Add([]byte{0xdc, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, h []byte) {
		_, _ = decodeTimeline(h)
		m := &msgRec{History: h}
		m.record(TimelineEvent{At: 99, Kind: EvNacked, Attempt: 1, Who: "c"})
		got, err := decodeTimeline(m.History)
		if err != nil || len(got) == 0 || got[len(got)-1].Kind != EvNacked || got[len(got)-1].Who != "c" {
			t.Fatalf("recorded onto %x: %+v %v", h, got, err)
		}
	})
}
