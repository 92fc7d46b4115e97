// Package cluster runs one mcpd node: hashicorp/raft with raft-boltdb as
// log and stable store, the FSM, group commit of client commands,
// forwarding of followers' commands to the leader, the leader's expiry
// ticks, and the routing of applied effects to local connections. See
// DESIGN.md beside this file.
package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/queue"
	bolt "go.etcd.io/bbolt"
)

// Errors a command submission can end with.
var (
	// ErrUnavailable: there is no leader or no quorum; the command was not
	// applied and is safe to retry.
	ErrUnavailable = errors.New("unavailable")
	// ErrUnknown: the command may or may not have been committed (leadership
	// lost during the commit, a timeout). Retrying with the same envelope id
	// is safe because of deduplication.
	ErrUnknown = errors.New("outcome unknown")
	// ErrShutdown: the node is stopping.
	ErrShutdown = errors.New("node is shutting down")
)

// Config configures a node.
type Config struct {
	NodeID  string
	DataDir string
	// RaftBind is the host:port the Raft listener binds, unless
	// RaftListener is given (tests pass one bound to port 0).
	RaftBind     string
	RaftListener net.Listener
	// Peers maps every voter's id to its Raft address (host:port); it is
	// the same on every node. A node absent from Peers runs alone (dev).
	Peers map[string]string
	// Join: this node is new to a running cluster. It never bootstraps;
	// it waits until an operator adds it (Node.Join on a member) and the
	// leader replicates to it. Peers lists the running cluster's servers
	// and this node.
	Join bool
	// Timeouts; zero means the defaults below.
	HeartbeatTimeout time.Duration
	ElectionTimeout  time.Duration
	// SubmitTimeout bounds how long a command waits for a leader before it
	// fails with ErrUnavailable.
	SubmitTimeout time.Duration
	// NodeDownAfter is how long the leader waits, after a peer stopped
	// answering heartbeats, before it ends that peer's connections
	// cluster-wide (releasing their leases). Default 15 s.
	NodeDownAfter time.Duration
	// SnapshotThreshold and TrailingLogs tune Raft's log compaction; zero
	// means 8192 and 65536.
	SnapshotThreshold uint64
	TrailingLogs      uint64
	// SnapshotEvery, for tests, sets SnapshotThreshold and TrailingLogs
	// to it and checks the threshold every second instead of every 60 s.
	SnapshotEvery uint64
	// PeerTLS puts the Raft port under mutual TLS (peertls.go): every
	// connection accepted there must present a certificate from the
	// cluster CA, and every connection to a peer presents this node's and
	// checks the peer's. Nothing plaintext is accepted then. mcpd serve
	// always sets it; nil (plaintext) is for tests that build nodes
	// directly.
	PeerTLS *PeerTLS
	// ClockOffset shifts this node's clock (fault-injection tests only).
	ClockOffset time.Duration
	// UnsafeNoSync skips the fsync of the Raft log: a deliberately broken
	// build for the fault suite's self-test, which must catch the
	// acknowledged messages a power loss then destroys. Never in production.
	UnsafeNoSync bool
	Logger       *slog.Logger
}

// Sink is a local client connection as the node sees it.
type Sink interface {
	// Push hands the connection an effect of an applied command. It must
	// not block.
	Push(queue.Effect)
}

// Node is one running mcpd node.
type Node struct {
	cfg   Config
	log   *slog.Logger
	raft  *raft.Raft
	fsm   *fsm.FSM
	store *raftboltdb.BoltStore
	// stable is the checksumming log and stable store over store.
	stable *checksumStore
	mux    *mux
	fwd    *forwarder
	epoch  uint64

	submitCh    chan *pending
	subMu       sync.RWMutex // subClosed: no more submissions
	subClosed   bool
	subSeq      atomic.Uint64
	retryMu     sync.Mutex
	retry       []*pending // not applied; proposed again before newer commands
	retryClosed bool
	retryWake   chan struct{}
	lastTarget  string // batch loop only: where the last batch went
	inflight    chan struct{}
	shutdownCh  chan struct{}
	wg          sync.WaitGroup
	stopOnce    sync.Once

	drops    sync.WaitGroup // ConnClosed submissions under way
	connSeq  atomic.Uint64
	connsMu  sync.RWMutex
	conns    map[string]Sink
	lastTime atomic.Int64
	// raftUp is closed once n.raft is set. The Raft port serves peers
	// before that (Raft's own transport needs it); handlers that use
	// n.raft wait for it (awaitRaft).
	raftUp chan struct{}
	clocks peerClocks // the peers' clocks (clock.go)

	level int // the command level it announces (announcedLevel)

	// A stall: state.db has not committed for stallGrace (diskfull.go).
	stallMu  sync.Mutex
	stallFns []func(reason string)
	stalled  atomic.Pointer[string]

	// Peers the leader cannot reach: id -> since when (last contact).
	peersMu   sync.Mutex
	peersLost map[string]time.Time
	peersDown map[string]bool

	// rejoining: this node's raft data was lost and it has not been
	// promoted back to voter yet (rejoin.go); it serves no client.
	rejoining atomic.Bool

	// Write failures of the raft log and stable store (diskfull.go).
	logGuard, stableGuard *diskGuard

	// restoreHandler carries out restores forwarded to the leader
	// (restore.go); nil until the admin API installs it.
	restoreHandler atomic.Pointer[RestoreHandler]
}

