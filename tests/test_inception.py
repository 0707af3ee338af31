"""Inception-V3 FID/KID: loading (.pb, .tgz, cache, download, offline), preprocessing, batching, eval.

The real graph (95 MB) cannot be fetched here, so a tiny stand-in with the same interface is built:
a JPEG placeholder decoded, cast and expanded to ``ExpandDims`` (batch 1, as in the real graph and
with its recorded batch-1 ``_output_shapes``), resized bilinearly, shifted and scaled like the real
graph, a 3x3 convolution to 2048 channels, the real graph's deprecated batch-norm op (GraphDef
producer version 5), a ReLU and an average pool named ``pool_3``.
"""

import functools
import http.server
import io
import json
import os
import pathlib
import shutil
import tarfile
import threading
import time
import urllib.request

import chex
import numpy as np
import pytest

from dale_langevin.evaluation import evaluate as evaluation, inception
from dale_langevin.pipeline import config as config_lib, data

ROOT = pathlib.Path(__file__).resolve().parents[1]
REFUSED_URL = "http://127.0.0.1:9/inception-2015-12-05.tgz"  # discard port: connection refused at once


def synthetic_graph_def(pool_name: str = "pool_3"):
    """A GraphDef with the Inception graph's input/output names, batch-1 static shapes and ~55k weights."""
    tf = inception._tf()
    rng = np.random.default_rng(0)
    graph = tf.Graph()
    with graph.as_default():
        contents = tf.compat.v1.placeholder(tf.string, [], name="DecodeJpeg/contents")
        decoded = tf.io.decode_jpeg(contents, channels=3, name="DecodeJpeg")
        x = tf.expand_dims(tf.cast(decoded, tf.float32, name="Cast"), 0, name="ExpandDims")
        x = tf.compat.v1.image.resize_bilinear(x, tf.constant([12, 12]), name="ResizeBilinear")
        x = tf.multiply(tf.subtract(x, 128.0, name="Sub"), 1.0 / 128.0, name="Mul")
        w = tf.constant(rng.normal(scale=0.3, size=(3, 3, 3, 2048)).astype(np.float32))
        conv = tf.nn.conv2d(x, w, 1, "VALID", name="conv")
        stats = [
            tf.constant(rng.uniform(0.5, 1.5, 2048).astype(np.float32), name=f"conv/{n}")
            for n in ("mean", "variance", "beta", "gamma")
        ]
        h = tf.nn.relu(tf.identity(conv, name="conv/batchnorm"))  # made a BatchNormWithGlobalNormalization below
        pool = tf.nn.avg_pool2d(h, 10, 1, "VALID", name=pool_name)
        tf.reshape(pool, [1, 2048], name=f"{pool_name}/_reshape")  # the real graph's batch-1 reshape
    graph_def = graph.as_graph_def(add_shapes=True)
    # The real graph's batch norm op, removed from GraphDef version 9 on, so only loadable with the
    # file's old producer version (which a tf.function would not keep).
    node = next(n for n in graph_def.node if n.name == "conv/batchnorm")
    node.op = "BatchNormWithGlobalNormalization"
    node.input[:] = ["conv"] + [t.op.name for t in stats]
    node.attr["variance_epsilon"].f = 1e-3
    node.attr["scale_after_normalization"].b = True
    graph_def.versions.producer = 5
    return graph_def


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """The stand-in graph as ``classify_image_graph_def.pb`` and inside a .tgz like the published one."""
    folder = tmp_path_factory.mktemp("inception")
    raw = synthetic_graph_def().SerializeToString()
    pb = folder / inception.GRAPH_FILE
    pb.write_bytes(raw)
    tgz = folder / "inception-2015-12-05.tgz"
    with tarfile.open(tgz, "w:gz") as archive:
        for name, payload in (("LICENSE", b"Apache 2.0"), (inception.GRAPH_FILE, raw)):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return {"pb": str(pb), "tgz": str(tgz), "bytes": raw}


@pytest.fixture(scope="module")
def net(weights):
    return inception.load_inception(weights["pb"], allow_download=False)


def direct_features(graph_def, images255: np.ndarray) -> np.ndarray:
    """Features from the unmodified graph in a TF1 session, one image at a time (as the TTUR code feeds it)."""
    tf = inception._tf()
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="g")
    with tf.compat.v1.Session(graph=graph) as sess:
        return np.concatenate([sess.run("g/pool_3:0", {"g/ExpandDims:0": im[None]}).reshape(1, -1) for im in images255])


def _images(n: int, channels: int, seed: int, size: int = 20) -> np.ndarray:
    return np.random.default_rng(seed).random((n, size, size, channels)).astype(np.float32)


def _assert_close_features(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())


def test_tgz_and_pb_load_the_same_network(weights, net):
    from_tgz = inception.load_inception(weights["tgz"], allow_download=False)
    x = _images(3, 1, seed=1)
    assert net.weights == weights["pb"] and from_tgz.weights == weights["tgz"]
    _assert_close_features(inception.inception_features(from_tgz, x), inception.inception_features(net, x))


