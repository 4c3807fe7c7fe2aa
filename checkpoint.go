package rfsis

import (
	"errors"
	"net"
)

// ErrNoCheckpoints is returned by Checkpoint for a connection that is not
// the stack's (a wrapped net.Conn, say).
var ErrNoCheckpoints = errors.New("rfsis: connection does not take checkpoints")

type checkpointer interface {
	Checkpoint(state []byte) error
	Resumed() ([]byte, bool)
}

// Checkpoint records the handler's state for c, given everything it has
// read from and written to c so far, so that a backup that joins later
// (after a crash or a restart of the backup node) can protect c too: see
// stack.Conn.Checkpoint. A handler that never calls it leaves its
// connections unprotected from a backup's loss until they end. A handler
// that keeps no state between messages (an echo, a request/response
// protocol at a message boundary) calls Checkpoint(c, nil) after each
// response.
func Checkpoint(c net.Conn, state []byte) error {
	cp, ok := c.(checkpointer)
	if !ok {
		return ErrNoCheckpoints
	}
	return cp.Checkpoint(state)
}

// Resumed returns the state a handler starts from and true when c is a
// connection this node took over from a checkpoint (it was open before
// the node joined as backup); nil and false otherwise.
func Resumed(c net.Conn) ([]byte, bool) {
	cp, ok := c.(checkpointer)
	if !ok {
		return nil, false
	}
	return cp.Resumed()
}
