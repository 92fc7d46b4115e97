package cluster

import (
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func TestClockCorrectionIsTheMedian(t *testing.T) {
	now := time.Now()
	fresh, stale := now, now.Add(-2*clockSampleTTL)
	cases := []struct {
		name    string
		samples map[raft.ServerID]clockSample
		want    time.Duration
	}{
		{"alone", nil, 0},
		{"one peer far ahead is outvoted", map[raft.ServerID]clockSample{
			"n2": {offset: 5 * time.Minute, at: fresh},
			"n3": {offset: 3 * time.Millisecond, at: fresh},
		}, 3 * time.Millisecond},
		{"this node far behind follows the majority", map[raft.ServerID]clockSample{
			"n2": {offset: 5 * time.Minute, at: fresh},
			"n3": {offset: 5*time.Minute + 2*time.Millisecond, at: fresh},
		}, 5 * time.Minute},
		{"two clocks: the mean", map[raft.ServerID]clockSample{
			"n2": {offset: 4 * time.Second, at: fresh},
		}, 2 * time.Second},
		{"stale samples are ignored", map[raft.ServerID]clockSample{
			"n2": {offset: 5 * time.Minute, at: stale},
			"n3": {offset: 5 * time.Minute, at: stale},
		}, 0},
		{"own id never counts twice", map[raft.ServerID]clockSample{
			"n1": {offset: time.Hour, at: fresh},
			"n2": {offset: 6 * time.Second, at: fresh},
			"n3": {offset: 8 * time.Second, at: fresh},
		}, 6 * time.Second},
		{"five voters, two wrong", map[raft.ServerID]clockSample{
			"n2": {offset: -time.Hour, at: fresh},
			"n3": {offset: time.Hour, at: fresh},
			"n4": {offset: time.Millisecond, at: fresh},
			"n5": {offset: -time.Millisecond, at: fresh},
		}, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			n := &Node{cfg: Config{NodeID: "n1"}}
			n.clocks.samples = c.samples
			if got := n.clockCorrection(); got != c.want {
				t.Fatalf("correction %v, want %v", got, c.want)
			}
		})
	}
}
