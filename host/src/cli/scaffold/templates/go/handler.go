// Package export_wit_world is the plugin: Go code of the `handler` world. (The name is the one
// `wit-bindgen go` gives the package of a world's exports.)
package export_wit_world

import . "wit_component/wasmill_plugin_types"

// Handle is called for every message: return what to publish (the message itself, changed or
// not, or new ones made with MakeMessage), or Fail("reason", retryable).
func Handle(msg *Message) Result {
	return Emit(msg)
}

// HandleBatch handles the messages of a `batch = N` delivery, one result per message.
func HandleBatch(msgs []*Message) []Result {
	return Each(msgs, Handle)
}
