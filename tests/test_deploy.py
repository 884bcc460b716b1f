"""deploy/: the systemd unit and the install script, proved on real systemd tools and a real
Debian 12.

The unit: ``systemd-analyze verify`` prints nothing and ``systemd-analyze security`` scores it
2.5 or less. Verify checks that ExecStart's program exists; here it does not (nothing is
installed), so the fast test verifies a copy whose ExecStart names a stub, the only difference;
the slow tests verify the file as installed, with the real /opt/voiced/venv/bin/voiced in place.

The install script (slow, ``-m slow``): a fresh Debian 12 made with debootstrap (minbase, plus
systemd and udev as on every real Debian and Raspberry Pi OS machine), the checkout copied into
it, ``deploy/install.sh`` run in a chroot. Then: the user and its groups, voiced in the
virtualenv, the files and their modes, a second run that changes nothing, the service under a
booted systemd (``systemd-nspawn`` on that root, with a throwaway overlay: ready, a turn,
reload, the sandbox, the watchdog), and ``--uninstall`` / ``--purge``. Only fresh ``proc``
instances are mounted in the root, never a bind of the host's own folders, and every mount is
undone in a ``finally``; the root is removed at the end. Waits on systemd poll its state
(there is no event to wait on from outside the container), each with a deadline.
"""

from __future__ import annotations

import faulthandler
import os
import re
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "deploy" / "voiced.service"
INSTALL = REPO / "deploy" / "install.sh"
EXEC_START = "/opt/voiced/venv/bin/voiced"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
SHELLCHECK = shutil.which("shellcheck")
DEBOOTSTRAP = shutil.which("debootstrap")
NSPAWN = shutil.which("systemd-nspawn")

needs_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is missing")


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, *args], capture_output=True, text=True, timeout=60, check=False
    )


# --- the unit ---------------------------------------------------------------------------------


@needs_analyze
def test_unit_verifies_without_a_word(tmp_path: Path) -> None:
    # verify exits 0 on unknown keys and bad values, so nothing at all may be printed.
    stub = tmp_path / "voiced"
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    text = UNIT.read_text()
    assert text.count(f"ExecStart={EXEC_START} ") == 1
    copy = tmp_path / "voiced.service"
    copy.write_text(text.replace(f"ExecStart={EXEC_START} ", f"ExecStart={stub} "))
    changed = [
        (a, b)
        for a, b in zip(text.splitlines(), copy.read_text().splitlines(), strict=True)
        if a != b
    ]
    assert [a for a, _ in changed] == [
        f"ExecStart={EXEC_START} run --config /etc/voiced/config.yaml"
    ]

    result = analyze("verify", str(copy))
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@needs_analyze
def test_unit_exposure_is_at_most_2_5() -> None:
    result = analyze("security", "--offline=true", "--no-pager", str(UNIT))
    assert result.returncode == 0, result.stderr
    found = re.search(r"Overall exposure level for voiced\.service: (\d+\.\d+)", result.stdout)
    assert found, result.stdout
    assert float(found[1]) <= 2.5, result.stdout


def test_unit_has_what_the_daemon_relies_on() -> None:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    expected = {
        "Type": ["notify"],
        "NotifyAccess": ["main"],
        "WatchdogSec": ["30"],
        "Restart": ["on-failure"],
        "ExecStart": [f"{EXEC_START} run --config /etc/voiced/config.yaml"],
        "ExecReload": ["/bin/kill -HUP $MAINPID"],
        "User": ["voiced"],
        "LoadCredential": ["openai_api_key:/etc/voiced/openai_api_key"],
        "StateDirectory": ["voiced"],
        "ConfigurationDirectory": ["voiced"],
        "DevicePolicy": ["closed"],
        "RestrictAddressFamilies": ["AF_INET AF_INET6 AF_UNIX"],
    }
    assert {key: settings.get(key) for key in expected} == expected
    assert "DynamicUser" not in settings
    assert {"char-alsa rw", "char-input r", "char-gpiochip rw"} <= set(settings["DeviceAllow"])


# --- the install script, here ------------------------------------------------------------------


@pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck is missing (apt-get install shellcheck)")
def test_install_script_passes_shellcheck() -> None:
    assert SHELLCHECK is not None
    result = subprocess.run(
        [SHELLCHECK, str(INSTALL)], capture_output=True, text=True, timeout=60, check=False
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_install_script_help_and_a_wrong_option() -> None:
    assert os.access(INSTALL, os.X_OK)
    help_ = subprocess.run(
        ["bash", str(INSTALL), "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    assert help_.returncode == 0
    assert "--uninstall" in help_.stdout
    assert "--purge" in help_.stdout
    wrong = subprocess.run(
        ["bash", str(INSTALL), "--frobnicate"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert wrong.returncode == 2
    assert "Usage:" in wrong.stderr


# --- the install script, in a fresh Debian 12 ---------------------------------------------------

CHROOT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
}
"""The whole environment of a command in the root: nothing of this machine's (its PIP_* point
at folders that exist only here)."""


def debian_mirror() -> str:
    """The Debian mirror apt uses on this machine (only package registries can be reached)."""
    files = [Path("/etc/apt/sources.list")]
    folder = Path("/etc/apt/sources.list.d")
    if folder.is_dir():
        files += sorted(folder.iterdir())
    for file in files:
        if not file.is_file():
            continue
        text = file.read_text(errors="replace")
        for uri, suite in re.findall(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", text, re.M):
            if suite == "bookworm":
                return str(uri)
        for stanza in re.split(r"\n\s*\n", text):  # deb822: URIs: and Suites: in one stanza
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:(.*)$", stanza, re.M)
            if uris and suites and "bookworm" in suites[1].split():
                return uris[1]
    return "http://deb.debian.org/debian"


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root``, deepest first."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == str(root) or point.startswith(f"{root}/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)


class Debian:
    """A Debian 12 root made by debootstrap; commands run in it by ``chroot``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.first_output = ""
        """What the first run of install.sh printed."""

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")

    @contextmanager
    def proc(self) -> Iterator[None]:
        """A fresh procfs at ``/proc`` for one command (apt, Python and systemctl want one)."""
        target = self.path("/proc")
        subprocess.run(["mount", "-t", "proc", "proc", str(target)], check=True, timeout=30)
        try:
            yield
        finally:
            if subprocess.run(["umount", str(target)], timeout=30, check=False).returncode:
                subprocess.run(["umount", "-l", str(target)], timeout=30, check=True)

    def run(self, *command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        with self.proc():
            return subprocess.run(
                ["chroot", str(self.root), *command],
                env=CHROOT_ENV,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )

    def ok(self, *command: str, timeout: float = 120) -> str:
        result = self.run(*command, timeout=timeout)
        assert result.returncode == 0, (command, result.stdout, result.stderr)
        return result.stdout

    def install(self, *options: str) -> str:
        """``deploy/install.sh`` from the checkout copied in; its output."""
        return self.ok("bash", "/tmp/voiced-src/deploy/install.sh", *options, timeout=1200)

    def snapshot(self) -> dict[str, tuple[object, ...]]:
        """Every file the install touches: type, mode, owner, size, mtime, link target."""
        found: dict[str, tuple[object, ...]] = {}
        tops = ["/opt/voiced", "/etc/voiced", "/var/lib/voiced", "/etc/systemd/system"]
        files = ["/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow"]
        paths = [self.path(p) for p in files]
        for top in tops:
            for folder, dirs, names in os.walk(self.path(top)):
                paths += [Path(folder, name) for name in dirs + names]
                paths.append(Path(folder))
        for path in paths:
            st = path.lstat()
            link = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
            found[str(path.relative_to(self.root))] = (
                st.st_mode,
                st.st_uid,
                st.st_gid,
                st.st_size,
                st.st_mtime_ns,
                link,
            )
        return found


def copy_checkout(to: Path) -> None:
    """The checkout's files (tracked and new, not ignored ones: no .venv), as git sees them."""
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():  # a file deleted in the work tree is still listed
            (to / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, to / name)


@pytest.fixture(scope="module")
def debian(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Debian]:
    """A fresh Debian 12 with voiced installed by deploy/install.sh (run once, in a chroot)."""
    if os.geteuid() != 0:
        pytest.skip("debootstrap and chroot need root")
    if DEBOOTSTRAP is None or shutil.which("git") is None:
        pytest.skip("debootstrap or git is missing (apt-get install debootstrap git)")
    # Minutes of debootstrap, apt and pip are expected here: no traceback dump at 120 s.
    faulthandler.cancel_dump_traceback_later()
    root = tmp_path_factory.mktemp("debian") / "root"
    try:
        made = subprocess.run(
            [
                DEBOOTSTRAP,
                "--variant=minbase",
                "--include=systemd,udev",
                "bookworm",
                str(root),
                debian_mirror(),
            ],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
        system = Debian(root)
        # A Raspberry Pi OS has a gpio group; plain Debian has not.
        system.ok("groupadd", "--system", "gpio")
        # This machine's network: its resolver, pip's settings (the CA file it names comes
        # with the ca-certificates package install.sh installs) and any CA it adds, which that
        # package's setup then trusts too.
        for name in ("/etc/resolv.conf", "/etc/pip.conf"):
            if Path(name).is_file():
                shutil.copy(name, system.path(name))
        local_cas = Path("/usr/local/share/ca-certificates")
        if local_cas.is_dir():
            shutil.copytree(local_cas, system.path(str(local_cas)), dirs_exist_ok=True)
        source = system.path("/tmp/voiced-src")
        source.mkdir()
        copy_checkout(source)
        system.first_output = system.install()
        yield system
    finally:
        left = mounts_under(root)
        for point in left:
            subprocess.run(["umount", "-l", point], timeout=30, check=False)
        assert not mounts_under(root), mounts_under(root)
        shutil.rmtree(root, ignore_errors=True)
        assert not left, f"mounts were left behind: {left}"


slow = pytest.mark.slow


@slow
def test_install_creates_the_user_in_its_groups(debian: Debian) -> None:
    passwd = debian.ok("getent", "passwd", "voiced").strip().split(":")
    assert passwd[5:] == ["/var/lib/voiced", "/usr/sbin/nologin"]
    assert int(passwd[2]) < 1000  # a system user
    groups = set(debian.ok("id", "-nG", "voiced").split())
    assert groups == {"voiced", "audio", "input", "gpio"}


@slow
def test_installed_voiced_runs_and_checks_the_config(debian: Debian) -> None:
    assert debian.ok("/opt/voiced/venv/bin/voiced", "--version").strip() == "voiced 0.1.0"
    checked = debian.ok(
        "/opt/voiced/venv/bin/voiced", "check-config", "--config", "/etc/voiced/config.yaml"
    )
    assert checked.startswith("/etc/voiced/config.yaml: OK"), checked
    # installed from a wheel, not editable: the package lives in the virtualenv
    where = debian.ok(
        "/opt/voiced/venv/bin/python",
        "-c",
        "import voiced, lgpio, gpiozero, evdev, paho.mqtt, pyaudio; print(voiced.__file__)",
    )
    assert where.startswith("/opt/voiced/venv/lib/python3.11/site-packages/voiced/"), where


@slow
def test_install_leaves_files_with_their_modes(debian: Debian) -> None:
    def owner_mode(path: str) -> tuple[str, str, int]:
        uid, gid, mode = debian.ok("stat", "-c", "%U %G %a", path).split()
        return uid, gid, int(mode, 8)

    assert owner_mode("/etc/voiced") == ("root", "voiced", 0o750)
    assert owner_mode("/etc/voiced/config.yaml") == ("root", "voiced", 0o640)
    assert owner_mode("/etc/voiced/openai_api_key") == ("root", "root", 0o600)
    assert owner_mode("/var/lib/voiced") == ("voiced", "voiced", 0o750)
    assert owner_mode("/etc/systemd/system/voiced.service") == ("root", "root", 0o644)
    copied = debian.path("/tmp/voiced-src/config.yaml").read_bytes()
    assert debian.path("/etc/voiced/config.yaml").read_bytes() == copied
    assert debian.path("/etc/voiced/openai_api_key").read_bytes() == b""
    output = debian.first_output
    assert "put the OpenAI API key in /etc/voiced/openai_api_key" in output
    # an empty key would stop the service at its start; the script says so instead of starting it
    assert "/etc/voiced/openai_api_key holds no API key" in output
    assert "systemd is not running here" in output


@slow
def test_the_installed_unit_is_the_repo_s_verified_and_enabled(debian: Debian) -> None:
    assert debian.path("/etc/systemd/system/voiced.service").read_bytes() == UNIT.read_bytes()
    wants = debian.path("/etc/systemd/system/multi-user.target.wants/voiced.service")
    assert os.readlink(wants) == "/etc/systemd/system/voiced.service"
    # The real file, the real ExecStart, /bin/kill, the user: nothing substituted.
    result = debian.run("systemd-analyze", "verify", "/etc/systemd/system/voiced.service")
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@slow
def test_a_second_run_changes_nothing(debian: Debian) -> None:
    before = debian.snapshot()
    output = debian.install()
    assert debian.snapshot() == before
    assert "installed" not in output
    assert "created" not in output


def _descendants(pid: int) -> Iterator[int]:
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            yield child
            yield from _descendants(child)


def _wait(what: str, done: Callable[[], bool], *, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while not done():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.2)


TURN = """
import json, pathlib, sys, time, httpx
api = httpx.Client(base_url="http://127.0.0.1:8787", timeout=10)
assert api.post("/start").status_code == 202
time.sleep(1)
assert api.post("/commit").status_code == 202
transcripts = pathlib.Path("/var/lib/voiced/transcripts.jsonl")
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    lines = transcripts.read_text().splitlines() if transcripts.exists() else []
    agent = [json.loads(line) for line in lines if '"role": "agent"' in line]
    if agent:
        print(agent[0]["text"])
        sys.exit(0)
    time.sleep(0.2)
sys.exit("no answer in 30 s")
"""


@slow
@pytest.mark.skipif(
    NSPAWN is None, reason="systemd-nspawn is missing (apt-get install systemd-container)"
)
def test_the_service_runs_under_systemd(debian: Debian, tmp_path: Path) -> None:
    """The installed root booted in a container: the unit as installed, a key and a config that
    talks to the built-in simulator bound in; every change vanishes with the overlay."""
    assert NSPAWN is not None
    key = tmp_path / "openai_api_key"
    key.write_text("sk-test-not-a-key\n")
    key.chmod(0o600)
    config = tmp_path / "config.yaml"
    config.write_text(
        "realtime: {url: sim}\nplugins:\n  http: {}\n  file: {path: transcripts.jsonl}\n"
    )
    config.chmod(0o644)
    log = (tmp_path / "nspawn.log").open("wb")
    container = subprocess.Popen(
        [
            NSPAWN, "--directory", str(debian.root), "--volatile=overlay", "--boot",
            "--register=no", "--keep-unit", "--private-network", "--console=pipe",
            f"--bind-ro={key}:/etc/voiced/openai_api_key",
            f"--bind-ro={config}:/etc/voiced/config.yaml",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        init: list[int] = []

        def booted() -> bool:
            assert container.poll() is None, (tmp_path / "nspawn.log").read_text()
            for pid in _descendants(container.pid):
                try:
                    if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                        init[:] = [pid]
                        return True
                except OSError:  # gone meanwhile
                    continue
            return False

        _wait("the container's systemd", booted, deadline_s=30)

        def inside(*command: str, check: bool = True) -> str:
            result = subprocess.run(
                ["nsenter", "--target", str(init[0]), "--all", *command],
                env=CHROOT_ENV,
                capture_output=True,
                text=True,
                timeout=90,
                check=False,
            )
            assert not check or result.returncode == 0, (command, result.stdout, result.stderr)
            return result.stdout

        def show() -> dict[str, str]:
            fields = "ActiveState,StatusText,MainPID,NRestarts,Result"
            text = inside("systemctl", "show", "--property", fields, "voiced", check=False)
            return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

        # Boot finished. The first "systemd" seen may not answer on its bus yet: ask again.
        def settled() -> bool:
            said = inside("systemctl", "is-system-running", "--wait", check=False).strip()
            return said in ("running", "degraded")

        _wait("the container's boot to finish", settled, deadline_s=90)
        state = show()
        # Type=notify: "active" only after READY=1; STATUS= shows in systemctl status.
        assert state["ActiveState"] == "active", (state, inside("journalctl", "-u", "voiced"))
        assert state["StatusText"], state
        main = state["MainPID"]

        # The sandbox is on: no capabilities, no new privileges, a seccomp filter, voiced's uid.
        status = inside("cat", f"/proc/{main}/status")
        assert re.search(r"^CapEff:\s+0+$", status, re.M), status
        assert re.search(r"^NoNewPrivs:\s+1$", status, re.M), status
        assert re.search(r"^Seccomp:\s+2$", status, re.M), status
        uid = inside("id", "-u", "voiced").strip()
        assert re.search(rf"^Uid:\s+{uid}\s", status, re.M), status

        # A turn over HTTP, answered by the simulator, lands in the state directory.
        assert inside("/opt/voiced/venv/bin/python", "-c", TURN).strip()

        # reload: SIGHUP, the same process carries on
        inside("systemctl", "reload", "voiced")
        state = show()
        assert (state["ActiveState"], state["MainPID"]) == ("active", main), state

        # The watchdog: a stopped daemon sends no WATCHDOG=1 and is restarted. 5 s (a
        # runtime drop-in) rather than 30, to keep the test short.
        inside("mkdir", "-p", "/run/systemd/system/voiced.service.d")
        inside(
            "sh",
            "-c",
            "printf '[Service]\\nWatchdogSec=5\\n' > /run/systemd/system/voiced.service.d/fast-watchdog.conf",
        )
        inside("systemctl", "daemon-reload")
        inside("systemctl", "restart", "voiced")
        stopped = show()["MainPID"]
        inside("kill", "-STOP", stopped)

        def restarted() -> bool:
            state = show()
            return state["ActiveState"] == "active" and state["MainPID"] != stopped

        _wait("the watchdog's restart", restarted, deadline_s=45)
        assert "Watchdog timeout" in inside("journalctl", "-u", "voiced", "--no-pager")

        # a clean stop
        inside("systemctl", "stop", "voiced")
        state = show()
        assert (state["ActiveState"], state["Result"]) == ("inactive", "success"), state
    finally:
        container.send_signal(signal.SIGTERM)  # nspawn powers the container off
        try:
            container.wait(timeout=30)
        except subprocess.TimeoutExpired:
            container.kill()
            container.wait(timeout=30)
        log.close()
    assert not mounts_under(debian.root)


@slow
def test_uninstall_keeps_the_config_and_purge_removes_it(debian: Debian) -> None:
    # Last in this file: it takes the installation away.
    output = debian.install("--uninstall")
    assert "kept /etc/voiced and /var/lib/voiced" in output
    assert debian.run("getent", "passwd", "voiced").returncode == 2
    assert debian.run("getent", "group", "voiced").returncode == 2
    for gone in ("/opt/voiced", "/etc/systemd/system/voiced.service"):
        assert not debian.path(gone).exists(), gone
    assert not debian.path(
        "/etc/systemd/system/multi-user.target.wants/voiced.service"
    ).is_symlink()
    assert debian.path("/etc/voiced/config.yaml").is_file()
    assert debian.path("/etc/voiced/openai_api_key").is_file()
    assert debian.path("/var/lib/voiced").is_dir()
    debian.install("--uninstall")  # again: nothing left to do, and no error

    # Installed again over what was kept: the new user gets the kept files back.
    debian.install()
    assert debian.ok("stat", "-c", "%U:%G", "/etc/voiced/config.yaml").strip() == "root:voiced"
    assert debian.ok("stat", "-c", "%U:%G", "/var/lib/voiced").strip() == "voiced:voiced"

    output = debian.install("--uninstall", "--purge")
    assert "removed /etc/voiced and /var/lib/voiced" in output
    for gone in ("/etc/voiced", "/var/lib/voiced", "/opt/voiced"):
        assert not debian.path(gone).exists(), gone
    assert debian.run("getent", "passwd", "voiced").returncode == 2
