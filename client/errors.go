package client

import (
	"errors"
	"fmt"
)

// Sentinel errors of the client. Server errors are *Error values instead.
var (
	// ErrClosed is returned by every operation after Close.
	ErrClosed = errors.New("mcpd client: closed")
	// ErrDisconnected means the connection carrying a request dropped
	// before its reply arrived: the outcome is unknown.
	ErrDisconnected = errors.New("mcpd client: connection lost before the reply")
	// ErrStaleDelivery is returned by Ack, Nack, Reject and Extend on a
	// delivery whose connection has dropped. The server released the lease
	// when that connection closed and will deliver the message again, so
	// callers may ignore this error.
	ErrStaleDelivery = errors.New("mcpd client: delivery belongs to a dropped connection; it will be redelivered")
	// ErrEnded is returned by Consumer.Next and Subscription.Next once the
	// consumer or subscription has ended without a more specific cause.
	ErrEnded = errors.New("mcpd client: consumer or subscription ended")
)

// Error is an `err` reply from the server (or a local check that mirrors one,
// such as too_large for a frame above the announced max_frame).
type Error struct {
	Code string // stable protocol code: not_found, unavailable, ...
	Msg  string // human readable text from the server
	// Unknown is set with code unavailable when the server cannot tell
	// whether the request took effect; a retry with the same envelope is safe.
	Unknown bool
}

func (e *Error) Error() string {
	if e.Unknown {
		return fmt.Sprintf("mcpd: %s (outcome unknown): %s", e.Code, e.Msg)
	}
	return fmt.Sprintf("mcpd: %s: %s", e.Code, e.Msg)
}

// IsCode reports whether err is, or wraps, a server error with that code.
func IsCode(err error, code string) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}

// IsStale reports whether an Ack, Nack, Reject or Extend failed only because
// the delivery is no longer leased to this client (its connection dropped,
// or the server answered not_found). Such errors are safe to ignore: the
// lease ran out or ended with the connection, and the message will be
// delivered again; or the settle itself was applied, its answer lost in a
// leader change, and the client's resend found the delivery settled
// already.
func IsStale(err error) bool {
	return errors.Is(err, ErrStaleDelivery) || IsCode(err, "not_found")
}

// retryable reports whether a request that failed with err changed nothing
// (or is safe to repeat with the same envelope) and may be sent again.
func retryable(err error) bool {
	if errors.Is(err, ErrDisconnected) {
		return true
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code == "unavailable" || e.Code == "rate_limited"
	}
	return false
}
