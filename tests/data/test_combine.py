from __future__ import annotations

import inspect
import tracemalloc
from pathlib import Path

import pytest

import aloe.data.combine as combine_module
from aloe.data import formats
from aloe.data.combine import combine
from aloe.data.formats import read_records, write_records
from aloe.errors import AloeError, InputFileError
from tests.data import leftovers, make_doc, write_json_list, write_jsonl

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def _ids(path: Path) -> list[str]:
    return [d["matpes_id"] for d in read_records(path)]


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    matpes = [
        make_doc(seed=0, mp_id="mp-1", matpes_id="T0"),
        make_doc(seed=1, mp_id="mp-2", matpes_id="T1"),
        make_doc(seed=2, mp_id="mp-2", matpes_id="T2"),
        make_doc(seed=3, mp_id=None, matpes_id="T3"),
    ]
    mp_aloe = [
        make_doc(seed=10, mp_id="mp-2", matpes_id="A0"),  # in MatPES: dropped
        make_doc(seed=11, mp_id="mp-3", matpes_id="A1"),  # kept
        make_doc(seed=12, mp_id=None, matpes_id="A2"),  # null id: kept
        make_doc(seed=13, mp_id="mp-1", matpes_id="A3"),  # in MatPES: dropped
        make_doc(seed=14, mp_id="mp-4", matpes_id="A4"),  # kept
        make_doc(seed=15, mp_id=None, matpes_id="A5"),  # null id: kept (MatPES's null ids do not match)
    ]
    del mp_aloe[5]["provenance"]  # no provenance at all counts as a null id
    mp_aloe_path = write_jsonl(tmp_path / "MP-ALOE.jsonl.gz", mp_aloe)
    return mp_aloe_path, write_json_list(tmp_path / "MatPES.json.gz", matpes)


@pytest.mark.parametrize("out_name", ["combined.jsonl.gz", "combined.json", "combined.xyz", "combined.db"])
def test_combine_rule(tmp_path, inputs, out_name):
    mp_aloe, matpes = inputs
    counts = combine(mp_aloe, matpes, tmp_path / "out" / out_name)
    assert counts.matpes == 4 and counts.matpes_ids == 2
    assert (counts.mp_aloe_kept, counts.mp_aloe_dropped, counts.mp_aloe_null_id_kept) == (4, 2, 2)
    assert counts.written == 8
    assert _ids(tmp_path / "out" / out_name) == ["T0", "T1", "T2", "T3", "A1", "A2", "A4", "A5"]
    assert counts.as_dict()["skipped_bad"] == {str(matpes): 0, str(mp_aloe): 0}


def test_combine_keeps_documents_unchanged(tmp_path, inputs):
    mp_aloe, matpes = inputs
    combine(mp_aloe, matpes, tmp_path / "c.jsonl")
    out = list(read_records(tmp_path / "c.jsonl"))
    originals = list(read_records(matpes)) + [
        d for d in read_records(mp_aloe) if d["matpes_id"] in {"A1", "A2", "A4", "A5"}
    ]
    assert out == originals


def test_bad_input_leaves_no_output(tmp_path, inputs):
    mp_aloe, matpes = inputs
    bad_docs = [make_doc(seed=s, mp_id=f"mp-9{s}") for s in range(3)]
    bad = write_jsonl(tmp_path / "bad.jsonl", bad_docs, raw_lines={3: "{"})
    out = tmp_path / "c.jsonl"
    with pytest.raises(InputFileError, match=r"bad.jsonl: line 3: bad JSON"):
        combine(bad, matpes, out)
    assert not out.exists() and leftovers(tmp_path) == []
    counts = combine(bad, matpes, out, skip_bad=True)
    assert counts.skipped_bad[str(bad)] == 1 and counts.written == 4 + 2
    with pytest.raises(AloeError, match="overwrite an input"):
        combine(mp_aloe, matpes, matpes)


def test_combine_streams(tmp_path, inputs, monkeypatch):
    """The writer gets a generator (no list of documents), fed by lazy readers."""
    mp_aloe, matpes = inputs
    seen = {}
    real = combine_module.write_records

    def spy(records, path, *args, **kwargs):
        seen["generator"] = inspect.isgenerator(records)
        return real(records, path, *args, **kwargs)

    monkeypatch.setattr(combine_module, "write_records", spy)
    combine(mp_aloe, matpes, tmp_path / "c.jsonl")
    assert seen["generator"] is True


def test_combine_memory_is_independent_of_the_number_of_documents(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, "JSON_CHUNK_CHARS", 1 << 14)  # so the text buffer is small beside the files
    peaks = {}
    for n in (500, 2000):
        matpes = tmp_path / f"matpes{n}.json.gz"
        mp_aloe = tmp_path / f"mpaloe{n}.jsonl.gz"
        # few distinct ids: the id set stays small, so what could grow is only a list of documents
        write_records((make_doc(n=4, seed=s % 40, mp_id=f"mp-{s % 7}") for s in range(n)), matpes)
        write_records((make_doc(n=4, seed=s % 40, mp_id=f"mp-{s % 11}") for s in range(n)), mp_aloe)
        tracemalloc.start()
        try:
            counts = combine(mp_aloe, matpes, tmp_path / f"out{n}.jsonl.gz")
            peaks[n] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert counts.written == n + counts.mp_aloe_kept
    assert peaks[2000] < 1.5 * peaks[500] + (64 << 10), peaks


def test_published_files_if_present(tmp_path):
    mp_aloe = SHARED_DATA / "MP-ALOE-2025.jsonl.gz"
    matpes = SHARED_DATA / "MatPES-R2SCAN-2025.1.json.gz"
    if not (mp_aloe.is_file() and matpes.is_file()):
        pytest.skip(f"published MP-ALOE / MatPES files not found in {SHARED_DATA}")
    from itertools import islice

    assert len(list(islice(read_records(mp_aloe), 100))) == 100
    assert len(list(islice(read_records(matpes), 100))) == 100
