"""The work directory: the one module that names every artefact of a run and reads and writes them.

All paths are ``etils.epath.Path`` (what Orbax and TFDS use), so a local folder and ``gs://bucket/run``
behave the same; nothing else in the package opens, lists or joins work-directory paths. A run's
folder holds::

    config.json          the resolved config            metrics.jsonl   one JSON object per log step
    start_stats.npz      priors and class means         checkpoints/    Orbax train states
    tensorboard/         scalars                        samples/        step_XXXXXXX.png grids
    samples.npz/.png/.json  --mode=sample               eval.json/.md   --mode=eval
    nearest_neighbours.png                              classifier/     the offline feature classifier

Outside the run folders, ``--mode=eval`` caches the test split's feature statistics once per dataset
and feature extractor in ``config.eval.reference_dir`` (:func:`reference_stats`).

An ablation's folder (``--mode=ablate``) holds ``train/<name>/`` (one run folder per training),
``rows/`` (cached draws, one per row, levels and seed), ``classifier/``, ``ablation.md``,
``ablation.csv``, ``nfe.png`` and ``samples.png``.

Writes of whole files are atomic, so a killed process leaves the previous version or none, never
half a file: on a local disk a temporary sibling is renamed into place; in a bucket an object
appears whole when its upload completes, so it is written in place (a rename there is a copy).
Growing files: ``metrics.jsonl`` is appended to on a local disk and rewritten whole at each line in a
bucket (an object cannot be appended to); a TensorBoard event file is rewritten whole at each flush
and rolls over at 1 MiB. ``gs://`` access is set up by :mod:`.storage`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import socket
import time
import uuid
from collections.abc import Iterable
from typing import Any

import numpy as np
from etils import epath

from dale_langevin.pipeline import images, storage


def _resolve(root: str | os.PathLike) -> epath.Path:
    text = os.fspath(root)
    if "://" in text:  # a bucket: keep it as written (never made absolute against the local disk)
        storage.configure()
        return epath.Path(text)
    return epath.Path(text).expanduser().resolve()


def resolve(path: str | os.PathLike) -> epath.Path:
    """``path`` as an ``epath.Path``: a local path expanded and made absolute, ``gs://...`` kept as written."""
    return _resolve(path)


def reference_stats(
    directory: str | os.PathLike, dataset: str, split: str, n_images: int, extractor: str
) -> epath.Path:
    """The cached test-split statistics of ``dataset``'s ``split`` (``n_images`` images) under the feature
    extractor ``extractor`` in the cache folder ``directory`` (``config.eval.reference_dir``; outside any run).

    One ``.npz`` per key, e.g. ``embedded_mnist_test_500_classifier-0123456789abcdef.npz``; characters
    other than letters, digits, ``.``, ``_`` and ``-`` in the key become ``-`` (a TFDS split such as
    ``test[:50%]``).
    """
    key = "_".join(re.sub(r"[^A-Za-z0-9._-]", "-", str(p)) for p in (dataset, split, n_images, extractor))
    return resolve(directory) / f"{key}.npz"


