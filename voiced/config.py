"""voiced's configuration: where the file is found, its schema, and the defaults.

The schema is a tree of frozen dataclasses read by `voiced.yamlconf`, so every error names the
file, the line and the dotted key. Defaults live here, never in the YAML. Each section under
``plugins:`` stays raw: the plugin of that entry-point name validates it at startup with
`plugin_enabled`, `plugin_settings` and `voiced.yamlconf.build`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeAlias

from voiced.errors import ConfigError
from voiced.yamlconf import NOT_IN_YAML, FieldError, Located, as_mapping, build, load_document

SEARCH_PATH = ("./config.yaml", "/etc/voiced/config.yaml")
"""Where `find_config` looks, in order, when no file is named on the command line."""

AudioBackend: TypeAlias = Literal["auto", "wav", "null", "pyaudio"]
"""``auto`` picks a real device when one exists, else files; ``wav`` reads or writes ``path``;
``null`` is silence in and a discarding speaker out; ``pyaudio`` is a real device (``device``)."""


@dataclass(frozen=True)
class TranscriptionConfig:
    """Transcription of what the user said, done by the server alongside the response."""

    model: str = "gpt-4o-mini-transcribe"
    """The transcription model, e.g. ``gpt-4o-mini-transcribe`` or ``whisper-1``."""
    language: str | None = None
    """ISO-639-1 code of the spoken language, e.g. ``en``; None lets the model detect it."""
    prompt: str | None = None
    """Text that guides the transcription (names, jargon); None sends none."""


@dataclass(frozen=True)
class RealtimeConfig:
    """The Realtime server and the session voiced opens on it."""

    url: str | None = None
    """WebSocket URL without a query, e.g. ``wss://api.openai.com/v1/realtime``, or ``sim`` for
    the simulator built into voiced. None: OpenAI when ``auth.api_key`` is set, else ``sim``."""
    model: str = "gpt-realtime-2"
    """The Realtime model, sent as ``?model=`` on the URL."""
    voice: str = "marin"
    """The voice the answers are spoken in."""
    instructions: str = "You are a concise voice assistant. Answer in one or two short sentences."
    """The session's system instructions."""
    transcription: TranscriptionConfig | None = field(default_factory=TranscriptionConfig)
    """Transcription of the user's speech; None (YAML ``null``) turns it off."""
    connect_timeout: float = 10.0
    """Seconds allowed for connecting, the WebSocket handshake, and the session to be created
    and configured; must be > 0."""
    reply_timeout_s: float = 15.0
    """Seconds the server may say nothing while an answer is awaited; then the link is taken
    as stalled: the turn ends ``lost`` and a fresh session is opened."""

    def __post_init__(self) -> None:
        url = self.url
        if url is not None and url != "sim" and not url.startswith(("ws://", "wss://")):
            raise FieldError(f"expected a ws:// or wss:// URL, or sim, got {url!r}", field="url")
        if url is not None and "?" in url:
            raise FieldError(
                "give the URL without a query; the model is realtime.model", field="url"
            )
        # `not >` also rejects NaN, which `<=` would let through.
        if not self.connect_timeout > 0:
            raise FieldError(
                f"must be more than 0 seconds, got {self.connect_timeout}", field="connect_timeout"
            )
        if not 1.0 <= self.reply_timeout_s <= 600.0:
            raise FieldError("must be between 1 and 600 seconds", field="reply_timeout_s")


AuthMode: TypeAlias = Literal["api_key", "ephemeral", "broker", "azure"]
"""``api_key``: the key on every connection; ``ephemeral``: the key mints a short-lived client
secret for each connection; ``broker``: a token broker mints it, and the device holds only its
device token; ``azure``: Azure OpenAI, the key in the ``api-key`` header."""

MIN_TTL_S, MAX_TTL_S = 10, 7200
"""The lifetimes OpenAI accepts for a client secret, in seconds."""


def _check_http_url(url: str | None, name: str) -> None:
    if url is not None and not url.startswith(("http://", "https://")):
        raise FieldError(f"expected an http:// or https:// URL, got {url!r}", field=name)


