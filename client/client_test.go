package client

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

func testOptions(s *fakeServer) Options {
	return Options{
		URLs:       []string{s.url},
		Agent:      "tester",
		TLSConfig:  &tls.Config{RootCAs: s.certPool()},
		MinBackoff: 5 * time.Millisecond,
		MaxBackoff: 50 * time.Millisecond,
	}
}

func mustDial(t *testing.T, opts Options) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, opts)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func Test_Dial_AuthAndPing(t *testing.T) {
	s := newFakeServer(t)
	opts := testOptions(s)
	opts.TLSConfig = nil
	opts.CAFile = s.caFile(t)
	c := mustDial(t, opts)
	p, err := c.Ping(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if p.Node != "fake1" || p.Leader != "" || p.Time == 0 {
		t.Fatalf("ping = %+v", p)
	}
	auth := s.framesOf("auth")
	if len(auth) != 1 || !strings.Contains(string(auth[0].raw), `"alg":"none"`) || !strings.Contains(string(auth[0].raw), `"agent":"tester"`) {
		t.Fatalf("auth frames = %v", auth)
	}
	if c.Node() != "fake1" {
		t.Fatalf("Node() = %q", c.Node())
	}
}

func Test_Dial_RotatesPastDeadURL(t *testing.T) {
	s := newFakeServer(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "wss://" + l.Addr().String() + "/v1"
	l.Close()
	opts := testOptions(s)
	opts.URLs = []string{dead, s.url}
	c := mustDial(t, opts)
	if _, err := c.Ping(testCtx(t)); err != nil {
		t.Fatal(err)
	}
}

func Test_Dial_AllURLsFail(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	_, err = Dial(testCtx(t), Options{URLs: []string{"wss://" + addr + "/v1"}, Agent: "a"})
	if err == nil || !strings.Contains(err.Error(), addr) {
		t.Fatalf("err = %v, want a dial error naming %s", err, addr)
	}
}

func Test_Requests_OutOfOrderReplies(t *testing.T) {
	s := newFakeServer(t)
	const n = 20
	s.with(func() { s.echoBatch = n })
	c := mustDial(t, testOptions(s))
	ctx := testCtx(t)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			raw, err := c.Do(ctx, "echo", map[string]any{"n": i})
			if err != nil {
				errs <- err
				return
			}
			var r struct{ N int }
			json.Unmarshal(raw, &r)
			if r.N != i {
				errs <- fmt.Errorf("request %d got reply for %d", i, r.N)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func Test_Errors_CodesFromServer(t *testing.T) {
	s := newFakeServer(t)
	c := mustDial(t, testOptions(s))
	ctx := testCtx(t)
	_, err := c.Do(ctx, "nosuchop", nil)
	if !IsCode(err, "bad_request") {
		t.Fatalf("err = %v, want bad_request", err)
	}
	_, err = c.Do(ctx, "cancel", map[string]any{"consumer": "nope"})
	var e *Error
	if !errors.As(err, &e) || e.Code != "not_found" || e.Msg == "" {
		t.Fatalf("err = %#v", err)
	}
}

func Test_Enqueue_EnvelopeAndOptions(t *testing.T) {
	s := newFakeServer(t)
	c := mustDial(t, testOptions(s))
	before := time.Now().UnixMilli()
	res, err := c.Enqueue(testCtx(t), "jobs", map[string]any{"task": "x<y>"},
		WithPriority(7), WithDelay(1500), WithIntent("review"), WithParent("P1"))
	if err != nil {
		t.Fatal(err)
	}
	if res.Seq != 1 || res.Dup || len(res.ID) != 26 {
		t.Fatalf("result = %+v", res)
	}
	f := s.framesOf("enqueue")[0]
	var req struct {
		Queue    string
		Priority int
		DelayMs  int64 `json:"delay_ms"`
	}
	json.Unmarshal(f.raw, &req)
	if req.Queue != "jobs" || req.Priority != 7 || req.DelayMs != 1500 {
		t.Fatalf("request = %s", f.raw)
	}
	env, err := ParseEnvelope(f.msg)
	if err != nil {
		t.Fatal(err)
	}
	if env.ID != res.ID || env.From != "tester" || env.TS < before || env.Intent != "review" ||
		env.Parent != "P1" || string(env.Body) != `{"task":"x<y>"}` {
		t.Fatalf("envelope = %s", f.msg)
	}
}

func Test_Enqueue_RetriesSameEnvelopeAfterUnavailable(t *testing.T) {
	s := newFakeServer(t)
	s.with(func() { s.failEnqueue = 2 })
	c := mustDial(t, testOptions(s))
	res, err := c.Enqueue(testCtx(t), "jobs", "hello")
	if err != nil {
		t.Fatal(err)
	}
	frames := s.framesOf("enqueue")
	if len(frames) != 3 {
		t.Fatalf("server saw %d enqueues, want 3", len(frames))
	}
	for i, f := range frames {
		if string(f.msg) != string(frames[0].msg) {
			t.Fatalf("attempt %d sent %s, first sent %s", i+1, f.msg, frames[0].msg)
		}
		if envelopeID(f.msg) != res.ID {
			t.Fatalf("attempt %d id %q, result id %q", i+1, envelopeID(f.msg), res.ID)
		}
	}
	if res.Seq != 1 || res.Dup {
		t.Fatalf("result = %+v", res)
	}
}

func Test_Enqueue_RetriesAfterConnectionLoss(t *testing.T) {
	s := newFakeServer(t)
	s.with(func() { s.dropOnEnqueue = 1 })
	c := mustDial(t, testOptions(s))
	res, err := c.Enqueue(testCtx(t), "jobs", "hello")
	if err != nil {
		t.Fatal(err)
	}
	frames := s.framesOf("enqueue")
	if len(frames) != 2 || frames[0].conn == frames[1].conn {
		t.Fatalf("want 2 enqueues on 2 connections, got %d", len(frames))
	}
	if string(frames[0].msg) != string(frames[1].msg) {
		t.Fatalf("retry changed the envelope:\n%s\n%s", frames[0].msg, frames[1].msg)
	}
	if !res.Dup || res.Seq != 1 {
		t.Fatalf("result = %+v, want the deduplicated seq 1", res)
	}
	if c.Reconnects() != 1 {
		t.Fatalf("Reconnects() = %d", c.Reconnects())
	}
}

func Test_Enqueue_GivesUpWhenContextEnds(t *testing.T) {
	s := newFakeServer(t)
	s.with(func() { s.failEnqueue = 1 << 30 })
	c := mustDial(t, testOptions(s))
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := c.Enqueue(ctx, "jobs", 1)
	if !errors.Is(err, context.DeadlineExceeded) || !IsCode(err, "unavailable") {
		t.Fatalf("err = %v, want deadline with the last unavailable", err)
	}
}

func Test_Enqueue_TooLargeIsLocal(t *testing.T) {
	s := newFakeServer(t)
	s.with(func() { s.maxFrame = 256 })
	c := mustDial(t, testOptions(s))
	_, err := c.Enqueue(testCtx(t), "jobs", strings.Repeat("x", 300))
	if !IsCode(err, "too_large") {
		t.Fatalf("err = %v", err)
	}
	if n := len(s.framesOf("enqueue")); n != 0 {
		t.Fatalf("server saw %d enqueues", n)
	}
}

func Test_Consume_MsgByteForByteAndAck(t *testing.T) {
	s := newFakeServer(t)
	c := mustDial(t, testOptions(s))
	ctx := testCtx(t)
	k, err := c.Consume(ctx, "jobs", ConsumeOptions{Prefetch: 4, LeaseMs: 1000})
	if err != nil {
		t.Fatal(err)
	}
	env := []byte(`{"id":"E1", "from":"tester","ts":` + fmt.Sprint(time.Now().UnixMilli()) + `,"body":{"big":12345678901234567890123}}`)
	if _, err := c.EnqueueRaw(ctx, "jobs", env); err != nil {
		t.Fatal(err)
	}
	d, err := k.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if string(d.Msg) != string(env) || d.Queue != "jobs" || d.Seq != 1 || d.Attempt != 1 || d.LeaseUntil == 0 {
		t.Fatalf("delivery = %+v msg %s", d, d.Msg)
	}
	if lu, err := d.Extend(ctx, 5000); err != nil || lu == 0 {
		t.Fatalf("extend = %d, %v", lu, err)
	}
	if err := d.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	if err := d.Ack(ctx); !IsCode(err, "not_found") || !IsStale(err) {
		t.Fatalf("second ack: %v", err)
	}
	consume := s.framesOf("consume")[0]
	if !strings.Contains(string(consume.raw), `"prefetch":4`) || !strings.Contains(string(consume.raw), `"lease_ms":1000`) {
		t.Fatalf("consume frame %s", consume.raw)
	}
}

func Test_Consumer_Cancel(t *testing.T) {
	s := newFakeServer(t)
	c := mustDial(t, testOptions(s))
	ctx := testCtx(t)
	k, err := c.Consume(ctx, "jobs", ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	id := k.ID()
	if err := k.Cancel(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := <-k.C(); ok {
		t.Fatal("delivery after cancel")
	}
	if _, err := k.Next(ctx); !errors.Is(err, ErrEnded) {
		t.Fatalf("Next after cancel: %v", err)
	}
	cancels := s.framesOf("cancel")
	if len(cancels) != 1 || !strings.Contains(string(cancels[0].raw), `"consumer":"`+id+`"`) {
		t.Fatalf("cancel frames %v", cancels)
	}
	if err := k.Cancel(ctx); err != nil {
		t.Fatalf("second cancel: %v", err)
	}
}

func Test_Reconnect_ReopensConsumerAndSubscription(t *testing.T) {
	s := newFakeServer(t)
	c := mustDial(t, testOptions(s))
	ctx := testCtx(t)
	k, err := c.Consume(ctx, "jobs", ConsumeOptions{Prefetch: 2})
	if err != nil {
		t.Fatal(err)
	}
	sub, err := c.Subscribe(ctx, "news.today")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Enqueue(ctx, "jobs", "one"); err != nil {
		t.Fatal(err)
	}
	first, err := k.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	oldConsumer, oldSub := k.ID(), sub.ID()

	s.dropAll()
	waitFor(t, 5*time.Second, "consumer and subscription re-opened", func() bool {
		return len(s.framesOf("consume")) == 2 && len(s.framesOf("subscribe")) == 2 &&
			k.ID() != "" && sub.ID() != ""
	})
	if k.ID() == oldConsumer || sub.ID() == oldSub {
		t.Fatalf("ids not renewed: consumer %s→%s sub %s→%s", oldConsumer, k.ID(), oldSub, sub.ID())
	}
	if err := first.Ack(ctx); !errors.Is(err, ErrStaleDelivery) || !IsStale(err) {
		t.Fatalf("ack of a delivery from the dropped connection: %v", err)
	}

	// The lease was released on close: the message comes again through
	// the same Consumer.
	again, err := k.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if again.Seq != first.Seq || again.Attempt != 2 || string(again.Msg) != string(first.Msg) {
		t.Fatalf("redelivery = %+v", again)
	}
	if err := again.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	n, err := c.Publish(ctx, "news.today", map[string]int{"n": 1})
	if err != nil || n != 1 {
		t.Fatalf("publish = %d, %v", n, err)
	}
	ev, err := sub.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ev.Topic != "news.today" || !strings.Contains(string(ev.Msg), `"body":{"n":1}`) {
		t.Fatalf("event = %s %s", ev.Topic, ev.Msg)
	}
	var acks []string
	s.with(func() { acks = append(acks, s.acks...) })
	if len(acks) != 1 || acks[0] != "ack jobs/1/2" {
		t.Fatalf("server acks = %v", acks)
	}
}

func Test_Subscription_Unsubscribe(t *testing.T) {
	s := newFakeServer(t)
	c := mustDial(t, testOptions(s))
	ctx := testCtx(t)
	sub, err := c.Subscribe(ctx, "a.b")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Publish(ctx, "a.b", 1); err != nil {
		t.Fatal(err)
	}
	if err := sub.Unsubscribe(ctx); err != nil {
		t.Fatal(err)
	}
	var got int
	for range sub.C() {
		got++
	}
	if got != 1 {
		t.Fatalf("got %d events, want the 1 buffered before unsubscribe", got)
	}
	if n, err := c.Publish(ctx, "a.b", 2); err != nil || n != 0 {
		t.Fatalf("publish after unsubscribe = %d, %v", n, err)
	}
}

func Test_Close_NoLeaks(t *testing.T) {
	s := newFakeServer(t)
	c := mustDial(t, testOptions(s))
	ctx := testCtx(t)
	k, err := c.Consume(ctx, "jobs", ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sub, err := c.Subscribe(ctx, "t")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Enqueue(ctx, "jobs", 1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "client goroutines running", func() bool { return len(clientGoroutines()) >= 4 })
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	for range k.C() {
	}
	for range sub.C() {
	}
	waitFor(t, 5*time.Second, "client goroutines gone", func() bool { return len(clientGoroutines()) == 0 })
	if _, err := c.Ping(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("ping after close: %v", err)
	}
	if _, err := c.Consume(ctx, "jobs", ConsumeOptions{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("consume after close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}

func Test_Close_WhileReconnecting(t *testing.T) {
	s := newFakeServer(t)
	c := mustDial(t, testOptions(s))
	s.ts.Close() // no more connections accepted
	s.dropAll()
	waitFor(t, 5*time.Second, "disconnect noticed", func() bool { return c.Node() == "" })
	done := make(chan error, 1)
	go func() {
		_, err := c.Ping(context.Background())
		done <- err
	}()
	c.Close()
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Fatalf("ping waiting for a connection: %v", err)
	}
	waitFor(t, 5*time.Second, "client goroutines gone", func() bool { return len(clientGoroutines()) == 0 })
}

func Test_Enqueue_PipelinedAcrossReconnect(t *testing.T) {
	s := newFakeServer(t)
	c := mustDial(t, testOptions(s))
	ctx := testCtx(t)
	const n = 300
	var wg sync.WaitGroup
	results := make([]EnqueueResult, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = c.Enqueue(ctx, "jobs", i)
		}()
		if i == n/2 {
			s.dropAll()
		}
	}
	wg.Wait()
	seqs := map[uint64]bool{}
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("enqueue %d: %v", i, errs[i])
		}
		if seqs[results[i].Seq] {
			t.Fatalf("seq %d returned twice", results[i].Seq)
		}
		seqs[results[i].Seq] = true
	}
	var stored int
	s.with(func() { stored = len(s.queues["jobs"].msgs) })
	if stored != n {
		t.Fatalf("server stored %d messages, want %d", stored, n)
	}
}
