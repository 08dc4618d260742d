from __future__ import annotations

import pytest

from aloe.errors import AloeError
from aloe.generate.settings import GenerateSettings
from aloe.settings import build_settings


def test_defaults_are_the_paper_values():
    s = GenerateSettings()
    assert s.lattice.factor == 0.96 and s.lattice.neighbor_cutoff == 9.0
    assert s.perturbation.displacement_sigma == 0.02 and s.perturbation.displacement_truncation == 3.0
    assert s.perturbation.strain_sigma == 0.02 and s.perturbation.strain_truncation == 2.0
    assert s.subsampling.scale == pytest.approx(1 / 3) and s.subsampling.exponent == 0.5
    assert s.occupations.ltol == 0.01 and s.occupations.stol == 0.01


def test_every_field_has_a_description():
    def walk(model):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            ann = field.annotation
            if isinstance(ann, type) and hasattr(ann, "model_fields"):
                walk(ann)

    walk(GenerateSettings)


def test_unknown_key_is_one_line_naming_file_and_key(tmp_path):
    cfg = tmp_path / "gen.yaml"
    cfg.write_text("lattice:\n  factr: 0.9\n")
    with pytest.raises(AloeError) as err:
        build_settings(GenerateSettings, cfg)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(cfg) in msg and "'lattice.factr'" in msg and "unknown key" in msg


def test_ill_typed_key(tmp_path):
    cfg = tmp_path / "gen.yaml"
    cfg.write_text("seed: many\n")
    with pytest.raises(AloeError, match=r"key 'seed'.*many"):
        build_settings(GenerateSettings, cfg)


def test_combined_file_sections_and_overrides(tmp_path):
    cfg = tmp_path / "all.yaml"
    cfg.write_text("generate:\n  seed: 3\n  lattice: {factor: 0.92}\nscreen: {}\n")
    s = build_settings(GenerateSettings, cfg, {"seed": 7, "elements": None}, verb="generate")
    assert s.seed == 7 and s.lattice.factor == 0.92


def test_bad_yaml_and_missing_file(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("a: [1, 2\n")
    with pytest.raises(AloeError, match="invalid YAML"):
        build_settings(GenerateSettings, cfg)
    with pytest.raises(AloeError, match="cannot read config file"):
        build_settings(GenerateSettings, tmp_path / "nope.yaml")


def test_shard_validation():
    with pytest.raises(AloeError, match="shard"):
        build_settings(GenerateSettings, None, {"shard": "3/3"})
    assert GenerateSettings(shard="1/4").shard_tuple() == (1, 4)


def test_relative_paths_become_absolute_before_a_stage_runs(tmp_path, monkeypatch):
    """Workers of a cluster run elsewhere: the CLI hands stages absolute paths (nested settings too)."""
    from aloe.settings import absolute_paths
    from aloe.train.settings import TrainSettings

    monkeypatch.chdir(tmp_path)
    settings = TrainSettings(inputs=["a/label", str(tmp_path / "b.jsonl")], output="runs/train")
    resolved = absolute_paths(settings)
    assert resolved.inputs == [tmp_path / "a" / "label", tmp_path / "b.jsonl"]
    assert resolved.output == tmp_path / "runs" / "train"
    assert resolved.preset == settings.preset and absolute_paths(resolved) is resolved
