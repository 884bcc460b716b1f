"""A private PulseAudio sound server for tests: null sinks stand in for sound cards.

No sound card here, and none in CI: a real sound server with virtual devices is the closest real
thing. ``SoundServer`` runs a user-mode ``pulseaudio`` of its own (under a private directory, with
its own socket, config and log; nothing in ``/run`` or ``$HOME`` is touched) and gives each
``Device`` a null sink with the device's own rate and channels. The layout, for the defaults:

- sink ``mic``: a test plays speech into it (``play_into("mic", pcm)``); its monitor
  ``mic.monitor`` is the default source, so the app's microphone hears it.
- sink ``spk``: the default sink, so the app's speaker plays into it; a test records its monitor
  (``record("spk.monitor")``).

Clients find the server through ``SoundServer.env`` (``PULSE_SERVER`` and friends), which
``start`` also exports into ``os.environ`` for this process: PyAudio reads it when ``PyAudio()`` is
created. A subprocess needs ``env=server.env`` merged into its environment.

What PortAudio sees (PyAudio 0.2.14, PortAudio 19.6, alsa-plugins 1.2.7, PulseAudio 16.1), all
through its ALSA host API and ALSA's ``pulse`` plugin:

- ``pulse`` and ``default``: the server's default source and sink.
- One device per ``Device``, by its name (``mic``, ``spk``, ``mic48``): capture records the sink's
  monitor, playback plays into the sink. They exist because ``ALSA_CONFIG_PATH`` adds a private
  ALSA config with an ``asym`` PCM per device (and ``default`` pinned to ``pulse``).
- Every one of them reports ``defaultSampleRate`` 44100.0 and 32 input and 32 output channels,
  whatever the sink's real rate and channels: PortAudio asks ALSA for the rate nearest 44100, and
  the ``pulse`` plugin takes any rate (8000 to 384000 Hz) and 1 to 32 channels. PulseAudio then
  converts to the sink's format. The server's settings cannot change this: the plugin's limits
  are fixed (``default-sample-rate`` is 24000 here and PortAudio still says 44100;
  ``avoid-resampling`` would only let an idle sink switch to a client's rate, and the keep-alives
  below keep every sink busy, so it is off). A device that refuses a rate cannot be imitated
  here; what can be tested is that audio survives the trip at whatever rate the app picks: a
  wrong rate on the app's side changes pitch and length, and ``align`` catches that. The server
  resamples with ``soxr-vhq``, so a correct conversion still correlates at 0.997 or better.
- PortAudio lists devices once, when ``PyAudio()`` is created: a server started (or stopped)
  later needs a new instance. With the server stopped, a new instance lists no device at all
  (there is no sound card) and ``get_default_input_device_info()`` raises ``OSError``.
- ``stop`` under an open stream (a device unplugged): a blocking ``read`` raises ``OSError``
  -9999 (Unanticipated host error) at once; a callback stream stops calling back, its
  ``is_active()`` turns False, and it closes normally. PortAudio prints "Expression ... failed"
  lines on standard error. But stopped within milliseconds of a callback stream starting,
  PortAudio's ALSA callback thread can instead spin at 100 % CPU (printing "Expression
  'self->capture.ready || self->playback.ready' failed") and ``close`` then blocks forever joining
  it: 1 run in 3 of a start/open/stop loop hung, none in 48 once the stream had delivered 100 ms.
  Let a stream run a few blocks before unplugging it, and close streams from a thread that a
  test can give up on.

Gotchas, each handled here:

- An idle null sink renders in 2-second blocks, so a new stream can stall for 0.3 to 2 s before
  audio moves. Each sink gets a silent keep-alive stream with a 10 ms latency, then a suspend and
  resume restarts the sink's clock so the keep-alive's pace applies at once. ``start`` returns
  only once the server reports that every sink renders again within ``PACED_USEC`` (its
  latency: the time to its next block). The silence mixes in as zeros: at the sink's own rate
  audio goes through bit-exact, except that a new playback stream's first 1 to 2 ms come out as
  silence (correlation 0.99999 for a 1.5 s clip).
- ``start`` waits on events, never polls: the daemon's READY=1 on a notify socket of its own
  (``NOTIFY_SOCKET``, as systemd would get it), each keep-alive's "Stream successfully
  created." (``pacat --verbose``). A ``Recording`` is waited on by what it has recorded.
- ``pulseaudio --system`` drops to user ``pulse`` and cannot bind in root-owned directories: this
  is a user-mode daemon, and running it as root only logs a warning.
- A unix socket path must fit in 108 bytes; pytest's ``tmp_path`` does.
- With ``PULSE_SERVER`` set, libpulse never autospawns a daemon; ``stop`` leaves it set (the
  device is gone, as if unplugged) and ``close`` restores the environment.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import select
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

RATE = 24_000
"""The rate of the default devices and of the helpers here: the app's wire rate."""
START_TIMEOUT = 10.0
"""Seconds ``start`` may take before it gives up (a safety net: it takes about 0.1 s)."""
PACED_USEC = 20_000
"""A sink counts as paced when the server says it renders again within this many microseconds:
an idle null sink renders in 2-second blocks, one paced by a keep-alive every 2.5 ms."""
PROGRAMS = ("pulseaudio", "pactl", "pacat", "espeak-ng", "sox")
"""What the server and the speech helper run."""
ENV_KEYS = ("PULSE_SERVER", "XDG_RUNTIME_DIR", "PULSE_CLIENTCONFIG", "ALSA_CONFIG_PATH")
_ALSA_CONFIGS = ("/usr/share/alsa/alsa.conf", "/usr/local/share/alsa/alsa.conf")
_RESERVED = frozenset({"default", "pulse", "null", "sysdefault", "hw", "plughw", "plug", "jack"})


