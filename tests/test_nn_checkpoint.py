"""nn.save / nn.load: .npz without pickle, atomic writes, and every bad file leaves the model unchanged."""

from __future__ import annotations

import os
import pickle
import zipfile

import numpy as np
import pytest

import nn
from nn import checkpoint


@pytest.fixture
def saved(tmp_path):
    """A TwoLayerNet saved at tmp_path / "model.npz"; returns (model, path)."""
    model = nn.TwoLayerNet(3, 4, 2, seed=0)
    path = tmp_path / "model.npz"
    nn.save(model, path)
    return model, path


def _assert_unchanged(model, before):
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)


# -- round trip ------------------------------------------------------------------------------------
def test_save_then_load_restores_every_parameter_exactly(saved):
    model, path = saved
    other = nn.TwoLayerNet(3, 4, 2, seed=1)
    assert nn.load(other, path) is other
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[name], value)


def test_loading_keeps_the_parameter_objects_so_an_optimizer_still_trains_them(saved):
    _, path = saved
    other = nn.TwoLayerNet(3, 4, 2, seed=1)
    parameters = list(other.parameters())
    nn.load(other, path)
    assert all(a is b for a, b in zip(parameters, other.parameters()))


def test_the_file_is_a_plain_npz_keyed_by_parameter_names(saved):
    model, path = saved
    with np.load(path, allow_pickle=False) as archive:
        assert sorted(archive.files) == sorted(model.state_dict())
        assert archive["fc1.weight"].dtype == np.float32


def test_float64_and_mlp_models_round_trip(tmp_path):
    model = nn.MLP([3, 5, 5, 2], dtype=np.float64, seed=0)
    nn.save(model, tmp_path / "mlp.npz")
    other = nn.load(nn.MLP([3, 5, 5, 2], dtype=np.float64, seed=1), tmp_path / "mlp.npz")
    np.testing.assert_array_equal(other[2].weight.data, model[2].weight.data)


def test_save_replaces_an_existing_file_and_leaves_no_temporary_behind(saved, tmp_path):
    _, path = saved
    newer = nn.TwoLayerNet(3, 4, 2, seed=9)
    nn.save(newer, path)
    assert os.listdir(tmp_path) == ["model.npz"]
    loaded = nn.load(nn.TwoLayerNet(3, 4, 2), path)
    np.testing.assert_array_equal(loaded.fc2.weight.data, newer.fc2.weight.data)


def test_save_keeps_the_permissions_of_the_file_it_replaces(saved):
    _, path = saved
    os.chmod(path, 0o600)
    nn.save(nn.TwoLayerNet(3, 4, 2), path)
    assert path.stat().st_mode & 0o777 == 0o600


# -- atomic write ------------------------------------------------------------------------------------
@pytest.mark.parametrize("failing", ["write_array", "fsync", "replace"])
def test_a_save_that_fails_midway_leaves_the_old_file_intact(saved, tmp_path, monkeypatch, failing):
    _, path = saved
    old_bytes = path.read_bytes()
    calls = {"n": 0}

    def crash(*args, **kwargs):
        calls["n"] += 1
        raise OSError("disk full (simulated)")

    module = np.lib.format if failing == "write_array" else os
    monkeypatch.setattr(module, failing, crash)
    with pytest.raises(OSError, match="simulated"):
        nn.save(nn.TwoLayerNet(3, 4, 2, seed=5), path)
    monkeypatch.undo()
    assert calls["n"] >= 1
    assert path.read_bytes() == old_bytes
    assert os.listdir(tmp_path) == ["model.npz"]  # the temporary file was removed


