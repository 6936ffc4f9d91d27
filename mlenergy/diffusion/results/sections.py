"""Typed sections of results.json: dataclasses whose fields are their results.json keys, in
results.json order. A section writes itself (`to_results`), so that its keys are spelled once,
where it is defined, and its readers (the summary, the plot, the analysis) use attributes."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar


class Section:
    """A typed part of results.json. Subclasses are dataclasses; a field holding a section (or a
    list or mapping of sections) is written through that section's own `to_results`."""

    # The results.json key a section is written under when nothing else places it: a probe
    # added to probes/__init__.py's ADDED_PROBES is written there without another module
    # naming it.
    RESULTS_KEY: ClassVar[str | None] = None

    def to_results(self) -> dict:
        return {f.name: _results_value(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_results(cls, entries: dict | None):
        """The section of a producer's results.json entries (None stays None). A key the
        section does not know, or one it misses, fails here instead of going unwritten."""
        return None if entries is None else cls(**entries)


def _results_value(value: Any) -> Any:
    if isinstance(value, Section):
        return value.to_results()
    if isinstance(value, list):
        return [_results_value(v) for v in value]
    if isinstance(value, Mapping):  # read-only mappings (MappingProxyType) included
        return {k: _results_value(v) for k, v in value.items()}
    return value
