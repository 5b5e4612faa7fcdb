"""Users' tables (CSV, TSV, TXT, NPY, Parquet): read with validation, streamed, or written."""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import operator
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from realnvp.io import atomic_open

__all__ = [
    "READ_SUFFIXES",
    "WRITE_SUFFIXES",
    "Table",
    "TableError",
    "iter_table_chunks",
    "load_table",
    "save_table",
]


def _exact_float_option() -> dict[str, str]:
    """``read_csv`` options that parse every float exactly, found by trying (once).

    Some pandas versions parse with a fast converter that can miss the last digit (2.x, and
    3.0 on one machine here); ``float_precision="round_trip"`` is exact there. Where the
    default is already exact the option is left out (newer pandas deprecates it).
    """
    text = "x\n-0.21879166393254573\n1.3040000451301373e-300\n-7.037352358069927e+299\n"
    expected = [float(v) for v in text.split()[1:]]
    parsed = pd.read_csv(io.StringIO(text), engine="c")["x"].tolist()
    return {} if parsed == expected else {"float_precision": "round_trip"}


_EXACT_FLOATS = _exact_float_option()

TEXT_SUFFIXES = (".csv", ".tsv", ".txt", ".dat")
PARQUET_SUFFIXES = (".parquet", ".pq")
READ_SUFFIXES = (*TEXT_SUFFIXES, ".npy", *PARQUET_SUFFIXES)
"""File types :func:`load_table` reads, chosen by suffix (case-insensitive)."""

WRITE_SUFFIXES = (".csv", ".tsv", ".npy", *PARQUET_SUFFIXES)
"""File types :func:`save_table` writes."""

Columns = str | Sequence[str | int] | None
"""A column selection: names or 0-based indices, as a list or a comma-separated string."""

_HEAD_BYTES = 8192
_SNIFF_LINES = 50
_MAGIC = {
    b"\x93NUMPY": "looks like a NumPy .npy file; give it the .npy suffix",
    b"PAR1": "looks like a Parquet file; give it the .parquet suffix",
    b"PK\x03\x04": "is a zip archive (an .xlsx or .npz?); export it as CSV",
    b"\x1f\x8b": "is gzip-compressed; decompress it first",
}


class TableError(ValueError):
    """A table file cannot be used: the one-line message names the file and, where it
    applies, the column and the place.

    Places are 1-based and read as a person would find them: ``line N`` in a text file
    is the N-th line an editor shows (the header, when there is one, is line 1, and
    blank lines count), and ``row N`` in an NPY or Parquet file is the N-th data row.

    Example:
        >>> try:
        ...     load_table("no/such/data.csv")
        ... except TableError as e:
        ...     print(e)
        no/such/data.csv: no such file
    """


@dataclass(frozen=True)
class Table:
    """A validated numeric table: float64 ``data`` (rows, columns) and the column names.

    Example:
        >>> t = Table(np.zeros((3, 2)), ["x", "y"])
        >>> t.data.shape, t.columns
        ((3, 2), ['x', 'y'])
    """

    data: np.ndarray
    columns: list[str]


def load_table(path: str | os.PathLike[str], columns: Columns = None,
               n_columns: int | None = None) -> Table:
    """Read a whole table file, validated, as float64; see :func:`iter_table_chunks`.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "data.csv"
        >>> _ = p.write_text("x,y,label\\n1,2,cat\\n3,4.5,dog\\n")
        >>> t = load_table(p, columns="x,y")
        >>> t.columns, t.data.tolist()
        (['x', 'y'], [[1.0, 2.0], [3.0, 4.5]])
    """
    names, chunks = iter_table_chunks(path, columns, n_columns, chunk_rows=1_000_000)
    blocks = list(chunks)
    data = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
    return Table(data, names)


