"""The one module that touches Faust's private members: its start-up check, and that it is the only one."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import rocksdict
from faust.stores import rocksdb as faust_rocksdb

from streams import faust_private
from streams.faust_private import FaustIncompatible, check_faust

STREAMS = Path(faust_private.__file__).resolve().parent


def test_the_installed_faust_has_every_member_the_gate_uses() -> None:
    check_faust()


def test_a_missing_member_fails_naming_the_versions_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    from faust.transport import consumer

    monkeypatch.setattr(
        faust_private, "_REQUIRED", (*faust_private._REQUIRED, (consumer.Consumer, "_gone_in_a_new_release"))
    )
    with pytest.raises(FaustIncompatible) as failure:
        check_faust()
    message = str(failure.value)
    assert "Consumer._gone_in_a_new_release" in message
    assert re.search(r"faust-streaming \d+\.\d+", message)
    assert f"faust-streaming~={faust_private.TESTED_FAUST}.0" in message


def test_no_other_module_touches_the_private_members() -> None:
    members = {member for _, member in faust_private._REQUIRED}
    pattern = re.compile(r"\.(" + "|".join(re.escape(m) for m in members) + r")\b")
    offenders = [
        f"{path.relative_to(STREAMS)}: {match.group(0)}"
        for path in STREAMS.rglob("*.py")
        if path.name != "faust_private.py"
        for match in pattern.finditer(path.read_text())
    ]
    assert offenders == []


def test_every_private_member_used_in_the_module_is_checked() -> None:
    """A private Faust/mode member used in faust_private.py but missing from the check would fail late."""
    source = (STREAMS / "faust_private.py").read_text()
    used = set(
        re.findall(r"(?:self|super\(\)|store|app\.producer|cast\(Service, \w+\))\.(_[a-z][a-z_]+)", source)
    )
    own = {"_fetch_lock", "_seeks", "_fetch", "_current", "_drop_stale", "_deliver_to_faust", "_deliver"}
    own |= {"_fetch_state", "_positions_warned", "_sought", "_rewind", "_assignments"}
    own |= {"_committed", "_sink_positions", "_sink_topics", "_moved", "_handle"}
    own |= {"_stop_taking", "_new_assignment"}
    own |= {"_end_recovery_at_markers", "_last_changelog_record", "_fencing", "_fenced", "_sink_partitions"}
    own |= {"_write", "_write_many", "_read", "_scan_store", "_pending"}  # PartitionedState's own
    checked = {member for _, member in faust_private._REQUIRED}
    assert used - own - checked == set()


class _MemoryTable:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}


def test_deferred_state_reaches_the_store_only_when_its_transaction_commits() -> None:
    """exactly_once: RocksDB must never hold a write whose transaction a crash could abort."""
    table = _MemoryTable()
    state = faust_private.PartitionedState(table, lambda key: 0, deferred=True)
    first, second = b"v1", b"v2"
    state.put(0, b"k", first)
    assert state.get(0, b"k") == b"v1"  # the pipeline reads its own writes at once
    assert table.data == {}  # the store has nothing yet
    state.put(0, b"k", second)  # a later step, in the next transaction
    state.committed(0, [(b"k", first)])
    assert table.data == {b"k": b"v1"}
    assert state.get(0, b"k") == b"v2"  # the newer pending write still wins
    assert dict(state.scan(0)) == {b"k": b"v2"}
    state.committed(0, [(b"k", second)])
    assert table.data == {b"k": b"v2"} and state.pending(0) == 0
    state.put(0, b"other", b"x")
    state.forget(0)  # revoked: what was pending is gone, the store is as committed
    assert state.get(0, b"other") is None


def test_undeferred_state_writes_through() -> None:
    table = _MemoryTable()
    state = faust_private.PartitionedState(table, lambda key: 0)
    state.put(0, b"k", b"v")
    assert table.data == {b"k": b"v"}


class _RocksTable:
    """A table whose data is Faust's RocksDB store over real rocksdict databases (no app needed)."""

    def __init__(self, path: Path) -> None:
        store = faust_rocksdb.Store.__new__(faust_rocksdb.Store)
        store.use_rocksdict = True
        self.dbs: dict[int, Any] = {}

        def db_for_partition(partition: int) -> Any:
            if partition not in self.dbs:
                self.dbs[partition] = rocksdict.Rdict(
                    str(path / str(partition)), options=rocksdict.Options(raw_mode=True)
                )
            return self.dbs[partition]

        store._db_for_partition = db_for_partition  # type: ignore[method-assign]
        self.data = store


def test_a_committed_transaction_is_one_rocksdb_write_batch(tmp_path: Path) -> None:
    """The writes of a committed transaction land in the partition's RocksDB database, the last write
    of a key winning, and a key written again since stays pending (it is the newer value)."""
    table = _RocksTable(tmp_path)
    state = faust_private.PartitionedState(table, lambda key: 0, deferred=True)
    writes = [(b"a", b"a1"), (b"b", b"b1"), (b"a", b"a2")]  # the same key twice in one transaction
    for key, value in writes:
        state.put(1, key, value)
    state.put(1, b"b", b"b2")  # a later step's write, in the next transaction
    state.committed(1, writes)
    db = table.dbs[1]
    assert db[b"a"] == b"a2" and db[b"b"] == b"b1"
    assert 0 not in table.dbs  # written by explicit partition only
    assert state.pending(1) == 1 and state.get(1, b"b") == b"b2"
    for db in table.dbs.values():
        db.close()


def test_an_empty_value_deletes_the_key_pending_committed_and_scanned(tmp_path: Path) -> None:
    """The gate deletes its own bookkeeping keys (a messaging limit's expired users): a read finds
    nothing at once, the scan skips them, and the committed write batch deletes them from RocksDB."""
    table = _RocksTable(tmp_path)
    state = faust_private.PartitionedState(table, lambda key: 0, deferred=True)
    state.put(2, b"gone", b"v")
    state.put(2, b"kept", b"v")
    state.committed(2, [(b"gone", b"v"), (b"kept", b"v")])
    state.put(2, b"gone", faust_private.TOMBSTONE)
    assert state.get(2, b"gone") is None and dict(state.scan(2)) == {b"kept": b"v"}
    assert table.dbs[2].get(b"gone") == b"v"  # not before its transaction commits
    state.committed(2, [(b"gone", faust_private.TOMBSTONE)])
    assert table.dbs[2].get(b"gone") is None and state.pending(2) == 0
    for db in table.dbs.values():
        db.close()
    memory = faust_private.PartitionedState(_MemoryTable(), lambda key: 0)
    memory.put(0, b"k", b"v")
    memory.put(0, b"k", faust_private.TOMBSTONE)
    assert memory.get(0, b"k") is None and dict(memory.scan(0)) == {}
