# setuptools + cargo rather than maturin: maturin's bindings (pyo3, cffi,
# uniffi, bin) make an extension module, a generated cffi or uniffi module, or
# scripts; none ships a bare cdylib beside a hand-written ctypes module, which
# is what this binding is. setuptools, our backend already, needs no new tool.
"""Builds the netev wheel: the ctypes package plus the libnetev.so that
``cargo build --release`` makes (or ``NETEV_PREBUILT_LIB``), as
``netev/libnetev.so``.

- ``NETEV_PREBUILT_LIB=/path/libnetev.so``: package that library, no cargo.
- ``NETEV_CARGO_MANIFEST=/path/Cargo.toml``: the crate to build, when this
  directory does not sit inside the netev repository (an unpacked sdist).
- ``CARGO``, ``CARGO_TARGET_DIR`` and the rest of cargo's environment apply.
"""

import atexit
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

try:  # setuptools >= 70.1 has its own; before, the wheel package has it
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:
    try:
        from wheel.bdist_wheel import bdist_wheel
    except ImportError:  # older setuptools asking for its build requirements
        bdist_wheel = None

HERE = Path(__file__).resolve().parent
LIB = "libnetev.so"


def _is_netev_manifest(path: Path) -> bool:
    text = path.read_text(encoding="utf-8")
    package = re.search(r"^\[package\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
    return bool(package and re.search(r'^name\s*=\s*"netev"\s*$', package.group(1), re.M))


def _manifest() -> Path:
    named = os.environ.get("NETEV_CARGO_MANIFEST")
    if named:
        if not Path(named).is_file():
            raise SystemExit(f"netev: NETEV_CARGO_MANIFEST={named} is not a file")
        return Path(named)
    for directory in (HERE, *HERE.parents):
        candidate = directory / "Cargo.toml"
        if candidate.is_file() and _is_netev_manifest(candidate):
            return candidate
    raise SystemExit(
        f"netev: no Cargo.toml of the netev crate above {HERE}: set "
        "NETEV_CARGO_MANIFEST to it, or NETEV_PREBUILT_LIB to a built libnetev.so"
    )


def _cargo_build() -> Path:
    cargo = os.environ.get("CARGO", "cargo")
    cmd = [
        cargo,
        "build",
        "--release",
        "--lib",
        # Diagnostics still go to stderr as text; stdout carries the
        # artifacts' real paths, whatever CARGO_TARGET_DIR or config says.
        "--message-format=json-render-diagnostics",
        "--manifest-path",
        str(_manifest()),
    ]
    try:
        out = subprocess.run(cmd, stdout=subprocess.PIPE, check=True, text=True).stdout
    except FileNotFoundError:
        raise SystemExit(
            f"netev: {cargo} not found: install Rust (https://rustup.rs), or set "
            "NETEV_PREBUILT_LIB to a built libnetev.so"
        ) from None
    except subprocess.CalledProcessError as e:
        raise SystemExit(f"netev: `{' '.join(cmd)}` failed ({e.returncode}): see above") from None
    for line in out.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        target = msg.get("target") or {}
        if msg.get("reason") != "compiler-artifact" or target.get("name") != "netev":
            continue
        if "cdylib" in target.get("kind", ()):
            for name in msg.get("filenames", ()):
                if Path(name).name == LIB:
                    return Path(name)
    raise SystemExit(f"netev: `{' '.join(cmd)}` reported no {LIB}")


def _library() -> Path:
    prebuilt = os.environ.get("NETEV_PREBUILT_LIB")
    if prebuilt:
        if not Path(prebuilt).is_file():
            raise SystemExit(f"netev: NETEV_PREBUILT_LIB={prebuilt} is not a file")
        with open(prebuilt, "rb") as f:
            if f.read(4) != b"\x7fELF":  # a wrong path would ship as the library
                raise SystemExit(f"netev: NETEV_PREBUILT_LIB={prebuilt} is not an ELF shared library")
        return Path(prebuilt)
    return _cargo_build()


class BuildPyWithLib(build_py):
    def run(self):
        super().run()
        # An editable install imports netev from this directory, so the
        # library goes beside the sources (ignored by git) instead.
        if getattr(self, "editable_mode", False):
            dest = HERE / self.get_package_dir("netev")
        else:
            dest = Path(self.build_lib, "netev")
        dest.mkdir(parents=True, exist_ok=True)
        # Not self.copy_file: it keeps a destination newer than its source,
        # a stale library when a build directory outlives a build.
        shutil.copy(_library(), dest / LIB)


class BinaryDistribution(Distribution):
    """Not pure: the wheel carries a native library, so its files go to
    platlib at the wheel's root and its tag names a platform."""

    def has_ext_modules(self):
        return True


cmdclass = {"build_py": BuildPyWithLib}
if bdist_wheel is not None:

    class BdistWheelCtypes(bdist_wheel):
        def get_tag(self):
            # ctypes ties the wheel to no CPython version or ABI.
            _, _, platform = super().get_tag()
            return "py3", "none", platform

    cmdclass["bdist_wheel"] = BdistWheelCtypes


# build/ and netev.egg-info would otherwise land in this directory (pip
# builds in the source tree); nothing in them outlives the build.
_scratch = tempfile.mkdtemp(prefix="netev-setup-")
atexit.register(shutil.rmtree, _scratch, True)

setup(
    distclass=BinaryDistribution,
    cmdclass=cmdclass,
    options={
        "build": {"build_base": os.path.join(_scratch, "build")},
        "egg_info": {"egg_base": _scratch},
    },
)