// Tuning of group commit.
const (
	maxBatchCmds   = 1024
	maxBatchBytes  = 4 << 20
	maxInflight    = 64
	submitQueueLen = 8192
)

// New opens the node's stores, starts Raft, and bootstraps the cluster
// when this node has no Raft state yet. It never bootstraps over existing
// state.
func New(cfg Config) (*Node, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.PeerTLS != nil {
		if err := cfg.PeerTLS.check(); err != nil {
			return nil, err
		}
	} else if len(cfg.Peers) > 1 {
		cfg.Logger.Warn("raft port without TLS: any process that reaches it can vote, append to and read the log", "component", "cluster", "node", cfg.NodeID)
	}
	if cfg.SubmitTimeout == 0 {
		cfg.SubmitTimeout = 10 * time.Second
	}
	if cfg.HeartbeatTimeout == 0 {
		cfg.HeartbeatTimeout = time.Second
	}
	if cfg.ElectionTimeout == 0 {
		cfg.ElectionTimeout = time.Second
	}
	if cfg.NodeDownAfter == 0 {
		cfg.NodeDownAfter = 15 * time.Second
	}
	n := &Node{
		cfg:        cfg,
		log:        cfg.Logger.With("component", "cluster"),
		epoch:      uint64(time.Now().UnixNano()),
		submitCh:   make(chan *pending, submitQueueLen),
		retryWake:  make(chan struct{}, 1),
		inflight:   make(chan struct{}, maxInflight),
		shutdownCh: make(chan struct{}),
		raftUp:     make(chan struct{}),
		conns:      map[string]Sink{},
		peersLost:  map[string]time.Time{},
		peersDown:  map[string]bool{},
	}
	n.fwd = &forwarder{n: n}
	n.level = announcedLevel
	if err := n.start(); err != nil {
		n.closeStores()
		return nil, err
	}
	n.wg.Add(6)
	go n.batchLoop()
	go n.leaderLoop()
	go n.announceStart()
	go n.announceLevel(levelCheckEvery)
	go n.stateDuties()
	go n.watchDisk()
	return n, nil
}

// raftDBOptions are the options raft.db is opened with. Each StoreLogs is
// one bbolt transaction, whose commit costs two fdatasyncs (the data
// pages, then the meta page) unless noSync (tests of the fault suite
// only).
func raftDBOptions(path string, noSync bool) raftboltdb.Options {
	return raftboltdb.Options{
		Path:        path,
		NoSync:      noSync,
		BoltOptions: &bolt.Options{Timeout: 5 * time.Second, NoFreelistSync: true, InitialMmapSize: 256 << 20, NoGrowSync: noSync},
	}
}

