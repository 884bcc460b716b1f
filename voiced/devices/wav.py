"""The ``wav`` backend: a WAV file as the microphone, a WAV file as the speaker.

Both take the wire format only (24 kHz mono PCM16); conversion of other formats belongs to the
device backends. The microphone is paced like a live one unless told to go fast; the speaker is
paced in real time unless told not to, so that "speaking" lasts as long as the audio does and a
barge-in truncates at what a listener would really have heard.
"""

from __future__ import annotations

import wave
from pathlib import Path

import trio

from voiced.audio import (
    RATE,
    SAMPLE_BYTES,
    AudioFrame,
    bytes_of,
    ms_of,
    scale,
    silence,
)
from voiced.devices.clock import FRAME_MS, PacedMicrophone
from voiced.devices.null import NullSpeaker
from voiced.errors import DeviceError


def read_wav(path: Path) -> bytes:
    """The PCM of a 24 kHz mono PCM16 WAV file.

    Raises:
        DeviceError: missing, unreadable, or another format (with the command that converts it).
    """
    try:
        with wave.open(str(path), "rb") as wav:
            rate, channels, width = wav.getframerate(), wav.getnchannels(), wav.getsampwidth()
            if (rate, channels, width) != (RATE, 1, SAMPLE_BYTES):
                raise DeviceError(
                    f"{path}: {rate} Hz, {channels} channel(s), {8 * width}-bit; voiced needs "
                    f"{RATE} Hz mono 16-bit (convert: sox {path} -r {RATE} -c 1 -b 16 out.wav)"
                )
            return wav.readframes(wav.getnframes())
    except (OSError, EOFError, wave.Error) as exc:
        raise DeviceError(f"cannot read {path}: {exc}") from exc


class WavMicrophone(PacedMicrophone):
    """Plays a WAV file into the pipeline as if a microphone heard it.

    Args:
        path: the file (24 kHz mono PCM16).
        loop: start again at the end instead of giving silence.
        realtime: pace like a live microphone from ``run``'s start; false: as fast as the
            pipeline takes it, then end (close the channel).
    """

    def __init__(self, path: Path, *, loop: bool = False, realtime: bool = True) -> None:
        super().__init__()
        self.pcm = read_wav(path)
        self.name = f"wav:{path}"
        self._loop = loop
        self._realtime = realtime
        self._pos = 0

    async def run(
        self,
        frames: trio.MemorySendChannel[AudioFrame],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        if self._realtime:
            await super().run(frames, task_status=task_status)
            return
        async with frames:  # as fast as the pipeline takes it, then end
            task_status.started()
            step = bytes_of(FRAME_MS)
            for start in range(0, len(self.pcm), step):
                await frames.send(AudioFrame(self.pcm[start : start + step], trio.current_time()))

    def read(self, nbytes: int) -> bytes:
        out = bytearray()
        while len(out) < nbytes:
            if self._pos >= len(self.pcm):
                if not self._loop or not self.pcm:
                    return bytes(out) + silence(nbytes - len(out))
                self._pos = 0
            take = self.pcm[self._pos : self._pos + nbytes - len(out)]
            self._pos += len(take)
            out += take
        return bytes(out)


class WavSpeaker(NullSpeaker):
    """Writes the speaker's audio to a WAV file, keeping the header valid after every write.
    Nothing is queued: a paced write returns once it would have been heard, so a stop has
    nothing to drop. The file is opened here, so that a bad path fails at startup.

    Args:
        path: the file, created or truncated when the speaker opens.
        realtime: take audio no faster than it would play (a paced speaker).
    """

    def __init__(self, path: Path, *, realtime: bool = True) -> None:
        super().__init__()
        self.name = f"wav:{path}"
        self.path = path
        self.paced = realtime
        self._free_at = 0.0  # trio time when the audio written so far has finished playing
        try:
            # Opened here rather than by wave, which leaves a half-made object to warn when
            # the open fails. Its folder is made, as for any file voiced writes.
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("wb")
        except OSError as exc:
            raise DeviceError(f"cannot write the speaker file {path}: {exc}") from exc
        try:
            self._wav: wave.Wave_write | None = wave.open(self._file, "wb")  # noqa: SIM115
            self._wav.setnchannels(1)
            self._wav.setsampwidth(SAMPLE_BYTES)
            self._wav.setframerate(RATE)
            self._wav.writeframes(b"")  # a valid, empty file from the start
        except OSError as exc:
            self._file.close()
            raise DeviceError(f"cannot write the speaker file {path}: {exc}") from exc

    async def play(self, pcm: bytes) -> None:
        await trio.lowlevel.checkpoint()
        if self._wav is None:
            raise trio.ClosedResourceError("the speaker is closed")
        # A block is at most a few kB into the page cache: a thread hop per block would cost more
        # CPU than the write, on the path that runs fifty times a second.
        self._wav.writeframes(pcm if self.volume == 1.0 else scale(pcm, self.volume))
        self._played += len(pcm)
        if self.paced:
            self._free_at = max(self._free_at, trio.current_time()) + ms_of(len(pcm)) / 1000
            await trio.sleep_until(self._free_at)

    async def aclose(self) -> None:
        if self._wav is not None:
            wav, self._wav = self._wav, None

            def close() -> None:
                wav.close()  # the header's final sizes
                self._file.close()  # wave does not close a file it was given

            await trio.to_thread.run_sync(close)
