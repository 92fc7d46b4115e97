package cluster

import (
	"bufio"
	"fmt"
	"net"
	"sort"
	"time"

	"github.com/hashicorp/raft"

	"github.com/mcpd/mcpd/internal/durable"
)

// A node whose raft data was moved aside (repair.go) has lost its log,
// its term and the vote it cast in it. Voting or campaigning with that
// could elect a leader without entries a majority committed, or give two
// candidates its vote in one term. So it rejoins as a non-voter:
//
//  1. With its Raft port closed to raft traffic (the mux turns raft
//     connections away), it asks the leader, over a membership message on
//     the Raft port, to demote it to non-voter. The leader commits the
//     change (DemoteVoter, or AddNonvoter when it is not a member) and a
//     barrier, and answers with its term.
//  2. The node records in its stable store a vote in that term for no
//     candidate, so it grants no vote in it, then opens its Raft port.
//     Raft runs without bootstrap; the leader replicates to it (entries or
//     a snapshot install).
//  3. Once its log is within promoteSlack entries of the leader's, it asks
//     to be promoted; the leader checks the claim against its own last
//     index and commits AddVoter.
//  4. Once the leader confirms it is a voter in the committed
//     configuration, and it sees that configuration and has applied what
//     it knows to be committed, it removes rejoin-pending and becomes
//     ready. Until then it serves no client: Ready is false and submits
//     and reads fail with ErrUnavailable.
//
// Why the vote record is enough: the leader's demotion commits in its
// term T only with every remaining voter's acknowledgement in T, so no
// other voter had moved past T; any vote this node cast before the wipe
// in a term above T went to a candidate that could not have won. Votes in
// T itself are refused. See DESIGN.md.

// protoMember is the membership request on the Raft port.
const protoMember byte = 'M'

// Membership operations.
const (
	memberDemote  = "demote"
	memberPromote = "promote"
)

// promoteSlack is how far behind the leader's last index a non-voter may
// be when it is promoted.
const promoteSlack = 256

// rejoinVote is recorded as the vote of the term the node rejoins in; it
// never equals a candidate's address, so no vote is granted in that term.
var rejoinVote = []byte("mcpd:rejoined-no-vote")

type memberRequest struct {
	Op   string `msgpack:"o"`
	ID   string `msgpack:"n"`
	Last uint64 `msgpack:"l"`
	Addr string `msgpack:"a,omitempty"` // join: the new server's raft address
}

type memberResponse struct {
	OK        bool   `msgpack:"ok"`
	NotLeader bool   `msgpack:"nl,omitempty"`
	Leader    string `msgpack:"la,omitempty"` // address of the leader, when known
	LeaderID  string `msgpack:"li,omitempty"`
	Term      uint64 `msgpack:"t,omitempty"`
	Last      uint64 `msgpack:"l,omitempty"` // the leader's last index
	Msg       string `msgpack:"m,omitempty"`
	Code      string `msgpack:"c,omitempty"` // operator requests: why not OK
	// Status answers an operator's status request (membership.go).
	Status *ServerStatus `msgpack:"s,omitempty"`
}

// serveMember answers one membership request (leader side).
func (n *Node) serveMember(c net.Conn) {
	defer c.Close()
	if !n.awaitRaft() {
		return
	}
	_ = c.SetDeadline(time.Now().Add(40 * time.Second))
	var req memberRequest
	if err := readFrame(bufio.NewReader(c), &req); err != nil {
		return
	}
	resp := n.handleMember(req, certNodeID(c))
	bw := bufio.NewWriter(c)
	if err := writeFrame(bw, resp); err == nil {
		_ = bw.Flush()
	}
}

