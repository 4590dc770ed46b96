"""The site key: 32 random bytes, owner-only, created once even under concurrency."""

from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor

import pytest

from medssl.deid import load_or_create_key
from medssl.errors import MedsslError

posix_only = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")


@posix_only
def test_first_use_creates_32_bytes_with_mode_0600(tmp_path):
    path = tmp_path / "keys" / "site.key"
    key = load_or_create_key(path)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path) == key
    assert sorted(p.name for p in path.parent.iterdir()) == ["site.key"]  # no temp left


def test_two_keys_differ(tmp_path):
    assert load_or_create_key(tmp_path / "a") != load_or_create_key(tmp_path / "b")


def test_concurrent_first_use_agrees_on_one_key(tmp_path):
    path = tmp_path / "site.key"
    with ThreadPoolExecutor(8) as pool:
        keys = set(pool.map(lambda _: load_or_create_key(path), range(32)))
    assert keys == {path.read_bytes()}


@posix_only
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_group_or_world_readable_key_is_refused(tmp_path, mode, capsys):
    path = tmp_path / "site.key"
    key = load_or_create_key(path)
    path.chmod(mode)
    with pytest.raises(MedsslError) as err:
        load_or_create_key(path)
    message = str(err.value)
    assert str(path) in message and f"{mode:04o}" in message
    assert key.hex() not in message
    out = capsys.readouterr()
    assert key.hex() not in out.out + out.err


def test_wrong_length_is_refused(tmp_path):
    path = tmp_path / "site.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"too short")
    os.close(fd)
    with pytest.raises(MedsslError, match="9 bytes"):
        load_or_create_key(path)


def test_directory_is_refused(tmp_path):
    path = tmp_path / "site.key"
    path.mkdir(mode=0o700)
    with pytest.raises(MedsslError, match="not a regular file"):
        load_or_create_key(path)
