// Package export_wit_world is `uppercase` in Go: the payload upper-cased (ASCII), uuid and
// metadata kept (as plugins/uppercase).
package export_wit_world

import . "wit_component/wasmill_plugin_types"

// Handle upper-cases the payload in place and publishes the message.
func Handle(msg *Message) Result {
	p := msg.Payload()
	for i, c := range p {
		if c >= 'a' && c <= 'z' {
			p[i] = c - ('a' - 'A')
		}
	}
	msg.SetPayload(p)
	return Emit(msg)
}

// HandleBatch handles a `batch = N` delivery.
func HandleBatch(msgs []*Message) []Result {
	return Each(msgs, Handle)
}