def iter_table_chunks(
    path: str | os.PathLike[str],
    columns: Columns = None,
    n_columns: int | None = None,
    chunk_rows: int = 100_000,
) -> tuple[list[str], Iterator[np.ndarray]]:
    """Open a table file and stream it as float64 blocks of at most ``chunk_rows`` rows.

    Returns ``(names, chunks)``. The format follows the suffix (:data:`READ_SUFFIXES`):

    - ``.csv``, ``.tsv``, ``.txt``, ``.dat``: UTF-8 text, with or without a byte-order
      mark; the delimiter (comma, tab, semicolon or runs of whitespace) is sniffed from
      the first lines. If every field of the first line is a number there is no header
      and the columns are named ``x0, x1, ...``; otherwise the first line is the header
      (an empty name becomes ``column<i>``). Blank lines are skipped but counted in line
      numbers; a quoted field spanning lines would shift them.
    - ``.npy``: a 2-D numeric array, memory-mapped, never unpickled; columns ``x0...``.
    - ``.parquet``, ``.pq``: numeric columns, read in record batches.

    ``columns`` picks columns by name or 0-based index (a list, or a string such as
    ``"x,y"`` or ``"0,1"``); names win over indices when a header holds digits. Columns
    left out may hold anything, e.g. text labels. ``n_columns``, if given, is the
    number of columns the caller needs. Selected values must be finite numbers: text,
    empty cells, NaN, infinities (including numbers too large for float64) and
    booleans (True/False is a label, not a measurement) raise :class:`TableError` naming
    the first bad cell. Problems with the file itself, its header or the selection
    are raised at once, with the first chunk; problems later in the data are raised
    while iterating, with line numbers counted from the top of the file. Memory stays
    bounded by ``chunk_rows`` (text through pandas' chunked reader, NPY memory-mapped,
    Parquet in record batches).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "data.tsv"
        >>> _ = p.write_text("1\\t2\\n3\\t4\\n5\\t6\\n")
        >>> names, chunks = iter_table_chunks(p, chunk_rows=2)
        >>> names, [c.shape for c in chunks]
        (['x0', 'x1'], [(2, 2), (1, 2)])
    """
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"Expected chunk_rows >= 1; got {chunk_rows!r}")
    if n_columns is not None and (isinstance(n_columns, bool) or operator.index(n_columns) < 1):
        raise ValueError(f"Expected n_columns >= 1; got {n_columns!r}")
    source = _open_source(path)
    _check_unique(source.names, source.label)
    selected = _select(source.names, columns, source.label)
    if n_columns is not None and len(selected) != n_columns:
        raise TableError(f"{source.label}: expected {n_columns} columns; got {len(selected)}")
    chunks = source.chunks(selected, chunk_rows)
    first = next(chunks, None)
    if first is None:
        raise TableError(f"{source.label}: {source.no_rows}")
    return [source.names[i] for i in selected], itertools.chain([first], chunks)


def save_table(path: str | os.PathLike[str], data: object, columns: Sequence[str]) -> Path:
    """Write a numeric table atomically (never a half-written file); returns the path.

    The format follows the suffix (:data:`WRITE_SUFFIXES`): CSV or TSV with a header
    line, NPY (names not stored) or Parquet (one column per name). float32 data stays
    float32 (so the text is the shortest that reads back to the same float32), anything
    else is written as float64; text holds the shortest digits that read back exactly.
    Finite values read back unchanged with :func:`load_table` (NaN and infinities are
    written as ``nan``/``inf``, which :func:`load_table` then refuses).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "samples.csv"
        >>> _ = save_table(p, np.array([[0.5, 1.0], [2.0, -3.25]]), ["x", "y"])
        >>> print(p.read_text(), end="")
        x,y
        0.5,1.0
        2.0,-3.25
    """
    target = Path(path)
    label = os.fspath(path)
    suffix = target.suffix.lower()
    if suffix not in WRITE_SUFFIXES:
        raise TableError(
            f"{label}: unsupported file type {suffix or '(no suffix)'!r} for writing; "
            f"expected one of: {', '.join(WRITE_SUFFIXES)}"
        )
    array = _check_writable(data, columns, label)
    names = [str(c) for c in columns]
    if not target.parent.is_dir():
        raise TableError(f"{target.parent}: no such folder")
    if target.is_dir():
        raise TableError(f"{label}: is a directory")
    if suffix in (".csv", ".tsv"):
        frame = pd.DataFrame(array, columns=names)
        with atomic_open(target, "w", newline="", encoding="utf-8") as f:
            frame.to_csv(f, sep="," if suffix == ".csv" else "\t", index=False,
                         lineterminator="\n")
    elif suffix == ".npy":
        with atomic_open(target, "wb") as f:
            np.save(f, array, allow_pickle=False)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({name: array[:, j] for j, name in enumerate(names)})
        with atomic_open(target, "wb") as f:
            pq.write_table(table, f)
    return target


