"""Checkpoints under every small corruption: each truncation and each single-byte change of a
saved file either loads exactly the saved values or is refused with the model unchanged; a
wrong number never reaches the model. (tests/test_nn_checkpoint.py tests the cases by name.)"""

from __future__ import annotations

import numpy as np
import pytest

import nn

MASKS = (0xFF, 0x01)  # every bit of a byte, and its lowest bit alone


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The bytes of a saved TwoLayerNet, and its state."""
    model = nn.TwoLayerNet(3, 4, 2, seed=0)
    path = tmp_path_factory.mktemp("checkpoint") / "model.npz"
    nn.save(model, path)
    return path.read_bytes(), model.state_dict()


def corruptions(data: bytes):
    for offset in range(len(data)):
        for mask in MASKS:
            changed = bytearray(data)
            changed[offset] ^= mask
            yield f"byte {offset} ^ {mask:#04x}", bytes(changed)


def load_outcome(path, data: bytes, saved: dict) -> tuple[str, BaseException | None]:
    """'exact' (loaded the saved values) or 'refused' (model unchanged), and the exception if any."""
    path.write_bytes(data)
    model = nn.TwoLayerNet(3, 4, 2, seed=1)
    before = model.state_dict()
    try:
        nn.load(model, path)
    except Exception as err:  # which kind of error is checked separately
        assert all(np.array_equal(model.state_dict()[k], before[k]) for k in before), "changed on refusal"
        return "refused", err
    assert all(np.array_equal(model.state_dict()[k], saved[k]) for k in saved), "loaded wrong values"
    return "exact", None


def test_every_truncation_of_a_checkpoint_is_a_checkpoint_error_and_changes_nothing(checkpoint, tmp_path):
    data, saved = checkpoint
    for length in range(len(data)):
        outcome, err = load_outcome(tmp_path / "cut.npz", data[:length], saved)
        assert outcome == "refused" and isinstance(err, nn.CheckpointError), f"cut at {length}: {err!r}"


def test_no_single_byte_corruption_puts_a_wrong_value_into_the_model(checkpoint, tmp_path):
    data, saved = checkpoint
    outcomes = [load_outcome(tmp_path / "bad.npz", changed, saved)[0] for _, changed in corruptions(data)]
    assert outcomes.count("refused") > len(outcomes) // 2  # the CRC and the headers catch most of them
    # the rest hit bytes no loader reads for the values (timestamps, unused header fields)


def test_every_refused_single_byte_corruption_is_a_checkpoint_error(checkpoint, tmp_path):
    data, saved = checkpoint
    for where, changed in corruptions(data):
        outcome, err = load_outcome(tmp_path / "bad.npz", changed, saved)
        assert outcome == "exact" or isinstance(err, nn.CheckpointError), f"{where}: {err!r}"
