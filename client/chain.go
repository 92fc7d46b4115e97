package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
)

// HopCheck is the verdict on one hop of a task's delegation chain.
type HopCheck struct {
	Hop      TaskHop
	Verified *Verified // the envelope's signature, checked against its agent's key
	Err      error     // why the hop does not prove itself (nil: it does)
}

// ErrBrokenChain is wrapped by the error of VerifyTaskChain when the
// task's provenance does not hold together.
var ErrBrokenChain = errors.New("mcpd client: delegation chain not verified")

// VerifyTaskChain checks the provenance of a task read with GetTask, as
// far as a client can without trusting the server's word for it:
//
//   - the hops name the chain's agents in order, the first the origin,
//     and the last hop is this task with its input byte for byte;
//   - each hop's envelope comes from its agent, and its signature
//     verifies against the key the cluster registered for that agent
//     (VerifyEnvelope; an hmac-sha256 agent's signature only the cluster
//     could check, which Verified.ByServer says);
//   - each hop's task was delegated under the previous hop's task.
//
// It returns a verdict per hop, and an error wrapping ErrBrokenChain when
// any hop or link fails (other errors: a key or task could not be read,
// the check may be retried).
func (c *Client) VerifyTaskChain(ctx context.Context, t *Task) ([]HopCheck, error) {
	var broken []string
	fail := func(format string, args ...any) { broken = append(broken, fmt.Sprintf(format, args...)) }
	if len(t.Hops) == 0 || len(t.Hops) != len(t.Chain) {
		fail("%d hops for a chain of %d agents", len(t.Hops), len(t.Chain))
	}
	if len(t.Chain) > 0 && t.Chain[0] != t.Origin {
		fail("the chain starts with %s, the origin is %s", t.Chain[0], t.Origin)
	}
	checks := make([]HopCheck, len(t.Hops))
	for i, h := range t.Hops {
		checks[i].Hop = h
		if i < len(t.Chain) && h.Agent != t.Chain[i] {
			fail("hop %d is %s's, the chain names %s", i, h.Agent, t.Chain[i])
		}
		v, err := c.VerifyEnvelope(ctx, h.Envelope)
		switch {
		case err != nil && !errors.Is(err, ErrBadSender):
			return nil, err
		case err != nil:
			checks[i].Err = err
			fail("hop %d (%s, task %s): %v", i, h.Agent, h.Task, err)
		case v.Envelope.From != h.Agent:
			checks[i].Err = fmt.Errorf("the envelope is from %s", v.Envelope.From)
			fail("hop %d: the envelope is from %s, not %s", i, v.Envelope.From, h.Agent)
		default:
			checks[i].Verified = v
		}
		if i > 0 {
			g, err := c.GetTask(ctx, h.Task)
			if err != nil {
				return nil, err
			}
			if g.Task == nil || g.Task.Parent != t.Hops[i-1].Task {
				fail("task %s was not delegated under %s", h.Task, t.Hops[i-1].Task)
			}
		}
	}
	if n := len(t.Hops); n > 0 && (t.Hops[n-1].Task != t.ID || !bytes.Equal(t.Hops[n-1].Envelope, t.Input)) {
		fail("the last hop is not task %s with its input", t.ID)
	}
	if len(broken) > 0 {
		return checks, fmt.Errorf("%w: %s", ErrBrokenChain, broken[0])
	}
	return checks, nil
}