# ---------------------------------------------------------------------------------------
# Validation shared by all formats
# ---------------------------------------------------------------------------------------


def _check_writable(data: object, columns: Sequence[str], label: str) -> np.ndarray:
    array = np.asarray(data)
    if array.ndim != 2:
        raise ValueError(f"Expected 2-D data (rows, columns); got shape {array.shape}")
    if array.dtype.kind not in "iuf":
        raise ValueError(f"Expected numeric data; got values of type {array.dtype}")
    if isinstance(columns, str) or len(columns) != array.shape[1]:
        raise ValueError(
            f"Expected {array.shape[1]} column names (a list); got {columns!r}"
        )
    names = [str(c) for c in columns]
    if any(not name.strip() for name in names):
        raise ValueError(f"Expected non-empty column names; got {names!r}")
    _check_unique(names, label)
    if all(_is_number(name) for name in names):
        raise ValueError(
            f"Column names that are all numbers ({', '.join(names)}) would read back as "
            "a data row; choose other names"
        )
    bad = _first_nonfinite(array.astype(np.float64, copy=False))
    if bad is not None:
        row, col = bad
        raise ValueError(f"Expected finite values (load_table refuses NaN and infinities); "
                         f"got {array[row, col]} in column {names[col]!r} at row {row + 1}")
    dtype = np.float32 if array.dtype == np.float32 else np.float64
    return np.ascontiguousarray(array, dtype=dtype)


def _check_unique(names: list[str], label: str) -> None:
    seen, dupes = set(), []
    for name in names:
        if name in seen and name not in dupes:
            dupes.append(name)
        seen.add(name)
    if dupes:
        raise TableError(f"{label}: duplicate column names: {', '.join(map(repr, dupes))}")


def _select(names: list[str], columns: Columns, label: str) -> list[int]:
    """0-based indices of the selected columns, in the order given."""
    if columns is None:
        return list(range(len(names)))
    items: list[str | int]
    if isinstance(columns, str):
        items = [part.strip() for part in columns.split(",")]
    elif isinstance(columns, Sequence):
        items = list(columns)
    else:
        raise TypeError(f"Expected columns as a list or a comma-separated string; got "
                        f"{type(columns).__name__}")
    if not items or items == [""]:
        raise TableError("--columns: no columns given")
    listing = _listing(names)
    index = {name: i for i, name in enumerate(names)}
    chosen: list[int] = []
    for item in items:
        if isinstance(item, str) and item in index:
            i = index[item]
        elif isinstance(item, str) and re.fullmatch(r"\d+", item):
            i = int(item)
        elif isinstance(item, str):
            raise TableError(f"--columns: no column {item!r} in {label} (columns: {listing})")
        else:
            if isinstance(item, bool):
                raise TypeError("Expected column names or indices; got bool")
            i = operator.index(item)
            if i < 0:
                raise TableError(f"--columns: expected column indices >= 0; got {i}")
        if i >= len(names):
            raise TableError(f"--columns: no column {i} in {label} (columns: {listing})")
        if i in chosen:
            raise TableError(f"--columns: column {names[i]!r} selected twice")
        chosen.append(i)
    return chosen


