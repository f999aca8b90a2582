"""Packaging for smoothgen.

`engine/` and `kernels/` live at the top of the repository (see docs/design.md) and are installed as
`smoothgen.engine` and `smoothgen.kernels`, so that users never import a top-level `engine`.

The C++ core in `csrc/` becomes the extension `smoothgen._C`, built by CMake from the top-level
`CMakeLists.txt` (the pybind11 `cmake_example` pattern; pybind11 and the Boost headers are pinned build
requirements in pyproject.toml). If that build fails on a machine (no compiler, no cmake), the package
still installs and computes everything with its Python reference (smoothgen/_core.py logs why), unless
SMOOTHGEN_REQUIRE_CORE=1, which makes the failure an installation error.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()


class CMakeExtension(Extension):
    """An extension whose sources are built by CMake from `sourcedir`."""

    def __init__(self, name: str, sourcedir: str = "") -> None:
        super().__init__(name, sources=[])
        self.sourcedir = os.fspath(Path(sourcedir).resolve())


class CMakeBuild(build_ext):
    """Configure and build the `_C` target of the top-level CMakeLists.txt into the package folder."""

    def build_extensions(self) -> None:
        built = []
        for ext in self.extensions:
            try:
                self.build_extension(ext)
                built.append(ext)
            except Exception as exc:  # noqa: BLE001 - any failure means "no core here", said loudly
                if os.environ.get("SMOOTHGEN_REQUIRE_CORE") == "1":
                    raise
                sys.stderr.write(
                    f"WARNING: smoothgen: the C++ core {ext.name} was not built ({type(exc).__name__}: {exc}); "
                    "smoothgen will use its Python reference implementation (same results, slower).\n"
                )
        # Only what was built is copied into the source tree (editable installs) or the wheel.
        self.extensions = built

    def build_extension(self, ext: Extension) -> None:
        if not isinstance(ext, CMakeExtension):
            return super().build_extension(ext)
        import boost_headers  # build requirements (pyproject.toml [build-system])
        import pybind11

        ext_fullpath = Path.cwd() / self.get_ext_fullpath(ext.name)
        extdir = ext_fullpath.parent.resolve()
        cfg = "Debug" if self.debug else "Release"
        cmake_args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={extdir}{os.sep}",
            f"-DCMAKE_BUILD_TYPE={cfg}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DSMOOTHGEN_BOOST_INCLUDE_DIR={boost_headers.get_include()}",
            "-DSMOOTHGEN_BUILD_PYTHON=ON",
            "-DSMOOTHGEN_BUILD_TESTS=OFF",
            "-DSMOOTHGEN_BUILD_EXAMPLES=OFF",
        ]
        if "CMAKE_GENERATOR" not in os.environ and shutil.which("ninja"):
            cmake_args.append("-GNinja")
        build_temp = Path(self.build_temp) / ext.name
        build_temp.mkdir(parents=True, exist_ok=True)
        cmake = shutil.which("cmake")
        if cmake is None:
            raise RuntimeError("cmake is not installed")
        subprocess.run([cmake, ext.sourcedir, *cmake_args], cwd=build_temp, check=True)
        jobs = str(max(1, os.cpu_count() or 1))
        subprocess.run([cmake, "--build", ".", "--target", "_C", "--config", cfg, "-j", jobs], cwd=build_temp, check=True)


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
    ext_modules=[CMakeExtension("smoothgen._C", sourcedir=os.fspath(ROOT))],
    cmdclass={"build_ext": CMakeBuild},
)
