"""Converters from public data formats into rankstack datasets (`schema.yaml` + Parquet splits + vocabularies).

>>> from rankstack.data.converters import convert
>>> convert("amazon-s3rec", "../shared/data/amazon-s3rec/Beauty.txt", "data/beauty-ctr", {"negatives": 4})  # doctest: +SKIP

`CONVERTERS` maps each `--format` name to its `Converter` (name, description, options with defaults and help,
and `convert(input, out, **options)`); each converter's function docstring documents its options, splits and
output columns, and `docs/converters.md` gives the commands. Every converter writes through `DatasetWriter`, so a
failed conversion leaves no output folder, and reports bad input as a `DataError` naming the file, the column
and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rankstack.data.converters import (
    aliccp,
    amazon,
    checkins,
    criteo,
    esci,
    foursquare,
    fuxictr,
    pairs,
    taobao,
    wands,
)
from rankstack.data.converters.common import Converter, Option
from rankstack.errors import RankstackError

CONVERTERS: dict[str, Converter] = {
    c.name: c
    for c in (amazon.CONVERTER, foursquare.CONVERTER, checkins.CONVERTER, taobao.CONVERTER, fuxictr.CONVERTER, criteo.CRITEO,
              criteo.AVAZU, aliccp.CONVERTER, esci.CONVERTER, wands.CONVERTER, pairs.CONVERTER)
}


def get_converter(name: str) -> Converter:
    """The converter registered as `name`; a `RankstackError` listing the known formats otherwise."""
    if name not in CONVERTERS:
        raise RankstackError(f"unknown format `{name}`; known formats: {', '.join(sorted(CONVERTERS))}.")
    return CONVERTERS[name]


def convert(format: str, input: str | Path, out: str | Path, options: dict[str, Any] | None = None) -> Path:
    """Convert `input` (a file or folder of format `format`) into a new dataset folder `out`.

    options: converter options by name; values may be Python values or the strings of `--option k=v`.
    """
    return get_converter(format).convert(input, out, **(options or {}))


__all__ = ["CONVERTERS", "Converter", "Option", "convert", "get_converter"]