def _listing(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return bool(text.strip())


def _first_nonfinite(block: np.ndarray) -> tuple[int, int] | None:
    """``(row, column)`` of the first non-finite value in row-major order, if any."""
    bad = ~np.isfinite(block)
    if not bad.any():
        return None
    row = int(bad.any(axis=1).argmax())
    return row, int(bad[row].argmax())


def _nonfinite_message(value: float, name: str) -> str:
    return f"{'NaN' if np.isnan(value) else 'infinite value'} in column {name!r}"


# ---------------------------------------------------------------------------------------
# Sources: one per format, each with names, a label and a chunk iterator
# ---------------------------------------------------------------------------------------


class _Source:
    """A readable table: ``names`` of all columns and ``chunks(selected, rows)``."""

    label: str
    names: list[str]
    no_rows = "no data rows"

    def chunks(self, selected: list[int], rows: int) -> Iterator[np.ndarray]:
        raise NotImplementedError


def _open_source(path: str | os.PathLike[str]) -> _Source:
    label = os.fspath(path)
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in READ_SUFFIXES:
        raise TableError(
            f"{label}: unsupported file type {suffix or '(no suffix)'!r}; "
            f"expected one of: {', '.join(READ_SUFFIXES)}"
        )
    if not p.exists():
        raise TableError(f"{label}: no such file")
    if p.is_dir():
        raise TableError(f"{label}: is a directory")
    try:
        if suffix == ".npy":
            return _NpySource(p, label)
        if suffix in PARQUET_SUFFIXES:
            return _ParquetSource(p, label)
        return _TextSource(p, label, suffix)
    except PermissionError:
        raise TableError(f"{label}: permission denied") from None
    except IsADirectoryError:
        raise TableError(f"{label}: is a directory") from None


class _NpySource(_Source):
    def __init__(self, path: Path, label: str) -> None:
        self.label = label
        with open(path, "rb") as f:
            magic = f.read(6)
        if not magic:
            raise TableError(f"{label}: empty file")
        if magic.startswith(b"PK\x03\x04"):
            raise TableError(f"{label}: an .npz archive, not an .npy array; save one array "
                             "with np.save")
        if magic != b"\x93NUMPY":
            raise TableError(f"{label}: not a .npy file (no NumPy header)")
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as e:
            if "pickle" in str(e) or "Python objects" in str(e):
                raise TableError(
                    f"{label}: holds Python objects (a pickle); only numeric arrays are "
                    "read, and pickles never are (they can run code)"
                ) from None
            raise TableError(f"{label}: not a valid .npy file ({_one_line(e)})") from None
        except (OSError, EOFError) as e:
            raise TableError(f"{label}: not a valid .npy file ({_one_line(e)})") from None
        kind = array.dtype.kind
        if kind == "b":
            raise TableError(f"{label}: holds booleans, not numbers")
        if kind not in "iuf":
            raise TableError(f"{label}: holds {array.dtype} values, not real numbers")
        if array.ndim == 1:
            raise TableError(
                f"{label}: a 1-D array of shape {array.shape}; save it as 2-D (rows, "
                "columns), e.g. x.reshape(-1, 1) for one column"
            )
        if array.ndim != 2:
            raise TableError(f"{label}: expected a 2-D array (rows, columns); got shape "
                             f"{array.shape}")
        self.array = array
        self.names = [f"x{i}" for i in range(array.shape[1])]

    def chunks(self, selected: list[int], rows: int) -> Iterator[np.ndarray]:
        for start in range(0, self.array.shape[0], rows):
            block = np.asarray(self.array[start : start + rows][:, selected], dtype=np.float64)
            bad = _first_nonfinite(block)
            if bad is not None:
                r, c = bad
                message = _nonfinite_message(block[r, c], self.names[selected[c]])
                raise TableError(f"{self.label}: {message} at row {start + r + 1}")
            yield np.ascontiguousarray(block)


class _ParquetSource(_Source):
    def __init__(self, path: Path, label: str) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.label = label
        if path.stat().st_size == 0:
            raise TableError(f"{label}: empty file")
        try:
            self.file = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as e:
            raise TableError(f"{label}: not a valid Parquet file ({_one_line(e)})") from None
        self.schema = self.file.schema_arrow
        self.names = list(self.schema.names)

    def chunks(self, selected: list[int], rows: int) -> Iterator[np.ndarray]:
        import pyarrow as pa

        for i in selected:
            kind = self.schema.field(i).type
            if pa.types.is_boolean(kind):
                raise TableError(f"{self.label}: column {self.names[i]!r} holds booleans, "
                                 "not numbers")
            if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)
                    or pa.types.is_decimal(kind)):
                raise TableError(f"{self.label}: column {self.names[i]!r} is not numeric "
                                 f"(type {kind})")
        start = 0
        picked = [self.names[i] for i in selected]
        for batch in self.file.iter_batches(batch_size=rows, columns=picked):
            block = np.empty((batch.num_rows, len(selected)))
            for j in range(len(selected)):
                column = batch.column(j)
                if column.null_count:
                    row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
                    raise TableError(f"{self.label}: missing value in column "
                                     f"{self.names[selected[j]]!r} at row {start + row + 1}")
                block[:, j] = column.to_numpy(zero_copy_only=False).astype(np.float64)
            bad = _first_nonfinite(block)
            if bad is not None:
                r, c = bad
                message = _nonfinite_message(block[r, c], self.names[selected[c]])
                raise TableError(f"{self.label}: {message} at row {start + r + 1}")
            start += batch.num_rows
            if batch.num_rows:
                yield block


