"""scripts/system-deps.sh (run by `make test`): installs only the Debian packages dpkg does not
list as installed, without recommended extras, and upgrades nothing already installed unless
told to.

`dpkg-query`, `apt-get` and `id` are stand-ins on PATH (a test must not install packages, nor
need root): they answer from the test's lists and log every call. The script itself runs
unchanged under the real bash.
"""

import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "system-deps.sh"
PACKAGES = ["redis-server", "chromium", "haproxy", "prometheus"]
STUBS = {
    "dpkg-query": """#!/bin/sh
echo "dpkg-query $*" >> "$LOG"
for last; do :; done
grep -qx "$last" "$INSTALLED" && printf installed || printf not-installed
""",
    "apt-get": """#!/bin/sh
echo "apt-get $*" >> "$LOG"
case " $* " in *" --simulate "*) cat "$SIMULATION" ;; esac
""",
    "id": """#!/bin/sh
echo "$UID_SEEN"
""",
}
UPGRADE = "Inst perl-base [5.36.0-7+deb12u2] (5.36.0-7+deb12u4 Debian-Security:12 [amd64])\n"
NEW = "Inst libogg0 (1.3.5-3 Debian:12.15/oldstable [amd64])\n"


def run(
    tmp_path: Path,
    installed: list[str],
    simulation: str = NEW,
    uid: int = 0,
    *args: str,
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in STUBS.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (tmp_path / "installed").write_text("".join(f"{p}\n" for p in installed))
    (tmp_path / "simulation").write_text(simulation)
    log = tmp_path / "calls.log"
    log.write_text("")
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "LOG": str(log),
        "INSTALLED": str(tmp_path / "installed"),
        "SIMULATION": str(tmp_path / "simulation"),
        "UID_SEEN": str(uid),
    }
    result = subprocess.run(
        ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=30
    )
    return result, log.read_text().splitlines()


def apt(calls: list[str]) -> list[str]:
    return [c for c in calls if c.startswith("apt-get")]


def test_nothing_missing_runs_no_apt(tmp_path: Path) -> None:
    result, calls = run(tmp_path, PACKAGES)
    assert result.returncode == 0, result.stderr
    assert apt(calls) == []
    assert len([c for c in calls if c.startswith("dpkg-query")]) == len(PACKAGES)


def test_installs_only_what_is_missing_without_recommends_or_upgrades(tmp_path: Path) -> None:
    result, calls = run(tmp_path, ["redis-server", "haproxy"])
    assert result.returncode == 0, result.stderr
    install = "apt-get install -y -q --no-install-recommends --no-upgrade chromium prometheus"
    assert apt(calls) == ["apt-get update -q", f"{install} --simulate", install]
    assert not any(" upgrade" in c or "dist-upgrade" in c for c in calls)


def test_an_upgrade_of_an_installed_package_stops_it(tmp_path: Path) -> None:
    result, calls = run(tmp_path, PACKAGES[:-1], NEW + UPGRADE)
    assert result.returncode == 1
    assert "would upgrade installed packages" in result.stderr
    assert "perl-base 5.36.0-7+deb12u2 -> 5.36.0-7+deb12u4" in result.stderr
    assert "--allow-upgrades" in result.stderr
    assert [c for c in apt(calls) if "--simulate" not in c] == ["apt-get update -q"]


def test_allow_upgrades_accepts_them(tmp_path: Path) -> None:
    result, calls = run(tmp_path, PACKAGES[:-1], NEW + UPGRADE, 0, "--allow-upgrades")
    assert result.returncode == 0, result.stderr
    assert apt(calls)[-1].startswith("apt-get install") and "--simulate" not in apt(calls)[-1]


def test_not_root_says_what_to_install(tmp_path: Path) -> None:
    result, calls = run(tmp_path, PACKAGES[1:], NEW, 1000)
    assert result.returncode == 1
    assert "missing Debian packages: redis-server" in result.stderr
    assert "apt-get install -y -q --no-install-recommends --no-upgrade redis-server" in (
        result.stderr
    )
    assert apt(calls) == []


@pytest.mark.parametrize("arg", ["--upgrade", "yes"])
def test_unknown_argument(tmp_path: Path, arg: str) -> None:
    result, _ = run(tmp_path, [], NEW, 0, arg)
    assert result.returncode == 2 and "usage" in result.stderr
