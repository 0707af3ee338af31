"""Evaluation helpers: nearest neighbours and class histograms."""

import numpy as np

from dale_langevin.evaluation.evaluate import class_histogram, nearest_neighbours
from dale_langevin.pipeline.images import make_grid


def test_nearest_neighbours_matches_brute_force():
    rng = np.random.default_rng(0)
    refs = rng.random((300, 5, 5, 1))
    queries = np.concatenate([refs[[7, 123]], rng.random((40, 5, 5, 1))])
    idx, dist = nearest_neighbours(queries, refs, chunk=16)
    full = np.linalg.norm(queries.reshape(len(queries), 1, -1) - refs.reshape(1, len(refs), -1), axis=2)
    np.testing.assert_array_equal(idx, full.argmin(axis=1))
    np.testing.assert_allclose(dist, full.min(axis=1), atol=1e-6)
    assert list(idx[:2]) == [7, 123] and np.allclose(dist[:2], 0.0, atol=1e-6)


def test_class_histogram():
    uniform = class_histogram(np.arange(100) % 10, 10)
    assert uniform["counts"] == [10] * 10 and abs(uniform["normalised_entropy"] - 1.0) < 1e-12
    collapsed = class_histogram(np.array([3, 3, 3, 4]), 10)
    assert collapsed["empty_classes"] == [0, 1, 2, 5, 6, 7, 8, 9]
    assert 0 < collapsed["normalised_entropy"] < 0.3


def test_grid_shows_nan_pixels_as_black_without_warnings():
    imgs = np.full((2, 3, 3, 1), 0.75, np.float32)
    imgs[1, 1, 1, 0] = np.nan
    with np.errstate(invalid="raise"):
        grid = make_grid(imgs, ncols=2, pad=1, scale=1)
    assert grid.dtype == np.uint8 and grid[2, 6, 0] == 0 and grid[2, 2, 0] == round(0.75 * 255)