class Workdir:
    """A run's folder (``WORKDIR``); every artefact is a property or method returning its ``epath.Path``."""

    def __init__(self, root: str | os.PathLike):
        self.root = _resolve(root)

    @classmethod
    def of(cls, workdir: str | os.PathLike | Workdir) -> Workdir:
        """``workdir`` itself if it is a :class:`Workdir`, else the :class:`Workdir` at that path."""
        return workdir if isinstance(workdir, Workdir) else cls(workdir)

    def __repr__(self) -> str:
        return f"Workdir({str(self.root)!r})"

    def __str__(self) -> str:
        return str(self.root)

    def child(self, *parts: str) -> Workdir:
        """A nested run folder, e.g. an ablation's ``ablation/train/<name>``."""
        return Workdir(self.root.joinpath(*parts))

    # -- artefacts -------------------------------------------------------------------------------
    @property
    def config_json(self) -> epath.Path:
        return self.root / "config.json"

    @property
    def metrics_jsonl(self) -> epath.Path:
        return self.root / "metrics.jsonl"

    @property
    def start_stats(self) -> epath.Path:
        return self.root / "start_stats.npz"

    @property
    def checkpoints(self) -> epath.Path:
        return self.root / "checkpoints"

    @property
    def tensorboard(self) -> epath.Path:
        return self.root / "tensorboard"

    def grid(self, step: int) -> epath.Path:
        """The periodic sample grid of training step ``step``."""
        return self.root / "samples" / f"step_{step:07d}.png"

    @property
    def samples_npz(self) -> epath.Path:
        return self.root / "samples.npz"

    @property
    def samples_json(self) -> epath.Path:
        """What ``samples.npz`` was drawn with (sampler, settings, start, count, seed, step)."""
        return self.root / "samples.json"

    @property
    def samples_png(self) -> epath.Path:
        return self.root / "samples.png"

    @property
    def eval_json(self) -> epath.Path:
        return self.root / "eval.json"

    @property
    def eval_md(self) -> epath.Path:
        return self.root / "eval.md"

    @property
    def nearest_neighbours_png(self) -> epath.Path:
        return self.root / "nearest_neighbours.png"

    @property
    def classifier(self) -> epath.Path:
        return self.root / "classifier"

    def search_classifier(self, n_held_out: int, seed: int) -> epath.Path:
        """The schedule search's feature classifier, trained without ``n_held_out`` training images drawn with ``seed``."""
        return self.root / f"search_classifier_{n_held_out}_s{seed}"

    # ablation artefacts (``--mode=ablate``)
    def ablation_training(self, name: str) -> Workdir:
        """The run folder of ablation training ``name``."""
        return self.child("train", name)

    def ablation_training_summary(self, name: str) -> epath.Path:
        return self.root / "train" / name / "summary.json"

    def ablation_row(self, row: str, n_steps: int, suffix: str, seed: int = 0) -> epath.Path:
        """A row's cached draw (``suffix="json"``) or its first images (``"npy"``) at ``n_steps`` sampler
        levels with sampling seed ``seed``."""
        return self.root / "rows" / f"{row}_{n_steps}_s{seed}.{suffix}"

    def ablation_report(self, name: str) -> epath.Path:
        """``ablation.md``, ``ablation.csv``, ``nfe.png`` or ``samples.png``."""
        return self.root / name

    # -- I/O ------------------------------------------------------------------------------------
    def makedirs(self) -> None:
        """Creates the run folder (and parents)."""
        self.root.mkdir(parents=True, exist_ok=True)


def _atomic_write(path: epath.Path, data: bytes) -> None:
    if storage.is_object_store(path):
        path.write_bytes(data)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"  # unique across processes and hosts
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise


