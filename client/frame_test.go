package client

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func Test_Frame_StringsAndRawAreValidJSON(t *testing.T) {
	for _, s := range []string{"plain", `q"uote\back`, "ctl\x01\n\t", "utf8 é ✓ \u2028", "bad\xffbyte", "<&>"} {
		b, err := newFrame("op").str("k", s).raw("msg", []byte(`{"a" : 1}`)).finish(42)
		if err != nil {
			t.Fatal(err)
		}
		var got struct {
			Op  string
			Rid int64
			K   string
			Msg json.RawMessage
		}
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("%q: %v in %s", s, err, b)
		}
		want := strings.ToValidUTF8(s, "\uFFFD")
		if got.Op != "op" || got.Rid != 42 || got.K != want || string(got.Msg) != `{"a" : 1}` {
			t.Fatalf("%q round-tripped to %+v", s, got)
		}
	}
}

func Test_DecodeFrame_DeliverAndErr(t *testing.T) {
	f, err := decodeFrame([]byte(`{"op":"deliver","consumer":"c1","queue":"jobs.dlq","seq":3,"attempt":1,"lease_until":99,` +
		`"msg":{"id":"x", "n":123456789012345678901234},"dead":{"queue":"jobs","seq":7,"reason":"rejected: bad","attempts":2}}`))
	if err != nil {
		t.Fatal(err)
	}
	if f.Consumer != "c1" || f.Seq != 3 || string(f.Msg) != `{"id":"x", "n":123456789012345678901234}` ||
		f.Dead == nil || *f.Dead != (DeadInfo{Queue: "jobs", Seq: 7, Reason: "rejected: bad", Attempts: 2}) {
		t.Fatalf("decoded %+v dead %+v", f, f.Dead)
	}
	if _, ok := f.rid(); ok {
		t.Fatal("push has no rid")
	}
	f, err = decodeFrame([]byte(`{"op":"err","rid":5,"code":"unavailable","msg":"no leader","unknown":true}`))
	if err != nil {
		t.Fatal(err)
	}
	if rid, ok := f.rid(); !ok || rid != 5 {
		t.Fatalf("rid = %d %v", rid, ok)
	}
	if e := f.asError(); *e != (Error{Code: "unavailable", Msg: "no leader", Unknown: true}) {
		t.Fatalf("error = %+v", e)
	}
	// A result field of an unexpected type does not stop routing.
	if f, err = decodeFrame([]byte(`{"op":"ok","rid":6,"seq":"odd"}`)); err != nil || f.Op != "ok" {
		t.Fatalf("frame %+v err %v", f, err)
	}
}

func Test_Backoff_GrowsWithinBounds(t *testing.T) {
	b := backoff{min: 10 * time.Millisecond, max: 80 * time.Millisecond}
	for i, hi := range []time.Duration{10, 20, 40, 80, 80, 80} {
		hi *= time.Millisecond
		if d := b.next(); d < hi/2 || d > hi {
			t.Fatalf("wait %d = %v, want within [%v, %v]", i, d, hi/2, hi)
		}
	}
}

func Test_Consume_AbandonedIsCancelledOnServer(t *testing.T) {
	s := newFakeServer(t)
	hold := make(chan struct{})
	s.with(func() { s.holdConsume = hold })
	c := mustDial(t, testOptions(s))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := c.Consume(ctx, "jobs", ConsumeOptions{})
		done <- err
	}()
	waitFor(t, 5*time.Second, "consume sent", func() bool { return len(s.framesOf("consume")) == 1 })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Consume = %v, want canceled", err)
	}
	// The server answers the consume late and then delivers to it: the
	// client cancels the consumer it no longer wants and hands the
	// delivery back at once.
	enq := make(chan error, 1)
	go func() {
		_, err := c.Enqueue(testCtx(t), "jobs", 1)
		enq <- err
	}()
	waitFor(t, 5*time.Second, "enqueue queued behind the held consume", func() bool {
		return len(s.framesOf("enqueue")) == 1
	})
	close(hold)
	if err := <-enq; err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "cancel and nack", func() bool {
		return len(s.framesOf("cancel")) == 1 && len(s.framesOf("nack")) == 1
	})
	if f := s.framesOf("cancel")[0]; !strings.Contains(string(f.raw), `"consumer":"c1"`) {
		t.Fatalf("cancel frame %s", f.raw)
	}
	if f := s.framesOf("nack")[0]; !strings.Contains(string(f.raw), `"delay_ms":0`) {
		t.Fatalf("nack frame %s", f.raw)
	}
}
