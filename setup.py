"""Build the C extensions (the exact CPU kernels, the server's GIL-free base64); everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "rfpipe.preprocess.kernels._resample",
            sources=["rfpipe/preprocess/kernels/_resample.c"],
            extra_compile_args=["-O3", "-std=c11"],
        ),
        Extension(
            "rfpipe.io._base64",
            sources=["rfpipe/io/_base64.c"],
            extra_compile_args=["-O3", "-std=c11"],
        ),
    ]
)
