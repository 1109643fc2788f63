"""``python -m cmampi.bench SUBCOMMAND [options]`` (see :mod:`cmampi.bench.cli`)."""
import sys

from .cli import main

sys.exit(main())
