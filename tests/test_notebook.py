"""The quickstart notebook runs top to bottom (small sizes) against a tiny trained run and prints sound numbers."""

import concurrent.futures
import os
import pathlib
import re

import nbformat
import pytest
from nbclient import NotebookClient

from dale_langevin.pipeline import config as config_lib, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"
TRAIN_STEPS = 2
# "dale_langevin  log-mean 0.3012 (data 0.3)  log-std 0.1987 (data 0.2)  min x 0.4 non-positive 0"
REPORT = re.compile(r"^(\w+)\s+log-mean (\S+) \(data (\S+)\)\s+log-std (\S+) \(data (\S+)\).*non-positive (\d+)$", re.M)


def tiny_config():
    """The demo config with the tiny sizes of tests/test_train.py, trained for two steps."""
    c = config_lib.load_config_file(ROOT / "configs" / "demo.py")
    c.model.unet.channels = 8
    c.model.unet.channel_mult = (1, 2)
    c.training.batch_size = 8
    c.training.n_iters = TRAIN_STEPS
    c.training.log_every = c.training.ckpt_every = TRAIN_STEPS
    c.training.sample_every = 0
    c.optim.warmup_steps = 2
    c.sampling.dale_langevin.n_steps = 5
    c.sampling.dale_langevin.denoise_steps = 2
    c.sampling.batch_size = 4
    return c


def text_of(cell) -> str:
    return "".join(out.get("text", "") for out in cell.outputs if out.output_type == "stream")


def tagged(nb, tag: str):
    (cell,) = [c for c in nb.cells if tag in c.metadata.get("tags", [])]
    return cell


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The notebook executed in a temp dir with DALE_NB_SMALL=1 and DALE_WORKDIR at a 2-step run.

    The run trains in a thread while the kernel starts and runs the closed-form sections (they do not
    read it, and most of either is single-threaded compilation); the cell that loads it waits for it.
    """
    workdir = str(tmp_path_factory.mktemp("run"))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        trained = pool.submit(train.train_and_evaluate, tiny_config(), workdir)

        def wait_for_run(cell, **_):
            if "restore" in cell.metadata.get("tags", []):
                trained.result()  # re-raises a training error here

        nb = nbformat.read(NOTEBOOK, as_version=4)
        # The kernel is a new process: os.environ carries conftest's XLA_FLAGS (2 forced host devices) to it.
        env = dict(os.environ, DALE_NB_SMALL="1", DALE_WORKDIR=workdir)
        client = NotebookClient(
            nb,
            kernel_name="python3",
            timeout=300,
            on_cell_start=wait_for_run,
            resources={"metadata": {"path": str(tmp_path_factory.mktemp("cwd"))}},
        )
        client.execute(env=env)  # raises CellExecutionError naming the cell if any cell fails
    return nb, workdir


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_samplers_recover_the_lognormal_data(executed):
    """Exact-score samplers on 4,096 coordinates: log-mean/log-std within Monte Carlo + discretisation error."""
    nb, _ = executed
    reports = {m[0]: m[1:] for m in REPORT.findall(text_of(tagged(nb, "sde-recovery")) + text_of(tagged(nb, "ode")))}
    assert set(reports) == {"dale_langevin", "sign_agnostic", "ode_dpm2"}
    for name, (mean, data_mean, std, data_std, nonpositive) in reports.items():
        assert (float(data_mean), float(data_std)) == (0.3, 0.2)
        # 4 standard errors: 4 * 0.2 / 64 = 0.0125 (mean), 4 * 0.2 / 90 = 0.009 (std). Step bias, measured on
        # 262k coordinates: |mean| < 0.002 and |std| < 0.0045 at 200 levels, < 0.0015 for 20 dpm2 steps.
        assert abs(float(mean) - 0.3) < 0.015, (name, mean)
        assert abs(float(std) - 0.2) < 0.015, (name, std)
        if name == "dale_langevin":
            assert int(nonpositive) == 0


def test_dale_langevin_keeps_signs_where_sign_agnostic_does_not(executed):
    nb, _ = executed
    text = text_of(tagged(nb, "signs"))
    assert "every state on every Dale-Langevin path > 0: True" in text
    coarse = dict(re.findall(r"10 coarse levels, (\w+)\s*: (\d+) non-positive", text))
    assert int(coarse["dale_langevin"]) == 0 and int(coarse["sign_agnostic"]) > 0


def test_loads_the_given_run_and_samples_images(executed):
    nb, workdir = executed
    restore = text_of(tagged(nb, "restore"))
    assert "No trained run" not in restore  # the test's run was found, no stand-in trained
    assert f"Restored step {TRAIN_STEPS} of {workdir}: embedded_mnist, process gbm" in restore
    grid = text_of(tagged(nb, "grid"))  # 5 levels + the run's 2 noise-free updates
    assert re.search(r"^8 images \(28, 28, 1\) with dale_langevin, 7 network evaluations each", grid, re.M)
    assert "samples (8, 28, 28, 1), all > 0: True" in text_of(tagged(nb, "direct"))


@pytest.mark.parametrize("tag", ["forward-kernel", "score", "trajectories", "ode", "grid", "direct"])
def test_plots_are_drawn(executed, tag):
    outputs = tagged(executed[0], tag).outputs
    assert any(out.output_type == "display_data" and "image/png" in out.data for out in outputs)
