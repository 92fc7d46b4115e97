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
		voters  int
		want    time.Duration
		quorum  bool
	}{
		{"alone: a one-node cluster", nil, 1, 0, true},
		{"configuration not read yet", nil, 0, 0, false},
		{"alone of three: no quorum measured yet", nil, 3, 0, false},
		{"one peer far ahead is outvoted", map[raft.ServerID]clockSample{
			"n2": {offset: 5 * time.Minute, at: fresh},
			"n3": {offset: 3 * time.Millisecond, at: fresh},
		}, 3, 3 * time.Millisecond, true},
		{"this node far behind follows the majority", map[raft.ServerID]clockSample{
			"n2": {offset: 5 * time.Minute, at: fresh},
			"n3": {offset: 5*time.Minute + 2*time.Millisecond, at: fresh},
		}, 3, 5 * time.Minute, true},
		{"two clocks: the mean", map[raft.ServerID]clockSample{
			"n2": {offset: 4 * time.Second, at: fresh},
		}, 3, 2 * time.Second, true},
		{"a peer unmeasured for a minute still outvotes this node's bad clock", map[raft.ServerID]clockSample{
			"n2": {offset: -5 * time.Minute, at: fresh},
			"n3": {offset: -5*time.Minute + 4*time.Millisecond, at: now.Add(-time.Minute)},
		}, 3, -5*time.Minute + 4*time.Millisecond, true},
		{"stale samples are ignored", map[raft.ServerID]clockSample{
			"n2": {offset: 5 * time.Minute, at: stale},
			"n3": {offset: 5 * time.Minute, at: stale},
		}, 3, 0, false},
		{"own id never counts twice", map[raft.ServerID]clockSample{
			"n1": {offset: time.Hour, at: fresh},
			"n2": {offset: 6 * time.Second, at: fresh},
			"n3": {offset: 8 * time.Second, at: fresh},
		}, 3, 6 * time.Second, true},
		{"five voters, one measured: no quorum", map[raft.ServerID]clockSample{
			"n2": {offset: time.Second, at: fresh},
		}, 5, time.Second / 2, false},
		{"five voters, two wrong", map[raft.ServerID]clockSample{
			"n2": {offset: -time.Hour, at: fresh},
			"n3": {offset: time.Hour, at: fresh},
			"n4": {offset: time.Millisecond, at: fresh},
			"n5": {offset: -time.Millisecond, at: fresh},
		}, 5, 0, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			n := &Node{cfg: Config{NodeID: "n1"}}
			n.clocks.samples, n.clocks.voters = c.samples, c.voters
			got, quorum := n.clockCorrection()
			if got != c.want || quorum != c.quorum {
				t.Fatalf("correction %v (quorum %v), want %v (quorum %v)", got, quorum, c.want, c.quorum)
			}
		})
	}
}