def test_features_shape_dtype_and_batching(net):
    x = _images(7, 1, seed=2, size=28)
    batched = inception.inception_features(net, x, batch_size=3)  # batches of 3, 3, 1
    chex.assert_shape(batched, (7, inception.FEATURE_DIM))
    assert batched.dtype == np.float64 and np.all(np.isfinite(batched))
    assert np.std(batched, axis=0).mean() > 1e-3  # the features depend on the image
    _assert_close_features(inception.inception_features(net, x, batch_size=7), batched)
    _assert_close_features(inception.inception_features(net, x, batch_size=1), batched)


def test_preprocessing_matches_the_graph_fed_by_hand(weights, net):
    graph_def = synthetic_graph_def()
    gray = _images(3, 1, seed=3)
    by_hand = np.repeat(np.round(gray * 255.0), 3, axis=-1).astype(np.float32)
    _assert_close_features(inception.inception_features(net, gray), direct_features(graph_def, by_hand))
    rgb = _images(2, 3, seed=4)  # distinct channels keep their order
    _assert_close_features(inception.inception_features(net, rgb), direct_features(graph_def, np.round(rgb * 255.0)))
    levels = inception.to_rgb255(np.array([0.0, 0.5, 1.0], np.float32).reshape(1, 1, 3, 1))
    np.testing.assert_array_equal(levels[0, 0], [[0, 0, 0], [128, 128, 128], [255, 255, 255]])


@pytest.mark.parametrize(
    "images, match",
    [
        (np.full((2, 8, 8, 1), 1.5, np.float32), r"\[0, 1\]"),
        (np.full((2, 8, 8, 1), np.nan, np.float32), "finite"),
        (np.zeros((2, 8, 8, 2), np.float32), "C = 1 or 3"),
        (np.zeros((8, 8, 1), np.float32), "C = 1 or 3"),
    ],
)
def test_bad_images_raise(images, match):
    with pytest.raises(ValueError, match=match):
        inception.inception_features(lambda b: np.zeros((len(b), inception.FEATURE_DIM)), images)


def test_missing_weights_with_downloads_disabled(tmp_path):
    with pytest.raises(inception.InceptionUnavailableError) as err:
        inception.load_inception(None, cache_dir=str(tmp_path), allow_download=False)
    message = str(err.value)
    for needed in ("config.eval.inception_path", inception.DEFAULT_URL, str(tmp_path), inception.GRAPH_FILE):
        assert needed in message
    with pytest.raises(inception.InceptionUnavailableError, match="nope.tgz' is not a file"):
        inception.load_inception(str(tmp_path / "nope.tgz"), cache_dir=str(tmp_path))


def test_offline_download_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "getproxies", dict)  # probe the host itself, as offline users would
    start = time.perf_counter()
    with pytest.raises(inception.InceptionUnavailableError, match="cannot be fetched.*offline"):
        inception.load_inception(None, url=REFUSED_URL, cache_dir=str(tmp_path))
    assert time.perf_counter() - start < 10.0
    assert os.listdir(tmp_path) == []  # no partial file left


def test_not_an_inception_graph(tmp_path):
    other = tmp_path / "other.pb"
    other.write_bytes(synthetic_graph_def(pool_name="avgpool").SerializeToString())
    with pytest.raises(inception.InceptionUnavailableError, match="not the Inception graph: no node pool_3:0"):
        inception.load_inception(str(other))
    archive = tmp_path / "empty.tgz"
    with tarfile.open(archive, "w:gz"):
        pass
    with pytest.raises(inception.InceptionUnavailableError, match=f"holds no {inception.GRAPH_FILE}"):
        inception.load_inception(str(archive))


def test_damaged_archive(weights, tmp_path):
    truncated = tmp_path / "inception-2015-12-05.tgz"
    truncated.write_bytes(pathlib.Path(weights["tgz"]).read_bytes()[:-4000])
    with pytest.raises(inception.InceptionUnavailableError, match="is damaged"):
        inception.load_inception(str(truncated))


def test_download_is_cached(weights, tmp_path, monkeypatch):
    """Served from a local HTTP server: fetched once into the cache, then read from there offline."""
    monkeypatch.setattr(urllib.request, "getproxies", dict)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=os.path.dirname(weights["tgz"]))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/inception-2015-12-05.tgz"
        fetched = inception.load_inception(None, url=url, cache_dir=str(tmp_path / "cache"))
    finally:
        server.shutdown()
        server.server_close()
    cached = str(tmp_path / "cache" / inception.GRAPH_FILE)
    assert fetched.weights == cached and os.listdir(tmp_path / "cache") == [inception.GRAPH_FILE]
    again = inception.load_inception(None, url=REFUSED_URL, cache_dir=str(tmp_path / "cache"), allow_download=False)
    assert again.weights == cached
    x = _images(2, 1, seed=7)
    _assert_close_features(
        inception.inception_features(again, x),
        direct_features(synthetic_graph_def(), np.repeat(np.round(x * 255), 3, -1)),
    )