// handleMember carries out req for the peer whose certificate names node
// certID ("" for a certificate shared by every node, or without TLS).
func (n *Node) handleMember(req memberRequest, certID string) memberResponse {
	notLeader := func(msg string) memberResponse {
		addr, id := n.raft.LeaderWithID()
		return memberResponse{NotLeader: true, Leader: string(addr), LeaderID: string(id), Msg: msg}
	}
	if isOperatorOp(req.Op) {
		return n.handleOperator(req) // membership.go
	}
	// A node's own certificate lets it change its own membership only.
	if certID != "" && certID != req.ID {
		if ok, _ := n.mux.refusals.note("member "+certID, time.Now()); ok {
			n.log.Warn("refused a membership request about another node", "from_node", certID, "about", req.ID, "op", req.Op)
		}
		return memberResponse{Msg: fmt.Sprintf("the certificate of node %q may not change the membership of %q", certID, req.ID)}
	}
	if n.raft.State() != raft.Leader {
		return notLeader("not the leader")
	}
	addr, ok := n.cfg.Peers[req.ID]
	if !ok {
		// A server added by an operator (membership.go).
		addr = n.configAddr(req.ID)
		ok = addr != ""
	}
	if !ok || req.ID == n.cfg.NodeID {
		return memberResponse{Msg: fmt.Sprintf("%q is not a configured peer", req.ID)}
	}
	term := n.raft.CurrentTerm()
	cf := n.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return notLeader(err.Error())
	}
	suffrage, member := raft.Nonvoter, false
	for _, s := range cf.Configuration().Servers {
		if string(s.ID) == req.ID {
			suffrage, member = s.Suffrage, true
		}
	}
	id, raddr := raft.ServerID(req.ID), raft.ServerAddress(addr)
	var f raft.Future
	switch req.Op {
	case memberDemote:
		switch {
		case !member:
			f = n.raft.AddNonvoter(id, raddr, 0, 10*time.Second)
		case suffrage == raft.Voter:
			f = n.raft.DemoteVoter(id, 0, 10*time.Second)
		}
		if f != nil {
			n.log.Warn("demoting a peer whose raft data was lost; it catches up as a non-voter before it is promoted back", "peer", req.ID, "term", term)
		}
	case memberPromote:
		last := n.raft.LastIndex()
		if !member {
			return memberResponse{Msg: fmt.Sprintf("%s is not a member; ask for a demotion first", req.ID)}
		}
		if suffrage != raft.Voter {
			if req.Last+promoteSlack < last {
				return memberResponse{Last: last, Term: term, Msg: fmt.Sprintf("not caught up: last index %d, leader's %d", req.Last, last)}
			}
			f = n.raft.AddVoter(id, raddr, 0, 10*time.Second)
			n.log.Info("promoting a caught-up peer back to voter", "peer", req.ID, "its_last", req.Last, "leader_last", last)
		}
	default:
		return memberResponse{Msg: fmt.Sprintf("unknown membership operation %q", req.Op)}
	}
	if f != nil {
		// Committed in term, acknowledged by a quorum of the voters left.
		if err := f.Error(); err != nil {
			return notLeader(err.Error())
		}
	} else {
		// Nothing to change (a retry): the configuration must be committed
		// already, and a quorum must still accept this leader's term. (No
		// barrier: it would leave an entry the FSM never applies, and
		// replicas compare applied indexes.)
		if cf.Index() > n.raft.CommitIndex() {
			return notLeader("a configuration change is in progress")
		}
		if err := n.raft.VerifyLeader().Error(); err != nil {
			return notLeader(err.Error())
		}
	}
	if n.raft.State() != raft.Leader || n.raft.CurrentTerm() != term {
		return notLeader("leadership changed during the change")
	}
	_, lid := n.raft.LeaderWithID()
	return memberResponse{OK: true, LeaderID: string(lid), Term: term, Last: n.raft.LastIndex()}
}

// memberCall sends req to the leader: to the known leader first, else to
// each peer in turn, following a redirect.
func (n *Node) memberCall(req memberRequest) (memberResponse, error) {
	var addrs []string
	if addr, _ := n.raft.LeaderWithID(); addr != "" {
		addrs = append(addrs, string(addr))
	}
	ids := n.otherPeers()
	sort.Strings(ids)
	for _, id := range ids {
		addrs = append(addrs, n.cfg.Peers[id])
	}
	var lastErr error
	tried := map[string]bool{}
	for len(addrs) > 0 {
		addr := addrs[0]
		addrs = addrs[1:]
		if tried[addr] {
			continue
		}
		tried[addr] = true
		resp, err := n.memberCallTo(addr, req)
		if err != nil {
			lastErr = err
			continue
		}
		if resp.NotLeader {
			lastErr = fmt.Errorf("%s: %s", addr, resp.Msg)
			if resp.Leader != "" {
				addrs = append([]string{resp.Leader}, addrs...)
			}
			continue
		}
		return resp, nil
	}
	if lastErr == nil {
		lastErr = fmt.Errorf("no peers")
	}
	return memberResponse{}, lastErr
}

