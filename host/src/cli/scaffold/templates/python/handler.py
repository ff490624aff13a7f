"""A Wasmill handler in Python. Build it with `wasmill build .` (needs componentize-py)."""

import wasmill
from wasmill import Message


@wasmill.handler
def handle(msg: Message):
    # Return what to publish (a message, a list, or None); raise to nack the input.
    return msg


WitWorld = wasmill.WitWorld  # the component's exports: keep this line
