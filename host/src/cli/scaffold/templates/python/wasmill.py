"""Wasmill's Python SDK: a handler or a middleware is one decorated function.

    import wasmill

    @wasmill.handler
    def handle(msg: wasmill.Message):
        msg.set_payload(msg.payload().upper())
        return msg

    WitWorld = wasmill.WitWorld  # the component's exports

The function returns what to publish: a message, a list of messages, or None for nothing.
Raising fails the message (the input is nacked and the host's retry and poison-queue policy
decides what follows): `wasmill.Permanent("reason")` says trying again cannot help, any other
exception is retryable, with its text as the reason.

A middleware (`@wasmill.middleware`) calls `wasmill.next(msg)` to run the rest of the chain,
as often as it likes; a failure there raises `wasmill.NextFailed`, which keeps the inner
error's reason and retryability when it propagates.

`Message` is the host's message: `uuid()`, `get(key)`, `set(key, value)`, `remove(key)`,
`metadata()`, `payload()` (bytes), `payload_len()`, `set_payload(bytes)`; `wasmill.message()`
makes a new one. Written into the project by `wasmill new`; edit freely.
"""

from typing import Callable, Iterable, List, Optional, Union

import wit_world
from componentize_py_types import Err, Ok
from wit_world.imports import host
from wit_world.imports.types import HandlerError, Message

__all__ = [
    "Message",
    "Permanent",
    "NextFailed",
    "WitWorld",
    "handler",
    "middleware",
    "next",
    "message",
    "publish",
    "log",
    "debug",
    "info",
    "warn",
    "error",
]

Outputs = Union[None, Message, Iterable[Message]]


class Permanent(Exception):
    """A failure that trying again cannot fix: no retries, straight to the poison queue."""

    retryable = False


class NextFailed(Exception):
    """The rest of the chain (`wasmill.next`) failed; keeps its reason and retryability."""

    def __init__(self, reason: str, retryable: bool):
        super().__init__(reason)
        self.retryable = retryable


_function: Optional[Callable[[Message], Outputs]] = None


def handler(function: Callable[[Message], Outputs]) -> Callable[[Message], Outputs]:
    """Makes `function(msg)` the plugin's handler."""
    global _function
    _function = function
    return function


def middleware(function: Callable[[Message], Outputs]) -> Callable[[Message], Outputs]:
    """Makes `function(msg)` the plugin's middleware; it calls `wasmill.next(msg)`."""
    return handler(function)


def next(msg: Message) -> List[Message]:  # noqa: A001 - the WIT's name
    """Runs the rest of the chain with `msg` (middleware only) and returns its outputs."""
    call = getattr(wit_world, "next", None)
    if call is None:
        raise Permanent("wasmill.next is only available in a middleware")
    try:
        return call(msg)
    except Err as e:
        raise NextFailed(e.value.reason, e.value.retryable) from None


def message(payload: Union[bytes, str], metadata: Optional[dict] = None, uuid: str = "") -> Message:
    """A new message; an empty uuid gets a fresh one from the host."""
    body = payload.encode() if isinstance(payload, str) else bytes(payload)
    pairs = [(str(k), str(v)) for k, v in (metadata or {}).items()]
    return Message(uuid, pairs, body)


def publish(topic: str, msg: Message) -> None:
    """Publishes `msg` to `topic` now (the topic must be granted in the handler's config)."""
    try:
        host.publish(topic, msg)
    except Err as e:
        raise RuntimeError(f"publish to {topic}: {e.value}") from None


def log(level: str, text: str, **fields) -> None:
    """Writes a record to the host's log: level is trace, debug, info, warn or error."""
    host.log(host.Level[level.upper()], text, [(k, str(v)) for k, v in fields.items()])


def debug(text: str, **fields) -> None:
    """`log("debug", ...)`."""
    log("debug", text, **fields)


def info(text: str, **fields) -> None:
    """`log("info", ...)`."""
    log("info", text, **fields)


def warn(text: str, **fields) -> None:
    """`log("warn", ...)`."""
    log("warn", text, **fields)


def error(text: str, **fields) -> None:
    """`log("error", ...)`."""
    log("error", text, **fields)


def _outputs(result: Outputs) -> List[Message]:
    if result is None:
        return []
    if isinstance(result, Message):
        return [result]
    return list(result)


def _handler_error(e: Exception) -> HandlerError:
    if isinstance(e, Err) and isinstance(e.value, HandlerError):
        return e.value
    reason = str(e) or type(e).__name__
    return HandlerError(reason, bool(getattr(e, "retryable", True)))


def _run(msg: Message) -> List[Message]:
    if _function is None:
        raise Permanent("no function decorated with @wasmill.handler or @wasmill.middleware")
    return _outputs(_function(msg))


class WitWorld:
    """The component's exports, calling the decorated function."""

    def handle(self, msg: Message) -> List[Message]:
        try:
            return _run(msg)
        except Exception as e:
            raise Err(_handler_error(e)) from None

    def handle_batch(self, msgs: List[Message]) -> list:
        results = []
        for msg in msgs:
            try:
                results.append(Ok(_run(msg)))
            except Exception as e:
                results.append(Err(_handler_error(e)))
        return results
