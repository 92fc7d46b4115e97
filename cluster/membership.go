package cluster

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"github.com/mcpd/mcpd/fsm"
	bolt "go.etcd.io/bbolt"
)

// Operator membership changes (mcpd cluster join, remove,
// transfer-leadership) and the cluster status. A change is made by the
// leader; a follower forwards it over the Raft port (a membership message,
// protocol byte M) and relays the leader's answer. The status asks every
// server of the configuration for its own figures the same way.

// Operator membership operations (memberRequest.Op).
const (
	memberJoin     = "join"
	memberRemove   = "remove"
	memberTransfer = "transfer"
	memberStatus   = "status"
)

// membershipTimeout bounds one configuration change on the leader.
const membershipTimeout = 20 * time.Second

// ServerStatus is one server of the cluster as it reports itself.
type ServerStatus struct {
	ID       string `json:"id" msgpack:"id"`
	Address  string `json:"address" msgpack:"addr"`
	Suffrage string `json:"suffrage" msgpack:"suf"` // Voter or Nonvoter
	// The fields below come from the server itself; Error says why they
	// are missing when it did not answer.
	Role        string `json:"role,omitempty" msgpack:"role"`
	Leader      string `json:"leader,omitempty" msgpack:"ldr"`
	Term        uint64 `json:"term,omitempty" msgpack:"term"`
	Applied     uint64 `json:"applied_index,omitempty" msgpack:"app"`
	Commit      uint64 `json:"commit_index,omitempty" msgpack:"com"`
	LastIndex   uint64 `json:"last_index,omitempty" msgpack:"last"`
	LastContact string `json:"last_contact,omitempty" msgpack:"lc"` // "leader", "never" or a duration ago
	Healthy     bool   `json:"healthy" msgpack:"ok"`
	Reason      string `json:"reason,omitempty" msgpack:"why"` // why not healthy
	Error       string `json:"error,omitempty" msgpack:"err"`
	// Level is the command level the server last announced, as this
	// node's applied state records it (0: none; fsm.LevelOf).
	Level int `json:"command_level" msgpack:"-"`
}

// ErrNotMember is a remove or transfer naming no server of the
// configuration; ErrMemberExists a join of an id or address already used.
var (
	ErrNotMember    = errors.New("not a member of the cluster")
	ErrMemberExists = errors.New("already a member of the cluster")
)

// selfStatus is this node's own figures.
func (n *Node) selfStatus() ServerStatus {
	st := ServerStatus{ID: n.cfg.NodeID}
	if !n.awaitRaft() {
		st.Error = ErrShutdown.Error()
		return st
	}
	st.Role = n.raft.State().String()
	st.Leader = n.Leader()
	st.Term = n.raft.CurrentTerm()
	st.Applied = n.fsm.AppliedIndex()
	st.Commit = n.raft.CommitIndex()
	st.LastIndex = n.raft.LastIndex()
	switch lc := n.raft.LastContact(); {
	case n.raft.State() == raft.Leader:
		st.LastContact = "leader"
	case lc.IsZero():
		st.LastContact = "never"
	default:
		st.LastContact = time.Since(lc).Round(time.Millisecond).String()
	}
	if n.Rejoining() {
		st.Reason = "rejoining: rebuilding its raft data from its peers"
	} else {
		st.Reason = n.NotReadyReason()
	}
	st.Healthy = st.Reason == ""
	return st
}

// Configuration is the latest Raft configuration this node knows (it may
// not be committed yet).
func (n *Node) Configuration() ([]raft.Server, error) {
	if !n.awaitRaft() {
		return nil, ErrShutdown
	}
	cf := n.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return nil, err
	}
	return cf.Configuration().Servers, nil
}