def test_a_save_interrupted_after_some_arrays_leaves_the_old_file_intact(saved, tmp_path, monkeypatch):
    _, path = saved
    old_bytes = path.read_bytes()
    real_write = np.lib.format.write_array
    written = []

    def write_two_then_die(f, array, **kwargs):
        if len(written) == 2:
            raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of a save
        written.append(array)
        real_write(f, array, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", write_two_then_die)
    with pytest.raises(KeyboardInterrupt):
        nn.save(nn.TwoLayerNet(3, 4, 2, seed=5), path)
    assert path.read_bytes() == old_bytes and os.listdir(tmp_path) == ["model.npz"]


# -- loading bad files ------------------------------------------------------------------------------
def _check_rejected(path, message):
    """Loading ``path`` raises CheckpointError matching ``message`` and changes nothing."""
    model = nn.TwoLayerNet(3, 4, 2, seed=1)
    before = model.state_dict()
    with pytest.raises(nn.CheckpointError, match=message) as info:
        nn.load(model, path)
    assert str(path) in str(info.value)
    _assert_unchanged(model, before)


def _rewrite(path, state):
    with zipfile.ZipFile(path, "w") as archive:
        for name, array in state.items():
            with archive.open(f"{name}.npy", "w") as member:
                np.lib.format.write_array(member, array, allow_pickle=True)


def test_a_missing_key_is_named_and_the_model_unchanged(saved):
    model, path = saved
    state = model.state_dict()
    del state["fc2.bias"]
    _rewrite(path, state)
    _check_rejected(path, r"does not fit TwoLayerNet: missing keys \['fc2.bias'\]")


def test_an_extra_key_is_named_and_the_model_unchanged(saved):
    model, path = saved
    _rewrite(path, {**model.state_dict(), "fc3.weight": np.zeros((2, 2), np.float32)})
    _check_rejected(path, r"unexpected keys \['fc3.weight'\]")


def test_a_wrong_shape_is_named_and_the_model_unchanged(saved, tmp_path):
    nn.save(nn.TwoLayerNet(3, 5, 2), tmp_path / "wider.npz")
    _check_rejected(tmp_path / "wider.npz", r"'fc1.weight' has shape \(3, 5\), expected \(3, 4\)")


def test_a_wrong_dtype_is_named_and_the_model_unchanged(tmp_path):
    nn.save(nn.TwoLayerNet(3, 4, 2, dtype=np.float64), tmp_path / "f64.npz")
    _check_rejected(tmp_path / "f64.npz", "has dtype float64, expected float32")


def test_a_truncated_file_is_rejected_and_the_model_unchanged(saved):
    _, path = saved
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _check_rejected(path, "is truncated or corrupted")


def test_a_file_cut_inside_the_zip_signature_is_called_truncated(saved):
    _, path = saved
    path.write_bytes(b"PK")
    _check_rejected(path, "is truncated")


def test_an_empty_file_is_rejected_and_the_model_unchanged(saved):
    _, path = saved
    path.write_bytes(b"")
    _check_rejected(path, "is truncated: 0 bytes")


def test_a_flipped_byte_fails_the_crc_check_and_the_model_is_unchanged(saved):
    model, path = saved
    raw = bytearray(path.read_bytes())
    offset = raw.index(model.fc2.weight.data.tobytes())  # inside the last array's data
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))
    _check_rejected(path, "truncated or corrupted .*CRC")


def test_a_file_carrying_object_arrays_is_refused_and_the_model_unchanged(saved):
    model, path = saved
    state = model.state_dict()
    state["fc1.bias"] = np.array([{"not": "numbers"}] * 4, dtype=object)
    _rewrite(path, state)
    _check_rejected(path, r"carries object arrays \(pickled Python objects\)")


def test_a_pickle_file_is_refused_without_unpickling_it(saved):
    _, path = saved
    path.write_bytes(pickle.dumps(nn.TwoLayerNet(3, 4, 2).state_dict()))
    _check_rejected(path, "is a pickle, which is never loaded")


def test_a_single_npy_array_is_not_a_checkpoint(tmp_path):
    np.save(tmp_path / "weights.npy", np.zeros(3))
    _check_rejected(tmp_path / "weights.npy", "is a single .npy array")


def test_a_file_that_is_no_archive_is_rejected(tmp_path):
    (tmp_path / "notes.npz").write_text("hello")
    _check_rejected(tmp_path / "notes.npz", r"is not an .npz archive \(it does not start like a zip file\)")


def test_a_member_that_is_not_an_array_is_rejected(saved):
    _, path = saved
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("readme.txt", "hello")
    _check_rejected(path, "member 'readme.txt' is not a NumPy array")


