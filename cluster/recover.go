package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"

	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/queue"
	bolt "go.etcd.io/bbolt"
)

// Lost quorum: when a majority of the voters is gone for good, the
// survivors cannot elect a leader and nothing changes the configuration
// from inside. Recover rewrites it offline on a stopped node: it applies
// every entry of the node's log to state.db (including entries that may
// never have been committed: they are the newest this node has), stores a
// snapshot of the result whose configuration is servers, and empties the
// log. Run it on every surviving node with the same servers, then start
// them; they elect a leader among themselves.

// ErrDataDirInUse is Recover on the data directory of a running node.
var ErrDataDirInUse = errors.New("data directory in use: is the node running? stop it first")

// RecoverResult says what Recover did.
type RecoverResult struct {
	LastIndex uint64 // the index the new snapshot ends at
	Servers   []raft.Server
}

// Recover replaces the Raft configuration in the stopped node nodeID's
// data directory by peers (id -> raft address), all voters.
func Recover(dataDir, nodeID string, peers map[string]string, log *slog.Logger) (RecoverResult, error) {
	if log == nil {
		log = slog.Default()
	}
	if len(peers) == 0 {
		return RecoverResult{}, errors.New("recover needs the surviving servers (--peers)")
	}
	if _, ok := peers[nodeID]; !ok {
		return RecoverResult{}, fmt.Errorf("the servers do not list this node %q", nodeID)
	}
	raftDir := filepath.Join(dataDir, "raft")
	dbPath := filepath.Join(raftDir, "raft.db")
	if _, err := os.Stat(dbPath); err != nil {
		return RecoverResult{}, fmt.Errorf("no raft log in %s: %w", dataDir, err)
	}
	if _, err := os.Stat(rejoinMarker(dataDir)); err == nil {
		return RecoverResult{}, fmt.Errorf("%s lost its raft data and was rejoining: it has nothing to recover from", dataDir)
	}
	opts := raftDBOptions(dbPath, false)
	opts.BoltOptions.Timeout = time.Second
	store, err := raftboltdb.New(opts)
	if err != nil {
		if errors.Is(err, errBoltTimeout) {
			return RecoverResult{}, ErrDataDirInUse
		}
		return RecoverResult{}, fmt.Errorf("open raft log: %w", err)
	}
	defer store.Close()
	stable, _, err := newChecksumStore(store, false)
	if err != nil {
		return RecoverResult{}, fmt.Errorf("open raft log: %w", err)
	}
	f, err := fsm.Open(filepath.Join(dataDir, "state.db"), nodeID)
	if err != nil {
		if errors.Is(err, errBoltTimeout) {
			return RecoverResult{}, ErrDataDirInUse
		}
		return RecoverResult{}, err
	}
	defer f.Close()
	f.SetSink(func([]queue.Effect) {})
	f.SetLogSource(stable)
	hlog := newHCLogger("raft", log)
	snaps, err := raft.NewFileSnapshotStoreWithLogger(raftDir, 2, hlog)
	if err != nil {
		return RecoverResult{}, fmt.Errorf("open snapshot store: %w", err)
	}
	ids := make([]string, 0, len(peers))
	for id := range peers {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var servers []raft.Server
	for _, id := range ids {
		servers = append(servers, raft.Server{ID: raft.ServerID(id), Address: raft.ServerAddress(peers[id]), Suffrage: raft.Voter})
	}
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(nodeID)
	rc.Logger = hlog
	_, trans := raft.NewInmemTransport("")
	var taken []raft.FSMSnapshot
	err = raft.RecoverCluster(rc, releasingFSM{f, &taken}, stable, stable, snaps, trans, raft.Configuration{Servers: servers})
	for _, s := range taken {
		s.Release()
	}
	if err != nil {
		return RecoverResult{}, fmt.Errorf("recover: %w", err)
	}
	res := RecoverResult{LastIndex: f.AppliedIndex(), Servers: servers}
	if metas, err := snaps.List(); err == nil && len(metas) > 0 {
		res.LastIndex = metas[0].Index
	}
	log.Warn("raft configuration replaced offline", "component", "cluster", "node", nodeID, "servers", len(servers), "snapshot_index", res.LastIndex)
	return res, nil
}

// errBoltTimeout is bbolt's answer when another process holds the file.
var errBoltTimeout = bolt.ErrTimeout

// releasingFSM keeps the snapshots it takes, for Recover to release:
// raft.RecoverCluster never calls Release, and a snapshot's read
// transaction would keep state.db from closing.
type releasingFSM struct {
	*fsm.FSM
	taken *[]raft.FSMSnapshot
}

func (r releasingFSM) Snapshot() (raft.FSMSnapshot, error) {
	s, err := r.FSM.Snapshot()
	if err == nil {
		*r.taken = append(*r.taken, s)
	}
	return s, err
}
