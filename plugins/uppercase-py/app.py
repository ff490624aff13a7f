"""`uppercase` in Python: the payload upper-cased, uuid and metadata kept (as plugins/uppercase)."""

import wasmill
from wasmill import Message


@wasmill.handler
def handle(msg: Message):
    msg.set_payload(msg.payload().upper())
    return msg


WitWorld = wasmill.WitWorld
