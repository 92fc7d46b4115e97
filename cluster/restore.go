package cluster

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// Restoring a snapshot through a follower. Only the leader can restore
// (raft.Restore); the admin API of a follower checks the operator's file,
// then streams it to the leader over the Raft port (protocol byte S) and
// relays the leader's answer. One connection carries one restore:
//
//	follower -> leader  frame RestoreRequest (operator, size)
//	leader -> follower  frame restoreReady: go on, or not (not the leader, ...)
//	follower -> leader  the file, exactly Size bytes
//	leader -> follower  frames restoreReply: Working every restoreKeepalive
//	                    while it checks and restores, then the Answer
//
// The leader's handler (the admin API's, SetRestoreHandler) begins to
// restore only once it holds every byte of the file: a connection lost
// during the upload changes nothing (ErrUnavailable, safe to send again).
// Lost afterwards, the outcome is unknown (ErrUnknown). raft.Restore is
// atomic: the cluster has the old state or the file's, never a mix.
//
// Only a peer that authenticated with a certificate of the cluster CA
// (PeerTLS) may send a restore, and a node sends one only over that
// mutual TLS: a plaintext Raft port (tests that build nodes without
// PeerTLS) carries no restore either way (ErrRestoreNeedsTLS).

// protoRestore is a restore streamed to the leader on the Raft port.
const protoRestore byte = 'S'

// Timing of a forwarded restore. Tests set them (SetRestoreTimings)
// while goroutines of nodes still running may read them: atomics.
var (
	// restoreFindLeader is how long a follower looks for a leader that
	// takes the restore (no leader known, the leader unreachable, a node
	// that is not the leader any more) before it gives up.
	restoreFindLeader = durationVar(10 * time.Second)
	// restoreHelloTimeout bounds the request and the leader's go-ahead.
	restoreHelloTimeout = 10 * time.Second
	// restoreIdle is how long either side waits for the other to move:
	// a read or write of the file, or a frame of the leader's answer.
	restoreIdle = durationVar(30 * time.Second)
	// restoreKeepalive is how often the leader says it is still working
	// on a restore (well below restoreIdle.get()).
	restoreKeepalive = durationVar(5 * time.Second)
)

// atomicDuration is a duration tests may change while it is read.
type atomicDuration struct{ v atomic.Int64 }

func durationVar(d time.Duration) *atomicDuration {
	a := &atomicDuration{}
	a.v.Store(int64(d))
	return a
}

func (a *atomicDuration) get() time.Duration  { return time.Duration(a.v.Load()) }
func (a *atomicDuration) set(d time.Duration) { a.v.Store(int64(d)) }

// ErrRestoreNeedsTLS: the Raft port has no mutual TLS, so this node
// neither sends a snapshot file over it nor takes one.
var ErrRestoreNeedsTLS = errors.New("restoring through a follower needs the Raft port's mutual TLS (PeerTLS)")

// RestoreRequest is a restore a follower forwards to the leader.
type RestoreRequest struct {
	Actor string `msgpack:"a"` // the operator, for the audit log
	// From is the node the operator sent the file to (on the leader: the
	// node id of the peer's certificate when it names one).
	From string `msgpack:"f"`
	Size int64  `msgpack:"s"` // the file's length in bytes
}

// RestoreAnswer is the leader's answer to a restore: the status and the
// JSON body of its admin API's answer, which the follower relays as is.
type RestoreAnswer struct {
	Status int    `msgpack:"st"`
	Body   []byte `msgpack:"b"`
}

// RestoreHandler carries out a restore on the leader: body yields the
// snapshot file, exactly req.Size bytes, then io.EOF; a read fails when
// the follower's connection breaks off. ctx ends when the follower goes
// away or the node shuts down. The handler must not restore anything
// before it has read the whole file.
type RestoreHandler func(ctx context.Context, req RestoreRequest, body io.Reader) RestoreAnswer

// SetRestoreHandler installs what carries out restores forwarded to this
// node while it leads (the admin API's restore). Without one, such
// restores are refused before the file is sent.
func (n *Node) SetRestoreHandler(h RestoreHandler) {
	n.restoreHandler.Store(&h)
}

// restoreReady answers a RestoreRequest before the file is sent.
type restoreReady struct {
	OK        bool   `msgpack:"ok"`
	NotLeader bool   `msgpack:"nl,omitempty"`
	LeaderID  string `msgpack:"li,omitempty"` // the leader this node knows, if any
	Leader    string `msgpack:"la,omitempty"`
	Msg       string `msgpack:"m,omitempty"`
}

