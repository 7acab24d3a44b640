"""The native kernel (sarnn_serve/native.py): plain C loaded with ctypes, so no Python API and any
C compiler; optional, so an install without one still serves (on the ONNX graphs). Everything else
about the package is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "sarnn_serve._step_kernel",
            sources=["sarnn_serve/csrc/step_kernel.c"],
            # -ffp-contract=off: no clone fuses multiply-adds into FMAs, so every CPU computes
            # the same bits (csrc/step_kernel.c, VECTOR_CLONES)
            extra_compile_args=["-O3", "-fno-math-errno", "-ffp-contract=off"],
            optional=True,
        )
    ]
)
