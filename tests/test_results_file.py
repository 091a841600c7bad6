"""The results file: read without losing or rewriting a valid record, and never touch a file that
is not fastgen's."""

from __future__ import annotations

import json
import logging
import os
import random
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastgen.jobs.local import prepare_output
from fastgen.jobs.parts import find_parts, part_path
from fastgen.jobs.results_file import (
    ResultsFileError,
    outcome_of,
    path_key,
    read_results,
    repair_tail,
    results_header,
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


@settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
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


def _open_fds_on(path) -> list[str]:
    fds = Path("/proc/self/fd")
    targets = []
    for fd in fds.iterdir():
        try:
            targets.append(os.readlink(fd))
        except OSError:
            continue  # the listing's own descriptor, closed meanwhile
    return [t for t in targets if t == str(path)]


def test_the_header_writer_is_closed_when_writing_the_header_fails(tmp_path):
    out = tmp_path / "results.jsonl"
    header = results_header("builtin:digits", {"weighting": float("nan")})  # not valid JSON
    with pytest.raises(ValueError) as raised:
        prepare_output(out, header)
    # The traceback (kept alive by `raised`) still holds the function's locals: an unclosed writer
    # would keep its file open until it is gone.
    assert raised.traceback and _open_fds_on(out) == []


# -- part files of a torchrun job ------------------------------------------------------------------
def _jsonl(*objects: dict) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objects)


JOB = results_header("builtin:digits", {"classes": ["cat", "dog"], "loss": "l2", "seed": 0})
OTHER_JOB = results_header("builtin:numbers", {"classes": ["cat", "dog", "bird"], "loss": "l1", "seed": 0})


def test_parts_of_another_job_are_refused_and_nothing_changes(tmp_path):
    out = tmp_path / "results.jsonl"
    part = part_path(out, 1, 2)
    part.write_bytes(_jsonl(OTHER_JOB, *_records(3, seed=8)))
    before = part.read_bytes()
    with pytest.raises(ResultsFileError, match=r"part file .* another job \(classes: .*; loss: .*; model: .*\)"):
        prepare_output(out, JOB)
    assert not out.exists() and part.read_bytes() == before


def test_forced_parts_of_another_job_keep_their_own_header(tmp_path):
    out = tmp_path / "results.jsonl"
    records = _records(3, seed=9)
    part_path(out, 0, 2).write_bytes(_jsonl(OTHER_JOB, *records))
    contents = prepare_output(out, JOB, force=True)
    assert out.read_bytes() == _jsonl(OTHER_JOB, *records, JOB)  # their records stay under their header
    assert find_parts(out) == [] and len(contents.records) == 3


def test_parts_of_the_same_job_are_adopted_under_one_header(tmp_path):
    out = tmp_path / "results.jsonl"
    records = _records(4, seed=10)
    part_path(out, 0, 2).write_bytes(_jsonl(JOB, *records[:2]))
    part_path(out, 1, 2).write_bytes(_jsonl(JOB, *records[2:]))
    contents = prepare_output(out, JOB)
    assert out.read_bytes() == _jsonl(JOB, *records)
    assert set(contents.records) == {path_key(r["path"]) for r in records}  # they count as done


def test_parts_without_a_header_are_refused_when_nothing_vouches_for_them(tmp_path):
    out = tmp_path / "results.jsonl"
    part = part_path(out, 0, 1)
    part.write_bytes(_jsonl(*_records(2, seed=11)))  # written before parts had headers
    with pytest.raises(ResultsFileError, match="has no header"):
        prepare_output(out, JOB)
    assert not out.exists()
    out.write_bytes(_jsonl(JOB))  # the header the run that wrote the part had appended first
    prepare_output(out, JOB)
    assert out.read_bytes() == _jsonl(JOB, *_records(2, seed=11))
