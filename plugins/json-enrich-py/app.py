"""`json-enrich` in Python (as plugins/json-enrich): the payload, a JSON object, gets
`"enriched": true` and `"handled_by": "json-enrich"`; anything else is a permanent error whose
reason starts with `invalid json: `. `content-type` is set to `application/json`."""

import json

import wasmill
from wasmill import Message


@wasmill.handler
def handle(msg: Message):
    try:
        value = json.loads(msg.payload())
    except ValueError as e:
        raise wasmill.Permanent(f"invalid json: {e}") from None
    if not isinstance(value, dict):
        raise wasmill.Permanent("invalid json: payload is not an object")
    value["enriched"] = True
    value["handled_by"] = "json-enrich"
    msg.set_payload(json.dumps(value, separators=(",", ":")).encode())
    msg.set("content-type", "application/json")
    return msg


WitWorld = wasmill.WitWorld