// ClusterStatus asks every server of the configuration for its status,
// at most timeout each; a server that does not answer has Error set.
func (n *Node) ClusterStatus(ctx context.Context, timeout time.Duration) ([]ServerStatus, error) {
	servers, err := n.Configuration()
	if err != nil {
		return nil, err
	}
	out := make([]ServerStatus, len(servers))
	var wg sync.WaitGroup
	for i, s := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var st ServerStatus
			if string(s.ID) == n.cfg.NodeID {
				st = n.selfStatus()
			} else {
				resp, err := n.memberCallCtx(ctx, string(s.Address), memberRequest{Op: memberStatus, ID: string(s.ID)}, timeout)
				switch {
				case err != nil:
					st.Error = err.Error()
				case resp.Status == nil:
					st.Error = "no status in the answer: " + resp.Msg
				default:
					st = *resp.Status
				}
			}
			if st.ID != "" && st.ID != string(s.ID) {
				st = ServerStatus{Error: fmt.Sprintf("node %q answers at this address", st.ID)}
			}
			st.ID, st.Address, st.Suffrage = string(s.ID), string(s.Address), s.Suffrage.String()
			if st.Error != "" {
				st.Healthy = false
			}
			out[i] = st
		}()
	}
	wg.Wait()
	var levels map[string]int
	if err := n.FSM().View(func(tx *bolt.Tx) error { levels = fsm.NodeLevels(tx); return nil }); err == nil {
		for i := range out {
			out[i].Level = levels[out[i].ID]
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// memberCallCtx is memberCallTo bounded by timeout and ctx.
func (n *Node) memberCallCtx(ctx context.Context, addr string, req memberRequest, timeout time.Duration) (memberResponse, error) {
	type result struct {
		resp memberResponse
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		resp, err := n.memberCallTimeout(addr, req, timeout)
		ch <- result{resp, err}
	}()
	select {
	case r := <-ch:
		return r.resp, r.err
	case <-ctx.Done():
		return memberResponse{}, ctx.Err()
	}
}

// Join adds server id at the Raft address addr as a voter. The new node
// must run with --join (it must not bootstrap a cluster of its own) and
// present a certificate of the cluster CA. Joining an id already in the
// configuration at the same address succeeds and changes nothing.
func (n *Node) Join(id, addr string) error {
	if id == "" || addr == "" {
		return errors.New("join needs the node's id and its raft address")
	}
	if _, port, err := net.SplitHostPort(addr); err != nil || port == "" {
		return fmt.Errorf("raft address %q: want host:port", addr)
	}
	_, err := n.operatorOp(memberRequest{Op: memberJoin, ID: id, Addr: addr})
	return err
}

// Remove takes server id out of the configuration.
func (n *Node) Remove(id string) error {
	if id == "" {
		return errors.New("remove needs a node id")
	}
	_, err := n.operatorOp(memberRequest{Op: memberRemove, ID: id})
	return err
}

// TransferLeadership hands leadership to server id ("": the most
// up-to-date voter) and returns the new leader's id.
func (n *Node) TransferLeadership(id string) (string, error) {
	resp, err := n.operatorOp(memberRequest{Op: memberTransfer, ID: id})
	return resp.LeaderID, err
}

// operatorOp carries req out here when this node leads, else on the
// leader.
func (n *Node) operatorOp(req memberRequest) (memberResponse, error) {
	if !n.awaitRaft() {
		return memberResponse{}, ErrShutdown
	}
	var resp memberResponse
	if n.raft.State() == raft.Leader {
		resp = n.handleOperator(req)
	} else {
		addr, _ := n.raft.LeaderWithID()
		if addr == "" {
			return memberResponse{}, fmt.Errorf("%w: no leader known", ErrUnavailable)
		}
		var err error
		resp, err = n.memberCallTimeout(string(addr), req, membershipTimeout+5*time.Second)
		if err != nil {
			return memberResponse{}, fmt.Errorf("%w: forwarding to the leader at %s: %v", ErrUnavailable, addr, err)
		}
	}
	if resp.NotLeader {
		msg := "not the leader"
		if resp.Msg != "" {
			msg = resp.Msg
		}
		if resp.Leader != "" {
			msg += fmt.Sprintf("; leader %s at %s", resp.LeaderID, resp.Leader)
		}
		return resp, fmt.Errorf("%w: %s", ErrUnavailable, msg)
	}
	if !resp.OK {
		switch resp.Code {
		case "not_member":
			return resp, fmt.Errorf("%w: %s", ErrNotMember, resp.Msg)
		case "exists":
			return resp, fmt.Errorf("%w: %s", ErrMemberExists, resp.Msg)
		}
		return resp, errors.New(resp.Msg)
	}
	return resp, nil
}

// handleOperator carries out an operator request (status on any node,
// the changes on the leader). Any member's certificate may send one: the
// admin API of a follower forwards its operator's requests.
func (n *Node) handleOperator(req memberRequest) memberResponse {
	if req.Op == memberStatus {
		st := n.selfStatus()
		return memberResponse{OK: true, Status: &st}
	}
	notLeader := func(msg string) memberResponse {
		addr, id := n.raft.LeaderWithID()
		return memberResponse{NotLeader: true, Leader: string(addr), LeaderID: string(id), Msg: msg}
	}
	if n.raft.State() != raft.Leader {
		return notLeader("not the leader")
	}
	servers, err := n.Configuration()
	if err != nil {
		return notLeader(err.Error())
	}
	var cur *raft.Server
	for i, s := range servers {
		if string(s.ID) == req.ID {
			cur = &servers[i]
		}
	}
	fail := func(code, format string, args ...any) memberResponse {
		return memberResponse{Code: code, Msg: fmt.Sprintf(format, args...)}
	}
	var f raft.Future
	switch req.Op {
	case memberJoin:
		for _, s := range servers {
			if string(s.Address) == req.Addr && string(s.ID) != req.ID {
				return fail("exists", "address %s is already used by node %s", req.Addr, s.ID)
			}
		}
		if cur != nil && string(cur.Address) != req.Addr {
			return fail("exists", "node %s is a member at %s; remove it first to move it", req.ID, cur.Address)
		}
		if cur != nil && cur.Suffrage == raft.Voter {
			break // already there: nothing to do
		}
		n.log.Info("adding a voter", "peer", req.ID, "address", req.Addr)
		f = n.raft.AddVoter(raft.ServerID(req.ID), raft.ServerAddress(req.Addr), 0, membershipTimeout)
	case memberRemove:
		if cur == nil {
			return fail("not_member", "no node %q in the configuration", req.ID)
		}
		voters := 0
		for _, s := range servers {
			if s.Suffrage == raft.Voter {
				voters++
			}
		}
		if cur.Suffrage == raft.Voter && voters == 1 {
			return fail("bad_request", "%s is the only voter", req.ID)
		}
		n.log.Info("removing a server", "peer", req.ID, "address", cur.Address)
		f = n.raft.RemoveServer(raft.ServerID(req.ID), 0, membershipTimeout)
	case memberTransfer:
		if req.ID == "" {
			f = n.transferToAny(servers)
		} else {
			if cur == nil {
				return fail("not_member", "no node %q in the configuration", req.ID)
			}
			if cur.Suffrage != raft.Voter {
				return fail("bad_request", "%s is not a voter", req.ID)
			}
			if req.ID == n.cfg.NodeID {
				return memberResponse{OK: true, LeaderID: n.cfg.NodeID, Term: n.raft.CurrentTerm()}
			}
			f = n.raft.LeadershipTransferToServer(cur.ID, cur.Address)
		}
		n.log.Info("transferring leadership", "to", req.ID)
	default:
		return fail("bad_request", "unknown membership operation %q", req.Op)
	}
	if f != nil {
		if err := f.Error(); err != nil {
			if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) || errors.Is(err, raft.ErrLeadershipTransferInProgress) {
				return notLeader(err.Error())
			}
			return fail("failed", "%s %s: %v", req.Op, req.ID, err)
		}
	}
	resp := memberResponse{OK: true, Term: n.raft.CurrentTerm(), Last: n.raft.LastIndex()}
	_, lid := n.raft.LeaderWithID()
	resp.LeaderID = string(lid)
	if req.Op == memberTransfer {
		// The new leader is known once its first heartbeat arrives.
		deadline := time.Now().Add(5 * time.Second)
		for resp.LeaderID == n.cfg.NodeID || resp.LeaderID == "" {
			if time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
			_, lid = n.raft.LeaderWithID()
			resp.LeaderID = string(lid)
		}
	}
	return resp
}

// isOperatorOp reports whether op is one of the operator's requests.
func isOperatorOp(op string) bool {
	switch op {
	case memberJoin, memberRemove, memberTransfer, memberStatus:
		return true
	}
	return false
}

// memberCallTimeout sends one membership request to addr over the Raft
// port and reads the answer, all within timeout (dialing within 2 s);
// the node shutting down ends it.
func (n *Node) memberCallTimeout(addr string, req memberRequest, timeout time.Duration) (memberResponse, error) {
	c, err := n.mux.dial(addr, protoMember, min(timeout, 2*time.Second))
	if err != nil {
		return memberResponse{}, err
	}
	defer c.Close()
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-n.shutdownCh:
			c.Close()
		case <-done:
		}
	}()
	_ = c.SetDeadline(time.Now().Add(timeout))
	bw := bufio.NewWriter(c)
	if err := writeFrame(bw, req); err != nil {
		return memberResponse{}, err
	}
	if err := bw.Flush(); err != nil {
		return memberResponse{}, err
	}
	var resp memberResponse
	if err := readFrame(bufio.NewReader(c), &resp); err != nil {
		return memberResponse{}, err
	}
	return resp, nil
}

