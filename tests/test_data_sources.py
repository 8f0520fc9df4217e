"""Every source format, on small files written in exactly that format, plus the embedded and
synthetic sets, the crops and the dedup."""

from __future__ import annotations

import gzip
import io
import socket
import struct

import numpy as np
import pytest
from PIL import Image

from probe.artifacts import Artifacts
from probe.config import DataConfig
from probe.data import synthetic
from probe.data.prepare import prepare
from probe.data.sources import EMBEDDED, PARTITIONS, open_source
from probe.errors import ProbeError


def _prepare(tmp_path, **kw):
    return prepare(DataConfig(**kw), Artifacts.at(tmp_path / "artifacts"), log=lambda m: None)


def _keys(prepared) -> list[str]:
    return (prepared.directory / "keys.txt").read_text().splitlines()


def _decoded(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


# ----------------------------------------------------------------------------------- CelebA


def _celeba_codes(root) -> list[int]:
    return [int(line.split()[1]) for line in
            (root / "list_eval_partition.txt").read_text().splitlines()]


def test_celeba_partitions_are_honoured(tmp_path, data_celeba_root):
    codes = _celeba_codes(data_celeba_root)
    assert set(codes) == {0, 1, 2}
    p = _prepare(tmp_path, dataset="celeba", root=str(data_celeba_root), size=16, crop="dit")
    keys = _keys(p)
    assert keys == [f"img_align_celeba/{i:06d}.jpg" for i in range(1, len(codes) + 1)]
    assert p.partition.tolist() == list(codes)
    assert p.manifest["partitions"] == {
        name: codes.count(code) for code, name in enumerate(PARTITIONS)}
    assert p.images.shape == (len(codes), 16, 16, 3)
    assert p.images.dtype == np.uint8


def test_celeba_dit_crop_is_centre_140(tmp_path, data_celeba_root):
    files = sorted((data_celeba_root / "img_align_celeba").glob("*.jpg"))
    # At 140 px nothing is resized: the output is exactly the centred 140 square.
    p = _prepare(tmp_path, dataset="celeba", root=str(data_celeba_root), size=140, crop="dit")
    for i in (0, 5):
        want = _decoded(files[i])[39:179, 19:159]
        np.testing.assert_array_equal(p.images[i], want)
    # At 35 px it is that square, box-reduced by 4 (two rounded 2x reductions: within 1).
    p = _prepare(tmp_path, dataset="celeba", root=str(data_celeba_root), size=35, crop="dit")
    for i in (0, 5):
        want = _decoded(files[i])[39:179, 19:159].astype(float)
        want = want.reshape(35, 4, 35, 4, 3).mean(axis=(1, 3))
        assert np.abs(p.images[i] - want).max() <= 1.0


def test_celeba_kadkhodaie_crop_and_gray_mean(tmp_path, data_celeba_root):
    files = sorted((data_celeba_root / "img_align_celeba").glob("*.jpg"))
    p = _prepare(tmp_path, dataset="celeba", root=str(data_celeba_root), size=160,
                 crop="kadkhodaie")
    want = _decoded(files[3])[29:-29, 9:-9]
    assert want.shape == (160, 160, 3)
    np.testing.assert_array_equal(p.images[3], want)
    gray = _prepare(tmp_path, dataset="celeba", root=str(data_celeba_root), size=160,
                    crop="kadkhodaie", channels=1)
    assert gray.images.shape == (len(files), 160, 160, 1)
    # Plain mean of R, G, B (not ITU luma weights).
    np.testing.assert_array_equal(gray.images[3, ..., 0],
                                  np.round(want.astype(np.float64).mean(axis=2)))
    luma = np.asarray(Image.fromarray(want).convert("L"))
    assert not np.array_equal(gray.images[3, ..., 0], luma)


def test_celeba_listed_file_missing(tmp_path, data_celeba_root):
    (data_celeba_root / "img_align_celeba" / "000002.jpg").unlink()
    with pytest.raises(ProbeError, match="000002.jpg"):
        _prepare(tmp_path, dataset="celeba", root=str(data_celeba_root))


# ------------------------------------------------------------------------------------- LSUN


def _write_lsun(root, images: dict[bytes, np.ndarray]):
    import lmdb

    root.mkdir(parents=True)
    env = lmdb.open(str(root), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for key, pixels in images.items():
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="WEBP", lossless=True)
            txn.put(key, buf.getvalue())
    env.close()


def test_lsun_lmdb_of_webp(tmp_path):
    rng = np.random.default_rng(3)
    images = {f"{k:040x}".encode(): rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
              for k in (7, 3, 11, 5)}
    _write_lsun(tmp_path / "bedroom_train_lmdb", images)
    p = _prepare(tmp_path, dataset="lsun", root=str(tmp_path / "bedroom_train_lmdb"), size=16)
    keys = _keys(p)
    assert keys == sorted(k.decode() for k in images)  # lmdb order
    assert p.partition.tolist() == [0] * 4
    for i, key in enumerate(keys):  # lossless webp, centre 16x16 of 24x16: no resize
        np.testing.assert_array_equal(p.images[i], images[key.encode()][:, 4:20])


def test_lsun_without_lmdb(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ProbeError, match="data.mdb"):
        open_source(DataConfig(dataset="lsun", root=str(tmp_path / "empty")))


# --------------------------------------------------------------------------------- ImageNet


def _write_imagenet(root, with_train_dir=True):
    rng = np.random.default_rng(4)
    layout = {"n01440764": 3, "n01443537": 2, "n01484850": 2}
    train = root / "train" if with_train_dir else root
    for wnid, count in layout.items():
        for part, base in (("train", train), ("val", root / "val")):
            (base / wnid).mkdir(parents=True, exist_ok=True)
            for j in range(count if part == "train" else 1):
                pixels = rng.integers(0, 256, (20, 26, 3), dtype=np.uint8)
                name = f"{wnid}_{j}.JPEG" if part == "train" else f"ILSVRC_val_{wnid}_{j}.JPEG"
                Image.fromarray(pixels).save(base / wnid / name)


def test_imagenet_folders_classes_and_val_as_test(tmp_path):
    root = tmp_path / "imagenet"
    _write_imagenet(root)
    p = _prepare(tmp_path, dataset="imagenet", root=str(root), size=8)
    keys, part = _keys(p), p.partition.tolist()
    assert len(keys) == 7 + 3
    assert all(k.startswith("train/") for k, c in zip(keys, part) if c == 0)
    assert sorted(k for k, c in zip(keys, part) if c == 2) == sorted(
        f"val/{w}/ILSVRC_val_{w}_0.JPEG" for w in ("n01440764", "n01443537", "n01484850"))

    only = _prepare(tmp_path, dataset="imagenet", root=str(root), size=8,
                    classes=("n01443537",))
    assert _keys(only) == ["train/n01443537/n01443537_0.JPEG", "train/n01443537/n01443537_1.JPEG",
                           "val/n01443537/ILSVRC_val_n01443537_0.JPEG"]
    assert only.partition.tolist() == [0, 0, 2]
    assert only.directory != p.directory

    with pytest.raises(ProbeError, match="n99999999"):
        _prepare(tmp_path, dataset="imagenet", root=str(root), classes=("n99999999",))


def test_imagenet_class_folders_in_root_keep_val_out_of_train(tmp_path):
    root = tmp_path / "imagenet"
    _write_imagenet(root, with_train_dir=False)
    source = open_source(DataConfig(dataset="imagenet", root=str(root)))
    train = [it.key for it in source.items if it.partition == "train"]
    test = [it.key for it in source.items if it.partition == "test"]
    assert len(train) == 7 and len(test) == 3
    assert not any(k.startswith("val/") for k in train)


# ------------------------------------------------------------------------------ plain folder


def test_folder_is_searched_recursively(tmp_path, data_image_folder):
    p = _prepare(tmp_path, dataset="folder", root=str(data_image_folder), size=12)
    assert _keys(p) == sorted(["a.png", "b.JPG", "sub/c.png", "sub/d.jpeg", "sub/deeper/e.png",
                               "f.bmp", "sub/g.webp", "h.png"])
    assert p.images.shape == (8, 12, 12, 3)
    assert p.manifest["partitions"] == {"train": 8, "valid": 0, "test": 0}
    # a.png is 40x48: the centred 40x40 square, resized to 12 (not a copy of another image)
    assert len({p.images[i].tobytes() for i in range(8)}) == 8


def test_folder_crop_none_squashes(tmp_path):
    root = tmp_path / "wide"
    root.mkdir()
    pixels = np.zeros((10, 20, 3), np.uint8)
    pixels[:, 10:] = 255  # right half white
    Image.fromarray(pixels).save(root / "x.png")
    squashed = _prepare(tmp_path, dataset="folder", root=str(root), size=10, crop="none")
    centre = _prepare(tmp_path, dataset="folder", root=str(root), size=10, crop="center")
    assert squashed.images[0, :, :3].max() < 30 and squashed.images[0, :, 7:].min() > 225
    np.testing.assert_array_equal(centre.images[0], pixels[:, 5:15])


# ----------------------------------------------------------------------------- fashion-mnist


def _write_idx(path, images: np.ndarray, compress: bool):
    data = struct.pack(">HBB", 0, 0x08, images.ndim) + struct.pack(
        f">{images.ndim}I", *images.shape) + images.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_idx_files(tmp_path, compress):
    rng = np.random.default_rng(5)
    train = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    root = tmp_path / "fmnist"
    root.mkdir()
    gz = ".gz" if compress else ""
    _write_idx(root / f"train-images-idx3-ubyte{gz}", train, compress)
    _write_idx(root / f"t10k-images-idx3-ubyte{gz}", test, compress)
    p = _prepare(tmp_path, dataset="fashion-mnist", root=str(root), size=28)
    assert p.images.shape == (10, 28, 28, 1)
    assert p.partition.tolist() == [0] * 7 + [2] * 3
    np.testing.assert_array_equal(p.images[:7, ..., 0], train)
    np.testing.assert_array_equal(p.images[7:, ..., 0], test)


def test_fashion_mnist_corrupt_idx(tmp_path):
    root = tmp_path / "fmnist"
    root.mkdir()
    _write_idx(root / "train-images-idx3-ubyte.gz", np.zeros((2, 28, 28), np.uint8), True)
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00"
                                                                   * 9))
    with pytest.raises(ProbeError, match="t10k-images-idx3-ubyte.gz"):
        _prepare(tmp_path, dataset="fashion-mnist", root=str(root))