func (n *Node) start() error {
	if err := os.MkdirAll(n.cfg.DataDir, 0o700); err != nil {
		return err
	}
	// Check every store before opening any; move what is damaged aside.
	rejoin, err := n.repairDataDir()
	if err != nil {
		return err
	}
	raftDir := filepath.Join(n.cfg.DataDir, "raft")
	if err := os.MkdirAll(raftDir, 0o700); err != nil {
		return err
	}
	// raft.db first: a state.db without a raft.db beside it means the
	// raft data was lost (repairDataDir).
	store, err := raftboltdb.New(raftDBOptions(filepath.Join(raftDir, "raft.db"), n.cfg.UnsafeNoSync))
	if err != nil {
		return fmt.Errorf("open raft log: %w", err)
	}
	n.store = store
	stable, sealedNow, err := newChecksumStore(store, false)
	if err != nil {
		return fmt.Errorf("open raft log: %w", err)
	}
	n.stable = stable
	if sealedNow {
		if last, _ := stable.LastIndex(); last > 0 {
			n.log.Warn("raft log written before log checksums existed: sealed every entry now", "node", n.cfg.NodeID, "last_index", last)
		}
	}

	f, err := fsm.Open(filepath.Join(n.cfg.DataDir, "state.db"), n.cfg.NodeID)
	if err != nil {
		return err
	}
	n.fsm = f
	f.SetSink(n.route)
	if n.cfg.UnsafeNoSync {
		f.SetUnsafeNoSync()
	}
	hlog := newHCLogger("raft", n.cfg.Logger)
	snaps, err := raft.NewFileSnapshotStoreWithLogger(raftDir, 2, hlog)
	if err != nil {
		return fmt.Errorf("open snapshot store: %w", err)
	}

	ln := n.cfg.RaftListener
	if ln == nil {
		if ln, err = net.Listen("tcp", n.cfg.RaftBind); err != nil {
			return fmt.Errorf("listen for raft on %s: %w", n.cfg.RaftBind, err)
		}
	}
	advert := ln.Addr()
	if a, ok := n.cfg.Peers[n.cfg.NodeID]; ok {
		tcp, err := net.ResolveTCPAddr("tcp", a)
		if err != nil {
			ln.Close()
			return fmt.Errorf("peer address %s: %w", a, err)
		}
		advert = tcp
	}
	n.mux = newMux(ln, advert, n.log)
	if n.cfg.PeerTLS != nil {
		n.mux.auth = newPeerAuth(n.cfg.PeerTLS, n.cfg.NodeID, n.cfg.Peers)
		n.mux.auth.isMember, n.mux.auth.idAt = n.configMember, n.configID
	}
	n.mux.forward = n.serveForward
	n.mux.clock = n.serveClock
	n.mux.member = n.serveMember
	n.mux.restore = n.serveRestore
	existing, err := raft.HasExistingState(stable, stable, snaps)
	if err != nil {
		ln.Close()
		return err
	}
	if rejoin {
		n.rejoining.Store(true)
		// Until the leader has demoted this node, raft must not hear
		// from its peers: it could vote with a lost vote record.
		n.mux.raftClosed.Store(!existing)
	}
	go n.mux.serve()
	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  streamLayer{n.mux},
		MaxPool: 8,
		Timeout: 10 * time.Second,
		Logger:  hlog,
		// No pipelined replication: when a follower rejects a pipelined
		// append (its log write failed, say on a full disk), raft's
		// pipeline can deadlock, and the leader then never sends that
		// follower another entry while its heartbeats go on, so it is
		// never declared down either (hashicorp/raft#612). One append
		// at a time per follower; raft batches the entries.
		MaxRPCsInFlight: 1,
	})

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(n.cfg.NodeID)
	rc.Logger = hlog
	rc.BatchApplyCh = true
	rc.MaxAppendEntries = 256
	// Followers learn the commit index from the next AppendEntries; when
	// no new entry comes, the leader sends one after CommitTimeout. Keep it
	// short so idle followers apply (and answer their clients) promptly.
	rc.CommitTimeout = 5 * time.Millisecond
	rc.HeartbeatTimeout = n.cfg.HeartbeatTimeout
	rc.ElectionTimeout = n.cfg.ElectionTimeout
	rc.LeaderLeaseTimeout = min(n.cfg.HeartbeatTimeout/2, rc.LeaderLeaseTimeout)
	// A node that restarts after a crash rebuilds state.db from the newest
	// snapshot and the log after it (fsm/DESIGN.md, sidecar), and while it
	// applies that backlog its Raft loop answers no append: frequent
	// snapshots keep the backlog, and the stall, short. A chaos run of
	// five nodes, two cut off, stalled the majority for over 30 s while a
	// restarted member replayed 32,000 entries.
	rc.SnapshotThreshold = 8192
	rc.TrailingLogs = 65536
	if n.cfg.SnapshotThreshold > 0 {
		rc.SnapshotThreshold = n.cfg.SnapshotThreshold
	}
	if n.cfg.TrailingLogs > 0 {
		rc.TrailingLogs = n.cfg.TrailingLogs
	}
	rc.SnapshotInterval = 10 * time.Second
	if n.cfg.SnapshotEvery > 0 {
		rc.SnapshotThreshold, rc.TrailingLogs, rc.SnapshotInterval = n.cfg.SnapshotEvery, n.cfg.SnapshotEvery, time.Second
	}
	// state.db keeps its applied index, so a restart continues from it
	// instead of restoring the last snapshot and replaying over it. A node
	// whose state.db is empty or older than its newest snapshot (a crash
	// during a snapshot install) restores the snapshot.
	var snapIndex uint64
	if metas, err := snaps.List(); err == nil && len(metas) > 0 {
		snapIndex = metas[0].Index
	}
	rc.NoSnapshotRestoreOnStart = f.AppliedIndex() > 0 && f.AppliedIndex() >= snapIndex

	// Replication reads recent entries back; serve them from memory.
	logs, err := raft.NewLogCache(4096, stable)
	if err != nil {
		return err
	}
	// After a failed commit of state.db the FSM applies entries again
	// from the log (fsm/commitfail.go).
	f.SetLogSource(logs)
	f.SetLogger(n.cfg.Logger.With("component", "fsm"))
	guardedLogs, guardedStable := n.guardStores(logs, stable)
	r, err := raft.NewRaft(rc, f, guardedLogs, guardedStable, snaps, trans)
	if err != nil {
		trans.Close()
		return fmt.Errorf("start raft: %w", err)
	}
	n.raft = r
	close(n.raftUp)
	obs := make(chan raft.Observation, 64)
	r.RegisterObserver(raft.NewObserver(obs, false, func(o *raft.Observation) bool {
		switch o.Data.(type) {
		case raft.FailedHeartbeatObservation, raft.ResumedHeartbeatObservation:
			return true
		}
		return false
	}))
	n.wg.Add(1)
	go n.watchPeers(obs)
	n.wg.Add(1)
	go n.clockLoop()

	if rejoin {
		n.log.Info("raft data lost; rejoining from peers without bootstrap", "node", n.cfg.NodeID, "demote_first", !existing)
		n.wg.Add(1)
		go n.rejoin(!existing)
		return nil
	}
	if !existing && n.cfg.Join {
		n.log.Info("joining an existing cluster: no bootstrap; waiting for the leader to add this node (mcpd cluster join)", "node", n.cfg.NodeID)
		return nil
	}
	if existing {
		n.log.Info("raft state found; rejoining", "node", n.cfg.NodeID, "applied", f.AppliedIndex())
		return nil
	}
	var servers []raft.Server
	if len(n.cfg.Peers) == 0 {
		servers = []raft.Server{{ID: rc.LocalID, Address: raft.ServerAddress(advert.String()), Suffrage: raft.Voter}}
	} else {
		ids := make([]string, 0, len(n.cfg.Peers))
		for id := range n.cfg.Peers {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		for _, id := range ids {
			servers = append(servers, raft.Server{ID: raft.ServerID(id), Address: raft.ServerAddress(n.cfg.Peers[id]), Suffrage: raft.Voter})
		}
	}
	n.log.Info("bootstrapping cluster", "node", n.cfg.NodeID, "voters", len(servers))
	if err := r.BootstrapCluster(raft.Configuration{Servers: servers}).Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
		return fmt.Errorf("bootstrap: %w", err)
	}
	return nil
}

