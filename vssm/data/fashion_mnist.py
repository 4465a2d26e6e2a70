"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (IDX files, gzip-compressed)."""
from __future__ import annotations

import gzip
import os
import struct
from typing import Tuple

import numpy as np

__all__ = ["FASHION_MNIST_DIR", "FASHION_MNIST_CLASSES", "read_fashion_mnist"]

FASHION_MNIST_DIR = os.environ.get("VSSM_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _read_idx(path: str, expected_dims: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08 or data[3] != expected_dims:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes with {expected_dims} dims")
    shape = struct.unpack(">" + "I" * expected_dims, data[4 : 4 + 4 * expected_dims])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * expected_dims)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: {body.size} bytes of data for shape {shape}")
    return body.reshape(shape).copy()  # writable, so torch.from_numpy can share it


def read_fashion_mnist(split: str = "train", root: str = FASHION_MNIST_DIR) -> Tuple[np.ndarray, np.ndarray]:
    """(images uint8 (n, 28, 28), labels int64 (n,)) of the "train" (60k) or "test" (10k) split."""
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    image_file, label_file = (os.path.join(root, name) for name in _FILES[split])
    for path in (image_file, label_file):
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"Fashion-MNIST file {path} not found. Install the data with `make data` "
                f"(Debian package dataset-fashion-mnist) or set VSSM_FASHION_MNIST_DIR to a folder holding the IDX files."
            )
    images = _read_idx(image_file, 3)
    labels = _read_idx(label_file, 1).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"Fashion-MNIST {split}: {len(images)} images but {len(labels)} labels")
    return images, labels
