"""latent-vla: latent-action pretraining of vision-language-action models in JAX/Flax.

Lower bounds live here; the exact known-good versions are in ``requirements.lock`` (used by the Makefile as a pip
constraints file). ``torch`` is pinned to the CPU build so that the HF extras never pull multi-GB CUDA wheels.
"""

from setuptools import setup

PACKAGES = [
    "core",
    "data",
    "data.demo",
    "data.metaworld",
    "lam",
    "latent_pretraining",
    "latent_pretraining.model",
    "latent_pretraining.training",
    "latent_pretraining.convert",
    "policy",
    "configs",
]

INSTALL_REQUIRES = [
    "numpy>=2.0",
    "jax>=0.10.0",
    "jaxlib>=0.10.0",
    "flax>=0.12.0",
    "optax>=0.2.5",
    "orbax-checkpoint>=0.12.0",
    "ml-collections>=1.0.0",
    "absl-py>=2.0",
    "tensorflow-cpu>=2.18.0",
    "tensorflow-datasets>=4.9.9",
    "importlib_resources>=6.0",  # imported by tensorflow-datasets without being declared
    "pillow>=10.0",
    "safetensors>=0.4.0",
    "sentencepiece>=0.2.0",
    "msgpack>=1.0",
    "einops>=0.8",
    "tqdm>=4.66",
    "matplotlib>=3.8",
    "opencv-python-headless>=4.10",  # Farneback flow targets for the LAM on real video (lam/flow_targets.py)
]

HF = ["torch==2.13.0", "transformers>=5.0"]
SERVE = ["fastapi>=0.110", "uvicorn>=0.29", "httpx>=0.27", "python-multipart>=0.0.13"]
# Meta-World (MuJoCo) as a second, standard 3-D world (data/metaworld, policy/metaworld_eval.py); renders off-screen
# through MUJOCO_GL (egl by default), which needs the system's EGL or OSMesa library
METAWORLD = ["metaworld==3.1.1", "mujoco>=3.3.0", "gymnasium>=1.1"]
# pytest-xdist: `make test` runs the suite on 2 worker processes (tracing and XLA compiling are single-threaded)
TEST = ["pytest>=8.0", "pytest-timeout>=2.3", "pytest-xdist>=3.5", "ruff>=0.6", *HF, *SERVE, *METAWORLD]

setup(
    name="latent-vla",
    version="0.1.0",
    description="Latent-action pretraining (LAPA / ViPRA lineage) of VLA models from video, in JAX/Flax.",
    python_requires=">=3.11",
    packages=PACKAGES,
    install_requires=INSTALL_REQUIRES,
    extras_require={"hf": HF, "serve": SERVE, "metaworld": METAWORLD, "test": TEST},
)
