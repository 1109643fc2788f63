#!/usr/bin/env bash
# Set up and run the main job: the point-to-point benchmark, cmampi vs mpi4py, 2 ranks.
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
mpiexec -n 2 python bench/pingpong.py "$@"