# ----------------------------------------------------------------------------- embedded sets


@pytest.fixture
def data_no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("name", EMBEDDED)
def test_embedded_sets_load_offline(tmp_path, name, data_no_network):
    p = _prepare(tmp_path, dataset=name, size=16, count=12)
    expected = {"mnist": 5000, "lfw": 100, "digits": 1797}.get(name, 12)
    channels = 3 if name == "patches" else 1
    assert p.images.shape == (expected, 16, 16, channels)
    assert p.manifest["count"] == expected
    assert p.images[: min(expected, 200)].std() > 10  # real pictures, not blanks


# --------------------------------------------------------------------------------- synthetic


def test_disk_tangent_basis_is_5d_and_orthonormal():
    size = 24
    params = synthetic.disk_params(3, size, seed=7)
    for p in params:
        q = synthetic.disk_tangent_basis(p, size)
        assert q.shape == (size * size, 5)
        np.testing.assert_allclose(q.T @ q, np.eye(5), atol=1e-9)
        # It spans the manifold's tangent space: every small move along a parameter stays in
        # span(q) to first order, and all five directions are needed.
        base = synthetic.render_disks(p[None], size)[0].ravel()
        moves = []
        for i in range(5):
            step = np.zeros(5)
            step[i] = 1e-3
            move = synthetic.render_disks((p + step)[None], size)[0].ravel() - base
            residual = move - q @ (q.T @ move)
            assert np.linalg.norm(residual) < 1e-2 * np.linalg.norm(move)
            moves.append(move / np.linalg.norm(move))
        singular = np.linalg.svd(np.stack(moves, 1), compute_uv=False)
        assert singular.min() > 1e-2


