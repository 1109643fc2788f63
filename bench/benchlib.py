"""Helpers of the benchmark scripts: they live in :mod:`cmampi.bench._common` now."""

from cmampi.bench._common import (TAG, DataError, format_size, parse_size,  # noqa: F401
                                  parse_sizes, pattern, poison_ends, positive_int)

__all__ = ["TAG", "DataError", "format_size", "parse_size", "parse_sizes", "pattern",
           "poison_ends", "positive_int"]
