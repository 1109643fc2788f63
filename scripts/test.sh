#!/usr/bin/env bash
# Set up (.venv, MPICH, mpi4py, pytest) and run the whole test suite:
# serial tests, then the multi-rank tests under mpiexec -n 2 and -n 3.
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
export MPIEXEC_TIMEOUT="${MPIEXEC_TIMEOUT:-600}"
PYTEST=(python -m pytest -q -p no:cacheprovider)

echo "== serial tests"
"${PYTEST[@]}" tests
for n in 2 3; do
    echo "== mpiexec -n $n"
    mpiexec -n "$n" "${PYTEST[@]}" --with-mpi -m mpi tests
done
echo "== all test runs passed"
