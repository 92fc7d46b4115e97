package cluster

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/internal/mpack"
	"github.com/mcpd/mcpd/queue"
	"github.com/vmihailenco/msgpack/v5"
)

// Followers forward client commands to the leader over the Raft port
// (protocol byte 'F'). A frame is a big-endian uint32 length and a msgpack
// body. Requests on one connection reach raft.Apply in the order they were
// sent, so the commands of one client connection commit in order.

const maxForwardFrame = 64 << 20

type fwdRequest struct {
	ID   uint64        `msgpack:"i"`
	Cmds []fsm.Command `msgpack:"c"`
}

// Forward outcomes.
const (
	fwdOK        = 0
	fwdNotLeader = 1 // not applied: retry elsewhere
	fwdUnknown   = 2 // may or may not commit
)

type fwdResponse struct {
	ID      uint64 `msgpack:"i"`
	Status  int    `msgpack:"s"`
	Msg     string `msgpack:"m,omitempty"`
	Replies []byte `msgpack:"r,omitempty"` // fsm.EncodeReplies
}

func writeFrame(w io.Writer, v any) error {
	body, err := msgpack.Marshal(v)
	if err != nil {
		return err
	}
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], uint32(len(body)))
	if _, err := w.Write(hdr[:]); err != nil {
		return err
	}
	_, err = w.Write(body)
	return err
}

func readFrame(r io.Reader, v any) error {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > maxForwardFrame {
		return fmt.Errorf("forward frame of %d bytes exceeds the limit", n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return err
	}
	// A peer's length prefixes must not size allocations (see mpack).
	return mpack.Unmarshal(body, v)
}

// serveForward handles one follower's connection on the leader.
func (n *Node) serveForward(c net.Conn) {
	defer c.Close()
	if !n.awaitRaft() {
		return
	}
	go func() {
		<-n.shutdownCh
		c.Close()
	}()
	var wmu sync.Mutex
	bw := bufio.NewWriter(c)
	respond := func(r fwdResponse) {
		wmu.Lock()
		defer wmu.Unlock()
		if err := writeFrame(bw, r); err == nil {
			_ = bw.Flush()
		}
	}
	br := bufio.NewReader(c)
	for {
		var req fwdRequest
		if err := readFrame(br, &req); err != nil {
			return
		}
		wait, err := n.applyLeader(req.Cmds)
		if err != nil {
			respond(fwdResponse{ID: req.ID, Status: fwdNotLeader, Msg: err.Error()})
			continue
		}
		go func(id uint64) {
			replies, err := wait()
			switch {
			case err == nil:
				r := fwdResponse{ID: id, Status: fwdOK}
				if len(replies) > 0 {
					if r.Replies, err = fsm.EncodeReplies(replies); err != nil {
						n.log.Error("cannot encode replies", "err", err)
					}
				}
				respond(r)
			case errors.Is(err, ErrUnavailable):
				respond(fwdResponse{ID: id, Status: fwdNotLeader, Msg: err.Error()})
			default:
				respond(fwdResponse{ID: id, Status: fwdUnknown, Msg: err.Error()})
			}
		}(req.ID)
	}
}

// forwarder is a follower's connection to the leader.
type forwarder struct {
	n *Node

	mu      sync.Mutex
	addr    string
	conn    net.Conn
	bw      *bufio.Writer
	nextID  uint64
	waiting map[uint64]chan error
}

// forwardSilence is how long the leader may send nothing back while
// batches wait for it; after that they fail (outcome unknown) and the
// connection is dropped. The leader answers every batch once it applied
// it, or at once when it cannot apply (awaitApplied), so only a dead,
// cut-off or overloaded leader stays silent.
const forwardSilence = 15 * time.Second

// send writes a batch to the leader at addr and returns a channel that
// yields its outcome: nil (committed), ErrUnavailable (not applied) or
// ErrUnknown.
func (f *forwarder) send(addr string, cmds []fsm.Command) chan error {
	ch := make(chan error, 1)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conn != nil && f.addr != addr {
		f.failLocked(fmt.Errorf("%w: leader changed", ErrUnknown))
	}
	if f.conn == nil {
		c, err := f.n.mux.dial(addr, protoForward, 2*time.Second)
		if err != nil {
			ch <- fmt.Errorf("%w: cannot reach leader %s: %v", ErrUnavailable, addr, err)
			return ch
		}
		f.addr, f.conn, f.bw = addr, c, bufio.NewWriter(c)
		f.waiting = map[uint64]chan error{}
		go f.readLoop(c)
	}
	f.nextID++
	id := f.nextID
	f.waiting[id] = ch
	if len(f.waiting) == 1 {
		_ = f.conn.SetReadDeadline(time.Now().Add(forwardSilence))
	}
	_ = f.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	err := writeFrame(f.bw, fwdRequest{ID: id, Cmds: cmds})
	if err == nil {
		err = f.bw.Flush()
	}
	if err != nil {
		f.failLocked(fmt.Errorf("%w: forward to leader: %v", ErrUnknown, err))
	}
	return ch
}

func (f *forwarder) readLoop(c net.Conn) {
	br := bufio.NewReader(c)
	for {
		var r fwdResponse
		if err := readFrame(br, &r); err != nil {
			f.mu.Lock()
			if f.conn == c {
				f.failLocked(fmt.Errorf("%w: connection to leader lost: %v", ErrUnknown, err))
			}
			f.mu.Unlock()
			return
		}
		f.mu.Lock()
		ch := f.waiting[r.ID]
		delete(f.waiting, r.ID)
		if len(f.waiting) == 0 {
			_ = c.SetReadDeadline(time.Time{})
		} else {
			_ = c.SetReadDeadline(time.Now().Add(forwardSilence))
		}
		f.mu.Unlock()
		if ch == nil {
			continue
		}
		switch r.Status {
		case fwdOK:
			f.n.deliverReplies(r.Replies)
			ch <- nil
		case fwdNotLeader:
			ch <- fmt.Errorf("%w: %s", ErrUnavailable, strings.TrimPrefix(r.Msg, ErrUnavailable.Error()+": "))
		default:
			// The leader's message names the class already.
			ch <- fmt.Errorf("%w: %s", ErrUnknown, strings.TrimPrefix(r.Msg, ErrUnknown.Error()+": "))
		}
	}
}

// failLocked drops the connection and fails every batch waiting on it.
func (f *forwarder) failLocked(err error) {
	if f.conn != nil {
		f.conn.Close()
	}
	for id, ch := range f.waiting {
		ch <- err
		delete(f.waiting, id)
	}
	f.conn, f.bw, f.addr = nil, nil, ""
}

// dropUnless drops the connection unless it goes to addr, failing what
// waits on it as unknown.
func (f *forwarder) dropUnless(addr string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conn != nil && f.addr != addr {
		f.failLocked(fmt.Errorf("%w: leader changed", ErrUnknown))
	}
}

func (f *forwarder) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failLocked(fmt.Errorf("%w: node shutting down", ErrUnknown))
}

// deliverReplies hands the leader's replies to the local connections they
// answer. Replies that must follow this node's own apply are left to it;
// for the others, whichever of the two copies comes first is sent.
func (n *Node) deliverReplies(raw []byte) {
	if len(raw) == 0 {
		return
	}
	replies, err := fsm.DecodeReplies(raw)
	if err != nil {
		n.log.Error("cannot decode replies from the leader", "err", err)
		return
	}
	effects := make([]queue.Effect, 0, len(replies))
	for _, r := range replies {
		if !fsm.RepliedOnApply(r.Type) {
			effects = append(effects, r)
		}
	}
	n.route(effects)
}
