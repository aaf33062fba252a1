"""`InputReport`: what reading the input skipped or changed, counted and printed.

Nothing is dropped silently: every reader that skips something (an empty
file, a non-UTF-8 line, a malformed row) or changes it (a line split because
it is longer than a sequence) calls `report.note(reason, where)`, and the run
prints `report.summary()`. The first few locations of each reason are kept so
that the summary points at the offending file and line.
"""

from __future__ import annotations

import dataclasses

MAX_EXAMPLES = 3


def read_utf8(path, error: type[Exception]) -> str:
    """The text of `path`; a non-UTF-8 byte raises `error` naming the file and line."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise error(
            f"{path}:{line}: not valid UTF-8 (byte {data[e.start]:#04x}); re-encode the file "
            "as UTF-8"
        ) from None


@dataclasses.dataclass
class InputReport:
    """Counts of what was read, skipped and changed.

    Attributes:
      source: what was read (for the summary's first line).
      counts: totals of what was read (`files`, `documents`, `lines`, ...).
      notes: reason -> how many times it happened.
      where: reason -> the first few locations (`file:line`).
      info: other facts worth printing (e.g. how well packing fills rows).
    """

    source: str = ""
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    notes: dict[str, int] = dataclasses.field(default_factory=dict)
    where: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    info: list[str] = dataclasses.field(default_factory=list)

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    def note(self, reason: str, where: str = "", n: int = 1) -> None:
        """Record that `reason` happened `n` times, at `where` (e.g. `file:line`)."""
        self.notes[reason] = self.notes.get(reason, 0) + n
        if where:
            examples = self.where.setdefault(reason, [])
            if len(examples) < MAX_EXAMPLES:
                examples.append(where)

    def add_info(self, line: str) -> None:
        if line not in self.info:
            self.info.append(line)

    def merge(self, other: InputReport) -> None:
        for k, v in other.counts.items():
            self.count(k, v)
        for k, v in other.notes.items():
            self.notes[k] = self.notes.get(k, 0) + v
            examples = self.where.setdefault(k, [])
            examples.extend(other.where.get(k, [])[: MAX_EXAMPLES - len(examples)])
        for line in other.info:
            self.add_info(line)

    def summary(self) -> str:
        """A few human-readable lines: what was read, then each skip or change."""
        read = ", ".join(f"{v:,} {k}" for k, v in self.counts.items())
        lines = [f"{self.source or 'input'}: {read or 'nothing read'}"]
        for reason, n in sorted(self.notes.items()):
            at = self.where.get(reason)
            more = f" (first: {', '.join(at)})" if at else ""
            lines.append(f"  {n:,} x {reason}{more}")
        lines.extend(f"  {line}" for line in self.info)
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> InputReport:
        return cls(**d)