// ID is the node's id.
func (n *Node) ID() string { return n.cfg.NodeID }

// FSM is the node's state machine (for reads).
func (n *Node) FSM() *fsm.FSM { return n.fsm }

// awaitRaft waits until the Raft instance exists; false when the node
// stops first.
func (n *Node) awaitRaft() bool {
	select {
	case <-n.raftUp:
		return true
	case <-n.shutdownCh:
		return false
	}
}

// Raft is the node's Raft instance (for status and tests).
func (n *Node) Raft() *raft.Raft { return n.raft }

// Leader is the id of the current leader, or "" when none is known.
func (n *Node) Leader() string {
	_, id := n.raft.LeaderWithID()
	return string(id)
}

// IsLeader reports whether this node leads.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// Ready reports whether the node knows a leader and has applied what it
// knows to be committed, and can write its data directory (diskfull.go).
// NotReadyReason says why not. A node rejoining after losing its raft
// data is not ready until it is a voter again (rejoin.go).
func (n *Node) Ready() bool {
	return !n.rejoining.Load() && n.NotReadyReason() == ""
}

// Rejoining reports whether the node is rebuilding its raft data from its
// peers (and serves no client meanwhile).
func (n *Node) Rejoining() bool { return n.rejoining.Load() }

// errRejoining is what clients of a rejoining node get.
var errRejoining = fmt.Errorf("%w: this node is rebuilding its data from its peers", ErrUnavailable)

