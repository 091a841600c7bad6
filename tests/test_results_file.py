"""The results file: read without losing or rewriting a valid record, and never touch a file that
is not fastgen's."""

from __future__ import annotations

import json
import logging
import random
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastgen.jobs.local import prepare_output
from fastgen.jobs.results_file import (
    ResultsFileError,
    outcome_of,
    path_key,
    read_results,
    repair_tail,
    scan_results,
)


def _records(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    names = ["cat", "dog", "bird"]
    out = []
    for i in range(n):
        if rng.random() < 0.2:
            out.append({"path": f"/data/img{i:03d}.png", "error": f"image file cannot be decoded ({rng.random():.6f})"})
        else:
            scores = {name: rng.uniform(0.05, 0.9) for name in names}
            out.append({"path": f"/data/img{i:03d}.png", "prediction": min(scores, key=scores.get), "scores": scores,
                        "unet_evals": rng.randint(20, 500)})  # fmt: skip
    return out


def _lines(records: list[dict]) -> list[bytes]:
    return [json.dumps(r).encode() + b"\n" for r in records]


def test_a_garbage_line_in_the_middle_loses_nothing_and_names_its_line(tmp_path, caplog):
    records = _records(10, seed=3)
    lines = _lines(records)
    lines.insert(5, b'{"path": "/data/img005.png", "predic\xff garbage\n')  # line 6
    out = tmp_path / "results.jsonl"
    out.write_bytes(b"".join(lines))
    before = out.read_bytes()
    with caplog.at_level(logging.WARNING, logger="fastgen.jobs.results_file"):
        contents = prepare_output(out)
    assert out.read_bytes() == before  # nothing cut, nothing rewritten
    assert list(read_results(out).values()) == records
    assert list(contents.records.values()) == [outcome_of(r) for r in records]
    assert contents.bad_lines == [6]
    assert "line 6 not a fastgen record" in caplog.text


def test_only_an_unterminated_last_line_is_cut(tmp_path):
    records = _records(6, seed=4)
    out = tmp_path / "results.jsonl"
    whole = b"".join(_lines(records))
    out.write_bytes(whole + b'{"path": "/data/img999.png", "predic')  # a write cut short
    prepare_output(out)
    assert out.read_bytes() == whole
    assert list(read_results(out).values()) == records


def test_a_whole_last_record_without_its_newline_is_kept_and_terminated(tmp_path):
    records = _records(4, seed=5)
    out = tmp_path / "results.jsonl"
    whole = b"".join(_lines(records))
    out.write_bytes(whole[:-1])
    prepare_output(out)
    assert out.read_bytes() == whole


@pytest.mark.parametrize("text", [b"my notes\n", b"my notes", b"\n{}\n", b'{"path": 3}\n', b"a,b,c\n1,2,3\n"])
def test_a_file_that_is_not_fastgens_is_refused_untouched(tmp_path, text):
    notes = tmp_path / "notes.txt"
    notes.write_bytes(text)
    with pytest.raises(ResultsFileError, match="not a fastgen results file"):
        prepare_output(notes)
    assert notes.read_bytes() == text


def test_the_latest_record_of_a_path_wins(tmp_path):
    first, second = _records(2, seed=6)
    retried = {**second, "path": first["path"]}
    out = tmp_path / "results.jsonl"
    out.write_bytes(b"".join(_lines([first, second, retried])))
    records = read_results(out)
    assert records[path_key(first["path"])] == retried and len(records) == 2


_garbage = st.one_of(
    st.binary(min_size=1, max_size=40).filter(lambda b: b"\n" not in b),
    st.text(string.printable.replace("\n", ""), min_size=1, max_size=40).map(str.encode),
    st.just(b'{"path": "/data/x.png"}'),  # JSON, but not a record
    st.just(b"[1, 2, 3]"),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n_records=st.integers(1, 30),
    seed=st.integers(0, 10_000),
    garbage=st.lists(st.tuples(st.integers(1, 1_000), _garbage), max_size=8),
    cut=st.one_of(st.none(), st.integers(1, 200)),
)
def test_no_valid_record_is_ever_lost(tmp_path, n_records, seed, garbage, cut):
    """Valid records with garbage lines anywhere after the first line and, maybe, a last line
    cut short: every valid record is read back, and repairing changes only that last line."""
    records = _records(n_records, seed)
    lines = _lines(records)
    for position, junk in garbage:
        lines.insert(1 + position % len(lines), junk + b"\n")
    data = b"".join(lines)
    if cut is not None:
        extra = json.dumps(_records(1, seed + 1)[0]).encode()
        data += extra[: cut % len(extra)] or extra[:1]
    out = tmp_path / "fuzz.jsonl"
    out.write_bytes(data)
    contents = scan_results(out)
    assert {key: r for key, r in contents.records.items()} == {path_key(r["path"]): r for r in records}
    repair_tail(out, contents)
    assert out.read_bytes() == b"".join(lines)
