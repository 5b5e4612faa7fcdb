"""Tests for realnvp.datasets.files: one clear TableError per bad table, exact round trips."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from realnvp.datasets.files import (
    READ_SUFFIXES,
    Table,
    TableError,
    iter_table_chunks,
    load_table,
    save_table,
)


def _write(folder: Path, name: str, content: bytes | str | None) -> Path:
    path = folder / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    elif content is not None:
        path.write_bytes(content)
    return path


# ---------------------------------------------------------------------------------------
# Every bad input: (file name, content, load_table keywords, the whole expected message)
# ---------------------------------------------------------------------------------------

BAD_TEXT = {
    "missing-file": ("data.csv", None, {}, "data.csv: no such file"),
    "empty-file": ("data.csv", b"", {}, "data.csv: empty file"),
    "only-blank-lines": ("data.csv", "\n  \n\n", {}, "data.csv: empty file (only blank lines)"),
    "header-only": ("data.csv", "x,y\n", {}, "data.csv: header only, no data rows"),
    "header-and-blank-lines": ("data.csv", "x,y\n\n\n", {},
                               "data.csv: header only, no data rows"),
    "non-numeric": ("data.csv", "x,y\n" + "1,2\n" * 10 + "3,abc\n", {},
                    "data.csv: column 'y' has a non-numeric value 'abc' at line 12"),
    "first-bad-cell-wins": ("data.csv", "x,y\n1,2\n3,abc\noops,4\n", {},
                            "data.csv: column 'y' has a non-numeric value 'abc' at line 3"),
    "nan": ("data.csv", "x,y\n1,2\nNaN,3\n", {}, "data.csv: NaN in column 'x' at line 3"),
    "empty-cell": ("data.csv", "x,y\n1,2\n,4\n", {},
                   "data.csv: missing value in column 'x' at line 3"),
    "short-row": ("data.csv", "x,y\n1,2\n3\n", {},
                  "data.csv: missing value in column 'y' at line 3"),
    "long-row": ("data.csv", "x,y\n1,2\n3,4,5\n", {}, "data.csv: line 3 has 3 fields; expected 2"),
    "infinity": ("data.csv", "x,y\n1,inf\n", {},
                 "data.csv: infinite value in column 'y' at line 2"),
    "overflow": ("data.csv", "x,y\n1,2\n3,1e400\n", {},
                 "data.csv: infinite value in column 'y' at line 3"),
    "blank-lines-still-count": ("data.csv", "\nx,y\n1,2\n\n3,abc\n", {},
                                "data.csv: column 'y' has a non-numeric value 'abc' at line 5"),
    "duplicate-names": ("data.csv", "x,x\n1,2\n", {}, "data.csv: duplicate column names: 'x'"),
    "booleans": ("data.csv", "x,flag\n1,True\n2,False\n", {},
                 "data.csv: column 'flag' holds booleans (True/False), not numbers"),
    "unselected-label-is-checked-when-all": (
        "data.csv", "x,label\n1,cat\n", {},
        "data.csv: column 'label' has a non-numeric value 'cat' at line 2"),
    "decimal-comma": ("data.csv", "x;y\n1,5;2\n", {},
                      "data.csv: column 'x' has a non-numeric value '1,5' (use '.' for "
                      "decimals, not ',') at line 2"),
    "wrong-count": ("data.csv", "x,y,z\n1,2,3\n", {"n_columns": 2},
                    "data.csv: expected 2 columns; got 3"),
    "unknown-column": ("data.csv", "x,y\n1,2\n", {"columns": "x,z"},
                       "--columns: no column 'z' in data.csv (columns: x, y)"),
    "index-out-of-range": ("data.csv", "x,y\n1,2\n", {"columns": [0, 5]},
                           "--columns: no column 5 in data.csv (columns: x, y)"),
    "negative-index": ("data.csv", "x,y\n1,2\n", {"columns": [-1]},
                       "--columns: expected column indices >= 0; got -1"),
    "selected-twice": ("data.csv", "x,y\n1,2\n", {"columns": "x,0"},
                       "--columns: column 'x' selected twice"),
    "nothing-selected": ("data.csv", "x,y\n1,2\n", {"columns": ""},
                         "--columns: no columns given"),
    "binary-garbage": ("data.csv", bytes(range(256)) * 8, {},
                       "data.csv: not a text file (binary data; expected UTF-8 text such as "
                       "CSV)"),
    "latin-1": ("data.csv", "x,y\n1,2\n\u00c4,3\n".encode("latin-1"), {},
                "data.csv: not UTF-8 text (byte 9); save it as UTF-8"),
    "npy-named-csv": ("data.csv", b"\x93NUMPY\x01\x00", {},
                      "data.csv: looks like a NumPy .npy file; give it the .npy suffix"),
    "unknown-suffix": ("data.xlsx", "x", {},
                       "data.xlsx: unsupported file type '.xlsx'; expected one of: "
                       + ", ".join(READ_SUFFIXES)),
}


@pytest.mark.parametrize("case", list(BAD_TEXT), ids=list(BAD_TEXT))
def test_bad_table_raises_one_clear_error(tmp_path, monkeypatch, case):
    name, content, kwargs, message = BAD_TEXT[case]
    _write(tmp_path, name, content)
    monkeypatch.chdir(tmp_path)  # the message names the file as the user gave it
    with pytest.raises(TableError) as info:
        load_table(name, **kwargs)
    assert str(info.value) == message
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)


def test_directory_is_refused(tmp_path, monkeypatch):
    (tmp_path / "data.csv").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TableError, match=r"^data\.csv: is a directory$"):
        load_table("data.csv")


def test_path_is_named_as_given(tmp_path):
    path = tmp_path / "sub" / "data.csv"
    with pytest.raises(TableError) as info:
        load_table(path)
    assert str(info.value) == f"{path}: no such file"


BAD_BINARY = {
    "npy-1d": (lambda p: np.save(p, np.arange(4.0)),
               "a 1-D array of shape (4,); save it as 2-D (rows, columns), e.g. "
               "x.reshape(-1, 1) for one column"),
    "npy-pickle": (lambda p: np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True),
                   "holds Python objects (a pickle); only numeric arrays are read, and "
                   "pickles never are (they can run code)"),
    "npy-3d": (lambda p: np.save(p, np.zeros((2, 2, 2))),
               "expected a 2-D array (rows, columns); got shape (2, 2, 2)"),
    "npy-text": (lambda p: np.save(p, np.array([["a", "b"]])),
                 "holds <U1 values, not real numbers"),
    "npy-bool": (lambda p: np.save(p, np.ones((2, 2), dtype=bool)), "holds booleans, not numbers"),
    "npy-nan": (lambda p: np.save(p, np.array([[1.0, 2.0], [3.0, np.nan]])),
                "NaN in column 'x1' at row 2"),
    "npy-inf": (lambda p: np.save(p, np.array([[-np.inf, 2.0]])),
                "infinite value in column 'x0' at row 1"),
    "npy-no-rows": (lambda p: np.save(p, np.zeros((0, 2))), "no data rows"),
    "npy-garbage": (lambda p: p.write_bytes(b"not numpy at all"),
                    "not a .npy file (no NumPy header)"),
    "npy-is-npz": (lambda p: p.write_bytes(b"PK\x03\x04rest"),
                   "an .npz archive, not an .npy array; save one array with np.save"),
    "parquet-text-column": (
        lambda p: pd.DataFrame({"x": [1.0], "s": ["a"]}).to_parquet(p),
        "column 's' is not numeric (type large_string)"),
    "parquet-booleans": (lambda p: pd.DataFrame({"b": [True]}).to_parquet(p),
                         "column 'b' holds booleans, not numbers"),
    "parquet-null": (lambda p: pd.DataFrame({"x": [1.0, 2.0, None]}).to_parquet(p),
                     "missing value in column 'x' at row 3"),
    "parquet-inf": (lambda p: pd.DataFrame({"x": [1.0, np.inf]}).to_parquet(p),
                    "infinite value in column 'x' at row 2"),
    "parquet-no-rows": (lambda p: pd.DataFrame({"x": np.zeros(0)}).to_parquet(p),
                        "no data rows"),
    "parquet-garbage": (lambda p: p.write_bytes(b"garbage!!"), "not a valid Parquet file"),
}


@pytest.mark.parametrize("case", list(BAD_BINARY), ids=list(BAD_BINARY))
def test_bad_npy_and_parquet(tmp_path, case):
    write, message = BAD_BINARY[case]
    path = tmp_path / ("data.npy" if case.startswith("npy") else "data.parquet")
    write(path)
    with pytest.raises(TableError) as info:
        load_table(path)
    assert str(info.value).startswith(f"{path}: {message}")


# ---------------------------------------------------------------------------------------
# Good tables
# ---------------------------------------------------------------------------------------

GOOD_TEXT = {
    "comma": ("d.csv", "a,b\n1,2\n3,4\n", ["a", "b"]),
    "utf8-bom": ("d.csv", b"\xef\xbb\xbfa,b\n1,2\n3,4\n", ["a", "b"]),
    "semicolon": ("d.csv", "a;b\n1;2\n3;4\n", ["a", "b"]),
    "tab": ("d.tsv", "a\tb\n1\t2\n3\t4\n", ["a", "b"]),
    "whitespace": ("d.txt", "a  b\n 1   2\n3 4\n", ["a", "b"]),
    "headerless": ("d.csv", "1,2\n3,4\n", ["x0", "x1"]),
    "headerless-whitespace": ("d.txt", "1 2\n3\t4\n", ["x0", "x1"]),
    "crlf-and-blank-lines": ("d.csv", "\r\na,b\r\n1,2\r\n\r\n3,4\r\n\r\n", ["a", "b"]),
    "quoted-names": ("d.csv", '"a","b, c"\n1,2\n3,4\n', ["a", "b, c"]),
    "spaces-and-ints": ("d.csv", " a , b \n1, 2\n3 ,4\n", ["a", "b"]),
    "empty-header-name": ("d.csv", ",b\n1,2\n3,4\n", ["column0", "b"]),
}


@pytest.mark.parametrize("case", list(GOOD_TEXT), ids=list(GOOD_TEXT))
def test_text_dialects(tmp_path, case):
    name, content, columns = GOOD_TEXT[case]
    table = load_table(_write(tmp_path, name, content))
    assert isinstance(table, Table)
    assert table.columns == columns
    assert table.data.dtype == np.float64 and table.data.flags.c_contiguous
    assert table.data.tolist() == [[1.0, 2.0], [3.0, 4.0]]


@pytest.mark.parametrize(
    ("columns", "names", "rows"),
    [
        ("x,y", ["x", "y"], [[1.0, 2.0], [3.0, 4.0]]),
        (" y , x ", ["y", "x"], [[2.0, 1.0], [4.0, 3.0]]),
        ("0,2", ["x", "y"], [[1.0, 2.0], [3.0, 4.0]]),
        ([2, "x"], ["y", "x"], [[2.0, 1.0], [4.0, 3.0]]),
        (("y",), ["y"], [[2.0], [4.0]]),
    ],
    ids=["names", "names-spaced-reordered", "indices-string", "mixed-list", "tuple"],
)
def test_column_selection_skips_a_text_label(tmp_path, columns, names, rows):
    path = _write(tmp_path, "d.csv", "x,label,y\n1,cat,2\n3,dog,4\n")
    table = load_table(path, columns=columns, n_columns=len(names))
    assert table.columns == names and table.data.tolist() == rows


def test_names_win_over_indices(tmp_path):
    path = _write(tmp_path, "d.csv", "1,0,k\n5,6,7\n")  # a header, since 'k' is not a number
    assert load_table(path, columns="0").data.tolist() == [[6.0]]
    assert load_table(path, columns=[0]).data.tolist() == [[5.0]]


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".npy", ".parquet"])
def test_save_and_load_round_trip_exactly(tmp_path, suffix):
    rng = np.random.default_rng(0)
    data = rng.standard_normal((200, 3)) * np.array([1e-300, 1.0, 1e300])
    data[0] = [0.1, -0.0, 123456789012345678.0]
    path = save_table(tmp_path / f"samples{suffix}", data, ["a", "b c", "d"])
    assert path == tmp_path / f"samples{suffix}"
    table = load_table(path)
    np.testing.assert_array_equal(table.data, data)
    assert table.columns == (["x0", "x1", "x2"] if suffix == ".npy" else ["a", "b c", "d"])
    assert sorted(os.listdir(tmp_path)) == [path.name]  # no temporary file left behind


def test_float32_is_written_with_its_shortest_text(tmp_path):
    data = np.array([[0.1, 2.5], [1e-3, -7.0]], dtype=np.float32)
    path = save_table(tmp_path / "s.csv", data, ["x", "y"])
    assert path.read_text() == "x,y\n0.1,2.5\n0.001,-7.0\n"
    np.testing.assert_array_equal(load_table(path).data.astype(np.float32), data)


def test_save_validates(tmp_path):
    with pytest.raises(TableError, match="unsupported file type '.xlsx' for writing"):
        save_table(tmp_path / "s.xlsx", np.zeros((1, 1)), ["a"])
    with pytest.raises(TableError, match="no such folder"):
        save_table(tmp_path / "missing" / "s.csv", np.zeros((1, 1)), ["a"])
    with pytest.raises(TableError, match="duplicate column names: 'a'"):
        save_table(tmp_path / "s.csv", np.zeros((1, 2)), ["a", "a"])
    with pytest.raises(ValueError, match="Expected 2 column names"):
        save_table(tmp_path / "s.csv", np.zeros((1, 2)), ["a"])
    with pytest.raises(ValueError, match="would read back as a data row"):
        save_table(tmp_path / "s.csv", np.zeros((1, 2)), ["0", "1"])
    with pytest.raises(ValueError, match="Expected 2-D data"):
        save_table(tmp_path / "s.csv", np.zeros(3), ["a"])
    assert os.listdir(tmp_path) == []


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = save_table(tmp_path / "s.csv", np.ones((2, 1)), ["a"])
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", broken)
    with pytest.raises(OSError, match="disk full"):
        save_table(path, np.zeros((2, 1)), ["a"])
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["s.csv"]


def test_npy_integers_and_selection(tmp_path):
    np.save(tmp_path / "d.npy", np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int32))
    table = load_table(tmp_path / "d.npy", columns="x2,0")
    assert table.columns == ["x2", "x0"] and table.data.tolist() == [[3.0, 1.0], [6.0, 4.0]]


def test_parquet_selects_numeric_columns_next_to_text(tmp_path):
    path = tmp_path / "d.parquet"
    pd.DataFrame({"x": [1, 2], "label": ["a", "b"], "y": [0.5, 1.5]}).to_parquet(path)
    table = load_table(path, columns=["y", "x"])
    assert table.columns == ["y", "x"] and table.data.tolist() == [[0.5, 1.0], [1.5, 2.0]]


# ---------------------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".npy", ".parquet"])
def test_chunks_concatenate_to_the_whole_table(tmp_path, suffix):
    data = np.arange(2501 * 2, dtype=np.float64).reshape(-1, 2) / 7
    path = save_table(tmp_path / f"t{suffix}", data, ["a", "b"])
    names, chunks = iter_table_chunks(path, chunk_rows=300)
    blocks = list(chunks)
    assert all(len(b) <= 300 for b in blocks) and len(blocks) == 9
    np.testing.assert_array_equal(np.concatenate(blocks), load_table(path).data)
    np.testing.assert_array_equal(np.concatenate(blocks), data)


def test_chunked_errors_count_lines_across_chunks(tmp_path):
    lines = ["x,y"] + [f"{i},{i + 1}" for i in range(1000)]
    lines[700] = "5,nan"  # line 701 of the file
    lines.insert(300, "")  # a blank line above it shifts it to 702
    path = _write(tmp_path, "data.csv", "\n".join(lines) + "\n")
    names, chunks = iter_table_chunks(path, chunk_rows=128)
    assert names == ["x", "y"]
    got = []
    with pytest.raises(TableError) as info:
        for block in chunks:
            got.append(block)
    assert str(info.value) == f"{path}: NaN in column 'y' at line 702"
    assert sum(len(b) for b in got) == 640  # the good chunks came through first
    with pytest.raises(TableError, match="at line 702"):
        load_table(path)


def test_chunked_npy_reports_global_rows(tmp_path):
    data = np.ones((1000, 2))
    data[777, 1] = np.inf
    np.save(tmp_path / "d.npy", data)
    _, chunks = iter_table_chunks(tmp_path / "d.npy", chunk_rows=100)
    with pytest.raises(TableError, match="infinite value in column 'x1' at row 778"):
        list(chunks)


def test_problems_with_the_file_are_raised_before_iterating(tmp_path):
    path = _write(tmp_path, "d.csv", "x,y\n")
    with pytest.raises(TableError, match="header only"):
        iter_table_chunks(path)
    with pytest.raises(ValueError, match="Expected chunk_rows >= 1; got 0"):
        iter_table_chunks(path, chunk_rows=0)
