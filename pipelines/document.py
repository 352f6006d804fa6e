"""The unit every input reader produces: one document of plain-text paragraphs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Document:
    """A clean plain-text document: paragraphs of prose, in order.

    ``source`` names where it came from (file and line, or dump page id) for messages.
    """

    paragraphs: list[str]
    title: str | None = None
    source: str = ""

    def text_length(self) -> int:
        """Characters of text, counting one separator between paragraphs."""
        return sum(len(paragraph) for paragraph in self.paragraphs) + max(0, len(self.paragraphs) - 1)
