"""Loaders on tiny data written in the real formats; cache; bad data; download."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_data_helpers import (
    CIFAR10_CLASSES,
    WNIDS,
    make_tar,
    write_cifar10_batches,
    write_cifar100_batches,
    write_imagenette,
    write_tree,
)

from caprobe.data import DATASETS, check_num_classes, load_dataset
from caprobe.data import download as dl
from caprobe.errors import CaprobeError, DataError


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def _load(name, data_dir, cache, **kw):
    return load_dataset(name, data_dir=data_dir, cache_dir=cache, **kw)


# ------------------------------------------------------------------------------------- loaders
def test_contract_names():
    assert DATASETS == ("positional", "cifar10", "cifar100", "imagenette")
    assert issubclass(DataError, CaprobeError)


def test_cifar10_pickle_batches_and_cache_hit(tmp_path, cache):
    ref = write_cifar10_batches(tmp_path / "c10")
    ds = _load("cifar10", tmp_path / "c10", cache)
    assert ds.classes == CIFAR10_CLASSES and ds.num_classes == 10 and ds.image_size == 32
    assert ds.train.images.dtype == torch.uint8 and ds.train.images.is_contiguous()
    assert ds.train.images.shape == (20, 3, 32, 32) and ds.test.images.shape == (4, 3, 32, 32)
    assert ds.train.labels.dtype == torch.int64
    assert torch.equal(ds.train.images.reshape(20, -1), torch.from_numpy(ref["train_x"]))
    assert ds.train.labels.tolist() == ref["train_y"] and ds.test.labels.tolist() == ref["test_y"]
    assert ds.augment == "crop_flip" and len(ds.checksum) == 64
    assert ds.info["cache"] == "built"
    again = _load("cifar10", tmp_path / "c10", cache)
    assert again.info["cache"] == "hit" and again.checksum == ds.checksum
    assert torch.equal(again.train.images, ds.train.images)
    # pointing at the batches folder itself works too
    assert _load("cifar10", tmp_path / "c10" / "cifar-10-batches-py", cache).checksum == ds.checksum


def test_cifar100_fine_and_coarse(tmp_path, cache):
    ref = write_cifar100_batches(tmp_path / "c100")
    fine = _load("cifar100", tmp_path / "c100", cache)
    coarse = _load("cifar100", tmp_path / "c100", cache, label="coarse")
    assert fine.num_classes == 100 and coarse.num_classes == 20
    assert fine.train.labels.tolist() == ref["train"][1]
    assert coarse.test.labels.tolist() == ref["test"][2]
    assert torch.equal(fine.train.images, coarse.train.images)
    assert fine.checksum != coarse.checksum
    with pytest.raises(DataError, match="label"):
        _load("cifar100", tmp_path / "c100", cache, label="medium")


def test_cifar10_from_downloaded_archive_in_folder(tmp_path, cache):
    write_cifar10_batches(tmp_path / "src")
    folder = tmp_path / "data"
    folder.mkdir()
    with __import__("tarfile").open(folder / "cifar-10-python.tar.gz", "w:gz") as tf:
        tf.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    ds = _load("cifar10", folder, cache)
    assert ds.train.images.shape[0] == 20 and "cifar-10-python.tar.gz" in ds.source


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_folder_tree_and_same_tree_in_tar(tmp_path, cache, ext):
    root = write_tree(tmp_path / "tree" / "cifar10-mini", ext=ext)
    ds = _load("cifar10", root, cache)
    assert ds.train.images.shape == (20, 3, 32, 32) and ds.test.images.shape == (10, 3, 32, 32)
    assert ds.train.labels.tolist() == [i // 2 for i in range(20)]
    if ext == "png":                     # lossless: pixels round-trip exactly
        from PIL import Image

        first = np.array(Image.open(root / "train" / "airplane" / "0000.png"))
        assert torch.equal(ds.train.images[0], torch.from_numpy(first).permute(2, 0, 1))
    tar = make_tar(tmp_path / "tree" / "cifar10-mini", tmp_path / "mini.tar", "cifar10-mini")
    from_tar = _load("cifar10", tar, cache)
    assert torch.equal(from_tar.train.images, ds.train.images)
    assert torch.equal(from_tar.test.labels, ds.test.labels)
    assert from_tar.checksum == ds.checksum          # content hash, not container hash
    assert from_tar.source.startswith(str(tar))


def test_imagenette_grayscale_and_odd_sizes(tmp_path, cache):
    root = write_imagenette(tmp_path / "imagenette2")
    ds = _load("imagenette", tmp_path, cache, image_size=24)
    assert ds.train.images.shape == (20, 3, 24, 24) and ds.test.images.shape == (10, 3, 24, 24)
    assert ds.classes[0] == "tench" and ds.info["wnids"] == WNIDS
    assert ds.augment == "rrc_flip"
    gray = ds.train.images[0]                        # the grayscale JPEG became equal channels
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    tar = make_tar(root, tmp_path / "inette.tar", "imagenette2")
    assert torch.equal(_load("imagenette", tar, cache, image_size=24).train.images,
                       ds.train.images)


# --------------------------------------------------------------------------------------- cache
def _cache_file(ds) -> Path:
    return Path(ds.info["cache_file"])


def test_truncated_cache_is_rebuilt(tmp_path, cache):
    write_cifar10_batches(tmp_path / "c10")
    ds = _load("cifar10", tmp_path / "c10", cache)
    f = _cache_file(ds)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    again = _load("cifar10", tmp_path / "c10", cache)
    assert again.info["cache"].startswith("rebuilt (corrupt")
    assert torch.equal(again.train.images, ds.train.images)
    assert _load("cifar10", tmp_path / "c10", cache).info["cache"] == "hit"


def test_flipped_byte_in_cache_is_detected(tmp_path, cache):
    write_cifar10_batches(tmp_path / "c10")
    ds = _load("cifar10", tmp_path / "c10", cache)
    f = _cache_file(ds)
    raw = bytearray(f.read_bytes())
    needle = ds.train.images[3].flatten()[:16].numpy().tobytes()    # inside the pixel data
    pos = bytes(raw).find(needle)
    assert pos > 0
    raw[pos] ^= 0xFF
    f.write_bytes(bytes(raw))
    again = _load("cifar10", tmp_path / "c10", cache)
    assert again.info["cache"] == "rebuilt (corrupt (checksum))"
    assert torch.equal(again.train.images, ds.train.images)


def test_changed_source_misses_the_cache(tmp_path, cache):
    root = write_tree(tmp_path / "tree", ext="png")
    ds = _load("cifar10", root, cache)
    victim = root / "train" / "cat" / "0000.png"
    shutil.copy(root / "train" / "dog" / "0000.png", victim)
    again = _load("cifar10", root, cache)
    assert again.info["cache"] == "built" and again.checksum != ds.checksum


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    write_cifar10_batches(tmp_path / "c10")
    monkeypatch.setenv("CAPROBE_CACHE", str(tmp_path / "envcache"))
    ds = load_dataset("cifar10", data_dir=tmp_path / "c10")
    assert _cache_file(ds).is_relative_to(tmp_path / "envcache")


# ------------------------------------------------------------------------------------ bad data
def test_missing_folder_says_where_and_what(tmp_path, cache):
    with pytest.raises(DataError) as err:
        _load("cifar10", tmp_path / "nowhere", cache)
    msg = str(err.value)
    assert str(tmp_path / "nowhere") in msg and "train/<class>" in msg and "--download" in msg
    assert "\n" not in msg


def test_default_data_dir_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPROBE_DATA", str(tmp_path / "d"))
    with pytest.raises(DataError, match=str(tmp_path / "d" / "imagenette")):
        load_dataset("imagenette", cache_dir=tmp_path)


def test_wrong_layout(tmp_path, cache):
    (tmp_path / "x" / "stuff").mkdir(parents=True)
    (tmp_path / "x" / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match=r"no CIFAR-10 layout found .*stuff/"):
        _load("cifar10", tmp_path / "x", cache)


def test_images_directly_in_split_folder(tmp_path, cache):
    root = write_tree(tmp_path / "t")
    shutil.copy(root / "train" / "cat" / "0000.png", root / "train" / "loose.png")
    with pytest.raises(DataError, match=r"holds images directly .*train/<class>"):
        _load("cifar10", root, cache)


def test_empty_class(tmp_path, cache):
    root = write_tree(tmp_path / "t")
    for f in (root / "test" / "frog").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"class folder .*test/frog has no images"):
        _load("cifar10", root, cache)


def test_empty_class_inside_tar(tmp_path, cache):
    root = write_tree(tmp_path / "t")
    for f in (root / "train" / "ship").iterdir():
        f.unlink()
    tar = make_tar(root, tmp_path / "t.tar", "t")
    with pytest.raises(DataError, match=r"t\.tar:t/train/ship has no images"):
        _load("cifar10", tar, cache)


def test_truncated_image_named(tmp_path, cache):
    root = write_tree(tmp_path / "t", ext="jpg")
    bad = root / "train" / "deer" / "0001.jpg"
    bad.write_bytes(bad.read_bytes()[:60])
    with pytest.raises(DataError) as err:
        _load("cifar10", root, cache)
    assert str(bad) in str(err.value) and "unreadable" in str(err.value)
    assert not list((cache / "datasets").glob("*.pt")) if (cache / "datasets").exists() else True


def test_label_out_of_range(tmp_path, cache):
    import pickle

    write_cifar10_batches(tmp_path / "c10")
    f = tmp_path / "c10" / "cifar-10-batches-py" / "data_batch_3"
    batch = pickle.loads(f.read_bytes(), encoding="bytes")
    batch[b"labels"][1] = 10
    f.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match=r"label 10 in .*data_batch_3 is out of range"):
        _load("cifar10", tmp_path / "c10", cache)


def test_truncated_pickle_batch(tmp_path, cache):
    write_cifar10_batches(tmp_path / "c10")
    f = tmp_path / "c10" / "cifar-10-batches-py" / "test_batch"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(DataError, match=r"cannot read CIFAR batch .*test_batch"):
        _load("cifar10", tmp_path / "c10", cache)


def test_pickle_with_foreign_globals_is_refused(tmp_path, cache):
    import pickle

    write_cifar10_batches(tmp_path / "c10")
    f = tmp_path / "c10" / "cifar-10-batches-py" / "batches.meta"
    f.write_bytes(pickle.dumps({b"label_names": [Path("x")]}))
    with pytest.raises(DataError, match="not allowed"):
        _load("cifar10", tmp_path / "c10", cache)


def test_class_count_mismatch(tmp_path, cache):
    root = write_tree(tmp_path / "t", classes=CIFAR10_CLASSES[:9])
    with pytest.raises(DataError, match="expects 10 class folders but .*train has 9"):
        _load("cifar10", root, cache)
    ds = _load("cifar10", write_tree(tmp_path / "u"), cache)
    check_num_classes(ds, 10)
    with pytest.raises(DataError, match="1000 outputs .* 10 classes"):
        check_num_classes(ds, 1000)


def test_train_test_class_mismatch(tmp_path, cache):
    root = write_tree(tmp_path / "t")
    (root / "test" / "truck").rename(root / "test" / "lorry")
    with pytest.raises(DataError, match="only in train: truck; only in test: lorry"):
        _load("cifar10", root, cache)


def test_unknown_name_and_option(tmp_path):
    with pytest.raises(DataError, match="valid: positional, cifar10, cifar100, imagenette"):
        load_dataset("mnist")
    with pytest.raises(DataError, match="valid options: difficulty"):
        load_dataset("positional", colour="red")
    with pytest.raises(DataError, match="valid options: none"):
        load_dataset("cifar10", data_dir=tmp_path, label="fine")


# ------------------------------------------------------------------------------------ download
def _remote_for(archive: Path, **over) -> dl.Remote:
    raw = archive.read_bytes()
    fields = dict(url=archive.as_uri(), filename="cifar-10-python.tar.gz",
                  md5=hashlib.md5(raw).hexdigest(), sha256=hashlib.sha256(raw).hexdigest())
    fields.update(over)
    return dl.Remote(**fields)


def _archive(tmp_path: Path) -> Path:
    import tarfile

    write_cifar10_batches(tmp_path / "src")
    archive = tmp_path / "served.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return archive


def test_download_verified_then_loaded(tmp_path, monkeypatch, cache):
    archive = _archive(tmp_path)
    monkeypatch.setitem(dl.REMOTES, "cifar10", _remote_for(archive))
    with pytest.raises(DataError, match="--download"):
        _load("cifar10", tmp_path / "dl", cache)
    ds = _load("cifar10", tmp_path / "dl", cache, download=True)
    assert (tmp_path / "dl" / "cifar-10-python.tar.gz").is_file()
    assert ds.train.images.shape[0] == 20
    assert _load("cifar10", tmp_path / "dl", cache).checksum == ds.checksum   # no re-download


def test_download_checksum_mismatch_deletes_file(tmp_path, monkeypatch, cache):
    archive = _archive(tmp_path)
    monkeypatch.setitem(dl.REMOTES, "cifar10", _remote_for(archive, sha256="0" * 64))
    with pytest.raises(DataError, match="failed verification .*sha256"):
        _load("cifar10", tmp_path / "dl", cache, download=True)
    assert not any((tmp_path / "dl").iterdir())


def test_download_unreachable(tmp_path):
    remote = dl.Remote(url=(tmp_path / "absent.tgz").as_uri(), filename="a.tgz")
    with pytest.raises(DataError, match="download of .* failed"):
        dl.fetch(remote, tmp_path / "dl")


def test_published_checksums_pinned():
    assert dl.REMOTES["cifar10"].md5 == "c58f30108f718f92721af3b95e74349a"
    assert dl.REMOTES["cifar100"].md5 == "eb9058c3a382ffc7106e4002c42a8d85"
    assert dl.REMOTES["imagenette"].md5 is None and "no checksum" in dl.REMOTES["imagenette"].note


def test_imagenette_from_compressed_tar(tmp_path, cache):
    import tarfile

    root = write_imagenette(tmp_path / "imagenette2-160")
    plain = _load("imagenette", root, cache, image_size=20)
    with tarfile.open(tmp_path / "imagenette2-160.tgz", "w:gz") as tf:
        tf.add(root, arcname="imagenette2-160")
    packed = _load("imagenette", tmp_path / "imagenette2-160.tgz", cache, image_size=20)
    assert torch.equal(packed.train.images, plain.train.images)
    assert packed.checksum == plain.checksum
    assert packed.train.images.untyped_storage().nbytes() == packed.train.images.numel()


def test_truncated_or_foreign_archive(tmp_path, cache):
    root = write_tree(tmp_path / "t")
    tar = make_tar(root, tmp_path / "t.tar", "t")
    tar.write_bytes(tar.read_bytes()[:5000])
    with pytest.raises(DataError, match=r"t\.tar"):
        _load("cifar10", tar, cache)
    junk = tmp_path / "data.zip"
    junk.write_bytes(b"PK\x03\x04 not a tar")
    with pytest.raises(DataError, match=r"cannot read archive .*data\.zip"):
        _load("cifar10", junk, cache)
