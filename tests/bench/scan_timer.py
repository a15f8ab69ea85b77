"""Times full scans of one exported Iceberg table (issue 11 benchmark).

    python scan_timer.py TABLE_DIR [repeats=5]

Prints one JSON line: rows, and the median seconds of pyiceberg
(`scan().to_arrow()`) and DuckDB (`SELECT * FROM iceberg_scan(...)` fetched as
Arrow), position deletes applied by both.
"""

import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "e2e"))
from verify_lake import _remap_io, _sql_str, duckdb_connection, find_metadata  # noqa: E402

from pyiceberg.table import StaticTable  # noqa: E402


def main():
    table_dir = os.path.abspath(sys.argv[1])
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    version, meta, _ = find_metadata(table_dir)
    tbl = StaticTable.from_metadata(meta)
    tbl.io = _remap_io(tbl.metadata.location, table_dir)
    con = duckdb_connection()
    scan = f"iceberg_scan('{_sql_str(table_dir)}', allow_moved_paths = true, version = '{version}')"
    py, duck, rows = [], [], set()
    for _ in range(repeats):
        t = time.perf_counter()
        n = tbl.scan().to_arrow().num_rows
        py.append(time.perf_counter() - t)
        rows.add(n)
        t = time.perf_counter()
        n = con.execute(f"SELECT * FROM {scan}").to_arrow_table().num_rows
        duck.append(time.perf_counter() - t)
        rows.add(n)
    tasks = list(tbl.scan().plan_files())
    print(json.dumps({
        "rows": sorted(rows),
        "dataFiles": len(tasks),
        "deleteFiles": sum(len(t.delete_files) for t in tasks),
        "pyicebergSeconds": statistics.median(py),
        "duckdbSeconds": statistics.median(duck),
    }))


if __name__ == "__main__":
    main()
