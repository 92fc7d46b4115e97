package cluster

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
