// Package export_wit_world is `json-enrich` in Go (as plugins/json-enrich): the payload, a JSON
// object, gets "enriched": true and "handled_by": "json-enrich"; anything else is a permanent
// error whose reason starts with "invalid json: ". `content-type` is set to
// `application/json`.
package export_wit_world

import (
	"encoding/json"

	. "wit_component/wasmill_plugin_types"
)

// Handle enriches the JSON object of the payload.
func Handle(msg *Message) Result {
	var value map[string]any
	if err := json.Unmarshal(msg.Payload(), &value); err != nil {
		return Fail("invalid json: "+err.Error(), false)
	}
	if value == nil {
		return Fail("invalid json: payload is not an object", false)
	}
	value["enriched"] = true
	value["handled_by"] = "json-enrich"
	out, err := json.Marshal(value)
	if err != nil {
		return Fail("invalid json: "+err.Error(), false)
	}
	msg.SetPayload(out)
	msg.Set("content-type", "application/json")
	return Emit(msg)
}

// HandleBatch handles a `batch = N` delivery.
func HandleBatch(msgs []*Message) []Result {
	return Each(msgs, Handle)
}
