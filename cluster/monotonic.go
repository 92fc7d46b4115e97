package cluster

// IsMonotonic tells raft that the log must stay contiguous: raft.db's
// check reads every entry from the first to the last and counts a hole
// as damage (integrity.go). Raft leaves a hole in two cases unless the
// store says this: a snapshot restored by the operator (mcpd snapshot
// restore; raft installs it one index past its last entry) and a
// follower installing a snapshot beyond its log. With it, raft removes
// every entry up to the snapshot instead, so the log starts right after
// the newest snapshot, as the check expects. Nothing is lost: the entries
// removed are all covered by that snapshot.
func (s *checksumStore) IsMonotonic() bool { return true }
