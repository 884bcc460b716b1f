"""The ``voiced`` command as a user runs it: real processes, exit statuses, one clear line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SIM_KEY, free_port, tone, write_wav

COMMANDS = [
    "run", "ask", "sim", "devices", "doctor", "check-config", "status", "plugins", "broker"
]  # fmt: skip


def voiced(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    return subprocess.run(
        [sys.executable, "-m", "voiced", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=env,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The single error line of a failed command (and no traceback)."""
    assert "Traceback" not in result.stderr
    errors = [ln for ln in result.stderr.splitlines() if " ERROR " in ln]
    assert len(errors) == 1, result.stderr
    return errors[0].split(": ", 1)[1]


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    """``voiced sim`` in its own process, as a user would start it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "voiced", "sim", "--port", "0", "--key", SIM_KEY],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:  # wait for the line that says where it listens
        if found := re.search(r"simulator on (ws://\S+)\?", line):
            break
    else:
        raise AssertionError("voiced sim did not start")
    yield found.group(1)
    proc.terminate()
    proc.wait(timeout=10)
    proc.stderr.close()


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help(command: str | None) -> None:
    result = voiced(*([command] if command else []), "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: voiced")


def config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("realtime:\n  voice: [marin\n", r"config.yaml:\d+: invalid YAML: "),
        ("realtime:\n  connect_timeout: fast\n", r"config.yaml:2: realtime.connect_timeout: expected a number, got 'fast'"),
        ("realtime:\n  voise: marin\n", r"config.yaml:2: realtime.voise: unknown key .* did you mean 'voice'\?"),
        ("plugins:\n  htp: {}\n", r"config.yaml:2: plugins.htp: no plugin named 'htp' is installed"),
        ("plugins:\n  http: {port: x}\n", r"config.yaml:2: plugins.http.port: expected an integer, got 'x'"),
    ],
)  # fmt: skip
def test_bad_config_is_one_line_and_exit_2(tmp_path: Path, text: str, message: str) -> None:
    for command in ("check-config", "run"):
        result = voiced(command, "--config", config(tmp_path, text))
        assert result.returncode == 2
        assert re.search(message, one_line_error(result))


def test_missing_config_file(tmp_path: Path) -> None:
    result = voiced("run", "--config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert one_line_error(result).endswith("nope.yaml: config file not found")
    result = voiced("check-config", cwd=tmp_path)
    assert result.returncode == 2
    assert "no config file: looked for ./config.yaml" in one_line_error(result)


def test_shipped_config_checks(tmp_path: Path) -> None:
    shipped = Path(__file__).parent.parent / "config.yaml"
    result = voiced("check-config", "--config", str(shipped))
    assert result.returncode == 0, result.stderr
    assert "realtime: sim" in result.stdout
    assert "plugins: http, terminal, stdout, file" in result.stdout


def _ask(tmp_path: Path, url: str, key: str, seconds: float) -> subprocess.CompletedProcess[str]:
    cfg = config(
        tmp_path,
        f"realtime: {{url: '{url}'}}\nauth: {{api_key: {key}}}\nplugins: {{stdout: {{}}}}\n",
    )
    wav = write_wav(tmp_path / "in.wav", tone(seconds))
    return voiced("ask", "--config", cfg, str(wav), "--out", str(tmp_path / "out.wav"))


def test_ask_succeeds(tmp_path: Path, sim_url: str) -> None:
    result = _ask(tmp_path, sim_url, SIM_KEY, 0.5)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["user: heard 500 ms", "agent: echo of 500 ms"]


def test_ask_wrong_key(tmp_path: Path, sim_url: str) -> None:
    result = _ask(tmp_path, sim_url, "sk-wrong-key", 0.5)
    assert result.returncode == 1
    assert one_line_error(result).startswith(
        "the server rejected the credentials: Incorrect API key"
    )


def test_ask_too_short(tmp_path: Path, sim_url: str) -> None:
    result = _ask(tmp_path, sim_url, SIM_KEY, 0.05)
    assert result.returncode == 1
    assert "too short: 50 ms < 100 ms, discarded" in result.stderr
    assert one_line_error(result) == "turn 1 ended too_short"


def test_ask_unreachable(tmp_path: Path) -> None:
    url = f"ws://127.0.0.1:{free_port()}/v1/realtime"
    result = _ask(tmp_path, url, SIM_KEY, 0.5)
    assert result.returncode == 1
    assert one_line_error(result).startswith(f"cannot reach {url}: ")


def test_ask_bad_input_file(tmp_path: Path, sim_url: str) -> None:
    cfg = config(tmp_path, f"realtime: {{url: '{sim_url}'}}\nauth: {{api_key: {SIM_KEY}}}\n")
    result = voiced("ask", "--config", cfg, str(tmp_path / "none.wav"), "--out", "o.wav")
    assert result.returncode == 1
    assert one_line_error(result).startswith(f"cannot read {tmp_path / 'none.wav'}")


def test_plugins_lists_builtins(tmp_path: Path) -> None:
    result = voiced(
        "plugins",
        "--config",
        config(tmp_path, "plugins:\n  http: {enabled: false}\n  stdout: {}\n"),
    )
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert set(rows) >= {"http", "stdout", "file", "terminal"}
    assert " disabled " in rows["http"]
    assert " enabled " in rows["stdout"]
    assert " not configured " in rows["file"]
    assert "voiced 0.1.0 (voiced_plugins.stdout)" in rows["stdout"]


def test_ask_with_the_embedded_simulator(tmp_path: Path) -> None:
    """``realtime.url: sim`` runs the simulator inside voiced: no key, no network."""
    cfg = config(tmp_path, "realtime: {url: sim}\nplugins: {stdout: {}}\n")
    wav = write_wav(tmp_path / "in.wav", tone(0.5))
    result = voiced("ask", "--config", cfg, str(wav), "--out", str(tmp_path / "o.wav"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["user: heard 500 ms", "agent: echo of 500 ms"]


def test_no_key_for_a_real_server_is_a_config_error(tmp_path: Path) -> None:
    cfg = config(tmp_path, "realtime: {url: 'wss://api.openai.com/v1/realtime'}\n")
    for command in ("run", "check-config"):
        result = voiced(command, "--config", cfg)
        assert result.returncode == 2
        assert one_line_error(result) == (
            f"{cfg}: auth.api_key: realtime.url is wss://api.openai.com/v1/realtime but no API key "
            "is configured: set OPENAI_API_KEY (or auth.api_key, auth.api_key_file, a systemd "
            "credential openai_api_key), or use realtime.url: sim"
        )


def test_the_key_never_reaches_the_logs(tmp_path: Path, sim_url: str) -> None:
    secret = "test-secret-ABCDEFGHIJ"
    cfg = config(tmp_path, f"realtime: {{url: '{sim_url}'}}\nauth: {{api_key: {secret}}}\n")
    wav = write_wav(tmp_path / "in.wav", tone(0.5))
    result = voiced("ask", "--debug", "--config", cfg, str(wav), "--out", str(tmp_path / "o.wav"))
    assert result.returncode == 1  # the simulator takes another key
    assert "test-***IJ" in result.stderr  # the server's masked echo, as the real one does
    assert "ABCDEFGHIJ" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["ask", "in.wav"],
            "voiced ask: the following arguments are required: --out (see 'voiced ask --help')",
        ),
        (
            ["bogus"],
            "voiced: argument COMMAND: invalid choice: 'bogus' (choose from 'run', 'ask', 'sim', 'devices', 'doctor', 'check-config', 'status', 'plugins', 'broker') (see 'voiced --help')",
        ),
    ],
)
def test_usage_error_is_one_line_and_exit_2(args: list[str], line: str) -> None:
    result = voiced(*args)
    assert (result.returncode, result.stderr, result.stdout) == (2, line + "\n", "")


def test_doctor_all_good(tmp_path: Path) -> None:
    mic = write_wav(tmp_path / "mic.wav", tone(3.0))
    cfg = config(
        tmp_path,
        "realtime: {url: sim}\n"
        f"audio:\n  input: {{backend: wav, path: '{mic}'}}\n"
        f"  output: {{backend: wav, path: '{tmp_path / 'spk.wav'}'}}\n",
    )
    result = voiced("doctor", "--config", cfg)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["ok", "config"],
        ["ok", "realtime"],
        ["ok", "microphone"],
        ["ok", "speaker"],
    ]
    assert re.search(r"microphone  wav:\S+mic.wav: 2 s, peak -\d+\.\d dBFS", lines[2])
    assert result.stderr == ""  # findings only, no log chatter
    assert not (tmp_path / "spk.wav").exists()  # the tone went to a scratch file, not the daemon's


def test_doctor_says_a_daemon_runs_and_leaves_its_files_alone(
    tmp_path: Path, state_directory: Path
) -> None:
    from voiced.saved import daemon_lock

    speaker = tmp_path / "spk.wav"
    speaker.write_bytes(b"the daemon's")
    cfg = config(
        tmp_path,
        "realtime: {url: sim}\naudio:\n  input: {backend: null}\n"
        f"  output: {{backend: wav, path: '{speaker}'}}\n",
    )
    with daemon_lock():  # a daemon runs with this state directory
        result = voiced("doctor", "--config", cfg)
    assert f"ok    daemon      a voiced daemon (pid {os.getpid()}) runs" in result.stdout
    assert speaker.read_bytes() == b"the daemon's"


def test_doctor_says_what_is_wrong_and_the_fix(tmp_path: Path, sim_url: str) -> None:
    cfg = config(
        tmp_path,
        f"realtime: {{url: '{sim_url}'}}\nauth: {{api_key: sk-wrong-key-000}}\n"
        f"audio:\n  input: {{backend: null}}\n  output: {{backend: null}}\n",
    )
    result = voiced("doctor", "--config", cfg)
    assert result.returncode == 1
    out = result.stdout
    assert "FAIL  realtime    the server rejected the credentials: Incorrect API key" in out
    assert "FAIL  microphone  null: 2 s, peak -inf dBFS, rms -inf dBFS (silent)" in out
    assert "fix: unmute it, raise its gain" in out
    assert "ok    speaker" in out


def test_doctor_on_a_bad_config(tmp_path: Path) -> None:
    result = voiced("doctor", "--config", config(tmp_path, "realtime: {voise: x}\n"))
    assert result.returncode == 1
    assert result.stdout.startswith("FAIL  config      ")
    assert "fix: edit the file" in result.stdout


def test_auto_falls_back_to_the_sample_without_a_sound_device(tmp_path: Path) -> None:
    cfg = config(tmp_path, "realtime: {url: sim}\n")
    env_no_sound = {"PULSE_SERVER": "unix:/nonexistent/native", "ALSA_CONFIG_PATH": ""}
    result = subprocess.run(
        [sys.executable, "-m", "voiced", "doctor", "--config", cfg],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"} | env_no_sound,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok    microphone  wav:" in result.stdout
    assert "sample.wav: 2 s, peak" in result.stdout
    assert "ok    speaker     wav:/tmp/voiced-doctor-" in result.stdout  # a scratch file:
    assert not (tmp_path / "voiced-speaker.wav").exists()  # the daemon's is left alone


@pytest.mark.parametrize(
    "args",
    [
        ["--config", "CFG", "check-config"],
        ["check-config", "--config", "CFG"],
        ["--config", "/nonexistent", "check-config", "--config", "CFG"],  # the later one wins
    ],
)
def test_the_config_goes_before_or_after_the_command(tmp_path: Path, args: list[str]) -> None:
    cfg = config(tmp_path, "realtime: {url: sim}\n")
    result = voiced(*[cfg if a == "CFG" else a for a in args])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{cfg}: OK")


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_goes_before_or_after_the_command(where: str) -> None:
    args = ["check-config", "--config", "/nonexistent"]
    result = voiced(*(["--debug", *args] if where == "before" else [*args, "--debug"]))
    assert result.returncode == 2
    assert "Traceback" in result.stderr  # --debug took: the traceback is shown


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("audio: {input: {backend: wav, path: missing.wav}}\n", "audio.input.path"),
        ("audio: {earcons: {listening: nope.wav}}\n", "audio.earcons.listening"),
        ("audio: {output: {backend: wav, path: 'a-file/spk.wav'}}\n", "audio.output.path"),
    ],
)
def test_check_config_is_ok_only_when_run_would_start(tmp_path: Path, text: str, key: str) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    cfg = config(tmp_path, f"state_dir: '{tmp_path}'\nrealtime: {{url: sim}}\n" + text)
    result = voiced("check-config", "--config", cfg)
    assert result.returncode == 2
    assert "OK" not in result.stdout  # never OK before an error
    assert f"{cfg}: {key}: " in one_line_error(result)


def test_logs_under_the_journal_carry_its_priorities(tmp_path: Path) -> None:
    """stderr is the journal's stream: every line starts with its syslog priority and has no
    timestamp (journald adds its own); warnings are <4>, errors <3>."""
    cfg = config(tmp_path, "realtime: {url: sim}\nauth: {api_key: sk-in-the-file}\n")
    os.chmod(cfg, 0o644)  # a warning: the file holds the key and others can read it
    log = tmp_path / "stderr"
    with log.open("w") as stderr:
        stat = os.fstat(stderr.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}
        subprocess.run(
            [sys.executable, "-m", "voiced", "check-config", "--config", "/nonexistent"],
            stderr=stderr, stdout=subprocess.DEVNULL, env=env, timeout=60, check=False,
        )  # fmt: skip
        subprocess.run(
            [sys.executable, "-m", "voiced", "check-config", "--config", cfg],
            stderr=stderr, stdout=subprocess.DEVNULL, env=env, timeout=60, check=True,
        )  # fmt: skip
    lines = log.read_text().splitlines()
    assert lines[0] == "<3>voiced: /nonexistent: config file not found"
    assert lines[1].startswith(f"<4>voiced.auth: {cfg} holds the API key and others can read")


def test_status_says_whether_a_daemon_runs_and_where_the_volume_comes_from(
    tmp_path: Path, state_directory: Path
) -> None:
    import json

    from voiced.saved import daemon_lock

    cfg = config(tmp_path, "audio: {output: {volume: 0.8}}\n")
    result = voiced("status", "--config", cfg)
    assert result.stdout.splitlines() == [
        "daemon: not running",
        f"state directory: {state_directory}",
        "volume: 0.8, from the config (none set at run time)",
    ]
    state_directory.mkdir(exist_ok=True)
    saved = state_directory / "state.json"
    saved.write_text(json.dumps({"volume": 0.3, "volume_configured": 0.8}))
    with daemon_lock():
        lines = voiced("status", "--config", cfg).stdout.splitlines()
    assert lines[0] == f"daemon: running (pid {os.getpid()})"
    assert lines[2] == f"volume: 0.3, set at run time ({saved}); the config says 0.8"
    saved.write_text(json.dumps({"volume": 0.3, "volume_configured": 1.0}))
    lines = voiced("status", "--config", cfg).stdout.splitlines()
    assert lines[2] == "volume: 0.8, from the config (changed since 0.3 was set)"