@dataclass(frozen=True)
class AuthConfig:
    """Credentials for the Realtime server."""

    mode: AuthMode = "api_key"
    """How voiced authenticates (see `AuthMode`)."""
    api_key: str | None = field(default=None, repr=False)
    """The OpenAI (or Azure) API key, usually ``${OPENAI_API_KEY:-}``; empty means none. Never
    in reprs."""
    api_key_file: str | None = None
    """A file holding the key (its first line), used when ``api_key`` is empty; when neither is
    set, systemd's credential ``$CREDENTIALS_DIRECTORY/openai_api_key`` is used if there is one."""
    broker_url: str | None = None
    """``broker`` mode: the token broker's base URL, e.g. ``https://broker.example:8788``."""
    device_token: str | None = field(default=None, repr=False)
    """``broker`` mode: this device's token (``voiced broker add-device`` prints it); empty
    means none. Never in reprs."""
    device_token_file: str | None = None
    """``broker`` mode: a file holding the device token, used when ``device_token`` is empty;
    when neither is set, systemd's credential ``$CREDENTIALS_DIRECTORY/voiced_device_token``."""
    ttl_s: int = 60
    """``ephemeral`` and ``broker``: how long a minted client secret may open a session
    (seconds, 10 to 7200). A session it opened outlives it."""

    def __post_init__(self) -> None:
        # A quoted "${OPENAI_API_KEY:-}" with the variable unset is "", which means no key.
        for name in ("api_key", "device_token"):
            if getattr(self, name) == "":
                object.__setattr__(self, name, None)  # the dataclass is frozen
        if not MIN_TTL_S <= self.ttl_s <= MAX_TTL_S:
            raise FieldError(f"must be between {MIN_TTL_S} and {MAX_TTL_S}", field="ttl_s")
        _check_http_url(self.broker_url, "broker_url")
        if self.mode == "broker" and self.broker_url is None:
            raise FieldError("required when mode is broker", field="broker_url")


@dataclass(frozen=True)
class AllowedConfig:
    """What a device may ask the broker for; the first of each is what it gets if it asks for
    nothing. A request for anything else is refused (403)."""

    models: tuple[str, ...] = ("gpt-realtime-2",)
    """Realtime models."""
    voices: tuple[str, ...] = ("marin",)
    """Voices."""
    instructions: tuple[str, ...] = (
        "You are a concise voice assistant. Answer in one or two short sentences.",
    )
    """System instructions, each the whole text."""

    def __post_init__(self) -> None:
        for name in ("models", "voices", "instructions"):
            if not getattr(self, name):
                raise FieldError("must list at least one", field=name)


@dataclass(frozen=True)
class BrokerConfig:
    """``voiced broker``: the token service that holds the API key for a fleet of devices."""

    host: str = "127.0.0.1"
    """Address to listen on; ``0.0.0.0`` for every interface (then give it TLS)."""
    port: int = 8788
    """TCP port."""
    api_key: str | None = field(default=None, repr=False)
    """The OpenAI API key, usually ``${OPENAI_API_KEY:-}``; empty means none. Never in reprs."""
    api_key_file: str | None = None
    """A file holding the key, used when ``api_key`` is empty; then the systemd credential
    ``openai_api_key``."""
    openai_url: str = "https://api.openai.com/v1"
    """The API base the secrets are minted at (``/realtime/client_secrets`` is added)."""
    tls_cert: str | None = None
    """A PEM certificate (chain): serve HTTPS. Needs ``tls_key``."""
    tls_key: str | None = None
    """The PEM private key of ``tls_cert``."""
    devices_file: str = "broker-devices.sqlite3"
    """The SQLite file of registered devices (token hashes only) and mints; relative to the
    state directory."""
    allowed: AllowedConfig = field(default_factory=AllowedConfig)
    """What devices may ask for."""
    max_ttl_s: int = 600
    """The longest lifetime a device gets for a secret (seconds, 10 to 7200)."""
    mints_per_minute: int = 12
    """Per device: more mint requests than this in a minute are answered 429."""

    def __post_init__(self) -> None:
        if self.api_key == "":
            object.__setattr__(self, "api_key", None)
        if not 0 <= self.port <= 65535:
            raise FieldError("must be between 0 and 65535", field="port")
        _check_http_url(self.openai_url, "openai_url")
        if (self.tls_cert is None) != (self.tls_key is None):
            missing = "tls_key" if self.tls_key is None else "tls_cert"
            raise FieldError("tls_cert and tls_key go together", field=missing)
        if not MIN_TTL_S <= self.max_ttl_s <= MAX_TTL_S:
            raise FieldError(f"must be between {MIN_TTL_S} and {MAX_TTL_S}", field="max_ttl_s")
        if not 1 <= self.mints_per_minute <= 10000:
            raise FieldError("must be between 1 and 10000", field="mints_per_minute")


