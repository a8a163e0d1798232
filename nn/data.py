"""Data: seeded minibatches, one-hot, splits, standardisation, and the datasets (blobs, digits, MNIST).

Nothing is downloaded: the digits ship with the package, MNIST is read from files you have.

>>> X, y = make_blobs(n_per_class=50, seed=0)
>>> (X_train, y_train), (X_val, y_val) = train_val_split(X, y, val=0.2, seed=0)
>>> scaler = Standardizer().fit(X_train)
>>> [xb.shape for xb, yb in DataLoader(scaler.transform(X_train), y_train, batch_size=32, seed=0)]
[(32, 2), (32, 2), (16, 2)]
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from nn.arguments import check_positive_int
from nn.checkpoint import read_checkpoint

DATASETS = Path(__file__).resolve().parent / "datasets"
Pair = tuple[np.ndarray, np.ndarray]


def _check_same_length(X: np.ndarray, y: np.ndarray, where: str) -> None:
    if len(X) != len(y):
        raise ValueError(f"{where}: X has {len(X)} rows but y has {len(y)}; they must match")


# -- batching ---------------------------------------------------------------------------------
class DataLoader:
    """Minibatches ``(X[idx], y[idx])`` of ``batch_size`` rows; reshuffled on every pass.

    With ``shuffle=True`` each ``for`` loop over the loader draws a new order from one
    generator seeded by ``seed``, so a seed fixes the whole sequence of epochs.

    >>> loader = DataLoader(np.arange(10.0)[:, None], np.arange(10), batch_size=4, shuffle=False)
    >>> len(loader), [yb.tolist() for _, yb in loader]
    (3, [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]])
    """

    def __init__(
        self,
        X: Any,
        y: Any,
        batch_size: int = 32,
        *,
        shuffle: bool = True,
        seed: int | np.random.Generator | None = None,
        drop_last: bool = False,
    ) -> None:
        self.X, self.y = np.asarray(X), np.asarray(y)
        _check_same_length(self.X, self.y, "DataLoader")
        check_positive_int(batch_size, "batch_size", "DataLoader")
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        full, rest = divmod(len(self.X), self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self) -> Iterator[Pair]:
        n = len(self.X)
        order = self.rng.permutation(n) if self.shuffle else None
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            if order is None:
                rows: Any = slice(start, start + self.batch_size)  # a view, no copy
            else:
                rows = order[start:start + self.batch_size]
            yield self.X[rows], self.y[rows]


# -- labels -----------------------------------------------------------------------------------
def one_hot(y: Any, num_classes: int | None = None, dtype: Any = np.float32) -> np.ndarray:
    """Rows of zeros with a one at each label: ``(N,)`` int labels to ``(N, num_classes)``.

    >>> one_hot([0, 2, 1])
    array([[1., 0., 0.],
           [0., 0., 1.],
           [0., 1., 0.]], dtype=float32)
    """
    labels = np.asarray(y)
    if labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
        raise ValueError(f"one_hot: expected a 1-D array of int labels, got shape {labels.shape} "
                         f"and dtype {labels.dtype}")
    labels = labels.astype(np.intp, copy=False)
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if labels.size else 0
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"one_hot: labels must be in [0, {num_classes}), got values from "
                         f"{labels.min()} to {labels.max()}")
    out = np.zeros((labels.size, num_classes), dtype=dtype)
    out[np.arange(labels.size), labels] = 1
    return out


# -- splits -----------------------------------------------------------------------------------
def _split(X: Any, y: Any, fractions: list[float], seed: Any, shuffle: bool, where: str) -> list[Pair]:
    """Cut the rows into len(fractions) + 1 parts: the rest first, then one per fraction."""
    X, y = np.asarray(X), np.asarray(y)
    _check_same_length(X, y, where)
    if any(not 0.0 < f < 1.0 for f in fractions) or sum(fractions) >= 1.0:
        raise ValueError(f"{where}: fractions {fractions} must each be in (0, 1) and sum to less than 1")
    n = len(X)
    sizes = [int(round(f * n)) for f in fractions]
    if min(sizes) == 0 or n - sum(sizes) == 0:
        raise ValueError(f"{where}: {n} rows are too few to split by {fractions}; a part would be empty")
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    bounds = np.cumsum([n - sum(sizes)] + sizes)
    return [(X[rows], y[rows]) for rows in np.split(order, bounds[:-1])]


def train_val_split(
    X: Any, y: Any, val: float = 0.2, *, seed: Any = None, shuffle: bool = True
) -> tuple[Pair, Pair]:
    """``((X_train, y_train), (X_val, y_val))`` with a fraction ``val`` of the rows held out.

    >>> (Xt, yt), (Xv, yv) = train_val_split(np.zeros((10, 2)), np.arange(10), val=0.3, seed=0)
    >>> len(Xt), len(Xv)
    (7, 3)
    """
    train, held_out = _split(X, y, [val], seed, shuffle, "train_val_split")
    return train, held_out


def train_val_test_split(
    X: Any, y: Any, val: float = 0.15, test: float = 0.15, *, seed: Any = None, shuffle: bool = True
) -> tuple[Pair, Pair, Pair]:
    """``(train, validation, test)`` pairs ``(X, y)``; ``val`` and ``test`` are fractions of the rows.

    >>> parts = train_val_test_split(np.zeros((20, 2)), np.arange(20), val=0.25, test=0.25, seed=0)
    >>> [len(X) for X, y in parts]
    [10, 5, 5]
    """
    train, held_out, test_part = _split(X, y, [val, test], seed, shuffle, "train_val_test_split")
    return train, held_out, test_part


def _float_like(given: np.ndarray, result: np.ndarray) -> np.ndarray:
    """``result`` in ``given``'s dtype if that is floating (float32 data stays float32), else float64."""
    return result.astype(given.dtype if given.dtype.kind == "f" else np.float64, copy=False)


