"""scripts/nspawn-root takes the Debian mirror from the machine's apt configuration, so the
repository names no mirror host."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def mirror(apt_etc: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(REPO / "scripts" / "nspawn-root"), "--print-mirror"],
                          capture_output=True, text=True, timeout=30,
                          env={"PATH": "/usr/bin:/bin", "FACUSYNC_APT_ETC": str(apt_etc)})


def test_deb822_sources_give_the_bookworm_deb_uri(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb-src\nURIs: http://src.example.invalid/archive\nSuites: bookworm\n\n"
        "Types: deb\nURIs: http://security.example.invalid/archive-security\n"
        "Suites: bookworm-security\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.example.invalid/archive\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n")
    out = mirror(tmp_path)
    assert (out.returncode, out.stdout.strip()) == (0, "http://mirror.example.invalid/archive")


def test_one_line_sources_list(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text(
        "# deb http://commented.example.invalid/archive bookworm main\n"
        "deb-src http://src.example.invalid/archive bookworm main\n"
        "deb [signed-by=/usr/share/keyrings/x.gpg] http://mirror.example.invalid/archive bookworm main\n")
    out = mirror(tmp_path)
    assert (out.returncode, out.stdout.strip()) == (0, "http://mirror.example.invalid/archive")


@pytest.mark.parametrize("content", ["", "deb http://mirror.example.invalid/archive trixie main\n"])
def test_no_bookworm_source_is_a_clear_error(tmp_path: Path, content: str) -> None:
    (tmp_path / "sources.list").write_text(content)
    out = mirror(tmp_path)
    assert out.returncode == 78 and "FACUSYNC_DEBIAN_MIRROR" in out.stderr
