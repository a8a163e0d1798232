"""Build ``digits.npz`` (shipped with nn) from the copy of the UCI 8x8 digits inside scikit-learn.

Run once, from the repository root: ``python nn/datasets/build_digits.py``. Not part of the
package's code: ``nn.data.load_digits`` only reads the file this writes. Pixels are integer
counts 0..16, so they are stored as uint8 (115 kB raw, compressed in the archive).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

OUT = Path(__file__).resolve().parent / "digits.npz"


def main() -> None:
    bunch = load_digits()
    pixels, labels = bunch.data, bunch.target
    assert pixels.shape == (1797, 64) and labels.shape == (1797,)
    assert np.array_equal(pixels, np.round(pixels)) and pixels.min() >= 0 and pixels.max() <= 16
    assert set(np.unique(labels)) == set(range(10))
    np.savez_compressed(OUT, images=pixels.astype(np.uint8), labels=labels.astype(np.uint8))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
