package transport

import (
	"encoding/json"
	"strconv"

	"github.com/mcpd/mcpd/fsm"
	"github.com/mcpd/mcpd/queue"
	"github.com/mcpd/mcpd/task"
)

// sendOK queues {"op":"ok","rid":R, k1:v1, ...}.
func (c *conn) sendOK(rid json.RawMessage, kv ...any) {
	c.send(okFrame(rid, kv...))
}

func okFrame(rid json.RawMessage, kv ...any) []byte {
	b := make([]byte, 0, 64)
	b = append(b, `{"op":"ok","rid":`...)
	b = append(b, rid...)
	for i := 0; i+1 < len(kv); i += 2 {
		b = append(b, ',')
		b = strconv.AppendQuote(b, kv[i].(string))
		b = append(b, ':')
		v, err := json.Marshal(kv[i+1])
		if err != nil {
			v = []byte("null")
		}
		b = append(b, v...)
	}
	return append(b, '}')
}

// sendErr queues an error frame; rid nil means the frame could not be read.
func (c *conn) sendErr(rid json.RawMessage, code, msg string, unknown bool) {
	m := map[string]any{"op": "err", "code": code, "msg": msg}
	if rid != nil {
		m["rid"] = rid
	}
	if unknown {
		m["unknown"] = true
	}
	data, _ := json.Marshal(m)
	c.send(data)
}

// render turns a queued item into frame bytes; nil means nothing to write.
func (c *conn) render(v any) []byte {
	switch e := v.(type) {
	case *frame:
		return e.data
	case *queue.Delivery:
		return renderDelivery(e)
	case *queue.Event:
		b := make([]byte, 0, 64+len(e.Msg))
		b = append(b, `{"op":"event","sub":"s`...)
		b = strconv.AppendUint(b, e.Sub, 10)
		b = append(b, `","topic":"`...)
		b = append(b, e.Topic...) // topics are [A-Za-z0-9_.-]
		b = append(b, `","msg":`...)
		b = append(b, e.Msg...)
		return append(b, '}')
	case *task.Push:
		return renderTaskPush(e)
	case *task.Revoked:
		return renderTaskRevoked(e)
	case *taskUpdate:
		return renderTaskUpdate(e)
	case *fsm.Reply:
		rid, ok := c.takePending(e.Req)
		if !ok {
			return nil // answered already (the outcome was reported unknown)
		}
		if e.Err != nil {
			code, msg := errorCode(e.Err)
			data, _ := json.Marshal(map[string]any{"op": "err", "rid": rid, "code": code, "msg": msg})
			return data
		}
		return renderResult(rid, e.Result)
	}
	return nil
}

func renderDelivery(d *queue.Delivery) []byte {
	b := make([]byte, 0, 160+len(d.Msg))
	b = append(b, `{"op":"deliver","consumer":"c`...)
	b = strconv.AppendUint(b, d.Consumer, 10)
	b = append(b, `","queue":"`...)
	b = append(b, d.Queue...) // queue names are [A-Za-z0-9._@-]
	b = append(b, `","seq":`...)
	b = strconv.AppendUint(b, d.Seq, 10)
	b = append(b, `,"attempt":`...)
	b = strconv.AppendInt(b, int64(d.Attempt), 10)
	b = append(b, `,"lease_until":`...)
	b = strconv.AppendInt(b, d.LeaseUntil, 10)
	if d.Dead != nil {
		dead, _ := json.Marshal(d.Dead)
		b = append(b, `,"dead":`...)
		b = append(b, dead...)
	}
	b = append(b, `,"msg":`...)
	b = append(b, d.Msg...)
	return append(b, '}')
}

func renderResult(rid json.RawMessage, res any) []byte {
	switch r := res.(type) {
	case *fsm.EnqueueResult:
		b := make([]byte, 0, 64)
		b = append(b, `{"op":"ok","rid":`...)
		b = append(b, rid...)
		b = append(b, `,"seq":`...)
		b = strconv.AppendUint(b, r.Seq, 10)
		b = append(b, `,"dup":`...)
		b = strconv.AppendBool(b, r.Dup)
		return append(b, '}')
	case *fsm.SubmitResult:
		return okFrame(rid, "ids", r.IDs, "root", r.Root)
	case *fsm.CancelResult:
		return okFrame(rid, "cancelled", r.Cancelled)
	case *fsm.ConsumeResult:
		return okFrame(rid, "consumer", "c"+strconv.FormatUint(r.Consumer, 10))
	case *fsm.SubscribeResult:
		return okFrame(rid, "sub", "s"+strconv.FormatUint(r.Sub, 10))
	case *fsm.ExtendResult:
		return okFrame(rid, "lease_until", r.LeaseUntil)
	case *fsm.PublishResult:
		return okFrame(rid, "receivers", r.Receivers, "dup", r.Dup)
	case *fsm.DeclareResult:
		var maxLen any
		if r.MaxLen > 0 {
			maxLen = r.MaxLen
		}
		backoff := r.BackoffMs
		if backoff == nil {
			backoff = []int64{}
		}
		return okFrame(rid, "max_attempts", r.MaxAttempts, "backoff_ms", backoff, "dlq", r.DLQ, "max_len", maxLen)
	default:
		return okFrame(rid)
	}
}
