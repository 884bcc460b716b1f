"""The ``file`` sink: envelope JSON lines, rotation, mode, fsync, failures it survives, and kill -9.

Real parts: real files in a temporary folder; a full disk is ``/dev/full`` (the path is a symbolic
link to it: every write fails with ENOSPC, for root too), a vanished folder is a folder replaced
by a plain file (ENOTDIR, for root too); the kill is a real SIGKILL of a real process. fsync is
counted by wrapping ``os.fsync`` (the real one still runs).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from voiced.backoff import Backoff
from voiced.events import DaemonState, PluginChanged, Transcript, TurnEnded
from voiced.testing import FakeDaemon
from voiced.turn import Outcome
from voiced.yamlconf import FieldError
from voiced_plugins import file as file_plugin
from voiced_plugins.file import FileConfig, FileSink

FAST = Backoff(start=0.01, cap=0.05, jitter=0.0)  # retries in tests come quickly


def said(n: int, text: str = "hello", role: str = "user") -> Transcript:
    return Transcript(role, f"{text} {n}", n, f"item_{n}", 1_700_000_000.0 + n)  # type: ignore[arg-type]


def records(path: Path) -> list[dict[str, object]]:
    """Every line of ``path`` as JSON (each must parse), checking the file ends a line."""
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), data[-200:]
    return [json.loads(line) for line in data.decode().splitlines()]


async def settle(sink: FileSink) -> None:
    """Wait until the sink took in what was published and wrote it."""
    await trio.testing.wait_all_tasks_blocked()
    await sink.drained()


# ---------------------------------------------------------------------- what it writes


async def test_envelopes_with_ids_final_transcripts_turns_and_states(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    fake = FakeDaemon(device_id="kiosk-7")
    delta = Transcript("agent", "Bon", 1, "item_a", 1_700_000_001.0, final=False)
    final = Transcript("agent", "Bonjour\nà vous", 1, "item_a", 1_700_000_002.0, response_id="r1")
    turn = TurnEnded(1, Outcome.COMPLETED, {"commit": 12.0}, session_id="sess_1")
    state = DaemonState("speaking")
    first = said(1)
    with trio.fail_after(10):
        async with fake.running(FileSink(FileConfig(str(path)))):
            for event in (first, delta, final, turn, state):
                fake.publish(event)
    got = records(path)
    assert [r["id"] for r in got] == [first.id, final.id, turn.id, state.id]
    assert [r["kind"] for r in got] == ["transcript", "transcript", "turn", "state"]
    assert all(r["v"] == 1 and r["device_id"] == "kiosk-7" for r in got)
    assert got[1]["text"] == "Bonjour\nà vous"  # one line each: the newline is escaped
    assert (got[1]["final"], got[1]["response_id"]) == (True, "r1")  # no delta written
    assert got[2] == {
        "v": 1,
        "id": turn.id,
        "kind": "turn",
        "time": got[2]["time"],
        "device_id": "kiosk-7",
        "session_id": "sess_1",
        "turn": 1,
        "outcome": "completed",
        "reason": None,
        "latencies_ms": {"commit": 12.0},
        "usage": None,
    }
    assert (got[3]["state"], got[3]["reason"]) == ("speaking", None)


async def test_relative_path_under_the_state_directory(tmp_path: Path) -> None:
    fake = FakeDaemon(state_dir=tmp_path / "state")
    with trio.fail_after(10):
        async with fake.running(FileSink(FileConfig("logs/t.jsonl"))):
            fake.publish(said(1))
    assert [r["text"] for r in records(tmp_path / "state" / "logs" / "t.jsonl")] == ["hello 1"]


async def test_new_file_is_0640_and_an_existing_one_is_not_loosened(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    new, private = tmp_path / "new.jsonl", tmp_path / "private.jsonl"
    private.touch(mode=0o600)
    private.chmod(0o600)
    fake = FakeDaemon()
    with trio.fail_after(10):
        async with fake.running(FileSink(FileConfig(str(new)))):
            fake.publish(said(1))
        async with FakeDaemon().running(FileSink(FileConfig(str(private)))) as other:
            other.publish(said(1))
    assert stat.S_IMODE(new.stat().st_mode) == 0o640 & ~umask
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert len(records(private)) == 1


async def test_a_partial_last_line_is_ended_first(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_bytes(b'{"whole": 1}\n{"cut": ')  # a crash of an older writer
    with trio.fail_after(10):
        async with FakeDaemon().running(FileSink(FileConfig(str(path)))) as fake:
            fake.publish(said(1))
            fake.publish(said(2))
    lines = path.read_bytes().splitlines()
    assert lines[:2] == [b'{"whole": 1}', b'{"cut": ']
    assert [json.loads(line)["text"] for line in lines[2:]] == ["hello 1", "hello 2"]


@pytest.mark.parametrize("fsync", [True, False])
async def test_fsync_when_on_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsync: bool
) -> None:
    path = tmp_path / "t.jsonl"
    synced: list[int] = []  # the inode of each file fsynced
    real = os.fsync

    def counting(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    fake = FakeDaemon()
    sink = FileSink(FileConfig(str(path), fsync=fsync))
    with trio.fail_after(10):
        async with fake.running(sink):
            for n in range(3):
                fake.publish(said(n))
                await settle(sink)
                assert len(records(path)) == n + 1  # each on disk (in the file) once written
    inode = path.stat().st_ino
    assert synced == ([inode] * 3 if fsync else [])


# ---------------------------------------------------------------------- rotation


@pytest.mark.parametrize("backups", [0, 1, 3])
async def test_rotation_by_size_keeps_backups_and_drops_the_oldest(
    tmp_path: Path, backups: int
) -> None:
    path = tmp_path / "t.jsonl"
    line = len(json.dumps(_envelope(said(10)), ensure_ascii=False)) + 1
    max_bytes = 3 * line + line // 2  # three records a file
    fake = FakeDaemon()
    sink = FileSink(FileConfig(str(path), max_bytes=max_bytes, backups=backups))
    with trio.fail_after(10):
        async with fake.running(sink):
            for n in range(10, 24):  # 14 records of the same size: 5 files' worth
                fake.publish(said(n))
    files = sorted(os.listdir(tmp_path))
    assert files == ["t.jsonl", *(f"t.jsonl.{i}" for i in range(1, backups + 1))]
    newest_first = [path, *(Path(f"{path}.{i}") for i in range(1, backups + 1))]
    assert all(p.stat().st_size <= max_bytes for p in newest_first)
    kept = [r["turn"] for p in reversed(newest_first) for r in records(p)]
    # 14 = 3 + 3 + 3 + 3 + 2: the current file has the last 2, each backup 3 more.
    assert kept == list(range(24 - 2 - 3 * backups, 24))


def _envelope(event: Transcript) -> dict[str, object]:
    from voiced.envelope import envelope

    record = envelope(event, "test-kiosk")
    assert record is not None
    return record


async def test_a_record_bigger_than_max_bytes_goes_whole_into_a_file_of_its_own(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.jsonl"
    with trio.fail_after(10):
        async with FakeDaemon().running(
            FileSink(FileConfig(str(path), max_bytes=100, backups=2))
        ) as fake:
            fake.publish(said(1, "x" * 500))
            fake.publish(said(2, "y" * 500))
    assert [r["turn"] for r in records(Path(f"{path}.1"))] == [1]
    assert [r["turn"] for r in records(path)] == [2]


# ---------------------------------------------------------------------- failures


async def _fails_then_recovers(
    path: Path, *, break_it: Callable[[], object], fix_it: Callable[[], object], why: str
) -> None:
    """Write 1, break the file, write 2..4 (kept), fix it: 1..4 in order, reported once, then
    cleared."""
    fake = FakeDaemon()
    changes = fake.subscribe(PluginChanged)
    sink = FileSink(FileConfig(str(path)), backoff=FAST)
    with trio.fail_after(10):
        async with fake.running(sink):
            fake.publish(said(1))
            await settle(sink)
            break_it()
            for n in (2, 3, 4):
                fake.publish(said(n))
            error = await changes.receive()
            assert isinstance(error, PluginChanged)
            assert error.error is not None
            assert why in error.error
            assert str(path) in error.error
            await trio.testing.wait_all_tasks_blocked()
            assert (sink.pending, sink.kept, sink.dropped) == (3, 3, 0)  # kept in memory
            fix_it()
            assert await changes.receive() == PluginChanged("plugin", None)
            await settle(sink)
    assert fake.reports == [error.error, None]  # said once, then cleared once


async def test_full_disk_is_reported_once_kept_and_written_when_it_can(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "t.jsonl"
    first = tmp_path / "first.jsonl"

    def full() -> None:  # the path now leads to a device where every write is ENOSPC
        path.rename(first)
        path.symlink_to("/dev/full")

    await _fails_then_recovers(
        path, break_it=full, fix_it=path.unlink, why="No space left on device"
    )
    assert [r["turn"] for r in records(first)] == [1]
    assert [r["turn"] for r in records(path)] == [2, 3, 4]  # in order, once space is back
    errors = [r for r in caplog.records if "cannot write" in r.getMessage()]
    assert len(errors) == 1  # logged once, however many retries


async def test_folder_replaced_by_a_file_is_reported_and_survived(tmp_path: Path) -> None:
    folder = tmp_path / "logs"
    path = folder / "t.jsonl"
    moved = tmp_path / "logs.old"

    def replace() -> None:
        folder.rename(moved)
        folder.write_text("not a folder")

    def fix() -> None:
        folder.unlink()  # the sink creates the folder again

    await _fails_then_recovers(
        path, break_it=replace, fix_it=fix, why=f"Not a directory ({folder})"
    )
    assert [r["turn"] for r in records(moved / "t.jsonl")] == [1]
    assert [r["turn"] for r in records(path)] == [2, 3, 4]


async def test_unwritable_at_start_is_no_crash(tmp_path: Path) -> None:
    (tmp_path / "logs").write_text("a file where the folder should be")
    fake = FakeDaemon(state_dir=tmp_path)
    config = FileConfig("logs/t.jsonl")  # relative: checked only once the sink starts
    with trio.fail_after(10):
        async with fake.running(FileSink(config, backoff=FAST)):
            fake.publish(said(1))
    # Stopped with the record not written: reported, not raised.
    assert len(fake.reports) == 1
    assert "cannot write" in str(fake.reports[0])
    assert "Not a directory" in str(fake.reports[0])


async def test_memory_bound_drops_what_is_beyond_it_and_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(file_plugin, "MAX_PENDING", 3)
    path = tmp_path / "t.jsonl"
    path.symlink_to("/dev/full")
    fake = FakeDaemon()
    changes = fake.subscribe(PluginChanged)
    sink = FileSink(FileConfig(str(path)), backoff=FAST)
    with trio.fail_after(10):
        async with fake.running(sink):
            fake.publish(said(1))
            await changes.receive()  # failing
            for n in range(2, 6):
                fake.publish(said(n))
            await trio.testing.wait_all_tasks_blocked()
            assert (sink.pending, sink.kept, sink.dropped) == (3, 5, 2)
            path.unlink()
            await changes.receive()
            await settle(sink)
    assert [r["turn"] for r in records(path)] == [1, 2, 3]  # then a gap: 4 and 5 were dropped


# ---------------------------------------------------------------------- config


def test_config_ranges_and_folder(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"max_bytes": -1}, "max_bytes"),
        ({"backups": -1}, "backups"),
        ({"backups": 1001}, "backups"),
        ({"path": str(plain / "t.jsonl")}, "path"),
        ({"path": str(plain / "deeper" / "t.jsonl")}, "path"),
        ({"path": str(tmp_path)}, "path"),
        ({"path": "logs/"}, "path"),
    ]
    for kwargs, field in cases:
        with pytest.raises(FieldError) as caught:
            FileConfig(**{"path": "t.jsonl", **kwargs})
        assert caught.value.field == field
    FileConfig(str(tmp_path / "not" / "yet" / "t.jsonl"), max_bytes=0, backups=0)  # creatable


def _voiced(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    return subprocess.run(
        [sys.executable, "-m", "voiced", *args], capture_output=True, text=True, timeout=60, env=env
    )


def test_check_config_names_the_key(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("")
    config = tmp_path / "config.yaml"
    for section, key, message in [
        (f"path: {tmp_path}/plain/t.jsonl", "path", "is not a folder"),
        ("{path: t.jsonl, max_bytes: -5}", "max_bytes", "must be 0 (never rotate)"),
        ("{path: t.jsonl, backups: 2000}", "backups", "between 0 and 1000"),
    ]:
        body = section if section.startswith("{") else "{" + section + "}"
        config.write_text(f"realtime: {{url: sim}}\nplugins:\n  file: {body}\n")
        result = _voiced("check-config", "--config", str(config))
        assert result.returncode == 2, result.stderr
        assert f"config.yaml:3: plugins.file.{key}: " in result.stderr
        assert message in result.stderr
    config.write_text(
        f"plugins:\n  file: {{path: {tmp_path}/new/t.jsonl, fsync: false, max_bytes: 0}}\n"
    )
    result = _voiced("check-config", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "new").exists()  # checked, not created


# ---------------------------------------------------------------------- kill -9

WRITER = """
import sys, time
import trio, trio.testing
from voiced.events import DaemonState, Transcript, TurnEnded
from voiced.testing import FakeDaemon
from voiced.turn import Outcome
from voiced_plugins.file import FileConfig, FileSink

