"""nn.data: minibatches, one-hot, splits, standardisation, blobs, digits and MNIST files."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nn import data

# -- DataLoader --------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 40), batch_size=st.integers(1, 12), shuffle=st.booleans(), drop_last=st.booleans())
def test_an_epoch_visits_rows_once_in_batches_of_batch_size(n, batch_size, shuffle, drop_last):
    X, y = np.arange(n * 2).reshape(n, 2), np.arange(n)
    loader = data.DataLoader(X, y, batch_size, shuffle=shuffle, seed=0, drop_last=drop_last)
    batches = list(loader)
    seen = np.concatenate([yb for _, yb in batches]) if batches else np.array([], int)
    assert len(batches) == len(loader)
    assert len(set(seen.tolist())) == len(seen)
    assert all(len(yb) == batch_size for _, yb in batches[:-1])
    assert len(seen) == (n // batch_size * batch_size if drop_last else n)
    for Xb, yb in batches:
        np.testing.assert_array_equal(Xb, X[yb])  # rows stay paired with their labels


def test_without_shuffle_batches_come_in_order():
    loader = data.DataLoader(np.arange(5)[:, None], np.arange(5), batch_size=2, shuffle=False)
    assert [yb.tolist() for _, yb in loader] == [[0, 1], [2, 3], [4]]


def test_each_epoch_is_reshuffled_and_a_seed_fixes_the_whole_sequence():
    def orders(seed):
        loader = data.DataLoader(np.zeros((20, 1)), np.arange(20), batch_size=20, seed=seed)
        return [next(iter(loader))[1].tolist() for _ in range(3)]

    first, again, other = orders(7), orders(7), orders(8)
    assert first == again and first != other
    assert first[0] != first[1]


def test_data_loader_rejects_x_and_y_of_different_lengths():
    with pytest.raises(ValueError, match="DataLoader: X has 3 rows but y has 2"):
        data.DataLoader(np.zeros((3, 2)), np.zeros(2))


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_data_loader_rejects_a_batch_size_that_is_not_a_positive_integer(bad):
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        data.DataLoader(np.zeros((3, 2)), np.zeros(3), batch_size=bad)


# -- one_hot -----------------------------------------------------------------------------------------
def test_one_hot_puts_a_one_at_each_label():
    np.testing.assert_array_equal(data.one_hot(np.array([2, 0, 1]), 4), np.eye(4)[[2, 0, 1]])


def test_one_hot_infers_the_number_of_classes_and_is_float32_by_default():
    encoded = data.one_hot([0, 3])
    assert encoded.shape == (2, 4) and encoded.dtype == np.float32


@pytest.mark.parametrize("labels, message", [
    (np.array([0, 3]), r"labels must be in \[0, 3\)"),
    (np.array([-1, 0]), r"labels must be in"),
    (np.array([0.5, 1.0]), "expected a 1-D array of int labels"),
    (np.zeros((2, 2), int), "expected a 1-D array of int labels"),
])
def test_one_hot_rejects_labels_that_are_not_class_indices(labels, message):
    with pytest.raises(ValueError, match=message):
        data.one_hot(labels, 3)


# -- splits ------------------------------------------------------------------------------------------
def test_train_val_test_split_partitions_the_rows_by_the_fractions():
    X, y = np.arange(100)[:, None], np.arange(100)
    (Xtr, ytr), (Xva, yva), (Xte, yte) = data.train_val_test_split(X, y, val=0.1, test=0.2, seed=0)
    assert (len(ytr), len(yva), len(yte)) == (70, 10, 20)
    assert sorted(np.concatenate([ytr, yva, yte]).tolist()) == list(range(100))
    np.testing.assert_array_equal(Xte[:, 0], yte)


def test_train_val_split_is_reproducible_with_a_seed_and_shuffles():
    X, y = np.arange(50)[:, None], np.arange(50)
    (_, a), _ = data.train_val_split(X, y, val=0.2, seed=3)
    (_, b), _ = data.train_val_split(X, y, val=0.2, seed=3)
    np.testing.assert_array_equal(a, b)
    assert a.tolist() != sorted(a.tolist())


def test_split_without_shuffle_keeps_the_order():
    (_, ytr), (_, yva) = data.train_val_split(np.zeros((10, 1)), np.arange(10), val=0.3, shuffle=False)
    assert ytr.tolist() == list(range(7)) and yva.tolist() == [7, 8, 9]


@pytest.mark.parametrize("kwargs, message", [
    (dict(val=0.0), r"must each be in \(0, 1\)"),
    (dict(val=0.6, test=0.5), "sum to less than 1"),
    (dict(val=0.01, test=0.1), "a part would be empty"),
])
def test_bad_split_fractions_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        data.train_val_test_split(np.zeros((20, 1)), np.zeros(20), **kwargs)


# -- Standardizer ------------------------------------------------------------------------------------
def test_standardizer_makes_training_features_mean_zero_std_one():
    X = np.random.default_rng(0).normal(loc=[5, -3], scale=[2, 0.1], size=(200, 2))
    Z = data.Standardizer().fit_transform(X)
    np.testing.assert_allclose(Z.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(Z.std(axis=0), 1, atol=1e-12)


def test_standardizer_uses_the_training_statistics_on_other_data():
    train, test = np.array([[0.0], [2.0]]), np.array([[10.0]])
    np.testing.assert_allclose(data.Standardizer().fit(train).transform(test), [[9.0]])


def test_a_constant_feature_is_only_shifted():
    Z = data.Standardizer().fit_transform(np.array([[3.0, 1.0], [3.0, 2.0]]))
    np.testing.assert_array_equal(Z[:, 0], [0.0, 0.0])


def test_standardizer_with_one_shared_scale_for_all_features():
    X = np.array([[0.0, 4.0], [2.0, 6.0]])
    Z = data.Standardizer(per_feature=False).fit_transform(X)
    np.testing.assert_allclose(Z, (X - X.mean()) / X.std())


def test_standardizer_keeps_float32_and_inverts():
    X = np.random.default_rng(1).normal(size=(10, 3)).astype(np.float32)
    scaler = data.Standardizer().fit(X)
    assert scaler.transform(X).dtype == np.float32
    np.testing.assert_allclose(scaler.inverse_transform(scaler.transform(X)), X, rtol=1e-5)


def test_transform_before_fit_says_to_fit_first():
    with pytest.raises(RuntimeError, match=r"call fit\(X_train\) first"):
        data.Standardizer().transform(np.zeros((2, 2)))


def test_transform_of_a_different_feature_count_is_an_error():
    with pytest.raises(ValueError, match=r"shape \(2, 3\) but the scaler was fitted on 2 features"):
        data.Standardizer().fit(np.zeros((2, 2))).transform(np.zeros((2, 3)))


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_fitting_on_non_finite_values_is_an_error_that_says_where_and_fits_nothing(value):
    X = np.ones((4, 3))
    X[2, 1] = value
    X[3, 0] = value
    scaler = data.Standardizer()
    with pytest.raises(ValueError, match=rf"2 non-finite values, the first {value} at row 2, feature 1"):
        scaler.fit(X)
    assert scaler.mean is None and scaler.scale is None


# -- datasets ----------------------------------------------------------------------------------------
def test_make_blobs_defaults_to_the_notebooks_two_dimensional_two_classes():
    X, y = data.make_blobs()
    assert X.shape == (400, 2) and X.dtype == np.float32 and y.dtype == np.int64
    assert np.bincount(y).tolist() == [200, 200]
    np.testing.assert_allclose(X[y == 0].mean(axis=0), [-2, -2], atol=0.25)
    np.testing.assert_allclose(X[y == 1].mean(axis=0), [2, 2], atol=0.25)
    np.testing.assert_allclose(X[y == 1].std(axis=0), [1, 1], atol=0.15)


def test_make_blobs_is_reproducible_and_shuffled():
    (X1, y1), (X2, y2) = data.make_blobs(seed=5), data.make_blobs(seed=5)
    np.testing.assert_array_equal(X1, X2)
    np.testing.assert_array_equal(y1, y2)
    assert 0 < y1[:200].sum() < 200  # the classes are mixed, not in two blocks


def test_load_digits_gives_the_1797_uci_images_with_int_labels():
    X, y = data.load_digits()
    assert X.shape == (1797, 64) and X.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int64
    assert X.min() == 0 and X.max() == 16 and np.all(X == np.round(X))
    assert np.bincount(y).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_load_digits_matches_scikit_learns_copy():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    expected = sklearn_datasets.load_digits()
    X, y = data.load_digits(dtype=np.float64)
    np.testing.assert_array_equal(X, expected.data)
    np.testing.assert_array_equal(y, expected.target)


def test_the_digits_attribution_ships_beside_the_data():
    text = (data.DATASETS / "digits.txt").read_text()
    assert "Alpaydin" in text and "CC BY 4.0" in text


# -- MNIST from local files --------------------------------------------------------------------------
def _idx_bytes(array):
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def _write_fake_mnist(directory, gz):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (5, 28, 28)), "y_train": np.array([4, 9, 0, 6, 1]),
              "x_test": rng.integers(0, 256, (3, 28, 28)), "y_test": rng.integers(0, 10, 3)}
    for key, stem in data.MNIST_FILES.items():
        raw = _idx_bytes(arrays[key])
        if gz:
            (directory / (stem + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (directory / stem).write_bytes(raw)
    return arrays


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzipped"])
def test_load_mnist_reads_the_four_idx_files_flattened_and_scaled(tmp_path, gz):
    arrays = _write_fake_mnist(tmp_path, gz)
    (X_train, y_train), (X_test, y_test) = data.load_mnist(tmp_path)
    assert X_train.shape == (5, 784) and X_train.dtype == np.float32 and X_test.shape == (3, 784)
    np.testing.assert_allclose(X_train, arrays["x_train"].reshape(5, -1) / 255, rtol=1e-6)
    np.testing.assert_array_equal(y_test, arrays["y_test"])
    assert y_train.dtype == np.int64


def test_load_mnist_reads_an_npz_with_the_keras_layout(tmp_path):
    arrays = {k: v.astype(np.uint8) for k, v in _write_fake_mnist(tmp_path, gz=False).items()}
    np.savez(tmp_path / "mnist.npz", **arrays)
    (X_train, _), (_, y_test) = data.load_mnist(tmp_path / "mnist.npz")
    np.testing.assert_allclose(X_train * 255, arrays["x_train"].reshape(5, -1), rtol=1e-5)
    np.testing.assert_array_equal(y_test, arrays["y_test"])


def test_missing_mnist_files_are_named_in_the_error(tmp_path):
    _write_fake_mnist(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    expected = "missing: t10k-labels-idx1-ubyte.*Nothing is downloaded"
    with pytest.raises(FileNotFoundError, match=expected) as info:
        data.load_mnist(tmp_path)
    assert "train-images-idx3-ubyte" in str(info.value)


def test_an_npz_without_the_expected_arrays_is_named(tmp_path):
    np.savez(tmp_path / "other.npz", images=np.zeros(3))
    with pytest.raises(ValueError, match=r"lacks the arrays \['x_train'"):
        data.load_mnist(tmp_path / "other.npz")


def test_a_truncated_idx_file_is_a_clear_error(tmp_path):
    raw = _idx_bytes(np.zeros((2, 3, 3)))
    (tmp_path / "cut-idx3-ubyte").write_bytes(raw[:-4])
    with pytest.raises(ValueError, match=r"truncated or corrupted: header says shape \(2, 3, 3\)"):
        data.read_idx(tmp_path / "cut-idx3-ubyte")


def test_a_file_that_is_not_idx_is_a_clear_error(tmp_path):
    (tmp_path / "junk").write_bytes(b"not an idx file")
    with pytest.raises(ValueError, match="not an IDX file"):
        data.read_idx(tmp_path / "junk")


def test_a_damaged_gzip_idx_is_a_clear_error(tmp_path):
    (tmp_path / "bad.gz").write_bytes(gzip.compress(_idx_bytes(np.zeros((4, 4))))[:-10])
    with pytest.raises(ValueError, match="read_idx: .*bad.gz could not be read"):
        data.read_idx(tmp_path / "bad.gz")


def test_a_file_that_is_not_an_npz_is_not_called_a_checkpoint(tmp_path):
    (tmp_path / "mnist.npz").write_text("hello")
    with pytest.raises(ValueError, match=r"^load_mnist: .*mnist.npz is not an .npz archive") as info:
        data.load_mnist(tmp_path / "mnist.npz")
    assert "checkpoint" not in str(info.value)


def _mnist_npz(tmp_path, **changes):
    arrays = {k: v.astype(np.uint8) for k, v in _write_fake_mnist(tmp_path, gz=False).items()}
    np.savez(tmp_path / "mnist.npz", **{**arrays, **changes})
    return tmp_path / "mnist.npz"


BAD_MNIST = {
    "negative label": (dict(y_train=np.array([0, 1, -1, 2, 9])),
                       r"y_train in .* holds values from -1 to 9; expected class labels"),
    "label over 255": (dict(y_train=np.array([0, 1, 300, 2, 9])),
                       r"y_train in .* holds values from 0 to 300; .*integers in \[0, 255\]"),
    "float labels": (dict(y_train=np.array([0.7, 1.2, 3.0, 2.0, 9.0])),
                     r"y_train in .* has dtype float64; expected class labels"),
    "string labels": (dict(y_test=np.array(["a", "b", "c"])), r"y_test in .* has dtype <U1"),
    "one-hot labels": (dict(y_train=np.eye(10)[[0, 1, 2, 3, 9]]),
                       r"y_train in .* has shape \(5, 10\); expected class labels \(N,\)"),
    "0-d images": (dict(x_train=np.array(3, np.uint8)), r"x_train in .* has shape \(\); expected images"),
    "no test images": (dict(x_test=np.zeros((0, 28, 28), np.uint8), y_test=np.zeros(0, np.uint8)),
                       r"x_test in .* has shape \(0, 28, 28\)"),
    "float images": (dict(x_train=np.full((5, 784), 0.5)),
                     r"x_train in .* has dtype float64; expected images"),
    "other image shape": (dict(x_test=np.zeros((3, 20, 20), np.uint8)),
                          r"x_test in .* holds images of shape \(20, 20\) but x_train"),
    "test label outside the classes": (dict(y_test=np.array([1, 12, 3])),
                                       r"y_test in .* holds label 12, but y_train's labels go up to 9"),
}


@pytest.mark.parametrize("case", BAD_MNIST)
def test_mnist_arrays_that_are_not_mnists_bytes_are_clear_errors(tmp_path, case):
    changes, message = BAD_MNIST[case]
    with pytest.raises(ValueError, match=rf"^load_mnist: {message}"):
        data.load_mnist(_mnist_npz(tmp_path, **changes))