class SoundServerError(RuntimeError):
    """The sound server or one of its clients failed; the message says what it printed."""


def missing_programs() -> list[str]:
    """The programs of ``PROGRAMS`` not on ``PATH`` (empty: a server can run here)."""
    return [name for name in PROGRAMS if shutil.which(name) is None]


@dataclass(frozen=True)
class Device:
    """A virtual sound card: a null sink ``name`` and its monitor source ``name.monitor``."""

    name: str
    rate: int = RATE
    channels: int = 1

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name) or self.name in _RESERVED:
            raise ValueError(f"device name {self.name!r}: lower-case letters, digits and _")
        if not 1000 <= self.rate <= 384_000 or not 1 <= self.channels <= 32:
            raise ValueError(f"device {self.name!r}: {self.rate} Hz, {self.channels} ch")

    @property
    def monitor(self) -> str:
        """The source that hears what is played into the sink."""
        return f"{self.name}.monitor"


MIC = Device("mic")
SPEAKER = Device("spk")
DEFAULT_DEVICES = (MIC, SPEAKER)


class Recording:
    """Raw PCM16 from ``pacat --record``, gathered by a reader thread until ``stop``.

    The sound server's clock paces it: a test waits on what has been recorded (``wait_for``,
    ``wait_for_sound``), never on the wall clock.
    """

    def __init__(self, process: subprocess.Popen[bytes], frame_bytes: int) -> None:
        self._process = process
        self._frame_bytes = frame_bytes
        self._data = bytearray()
        self._done = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, name="recording", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        fd = self._process.stdout.fileno()
        while chunk := os.read(fd, 65536):
            with self._changed:
                self._data += chunk
                self._changed.notify_all()
        with self._changed:
            self._done = True
            self._changed.notify_all()

    @property
    def nbytes(self) -> int:
        """Bytes recorded so far."""
        with self._changed:
            return len(self._data)

    @property
    def frame_bytes(self) -> int:
        """Bytes per frame: 2 per channel."""
        return self._frame_bytes

    def wait_for(self, nbytes: int, timeout: float = 5.0) -> None:
        """Block until at least ``nbytes`` are recorded (the audio clock paces this).

        Raises:
            SoundServerError: the recorder ended, or ``timeout`` seconds passed, first.
        """
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._data) >= nbytes or self._done, timeout):
                raise SoundServerError(
                    f"recorded {len(self._data)} of {nbytes} bytes in {timeout} s"
                )
            if len(self._data) < nbytes:
                raise SoundServerError(f"recorder ended after {len(self._data)} of {nbytes} bytes")

    def wait_for_sound(self, threshold: int = 1000, timeout: float = 5.0) -> int:
        """Block until a sample louder than ``threshold`` is recorded; its frame (as ``onset``).

        Raises:
            SoundServerError: the recorder ended, or ``timeout`` seconds passed, first.
        """
        found: list[int] = []
        scanned = 0  # bytes already looked at, in whole frames

        def heard() -> bool:
            nonlocal scanned
            end = len(self._data) - len(self._data) % self._frame_bytes
            if end > scanned:
                # A copy: a view would pin the buffer, and the reader must be free to grow it.
                first = onset(bytes(self._data[scanned:end]), threshold, self._frame_bytes // 2)
                if first is not None:
                    found.append(scanned // self._frame_bytes + first)
                scanned = end
            return bool(found) or self._done

        with self._changed:
            if not self._changed.wait_for(heard, timeout):
                raise SoundServerError(f"no sound above {threshold} recorded in {timeout} s")
            if not found:
                raise SoundServerError(f"recorder ended before a sound above {threshold}")
            return found[0]

    def stop(self) -> bytes:
        """End the recording; every byte recorded, in whole frames. Safe to call again."""
        _end(self._process)
        self._thread.join()
        if self._process.stdout is not None:
            self._process.stdout.close()
        with self._changed:
            data = bytes(self._data)
        return data[: len(data) - len(data) % self._frame_bytes]


class SoundServer:
    """A private PulseAudio daemon under ``root`` with one null sink per ``Device``.

    Blocking; from trio, call it through ``trio.to_thread.run_sync``.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.socket = self.root / "native"
        if len(str(self.socket)) > 100:
            raise ValueError(f"socket path too long for a unix socket: {self.socket}")
        self.log = self.root / "pulseaudio.log"
        self.env: dict[str, str] = {
            "PULSE_SERVER": f"unix:{self.socket}",
            "XDG_RUNTIME_DIR": str(self.root / "run"),
            "PULSE_CLIENTCONFIG": str(self.root / "client.conf"),
        }
        alsa = next((path for path in _ALSA_CONFIGS if Path(path).is_file()), None)
        if alsa is not None:
            self.env["ALSA_CONFIG_PATH"] = f"{alsa}:{self.root / 'asound.conf'}"
        self.devices: tuple[Device, ...] = ()
        self._daemon: subprocess.Popen[bytes] | None = None
        self._keepalives: list[subprocess.Popen[bytes]] = []
        self._watches: list[_StreamWatch] = []
        self._players: list[subprocess.Popen[bytes]] = []
        self._recordings: list[Recording] = []
        self._saved_environ: dict[str, str | None] | None = None
        self._count = 0

    @property
    def running(self) -> bool:
        return self._daemon is not None and self._daemon.poll() is None

    # -- life cycle -------------------------------------------------------------------------

    def start(
        self,
        devices: Sequence[Device] = DEFAULT_DEVICES,
        *,
        source: str | None = None,
        sink: str | None = None,
    ) -> None:
        """Start the daemon with these devices; return once every sink renders at a brisk pace.

        The default source is ``source`` (a source name, such as ``"mic48.monitor"``), else
        ``mic.monitor`` if there is a ``mic``, else the first device's monitor; the default sink
        is ``sink``, else ``spk``, else the last device. Exports ``env`` into ``os.environ``.

        Raises:
            SoundServerError: the daemon did not start or a sink stayed slow (the log is quoted).
        """
        if self._daemon is not None:
            raise SoundServerError("already started")
        devices = tuple(devices)
        names = [device.name for device in devices]
        if not devices or len(set(names)) != len(names):
            raise ValueError(f"need distinct devices, got {names}")
        by_name = {device.name: device for device in devices}
        source = source or (by_name.get("mic") or devices[0]).monitor
        sink = sink or (by_name.get("spk") or devices[-1]).name
        self.devices = devices
        self._write_config(source, sink)
        self._export()
        deadline = time.monotonic() + START_TIMEOUT
        try:
            self._start_daemon(deadline)
            self._start_keepalives(deadline)
            self._check_paced()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Kill the daemon and every client started here: the devices disappear.

        ``env`` stays exported (pointing at a server that is gone, as after unplugging the
        card); ``start`` brings the devices back on the same socket. Recordings keep their data.
        """
        for recording in self._recordings:
            recording.stop()
        for process in [*self._players, *self._keepalives]:
            _end(process)
        for watch in self._watches:
            watch.join()
        self._players.clear()
        self._keepalives.clear()
        self._watches.clear()
        if self._daemon is not None:
            _end(self._daemon)
            self._daemon = None

    def close(self) -> None:
        """``stop``, and restore the environment variables ``start`` exported."""
        self.stop()
        if self._saved_environ is not None:
            for key, value in self._saved_environ.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            self._saved_environ = None

    def _export(self) -> None:
        if self._saved_environ is None:
            self._saved_environ = {key: os.environ.get(key) for key in ENV_KEYS}
        for key in ENV_KEYS:
            os.environ.pop(key, None)
        os.environ.update(self.env)

    def _write_config(self, source: str, sink: str) -> None:
        run = self.root / "run"
        run.mkdir(parents=True, exist_ok=True)
        run.chmod(0o700)
        (self.root / "home").mkdir(exist_ok=True)
        sinks = "\n".join(
            f"load-module module-null-sink sink_name={d.name} format=s16le rate={d.rate} "
            f"channels={d.channels} sink_properties=device.description=test-{d.name}"
            for d in self.devices
        )
        _write(
            self.root / "default.pa",
            f"load-module module-native-protocol-unix auth-anonymous=1 socket={self.socket}\n"
            f"{sinks}\nset-default-source {source}\nset-default-sink {sink}\n",
        )
        first = self.devices[0]
        _write(
            self.root / "daemon.conf",
            "daemonize = no\nallow-exit = no\nexit-idle-time = -1\nuse-pid-file = no\n"
            "realtime-scheduling = no\nhigh-priority = no\nflat-volumes = no\n"
            "avoid-resampling = no\n"
            f"resample-method = {_resample_method()}\ndefault-sample-format = s16le\n"
            f"default-sample-rate = {first.rate}\ndefault-sample-channels = {first.channels}\n",
        )
        _write(self.root / "client.conf", "autospawn = no\n")
        pcms = "\n".join(
            f"pcm.{d.name} {{\n"
            f'    type asym\n    playback.pcm {{ type pulse device "{d.name}" }}\n'
            f'    capture.pcm {{ type pulse device "{d.monitor}" }}\n'
            f'    hint {{ show on description "test {d.name}: {d.rate} Hz, {d.channels} ch" }}\n'
            "}"
            for d in self.devices
        )
        # Written afresh (a new inode) each start: ALSA reloads a config file that changed.
        _write(
            self.root / "asound.conf",
            "# tests/soundserver.py: a PortAudio device per test device; default is PulseAudio\n"
            'pcm.!default { type pulse hint { show on description "PulseAudio" } }\n'
            f"ctl.!default {{ type pulse }}\n{pcms}\n",
        )

    def _start_daemon(self, deadline: float) -> None:
        env = {key: value for key, value in os.environ.items() if key not in ENV_KEYS}
        notify_path = self.root / "notify"
        env.update(
            HOME=str(self.root / "home"),
            XDG_RUNTIME_DIR=self.env["XDG_RUNTIME_DIR"],
            XDG_CONFIG_HOME=str(self.root / "home" / ".config"),
            PULSE_CONFIG=str(self.root / "daemon.conf"),
            # pulseaudio tells systemd's notify socket READY=1 once default.pa is loaded and it
            # takes clients: this one is the test's, so start blocks on that message.
            NOTIFY_SOCKET=str(notify_path),
        )
        self.socket.unlink(missing_ok=True)
        notify_path.unlink(missing_ok=True)
        command = ["pulseaudio", "--daemonize=no", "-n", "-F", str(self.root / "default.pa")]
        command.append(f"--log-target=file:{self.log}")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind(str(notify_path))
            with open(self.root / "pulseaudio.out", "wb") as out:
                self._daemon = subprocess.Popen(
                    command,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            try:
                ready = _await_ready(notify, self._daemon, deadline)
            finally:
                notify_path.unlink(missing_ok=True)
        if self._daemon.poll() is not None:
            raise SoundServerError(f"pulseaudio exited {self._daemon.returncode}: {self._log()}")
        # Without READY=1 by the deadline (a pulseaudio built without systemd never sends it),
        # it may still be up: the one question that decides.
        if self._run("pactl", "info").returncode != 0:
            said = (
                "said it was ready" if ready else f"did not say it was ready in {START_TIMEOUT} s"
            )
            raise SoundServerError(f"pulseaudio {said} but does not answer: {self._log()}")

    def _start_keepalives(self, deadline: float) -> None:
        for device in self.devices:
            read_end, write_end = os.pipe()
            try:
                process = subprocess.Popen(
                    [
                        *_pacat_format(device.rate, device.channels),
                        "--playback",
                        f"--device={device.name}",
                        "--latency-msec=10",
                        f"--client-name=keepalive-{device.name}",
                        "--verbose",  # says when its stream exists on the server
                        "/dev/zero",
                    ],
                    env={**self.client_env(), "LC_ALL": "C"},
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=write_end,
                    start_new_session=True,
                )
            finally:
                os.close(write_end)
            self._keepalives.append(process)
            self._watches.append(_StreamWatch(read_end))
        # The keep-alives pace a sink only from the end of its current 2 s idle block; a
        # suspend and resume restarts the sink's clock, once they are all connected.
        for device, watch in zip(self.devices, self._watches, strict=True):
            if not watch.settled.wait(max(0.0, deadline - time.monotonic())):
                raise SoundServerError(
                    f"keep-alive of {device.name} did not connect: {watch.said()}"
                )
            if not watch.created:
                raise SoundServerError(f"keep-alive of {device.name} ended: {watch.said()}")
        for device in self.devices:
            self.pactl("suspend-sink", device.name, "1")
            self.pactl("suspend-sink", device.name, "0")

    def _check_paced(self) -> None:
        """Every sink renders at its keep-alive's pace, as the server reports it."""
        slow = {name: usec for name, usec in self.sink_latencies().items() if usec > PACED_USEC}
        if slow:
            raise SoundServerError(f"sinks still render in long blocks (latency, us): {slow}")

    def sink_latencies(self) -> dict[str, float]:
        """Each sink's latency in microseconds, as the server reports it: for a null sink, the
        time until it renders its next block (up to 2 s idle; ``PACED_USEC`` at most once paced).
        """
        sinks = json.loads(self.pactl("--format=json", "list", "sinks"))
        return {str(sink["name"]): float(sink["latency"]["actual"]) for sink in sinks}

    # -- clients ----------------------------------------------------------------------------

    def client_env(self) -> dict[str, str]:
        """``os.environ`` with this server's ``env``: for a subprocess that should use it."""
        return {**os.environ, **self.env}

    def _run(self, *command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command,
            env=self.client_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )

    def pactl(self, *args: str) -> str:
        """Run ``pactl`` against this server; its standard output.

        Raises:
            SoundServerError: pactl failed (with what it said).
        """
        result = self._run("pactl", *args)
        if result.returncode != 0:
            raise SoundServerError(f"pactl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def sinks(self) -> list[str]:
        """The server's sink names, as it lists them (empty if it is not running)."""
        return list(self.sample_specs()) if self.running else []

    def sources(self) -> list[str]:
        """The server's source names (monitors included)."""
        return [line.split("\t")[1] for line in self.pactl("list", "short", "sources").splitlines()]

    def sample_specs(self) -> dict[str, tuple[int, int]]:
        """Each sink's real ``(rate, channels)``, from the server."""
        specs = {}
        for line in self.pactl("list", "short", "sinks").splitlines():
            fields = line.split("\t")
            found = re.search(r"(\d+)ch (\d+)Hz", fields[3])
            assert found is not None, line
            specs[fields[1]] = (int(found[2]), int(found[1]))
        return specs

    def set_defaults(self, *, source: str | None = None, sink: str | None = None) -> None:
        """Change the default source and/or sink (ALSA's ``default`` follows at its next open)."""
        if source is not None:
            self.pactl("set-default-source", source)
        if sink is not None:
            self.pactl("set-default-sink", sink)

    def start_playing(
        self, sink: str, pcm: bytes, rate: int = RATE, channels: int = 1
    ) -> subprocess.Popen[bytes]:
        """Play raw PCM16 into ``sink`` with ``pacat``, without waiting; ``stop`` ends it.

        Audio starts moving about 20 ms after this returns; ``wait()`` returns once it played.
        """
        return self._player(sink, pcm, rate, channels)[0]

    def play_into(self, sink: str, pcm: bytes, rate: int = RATE, channels: int = 1) -> None:
        """Play raw PCM16 into ``sink`` and return once it has all played.

        Raises:
            SoundServerError: pacat failed, or took 5 s longer than the audio lasts.
        """
        process, name = self._player(sink, pcm, rate, channels)
        timeout = len(pcm) / (2 * channels * rate) + 5
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            _end(process)
            raise SoundServerError(f"playing into {sink} took over {timeout:.1f} s") from None
        if process.returncode != 0:
            said = (self.root / f"{name}.err").read_text(errors="replace").strip()
            raise SoundServerError(f"pacat into {sink} exited {process.returncode}: {said}")
        (self.root / f"{name}.raw").unlink()

    def _player(
        self, sink: str, pcm: bytes, rate: int, channels: int
    ) -> tuple[subprocess.Popen[bytes], str]:
        if len(pcm) % (2 * channels):
            raise ValueError(f"{len(pcm)} bytes is not whole {channels}-channel PCM16 frames")
        self._count += 1
        name = f"play-{self._count}"
        clip = self.root / f"{name}.raw"
        clip.write_bytes(pcm)
        with open(self.root / f"{name}.err", "wb") as err:
            process = subprocess.Popen(
                [
                    *_pacat_format(rate, channels),
                    "--playback",
                    f"--device={sink}",
                    "--latency-msec=200",  # roomy: a busy test machine must not starve it
                    f"--client-name=test-{name}",
                    str(clip),
                ],
                env=self.client_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        self._players = [player for player in self._players if player.poll() is None]
        self._players.append(process)
        return process, name

    def record(
        self, source: str, rate: int = RATE, channels: int = 1, timeout: float = 5.0
    ) -> Recording:
        """Record raw PCM16 from ``source`` (e.g. ``"spk.monitor"``) until ``Recording.stop``.

        Returns once bytes arrive: the recording is running (a keep-alive feeds every monitor).

        Raises:
            SoundServerError: nothing arrived within ``timeout`` seconds.
        """
        self._count += 1
        with open(self.root / f"record-{self._count}.err", "wb") as err:
            process = subprocess.Popen(
                [
                    *_pacat_format(rate, channels),
                    "--record",
                    f"--device={source}",
                    "--latency-msec=10",
                    f"--client-name=test-record-{self._count}",
                ],
                env=self.client_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        recording = Recording(process, 2 * channels)
        self._recordings.append(recording)
        try:
            recording.wait_for(1, timeout)
        except SoundServerError:
            recording.stop()
            said = (self.root / f"record-{self._count}.err").read_text(errors="replace").strip()
            raise SoundServerError(f"recording {source} did not start: {said}") from None
        return recording

    def _log(self) -> str:
        lines: list[str] = []
        for path in (self.root / "pulseaudio.out", self.log):
            with contextlib.suppress(OSError):
                lines += path.read_text(errors="replace").splitlines()
        return " | ".join(lines[-15:]) or "(no log)"


@contextlib.contextmanager
def running_soundserver(
    root: Path, devices: Sequence[Device] = DEFAULT_DEVICES
) -> Iterator[SoundServer]:
    """A started ``SoundServer`` under ``root``, closed (environment restored) on exit."""
    server = SoundServer(root)
    try:
        server.start(devices)
        yield server
    finally:
        server.close()


def _pacat_format(rate: int, channels: int) -> list[str]:
    return ["pacat", "--raw", "--format=s16le", f"--rate={rate}", f"--channels={channels}"]


def _end(process: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """Terminate ``process`` by its pid and reap it (killing it if it will not go)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for stream in (process.stdin, process.stderr):
        if stream is not None:
            stream.close()


def _await_ready(notify: socket.socket, daemon: subprocess.Popen[bytes], deadline: float) -> bool:
    """Block until ``daemon`` sends READY=1 to ``notify`` (True), exits, or ``deadline`` passes."""
    try:
        exited = [os.pidfd_open(daemon.pid)]  # readable once the daemon has exited
    except (AttributeError, OSError):  # no pidfd here: an early exit shows at the deadline
        exited = []
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([notify.fileno(), *exited], [], [], remaining)
            if notify.fileno() in readable:
                if b"READY=1" in notify.recv(4096).split(b"\n"):
                    return True
            elif readable:
                return False
        return False
    finally:
        for fd in exited:
            os.close(fd)


class _StreamWatch:
    """Reads a ``pacat --verbose``'s standard error on a thread until pacat ends.

    ``settled`` is set once pacat says its stream was created (``created``), or once it ended
    without. pacat keeps reporting its latency every 50 ms, so the pipe is drained to the end.
    """

    MARKER = b"Stream successfully created."

    def __init__(self, fd: int) -> None:
        self.created = False
        self.settled = threading.Event()
        self._fd = fd
        self._head = b""  # the last of what it said before the stream was created
        self._thread = threading.Thread(target=self._read, name="pacat-stderr", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while chunk := os.read(self._fd, 65536):
                if not self.settled.is_set():
                    self._head = (self._head + chunk)[-4096:]
                    if self.MARKER in self._head:
                        self.created = True
                        self.settled.set()
        finally:
            os.close(self._fd)
            self.settled.set()

    def said(self) -> str:
        return self._head.decode(errors="replace").strip() or "(nothing)"

    def join(self) -> None:
        """Wait for the end of pacat's output (call once pacat has ended)."""
        self._thread.join(5)


def _write(path: Path, text: str) -> None:
    fresh = path.with_name(path.name + ".new")
    fresh.write_text(text)
    fresh.replace(path)


@functools.cache
def _resample_method() -> str:
    """The best resampler this PulseAudio has, so a correct conversion still correlates."""
    listed = subprocess.run(
        ["pulseaudio", "--dump-resample-methods"], capture_output=True, text=True, check=False
    ).stdout.split()
    return next((m for m in ("soxr-vhq", "speex-float-10") if m in listed), "auto")


# -- audio helpers ---------------------------------------------------------------------------


def samples(pcm: bytes, channels: int = 1) -> npt.NDArray[np.int16]:
    """PCM16 bytes as int16 samples: shape ``(frames,)`` for mono, ``(frames, channels)``."""
    data = np.frombuffer(pcm[: len(pcm) - len(pcm) % (2 * channels)], dtype="<i2")
    return data if channels == 1 else data.reshape(-1, channels)


def to_pcm(data: npt.ArrayLike) -> bytes:
    """Samples (any shape, interleaved by rows) as PCM16 little-endian bytes, clipped."""
    return (
        np.clip(np.rint(np.asarray(data, dtype=np.float64)), -32768, 32767).astype("<i2").tobytes()
    )


@functools.cache
def speech(text: str, rate: int = RATE) -> bytes:
    """``text`` spoken by espeak-ng, as mono PCM16 at ``rate``: the same bytes every run."""
    wav = subprocess.run(
        ["espeak-ng", "-v", "en-us", "--stdout", text], capture_output=True, check=True
    ).stdout
    return subprocess.run(
        # -D: no dither, which would add random noise; -V1: errors only.
        [
            *("sox", "-V1", "-t", "wav", "-", "-D"),
            *(
                "-t",
                "raw",
                "-r",
                str(rate),
                "-c",
                "1",
                "-b",
                "16",
                "-e",
                "signed-integer",
                "-L",
                "-",
            ),
        ],
        input=wav,
        capture_output=True,
        check=True,
    ).stdout


def sine(
    freq: float, seconds: float, *, rate: int = RATE, channels: int = 1, amplitude: float = 0.5
) -> bytes:
    """A sine at ``freq`` Hz, the same on every channel, as PCM16 at ``rate``."""
    t = np.arange(int(seconds * rate)) / rate
    wave = amplitude * 32767 * np.sin(2 * np.pi * freq * t)
    return to_pcm(np.repeat(wave[:, None], channels, axis=1))


def onset(
    pcm: bytes | npt.NDArray[np.generic], threshold: int = 1000, channels: int = 1
) -> int | None:
    """The first frame where any channel's magnitude exceeds ``threshold``; None if none does."""
    data = samples(pcm, channels) if isinstance(pcm, bytes) else np.asarray(pcm)
    loud = np.abs(data.astype(np.int32)) > threshold
    found = np.flatnonzero(loud if loud.ndim == 1 else np.any(loud, axis=1))
    return int(found[0]) if len(found) else None


def align(
    reference: npt.NDArray[np.generic], recorded: npt.NDArray[np.generic]
) -> tuple[int, float]:
    """Where ``reference`` best fits inside ``recorded``: ``(lag, correlation)``.

    ``recorded[lag:lag + len(reference)]`` is the best match by normalised cross-correlation
    (found with FFTs), and ``correlation`` is the exact normalised correlation there (cosine
    similarity: 1.0 for a bit-exact copy at any volume; a DC offset or noise lowers it). Only
    lags where the reference lies wholly inside the recording count. Both are 1-D.

    Raises:
        ValueError: not 1-D, the reference is silent or empty, or the recording is shorter.
    """
    ref = np.asarray(reference, dtype=np.float64)
    rec = np.asarray(recorded, dtype=np.float64)
    if ref.ndim != 1 or rec.ndim != 1:
        raise ValueError("align takes 1-D arrays: one channel each")
    m, n = len(ref), len(rec)
    ref_energy = float(ref @ ref)
    if m == 0 or ref_energy == 0:
        raise ValueError("the reference is empty or silent")
    if n < m:
        raise ValueError(f"the recording ({n} samples) is shorter than the reference ({m})")
    size = 1 << (n + m - 1).bit_length()
    cross = np.fft.irfft(np.fft.rfft(rec, size) * np.conj(np.fft.rfft(ref, size)), size)
    cross = cross[: n - m + 1]  # cross[k] = sum(rec[k + i] * ref[i])
    energy = np.concatenate(([0.0], np.cumsum(rec * rec)))
    window = energy[m:] - energy[:-m]
    # A window far quieter than the reference counts as silence: there the FFT's rounding
    # error, divided by a tiny energy, would otherwise outscore the true match.
    floor = max(m + energy[-1] * 1e-12, 1e-3 * ref_energy)
    score = np.where(window > floor, cross / np.sqrt(np.maximum(window, floor)), 0.0)
    lag = int(np.argmax(score))
    segment = rec[lag : lag + m]
    denominator = np.sqrt(ref_energy * float(segment @ segment))
    return lag, float(ref @ segment / denominator) if denominator > 0 else 0.0