// restoreReply is a frame of the leader's answer: Working while it
// checks and restores, then the Answer.
type restoreReply struct {
	Working bool           `msgpack:"w,omitempty"`
	Answer  *RestoreAnswer `msgpack:"a,omitempty"`
}

// serveRestore takes one restore on the leader.
func (n *Node) serveRestore(c net.Conn) {
	defer c.Close()
	if !n.awaitRaft() {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-n.shutdownCh:
			cancel()
			c.Close()
		case <-ctx.Done():
		}
	}()
	_ = c.SetDeadline(time.Now().Add(restoreHelloTimeout))
	br := bufio.NewReader(c)
	var req RestoreRequest
	if err := readFrame(br, &req); err != nil {
		return
	}
	if id := certNodeID(c); id != "" {
		req.From = id
	}
	var h RestoreHandler
	if p := n.restoreHandler.Load(); p != nil {
		h = *p
	}
	ready := restoreReady{OK: true}
	switch _, isTLS := c.(*tls.Conn); {
	case !isTLS:
		ready = restoreReady{Msg: ErrRestoreNeedsTLS.Error()}
	case n.raft.State() != raft.Leader:
		addr, id := n.raft.LeaderWithID()
		ready = restoreReady{NotLeader: true, Leader: string(addr), LeaderID: string(id), Msg: "not the leader"}
	case h == nil:
		ready = restoreReady{Msg: "node " + n.cfg.NodeID + " leads but serves no admin API to restore with"}
	case req.Size <= 0:
		ready = restoreReady{Msg: fmt.Sprintf("a snapshot file of %d bytes", req.Size)}
	}
	bw := bufio.NewWriter(c)
	if err := writeFrame(bw, ready); err != nil || bw.Flush() != nil || !ready.OK {
		return
	}
	_ = c.SetDeadline(time.Time{})
	n.log.Info("receiving a snapshot to restore from a follower", "from", req.From, "remote", c.RemoteAddr().String(), "bytes", req.Size, "operator", req.Actor)

	// Once the file is in, the follower only waits: a read that ends
	// means it went away (its operator gave up), which ends ctx.
	var wmu sync.Mutex
	send := func(r restoreReply) error {
		wmu.Lock()
		defer wmu.Unlock()
		_ = c.SetWriteDeadline(time.Now().Add(restoreIdle.get()))
		if err := writeFrame(bw, r); err != nil {
			return err
		}
		return bw.Flush()
	}
	working := make(chan struct{})
	var keepalive sync.WaitGroup
	body := &restoreBody{c: c, r: br, left: req.Size, done: func() {
		_ = c.SetReadDeadline(time.Time{})
		keepalive.Add(2)
		go func() {
			defer keepalive.Done()
			_, _ = br.ReadByte()
			cancel()
		}()
		go func() {
			defer keepalive.Done()
			t := time.NewTicker(restoreKeepalive.get())
			defer t.Stop()
			for {
				select {
				case <-working:
					return
				case <-t.C:
					if send(restoreReply{Working: true}) != nil {
						return
					}
				}
			}
		}()
	}}
	ans := h(ctx, req, body)
	close(working)
	// A handler that answered before the end of the file (it could not
	// store it) reads the rest here, so the follower gets this answer,
	// not a broken connection.
	if body.left > 0 && body.err == nil {
		_, _ = io.Copy(io.Discard, body)
	}
	if body.left == 0 {
		_ = send(restoreReply{Answer: &ans})
	}
	cancel()
	c.Close()
	keepalive.Wait()
}

// restoreBody reads the file a follower streams: exactly left bytes,
// each read within restoreIdle. done runs once the last byte is read.
type restoreBody struct {
	c    net.Conn
	r    io.Reader
	left int64
	err  error
	done func()
}

func (b *restoreBody) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if b.left == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	_ = b.c.SetReadDeadline(time.Now().Add(restoreIdle.get()))
	k, err := b.r.Read(p)
	b.left -= int64(k)
	if b.left == 0 {
		b.done()
		return k, nil
	}
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		b.err = fmt.Errorf("the follower's upload broke off with %d bytes to go: %w", b.left, err)
		return k, b.err
	}
	return k, nil
}