# -- config and --mode=eval ------------------------------------------------------------------------


def eval_config(**overrides):
    """The demo config with a 1-epoch classifier and few KID subsets; Inception fields from ``overrides``."""
    c = config_lib.load_config_file(ROOT / "configs" / "demo.py")
    c.update_from_flattened_dict(
        {
            "eval.classifier_epochs": 1,
            "eval.kid_subsets": 4,
            "eval.n_nearest": 4,
            "eval.inception_url": REFUSED_URL,
            **overrides,
        }
    )
    return c


@pytest.mark.parametrize("field, value", [("eval.inception", "maybe"), ("eval.inception_batch_size", 0)])
def test_bad_inception_config(field, value):
    with pytest.raises(ValueError, match=f"config.{field}"):
        config_lib.validate(eval_config(**{field: value}))


@pytest.fixture(scope="module")
def eval_workdir(tmp_path_factory):
    """A workdir whose samples are the 500 embedded test digits: every FID between them and the test split is 0."""
    workdir = tmp_path_factory.mktemp("eval")
    test_x, _ = data.load_arrays("embedded_mnist", "test")
    np.savez(workdir / "samples.npz", images=test_x.astype(np.float32) / 255.0)
    return str(workdir)


@pytest.fixture()
def no_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty_cache"))
    monkeypatch.setattr(urllib.request, "getproxies", dict)


def test_eval_auto_without_weights_reports_why_and_keeps_offline_metrics(eval_workdir, no_cache):
    logs = []
    result = evaluation.evaluate(eval_config(), eval_workdir, log=logs.append)
    saved = json.load(open(os.path.join(eval_workdir, "eval.json")))
    assert saved["inception"]["status"] == "unavailable" and saved == json.loads(json.dumps(result))
    assert "config.eval.inception_path" in saved["inception"]["reason"]
    assert saved["offline_fid"] < 1e-6 and np.isfinite(saved["offline_kid"]["mean"])  # samples = test split
    assert any("config.eval.inception_path" in line for line in logs)
    assert saved["inception"]["reason"] in open(os.path.join(eval_workdir, "eval.md")).read()


def test_eval_with_configured_weights(eval_workdir, weights, no_cache):
    result = evaluation.evaluate(
        eval_config(**{"eval.inception_path": weights["tgz"], "eval.inception": "on"}), eval_workdir, log=lambda _: None
    )
    i = json.load(open(os.path.join(eval_workdir, "eval.json")))["inception"]
    assert i["status"] == "ok" and i["weights"] == weights["tgz"] and i == result["inception"]
    assert 0 <= i["fid"] < 1e-6  # the FID of a feature set with itself: samples are the test split
    assert np.isfinite(i["kid"]["mean"]) and np.isfinite(i["kid"]["std"]) and i["kid"]["std"] > 0
    assert (i["kid"]["subsets"], i["kid"]["subset_size"]) == (4, 64)
    assert "| Inception-V3 FID" in open(os.path.join(eval_workdir, "eval.md")).read()


def test_eval_on_without_weights_raises_before_any_work(tmp_path, no_cache):
    workdir = tmp_path / "run"
    workdir.mkdir()
    with pytest.raises(inception.InceptionUnavailableError, match="config.eval.inception_path"):
        evaluation.evaluate(eval_config(**{"eval.inception": "on"}), str(workdir), log=lambda _: None)
    assert os.listdir(workdir) == []  # neither sampled nor trained a classifier


def test_inception_off_is_reported():
    net, reason = evaluation.load_inception_or_reason(eval_config(**{"eval.inception": "off"}).eval)
    assert net is None and reason == {"status": "off", "reason": "config.eval.inception='off'"}


def test_eval_leaves_non_finite_samples_out_and_says_so(eval_workdir, tmp_path, no_cache):
    workdir = tmp_path / "nan_run"
    shutil.copytree(eval_workdir, workdir)
    images = np.load(workdir / "samples.npz")["images"]
    images[[3, 7]] = np.nan  # two samples of a diverged chain
    np.savez(workdir / "samples.npz", images=images)
    logs = []
    result = evaluation.evaluate(eval_config(**{"eval.inception": "off"}), str(workdir), log=logs.append)
    assert (result["n_non_finite"], result["n_generated"]) == (2, len(images) - 2)
    assert np.isfinite(result["offline_fid"]) and result["offline_fid"] > 0  # no longer the test split itself
    assert any("2 of 500 samples have non-finite pixels" in line for line in logs)
    assert "2 more had non-finite pixels" in (workdir / "eval.md").read_text()
    np.savez(workdir / "samples.npz", images=np.full_like(images, np.nan))
    with pytest.raises(ValueError, match="500 of the 500 samples .* non-finite pixels: the sampler diverged"):
        evaluation.evaluate(eval_config(**{"eval.inception": "off"}), str(workdir), log=logs.append)