@dataclass(frozen=True)
class AudioInputConfig:
    """The microphone."""

    backend: AudioBackend = "auto"
    """Where audio comes from (see `AudioBackend`)."""
    path: str | None = None
    """The WAV file the ``wav`` backend reads; required for it."""
    device: str | int | None = None
    """The ``pyaudio`` input device, by name or index; None is the system default."""
    loop: bool = False
    """Restart the WAV file at its end instead of ending the input."""
    realtime: bool = True
    """Pace a WAV file like a live microphone; false reads it as fast as possible."""
    rate: int | None = None
    """``pyaudio``: open the device at this rate (Hz); None is the device's default rate."""
    channels: int | None = None
    """``pyaudio``: open the device with this many channels; None is mono if the device takes
    it, else stereo. Channels are mixed down to mono."""
    preroll_ms: int = 300
    """Audio kept from before the press and sent with the turn, so the first syllable is never
    lost (milliseconds, 0 turns it off)."""
    gain: float = 1.0
    """Microphone gain (a factor; 1.0 leaves the level as it is)."""

    def __post_init__(self) -> None:
        _check_backend(self.backend, self.path, self.device)
        _check_device_format(self.backend, self.rate, self.channels)
        if not 0 <= self.preroll_ms <= 5000:
            raise FieldError("must be between 0 and 5000 ms", field="preroll_ms")
        if not 0.0 < self.gain <= 100.0:
            raise FieldError("must be above 0 and at most 100", field="gain")


@dataclass(frozen=True)
class AudioOutputConfig:
    """The speaker."""

    backend: AudioBackend = "auto"
    """Where audio goes (see `AudioBackend`)."""
    path: str | None = None
    """The WAV file the ``wav`` backend writes; required for it."""
    device: str | int | None = None
    """The ``pyaudio`` output device, by name or index; None is the system default."""
    realtime: bool = True
    """Pace a WAV speaker in real time; false writes as fast as audio arrives."""
    rate: int | None = None
    """``pyaudio``: open the device at this rate (Hz); None is the device's default rate."""
    channels: int | None = None
    """``pyaudio``: open the device with this many channels (the mono reply is copied to each);
    None is mono if the device takes it, else stereo."""
    volume: float = 1.0
    """Output volume, 0.0 to 1.0; ``POST /volume`` changes it at run time (kept across
    restarts until this value is changed)."""
    jitter_ms: int = 60
    """Reply audio gathered before playback starts, so deltas that arrive unevenly still play
    without gaps (milliseconds)."""

    def __post_init__(self) -> None:
        _check_backend(self.backend, self.path, self.device)
        _check_device_format(self.backend, self.rate, self.channels)
        if not 0.0 <= self.volume <= 1.0:
            raise FieldError("must be between 0.0 and 1.0", field="volume")
        if not 0 <= self.jitter_ms <= 1000:
            raise FieldError("must be between 0 and 1000 ms", field="jitter_ms")


def _check_device_format(backend: AudioBackend, rate: int | None, channels: int | None) -> None:
    for name, value in (("rate", rate), ("channels", channels)):
        if value is not None and backend not in ("pyaudio", "auto"):
            raise FieldError(f"only used by backend pyaudio (backend is {backend})", field=name)
    if rate is not None and not 8000 <= rate <= 192000:
        raise FieldError("must be between 8000 and 192000 Hz", field="rate")
    if channels is not None and not 1 <= channels <= 32:
        raise FieldError("must be between 1 and 32", field="channels")


def _check_backend(backend: AudioBackend, path: str | None, device: str | int | None) -> None:
    if backend == "wav" and path is None:
        raise FieldError("required when backend is wav", field="path")
    if device is not None and backend not in ("pyaudio", "auto"):
        raise FieldError(f"only used by backend pyaudio (backend is {backend})", field="device")


@dataclass(frozen=True)
class EarconsConfig:
    """Each earcon: true (built in), false (off), or the path of a 24 kHz mono PCM16 WAV."""

    listening: bool | str = True
    """Played when listening starts: talk now."""
    commit: bool | str = True
    """Played when what was said is sent."""
    error: bool | str = True
    """Played when a turn fails (a server error, no connection)."""
    too_short: bool | str = True
    """Played when a press was too short to send."""


@dataclass(frozen=True)
class AudioConfig:
    """Audio in and out."""

    input: AudioInputConfig = field(default_factory=AudioInputConfig)
    """The microphone."""
    output: AudioOutputConfig = field(default_factory=AudioOutputConfig)
    """The speaker."""
    earcons: EarconsConfig | bool = True
    """Short sounds for listening, commit, error and too short; false turns them all off.
    They are played to the speaker only, and the microphone is muted while they play."""
    half_duplex: bool = True
    """While the agent speaks, the microphone's audio is thrown away rather than kept for the
    next turn's pre-roll, so a barge-in never sends the agent's own voice back. Turn it off
    with an echo-cancelling microphone or a headset."""
    max_turn_s: float = 60.0
    """The longest a turn listens (seconds): a stuck button or a forgotten toggle ends there."""
    on_max_turn: Literal["commit", "cancel"] = "commit"
    """What the limit does: ``commit`` sends what was heard, ``cancel`` throws it away."""

    def __post_init__(self) -> None:
        if not 1.0 <= self.max_turn_s <= 3600.0:
            raise FieldError("must be between 1 and 3600 seconds", field="max_turn_s")


