"""Packaging for smoothgen.

`engine/` and `kernels/` live at the top of the repository (see DESIGN.md) and are installed as
`smoothgen.engine` and `smoothgen.kernels`, so that users never import a top-level `engine`.
The C++ core in `csrc/` is not built yet: the CMake extension joins here with the C++-core issue.
"""
from setuptools import setup

setup(
    packages=[
        "smoothgen",
        "smoothgen.models",
        "smoothgen.engine",
        "smoothgen.kernels",
    ],
    package_dir={
        "smoothgen": "smoothgen",
        "smoothgen.engine": "engine",
        "smoothgen.kernels": "kernels",
    },
    package_data={"smoothgen.models": ["weights/*.safetensors", "weights/*.json"]},
    include_package_data=False,
)
