"""A benchmark's output: each line printed as it is measured, and all of them kept in
bench/out/<name>.txt (the figures the README's table quotes)."""

from __future__ import annotations

from pathlib import Path

OUT = Path(__file__).parent / "out"


class Report:
    def __init__(self, name: str):
        self.path = OUT / f"{name}.txt"
        self.lines: list[str] = []

    def say(self, line: str):
        print(line, flush=True)
        self.lines.append(line)

    def save(self):
        OUT.mkdir(exist_ok=True)
        self.path.write_text("\n".join(self.lines) + "\n")
