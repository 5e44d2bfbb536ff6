"""ovs_jax: open-vocabulary semantic segmentation in JAX/Flax NNX.

Install reproducibly with the pinned constraints:
    pip install -c constraints.txt -e '.[test]'
"""
from setuptools import find_packages, setup

setup(
    name="ovs_jax",
    version="0.1.0",
    description="Open-vocabulary semantic segmentation (MAFT+, GKC, SimZSS, MVP-SEG) in JAX/Flax NNX",
    packages=find_packages(include=["ovs_jax", "ovs_jax.*", "input_pipeline", "input_pipeline.*"]),
    package_data={
        "ovs_jax": ["assets/*", "serve/static/*"],
        "input_pipeline": ["vocab/*", "vocab/synonyms/*"],
    },
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10",
        "flax>=0.12.8",
        "optax",
        "orbax-checkpoint",
        "grain",
        "ml_collections",
        "tensorflow-datasets",
        "transformers>=5",
        "tokenizers",
        "safetensors",
        "pillow",
        "numpy",
        "scipy",
        "absl-py",
        "tqdm",
        "tensorboardX",
        "array-record",
        # GKC's caption grounding tags caption nouns (input_pipeline/caption_tagging.py).
        "nltk",
        "textblob",
    ],
    extras_require={
        # PyTorch interchange (pytorch_model.bin import, export checks) and the test suite.
        "torch": ["torch==2.13.0"],
        # The web app (python -m ovs_jax.serve): ASGI framework, server, form uploads.
        "serve": ["starlette", "uvicorn", "python-multipart"],
        # httpx: Starlette's TestClient; selenium drives the system Chromium in tests/test_serve.py.
        "test": ["torch==2.13.0", "pytest", "pytest-xdist", "httpx", "selenium"],
        # Data preparation only (WordNet synonym sets: python -m input_pipeline.synonyms build).
        "prep": ["nltk"],
    },
)
