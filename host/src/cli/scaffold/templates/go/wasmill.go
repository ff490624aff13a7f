// The thin Wasmill SDK for Go, over the bindings `wit-bindgen go` generates: the results a
// handler returns. (`wasmill build` writes this file into a project that lacks it.)
package export_wit_world

import (
	witTypes "go.bytecodealliance.org/pkg/wit/types"
	. "wit_component/wasmill_plugin_types"
)

// Result is what Handle returns: the messages to publish, or why the message failed.
type Result = witTypes.Result[[]*Message, HandlerError]

// Emit publishes msgs (none: the message is acked and nothing is published).
func Emit(msgs ...*Message) Result {
	if msgs == nil {
		msgs = []*Message{}
	}
	return witTypes.Ok[[]*Message, HandlerError](msgs)
}

// Fail fails the message: retryable lets a Retry middleware try again; false sends it on to
// the poison queue at once. The reason lands in the logs and in `reason_poisoned`.
func Fail(reason string, retryable bool) Result {
	return witTypes.Err[[]*Message](HandlerError{Reason: reason, Retryable: retryable})
}

// Each runs handle on every message of a batch, in order.
func Each(msgs []*Message, handle func(*Message) Result) []Result {
	out := make([]Result, len(msgs))
	for i, m := range msgs {
		out[i] = handle(m)
	}
	return out
}
