"""A Wasmill middleware in Python. Build it with `wasmill build .` (needs componentize-py)."""

import wasmill
from wasmill import Message


@wasmill.middleware
def handle(msg: Message):
    # Change the message, run the rest of the chain, change what comes back.
    return wasmill.next(msg)


WitWorld = wasmill.WitWorld  # the component's exports: keep this line
