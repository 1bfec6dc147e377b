"""A Ray Data sink that writes finished parts (imports Ray: load only through clip_rt.scale.ray)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Optional

import pyarrow as pa
from ray.data import Datasink
from ray.data.block import BlockAccessor

from ..display import display_path
from ..errors import OutputError
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
        nodes: dict[str, dict[str, Any]] = {}
        if parts.NODE_ID in table.column_names:  # who computed these rows: into the part's footer
            nodes = parts.count_nodes(
                table.column(parts.NODE_IP).to_pylist(),
                table.column(parts.NODE_ID).to_pylist(),
                table.column("error").to_pylist(),
            )
            table = table.drop_columns([parts.NODE_IP, parts.NODE_ID])
        try:
            name = parts.write_part(self.out, table, nodes)
        except OSError as exc:  # full disk, no permission: one line on the driver, not Ray's traceback
            raise OutputError(f"{display_path(self.out)}: cannot write a part ({exc.strerror or exc})") from exc
        return {
            "part": name,
            "rows": table.num_rows,
            "failed": table.num_rows - table.column("error").null_count,
            "nodes": nodes,
        }

    def on_write_complete(self, write_result: Any) -> None:
        self.written = [r for r in write_result.write_returns if r]
