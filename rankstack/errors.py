"""User-facing errors.

A `RankstackError` is a mistake in the user's input (a file, a column, a config key), not a bug. Its message is
a sentence that names what was wrong and what to do; the CLI prints it without a traceback and exits non-zero.
"""

from __future__ import annotations


class RankstackError(Exception):
    """An error in the user's input; the message names the file, the column or key, and the fix."""


class DataError(RankstackError):
    """A dataset does not match its schema, or a file is malformed."""


class ConfigError(RankstackError):
    """A config file has an unknown key, a wrong type or an invalid value."""