def test_c_alpha_images_are_two_valued_away_from_the_boundary():
    size = 32
    images = synthetic.c_alpha(6, size, alpha=2.0, seed=3)
    assert images.shape == (6, size, size)
    assert images.min() >= 0 and images.max() <= 1
    for img in images:
        values, counts = np.unique(img, return_counts=True)
        a, b = sorted(values[np.argsort(counts)[-2:]])  # the two region intensities
        mixed = (img != a) & (img != b)
        assert mixed.mean() < 0.2  # a thin boundary
        assert np.all((img[mixed] > a) & (img[mixed] < b))  # area averages of the two
        # Away from the boundary (no mixed pixel in the 3x3 neighbourhood) only a and b occur.
        padded = np.pad(mixed, 1)
        near = np.zeros_like(mixed)
        for dy in range(3):
            for dx in range(3):
                near |= padded[dy : dy + size, dx : dx + size]
        far = img[~near]
        assert set(np.unique(far)) <= {a, b}
        assert far.size > size * size // 2
    # Without supersampling there is no boundary band at all: exactly two values.
    hard = synthetic.c_alpha(4, size, alpha=1.0, seed=3, supersample=1)
    assert all(len(np.unique(img)) == 2 for img in hard)


def test_synthetic_generators_are_deterministic_per_seed():
    np.testing.assert_array_equal(synthetic.disks(5, 16, seed=1), synthetic.disks(5, 16, seed=1))
    assert not np.array_equal(synthetic.disks(5, 16, seed=1), synthetic.disks(5, 16, seed=2))
    np.testing.assert_array_equal(synthetic.c_alpha(3, 16, 2.0, seed=4),
                                  synthetic.c_alpha(3, 16, 2.0, seed=4))
    assert not np.array_equal(synthetic.c_alpha(3, 16, 2.0, seed=4),
                              synthetic.c_alpha(3, 16, 2.0, seed=5))