def write_text(path: epath.Path, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` atomically."""
    _atomic_write(path, text.encode("utf-8"))


def write_json(path: epath.Path, value: Any) -> None:
    """Writes ``value`` as indented JSON (``default=str`` for tuples of odd types)."""
    write_text(path, json.dumps(value, indent=2, default=str))


def read_json(path: epath.Path) -> Any | None:
    """The JSON in ``path``; ``None`` if it does not exist."""
    if not path.exists():
        return None
    return json.loads(path.read_text())


def save_npz(path: epath.Path, **arrays: np.ndarray) -> None:
    """Writes ``arrays`` to an ``.npz`` at ``path`` atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    _atomic_write(path, buffer.getvalue())


def load_npz(path: epath.Path) -> dict[str, np.ndarray] | None:
    """All arrays of the ``.npz`` at ``path``; ``None`` if it does not exist."""
    if not path.exists():
        return None
    with np.load(io.BytesIO(path.read_bytes())) as f:
        return dict(f)


def save_npy(path: epath.Path, array: np.ndarray) -> None:
    """Writes one array as ``.npy`` atomically."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    _atomic_write(path, buffer.getvalue())


def load_npy(path: epath.Path) -> np.ndarray:
    """The array in the ``.npy`` at ``path``."""
    return np.load(io.BytesIO(path.read_bytes()))


def write_csv(path: epath.Path, rows: Iterable[dict], fields: list[str]) -> None:
    """Writes ``rows`` (dicts) as CSV with the header ``fields`` (extra keys ignored)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def save_grid(path: epath.Path, grid_images: np.ndarray, ncols: int | None = None) -> None:
    """Writes ``grid_images`` ``(N, H, W, C)`` in [0, 1] as one PNG grid (:func:`images.make_grid`)."""
    _atomic_write(path, images.png_bytes(grid_images, ncols))


def save_figure(path: epath.Path, figure: Any, dpi: int = 120) -> None:
    """Writes a matplotlib ``figure`` as PNG to ``path``."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    _atomic_write(path, buffer.getvalue())


def keep_jsonl(path: epath.Path, keep) -> int:
    """Rewrites the JSON-lines file at ``path`` with only the objects for which ``keep(obj)`` is true; returns how
    many were dropped (0 if the file does not exist). A line that does not parse (a write cut short) is dropped."""
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            ok = keep(json.loads(line))
        except json.JSONDecodeError:
            ok = False
        if ok:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        write_text(path, "".join(line + "\n" for line in kept))
    return dropped


class JsonLines:
    """One JSON object per line in ``path``, after the lines it already holds, each on disk when :meth:`write` returns.

    A local file is appended to. An object in a bucket cannot be, so there the file is rewritten
    whole at each :meth:`write` (a few hundred kB for a 300,000-step run logged every 100 steps).
    A kill leaves every line written before it (a half-written local line is dropped on resume by
    :func:`keep_jsonl`).
    """

    def __init__(self, path: epath.Path):
        self._path = path
        self._whole = storage.is_object_store(path)
        if self._whole:
            self._text = path.read_text() if path.exists() else ""
            if self._text and not self._text.endswith("\n"):
                self._text += "\n"
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a")

    def write(self, value: dict) -> None:
        line = json.dumps(value) + "\n"
        if self._whole:
            self._text += line
            write_text(self._path, self._text)
        else:
            self._file.write(line)
            self._file.flush()

    def close(self) -> None:
        if not self._whole:
            self._file.close()


class TensorBoardScalars:
    """TensorBoard scalar summaries in the folder ``directory``, readable by TensorBoard while the run goes on.

    Events are TFRecord-framed ``Event`` protos (TensorBoard's own encoder, no TensorFlow); the
    current event file is rewritten whole at each :meth:`flush`, and a new one is started once it
    holds ``roll_bytes``, so a flush costs at most that much whatever the run's length.
    """

    def __init__(self, directory: epath.Path, roll_bytes: int = 1 << 20):
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._event, self._summary, self._record_writer = event_pb2.Event, summary_pb2.Summary, RecordWriter
        self._directory, self._roll_bytes, self._files = directory, roll_bytes, 0
        self._start_file()

    def _start_file(self) -> None:
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{self._files:05d}"
        self._path, self._files = self._directory / name, self._files + 1
        self._buffer = io.BytesIO()
        self._records = self._record_writer(self._buffer)
        self._records.write(self._event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
        self._dirty = True

    def scalar(self, tag: str, value: float, step: int) -> None:
        """Adds the scalar ``value`` of ``tag`` at ``step`` (written at the next :meth:`flush`)."""
        if self._buffer.tell() >= self._roll_bytes:
            self.flush()
            self._start_file()
        summary = self._summary(value=[self._summary.Value(tag=tag, simple_value=float(value))])
        self._records.write(self._event(wall_time=time.time(), step=int(step), summary=summary).SerializeToString())
        self._dirty = True

    def flush(self) -> None:
        """Writes the current event file whole (atomically) if anything was added since the last flush."""
        if self._dirty:
            _atomic_write(self._path, self._buffer.getvalue())
            self._dirty = False

    def close(self) -> None:
        self.flush()