// Read runs fn on the node's local state. It fails with ErrUnavailable
// while the node is rejoining: its state is not the cluster's yet.
func (n *Node) Read(fn func(tx *bolt.Tx) error) error {
	if n.rejoining.Load() {
		return errRejoining
	}
	return n.fsm.View(fn)
}

// NewConn registers a local connection and returns its cluster-wide id.
func (n *Node) NewConn(s Sink) string {
	id := fmt.Sprintf("%s/%d/%d", n.cfg.NodeID, n.epoch, n.connSeq.Add(1))
	n.connsMu.Lock()
	n.conns[id] = s
	n.connsMu.Unlock()
	return id
}

// DropConn unregisters a local connection and releases, through Raft, the
// consumers, subscriptions and leases it held.
func (n *Node) DropConn(id string) {
	n.connsMu.Lock()
	delete(n.conns, id)
	n.connsMu.Unlock()
	cmd, err := fsm.NewCommand(fsm.TypeConnClosed, "", 0, &fsm.ConnClosedArgs{Conn: id})
	if err != nil {
		return
	}
	n.drops.Add(1)
	go func() {
		defer n.drops.Done()
		// Retried while this node runs: until it is committed, the
		// connection's consumers would keep taking deliveries.
		for {
			err := n.submit(cmd, n.cfg.SubmitTimeout)
			if err == nil || errors.Is(err, ErrShutdown) {
				return
			}
			n.log.Info("releasing a closed connection is delayed", "conn", id, "err", err)
			select {
			case <-n.shutdownCh:
				return
			case <-time.After(time.Second):
			}
		}
	}()
}

// route hands applied effects to their local connections.
func (n *Node) route(effects []queue.Effect) {
	n.connsMu.RLock()
	defer n.connsMu.RUnlock()
	for _, e := range effects {
		if s := n.conns[e.Target()]; s != nil {
			s.Push(e)
		}
	}
}

