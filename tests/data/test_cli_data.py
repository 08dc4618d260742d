from __future__ import annotations

import typer
import yaml
from typer.testing import CliRunner

from aloe.cli import data as data_cli
from aloe.data.formats import read_records, write_records
from tests.data import leftovers, make_doc, write_json_list, write_jsonl

runner = CliRunner()


def make_app() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(data_cli.app, name="data")

    @app.callback()
    def _root() -> None:
        """Test root."""

    return app


APP = make_app()


def invoke(*args: str):
    return runner.invoke(APP, ["data", *map(str, args)])


def test_help_lists_the_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("convert", "combine", "stats"):
        assert command in result.output


def test_convert_by_extension_and_by_format(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [make_doc(seed=s) for s in range(3)])
    result = invoke("convert", src, tmp_path / "train.xyz")
    assert result.exit_code == 0, result.output
    assert "wrote 3 records" in result.output
    import ase.io

    frames = ase.io.read(tmp_path / "train.xyz", ":")
    assert len(frames) == 3 and "REF_stress" in frames[0].info and "REF_forces" in frames[0].arrays
    result = invoke("convert", tmp_path / "train.xyz", tmp_path / "out.data", "--format", "db")
    assert result.exit_code == 0, result.output
    assert len(list(read_records(tmp_path / "out.data", "db"))) == 3


def test_convert_bad_line_is_one_line_with_exit_2(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [make_doc(seed=s) for s in range(4)], raw_lines={2: "{bad"})
    out = tmp_path / "o.json"
    result = invoke("convert", src, out)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"aloe: error: {src}: line 2: bad JSON (")
    assert not out.exists() and leftovers(tmp_path) == []
    result = invoke("convert", src, out, "--skip-bad")
    assert result.exit_code == 0, result.output
    assert "wrote 3 records" in result.output and "skipped 1" in result.output
    assert len(list(read_records(out))) == 3


def test_convert_unknown_extension(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [make_doc()])
    result = invoke("convert", src, tmp_path / "out.cif")
    assert result.exit_code == 2 and "cannot tell the format" in result.output


def test_combine_command(tmp_path):
    matpes = write_json_list(tmp_path / "MatPES.json", [make_doc(seed=0, mp_id="mp-1")])
    mp_aloe = write_jsonl(
        tmp_path / "MP-ALOE.jsonl",
        [make_doc(seed=1, mp_id="mp-1"), make_doc(seed=2, mp_id=None), make_doc(seed=3, mp_id="mp-7")],
    )
    out = tmp_path / "combined.jsonl.gz"
    result = invoke("combine", mp_aloe, matpes, "-o", out)
    assert result.exit_code == 0, result.output
    assert "2 docs kept (1 with a null id), 1 dropped" in result.output
    assert "wrote 3 docs" in result.output
    assert len(list(read_records(out))) == 3
    result = invoke("combine", tmp_path / "missing.jsonl", matpes, "-o", tmp_path / "x.jsonl")
    assert result.exit_code == 2 and "missing.jsonl: no such file" in result.output


def test_stats_command(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.db"
    write_records([make_doc(seed=s, cohesive=-3.0) for s in range(5)], a)
    write_records([make_doc(n=3, seed=s) for s in range(4)], b)
    out = tmp_path / "stats"
    result = invoke("stats", a, b, "-o", out, "--name", "MatPES", "--name", "mine")
    assert result.exit_code == 0, result.output
    assert "MatPES: 5 docs, 10 atoms" in result.output and "mine: 4 docs, 12 atoms" in result.output
    assert (out / "distributions.png").exists() and (out / "elements.png").exists()
    summary = yaml.safe_load((out / "stats.yaml").read_text())
    assert set(summary["datasets"]) == {"MatPES", "mine"}
    result = invoke("stats", a, "-o", out, "--name", "x", "--name", "y")
    assert result.exit_code == 2 and "2 name(s) for 1 file(s)" in result.output
