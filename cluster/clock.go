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
// (two in five) cannot move it.

// protoClock is the clock probe on the Raft port: the prober writes one
// byte, the peer answers with its wall clock as 8 bytes of unix nanoseconds.
const protoClock byte = 'C'

const (
	clockProbeEvery = time.Second
	clockSampleTTL  = 5 * clockProbeEvery // older samples are not used
	clockMaxRTT     = time.Second         // a slower answer says too little
)

type clockSample struct {
	offset time.Duration // the peer's clock minus ours
	at     time.Time     // when it was taken (monotonic)
}

type peerClocks struct {
	mu      sync.Mutex
	samples map[raft.ServerID]clockSample
}

// wallNow is this node's own clock (shifted in fault-injection tests).
func (n *Node) wallNow() time.Time { return time.Now().Add(n.cfg.ClockOffset) }

// Now is the cluster time in unix ms: this node's clock corrected by the
// median of the voters' clock offsets measured in the last few seconds.
func (n *Node) Now() int64 {
	return n.wallNow().Add(n.clockCorrection()).UnixMilli()
}

// clockCorrection is the median offset of the voters whose clocks were
// measured recently, this node counting as offset zero. With an even count
// it is the mean of the middle two.
func (n *Node) clockCorrection() time.Duration {
	offs := []time.Duration{0}
	now := time.Now()
	n.clocks.mu.Lock()
	for id, s := range n.clocks.samples {
		if id != raft.ServerID(n.cfg.NodeID) && now.Sub(s.at) < clockSampleTTL {
			offs = append(offs, s.offset)
		}
	}
	n.clocks.mu.Unlock()
	slices.Sort(offs)
	m := len(offs) / 2
	if len(offs)%2 == 1 {
		return offs[m]
	}
	return (offs[m-1] + offs[m]) / 2
}

// serveClock answers clock probes on one connection until it closes.
func (n *Node) serveClock(c net.Conn) {
	defer c.Close()
	var req [1]byte
	var resp [8]byte
	for {
		_ = c.SetReadDeadline(time.Now().Add(3 * clockSampleTTL))
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

// clockLoop measures every voter's clock once a second over a connection
// kept open per peer.
func (n *Node) clockLoop() {
	defer n.wg.Done()
	conns := map[raft.ServerID]net.Conn{}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	t := time.NewTicker(clockProbeEvery)
	defer t.Stop()
	for {
		select {
		case <-n.shutdownCh:
			return
		case <-t.C:
		}
		f := n.raft.GetConfiguration()
		if f.Error() != nil {
			continue
		}
		for _, s := range f.Configuration().Servers {
			if s.ID == raft.ServerID(n.cfg.NodeID) || s.Suffrage != raft.Voter {
				continue
			}
			c := conns[s.ID]
			if c == nil {
				var err error
				if c, err = dial(string(s.Address), protoClock, clockMaxRTT); err != nil {
					continue
				}
				conns[s.ID] = c
			}
			off, err := probeClock(c, n.wallNow)
			if err != nil {
				c.Close()
				delete(conns, s.ID)
				continue
			}
			n.clocks.mu.Lock()
			if n.clocks.samples == nil {
				n.clocks.samples = map[raft.ServerID]clockSample{}
			}
			n.clocks.samples[s.ID] = clockSample{offset: off, at: time.Now()}
			n.clocks.mu.Unlock()
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