func (n *Node) memberCallTo(addr string, req memberRequest) (memberResponse, error) {
	return n.memberCallTimeout(addr, req, 45*time.Second)
}

// rejoin runs steps 1 to 4 above. demote is false when an earlier start
// already got this node demoted and recorded its vote (its raft store is
// no longer empty).
func (n *Node) rejoin(demote bool) {
	defer n.wg.Done()
	sleep := func(d time.Duration) bool {
		select {
		case <-n.shutdownCh:
			return false
		case <-time.After(d):
			return true
		}
	}
	var lastLog time.Time
	every := func(d time.Duration) bool {
		if time.Since(lastLog) < d {
			return false
		}
		lastLog = time.Now()
		return true
	}
	started := time.Now()
	if demote {
		for {
			resp, err := n.memberCall(memberRequest{Op: memberDemote, ID: n.cfg.NodeID})
			if err == nil && resp.OK {
				// A vote in the leader's term for nobody.
				err = n.stable.SetUint64(keyLastVoteTerm, resp.Term)
				if err == nil {
					err = n.stable.Set(keyLastVoteCand, rejoinVote)
				}
				if err != nil {
					n.log.Error("cannot record the rejoin vote; retrying", "err", err)
				} else {
					n.mux.raftClosed.Store(false)
					n.log.Warn("demoted to non-voter by the leader; catching up from it before being promoted back",
						"node", n.cfg.NodeID, "leader", resp.LeaderID, "term", resp.Term, "leader_last", resp.Last)
					break
				}
			} else if every(5 * time.Second) {
				why := "refused"
				if err != nil {
					why = err.Error()
				} else if resp.Msg != "" {
					why = resp.Msg
				}
				n.log.Warn("rejoin: waiting for a leader to demote this node before it takes part in raft again; not serving meanwhile",
					"node", n.cfg.NodeID, "waiting", time.Since(started).Round(time.Second), "last_error", why)
			}
			if !sleep(500 * time.Millisecond) {
				return
			}
		}
	}
	lastLog = time.Time{}
	// Only the leader's word counts: until the demotion entry arrives,
	// the configuration this node knows may come from a snapshot taken
	// before it, which still lists it as a voter.
	promoted := false
	for {
		if promoted && n.isVoter() && n.Leader() != "" && n.fsm.AppliedIndex()+8 >= n.raft.CommitIndex() {
			if err := durable.Remove(rejoinMarker(n.cfg.DataDir)); err != nil {
				n.log.Error("cannot remove the rejoin marker; retrying", "err", err)
			} else {
				n.rejoining.Store(false)
				n.log.Warn("rejoin complete: voter again and caught up; serving",
					"node", n.cfg.NodeID, "applied", n.fsm.AppliedIndex(), "took", time.Since(started).Round(time.Millisecond))
				return
			}
		} else if n.Leader() != "" {
			last := n.raft.LastIndex()
			resp, err := n.memberCall(memberRequest{Op: memberPromote, ID: n.cfg.NodeID, Last: last})
			promoted = err == nil && resp.OK
			if !promoted && every(5*time.Second) {
				why := resp.Msg
				if err != nil {
					why = err.Error()
				}
				n.log.Info("rejoin: catching up as a non-voter", "node", n.cfg.NodeID, "last", last,
					"applied", n.fsm.AppliedIndex(), "leader_last", resp.Last, "status", why)
			}
		} else if every(5 * time.Second) {
			n.log.Info("rejoin: waiting for the leader's replication", "node", n.cfg.NodeID, "leader", n.Leader())
		}
		if !sleep(250 * time.Millisecond) {
			return
		}
	}
}

// isVoter reports whether the latest configuration this node knows makes
// it a voter.
func (n *Node) isVoter() bool {
	cf := n.raft.GetConfiguration()
	if cf.Error() != nil {
		return false
	}
	for _, s := range cf.Configuration().Servers {
		if string(s.ID) == n.cfg.NodeID {
			return s.Suffrage == raft.Voter
		}
	}
	return false
}

// The stable keys of hashicorp/raft's vote record.
var (
	keyLastVoteTerm = []byte("LastVoteTerm")
	keyLastVoteCand = []byte("LastVoteCand")
)
