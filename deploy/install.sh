#!/usr/bin/env bash
# Install voiced as a systemd service on Raspberry Pi OS or Debian 12, from this checkout.
# Run it again at any time: it changes only what differs (a new checkout is reinstalled and the
# service restarted; the config and the key are never overwritten). See --help.
set -euo pipefail

readonly VENV=/opt/voiced/venv   # the unit's ExecStart names it
readonly ETC=/etc/voiced
readonly STATE=/var/lib/voiced
readonly UNIT=/etc/systemd/system/voiced.service
readonly KEY=$ETC/openai_api_key
readonly EXTRAS=audio,gpio,hotkey,mqtt
# A Python that makes virtualenvs, what PyAudio (and evdev) build with, and the CA certificates
# TLS to the realtime server needs, and procps for /bin/kill (the unit's ExecReload). lgpio (gpiozero's pin library on a Pi 5) goes into the
# virtualenv from PyPI: an apt python3-lgpio would be invisible inside it.
readonly APT_PACKAGES=(python3 python3-venv python3-dev gcc portaudio19-dev ca-certificates procps)
# Sound devices, input devices (a pedal, a key), GPIO: joined where the group exists.
readonly DEVICE_GROUPS=(audio input gpio)

usage() {
	cat <<EOF
Usage: sudo $0 [--uninstall [--purge]]

Installs voiced as the systemd service voiced.service:
  - apt packages: ${APT_PACKAGES[*]}
  - the system user voiced, in the groups ${DEVICE_GROUPS[*]} (those that exist)
  - a virtualenv $VENV with voiced[$EXTRAS] and lgpio, from a wheel built from this checkout
  - $ETC/config.yaml (a copy of the checkout's config.yaml, only if there is none; 0640 root:voiced)
  - $KEY (empty if there is none; 0600 root:root): the API key, given to voiced as a credential
  - $UNIT, enabled and started when systemd is running and the config checks out

Options:
  --uninstall   stop and remove the service, the virtualenv and the user; keep $ETC and $STATE
  --purge       with --uninstall (or alone): remove $ETC and $STATE too
  -h, --help    this text
EOF
}

say() { printf 'voiced: %s\n' "$*"; }
die() {
	printf 'voiced: %s\n' "$*" >&2
	exit 1
}
systemd_running() { [ -d /run/systemd/system ]; }

install_packages() {
	local missing=() p
	for p in "${APT_PACKAGES[@]}"; do
		dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' ||
			missing+=("$p")
	done
	if ((${#missing[@]})); then
		say "installing ${missing[*]}"
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
	fi
	python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
		die "voiced needs Python 3.11 or newer; this python3 is $(python3 -V 2>&1)"
}

ensure_user() {
	local group joined=() absent=()
	if ! getent passwd voiced >/dev/null; then
		useradd --system --user-group --home-dir "$STATE" --no-create-home \
			--shell /usr/sbin/nologin --comment "voiced voice daemon" voiced
		say "created the system user voiced"
	fi
	for group in "${DEVICE_GROUPS[@]}"; do
		if ! getent group "$group" >/dev/null; then
			absent+=("$group")
		elif [[ " $(id -nG voiced) " != *" $group "* ]]; then
			usermod -a -G "$group" voiced
			joined+=("$group")
		fi
	done
	if ((${#joined[@]})); then say "voiced joined the groups ${joined[*]}"; fi
	if ((${#absent[@]})); then
		say "no group ${absent[*]} on this machine, so voiced is not in it (Raspberry Pi OS has gpio;" \
			"elsewhere give voiced the device with a udev rule if it needs one)"
	fi
}

# Build a wheel from the checkout (in a copy, so no root-owned build/ is left in it) and
# install it, not editable, with its extras. A changed checkout is reinstalled even when its
# version is the same: the wheel's RECORD (every file's hash) is compared with the last one.
install_venv() {
	local work=$1 wheel stamp old
	if ! "$VENV/bin/python" -c '' 2>/dev/null; then
		rm -rf "$VENV"
		python3 -m venv "$VENV"
		say "created the virtualenv $VENV"
	fi
	mkdir "$work/src" "$work/dist"
	tar -C "$SRC" --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./dist \
		--exclude='*.egg-info' --exclude=__pycache__ --exclude='.*_cache' --exclude=./.hypothesis \
		-cf - . | tar -C "$work/src" -xf -
	"$VENV/bin/pip" wheel -q --disable-pip-version-check --no-deps -w "$work/dist" "$work/src"
	wheel=$(echo "$work"/dist/voiced-*.whl)
	[ -f "$wheel" ] || die "no wheel was built from $SRC"
	stamp=$("$VENV/bin/python" - "$wheel" <<'PY'
import hashlib, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    record = next(n for n in wheel.namelist() if n.endswith(".dist-info/RECORD"))
    print(hashlib.sha256(wheel.read(record)).hexdigest())
PY
	)
	old=$(cat "$VENV/.voiced-wheel" 2>/dev/null || true)
	if [ "$stamp" != "$old" ]; then
		"$VENV/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps "$wheel"
		CHANGED=1
	fi
	# Its dependencies: nothing happens when they are all there.
	"$VENV/bin/pip" install -q --disable-pip-version-check "${wheel}[${EXTRAS}]"
	# PYPI=1: where PyPI has no lgpio wheel (a Pi Zero), build it with its C library inside.
	PYPI=1 "$VENV/bin/pip" install -q --disable-pip-version-check lgpio ||
		say "lgpio did not install: gpiozero will use another pin library (a Pi 5 needs lgpio)"
	if [ "$stamp" != "$old" ]; then
		printf '%s\n' "$stamp" >"$VENV/.voiced-wheel"
		say "installed $("$VENV/bin/voiced" --version) into $VENV"
	fi
}

install_files() {
	install -d -m 0750 -o root -g voiced "$ETC"
	if [ ! -e "$ETC/config.yaml" ]; then
		install -m 0640 -o root -g voiced "$SRC/config.yaml" "$ETC/config.yaml"
		say "wrote $ETC/config.yaml: edit it, then sudo systemctl reload voiced"
	elif [ "$(stat -c %G "$ETC/config.yaml")" = UNKNOWN ]; then
		chgrp voiced "$ETC/config.yaml" # its group went with an earlier --uninstall
	fi
	if [ ! -e "$KEY" ]; then
		install -m 0600 -o root -g root /dev/null "$KEY"
	fi
	# Read by systemd (as root) for LoadCredential=, by nobody else.
	[ "$(stat -c %U:%G:%a "$KEY")" = root:root:600 ] || {
		chown root:root "$KEY"
		chmod 0600 "$KEY"
	}
	if [ ! -e "$STATE" ]; then
		install -d -m 0750 -o voiced -g voiced "$STATE"
	elif [ "$(stat -c %U "$STATE")" != voiced ]; then
		chown -R voiced:voiced "$STATE" # its owner went with an earlier --uninstall
	fi
	if ! cmp -s "$SRC/deploy/voiced.service" "$UNIT"; then
		install -m 0644 "$SRC/deploy/voiced.service" "$UNIT"
		say "installed $UNIT"
		CHANGED=1
	fi
}

# `voiced check-config` as the service would run it: as voiced, with the credential. Prints
# what is wrong and returns non-zero when the service could not start.
check_as_service() {
	local creds out
	creds=$(mktemp -d)
	install -m 0400 -o voiced -g voiced "$KEY" "$creds/openai_api_key"
	if [ -f "$ETC/device-token" ]; then
		install -m 0400 -o voiced -g voiced "$ETC/device-token" "$creds/voiced_device_token"
	fi
	chown voiced:voiced "$creds"
	if out=$(runuser -u voiced -- env -i PATH=/usr/bin:/bin LANG=C.UTF-8 HOME="$STATE" \
		CREDENTIALS_DIRECTORY="$creds" STATE_DIRECTORY="$STATE" \
		"$VENV/bin/voiced" check-config --config "$ETC/config.yaml" 2>&1 >/dev/null); then
		rm -rf "$creds"
		say "checked $ETC/config.yaml as the service will read it: OK"
		return 0
	fi
	rm -rf "$creds"
	out=${out//"$creds/openai_api_key"/$KEY}
	say "the service would not start: ${out//"$creds/voiced_device_token"/$ETC/device-token}"
	return 1
}

start_service() {
	local ready=1
	if [ ! -s "$KEY" ]; then
		say "put the OpenAI API key in $KEY (sudo tee $KEY >/dev/null, paste it, Enter, Ctrl-D)"
	fi
	check_as_service || ready=0
	if systemd_running; then
		systemctl daemon-reload
		systemctl enable -q voiced
		if ((!ready)); then
			say "enabled, not started: fix the above, then sudo systemctl start voiced"
		elif ! systemctl is-active -q voiced; then
			systemctl reset-failed voiced 2>/dev/null || true # a start limit hit before
			systemctl start voiced || die "voiced did not start: journalctl -u voiced -n 30"
			say "started: journalctl -u voiced -f"
		elif ((CHANGED)); then
			systemctl restart voiced || die "voiced did not restart: journalctl -u voiced -n 30"
			say "restarted with what changed: journalctl -u voiced -f"
		else
			say "running, nothing changed"
		fi
	elif command -v systemctl >/dev/null; then
		SYSTEMD_OFFLINE=1 systemctl enable -q voiced
		say "systemd is not running here (a chroot or a container): enabled for the next boot," \
			"not started"
	else
		say "systemd is not running here and there is no systemctl: not enabled, not started"
	fi
}

uninstall() {
	local purge=$1
	if [ -e "$UNIT" ]; then
		if systemd_running; then
			systemctl disable -q --now voiced
		elif command -v systemctl >/dev/null; then
			SYSTEMD_OFFLINE=1 systemctl disable -q voiced
		fi
		rm -f "$UNIT"
		if systemd_running; then
			systemctl daemon-reload
			systemctl reset-failed voiced 2>/dev/null || true
		fi
		say "removed $UNIT"
	fi
	if [ -e /opt/voiced ]; then
		rm -rf /opt/voiced
		say "removed /opt/voiced"
	fi
	if getent passwd voiced >/dev/null; then
		userdel voiced
		say "removed the user voiced"
	fi
	if getent group voiced >/dev/null; then
		groupdel voiced
	fi
	if ((purge)); then
		rm -rf "$ETC" "$STATE"
		say "removed $ETC and $STATE"
	else
		say "kept $ETC and $STATE (--purge removes them)"
	fi
}

main() {
	local action=install purge=0 arg
	for arg in "$@"; do
		case $arg in
		-h | --help)
			usage
			return 0
			;;
		--uninstall) action=uninstall ;;
		--purge)
			action=uninstall
			purge=1
			;;
		*)
			usage >&2
			return 2
			;;
		esac
	done
	[ "$(id -u)" = 0 ] || die "run it as root: sudo $0 $*"
	if [ "$action" = uninstall ]; then
		uninstall "$purge"
		return 0
	fi
	SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
	if [ ! -f "$SRC/pyproject.toml" ] || [ ! -f "$SRC/deploy/voiced.service" ]; then
		die "run it from a voiced checkout ($SRC is not one)"
	fi
	CHANGED=0
	WORK=$(mktemp -d)
	trap 'rm -rf "$WORK"' EXIT
	install_packages
	ensure_user
	install_venv "$WORK"
	install_files
	start_service
}

main "$@"
