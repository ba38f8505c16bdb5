"""Faust's aiokafka transport with a per-batch drain loop.

Faust's fetcher (`Consumer._drain_messages`) hands every record to the streams through
`wait_first(callback(message), suspend_flow.wait())`: four asyncio futures and an `asyncio.wait` per
record, so that a rebalance (which sets `suspend_flow`) can abandon a delivery blocked on a full stream
buffer. The profile in the README puts that at the top of Faust's per-record cost.

`BatchDrainConsumer` keeps the same guarantee for a whole fetched batch at once: the fetch runs as in
Faust, then one `wait_first` runs the delivery of every record of the batch, so `suspend_flow` still
interrupts it at any record. What is not delivered is not marked read, and the seek to the committed
offsets after the rebalance fetches it again. (The fetch must stay outside the cancellable part: an
abandoned fetch still completes on the consumer thread, possibly after a recovery's seek, and its
records would be lost. `test_second_worker_joins_mid_stream_then_leaves` caught exactly that.)
Commits that Faust's `broker_commit_every` asks for also run outside the cancellable part, as in
Faust's own loop.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar, cast

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, ConsumerT, Message
from mode import Service, ServiceT

# Give the event loop a turn every this many records, as Faust's own loop does.
_YIELD_EVERY = 100


class BatchDrainConsumer(faust_aiokafka.Consumer):
    async def _drain_messages(self, fetcher: ServiceT) -> None:
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                # The fetch itself stays outside the cancellable delivery, as in Faust's loop: a fetch
                # abandoned half-way (it runs on the consumer thread) would lose the records it returns.
                batch = [item async for item in self.getmany(timeout=1.0)]
                # getmany may return at once for a while; let the loop breathe between fetches.
                await self.sleep(0)
                delivered = 0
                while delivered < len(batch) and not self.should_stop:
                    outcome = await self.wait_first(self._deliver(batch, delivered), self.suspend_flow.wait())
                    if outcome.stopped or self.suspend_flow.is_set():
                        break  # a rebalance: the seek to committed offsets fetches the rest again
                    delivered = int(outcome.results[0])
                    if delivered < len(batch):
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

    async def _deliver(self, batch: list[tuple[TP, Message]], start: int) -> int:
        """Deliver from `start` on; return where it stopped: the end, or earlier when a commit is due."""
        callback = self.callback
        read_offset = self._read_offset
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        for index in range(start, len(batch)):
            if (index - start) % _YIELD_EVERY == _YIELD_EVERY - 1:
                await asyncio.sleep(0)
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
