"""Gradio's queue made fair between visitors: a cap per client, round-robin order, abandoned jobs dropped.

Gradio serves its queue first come, first served, with one global size limit: one client can fill
it, and every other visitor then waits behind the whole burst (or is refused). ``FairQueue`` keeps
Gradio's queue and changes three things:

- at most ``per_client`` waiting jobs per client (a running one is not counted); one more is refused
  with a message, as a full queue is;
- waiting jobs are ordered by round: a client's first waiting job comes before anybody's second, so a
  newcomer waits for at most one job of each client ahead of it (and the one running);
- a job whose client is gone when it reaches the front is dropped (a running job finishes). A
  client is there while it holds a result stream open (``/queue/data`` or ``/call/<api>/<event>``),
  or for ``grace`` seconds after it sent the job, the time a client takes to open its stream.

The client is the peer address, or the first address of a header the operator names (on a Space,
``X-Forwarded-For``, which its proxy sets): ``client_key`` is injectable, so tests give each
simulated visitor its own key.
"""
from __future__ import annotations

import os
import time
from collections import Counter
from typing import Any, Callable
from urllib.parse import parse_qs

from gradio.queueing import Queue

ClientKey = Callable[[Any], str]  # a starlette/fastapi Request -> the client's key


def header_client_key(header: str | None) -> ClientKey:
    """The first address in ``header`` when present (a proxy's X-Forwarded-For), else the peer's address."""
    name = (header or "").lower()

    def key(request: Any) -> str:
        if name and request is not None:
            value = request.headers.get(name)
            if value:
                return value.split(",")[0].strip()
        client = getattr(request, "client", None)
        return getattr(client, "host", None) or "unknown"

    return key


def default_client_key() -> ClientKey:
    """``MLC_CLIENT_HEADER`` if set; on a Hugging Face Space (``SPACE_ID``) X-Forwarded-For; else the peer."""
    header = os.environ.get("MLC_CLIENT_HEADER") or ("x-forwarded-for" if os.environ.get("SPACE_ID") else None)
    return header_client_key(header)


class StreamTracker:
    """Which sessions hold a result stream open right now, and when each was last seen.

    An ASGI middleware (``middleware``) counts the open ``/queue/data`` and ``/call/<api>/<event>``
    streams; a session whose stream closes is seen as gone at once, not at Gradio's next 10 s check.
    """

    def __init__(self) -> None:
        self.open: Counter[str] = Counter()
        self.seen: dict[str, float] = {}
        self.queue: "FairQueue | None" = None

    def touch(self, session: str) -> None:
        self.seen[session] = time.monotonic()

    def present(self, session: str, grace: float) -> bool:
        return self.open[session] > 0 or time.monotonic() - self.seen.get(session, 0.0) <= grace

    def session_of(self, scope: dict) -> str | None:
        path = scope.get("path", "")
        if scope.get("type") != "http" or scope.get("method") != "GET":
            return None
        if path.endswith("/queue/data"):
            return (parse_qs(scope.get("query_string", b"").decode()).get("session_hash") or [None])[0]
        parts = path.rstrip("/").split("/")
        if len(parts) >= 3 and "call" in parts[:-2]:  # /gradio_api/call[/v2]/<api>/<event_id>
            event_id = parts[-1]
            event = self.queue.event_ids_to_events.get(event_id) if self.queue is not None else None
            return event.session_hash if event is not None else event_id
        return None

    def middleware(self, app: Callable) -> Callable:
        async def tracked(scope: dict, receive: Callable, send: Callable) -> None:
            session = self.session_of(scope)
            if session is None:
                return await app(scope, receive, send)
            self.open[session] += 1
            self.touch(session)
            try:
                await app(scope, receive, send)
            finally:
                self.open[session] -= 1
                if self.open[session] <= 0:
                    del self.open[session]
                self.touch(session)

        return tracked


class FairQueue(Queue):
    """Gradio's ``Queue`` with a per-client cap, round-robin order and abandoned jobs dropped."""

    per_client: int = 2
    grace: float = 3.0
    client_key: ClientKey = staticmethod(header_client_key(None))
    tracker: StreamTracker
    dropped: int = 0  # abandoned jobs dropped so far (tests and the benchmark read it)

    @classmethod
    def install(cls, queue: Queue, tracker: StreamTracker, per_client: int = 2, grace: float = 3.0,
                client_key: ClientKey | None = None) -> "FairQueue":
        """Turn the queue ``Blocks.queue()`` made into a fair one, in place (its state is kept)."""
        import asyncio

        queue.__class__ = cls
        assert isinstance(queue, FairQueue)  # noqa: S101 (for the type checker)
        queue.per_client, queue.grace, queue.tracker = per_client, grace, tracker
        queue.client_key = client_key or default_client_key()
        queue._owners: dict[str, str] = {}
        queue._push_lock = asyncio.Lock()
        tracker.queue = queue
        return queue

    def waiting(self, key: str) -> int:
        return sum(1 for q in self.event_queue_per_concurrency_id.values() for e in q.queue
                   if self._owners.get(e._id) == key)

    async def push(self, body: Any, request: Any, username: str | None) -> tuple:
        key = self.client_key(request)
        async with self._push_lock:  # the count and the push as one step, for concurrent pushes of one client
            if self.waiting(key) >= self.per_client:
                return (False, f"You already have {self.per_client} requests waiting; wait for them to finish "
                               "before sending more.", "queue_full")
            success, event_id, state = await super().push(body, request, username)
            event = self.event_ids_to_events.get(event_id) if success else None
            if event is not None:
                self._owners[event._id] = key
                self.tracker.touch(event.session_hash)
                async with self.delete_lock:
                    self._order(event.concurrency_id)
        return success, event_id, state

    def _order(self, concurrency_id: str) -> None:
        """Stable sort by round: the n-th waiting job of a client sorts with everyone's n-th."""
        queue = self.event_queue_per_concurrency_id[concurrency_id].queue
        seen: Counter[str] = Counter()
        rounds = {}
        for event in queue:
            owner = self._owners.get(event._id, event._id)
            rounds[event._id] = seen[owner]
            seen[owner] += 1
        queue.sort(key=lambda e: rounds[e._id])

    def _drop_abandoned(self) -> None:
        for event_queue in self.event_queue_per_concurrency_id.values():
            gone = [e for e in event_queue.queue if not self.tracker.present(e.session_hash, self.grace)]
            for event in gone:
                event_queue.queue.remove(event)
                self.event_ids_to_events.pop(event._id, None)
                self._owners.pop(event._id, None)
                pending = self.pending_event_ids_session.get(event.session_hash)
                if pending is not None:
                    pending.discard(event._id)
                self.dropped += 1

    def get_events(self) -> Any:
        """Gradio's pick (under its delete lock), after dropping the jobs nobody waits for."""
        self._drop_abandoned()
        picked = super().get_events()
        if picked:
            for event in picked[0]:
                self._owners.pop(event._id, None)
        return picked
