"""Data pipeline: embedded MNIST splits and iterator, TFDS datasets under mock_data, offline failures."""

import collections
import re
import socket
import subprocess
import sys
import time

import chex
import numpy as np
import pytest

from dale_langevin import GBM, VESDE
from dale_langevin.pipeline import data

TFDS_NAMES = ("mnist", "fashion_mnist", "kmnist", "cifar10")
IDENTITY = lambda u: u


def _row_keys(images_u8: np.ndarray, labels: np.ndarray) -> list[bytes]:
    """One hashable key per example (pixels + label), to count visits."""
    return [im.tobytes() + int(lab).to_bytes(1, "little") for im, lab in zip(images_u8, labels)]


def _epoch_keys(it, n_batches: int) -> list[bytes]:
    """Keys of every example in the next ``n_batches`` batches of an identity-encoded iterator."""
    keys = []
    for _ in range(n_batches):
        b = next(it)
        pixels = np.rint(b["images"] * 255.0).astype(np.uint8)
        keys += _row_keys(pixels, b["labels"])
    return keys


# -- registry ------------------------------------------------------------------------------------


def test_specs_and_unknown_dataset():
    assert set(data.DATASETS) == {"embedded_mnist", *TFDS_NAMES}
    assert data.get_spec("embedded_mnist").tfds_name is None
    assert data.image_shape("cifar10") == (32, 32, 3)
    for name in ("mnist", "fashion_mnist", "kmnist"):
        spec = data.get_spec(name)
        assert (spec.tfds_name, spec.image_shape, spec.num_classes) == (name, (28, 28, 1), 10)
    with pytest.raises(ValueError, match=r"config\.data\.dataset") as info:
        data.get_spec("imagenet")
    assert "imagenet" in str(info.value) and "fashion_mnist" in str(info.value)


# -- embedded MNIST ------------------------------------------------------------------------------


def test_embedded_arrays():
    images, labels = data.load_embedded_mnist()
    chex.assert_shape(images, (5000, 28, 28, 1))
    chex.assert_shape(labels, (5000,))
    assert images.dtype == np.uint8 and labels.dtype == np.int32
    assert images.min() == 0 and images.max() == 255
    np.testing.assert_array_equal(np.bincount(labels), np.full(10, 500))
    assert not images.flags.writeable and not labels.flags.writeable
    assert data.load_embedded_mnist()[0] is images  # cached
    assert len(set(_row_keys(images, labels))) == 5000  # all distinct, so keys identify examples


def test_embedded_splits_balanced_and_disjoint():
    xtr, ytr = data.load_arrays("embedded_mnist", "train")
    xte, yte = data.load_arrays("embedded_mnist", "test")
    chex.assert_shape(xtr, (4500, 28, 28, 1))
    chex.assert_shape(xte, (500, 28, 28, 1))
    assert ytr.dtype == yte.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(ytr), np.full(10, 450))
    np.testing.assert_array_equal(np.bincount(yte), np.full(10, 50))
    train, test = set(_row_keys(xtr, ytr)), set(_row_keys(xte, yte))
    assert not train & test
    assert train | test == set(_row_keys(*data.load_embedded_mnist()))
    x5, y5 = data.load_arrays("embedded_mnist", "test", max_examples=5)
    np.testing.assert_array_equal(x5, xte[:5])
    np.testing.assert_array_equal(y5, yte[:5])
    with pytest.raises(ValueError, match="validation"):
        data.load_arrays("embedded_mnist", "validation")


@pytest.mark.parametrize("sde, lo, hi", [(GBM(), 1.0, 2.0), (VESDE(), -1.0, 1.0)])
def test_embedded_batches_shapes_and_encode(sde, lo, hi):
    it = data.train_batches("embedded_mnist", global_batch=64, encode=sde.encode)
    for _ in range(3):
        b = next(it)
        chex.assert_shape(b["images"], (64, 28, 28, 1))
        chex.assert_shape(b["labels"], (64,))
        assert b["images"].dtype == np.float32 and b["labels"].dtype == np.int32
        assert b["images"].min() >= lo and b["images"].max() <= hi
        # Digits have both background and full ink, so the encoded range is reached at both ends.
        np.testing.assert_allclose([b["images"].min(), b["images"].max()], [lo, hi], atol=1e-6)
        assert set(np.unique(b["labels"])) <= set(range(10))


def _first(n: int, **kwargs) -> list[dict]:
    it = data.train_batches("embedded_mnist", encode=IDENTITY, **kwargs)
    return [next(it) for _ in range(n)]


