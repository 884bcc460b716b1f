"""A sound device that goes away and comes back: voiced recovers without a restart.

The sound server is stopped under the running daemon (every device vanishes, as when a USB card
is pulled) and started again; the test waits on the daemon's ``DeviceChanged`` events.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from tests.conftest import SIM_KEY, config_file, free_port
from tests.soundserver import (
    SoundServer,
    missing_programs,
    onset,
    running_soundserver,
    speech,
)
from voiced.app import run_daemon
from voiced.config import load_config
from voiced.events import DeviceChanged, Event, StateChanged
from voiced.pipeline import Pipeline
from voiced.sim import Simulator
from voiced.turn import State

pytestmark = pytest.mark.skipif(
    bool(missing_programs()), reason=f"needs a sound server: missing {missing_programs()}"
)


@pytest.fixture
def sound(tmp_path: Path) -> Iterator[SoundServer]:
    with running_soundserver(tmp_path / "sound") as server:
        yield server


async def microphone_changed(events: trio.abc.ReceiveChannel[Event]) -> DeviceChanged:
    async for event in events:
        if isinstance(event, DeviceChanged) and event.device == "microphone":
            return event
    raise AssertionError("events ended")


async def until(events: trio.abc.ReceiveChannel[Event], state: State) -> None:
    async for event in events:
        if isinstance(event, StateChanged) and event.new is state:
            return
    raise AssertionError("events ended")


async def test_devices_vanish_and_come_back(sound: SoundServer, tmp_path: Path) -> None:
    sim = Simulator(api_key=SIM_KEY)
    port = free_port()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            sim_port = await nursery.start(sim.serve)
            config = load_config(
                config_file(
                    tmp_path,
                    f"realtime: {{url: 'ws://127.0.0.1:{sim_port}/v1/realtime'}}\n"
                    f"auth: {{api_key: {SIM_KEY}}}\n"
                    "audio:\n  input: {backend: pyaudio, device: mic}\n"
                    "  output: {backend: pyaudio, device: spk, rate: 24000}\n"
                    "  earcons: false\n"
                    f"plugins:\n  http: {{port: {port}}}\n",
                )
            )
            stop = trio.Event()
            pipe: Pipeline = await nursery.start(
                partial(run_daemon, config, shutdown_trigger=stop.wait)
            )
            events = pipe.broadcast.subscribe("test")
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                await pipe.ready.wait()
                await trio.to_thread.run_sync(sound.stop)  # the card is pulled
                # The microphone notices (its blocks stop) and says why; the daemon stays up.
                gone = await microphone_changed(events)
                assert gone.error == "'mic' stopped delivering audio"
                status = (await http.get("/status")).json()
                assert status["audio"]["input"]["error"] is not None  # and /status says so
                health = await http.get("/healthz")  # no turn can be heard: not healthy
                assert health.status_code == 503
                assert health.json()["error"] == "microphone: 'mic' stopped delivering audio"
                await trio.to_thread.run_sync(sound.start)  # and plugged back in
                while (back := await microphone_changed(events)).error is not None:
                    assert "no input device" in back.error or "neither mono" in back.error
                assert back.name == "pyaudio:mic (44100 Hz, 1 ch)"
                # A whole turn works again: heard, answered, played. The button goes down,
                # then the person speaks; it comes up once the microphone (its monitor, which
                # the app hears too) has carried the last word and 200 ms more.
                utterance = speech("are you back")
                heard = await trio.to_thread.run_sync(sound.record, "mic.monitor")
                await http.post("/start")
                await until(events, State.LISTENING)
                player = await trio.to_thread.run_sync(sound.start_playing, "mic", utterance)
                begins = await trio.to_thread.run_sync(heard.wait_for_sound)
                begins -= onset(utterance) or 0
                end = (begins + len(utterance) // 2 + 24000 // 5) * heard.frame_bytes
                await trio.to_thread.run_sync(heard.wait_for, end)
                assert await trio.to_thread.run_sync(player.wait, 5) == 0
                await trio.to_thread.run_sync(heard.stop)
                await http.post("/commit")
                await until(events, State.IDLE)
                status = (await http.get("/status")).json()
                assert status["last_turn"]["outcome"] == "completed"
                assert status["audio"]["output"]["error"] is None
                assert status["audio"]["output"]["reopens"] >= 1  # the speaker came back too
            stop.set()
            nursery.cancel_scope.cancel()
    assert len(sim.connections[0].committed_audio[0]) >= len(utterance)


async def test_a_missing_device_is_named_with_those_there_are(
    sound: SoundServer, tmp_path: Path
) -> None:
    sim = Simulator(api_key=SIM_KEY)
    port = free_port()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            sim_port = await nursery.start(sim.serve)
            config = load_config(
                config_file(
                    tmp_path,
                    f"realtime: {{url: 'ws://127.0.0.1:{sim_port}/v1/realtime'}}\n"
                    f"auth: {{api_key: {SIM_KEY}}}\n"
                    "audio:\n  input: {backend: pyaudio, device: usb-mic}\n"
                    "  output: {backend: pyaudio, device: spk, rate: 24000}\n"
                    f"plugins:\n  http: {{port: {port}}}\n",
                )
            )
            stop = trio.Event()
            await nursery.start(partial(run_daemon, config, shutdown_trigger=stop.wait))
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                status = (await http.get("/status")).json()  # up, though its microphone is not
            stop.set()
            nursery.cancel_scope.cancel()
    error = status["audio"]["input"]["error"]
    assert error.startswith("no input device named like 'usb-mic' (there are: ")
    assert ": mic" in error  # the devices there are, to choose from
    output = status["audio"]["output"]
    assert (output["error"], output["rate"], output["channels"]) == (None, 24000, 1)
    assert output["device_rate"] == 44100  # what the device itself calls its rate