@dataclass(frozen=True)
class ResilienceConfig:
    """What a lost link may not take: the turn being heard, and the answer it cut off."""

    hold_audio_s: float = 30.0
    """A turn whose link drops while it is heard keeps its audio this long (seconds) for the
    link to come back, then sends all of it on the new session; later, the turn is lost."""
    retry_window_s: float = 10.0
    """A turn whose answer the lost link cut off (or that was waiting for it) is asked again
    on the new session if that is ready within this many seconds; later, the turn is lost."""
    carry_over_turns: int = 0
    """After a reconnect or a renewal, add the last this many completed turns' transcripts to
    the new session as text messages, so the conversation goes on (0: a fresh start)."""

    def __post_init__(self) -> None:
        if not 0 <= self.carry_over_turns <= 50:
            raise FieldError("must be between 0 and 50", field="carry_over_turns")
        for name in ("hold_audio_s", "retry_window_s"):
            if not 0.0 <= getattr(self, name) <= 600.0:
                raise FieldError("must be between 0 and 600 seconds", field=name)


@dataclass(frozen=True)
class Config:
    """All of voiced's configuration: one YAML file."""

    device_id: str | None = None
    """This kiosk's name in every event it sends (transcripts, MQTT topics); None: the host
    name."""
    state_dir: str | None = None
    """Where the daemon keeps what must outlive it (the volume, outboxes), and what relative
    paths in this file are relative to. None: ``$STATE_DIRECTORY`` (systemd's
    ``StateDirectory=``), else ``$XDG_STATE_HOME/voiced`` (``~/.local/state/voiced``), and
    relative paths stay relative to the working directory unless a state directory was given."""
    realtime: RealtimeConfig = field(default_factory=RealtimeConfig)
    """The Realtime server and session."""
    auth: AuthConfig = field(default_factory=AuthConfig)
    """Credentials."""
    broker: BrokerConfig | None = None
    """Only for ``voiced broker``: the token service; the daemon ignores it."""
    audio: AudioConfig = field(default_factory=AudioConfig)
    """Microphone and speaker."""
    resilience: ResilienceConfig = field(default_factory=ResilienceConfig)
    """What a lost link may not take."""
    plugins: dict[str, Located] = field(default_factory=dict)
    """Raw plugin sections by entry-point name, each a mapping (null becomes empty)."""
    source: str | None = field(default=None, metadata={NOT_IN_YAML: True})
    """The file this came from; None for `default`. Not a YAML key."""

    @classmethod
    def default(cls) -> Config:
        """All defaults and no file, for code paths that run without one."""
        return cls()


@dataclass(frozen=True)
class _Switch:
    enabled: bool = True


def find_config(explicit: str | None) -> Path:
    """Choose the config file: the one named, else the first of `SEARCH_PATH` that exists.

    Args:
        explicit: the file given with ``--config``, if any.

    Returns:
        The path of the file, as named or as listed in `SEARCH_PATH`.

    Raises:
        ConfigError: the named file does not exist, or none of `SEARCH_PATH` does.
    """
    if explicit is not None:
        if not Path(explicit).exists():
            raise ConfigError("config file not found", file=explicit)
        return Path(explicit)
    for candidate in SEARCH_PATH:
        if Path(candidate).is_file():
            return Path(candidate)
    looked = " and ".join(SEARCH_PATH)
    raise ConfigError(f"no config file: looked for {looked} (pass --config FILE)")


def load_config(path: str | Path) -> Config:
    """Read, check and build the configuration.

    Args:
        path: the YAML file (see `find_config`).

    Returns:
        The configuration, with ``source`` set to ``path``.

    Raises:
        ConfigError: the file cannot be read, or something in it is wrong.
    """
    document = load_document(path)
    config = build(Config, document, "")
    # A plugin listed with nothing under it (`stdout:`) is enabled with default settings.
    plugins = {
        name: dataclasses.replace(section, value=as_mapping(section, section.key))
        for name, section in config.plugins.items()
    }
    return dataclasses.replace(config, plugins=plugins, source=document.file)


def plugin_enabled(section: Located) -> bool:
    """Whether a plugin section leaves the plugin on (its optional ``enabled: bool``, default true).

    Args:
        section: the plugin's section from `Config.plugins`.

    Raises:
        ConfigError: ``enabled`` is not a boolean, or the section is not a mapping.
    """
    switch = {k: v for k, v in as_mapping(section, section.key).items() if k == "enabled"}
    return build(_Switch, dataclasses.replace(section, value=switch), section.key).enabled


def plugin_settings(section: Located) -> Located:
    """A plugin section without its ``enabled`` key, ready for `voiced.yamlconf.build`.

    Args:
        section: the plugin's section from `Config.plugins`.

    Raises:
        ConfigError: the section is not a mapping.
    """
    settings = {k: v for k, v in as_mapping(section, section.key).items() if k != "enabled"}
    return dataclasses.replace(section, value=settings)