class Standardizer:
    """Shift and scale features to mean 0 and standard deviation 1, as measured by ``fit``.

    Fit it on the training rows only, then transform every split with the same numbers.
    Each feature gets its own mean and deviation; with ``per_feature=False`` all share
    one (for pixels, which share a unit and where rarely-lit pixels should not be blown
    up). Constant features (standard deviation 0) are only shifted. Fitting on nan or inf
    is an error that says where the first one is.

    >>> scaler = Standardizer().fit(np.array([[0.0, 5.0], [2.0, 5.0]]))
    >>> scaler.transform(np.array([[1.0, 5.0], [3.0, 6.0]]))
    array([[0., 0.],
           [2., 1.]])
    """

    def __init__(self, per_feature: bool = True) -> None:
        self.per_feature = per_feature
        self.mean: np.ndarray | None = None
        self.scale: np.ndarray | None = None

    def fit(self, X: Any) -> Standardizer:
        """Measure the mean and standard deviation (of each column, or of all entries); returns self."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or len(X) == 0:
            raise ValueError(f"Standardizer.fit: expected a non-empty 2-D array (rows, features), got "
                             f"shape {X.shape}")
        bad = ~np.isfinite(X)
        if bad.any():  # a nan or inf would turn the mean, and every row transformed, into nan
            row, column = np.argwhere(bad)[0]
            raise ValueError(f"Standardizer.fit: X holds {bad.sum()} non-finite values, the first "
                             f"{X[row, column]} at row {row}, feature {column}; drop or fill them first")
        axis = 0 if self.per_feature else None
        self.mean = np.broadcast_to(X.mean(axis=axis), X.shape[1:]).copy()
        std = np.broadcast_to(X.std(axis=axis), X.shape[1:])
        self.scale = np.where(std > 0, std, 1.0)
        return self

    def _fitted(self, X: Any, where: str) -> np.ndarray:
        if self.mean is None:
            raise RuntimeError(f"Standardizer.{where}: call fit(X_train) first")
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.mean.shape[0]:
            raise ValueError(f"Standardizer.{where}: X has shape {X.shape} but the scaler was fitted "
                             f"on {self.mean.shape[0]} features")
        return X

    def transform(self, X: Any) -> np.ndarray:
        """``(X - mean) / std`` with the fitted numbers; floating X keeps its dtype."""
        X = self._fitted(X, "transform")
        return _float_like(X, (X - self.mean) / self.scale)

    def fit_transform(self, X: Any) -> np.ndarray:
        """``fit(X)`` then ``transform(X)``."""
        return self.fit(X).transform(X)

    def inverse_transform(self, Z: Any) -> np.ndarray:
        """Undo ``transform``: ``Z * std + mean``."""
        Z = self._fitted(Z, "inverse_transform")
        return _float_like(Z, Z * self.scale + self.mean)


# -- datasets ---------------------------------------------------------------------------------
def make_blobs(n_per_class: int = 200, dim: int = 2, offset: float = 2.0, seed: Any = 0) -> Pair:
    """The notebooks' two Gaussian classes: N(-offset, 1) and N(+offset, 1) in ``dim`` dimensions.

    Returns ``(X, y)``: X float32 of shape ``(2 * n_per_class, dim)``, y int64 labels 0/1,
    shuffled.

    >>> X, y = make_blobs(n_per_class=5, dim=3, seed=1)
    >>> X.shape, X.dtype, np.bincount(y).tolist()
    ((10, 3), dtype('float32'), [5, 5])
    """
    check_positive_int(n_per_class, "n_per_class", "make_blobs")
    check_positive_int(dim, "dim", "make_blobs")
    rng = np.random.default_rng(seed)
    c0 = rng.normal(loc=-offset, scale=1.0, size=(n_per_class, dim))
    c1 = rng.normal(loc=+offset, scale=1.0, size=(n_per_class, dim))
    X = np.vstack([c0, c1]).astype(np.float32)
    y = np.array([0] * n_per_class + [1] * n_per_class, dtype=np.int64)
    order = rng.permutation(len(X))
    return X[order], y[order]


def load_digits(dtype: Any = np.float32) -> Pair:
    """The UCI 8x8 handwritten digits shipped with nn: X ``(1797, 64)`` pixel counts 0..16, y 0..9.

    See ``nn/datasets/digits.txt`` for where the data come from and how to cite them.

    >>> X, y = load_digits()
    >>> X.shape, X.dtype, y.dtype, int(X.max()), np.bincount(y)[:3].tolist()
    ((1797, 64), dtype('float32'), dtype('int64'), 16, [178, 182, 177])
    """
    with np.load(DATASETS / "digits.npz", allow_pickle=False) as archive:
        return archive["images"].astype(dtype), archive["labels"].astype(np.int64)


MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An array of unsigned bytes from an IDX file (the MNIST format), gzipped or not.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "tiny-idx2-ubyte"
    >>> _ = path.write_bytes(bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(6)))
    >>> read_idx(path)
    array([[0, 1, 2],
           [3, 4, 5]], dtype=uint8)
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:  # a damaged or cut-off .gz
        raise ValueError(f"read_idx: {path} could not be read: {err}") from None
    if len(raw) < 4 or raw[0:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"read_idx: {path} is not an IDX file of unsigned bytes (bad header)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
    if len(shape) != ndim or len(raw) - header != int(np.prod(shape)):
        raise ValueError(f"read_idx: {path} is truncated or corrupted: header says shape {shape}, "
                         f"file holds {max(len(raw) - header, 0)} data bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _mnist_arrays(path: Path) -> dict[str, np.ndarray]:
    if path.is_file():
        archive = read_checkpoint(path, "load_mnist")  # every damaged file is one clear error
        missing = [key for key in MNIST_FILES if key not in archive]
        if missing:
            raise ValueError(f"load_mnist: {path} lacks the arrays {missing}; expected "
                             f"{list(MNIST_FILES)} (the layout of Keras' mnist.npz)")
        return {key: archive[key] for key in MNIST_FILES}
    found = {key: _find_idx(path, stem) for key, stem in MNIST_FILES.items()}
    missing = [MNIST_FILES[key] for key, file in found.items() if file is None]
    if missing or not path.is_dir():
        raise FileNotFoundError(
            f"load_mnist: {path} does not hold the MNIST files; expected a directory with "
            f"{', '.join(MNIST_FILES.values())} (each may end in .gz), or an .npz with arrays "
            f"{', '.join(MNIST_FILES)}; missing: {', '.join(missing)}. Nothing is downloaded."
        )
    return {key: read_idx(file) for key, file in found.items()}


def _check_mnist_arrays(arrays: dict[str, np.ndarray], path: Path) -> None:
    """Refuse arrays that are not MNIST's bytes: they would fail deep in training, or train on nonsense."""
    for key, array in arrays.items():
        labels = key.startswith("y")
        expected = "class labels (N,)" if labels else "images (N, 28, 28) or (N, 784)"
        if (array.ndim != 1 if labels else array.ndim < 2) or len(array) == 0:
            raise ValueError(f"load_mnist: {key} in {path} has shape {array.shape}; expected {expected} "
                             f"with N >= 1")
        if array.dtype.kind not in "ui":  # float labels would be truncated to classes silently
            raise ValueError(f"load_mnist: {key} in {path} has dtype {array.dtype}; expected {expected} "
                             f"as integers in [0, 255], as the MNIST files hold them")
        if array.min() < 0 or array.max() > 255:
            raise ValueError(f"load_mnist: {key} in {path} holds values from {array.min()} to "
                             f"{array.max()}; expected {expected} as integers in [0, 255]")
    train, test = arrays["x_train"].shape[1:], arrays["x_test"].shape[1:]
    if train != test:
        raise ValueError(f"load_mnist: x_test in {path} holds images of shape {test} but x_train images "
                         f"of shape {train}; they must match")
    if arrays["y_test"].max() > arrays["y_train"].max():
        raise ValueError(f"load_mnist: y_test in {path} holds label {arrays['y_test'].max()}, but y_train's "
                         f"labels go up to {arrays['y_train'].max()}; the test set must use the "
                         f"training set's classes")


def load_mnist(path: str | os.PathLike, dtype: Any = np.float32) -> tuple[Pair, Pair]:
    """MNIST from local files: ``((X_train, y_train), (X_test, y_test))``.

    ``path`` is a directory with the four standard IDX files (gzipped or not) or an
    ``.npz`` with ``x_train, y_train, x_test, y_test``. X is flattened to ``(N, 784)``
    and scaled to [0, 1]; y is int64.

    >>> load_mnist("/nonexistent")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileNotFoundError: load_mnist: /nonexistent does not hold the MNIST files; ...
    """
    arrays = _mnist_arrays(Path(path))
    _check_mnist_arrays(arrays, Path(path))
    parts = []
    for split in ("train", "test"):
        images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
        _check_same_length(images, labels, f"load_mnist ({split})")
        X = images.reshape(len(images), -1).astype(dtype)
        X /= 255
        parts.append((X, labels.astype(np.int64)))
    return parts[0], parts[1]
