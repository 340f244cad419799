"""Installable package for IndexTTS2-JAX (distribution ``indextts2-jax``)."""
from setuptools import find_packages, setup

setup(
    name="indextts2-jax",
    version="0.1.0",
    description="IndexTTS2 (zero-shot TTS with emotion and duration control) in JAX/Flax: "
    "official-weight conversion, sharded training, fast inference.",
    python_requires=">=3.10",
    packages=find_packages(include=["indextts2_jax*", "configs*", "data_pipeline*", "experiments*"]),
    package_data={"data_pipeline": ["data/*.txt"]},
    install_requires=[
        # jax 0.10.x is the newest line on Python 3.11; 0.11+ on Python 3.12 (GPU image).
        "jax>=0.9,<0.13",
        "flax>=0.12.0,<0.14",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "grain>=0.2.10",
        "librosa>=0.10.2",
        "numpy>=1.26",
        "ml_collections>=1.0",
        "tensorboardX>=2.6",
        "sentencepiece>=0.2.0",
        "soundfile>=0.12",
        "espeakng-loader>=0.2.4",
        "tqdm>=4.66",
        "pyyaml>=6.0",
        "safetensors>=0.4",
        "flatbuffers>=24.3",
        # text-to-emotion (infer/emotion_text.py): the Qwen3 emotion model's byte-level BPE and chat template
        "tokenizers>=0.19",
        "jinja2>=3.1",
    ],
    extras_require={
        "dev": ["pytest>=8", "pytest-xdist>=3.5", "ruff>=0.6", "torch==2.13.0",
                # the eval extra, so that CI runs tests/test_evaluate.py
                "pocketsphinx>=5.0", "resemblyzer>=0.1.4", "speechmos>=0.0.1.1",
                "onnxruntime>=1.17", "pesq>=0.0.4", "pystoi>=0.4.1", "matplotlib>=3.8"],
        # Reading official .pth checkpoints needs torch; `pip install torch==2.13.0` takes the CPU wheel here.
        "convert": ["torch>=2.4"],
        # Objective evaluation (python -m experiments.evaluate): offline ASR, speaker embeddings, DNSMOS, PESQ,
        # STOI, plots. Every model ships in its wheel (nothing is downloaded at run time).
        "eval": ["pocketsphinx>=5.0", "resemblyzer>=0.1.4", "speechmos>=0.0.1.1",
                 "onnxruntime>=1.17", "pesq>=0.0.4", "pystoi>=0.4.1", "matplotlib>=3.8", "torch>=2.4"],
    },
    entry_points={
        "console_scripts": [
            "indextts2-train=experiments.train:run",
            "indextts2-synthesize=experiments.synthesize:run",
            "indextts2-serve=experiments.serve:run",
            "indextts2-convert=experiments.convert:run",
            "indextts2-encode=experiments.encode:run",
            "indextts2-export=experiments.export:run",
            "indextts2-emotion-text=experiments.emotion_text:run",
        ],
    },
)
