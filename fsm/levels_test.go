package fsm_test

import (
	"reflect"
	"testing"

	"github.com/mcpd/mcpd/fsm"
	bolt "go.etcd.io/bbolt"
)

// Each NodeStarted records the level it announces, the latest one
// winning; a node of a version before levels announces none, level 0.
// Only the newest command types need a level.
func Test_FSM_NodeLevels(t *testing.T) {
	f := mustFresh(t, "n1")
	for i, a := range []fsm.NodeStartedArgs{
		{Node: "n1", Epoch: 1, Level: fsm.Level},
		{Node: "n2", Epoch: 1},
		{Node: "n3", Epoch: 1, Level: 7},
		{Node: "n3", Epoch: 2, Level: fsm.Level},
		{Node: "n4", Epoch: 1, Level: -3},
	} {
		f.Apply(mustLog(t, uint64(i+1), 1_700_000_000_000, mustCmd(t, fsm.TypeNodeStarted, "", 0, &a)))
	}
	var got map[string]int
	_ = f.View(func(tx *bolt.Tx) error { got = fsm.NodeLevels(tx); return nil })
	if want := map[string]int{"n1": fsm.Level, "n2": 0, "n3": fsm.Level, "n4": 0}; !reflect.DeepEqual(got, want) {
		t.Fatalf("levels %v, want %v", got, want)
	}
	for typ, want := range map[fsm.MessageType]int{fsm.TypeEnqueue: 0, fsm.TypeOperatorRemove: 0, fsm.TypeTaskPrune: 1, fsm.TypeAuditPrune: 1} {
		if got := fsm.LevelOf(typ); got != want || got > fsm.Level {
			t.Errorf("LevelOf(%d) = %d, want %d (this version applies up to %d)", typ, got, want, fsm.Level)
		}
	}
}