def test_embedded_batches_deterministic_per_seed():
    a, b, c = _first(4, global_batch=32, seed=0), _first(4, global_batch=32, seed=0), _first(1, global_batch=32, seed=1)
    for x, y in zip(a, b):
        chex.assert_trees_all_equal(x, y)
    assert not np.array_equal(a[0]["images"], c[0]["images"])


def test_embedded_epochs_visit_each_train_example_once():
    it = data.train_batches("embedded_mnist", global_batch=100, encode=IDENTITY, seed=3)
    want = collections.Counter(_row_keys(*data.load_arrays("embedded_mnist", "train")))
    epoch1, epoch2 = _epoch_keys(it, 45), _epoch_keys(it, 45)  # 4500 / 100
    assert collections.Counter(epoch1) == want
    assert collections.Counter(epoch2) == want
    assert epoch1 != epoch2  # a fresh permutation each epoch


def test_processes_read_disjoint_slices_of_the_same_global_batches():
    """2 processes x 50 = the global batch of 1 process x 100, slice by slice; each example read by one process."""
    whole = _first(45, global_batch=100, seed=0)
    parts = [_first(45, global_batch=100, seed=0, process_index=p, process_count=2) for p in range(2)]
    for k in range(45):
        chex.assert_shape(parts[0][k]["images"], (50, 28, 28, 1))
        joined = {f: np.concatenate([parts[0][k][f], parts[1][k][f]]) for f in ("images", "labels")}
        chex.assert_trees_all_equal(joined, whole[k])
    shards = [_row_keys(np.rint(np.concatenate([b["images"] for b in part]) * 255).astype(np.uint8),
                        np.concatenate([b["labels"] for b in part])) for part in parts]  # fmt: skip
    assert len(set(shards[0])) == len(set(shards[1])) == 2250
    assert not set(shards[0]) & set(shards[1])


def test_a_late_start_gives_the_same_batches_in_constant_time():
    stream = _first(7, global_batch=64, seed=5)
    chex.assert_trees_all_equal(_first(2, global_batch=64, seed=5, start=5), stream[5:])
    chex.assert_trees_all_equal(_first(1, global_batch=64, seed=5, start=3, read_threads=0), stream[3:4])

    def first_batch_seconds(start: int) -> float:
        t = time.perf_counter()
        next(data.train_batches("embedded_mnist", global_batch=64, encode=IDENTITY, seed=5, start=start))
        return time.perf_counter() - t

    first_batch_seconds(0)  # warm: the embedded file, Grain's imports
    early = min(first_batch_seconds(100) for _ in range(3))
    late = min(first_batch_seconds(10_000_000) for _ in range(3))  # a replay would take hours
    assert late < 10 * early + 0.5, (early, late)


def test_bad_batch_arguments(raises_naming):
    kw = dict(encode=IDENTITY)
    with raises_naming("global_batch"):
        data.train_batches("embedded_mnist", global_batch=0, **kw)
    with pytest.raises(ValueError, match="process_index=3"):
        data.train_batches("embedded_mnist", global_batch=9, process_index=3, process_count=3, **kw)
    with raises_naming("config.training.batch_size"):  # not divisible by the processes
        data.train_batches("embedded_mnist", global_batch=9, process_index=0, process_count=2, **kw)
    with raises_naming("config.training.batch_size"):  # more than the split
        data.train_batches("embedded_mnist", global_batch=4600, **kw)
    with raises_naming("start"):
        data.train_batches("embedded_mnist", global_batch=8, start=-1, **kw)
    with raises_naming("config.data.read_threads"):
        data.train_batches("embedded_mnist", global_batch=8, read_threads=-1, **kw)
    with raises_naming("config.data.dataset"):
        data.train_batches("svhn", global_batch=8, **kw)


