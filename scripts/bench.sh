#!/usr/bin/env bash
# Set up and run the main job: the point-to-point benchmark, cmampi vs mpi4py, 2 ranks.
# Every benchmark: python -m cmampi.bench --help.
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
mpiexec -n 2 python -m cmampi.bench pingpong "$@"
