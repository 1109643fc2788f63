"""Build cmampi's compiled path of small messages for one MPI library.

Usage: python scripts/build_fastpath.py mpich|openmpi

Compiles ``cmampi/_fastpath.c`` with this environment's ``mpicc`` (its ``mpi.h``
and its ``libmpi``, the one mpi4py loads here) into
``cmampi/_fastpath_<library>{EXT_SUFFIX}``. Each MPI library gets a module of its
own name: the two virtual environments share one source tree. Without a C
compiler the build is skipped and cmampi runs its pure-Python path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("mpich", "openmpi"):
        print(__doc__, file=sys.stderr)
        return 2
    name = f"_fastpath_{argv[0]}"
    import mpi4py

    mpicc = shutil.which("mpicc", path=str(Path(sys.executable).parent)) or shutil.which("mpicc")
    if mpicc is None:
        print("build_fastpath: no mpicc: cmampi uses its pure-Python path", file=sys.stderr)
        return 0
    out = ROOT / "cmampi" / f"{name}{sysconfig.get_config_var('EXT_SUFFIX')}"
    src = ROOT / "cmampi" / "_fastpath.c"
    cmd = [mpicc, "-O2", "-shared", "-fPIC", "-Wall", f"-DFASTPATH_NAME={name}",
           f"-I{sysconfig.get_paths()['include']}", f"-I{mpi4py.get_include()}",
           str(src), "-o", str(out)]
    tmp = out.with_suffix(".tmp")
    cmd[-1] = str(tmp)
    subprocess.run(cmd, check=True)
    os.replace(tmp, out)     # a running job keeps the module it loaded
    print(f"build_fastpath: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
