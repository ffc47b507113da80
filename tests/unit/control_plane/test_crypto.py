"""AES-256-GCM sealing, data-key wrapping and master key files."""

from __future__ import annotations

import base64
from pathlib import Path
from uuid import uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control_plane import crypto
from control_plane.crypto import DecryptionError, MasterKey, MasterKeyError


@settings(max_examples=25, deadline=None)
@given(plaintext=st.binary(max_size=4096), context=st.binary(max_size=64))
def test_sealing_round_trips_and_never_contains_the_plaintext(plaintext: bytes, context: bytes) -> None:
    key = crypto.new_data_key()
    sealed = crypto.seal(key, plaintext, context)
    assert crypto.open_sealed(key, sealed, context) == plaintext
    assert len(sealed) == len(plaintext) + 1 + 12 + 16
    if len(plaintext) >= 8:
        assert plaintext not in sealed


def test_another_content_id_as_associated_data_fails_to_open() -> None:
    key = crypto.new_data_key()
    sealed = crypto.seal(key, b"image", crypto.blob_context(uuid4()))
    with pytest.raises(DecryptionError):
        crypto.open_sealed(key, sealed, crypto.blob_context(uuid4()))


def test_a_flipped_bit_or_another_key_fails_to_open() -> None:
    key = crypto.new_data_key()
    sealed = bytearray(crypto.seal(key, b"image", b"ctx"))
    sealed[-1] ^= 1
    with pytest.raises(DecryptionError):
        crypto.open_sealed(key, bytes(sealed), b"ctx")
    with pytest.raises(DecryptionError):
        crypto.open_sealed(crypto.new_data_key(), crypto.seal(key, b"image", b"ctx"), b"ctx")


def test_opening_many_messages_at_once_uses_each_ones_key_and_context() -> None:
    keys = {"a": crypto.new_data_key(), "b": crypto.new_data_key()}
    openers = {name: crypto.SealedOpener(key) for name, key in keys.items()}
    names = ["a", "b", "b", "a"]
    contexts = [f"ctx{i}".encode() for i in range(len(names))]
    plaintexts = [f"prompt {i}".encode() for i in range(len(names))]
    sealed = [crypto.seal(keys[n], p, c) for n, p, c in zip(names, plaintexts, contexts, strict=True)]
    assert crypto.open_each(openers, names, sealed, contexts) == plaintexts

    with pytest.raises(DecryptionError):  # a message under the other key
        crypto.open_each(openers, ["a", "a", "b", "a"], sealed, contexts)
    with pytest.raises(DecryptionError):  # contexts swapped
        crypto.open_each(openers, names, sealed, contexts[::-1])
    with pytest.raises(DecryptionError):  # not a sealed message at all
        crypto.open_each(openers, names, [*sealed[:3], b"\x02" + sealed[3][1:]], contexts)
    with pytest.raises(DecryptionError):
        crypto.open_each(openers, names, [*sealed[:3], b"\x01"], contexts)


def test_a_wrapped_data_key_is_bound_to_its_account_and_master_key() -> None:
    master, account = MasterKey.generate(), uuid4()
    data_key = crypto.new_data_key()
    wrapped = crypto.wrap_data_key(master, account, data_key)
    assert crypto.unwrap_data_key(master, account, wrapped) == data_key
    with pytest.raises(DecryptionError):
        crypto.unwrap_data_key(master, uuid4(), wrapped)
    with pytest.raises(DecryptionError):
        crypto.unwrap_data_key(MasterKey.generate(), account, wrapped)


def test_the_master_key_id_is_stable_and_does_not_reveal_the_key() -> None:
    master = MasterKey(b"k" * 32)
    assert master.key_id == MasterKey(b"k" * 32).key_id
    assert master.key_id.startswith("mk-") and len(master.key_id) == 19
    assert base64.b64encode(master.key).decode() not in master.key_id
    assert "k" * 32 not in repr(master)


def test_a_key_file_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "home" / "master.key"
    first = crypto.ensure_master_key_file(path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert crypto.ensure_master_key_file(path) == first


@pytest.mark.parametrize("text", ["not base64!", base64.b64encode(b"short").decode(), ""])
def test_a_malformed_master_key_names_where_it_came_from(text: str) -> None:
    with pytest.raises(MasterKeyError, match="ATELIER_MASTER_KEY"):
        MasterKey.from_base64(text, where="ATELIER_MASTER_KEY")
