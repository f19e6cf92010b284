"""common/console.py: C++ noise on stderr hidden, unless the block fails."""

from __future__ import annotations

import os

import pytest

from common import console


def test_quiet_stderr_hides_what_is_written_to_fd_2(capfd):
    with console.quiet_stderr():
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"


def test_quiet_stderr_shows_it_when_the_block_fails(capfd):
    with pytest.raises(RuntimeError), console.quiet_stderr():
        os.write(2, b"the reason it failed\n")
        raise RuntimeError
    assert capfd.readouterr().err == "the reason it failed\n"
