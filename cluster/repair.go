package cluster

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/internal/durable"
)

// repairDataDir checks the node's stores before anything opens them and
// puts what failed out of the way (see DESIGN.md, "Corruption"):
//
//   - state.db that does not match its clean-close checksum is moved
//     aside; one that was not closed cleanly is deleted. Either way the
//     FSM starts empty and raft restores it from the snapshot and log.
//   - a snapshot that fails its CRC is moved aside.
//   - a damaged raft.db, or a log that no good snapshot connects to, means
//     this node's term, vote and log cannot be trusted: the whole raft
//     directory is moved aside and the node rejoins (rejoin.go). The
//     marker file rejoin-pending is written first and stays until the
//     node is a voter again, so a crash in between never bootstraps.
//
// Damaged files go to corrupt-<UTC time>/ in the data directory. It
// reports whether the node must rejoin, and logs one line saying what was
// found, where it went and what the node does about it.
func (n *Node) repairDataDir() (rejoin bool, err error) {
	dir := n.cfg.DataDir
	start := time.Now()
	rejoin = fileExists(rejoinMarker(dir))
	rc := RaftDBChecker(raftDBPath(dir))
	snaps, err := CheckSnapshots(snapshotsDir(dir))
	if err != nil {
		return false, err
	}
	state, stateWhy, err := fsm.CheckState(statePath(dir))
	if err != nil {
		return false, err
	}

	var corrupt []string
	raftBad := ""
	switch {
	case !rc.OK:
		raftBad = "raft.db: " + rc.Problem
	case rc.Missing && !rejoin && (len(snaps) > 0 || state != fsm.StateAbsent):
		// raft.db is created before state.db; without it the node would
		// bootstrap a fresh cluster over its own history.
		raftBad = "raft.db is missing but state.db or snapshots exist"
	}
	var badSnaps []SnapshotCheck
	var good []SnapshotCheck
	for _, s := range snaps {
		if s.OK {
			good = append(good, s)
		} else {
			badSnaps = append(badSnaps, s)
			corrupt = append(corrupt, fmt.Sprintf("snapshot %s: %s", s.ID, s.Problem))
		}
	}
	if raftBad == "" {
		if gap := coverageGap(rc, good); gap != "" {
			raftBad = "raft log: " + gap
		}
	}
	if raftBad != "" {
		corrupt = append([]string{raftBad}, corrupt...)
	}
	if state == fsm.StateCorrupt {
		corrupt = append(corrupt, "state.db: "+stateWhy)
	}
	if raftBad != "" && len(n.otherPeers()) == 0 {
		return false, fmt.Errorf("%s, and there are no peers to repair it from: nothing was moved; restore the data directory %s from a backup", strings.Join(corrupt, "; "), dir)
	}

	var aside string // the corrupt-<time> directory, once made
	moveAside := func(src, name string) error {
		if aside == "" {
			aside = filepath.Join(dir, corruptDirName(time.Now()))
			if err := os.MkdirAll(aside, 0o700); err != nil {
				return err
			}
		}
		dst := filepath.Join(aside, name)
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			return err
		}
		return os.Rename(src, dst)
	}
	var actions []string
	switch state {
	case fsm.StateCorrupt:
		if err := moveAside(statePath(dir), "state.db"); err != nil {
			return false, err
		}
		_ = moveAside(fsm.SidecarPath(statePath(dir)), "state.db.sha256")
		actions = append(actions, "rebuilding state.db from the snapshot and log")
	case fsm.StateUnclean:
		// Not evidence of damage, only unverifiable: not worth keeping.
		if err := os.Remove(statePath(dir)); err != nil {
			return false, err
		}
		actions = append(actions, "state.db was not closed cleanly (no checksum to trust it by); deleted it and rebuilding it from the snapshot and log")
	}
	switch {
	case raftBad != "":
		if err := writeMarker(rejoinMarker(dir), strings.Join(corrupt, "; ")); err != nil {
			return false, err
		}
		if fileExists(raftDir(dir)) {
			if err := moveAside(raftDir(dir), "raft"); err != nil {
				return false, err
			}
		}
		rejoin = true
		actions = append(actions, "rejoining from peers: the leader demotes this node, it catches up as a non-voter and is promoted back; not serving until then")
	case len(badSnaps) > 0:
		for _, s := range badSnaps {
			if err := moveAside(filepath.Join(snapshotsDir(dir), s.ID), filepath.Join("snapshots", s.ID)); err != nil {
				return false, err
			}
		}
		actions = append(actions, "raft restores the newest good snapshot and replays the log")
	}
	if aside != "" || len(actions) > 0 {
		if err := durable.SyncDir(dir); err != nil {
			return false, err
		}
	}
	attrs := []any{"node", n.cfg.NodeID, "raft_db_check_ms", rc.Millis, "check_ms", time.Since(start).Milliseconds()}
	switch {
	case len(corrupt) > 0:
		moved := aside
		if moved == "" {
			moved = "nothing moved"
		}
		n.log.Error(fmt.Sprintf("data corruption detected: %s; damaged files moved to %s; %s",
			strings.Join(corrupt, "; "), moved, strings.Join(actions, "; ")),
			append(attrs, "corrupt", strings.Join(corrupt, "; "), "moved_to", moved, "action", strings.Join(actions, "; "))...)
	case len(actions) > 0:
		n.log.Warn(actions[0], attrs...)
	case rejoin:
		n.log.Warn("raft data was repaired at an earlier start and this node has not rejoined yet; rejoining from peers, not serving until then", attrs...)
	default:
		n.log.Info("data directory checked", append(attrs, "log_first", rc.First, "log_last", rc.Last, "snapshots", len(snaps), "state", state.String())...)
	}
	return rejoin, nil
}

// otherPeers lists the ids of the configured voters other than this node.
func (n *Node) otherPeers() []string {
	var ids []string
	for id := range n.cfg.Peers {
		if id != n.cfg.NodeID {
			ids = append(ids, id)
		}
	}
	return ids
}

// writeMarker durably creates the rejoin marker holding why.
func writeMarker(path, why string) error {
	body := fmt.Sprintf("raft data moved aside at %s: %s\n", time.Now().UTC().Format(time.RFC3339), why)
	fh, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_, err = fh.WriteString(body)
	if err == nil {
		err = fh.Sync()
	}
	if cerr := fh.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return durable.SyncDir(filepath.Dir(path))
}
