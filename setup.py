"""Build the exact CPU kernels (a small C extension); everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "rfpipe.preprocess.kernels._resample",
            sources=["rfpipe/preprocess/kernels/_resample.c"],
            extra_compile_args=["-O3", "-std=c11"],
        )
    ]
)