// announceStart tells the cluster this node (re)started, which ends what
// its earlier incarnations held. It retries until it is applied.
func (n *Node) announceStart() {
	defer n.wg.Done()
	cmd, _ := fsm.NewCommand(fsm.TypeNodeStarted, "", 0, n.startArgs())
	for {
		err := n.submit(cmd, n.cfg.SubmitTimeout)
		if err == nil || errors.Is(err, ErrShutdown) {
			return
		}
		select {
		case <-n.shutdownCh:
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// leaderLoop runs the leader's duties while this node leads: proposing a
// tick whenever a lease, delay or dedup entry is due.
func (n *Node) leaderLoop() {
	defer n.wg.Done()
	var stop chan struct{}
	for {
		select {
		case <-n.shutdownCh:
			if stop != nil {
				close(stop)
			}
			return
		case leader := <-n.raft.LeaderCh():
			// Heartbeat observations come from one term's replication;
			// what an earlier term saw says nothing about the peers now.
			n.peersMu.Lock()
			clear(n.peersLost)
			clear(n.peersDown)
			n.peersMu.Unlock()
			if leader && stop == nil {
				stop = make(chan struct{})
				n.wg.Add(1)
				go n.tickLoop(stop)
				n.log.Info("leadership acquired", "node", n.cfg.NodeID, "term", n.raft.CurrentTerm())
			} else if !leader && stop != nil {
				close(stop)
				stop = nil
				n.log.Info("leadership lost", "node", n.cfg.NodeID)
			}
		}
	}
}

func (n *Node) tickLoop(stop chan struct{}) {
	defer n.wg.Done()
	// Apply everything earlier leaders committed before judging deadlines.
	if err := n.await(n.raft.Barrier(10 * time.Second)); errors.Is(err, ErrShutdown) {
		return
	} else if err != nil {
		n.log.Warn("barrier after election failed", "err", err)
	}
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		n.declareLostPeers()
		d := n.fsm.NextDeadline()
		if d == 0 || d > n.Now() {
			continue
		}
		wait, err := n.applyLeader(nil)
		if err == nil {
			_, err = wait()
		}
		if err != nil && !errors.Is(err, ErrShutdown) {
			n.log.Debug("tick failed", "err", err)
		}
	}
}

// watchPeers records which peers fail the leader's heartbeats.
func (n *Node) watchPeers(obs chan raft.Observation) {
	defer n.wg.Done()
	for {
		select {
		case <-n.shutdownCh:
			return
		case o := <-obs:
			n.peersMu.Lock()
			switch d := o.Data.(type) {
			case raft.FailedHeartbeatObservation:
				if _, ok := n.peersLost[string(d.PeerID)]; !ok {
					since := d.LastContact
					if since.IsZero() {
						since = time.Now()
					}
					n.peersLost[string(d.PeerID)] = since
				}
			case raft.ResumedHeartbeatObservation:
				delete(n.peersLost, string(d.PeerID))
				delete(n.peersDown, string(d.PeerID))
			}
			n.peersMu.Unlock()
		}
	}
}

// PeerUnreachable reports whether this node, as leader, currently misses
// heartbeats to peer id.
func (n *Node) PeerUnreachable(id string) bool {
	n.peersMu.Lock()
	defer n.peersMu.Unlock()
	_, ok := n.peersLost[id]
	return ok
}

// declareLostPeers ends, through the log, the connections of peers that
// have been unreachable for NodeDownAfter: their leases go back to their
// queues instead of bouncing off consumers nobody serves.
func (n *Node) declareLostPeers() {
	n.peersMu.Lock()
	var down []string
	for id, since := range n.peersLost {
		if !n.peersDown[id] && time.Since(since) >= n.cfg.NodeDownAfter {
			n.peersDown[id] = true
			down = append(down, id)
		}
	}
	n.peersMu.Unlock()
	sort.Strings(down)
	for _, id := range down {
		n.log.Warn("peer unreachable; ending its connections", "peer", id, "after", n.cfg.NodeDownAfter)
		cmd, _ := fsm.NewCommand(fsm.TypeNodeDown, "", 0, &fsm.NodeDownArgs{Node: id})
		n.submitAsync(cmd, n.cfg.SubmitTimeout, func(err error) {
			if err != nil {
				n.peersMu.Lock()
				delete(n.peersDown, id) // try again on a later tick
				n.peersMu.Unlock()
			}
		})
	}
}

// Shutdown stops the node: a leader first hands leadership to a peer, then
// Raft stops and the stores close.
func (n *Node) Shutdown() error { return n.stop(true) }

// Abort stops the node the way a failure would look to its peers: a leader
// does not hand over, so the others must notice and elect a new one. For
// failover tests.
func (n *Node) Abort() error { return n.stop(false) }

func (n *Node) stop(handOver bool) error {
	var err error
	n.stopOnce.Do(func() {
		if handOver {
			// Let the connections closed just before release their leases
			// now rather than when they expire.
			done := make(chan struct{})
			go func() { n.drops.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(3 * time.Second):
			}
		}
		if handOver && n.IsLeader() && len(n.cfg.Peers) > 1 {
			if e := n.raft.LeadershipTransfer().Error(); e != nil {
				n.log.Warn("leadership transfer failed", "err", e)
			} else {
				n.log.Info("leadership handed over")
			}
		}
		close(n.shutdownCh)
		n.subMu.Lock()
		n.subClosed = true
		n.subMu.Unlock()
		n.fwd.close()
		// Raft's Shutdown waits for the apply goroutine, which may wait
		// for state.db to commit again.
		n.fsm.Stop()
		err = n.shutdownRaft()
		n.mux.close()
		n.wg.Wait()
		n.drainSubmits()
		n.closeStores()
	})
	return err
}

func (n *Node) closeStores() {
	if n.store != nil {
		n.store.Close()
	}
	if n.fsm != nil {
		n.fsm.Close()
	}
}

// ParsePeers parses "n1=host:port,n2=host:port".
func ParsePeers(s string) (map[string]string, error) {
	peers := map[string]string{}
	if strings.TrimSpace(s) == "" {
		return peers, nil
	}
	for _, part := range strings.Split(s, ",") {
		id, addr, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok || id == "" || addr == "" {
			return nil, fmt.Errorf("peer %q is not id=host:port", part)
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, fmt.Errorf("peer %q: %v", part, err)
		}
		if _, dup := peers[id]; dup {
			return nil, fmt.Errorf("peer id %q appears twice", id)
		}
		peers[id] = addr
	}
	return peers, nil
}