// configMember reports whether id is a server of the latest
// configuration, and configID the id of the server at addr ("" when
// none). They let the Raft port's TLS accept nodes added after start.
func (n *Node) configMember(id string) bool {
	servers, err := n.latestServers()
	if err != nil {
		return false
	}
	for _, s := range servers {
		if string(s.ID) == id {
			return true
		}
	}
	return false
}

func (n *Node) configID(addr string) string {
	servers, err := n.latestServers()
	if err != nil {
		return ""
	}
	for _, s := range servers {
		if string(s.Address) == addr {
			return string(s.ID)
		}
	}
	return ""
}

// latestServers is the latest configuration without waiting for Raft to
// exist (the mux serves before it does).
func (n *Node) latestServers() ([]raft.Server, error) {
	select {
	case <-n.raftUp:
	default:
		return nil, errors.New("raft not started")
	}
	cf := n.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return nil, err
	}
	return cf.Configuration().Servers, nil
}

// configAddr is the address of server id in the latest configuration, ""
// when it is not there.
func (n *Node) configAddr(id string) string {
	servers, err := n.latestServers()
	if err != nil {
		return ""
	}
	for _, s := range servers {
		if string(s.ID) == id {
			return string(s.Address)
		}
	}
	return ""
}

// transferToAny hands leadership to the most up-to-date voter, as raft
// picks it; raft may pick one that is down (its replication state does
// not say), so when that fails each other voter is tried in turn.
func (n *Node) transferToAny(servers []raft.Server) raft.Future {
	f := n.raft.LeadershipTransfer()
	err := f.Error()
	if err == nil || n.raft.State() != raft.Leader {
		return f
	}
	for _, s := range servers {
		if s.Suffrage != raft.Voter || string(s.ID) == n.cfg.NodeID {
			continue
		}
		if f = n.raft.LeadershipTransferToServer(s.ID, s.Address); f.Error() == nil || n.raft.State() != raft.Leader {
			return f
		}
	}
	return f
}
