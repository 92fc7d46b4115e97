package fsm

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/mcpd/mcpd/queue"
)

// Operator commands on stored messages (docs/operations.md, "Queues"):
// redriving dead letters and deleting a message. The admin API proposes
// them with the operator as the command's Actor, which their audit
// entries record.
const (
	TypeQueueRedrive  MessageType = 30 // an operator moves dead letters back to a queue
	TypeMessageDelete MessageType = 31 // an operator deletes one message
)

type (
	// QueueRedriveArgs moves dead letters of a dead-letter queue to their
	// origin queues or to a target; at most queue.MaxRedrive per command.
	QueueRedriveArgs = queue.RedriveArgs
	// QueueRedriveResult answers a redrive: each message moved, with its
	// new queue and seq, and where a redrive of "all" continues.
	QueueRedriveResult = queue.RedriveResult
	// MessageDeleteArgs deletes a message of a queue; a leased one only
	// with Force.
	MessageDeleteArgs = queue.DeleteArgs
	// MessageDeleteResult answers a delete with what the message was.
	MessageDeleteResult = queue.DeleteResult
)

// seqArg is a seq as checkRange takes it: every seq past queue.MaxSeq
// becomes MaxSeq+1, which is out of range, rather than wrapping to
// negative.
func seqArg(seq uint64) int64 { return int64(min(seq, queue.MaxSeq+1)) }

func checkSeq(field string, seq uint64) error {
	return checkRange(field, seqArg(seq), 1, queue.MaxSeq)
}

func checkRedrive(a *QueueRedriveArgs) error {
	errs := []error{checkQueue("dlq", a.DLQ)}
	if a.To != "" {
		errs = append(errs, checkQueue("to", a.To))
	}
	if len(a.Seqs) > queue.MaxRedrive {
		errs = append(errs, badArg("seqs", fmt.Sprintf("must have at most %d seqs", queue.MaxRedrive)))
	} else {
		for _, s := range a.Seqs {
			if err := checkSeq("seqs", s); err != nil {
				errs = append(errs, err)
				break
			}
		}
	}
	errs = append(errs,
		checkRange("limit", int64(a.Limit), 0, queue.MaxRedrive),
		checkRange("after", seqArg(a.After), 0, queue.MaxSeq),
		checkRange("through", seqArg(a.Through), 0, queue.MaxSeq),
	)
	return firstErr(errs...)
}

func checkDelete(a *MessageDeleteArgs) error {
	return firstErr(checkQueue("queue", a.Queue), checkSeq("seq", a.Seq))
}

func init() {
	register(TypeQueueRedrive, checkRedrive, func(t *Tx, a *QueueRedriveArgs) (any, error) {
		r, err := t.Redrive(*a)
		return &r, err
	})
	register(TypeMessageDelete, checkDelete, func(t *Tx, a *MessageDeleteArgs) (any, error) {
		r, err := t.Delete(*a)
		return &r, err
	})
}

// redriveSubject describes a redrive for its audit entry: the dead-letter
// queue and the seqs it names (the first eight), or "*" for its dead
// letters in order; the target queue when one is given; and, when it
// succeeded, how many messages moved.
func redriveSubject(a *QueueRedriveArgs, res any) string {
	var b strings.Builder
	b.WriteString(a.DLQ)
	b.WriteByte('/')
	if len(a.Seqs) == 0 {
		b.WriteByte('*')
	}
	for i, s := range a.Seqs {
		if i == 8 {
			fmt.Fprintf(&b, ",... (%d seqs)", len(a.Seqs))
			break
		}
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatUint(s, 10))
	}
	if a.To != "" {
		b.WriteString(" to ")
		b.WriteString(a.To)
	}
	if r, ok := res.(*QueueRedriveResult); ok && r != nil && r.Moved != nil {
		fmt.Fprintf(&b, " (%d moved)", len(r.Moved))
	}
	return b.String()
}

// deleteSubject is QUEUE/SEQ, and the lease a forced delete ended.
func deleteSubject(a *MessageDeleteArgs, res any) string {
	s := a.Queue + "/" + strconv.FormatUint(a.Seq, 10)
	if r, ok := res.(*MessageDeleteResult); ok && r != nil && r.State == queue.StateInflight {
		s += " (leased to " + r.Holder + ")"
	}
	return s
}
