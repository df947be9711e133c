"""The public API: exactly what __all__ promises, and secrets never in a repr."""

from __future__ import annotations

import pickle

import pytest

import strongroom
from strongroom import Passcode, PasscodeError, StrongroomError
from strongroom.crypto import BackupKeys


def test_public_names_are_exported_and_importable() -> None:
    assert sorted(strongroom.__all__) == sorted(set(strongroom.__all__))
    for name in strongroom.__all__:
        assert getattr(strongroom, name) is not None
    assert {"Engine", "Store", "StoreSpec", "hookimpl", "BackendRegistry"} <= set(
        strongroom.__all__
    )


def test_error_tree_has_one_root_and_exit_codes() -> None:
    errors = [getattr(strongroom, n) for n in strongroom.__all__ if n.endswith("Error")]
    assert all(issubclass(e, StrongroomError) for e in errors)
    assert issubclass(strongroom.BackupNotFoundError, FileNotFoundError)
    assert issubclass(strongroom.BackupExistsError, FileExistsError)
    codes = {
        e.exit_code
        for e in [
            strongroom.ConfigError,
            strongroom.StoreError,
            strongroom.PasscodeError,
            strongroom.IntegrityError,
            strongroom.UnsafeArchiveError,
        ]
    }
    assert len(codes) == 5 and 0 not in codes


def test_passcode_never_shows_itself() -> None:
    secret = "super secret passcode"
    passcode = Passcode(secret)
    for rendering in (repr(passcode), str(passcode), f"{passcode}", repr([passcode])):
        assert secret not in rendering
    with pytest.raises(TypeError):
        pickle.dumps(passcode)
    with pytest.raises(TypeError):  # object's own would hand the secret to any serializer
        passcode.__getstate__()
    assert Passcode(secret) == passcode and Passcode("another passcode") != passcode
    assert "k" * 8 not in repr(BackupKeys.from_file_key(b"k" * 32))


def test_short_passcode_error_does_not_echo_it() -> None:
    with pytest.raises(PasscodeError) as caught:
        Passcode("abc1234")
    assert "abc1234" not in str(caught.value)
