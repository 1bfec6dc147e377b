"""A Ray Data sink that writes finished parts (imports Ray: load only through clip_rt.scale.ray)."""
from __future__ import annotations

from typing import Any, Iterable, Optional

import pyarrow as pa
from ray.data import Datasink
from ray.data.block import BlockAccessor

from . import parts


class PartsDatasink(Datasink[Optional[dict[str, Any]]]):
    """Each write task concatenates its blocks (about *rows_per_part* rows) and writes one part
    with :func:`parts.write_part` (temporary file, fsync, rename). Writes run on the driver's
    node, so the output folder only has to exist there, not on every worker."""

    def __init__(self, out: str, rows_per_part: int) -> None:
        self.out = out
        self.rows_per_part = rows_per_part
        self.written: list[dict[str, Any]] = []

    @property
    def min_rows_per_write(self) -> Optional[int]:
        return self.rows_per_part

    @property
    def supports_distributed_writes(self) -> bool:
        return False

    def get_name(self) -> str:
        return "clip-rt parts"

    def write(self, blocks: Iterable[Any], ctx: Any) -> Optional[dict[str, Any]]:
        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return None
        table = pa.concat_tables(tables)
        name = parts.write_part(self.out, table)
        return {"part": name, "rows": table.num_rows, "failed": table.num_rows - table.column("error").null_count}

    def on_write_complete(self, write_result: Any) -> None:
        self.written = [r for r in write_result.write_returns if r]
