"""Reading users' tables: every bad file gets one clear TableError; good files round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from realnvp.datasets.files import TableError, iter_table_chunks, load_table, save_table

BAD = {
    "missing": (None, "no such file"),
    "empty": (b"", "empty file"),
    "header-only": (b"x,y\n", "header only"),
    "non-numeric": (b"x,y\n1,2\n3,abc\n", "non-numeric value 'abc' in column 'y' at line 3"),
    "nan": (b"x,y\n1,nan\n", "NaN value in column 'y' at line 2"),
    "empty-cell": (b"x,y\n1,2\n,4\n", "missing or NaN value in column 'x' at line 3"),
    "inf": (b"x,y\n1,inf\n", "infinite value 'inf' in column 'y' at line 2"),
    "overflow": (b"x,y\n1,1e400\n", "infinite value '1e400'"),
    "duplicate-columns": (b"x,x\n1,2\n", "duplicate column names: 'x'"),
    "ragged": (b"x,y\n1,2,3\n", "fields"),
    "binary": (b"\x00\x01\x02garbage", "not a text file"),
    "booleans": (b"x,y\n1,True\n", "non-numeric value 'True'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_text_files(tmp_path: Path, case: str) -> None:
    content, message = BAD[case]
    path = tmp_path / "data.csv"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(TableError, match=message) as info:
        load_table(path)
    assert "data.csv" in str(info.value)


@pytest.mark.parametrize(
    ("columns", "n_columns", "message"),
    [("z", None, "no column 'z'"), ("5", None, "out of range"), (None, 2, "expected 2 columns"),
     ("x,x", None, "selected twice")],
    ids=["unknown-name", "bad-index", "wrong-count", "twice"],
)
def test_bad_column_selection(tmp_path: Path, columns, n_columns, message) -> None:
    path = tmp_path / "d.csv"
    path.write_text("x,y,z2\n1,2,3\n")
    with pytest.raises(TableError, match=message):
        load_table(path, columns=columns, n_columns=n_columns)


def test_directory_and_unknown_suffix(tmp_path: Path) -> None:
    (tmp_path / "d.csv").mkdir()
    with pytest.raises(TableError, match="is a directory"):
        load_table(tmp_path / "d.csv")
    (tmp_path / "d.xlsx").write_text("x")
    with pytest.raises(TableError, match="unsupported file type"):
        load_table(tmp_path / "d.xlsx")


@pytest.mark.parametrize(
    ("content", "columns"),
    [(b"\xef\xbb\xbfa,b\n1,2\n3,4\n", ["a", "b"]), (b"a;b\n1;2\n3;4\n", ["a", "b"]),
     (b"a\tb\n1\t2\n3\t4\n", ["a", "b"]), (b"1 2\n3 4\n", ["x0", "x1"]),
     (b"1,2\n3,4\n", ["x0", "x1"])],
    ids=["bom", "semicolon", "tab", "whitespace-headerless", "headerless"],
)
def test_dialects(tmp_path: Path, content: bytes, columns: list[str]) -> None:
    path = tmp_path / "d.txt"
    path.write_bytes(content)
    table = load_table(path)
    assert table.columns == columns
    assert table.data.tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_select_by_name_and_index_skips_label_column(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("x,label,y\n1,a,2\n3,b,4\n")
    assert load_table(path, columns="x,y").data.tolist() == [[1, 2], [3, 4]]
    assert load_table(path, columns=[2, 0]).columns == ["y", "x"]


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".npy", ".parquet"])
def test_save_and_load_round_trip(tmp_path: Path, suffix: str) -> None:
    data = np.random.default_rng(0).normal(size=(50, 3)) * 1e3
    path = save_table(tmp_path / f"t{suffix}", data, ["a", "b", "c"])
    table = load_table(path)
    np.testing.assert_array_equal(table.data, data)
    assert not list(tmp_path.glob("*.tmp"))


def test_chunks_equal_whole_and_report_global_lines(tmp_path: Path) -> None:
    data = np.arange(2500, dtype=float).reshape(-1, 2)
    path = save_table(tmp_path / "t.csv", data, ["a", "b"])
    _, chunks = iter_table_chunks(path, chunk_rows=100)
    np.testing.assert_array_equal(np.concatenate(list(chunks)), data)
    lines = path.read_text().splitlines()
    lines[901] = "1.0,nan"
    path.write_text("\n".join(lines) + "\n")
    _, chunks = iter_table_chunks(path, chunk_rows=100)
    with pytest.raises(TableError, match="at line 902"):
        list(chunks)


def test_npy_refuses_pickles_and_1d(tmp_path: Path) -> None:
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(TableError, match="pickle"):
        load_table(tmp_path / "o.npy")
    np.save(tmp_path / "v.npy", np.arange(4.0))
    with pytest.raises(TableError, match="1-D"):
        load_table(tmp_path / "v.npy")
    bad = np.array([[1.0, np.nan]])
    np.save(tmp_path / "n.npy", bad)
    with pytest.raises(TableError, match="NaN in column 'x1' at row 1"):
        load_table(tmp_path / "n.npy")
