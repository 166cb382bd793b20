"""The env file as systemd reads it (EnvironmentFile=, for the daemons) and as facusync reads it
(`facusync --env-file`, and every admin command from /etc/facusync/facusync.env): a password
written one way must reach both the same, or the admin commands fail to log in where the
daemons succeed (or the reverse). Compared against the real systemd of a booted Debian 12."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from facusync.config import parse_env_file
from tests.system.nspawn import Container

# How operators write passwords, with and without the quotes facusync.env.example advises.
LINES = [
    "FX_PLAIN=Pa;ss#w}rd ñ",
    "FX_BACKSLASH=ab\\cd",
    "FX_TWO_BACKSLASHES=x\\\\y",
    'FX_DOUBLE_QUOTED_BACKSLASH="a\\b"',
    "FX_SINGLE_QUOTED='a\\b \"c'",
    'FX_ESCAPED_QUOTES="with \\"q\\" and # hash"',
    'FX_DOLLAR="cost \\$5"',
    "FX_SPACES=  spaced value  ",
    "FX_CONTINUED=first\\",
    "second",
]


@pytest.fixture(scope="module")
def plain_box(image: Path) -> Iterator[Container]:
    """A booted Debian 12 without the package: only its systemd is needed here."""
    container = Container(image)
    try:
        container.boot(timeout=120)
        yield container
    finally:
        container.destroy_showing_journal()


def test_facusync_reads_the_env_file_as_systemd_does(plain_box: Container) -> None:
    text = "".join(line + "\n" for line in LINES)
    plain_box.write("/etc/fx.env", text)
    out = plain_box.run("systemd-run", "--wait", "--pipe", "--quiet", "-p",
                        "EnvironmentFile=/etc/fx.env", "/usr/bin/env", "-0").stdout
    by_systemd = dict(item.split("=", 1) for item in out.split("\0") if item.startswith("FX_"))
    by_facusync = {k: v for k, v in parse_env_file(text).items() if k.startswith("FX_")}
    assert by_facusync == by_systemd
