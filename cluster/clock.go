package cluster

import (
	"encoding/binary"
	"io"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// Cluster time. The leader stamps every log entry with the time the state
// machine uses for leases, delays and dedup windows. Stamping with the
// leader's own wall clock would let one node with a bad clock stretch or
// cut every lease in the cluster: while it leads, time jumps ahead by its
// error, and after it, time stands still until the true clocks catch up
// (stamps never go backwards). So each node measures its peers' clocks and
// the stamp is the median of the voters' clocks: one bad clock in three
// (two in five) cannot move it, as long as every voter's clock was
// measured in the last clockSampleTTL. With a voter of three unmeasured
// for longer (down since), the other two are averaged: one bad clock
// between them moves cluster time by half its error.

// protoClock is the clock probe on the Raft port: the prober writes one
// byte, the peer answers with its wall clock as 8 bytes of unix nanoseconds.
const protoClock byte = 'C'

const (
	clockProbeEvery = time.Second
	clockMaxRTT     = time.Second // a slower answer says too little
	clockIdle       = 15 * time.Second
)

// clockSampleTTL is how long a peer's measured offset counts. An offset
// moves only when a clock is stepped (a slewing clock drifts by at most
// 0.5 ms a second, 60 ms in two minutes), so a measurement stays good
// while that peer's probes fail for a while: a stalled process or a slow
// link must not leave two clocks of three to split the difference, which
// would move cluster time by half of one bad clock's error.
const clockSampleTTL = 2 * time.Minute

type clockSample struct {
	offset time.Duration // the peer's clock minus ours
	at     time.Time     // when it was taken (monotonic)
}

type peerClocks struct {
	mu      sync.Mutex
	samples map[raft.ServerID]clockSample
	voters  int // in the configuration last read; 0 before (no quorum yet)
}

// wallNow is this node's own clock (shifted in fault-injection tests).
func (n *Node) wallNow() time.Time { return time.Now().Add(n.cfg.ClockOffset) }

// Now is the cluster time in unix ms: this node's clock corrected by the
// median of the voters' clock offsets measured in the last few seconds.
func (n *Node) Now() int64 {
	corr, _ := n.clockCorrection()
	return n.wallNow().Add(corr).UnixMilli()
}

// stampTime is Now for a leader about to stamp an entry. It is false until
// the clocks of a quorum of voters (this node included) have been
// measured: right after a cluster starts, a leader with a bad clock would
// otherwise stamp its own time before it knows better.
func (n *Node) stampTime() (int64, bool) {
	corr, quorum := n.clockCorrection()
	return n.wallNow().Add(corr).UnixMilli(), quorum
}

// clockCorrection is the median offset of the voters whose clocks were
// measured recently, this node counting as offset zero. With an even count
// it is the mean of the middle two. quorum says whether those clocks are
// a majority of the voters.
func (n *Node) clockCorrection() (corr time.Duration, quorum bool) {
	offs := []time.Duration{0}
	now := time.Now()
	n.clocks.mu.Lock()
	for id, s := range n.clocks.samples {
		if id != raft.ServerID(n.cfg.NodeID) && now.Sub(s.at) < clockSampleTTL {
			offs = append(offs, s.offset)
		}
	}
	voters := n.clocks.voters
	n.clocks.mu.Unlock()
	quorum = voters > 0 && len(offs) > voters/2
	slices.Sort(offs)
	m := len(offs) / 2
	if len(offs)%2 == 1 {
		return offs[m], quorum
	}
	return (offs[m-1] + offs[m]) / 2, quorum
}

// serveClock answers clock probes on one connection until it closes.
func (n *Node) serveClock(c net.Conn) {
	defer c.Close()
	var req [1]byte
	var resp [8]byte
	for {
		_ = c.SetReadDeadline(time.Now().Add(clockIdle))
		if _, err := c.Read(req[:]); err != nil {
			return
		}
		binary.BigEndian.PutUint64(resp[:], uint64(n.wallNow().UnixNano()))
		_ = c.SetWriteDeadline(time.Now().Add(clockMaxRTT))
		if _, err := c.Write(resp[:]); err != nil {
			return
		}
	}
}

// clockLoop keeps one prober per voter, each measuring that voter's clock
// once a second over a connection of its own, so an unreachable peer
// delays no other measurement.
func (n *Node) clockLoop() {
	defer n.wg.Done()
	probers := map[raft.ServerID]chan struct{}{} // stop channel per peer
	var wg sync.WaitGroup
	defer func() {
		for _, stop := range probers {
			close(stop)
		}
		wg.Wait()
	}()
	// Until the configuration is known (a node that just bootstrapped),
	// look again soon: a leader stamps nothing before it knows a quorum's
	// clocks.
	wait := time.Duration(0)
	for {
		select {
		case <-n.shutdownCh:
			return
		case <-time.After(wait):
		}
		wait = 50 * time.Millisecond
		f := n.raft.GetConfiguration()
		if f.Error() != nil || len(f.Configuration().Servers) == 0 {
			continue
		}
		wait = clockProbeEvery
		voters := map[raft.ServerID]raft.ServerAddress{}
		for _, s := range f.Configuration().Servers {
			if s.Suffrage == raft.Voter {
				voters[s.ID] = s.Address
			}
		}
		n.clocks.mu.Lock()
		n.clocks.voters = len(voters)
		for id := range n.clocks.samples {
			if _, ok := voters[id]; !ok {
				delete(n.clocks.samples, id) // no longer a voter: its clock has no say
			}
		}
		n.clocks.mu.Unlock()
		for id, stop := range probers {
			if _, ok := voters[id]; !ok {
				close(stop)
				delete(probers, id)
			}
		}
		for id, addr := range voters {
			if _, ok := probers[id]; ok || id == raft.ServerID(n.cfg.NodeID) {
				continue
			}
			stop := make(chan struct{})
			probers[id] = stop
			wg.Add(1)
			go func() {
				defer wg.Done()
				n.probePeer(id, string(addr), stop)
			}()
		}
	}
}

// probePeer measures one peer's clock once a second until stop closes (an
// address change of a peer is a membership change: its prober restarts).
func (n *Node) probePeer(id raft.ServerID, addr string, stop chan struct{}) {
	var c net.Conn
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	t := time.NewTicker(clockProbeEvery)
	defer t.Stop()
	for {
		if c == nil {
			c, _ = n.mux.dial(addr, protoClock, clockMaxRTT)
		}
		if c != nil {
			off, err := probeClock(c, n.wallNow)
			if err != nil {
				c.Close()
				c = nil
			} else {
				n.clocks.mu.Lock()
				if n.clocks.samples == nil {
					n.clocks.samples = map[raft.ServerID]clockSample{}
				}
				n.clocks.samples[id] = clockSample{offset: off, at: time.Now()}
				n.clocks.mu.Unlock()
			}
		}
		select {
		case <-stop:
			return
		case <-n.shutdownCh:
			return
		case <-t.C:
		}
	}
}

// probeClock asks the peer on c for its clock and returns its offset from
// ours, assuming the answer was taken halfway through the round trip.
func probeClock(c net.Conn, wall func() time.Time) (time.Duration, error) {
	_ = c.SetDeadline(time.Now().Add(clockMaxRTT))
	sent := wall()
	start := time.Now()
	if _, err := c.Write([]byte{0}); err != nil {
		return 0, err
	}
	var resp [8]byte
	if _, err := io.ReadFull(c, resp[:]); err != nil {
		return 0, err
	}
	rtt := time.Since(start)
	peer := time.Unix(0, int64(binary.BigEndian.Uint64(resp[:])))
	return peer.Sub(sent.Add(rtt / 2)), nil
}
