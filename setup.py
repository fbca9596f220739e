"""Build of zlayer's native parts.

Each C component declares what it builds in ``csrc/<component>/native.toml`` so that components never edit a shared
build file:

    [[extension]]                 # a Cython extension module
    module = "zlayer.proxy._l7"
    pyx = "zlayer/proxy/_l7.pyx"
    sources = ["csrc/proxy/*.c"]  # globs, relative to the project root
    libraries = ["ssl", "crypto"]

    [[executable]]                # a helper program installed as zlayer/_bin/<name>
    name = "zlayer-shim"
    sources = ["csrc/runtime/*.c"]
    libraries = ["seccomp"]

Everything is compiled with ``-O2 -Wall -Wextra -Werror``. ``ZLAYER_BUILD_ONLY=runtime,proxy`` limits a build to
some components (handy with ``python setup.py build_ext --inplace`` while working on one of them).
"""

from __future__ import annotations

import glob
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

from setuptools import Distribution, Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
WARN_FLAGS = ["-O2", "-Wall", "-Wextra", "-Werror", "-fno-strict-aliasing", "-D_GNU_SOURCE"]
# Cython's generated C trips a few -Wextra checks that say nothing about our code.
CYTHON_FLAGS = ["-Wno-unused-parameter", "-Wno-unused-function", "-Wno-missing-field-initializers"]


def _components() -> list[tuple[str, dict[str, Any]]]:
    only = {c for c in os.environ.get("ZLAYER_BUILD_ONLY", "").split(",") if c}
    found = []
    for manifest in sorted(ROOT.glob("csrc/*/native.toml")):
        name = manifest.parent.name
        if only and name not in only:
            continue
        with manifest.open("rb") as f:
            found.append((name, tomllib.load(f)))
    return found


def _expand(patterns: list[str]) -> list[str]:
    files: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, root_dir=ROOT))
        if not matches:
            raise SystemExit(f"setup.py: no file matches {pattern!r}")
        files.extend(m for m in matches if m not in files)
    return files


def _extensions() -> list[Extension]:
    exts = []
    for _, manifest in _components():
        for spec in manifest.get("extension", []):
            exts.append(
                Extension(
                    spec["module"],
                    sources=[spec["pyx"], *_expand(spec.get("sources", []))],
                    include_dirs=["include", *spec.get("include_dirs", [])],
                    libraries=spec.get("libraries", []),
                    define_macros=[(d, None) for d in spec.get("define", [])],
                    extra_compile_args=WARN_FLAGS + CYTHON_FLAGS + spec.get("cflags", []),
                    extra_link_args=spec.get("ldflags", []),
                )
            )
    return exts


class BuildNative(build_ext):
    """build_ext that also links the helper executables into zlayer/_bin/."""

    def finalize_options(self) -> None:
        # Cythonize before setuptools finalizes the extension list: it annotates each Extension object
        # (_needs_stub, _full_name), and objects swapped in later lack those attributes.
        if self.distribution.ext_modules:
            from Cython.Build import cythonize

            self.distribution.ext_modules = cythonize(
                self.distribution.ext_modules,
                compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
                quiet=True,
                build_dir=str(Path(self.build_temp or "build") / "cython"),  # its C is ours to build, not to ship
            )
        super().finalize_options()

    def run(self) -> None:
        if self.extensions:
            super().run()
        self._build_executables()

    def _build_executables(self) -> None:
        from setuptools._distutils.ccompiler import new_compiler
        from setuptools._distutils.sysconfig import customize_compiler

        cc = new_compiler(verbose=bool(self.verbose), force=bool(self.force))
        customize_compiler(cc)
        out_root = ROOT if self.inplace else Path(self.build_lib)
        for _, manifest in _components():
            for spec in manifest.get("executable", []):
                out_dir = out_root / "zlayer" / "_bin"
                out_dir.mkdir(parents=True, exist_ok=True)
                objects = cc.compile(
                    _expand(spec["sources"]),
                    output_dir=str(Path(self.build_temp) / "exe" / spec["name"]),
                    include_dirs=[str(ROOT / "include"), *spec.get("include_dirs", [])],
                    macros=[(d, None) for d in spec.get("define", [])],
                    extra_postargs=WARN_FLAGS + spec.get("cflags", []),
                )
                cc.link_executable(
                    objects,
                    spec["name"],
                    output_dir=str(out_dir),
                    libraries=spec.get("libraries", []),
                    extra_postargs=spec.get("ldflags", []),
                )

    def get_outputs(self) -> list[str]:
        outputs = list(super().get_outputs())
        out_root = ROOT if self.inplace else Path(self.build_lib)
        for _, manifest in _components():
            for spec in manifest.get("executable", []):
                outputs.append(str(out_root / "zlayer" / "_bin" / spec["name"]))
        return outputs


if sys.platform != "linux":
    raise SystemExit("zlayer builds on Linux only (its runtime and data planes use Linux system calls)")


class NativeDistribution(Distribution):
    """Always a platform wheel, and build_ext always runs: the executables are native even with no extension."""

    def has_ext_modules(self) -> bool:
        return True


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildNative}, distclass=NativeDistribution)