def test_embedded_path_does_not_import_tensorflow():
    code = (
        "import sys; from dale_langevin.pipeline import data; "
        "next(data.train_batches('embedded_mnist', global_batch=8, encode=lambda u: u)); "
        "data.load_arrays('embedded_mnist', 'test'); "
        "assert 'tensorflow' not in sys.modules and 'tensorflow_datasets' not in sys.modules, 'TF imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_math_layer_imports_no_tensorflow_flax_or_orbax():
    code = (
        "import sys; import dale_langevin; "
        "heavy = [m for m in ('tensorflow', 'flax', 'orbax', 'tensorflow_datasets') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- TFDS (faked by mock_data: this machine has no network) ----------------------------------------


@pytest.fixture(scope="module")
def tfds():
    tfds = pytest.importorskip("tensorflow_datasets")
    return tfds


@pytest.mark.parametrize("name", TFDS_NAMES)
def test_tfds_iterator_and_arrays_under_mock(tfds, name, tmp_path):
    spec = data.get_spec(name)
    with tfds.testing.mock_data(num_examples=40):
        it = data.train_batches(
            name, global_batch=16, encode=GBM().encode, data_dir=str(tmp_path), process_index=1, process_count=2
        )
        for _ in range(6):  # past one pass of the 40 examples: repeat works
            b = next(it)
            chex.assert_shape(b["images"], (8, *spec.image_shape))
            chex.assert_shape(b["labels"], (8,))
            assert b["images"].dtype == np.float32 and b["labels"].dtype == np.int32
            assert 1.0 <= b["images"].min() and b["images"].max() <= 2.0
            assert 0 <= b["labels"].min() and b["labels"].max() < spec.num_classes

        images, labels = data.load_arrays(name, "test", data_dir=str(tmp_path))
        chex.assert_shape(images, (40, *spec.image_shape))
        chex.assert_shape(labels, (40,))
        assert images.dtype == np.uint8 and labels.dtype == np.int32
        assert 0 <= labels.min() and labels.max() < spec.num_classes
        assert images.max() > images.min()  # real (fake) pixels, not zeros
        few, few_labels = data.load_arrays(name, "train", data_dir=str(tmp_path), max_examples=7)
        chex.assert_shape(few, (7, *spec.image_shape))
        chex.assert_shape(few_labels, (7,))


def _check_unavailable(err: data.DataUnavailableError, name: str, data_dir: str) -> None:
    msg = str(err)
    for needle in (name, "data_dir", data_dir, f"tfds build {name}", "--config.data.data_dir", "configs/demo.py"):
        assert needle in msg, f"{needle!r} missing from: {msg}"
    assert err.__cause__ is not None


@pytest.mark.parametrize("name, download", [("mnist", True), ("cifar10", False)])
def test_offline_unprepared_fails_fast(tfds, name, download, tmp_path, monkeypatch):
    del tfds  # only to skip without TFDS

    def offline(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    # This machine is offline already; blocking name resolution keeps the test offline anywhere.
    monkeypatch.setattr(socket, "getaddrinfo", offline)
    monkeypatch.setattr(data.urllib.request, "getproxies", lambda: {})
    start = time.monotonic()
    with pytest.raises(data.DataUnavailableError) as info:
        data.train_batches(name, global_batch=8, encode=IDENTITY, data_dir=str(tmp_path), download=download)
    with pytest.raises(data.DataUnavailableError):
        data.load_arrays(name, data_dir=str(tmp_path), download=download)
    assert time.monotonic() - start < 15.0
    _check_unavailable(info.value, name, str(tmp_path))


def test_unreachable_host_is_detected_before_downloading(tfds, tmp_path, monkeypatch):
    # Whatever this machine's TFDS can do, pretend the data live on a host that cannot resolve.
    monkeypatch.setattr(data, "_download_urls", lambda builder: ["https://dale-langevin-test.invalid/d.gz"])
    monkeypatch.setattr(data.urllib.request, "getproxies", lambda: {})

    def no_download(*args, **kwargs):
        raise AssertionError("download_and_prepare must not run when the host is unreachable")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_download)
    start = time.monotonic()
    with pytest.raises(data.DataUnavailableError, match="dale-langevin-test.invalid") as info:
        data.load_arrays("kmnist", data_dir=str(tmp_path))
    assert time.monotonic() - start < 15.0
    _check_unavailable(info.value, "kmnist", str(tmp_path))
    assert isinstance(info.value.__cause__, OSError)


def test_failed_download_becomes_unavailable(tfds, tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_download_urls", lambda builder: [])
    monkeypatch.setattr(data, "unreachable_host", lambda urls: None)

    def broken_download(*args, **kwargs):
        raise ConnectionError("Max retries exceeded")  # what requests raises after its retries

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", broken_download)
    with pytest.raises(data.DataUnavailableError, match="Max retries exceeded") as info:
        data.load_arrays("fashion_mnist", data_dir=str(tmp_path))
    _check_unavailable(info.value, "fashion_mnist", str(tmp_path))


# -- a prepared TFDS directory, written from the embedded digits (what a TPU VM reads from a bucket) -


@pytest.fixture(scope="module")
def prepared(tfds, tmp_path_factory):
    """``data_dir`` holding the embedded digits as TFDS ``mnist`` 3.0.1 in ArrayRecord files."""
    data_dir = tmp_path_factory.mktemp("tfds_prepared")
    data.write_embedded_as_tfds(str(data_dir), "mnist")
    return str(data_dir)


def test_training_batches_from_a_prepared_tfds_directory(prepared):
    assert data.load_arrays("mnist", "train", data_dir=prepared, download=False)[0].shape == (4500, 28, 28, 1)
    for split in ("train", "test"):  # the same examples as the embedded split, in TFDS's file order
        want = collections.Counter(_row_keys(*data.load_arrays("embedded_mnist", split)))
        assert collections.Counter(_row_keys(*data.load_arrays("mnist", split, data_dir=prepared))) == want
    parts = [
        data.train_batches(
            "mnist",
            global_batch=100,
            encode=IDENTITY,
            data_dir=prepared,
            download=False,
            process_index=p,
            process_count=2,
        )
        for p in range(2)
    ]
    shards = [_epoch_keys(it, 45) for it in parts]  # one epoch: 45 global batches of 100
    assert not set(shards[0]) & set(shards[1])
    assert collections.Counter(shards[0] + shards[1]) == collections.Counter(
        _row_keys(*data.load_arrays("embedded_mnist", "train"))
    )


def test_reading_a_prepared_directory_imports_no_tensorflow(prepared):
    code = (
        "import sys; from dale_langevin.pipeline import data; "
        f"it = data.train_batches('mnist', global_batch=8, encode=lambda u: u, data_dir={prepared!r}, download=False); "
        "next(it); assert 'tensorflow' not in sys.modules, 'TF imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_without_tensorflow_training_reads_and_what_needs_it_names_the_install(prepared, tmp_path):
    """TensorFlow is the ``[tf]`` extra: an import of it that fails is what an environment without it sees."""
    code = f"""
import importlib.abc, sys
class NoTensorFlow(importlib.abc.MetaPathFinder):  # import tensorflow(.*) fails as where it is not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, NoTensorFlow())
from dale_langevin.pipeline import data, workdir
from dale_langevin.evaluation import inception
print("batch", next(data.train_batches("mnist", global_batch=8, encode=lambda u: u, data_dir={prepared!r},
                                       download=False))["images"].shape)
writer = workdir.TensorBoardScalars(workdir.Workdir({str(tmp_path)!r}).tensorboard)
writer.scalar("loss", 1.0, 1)
writer.close()
calls = {{
    "prepare": lambda: data.write_embedded_as_tfds({str(tmp_path / "w")!r}),
    "download": lambda: data.load_arrays("kmnist", "train", data_dir={str(tmp_path / "none")!r}),
    "inception": lambda: inception.load_inception(None, url=None, cache_dir={str(tmp_path / "cache")!r}),
}}
for name, call in calls.items():
    try:
        call()
    except Exception as err:
        print(name, type(err).__name__, str(err).replace("\\n", " "))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "batch (8, 28, 28, 1)" in out, out
    assert list((tmp_path / "tensorboard").iterdir()), "no event file"
    install = re.escape(data.TF_INSTALL)
    assert re.search(rf"^prepare ImportError TensorFlow is needed to write a prepared TFDS set .*{install}", out, re.M)
    assert re.search(
        rf"^download DataUnavailableError dataset 'kmnist' .*TensorFlow is needed to download and prepare a TFDS set"
        rf".*{install}",
        out,
        re.M,
    ), out
    assert re.search(
        rf"^inception InceptionUnavailableError TensorFlow is needed to run the Inception-V3 graph .*{install}.*"
        r"--config\.eval\.inception=off",
        out,
        re.M,
    ), out


def test_a_directory_without_the_set_is_named(prepared):
    with pytest.raises(data.DataUnavailableError) as info:
        data.train_batches("kmnist", global_batch=8, encode=IDENTITY, data_dir=prepared, download=False)
    _check_unavailable(info.value, "kmnist", prepared)


def test_a_tfrecord_directory_is_read_by_tf_data_and_refused_for_training_with_the_fix(tfds, tmp_path):
    data.write_embedded_as_tfds(str(tmp_path), "fashion_mnist", file_format="tfrecord")
    images, labels = data.load_arrays("fashion_mnist", "test", data_dir=str(tmp_path), download=False)
    want = collections.Counter(_row_keys(*data.load_arrays("embedded_mnist", "test")))
    assert collections.Counter(_row_keys(images, labels)) == want
    with pytest.raises(data.DataUnavailableError, match="--file_format=array_record") as info:
        data.train_batches("fashion_mnist", global_batch=8, encode=IDENTITY, data_dir=str(tmp_path), download=False)
    assert "tfds convert_format" in str(info.value)