class _TextSource(_Source):
    """Delimited text: sniff encoding problems, the delimiter and the header, then read
    with pandas' chunked C parser (only the selected columns are parsed)."""

    no_rows = "header only, no data rows"

    def __init__(self, path: Path, label: str, suffix: str) -> None:
        self.path, self.label = path, label
        with open(path, "rb") as f:
            head = f.read(_HEAD_BYTES)
        if not head:
            raise TableError(f"{label}: empty file")
        self._check_text(head)
        lines, first = self._first_lines()
        if not lines:
            raise TableError(f"{label}: empty file (only blank lines)")
        self.sep = _sniff_delimiter(lines, suffix)
        fields = _split(lines[0], self.sep)
        self.has_header = not all(_is_number(f) for f in fields)
        if self.has_header:
            self.names = [f.strip() or f"column{i}" for i, f in enumerate(fields)]
        else:
            self.names = [f"x{i}" for i in range(len(fields))]
            self.no_rows = "no data rows"
        # Lines to skip before the data: blank lines before the first line, and the header.
        self.skip = first + (1 if self.has_header else 0)

    def _check_text(self, head: bytes) -> None:
        for magic, what in _MAGIC.items():
            if head.startswith(magic):
                raise TableError(f"{self.label}: {what}")
        controls = sum(byte < 9 or 13 < byte < 32 for byte in head)
        if b"\x00" in head or controls > len(head) // 100:
            raise TableError(f"{self.label}: not a text file (binary data; expected UTF-8 "
                             "text such as CSV)")
        try:
            codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
        except UnicodeDecodeError as e:
            raise TableError(f"{self.label}: not UTF-8 text (byte {e.start + 1}); save it "
                             "as UTF-8") from None

    def _first_lines(self) -> tuple[list[str], int]:
        """Up to 50 non-blank lines from the top, and how many lines precede the first."""
        lines: list[str] = []
        first = 0
        try:
            with open(self.path, encoding="utf-8-sig", newline="") as f:
                for line in f:
                    if not line.strip():
                        first += not lines
                        continue
                    lines.append(line.rstrip("\r\n"))
                    if len(lines) >= _SNIFF_LINES:
                        break
        except UnicodeDecodeError:
            raise TableError(f"{self.label}: not UTF-8 text; save it as UTF-8") from None
        return lines, first

    def chunks(self, selected: list[int], rows: int) -> Iterator[np.ndarray]:
        sep = r"\s+" if self.sep is None else self.sep
        try:
            reader = pd.read_csv(
                self.path, sep=sep, header=None, names=list(range(len(self.names))),
                index_col=False, skiprows=self.skip, dtype=None,
                keep_default_na=False, na_values=[], skip_blank_lines=True,
                encoding="utf-8-sig", chunksize=rows, engine="c", **_EXACT_FLOATS,
            )
        except pd.errors.EmptyDataError:
            return
        done = 0
        with reader:
            while True:
                try:
                    frame = next(reader)
                except StopIteration:
                    return
                except pd.errors.EmptyDataError:
                    return
                except pd.errors.ParserError as e:
                    raise self._parser_error(e) from None
                except UnicodeDecodeError:
                    raise TableError(f"{self.label}: not UTF-8 text; save it as UTF-8") from None
                if len(frame):
                    yield self._block(frame[selected], selected, done)
                done += len(frame)

    def _parser_error(self, error: Exception) -> TableError:
        found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(error))
        if found:
            expected, line, saw = found.groups()
            return TableError(f"{self.label}: line {line} has {saw} fields; expected {expected}")
        return TableError(f"{self.label}: cannot parse ({_one_line(error)})")

    def _block(self, frame: pd.DataFrame, selected: list[int], done: int) -> np.ndarray:
        """Float64 values of one chunk, or :class:`TableError` for its first bad cell."""
        block = np.empty(frame.shape)
        problems: list[tuple[int, int, str]] = []  # (row, column, message)
        for j, key in enumerate(frame.columns):
            name = self.names[selected[j]]
            series = frame[key]
            if pd.api.types.is_bool_dtype(series):
                raise TableError(f"{self.label}: column {name!r} holds booleans "
                                 "(True/False), not numbers")
            if pd.api.types.is_numeric_dtype(series):
                values = series.to_numpy(dtype=np.float64)
            else:
                values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64)
                text = series.astype(str).to_numpy()
                failed = np.isnan(values) & ~np.char.equal(np.char.lower(
                    np.char.strip(text.astype(str))), "nan")
                if failed.any():
                    row = int(failed.argmax())
                    problems.append((row, j, _text_problem(text[row], name)))
                    values = np.where(failed, 0.0, values)
            bad = ~np.isfinite(values)
            if bad.any():
                row = int(bad.argmax())
                problems.append((row, j, _nonfinite_message(values[row], name)))
            block[:, j] = values
        if problems:
            row, _, message = min(problems)
            line = self._line_of(done + row)
            raise TableError(f"{self.label}: {message} at line {line}")
        return block

    def _line_of(self, row: int) -> int:
        """The 1-based line of data row ``row`` (0-based), skipping blank lines as pandas
        does. Only called to report an error, so a scan of the file is fine."""
        with open(self.path, "rb") as f:
            number = 0
            for number, raw in enumerate(f, start=1):
                if number <= self.skip or not raw.strip():
                    continue
                if row == 0:
                    return number
                row -= 1
        return number


