"""``python -m cmampi -n N prog.py [args]``: start N ranks (see :mod:`cmampi.launch`)."""
import sys

from .launch import main

sys.exit(main())
