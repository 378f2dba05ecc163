"""Compile proto/ into hsmlb/v1 stubs as part of every build, wheel or editable.

Build debris (egg-info, build/) goes to a directory of its own outside the checkout, one per checkout,
so no build leaves files in the source tree; the generated stubs are the only output kept here.
"""

import hashlib
import os
import tempfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
OUT = Path(os.environ.get("HSMLB_BUILD_DIR") or Path(tempfile.gettempdir())
           / f"hsmlb-build-{hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]}")


def compile_protos() -> None:
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    for proto in sorted((ROOT / "proto").rglob("*.proto")):
        rc = protoc.main([
            "grpc_tools.protoc", f"-I{ROOT / 'proto'}", f"-I{include}",
            f"--python_out={ROOT}", f"--grpc_python_out={ROOT}", f"--pyi_out={ROOT}", str(proto),
        ])
        if rc != 0:
            raise RuntimeError(f"protoc failed on {proto}")


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        compile_protos()
        super().run()


OUT.mkdir(parents=True, exist_ok=True)
setup(cmdclass={"build_py": BuildPyWithProtos},
      options={"egg_info": {"egg_base": str(OUT)}, "build": {"build_base": str(OUT / "build")}})
