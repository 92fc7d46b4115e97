package cluster

import "time"

// Hooks for the external tests of this package (package cluster_test),
// which speak the Raft port's protocols as a rogue process would.

const (
	ProtoRaft    = protoRaft
	ProtoForward = protoForward
	ProtoMember  = protoMember
	MemberDemote = memberDemote
)

type (
	FwdRequest     = fwdRequest
	MemberRequest  = memberRequest
	MemberResponse = memberResponse
)

var (
	WriteFrame = writeFrame
	ReadFrame  = readFrame
)

const ProtoRestore = protoRestore

type RestoreReady = restoreReady

// SetRestoreTimings sets how long a forwarded restore looks for a leader,
// how long either side waits for the other and how often the leader says
// it is working, until the test ends. Call it before starting nodes.
func SetRestoreTimings(t interface{ Cleanup(func()) }, findLeader, idle, keepalive time.Duration) {
	f, i, k := restoreFindLeader.get(), restoreIdle.get(), restoreKeepalive.get()
	restoreFindLeader.set(findLeader)
	restoreIdle.set(idle)
	restoreKeepalive.set(keepalive)
	t.Cleanup(func() {
		restoreFindLeader.set(f)
		restoreIdle.set(i)
		restoreKeepalive.set(k)
	})
}

// SetLevelCheckEvery sets how often nodes started afterwards check that
// the state holds their command level; the function it returns restores
// the default.
func SetLevelCheckEvery(d time.Duration) func() {
	old := levelCheckEvery
	levelCheckEvery = d
	return func() { levelCheckEvery = old }
}

// Epoch is the node's epoch, which its NodeStarted announcements carry.
func (n *Node) Epoch() uint64 { return n.epoch }

// SetStallGrace sets how long state.db may fail to commit before a node
// stalls, until the test ends. Call it before starting nodes.
func SetStallGrace(t interface{ Cleanup(func()) }, d time.Duration) {
	was := stallGrace
	stallGrace = d
	t.Cleanup(func() { stallGrace = was })
}

// SetAnnouncedLevel makes nodes announce command level l, as a version
// of that level would, until the test ends or the function it returns
// is called.
func SetAnnouncedLevel(t interface{ Cleanup(func()) }, l int) func() {
	was := announcedLevel
	announcedLevel = l
	undo := func() { announcedLevel = was }
	t.Cleanup(undo)
	return undo
}