def _text_problem(text: str, name: str) -> str:
    if not text.strip():
        return f"missing value in column {name!r}"
    shown = text if len(text) <= 40 else text[:37] + "..."
    hint = " (use '.' for decimals, not ',')" if re.fullmatch(r"[+-]?\d+,\d+", text) else ""
    return f"column {name!r} has a non-numeric value {shown!r}{hint}"


def _sniff_delimiter(lines: list[str], suffix: str) -> str | None:
    """The delimiter splitting every sampled line into the same number (> 1) of fields,
    preferring the suffix's own; ``None`` means runs of whitespace."""
    order = {".tsv": "\t,;", ".csv": ",;\t"}.get(suffix, "\t,;")
    for sep in order:
        counts = {len(_split(line, sep)) for line in lines}
        if len(counts) == 1 and counts.pop() > 1:
            return sep
    counts = {len(line.split()) for line in lines}
    if len(counts) == 1 and counts.pop() > 1:
        return None
    # Ragged lines: take whatever splits the first line most (pandas names the bad line).
    best = max(order, key=lambda sep: len(_split(lines[0], sep)))
    if len(_split(lines[0], best)) > 1:
        return best
    return None if len(lines[0].split()) > 1 else order[0]


def _split(line: str, sep: str | None) -> list[str]:
    if sep is None:
        return line.split()
    return next(csv.reader([line], delimiter=sep))


def _one_line(error: BaseException, limit: int = 160) -> str:
    text = " ".join(str(error).split())
    return text[:limit] + ("..." if len(text) > limit else "")
