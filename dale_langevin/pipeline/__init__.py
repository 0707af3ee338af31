"""The run pipeline: config schema, data, parallelism, the work directory, the train state and loop, sampling.

One module per concern: :mod:`.config` (schema, validation, builders), :mod:`.data` (datasets),
:mod:`.parallel` (device layout, pmap), :mod:`.workdir` (every artefact and its I/O),
:mod:`.storage` (the ``gs://`` clients), :mod:`.checkpoint` (Orbax), :mod:`.state` (train state and
pure step), :mod:`.train` (the loop), :mod:`.generate` (sampling a trained model), :mod:`.images` (grids).
"""

# Sets epath's gs:// client before any path of this package is touched (storage's docstring says why).
from dale_langevin.pipeline import storage  # noqa: F401
