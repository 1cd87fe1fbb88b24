"""Landing files that grow after a micro-batch read them.

Spark's file source reads a path once: a file written in two steps (not written aside and renamed into
place) had its first part scored and the rest never read, silently. The job records each landing file's
size when a batch takes it and, at every later batch, reads what a file gained since: those lines are
quarantined as `appended_after_read` with their text, so nothing is lost without a word.

The size is taken when the batch starts, after Spark listed its files: a file that grows in between is
read by Spark up to its listed length and recorded a little longer, so such a narrow race can miss a
report; it never reports lines Spark did read.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

APPENDED = "appended_after_read"
# Files remembered at most (the oldest are forgotten first): a job running for months must not grow it.
REMEMBERED = 20_000


def local_path(uri: str) -> str | None:
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        return None
    return unquote(parsed.path)


class LandingWatch:
    def __init__(self, state_file: Path):
        self.state_file = state_file
        try:
            self.sizes: dict[str, int] = json.loads(state_file.read_text())
        except (FileNotFoundError, ValueError):
            self.sizes = {}

    @staticmethod
    def batch_files(source_log: Path, batch_id: int) -> list[str]:
        """The files Spark's file source took for `batch_id`, from its metadata log (`<id>`, or `<id>.compact`
        every tenth batch; a line per file after the version line). The micro-batch's DataFrame does not
        list them (`inputFiles()` is empty for a streaming scan)."""
        for name in (str(batch_id), f"{batch_id}.compact"):
            try:
                lines = (source_log / name).read_text().splitlines()[1:]
            except OSError:
                continue
            entries = [json.loads(line) for line in lines if line.strip()]
            return [e["path"] for e in entries if e.get("batchId") == batch_id]
        return []

    @staticmethod
    def sizes_of(uris: list[str]) -> dict[str, int]:
        """The current size of each local file among a batch's input files."""
        sizes = {}
        for uri in uris:
            path = local_path(uri)
            if path is None:
                continue
            try:
                sizes[path] = os.stat(path).st_size
            except OSError:
                continue
        return sizes

    def appended_lines(self, exclude: dict[str, int]) -> list[tuple[str, str]]:
        """(path, line) of every line added to a remembered file since it was read (files of `exclude`,
        the batch at hand, are not looked at); their new sizes are remembered."""
        found = []
        for path, size in list(self.sizes.items()):
            if path in exclude:
                continue
            try:
                now = os.stat(path).st_size
            except OSError:  # moved or deleted (cleanSource): nothing more to read from it
                del self.sizes[path]
                continue
            if now <= size:
                continue
            with open(path, "rb") as f:
                f.seek(size)
                data = f.read(now - size)
            self.sizes[path] = size + len(data)
            for line in data.replace(b"\r\n", b"\n").split(b"\n"):
                if line.strip():
                    found.append((path, line.decode("utf-8", "replace")))
        return found

    def remember(self, sizes: dict[str, int]) -> None:
        for path, size in sizes.items():
            self.sizes.pop(path, None)
            self.sizes[path] = size
        while len(self.sizes) > REMEMBERED:
            del self.sizes[next(iter(self.sizes))]

    def save(self, write_atomic) -> None:
        write_atomic(self.state_file, lambda p: p.write_text(json.dumps(self.sizes)))