@pytest.mark.parametrize("name", ["disks", "c-alpha", "patches"])
def test_generated_caches_are_deterministic_per_seed(tmp_path, name):
    def digest(seed, where):
        return _prepare(tmp_path / where, dataset=name, size=8, count=5,
                        generator_seed=seed).sha256

    assert digest(1, "x") == digest(1, "y")
    assert digest(1, "x") != digest(2, "x")


def test_patches_larger_than_small_photos(tmp_path):
    p = _prepare(tmp_path, dataset="patches", size=400, count=3)
    assert p.images.shape == (3, 400, 400, 3)
    with pytest.raises(ProbeError, match="larger than every shipped photo"):
        _prepare(tmp_path, dataset="patches", size=1200, count=3)


# ------------------------------------------------------------------------------------- dedup


def test_dedup_drops_planted_duplicates(tmp_path):
    root = tmp_path / "dups"
    root.mkdir()
    rng = np.random.default_rng(6)
    originals = [rng.integers(0, 256, (5, 5, 3), dtype=np.uint8) for _ in range(8)]
    for i, small in enumerate(originals):  # smooth-ish 40x40 images from random 5x5 seeds
        Image.fromarray(small).resize((40, 40), Image.BICUBIC).save(root / f"img{i}.png")
    # Plant: an exact copy, a JPEG re-encode, and a slightly brightened copy.
    (root / "img2_copy.png").write_bytes((root / "img2.png").read_bytes())
    Image.open(root / "img5.png").save(root / "img5_reencoded.jpg", quality=80)
    brighter = np.clip(np.asarray(Image.open(root / "img7.png"), np.int16) + 12, 0, 255)
    Image.fromarray(brighter.astype(np.uint8)).save(root / "img7_bright.png")

    full = _prepare(tmp_path, dataset="folder", root=str(root), size=16)
    assert full.manifest["count"] == 11
    deduped = _prepare(tmp_path, dataset="folder", root=str(root), size=16, dedup=0.95)
    kept = _keys(deduped)
    assert kept == [f"img{i}.png" for i in range(8)]
    assert deduped.images.shape == (8, 16, 16, 3)
    keys = _keys(full)
    for i, key in enumerate(kept):
        np.testing.assert_array_equal(deduped.images[i], full.images[keys.index(key)])
    assert deduped.partition.tolist() == [0] * 8


def test_image_too_small_for_the_crop_is_named(tmp_path):
    root = tmp_path / "small"
    root.mkdir()
    Image.fromarray(np.zeros((100, 120, 3), np.uint8)).save(root / "tiny.png")
    with pytest.raises(ProbeError, match="cannot crop image tiny.png.*140"):
        _prepare(tmp_path, dataset="folder", root=str(root), crop="dit")
    Image.fromarray(np.zeros((50, 120, 3), np.uint8)).save(root / "tiny.png")  # < 59 rows
    with pytest.raises(ProbeError, match="cannot crop image tiny.png.*kadkhodaie"):
        _prepare(tmp_path, dataset="folder", root=str(root), crop="kadkhodaie", size=8)
