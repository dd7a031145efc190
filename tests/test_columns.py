"""core.columns: id and text columns without a Python object per row."""

import numpy as np
import pytest
from numcodecs import VLenUTF8

from teachclip.core.columns import IdColumn, StringColumn


def test_id_column_is_a_sequence_of_the_ids():
    ids = ["b", "a", "ccc", "é-ü", "x" * 40]
    column = IdColumn.of(ids)
    assert list(column) == ids and column == ids and len(column) == 5
    assert column[3] == "é-ü" and column[-1] == "x" * 40 and list(column[1:3]) == ["a", "ccc"]
    assert "ccc" in column and "cc" not in column
    assert column.nbytes == 5 * 40  # fixed width: the longest id's UTF-8 bytes


def test_sorted_order_is_python_string_order_and_positions_join_by_search():
    ids = sorted(["video10", "video9", "Ä", "z", "é", "a b", "日本"])
    column = IdColumn.of(ids)
    assert column.is_sorted_unique()
    assert column.positions(["z", "nope", "日本", "video9"]).tolist() == [ids.index("z"), -1, ids.index("日本"),
                                                                           ids.index("video9")]
    assert not IdColumn.of(["b", "a"]).is_sorted_unique()
    assert list(IdColumn.of(["a", "b", "a", "c", "b"]).repeated()) == ["a", "b"]
    assert IdColumn.of([]).positions(["a"]).tolist() == [-1]


def test_nul_is_refused():
    with pytest.raises(ValueError, match="NUL"):
        IdColumn.of(["ok", "bad\x00"])


def test_vlen_utf8_parse_matches_numcodecs_and_refuses_damage():
    ids = [f"caption-{i}-{'ü' * (i % 7)}" for i in range(1000)]
    raw = bytes(VLenUTF8().encode(np.array(ids, dtype=object)))
    assert IdColumn.from_vlen_utf8(raw, 1000, 64) == ids
    for damaged, reason in [(raw[:-3], "truncated"), (raw + b"x", "after the last id"),
                            (raw.replace(b"caption-5-", b"caption-5\xff", 1), "not UTF-8")]:
        with pytest.raises(ValueError, match=reason):
            IdColumn.from_vlen_utf8(damaged, 1000, 64)
    with pytest.raises(ValueError, match="999 are expected"):
        IdColumn.from_vlen_utf8(raw, 999, 64)
    with pytest.raises(ValueError, match="longer than 5"):
        IdColumn.from_vlen_utf8(raw, 1000, 5)


def test_string_column_reads_and_selects():
    texts = ["a dog runs", "", "wörld", "x" * 300]
    column = StringColumn.of(texts)
    assert list(column) == texts and column == texts and column[-2] == "wörld"
    assert column[1:3] == texts[1:3] and column[np.array([3, 0])] == [texts[3], texts[0]]
    assert column.select(np.array([2, 0, 2, 1, 3])) == [texts[2], texts[0], texts[2], texts[1], texts[3]]
    with pytest.raises(IndexError):
        column[4]


def test_a_spilled_column_reads_its_texts_from_disk():
    texts = [f"caption {i} {'ü' * (i % 5)}" for i in range(3000)]
    column = StringColumn.of(texts, spill=True)
    assert column.spilled and column.nbytes == 8 * 3000  # the offsets only: the texts are in the file
    assert column == texts and column[1234] == texts[1234] and column[-1] == texts[-1]
    assert column.select(np.arange(3000)) is column
    picked = column.select(np.array([5, 2999, 5]))
    assert picked.spilled and list(picked) == [texts[5], texts[2999], texts[5]]
    assert StringColumn.of([], spill=True) == []


def test_an_id_no_column_can_hold_is_absent():
    column = IdColumn.of(sorted(["a", "b", "c"]))
    assert column.positions(["b", "bad\x00", "\ud800", "c"]).tolist() == [1, -1, -1, 2]