// ForwardRestore has the leader restore the snapshot file in body (size
// bytes) and returns its answer; actor is the operator, for the audit
// log. The caller checked the file already. It looks for the leader for
// up to restoreFindLeader; ctx ending, or the node shutting down, breaks
// the upload off (nothing is restored then).
//
// Errors: ErrUnavailable when the leader did not get the whole file
// (nothing was restored; safe to send again), ErrUnknown when the answer
// was lost after that (the restore may have happened),
// ErrRestoreNeedsTLS without mutual TLS on the Raft port.
func (n *Node) ForwardRestore(ctx context.Context, actor string, body io.Reader, size int64) (RestoreAnswer, error) {
	if !n.awaitRaft() {
		return RestoreAnswer{}, ErrShutdown
	}
	if n.mux.auth == nil {
		return RestoreAnswer{}, ErrRestoreNeedsTLS
	}
	req := RestoreRequest{Actor: actor, From: n.cfg.NodeID, Size: size}
	c, leader, err := n.restoreDial(ctx, req)
	if err != nil {
		return RestoreAnswer{}, err
	}
	defer c.Close()
	// ctx ending or the node shutting down closes c; why then says which
	// of the two broke the transfer off.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case <-n.shutdownCh:
			cancel(ErrShutdown)
		case <-ctx.Done():
		}
	}()
	defer context.AfterFunc(ctx, func() { c.Close() })()
	why := func(err error) error {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		return err
	}

	sent, err := io.CopyBuffer(idleWriter{c}, io.LimitReader(body, size), make([]byte, 256<<10))
	if err == nil && sent < size {
		err = fmt.Errorf("the file ended after %d of %d bytes", sent, size)
	}
	if err != nil {
		return RestoreAnswer{}, fmt.Errorf("%w: sending the file to the leader %s broke off after %d of %d bytes, so nothing was restored: %v",
			ErrUnavailable, leader, sent, size, why(err))
	}
	n.log.Info("snapshot sent to the leader; waiting for its answer", "leader", leader, "bytes", size)
	br := bufio.NewReader(c)
	for {
		_ = c.SetReadDeadline(time.Now().Add(restoreIdle.get()))
		var r restoreReply
		if err := readFrame(br, &r); err != nil {
			return RestoreAnswer{}, fmt.Errorf("%w: the leader %s received the whole file, but its answer was lost (%v): the restore may or may not have happened; "+
				"look for its snapshot.restore audit entry (mcpd audit search --type snapshot.restore --desc) before sending the file again", ErrUnknown, leader, why(err))
		}
		if r.Answer != nil {
			return *r.Answer, nil
		}
	}
}

// restoreDial opens a restore connection to the leader and has it
// accept req, trying again while no leader takes it, for up to
// restoreFindLeader. It returns the connection and the leader's id.
func (n *Node) restoreDial(ctx context.Context, req RestoreRequest) (net.Conn, string, error) {
	deadline := time.Now().Add(restoreFindLeader.get())
	var why string
	for {
		addr, id := n.raft.LeaderWithID()
		if addr == "" {
			why = "no leader known"
		} else {
			c, ready, err := n.restoreHello(string(addr), req)
			switch {
			case err != nil:
				why = fmt.Sprintf("cannot reach the leader %s at %s: %v", id, addr, err)
			case ready.OK:
				return c, string(id), nil
			case ready.NotLeader:
				why = fmt.Sprintf("%s at %s is not the leader any more", id, addr)
				if ready.LeaderID != "" {
					why += fmt.Sprintf(" (it names %s)", ready.LeaderID)
				}
			default:
				return nil, "", fmt.Errorf("the leader %s refused the restore: %s", id, ready.Msg)
			}
		}
		if time.Now().After(deadline) {
			return nil, "", fmt.Errorf("%w: %s (for %v); nothing was sent, nothing changed", ErrUnavailable, why, restoreFindLeader.get())
		}
		select {
		case <-ctx.Done():
			return nil, "", ctx.Err()
		case <-n.shutdownCh:
			return nil, "", ErrShutdown
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// restoreHello dials addr and asks it to take req. The connection is
// open only when the answer is OK.
func (n *Node) restoreHello(addr string, req RestoreRequest) (net.Conn, restoreReady, error) {
	c, err := n.mux.dial(addr, protoRestore, 2*time.Second)
	if err != nil {
		return nil, restoreReady{}, err
	}
	_ = c.SetDeadline(time.Now().Add(restoreHelloTimeout))
	bw := bufio.NewWriter(c)
	err = writeFrame(bw, req)
	if err == nil {
		err = bw.Flush()
	}
	var ready restoreReady
	if err == nil {
		// Unbuffered: the leader sends nothing more until it has the file.
		err = readFrame(c, &ready)
	}
	if err != nil || !ready.OK {
		c.Close()
		return nil, ready, err
	}
	_ = c.SetDeadline(time.Time{})
	return c, ready, nil
}

// idleWriter writes to c, each write within restoreIdle.
type idleWriter struct{ c net.Conn }

func (w idleWriter) Write(p []byte) (int, error) {
	_ = w.c.SetWriteDeadline(time.Now().Add(restoreIdle.get()))
	return w.c.Write(p)
}
