package client

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// pushAll sends a raw frame to every connection of the fake server.
func (s *fakeServer) pushAll(raw string) {
	s.mu.Lock()
	conns := make([]*fakeConn, 0, len(s.conns))
	for fc := range s.conns {
		conns = append(conns, fc)
	}
	s.mu.Unlock()
	for _, fc := range conns {
		fc.sendRaw([]byte(raw))
	}
}

// waitFrames polls until the fake server received n frames of op.
func waitFrames(t *testing.T, s *fakeServer, op string, n int) []fakeFrame {
	t.Helper()
	var fs []fakeFrame
	waitFor(t, 5*time.Second, fmt.Sprintf("%d %s frames", n, op), func() bool {
		fs = s.framesOf(op)
		return len(fs) >= n
	})
	return fs
}

func taskPushFrame(id string, attempt int) string {
	return `{"op":"task","task":{"id":"` + id + `","ref":"r","graph":"g1","capability":"edit","input":{"id":"e1","from":"o","ts":1,"body":{"n":1}},"origin":"o","chain":["o"],"deps_output":{}},"attempt":` +
		string(rune('0'+attempt)) + `,"lease_until":99}`
}

// The client side of task pushes, against the fake server: the
// registration is sent again after a reconnect, a task pushed twice is
// handed over once, task.revoked ends its context with the reason, a task
// pushed after Unregister goes back at once, and OnPush still sees them.
func Test_Tasks_PushesRevocationAndReregistration(t *testing.T) {
	s := newFakeServer(t)
	opts := testOptions(s)
	var pushes atomic.Int32
	opts.OnPush = func(op string, _ []byte) {
		if strings.HasPrefix(op, "task") {
			pushes.Add(1)
		}
	}
	c := mustDial(t, opts)
	ctx := testCtx(t)
	if err := c.Register(ctx, []Capability{{Name: "edit", MaxInflight: 2}, {Name: "review"}}, map[string]string{"m": "x"}); err != nil {
		t.Fatal(err)
	}
	reg := waitFrames(t, s, "register", 1)
	if raw := string(reg[0].raw); !strings.Contains(raw, `"capabilities":[{"name":"edit","max_inflight":2},{"name":"review"}],"meta":{"m":"x"}`) {
		t.Fatalf("register frame: %s", raw)
	}

	s.dropAll()
	reg = waitFrames(t, s, "register", 2)
	if reg[1].conn == reg[0].conn || !strings.Contains(string(reg[1].raw), `{"name":"review"}`) {
		t.Fatalf("the registration was not sent on the new connection: %+v", reg)
	}

	s.pushAll(taskPushFrame("t1", 1))
	s.pushAll(taskPushFrame("t1", 1))
	s.pushAll(taskPushFrame("t2", 1))
	a1 := <-c.Tasks()
	a2 := <-c.Tasks()
	if a1.ID != "t1" || a2.ID != "t2" || a1.Attempt != 1 || a1.LeaseUntil != 99 || string(a1.Body()) != `{"n":1}` || a1.Capability != "edit" {
		t.Fatalf("assignments %+v, %+v", a1, a2)
	}

	s.pushAll(`{"op":"task.revoked","task":"t1","attempt":1,"reason":"cancelled by o: enough"}`)
	<-a1.Context().Done()
	var rev *RevokedError
	if cause := context.Cause(a1.Context()); !errors.As(cause, &rev) || rev.Reason != "cancelled by o: enough" || rev.Task != "t1" {
		t.Fatalf("the revoked task's cause: %v", context.Cause(a1.Context()))
	}
	if a2.Context().Err() != nil {
		t.Fatal("revoking t1 ended t2's context")
	}
	if err := a2.Done(ctx, map[string]int{"ok": 1}); err != nil {
		t.Fatal(err)
	}
	done := waitFrames(t, s, "task.done", 1)
	if raw := string(done[0].raw); !strings.Contains(raw, `"task":"t2","attempt":1,"output":{"ok":1}`) {
		t.Fatalf("task.done frame: %s", raw)
	}

	if err := c.Unregister(ctx); err != nil {
		t.Fatal(err)
	}
	reg = waitFrames(t, s, "register", 3)
	if !strings.Contains(string(reg[2].raw), `"capabilities":[]`) {
		t.Fatalf("unregister frame: %s", reg[2].raw)
	}
	s.pushAll(taskPushFrame("t3", 2))
	fail := waitFrames(t, s, "task.fail", 1)
	if raw := string(fail[0].raw); !strings.Contains(raw, `"task":"t3","attempt":2`) || !strings.Contains(raw, `"retry":true`) {
		t.Fatalf("a task pushed after Unregister: %s", raw)
	}
	// OnPush runs after the client's own handling of each push.
	waitFor(t, 5*time.Second, "OnPush to see 5 task pushes", func() bool { return pushes.Load() == 5 })
}
