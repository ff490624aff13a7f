// Package export_wit_world is the plugin: Go code of the `middleware` world. (The name is the
// one `wit-bindgen go` gives the package of a world's exports.)
package export_wit_world

import (
	. "wit_component/wasmill_plugin_types"
	"wit_component/wit_world"
)

// Handle wraps the rest of the chain: call wit_world.Next(msg) whenever, as often and with
// whatever it decides, and return its result or your own.
func Handle(msg *Message) Result {
	return wit_world.Next(msg)
}
