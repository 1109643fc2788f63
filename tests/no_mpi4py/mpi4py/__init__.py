"""Stands in for mpi4py in socket-channel test runs, proving cmampi does not need it."""
raise ModuleNotFoundError("mpi4py is blocked in this test run (cmampi must work without it)",
                          name="mpi4py")
