"""Parsing source files (GeoJSON, CSV, JSON) into typed records a node can import.

``read_source`` reads one file completely or raises ``allmende.errors.ImportFileError``;
nothing is half-read. See ``reader.read_source`` for the rules.
"""

from .model import FIELD_TYPES, FORMATS, FieldSpec, ParsedSource
from .reader import read_source

__all__ = ["FIELD_TYPES", "FORMATS", "FieldSpec", "ParsedSource", "read_source"]