def test_loading_a_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="^nn.load: cannot read .*absent.npz: No such file"):
        nn.load(nn.TwoLayerNet(3, 4, 2), tmp_path / "absent.npz")


def test_loading_a_directory_is_an_error_naming_nn_load_and_the_path(tmp_path):
    with pytest.raises(IsADirectoryError, match=f"^nn.load: cannot read {tmp_path}: Is a directory"):
        nn.load(nn.TwoLayerNet(3, 4, 2), tmp_path)


# Each field zipfile refuses to read past: the compression method (an unknown one), the
# version needed to extract (a newer one), the flags (the encryption bit).
ZIP_HEADER_FIELDS = {"compression method": (8, 99), "version needed": (4, 99), "flags": (6, 1)}


@pytest.mark.parametrize("field", ZIP_HEADER_FIELDS)
def test_a_changed_zip_header_field_is_a_checkpoint_error_and_the_model_unchanged(saved, field):
    _, path = saved
    offset, value = ZIP_HEADER_FIELDS[field]
    raw = bytearray(path.read_bytes())
    central = raw.index(b"PK\x01\x02")  # the first member's central directory entry, which zipfile reads
    raw[central + offset + 2] = value  # a central entry has 2 bytes more than the local header before these
    path.write_bytes(bytes(raw))
    _check_rejected(path, "is truncated or corrupted")


def test_saving_into_a_missing_directory_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nn.save: cannot write .*directory .*nowhere does not exist"):
        nn.save(nn.Linear(2, 2), tmp_path / "nowhere" / "model.npz")


def test_saving_under_a_file_says_it_is_not_a_directory(saved):
    _, path = saved
    with pytest.raises(NotADirectoryError, match=f"^nn.save: cannot write {path}/m.npz: {path} is a file"):
        nn.save(nn.Linear(2, 2), path / "m.npz")


def test_saving_onto_a_directory_names_it_and_leaves_no_temporary_behind(tmp_path):
    (tmp_path / "model.npz").mkdir()
    message = f"^nn.save: cannot write {tmp_path}/model.npz: it is a directory"
    with pytest.raises(IsADirectoryError, match=message):
        nn.save(nn.Linear(2, 2), tmp_path / "model.npz")
    assert os.listdir(tmp_path) == ["model.npz"]


def test_saving_through_a_symbolic_link_writes_the_file_it_names(saved, tmp_path):
    _, path = saved
    link = tmp_path / "link.npz"
    link.symlink_to(path)
    newer = nn.TwoLayerNet(3, 4, 2, seed=9)
    nn.save(newer, link)
    assert link.is_symlink() and sorted(os.listdir(tmp_path)) == ["link.npz", "model.npz"]
    loaded = nn.load(nn.TwoLayerNet(3, 4, 2), path)
    np.testing.assert_array_equal(loaded.fc2.weight.data, newer.fc2.weight.data)


def test_saving_onto_a_read_only_file_is_refused_and_leaves_it_as_it_was(saved):
    _, path = saved
    old_bytes = path.read_bytes()
    os.chmod(path, 0o444)
    with pytest.raises(PermissionError, match=f"^nn.save: cannot write {path}: the file is read-only"):
        nn.save(nn.TwoLayerNet(3, 4, 2, seed=9), path)
    assert path.read_bytes() == old_bytes and path.stat().st_mode & 0o777 == 0o444


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_a_directory_where_no_file_can_be_made_is_refused_before_anything_is_written():
    # Permissions cannot tell (root may write anywhere); making a file there can.
    with pytest.raises(OSError, match=r"^nn.save: cannot write /proc/m.npz: no file can be made in /proc"):
        nn.save(nn.TwoLayerNet(3, 4, 2), "/proc/m.npz")


def test_checkpoint_errors_are_value_errors():
    assert issubclass(checkpoint.CheckpointError, ValueError)


def test_a_new_checkpoint_honours_the_umask(tmp_path):
    previous = os.umask(0o077)
    try:
        nn.save(nn.Linear(2, 2), tmp_path / "private.npz")
    finally:
        os.umask(previous)
    assert (tmp_path / "private.npz").stat().st_mode & 0o777 == 0o600