async def main(path: str, fsync: bool) -> None:
    fake = FakeDaemon()
    sink = FileSink(FileConfig(path, fsync=fsync, max_bytes=40_000, backups=3))
    async with fake.running(sink):
        n = 0
        while True:
            for _ in range(20):
                n += 1
                text = "é" * (n * 37 % 600) + "\\n" + "x" * (n % 7)
                fake.publish(Transcript("agent", text, n, f"item_{n}", time.time()))
                if n % 5 == 0:
                    fake.publish(TurnEnded(n, Outcome.COMPLETED))
                    fake.publish(DaemonState("idle"))
            await trio.testing.wait_all_tasks_blocked()  # taken in; being written
            if sink.pending > 200:
                await sink.drained()
            print(n, flush=True)

trio.run(main, sys.argv[1], sys.argv[2] == "fsync")
"""


@pytest.mark.parametrize("fsync", ["fsync", "no-fsync"])
def test_kill_9_leaves_only_whole_lines(tmp_path: Path, fsync: str) -> None:
    path = tmp_path / "t.jsonl"
    for moment in (1, 3, 8, 21, 55):  # progress lines read before the kill
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), fsync], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        for _ in range(moment):
            assert proc.stdout.readline(), "the writer stopped"
        proc.send_signal(signal.SIGKILL)  # while it is writing
        assert proc.wait(timeout=30) == -signal.SIGKILL
        proc.stdout.close()
        # Every line of every file parses, each file ends a line; ids are never repeated.
        files = [p for p in (path, *(Path(f"{path}.{i}") for i in (1, 2, 3))) if p.exists()]
        got = [r for p in reversed(files) for r in records(p)]
        ids = [str(r["id"]) for r in got]
        assert len(set(ids)) == len(ids)
    assert Path(f"{path}.3").exists()  # it rotated along the way
    assert not Path(f"{path}.4").exists()
