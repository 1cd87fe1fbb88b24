"""Make libtorch's shared libraries loadable before the native extension is imported.

The extension links against the libtorch inside the installed ``torch`` wheel. An installed wheel of
tidewatch finds it through its rpath (``$ORIGIN/../torch/lib``); an editable install (the extension
sits in the source tree) does not, so the libraries are loaded here by absolute path, without
importing torch itself (importing torch costs seconds and is not needed to score).
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
import sys

# Dependency order: each library's own needs are already loaded when it is opened.
_LIBRARIES = ("libc10.so", "libtorch_cpu.so", "libc10_cuda.so", "libtorch_cuda.so", "libtorch.so")


def torch_library_dir() -> str | None:
    if "torch" in sys.modules:
        return os.path.join(os.path.dirname(sys.modules["torch"].__file__), "lib")
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], "lib")


def preload_torch_libraries() -> None:
    if "torch" in sys.modules:
        return  # torch loaded its libraries already
    lib_dir = torch_library_dir()
    if lib_dir is None:
        raise ImportError(
            "tidewatch needs the 'torch' package (pinned torch==2.11.0) for libtorch; install it with pip"
        )
    for name in _LIBRARIES:
        path = os.path.join(lib_dir, name)
        if os.path.exists(path):
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
