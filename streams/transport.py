"""Faust's aiokafka transport with a per-batch drain loop.

Faust's fetcher (`Consumer._drain_messages`) hands every record to the streams through
`wait_first(callback(message), suspend_flow.wait())`: four asyncio futures and an `asyncio.wait` per
record, so that a rebalance (which sets `suspend_flow`) can abandon a delivery blocked on a full stream
buffer. The profile in the README puts that at the top of Faust's per-record cost.

`BatchDrainConsumer` keeps the same guarantee for a whole fetched batch at once: the fetch runs as in
Faust, then one `wait_first` runs the delivery of every record of the batch, so `suspend_flow` still
interrupts it at any record. What is not delivered is not marked read. (The fetch must stay outside
the cancellable part: an abandoned fetch still completes on the consumer thread and its records would
be lost.)

A materialized batch can go stale, and delivering a stale record loses records: the read offsets move
past records the new positions will fetch again (they are then dropped as already read), or Faust's
streams skip it as belonging to an old generation while its offset counts as read. So:

- fetches and seeks never overlap (one lock): a seek waits for the fetch in flight, a fetch for the
  seek. A batch fetched before a seek therefore holds records from the old positions, and the seek has
  already put the positions back at or before them;
- a batch is delivered only while the consumer generation and the seek count read (under the lock)
  before its fetch still hold and the flow is active; the rest of a stale batch is dropped unread, and
  the seek (a rebalance always ends with one) fetches it again.

`test_second_worker_joins_mid_stream_then_leaves` (a worker joins and leaves under load) caught both
ways of losing records: as decisions that never came, and as a recovery that never finished.
Commits that Faust's `broker_commit_every` asks for run outside the cancellable part, as in Faust.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, cast

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, ConsumerT, Message
from mode import Service, ServiceT

# Give the event loop a turn every this many records, as Faust's own loop does.
_YIELD_EVERY = 100
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class _Fetched:
    """What a batch's delivery depends on, read before its fetch: a change in either makes it stale."""

    generation: int
    seeks: int


class BatchDrainConsumer(faust_aiokafka.Consumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fetch_lock = asyncio.Lock()  # held for a fetch and for a seek: they never overlap
        self._fetching: asyncio.Task[Any] | None = None  # the drain loop, while it fetches
        self._seeks = 0  # seeks started

    async def _seeking(self, seek: Awaitable[_T]) -> _T:
        if self._fetching is not None and self._fetching is asyncio.current_task():
            # Faust's getmany seeks back itself when the flow stopped during its fetch.
            self._seeks += 1
            return await seek
        async with self._fetch_lock:
            self._seeks += 1
            return await seek

    async def seek_to_committed(self) -> Mapping[TP, int]:
        return await self._seeking(super().seek_to_committed())

    async def seek_wait(self, partitions: Mapping[TP, int]) -> None:
        await self._seeking(super().seek_wait(partitions))

    async def _seek(self, partition: TP, offset: int) -> None:
        await self._seeking(super()._seek(partition, offset))

    async def _wait_next_records(self, timeout: float) -> tuple[Any, Any]:
        if not self.flow_active:
            # Faust would wait here for the flow to resume, holding the fetch lock that recovery's
            # seeks need: the drain loop waits outside the lock instead.
            return None, None
        return await super()._wait_next_records(timeout)

    def _current(self, fetched: _Fetched) -> bool:
        """No rebalance and no seek since the batch was fetched, and records may flow."""
        return (
            self.flow_active
            and self._seeks == fetched.seeks
            and self.app.consumer_generation_id == fetched.generation
        )

    async def _fetch(self) -> tuple[_Fetched, list[tuple[TP, Message]]]:
        async with self._fetch_lock:
            self._fetching = asyncio.current_task()
            try:
                fetched = _Fetched(self.app.consumer_generation_id, self._seeks)
                return fetched, [item async for item in self.getmany(timeout=1.0)]
            finally:
                self._fetching = None

    async def _drain_messages(self, fetcher: ServiceT) -> None:
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                if not self.flow_active:
                    await self.wait(self.can_resume_flow)  # type: ignore[arg-type]  # as Faust does
                    continue
                self.diag.set_flag(CONSUMER_FETCHING)
                fetched, batch = await self._fetch()
                # getmany may return at once for a while; let the loop breathe between fetches.
                await self.sleep(0)
                delivered = 0
                while delivered < len(batch) and not self.should_stop:
                    if not self._current(fetched):
                        self._drop_stale(len(batch) - delivered)
                        break
                    deliver = self._deliver(batch, delivered, fetched)
                    outcome = await self.wait_first(deliver, self.suspend_flow.wait())
                    if outcome.stopped:
                        break
                    if deliver not in outcome.done:
                        self._drop_stale(len(batch) - delivered)  # a rebalance began mid-delivery
                        break
                    delivered = int(outcome.results[outcome.done.index(deliver)])
                    if delivered < len(batch) and self._current(fetched):
                        self._n_acked = 0
                        await self.commit()
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)

    def _drop_stale(self, undelivered: int) -> None:
        # Not marked read: the seek that made the batch stale (done, or due with the rebalance)
        # positions the consumer at or before these records.
        self.log.info(
            "Rebalance or seek: %d fetched records dropped unread, to be fetched again", undelivered
        )

    async def _deliver(self, batch: list[tuple[TP, Message]], start: int, fetched: _Fetched) -> int:
        """Deliver from `start` on; return where it stopped: the end, earlier when a commit is due or
        when the batch went stale."""
        callback = self.callback
        read_offset = self._read_offset
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        current = self._current
        for index in range(start, len(batch)):
            if (index - start) % _YIELD_EVERY == _YIELD_EVERY - 1:
                await asyncio.sleep(0)
            if not current(fetched):
                return index
            tp, message = batch[index]
            offset = message.offset
            last_read = read_offset.get(tp)
            if last_read is not None and offset < last_read:
                continue  # already delivered before a seek: Faust drops these too
            if last_read and offset - last_read > 1 and acks_enabled_for(message.topic):
                await self._add_gap(tp, last_read + 1, offset)
            await callback(message)
            read_offset[tp] = offset
            if commit_every is not None and self._n_acked >= commit_every:
                return index + 1
        return len(batch)


class BatchDrainTransport(faust_aiokafka.Transport):
    Consumer: ClassVar[type[ConsumerT]] = BatchDrainConsumer


def install(app: Any) -> None:
    """Make `app` consume through `BatchDrainTransport` (before anything touches `app.transport`)."""
    app.transport = BatchDrainTransport(app.conf.broker_consumer, app)
