"""Users' tables (CSV, TSV, NPY, Parquet) read into validated float64 arrays."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SUFFIXES", "Table", "TableError", "iter_table_chunks", "load_table", "save_table"]

TEXT_SUFFIXES = (".csv", ".tsv", ".txt", ".dat")
SUFFIXES = (*TEXT_SUFFIXES, ".npy", ".parquet", ".pq")


class TableError(ValueError):
    """A table file cannot be used: the message names the file and, where known, the column
    and the line (1-based, as an editor shows it, header included) or row (NPY/Parquet)."""


@dataclass
class Table:
    """Numeric rows of a file: ``data`` is float64 ``(rows, columns)``."""

    data: np.ndarray
    columns: list[str]


Columns = str | Sequence[str | int] | None


def load_table(path: str | Path, columns: Columns = None, n_columns: int | None = None) -> Table:
    """Read a whole table; every problem raises :class:`TableError` naming file, column, line.

    Text files: UTF-8 (a BOM is fine), delimiter sniffed among comma, tab, semicolon and
    white space; a first row that is not all numbers is the header, else the columns are
    named ``x0, x1, ...``. Every selected value must be a finite number: empty cells, NaN,
    infinities (also overflowing literals like ``1e400``) and words, ``True``/``False``
    included, are errors. ``columns`` picks columns by name or 0-based index (a list, or a
    comma-separated string); unselected columns may hold anything.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "d.csv"
        >>> _ = p.write_text("x,y,label\\n1,2,a\\n3,4,b\\n")
        >>> t = load_table(p, columns="x,y")
        >>> t.columns, t.data.tolist()
        (['x', 'y'], [[1.0, 2.0], [3.0, 4.0]])
    """
    names, chunks = iter_table_chunks(path, columns, n_columns, chunk_rows=1_000_000)
    parts = list(chunks)
    if not parts:
        raise TableError(f"{Path(path).name}: header only, no data rows")
    return Table(np.concatenate(parts, axis=0), names)


def iter_table_chunks(
    path: str | Path, columns: Columns = None, n_columns: int | None = None,
    chunk_rows: int = 100_000,
) -> tuple[list[str], Iterator[np.ndarray]]:
    """``(column names, iterator of float64 chunks)``, validated like :func:`load_table`.

    Memory stays bounded by ``chunk_rows`` whatever the file's size; errors found in a later
    chunk name the line in the whole file.
    """
    p = _check_path(path)
    suffix = p.suffix.lower()
    if suffix == ".npy":
        return _npy_chunks(p, columns, n_columns, chunk_rows)
    if suffix in (".parquet", ".pq"):
        return _parquet_chunks(p, columns, n_columns, chunk_rows)
    return _text_chunks(p, columns, n_columns, chunk_rows)


def _check_path(path: str | Path) -> Path:
    p = Path(path)
    if not p.exists():
        raise TableError(f"{p}: no such file")
    if p.is_dir():
        raise TableError(f"{p}: is a directory, not a file")
    if p.suffix.lower() not in SUFFIXES:
        raise TableError(f"{p.name}: unsupported file type {p.suffix or '(none)'!r}; "
                         f"expected one of {', '.join(SUFFIXES)}")
    try:
        size = p.stat().st_size
    except OSError as e:
        raise TableError(f"{p}: cannot read ({e.strerror})") from None
    if size == 0:
        raise TableError(f"{p.name}: empty file")
    return p


def _select(names: list[str], columns: Columns, n_columns: int | None, file: str) -> list[int]:
    seen: set[str] = set()
    dupes = sorted({n for n in names if n in seen or seen.add(n)})  # type: ignore[func-returns-value]
    if columns is None:
        chosen = list(range(len(names)))
    else:
        wanted = [c.strip() for c in columns.split(",")] if isinstance(columns, str) else list(
            columns)
        chosen = []
        for c in wanted:
            if isinstance(c, str) and c in names:
                chosen.append(names.index(c))
            elif isinstance(c, int) or (isinstance(c, str) and c.lstrip("-").isdigit()):
                i = int(c)
                if not 0 <= i < len(names):
                    raise TableError(f"--columns: index {i} out of range for {file} "
                                     f"({len(names)} columns)")
                chosen.append(i)
            else:
                raise TableError(f"--columns: no column {c!r} in {file} "
                                 f"(columns: {', '.join(names)})")
        if not chosen:
            raise TableError("--columns: no columns selected")
    picked = [names[i] for i in chosen]
    bad = [d for d in dupes if d in picked]
    if bad:
        raise TableError(f"{file}: duplicate column names: {', '.join(map(repr, bad))}")
    if len(set(chosen)) != len(chosen):
        raise TableError(f"--columns: a column is selected twice ({', '.join(picked)})")
    if n_columns is not None and len(chosen) != n_columns:
        raise TableError(f"{file}: expected {n_columns} columns; got {len(chosen)}"
                         + (f" ({', '.join(picked)})" if len(picked) <= 10 else ""))
    return chosen


def _sniff(first_line: str) -> str | None:
    counts = {d: first_line.count(d) for d in (",", "\t", ";")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] > 0 else None  # None: split on white space


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _text_chunks(p: Path, columns: Columns, n_columns: int | None, chunk_rows: int
                 ) -> tuple[list[str], Iterator[np.ndarray]]:
    import pandas as pd

    name = p.name
    with p.open("rb") as f:
        head = f.read(65536)
    if b"\x00" in head:
        raise TableError(f"{name}: not a text file (binary data)")
    try:
        text = head.decode("utf-8-sig")
    except UnicodeDecodeError:
        if len(head) < 65536:
            raise TableError(f"{name}: not UTF-8 text") from None
        text = head[:-4].decode("utf-8-sig", errors="ignore")
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise TableError(f"{name}: empty file (no data rows)")
    sep = "\t" if p.suffix.lower() == ".tsv" else _sniff(lines[0])
    first = next(csv.reader([lines[0]], delimiter=sep)) if sep else lines[0].split()
    first = [c.strip() for c in first]
    has_header = not all(_is_number(c) for c in first)
    names = first if has_header else [f"x{i}" for i in range(len(first))]
    if has_header and any(n == "" for n in names):
        names = [n or f"column{i}" for i, n in enumerate(names)]
    chosen = _select(names, columns, n_columns, name)
    try:
        reader = pd.read_csv(
            p, sep=sep if sep else r"\s+", header=None, skiprows=1 if has_header else 0,
            dtype=str, keep_default_na=False, chunksize=chunk_rows, encoding="utf-8-sig",
            skip_blank_lines=True, engine="c" if sep else "python",
        )
    except pd.errors.EmptyDataError:
        raise TableError(f"{name}: header only, no data rows") from None
    offset = 2 if has_header else 1

    def chunks() -> Iterator[np.ndarray]:
        nonlocal offset
        seen_rows = False
        try:
            for frame in reader:
                if frame.shape[1] != len(names):
                    raise TableError(f"{name}: expected {len(names)} fields per line; "
                                     f"got {frame.shape[1]}")
                block = _parse_text_block(frame.iloc[:, chosen], names, chosen, name, offset)
                offset += frame.shape[0]
                seen_rows = seen_rows or frame.shape[0] > 0
                yield block
        except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
            if isinstance(e, TableError):
                raise
            raise TableError(f"{name}: {' '.join(str(e).split())[:200]}") from None
        if not seen_rows:
            raise TableError(f"{name}: header only, no data rows")

    return [names[i] for i in chosen], chunks()


def _parse_text_block(frame: Any, names: list[str], chosen: list[int], file: str,
                      offset: int) -> np.ndarray:
    import pandas as pd

    out = np.empty(frame.shape, dtype=np.float64)
    for j in range(frame.shape[1]):
        raw = frame.iloc[:, j].str.strip()
        values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            i = int(np.argmax(bad))
            cell = raw.iloc[i]
            col = names[chosen[j]]
            where = f"in column {col!r} at line {offset + i}"
            if cell == "" or cell.lower() in ("nan", "na", "n/a", "null", "none"):
                raise TableError(f"{file}: missing or NaN value {where}")
            if _is_number(cell):
                raise TableError(f"{file}: infinite value {cell!r} {where}")
            hint = " (pick numeric columns with --columns)" if len(names) > len(chosen) or (
                len(names) > 1) else ""
            raise TableError(f"{file}: non-numeric value {cell[:40]!r} {where}{hint}")
        out[:, j] = values
    return out


def _check_block(block: np.ndarray, names: list[str], file: str, first_row: int) -> np.ndarray:
    finite = np.isfinite(block)
    if not finite.all():
        i, j = np.argwhere(~finite)[0]
        kind = "NaN" if np.isnan(block[i, j]) else "infinite value"
        raise TableError(f"{file}: {kind} in column {names[j]!r} at row {first_row + i}")
    return block


def _npy_chunks(p: Path, columns: Columns, n_columns: int | None, chunk_rows: int
                ) -> tuple[list[str], Iterator[np.ndarray]]:
    try:
        arr = np.load(p, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        if "pickle" in str(e).lower() or "object" in str(e).lower():
            raise TableError(f"{p.name}: holds Python objects (pickle); refused, since loading "
                             "a pickle can run code") from None
        raise TableError(f"{p.name}: not a valid NPY file ({e})") from None
    except (OSError, EOFError) as e:
        raise TableError(f"{p.name}: not a valid NPY file ({e})") from None
    if arr.ndim == 1:
        raise TableError(f"{p.name}: a 1-D array of {arr.shape[0]} values; save it as 2-D "
                         "(rows, features), e.g. x.reshape(-1, 1)")
    if arr.ndim != 2:
        raise TableError(f"{p.name}: expected a 2-D array (rows, features); got shape "
                         f"{arr.shape}")
    if not (np.issubdtype(arr.dtype, np.number) and not np.issubdtype(arr.dtype,
                                                                      np.complexfloating)):
        raise TableError(f"{p.name}: expected numbers; got dtype {arr.dtype}")
    if arr.shape[0] == 0:
        raise TableError(f"{p.name}: no data rows")
    names = [f"x{i}" for i in range(arr.shape[1])]
    chosen = _select(names, columns, n_columns, p.name)

    def chunks() -> Iterator[np.ndarray]:
        for start in range(0, arr.shape[0], chunk_rows):
            block = np.asarray(arr[start : start + chunk_rows][:, chosen], dtype=np.float64)
            yield _check_block(block, [names[i] for i in chosen], p.name, start + 1)

    return [names[i] for i in chosen], chunks()


def _parquet_chunks(p: Path, columns: Columns, n_columns: int | None, chunk_rows: int
                    ) -> tuple[list[str], Iterator[np.ndarray]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(p)
    except (pa.ArrowException, OSError) as e:
        raise TableError(f"{p.name}: not a valid Parquet file ({e})") from None
    names = [str(n) for n in pf.schema_arrow.names]
    chosen = _select(names, columns, n_columns, p.name)
    picked = [names[i] for i in chosen]
    for i in chosen:
        field = pf.schema_arrow.field(i)
        if not (pa.types.is_integer(field.type) or pa.types.is_floating(field.type)):
            raise TableError(f"{p.name}: column {names[i]!r} is not numeric ({field.type})")
    if pf.metadata.num_rows == 0:
        raise TableError(f"{p.name}: no data rows")

    def chunks() -> Iterator[np.ndarray]:
        start = 1
        for batch in pf.iter_batches(batch_size=chunk_rows, columns=picked):
            block = np.column_stack([
                batch.column(k).to_numpy(zero_copy_only=False).astype(np.float64)
                for k in range(len(picked))
            ])
            yield _check_block(block, picked, p.name, start)
            start += block.shape[0]

    return picked, chunks()


def save_table(path: str | Path, data: np.ndarray, columns: Sequence[str]) -> Path:
    """Write rows to CSV, TSV, NPY or Parquet (by suffix), atomically.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "s.csv"
        >>> _ = save_table(p, np.array([[1.5, 2.0]]), ["a", "b"])
        >>> p.read_text()
        'a,b\\n1.5,2.0\\n'
    """
    from realnvp.io import atomic_open

    p = Path(path)
    suffix = p.suffix.lower()
    data = np.asarray(data)
    if data.dtype != np.float32:
        data = data.astype(np.float64)
    kind = data.dtype.type  # str() of a numpy float: the shortest text that reads back exactly
    if suffix not in SUFFIXES:
        raise TableError(f"{p.name}: unsupported file type {p.suffix or '(none)'!r}; "
                         f"expected one of {', '.join(SUFFIXES)}")
    if p.is_dir():
        raise TableError(f"{p}: is a directory; give a file name")
    if not p.parent.is_dir():
        raise TableError(f"{p.parent}: no such folder")
    if suffix == ".npy":
        with atomic_open(p, "wb") as f:
            np.save(f, data, allow_pickle=False)
    elif suffix in (".parquet", ".pq"):
        import pandas as pd

        buffer = io.BytesIO()
        pd.DataFrame(data, columns=list(columns)).to_parquet(buffer, index=False)
        with atomic_open(p, "wb") as f:
            f.write(buffer.getvalue())
    else:
        sep = "\t" if suffix == ".tsv" else ","
        with atomic_open(p, "w", newline="") as f:
            writer = csv.writer(f, delimiter=sep, lineterminator="\n")
            writer.writerow(list(columns))
            for row in data:
                writer.writerow([str(kind(v)) for v in row])
    return p
