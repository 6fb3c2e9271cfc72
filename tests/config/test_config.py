"""Config tree: YAML + dotted overrides, type checks, error messages, run records."""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
import yaml

from reidscale.config import (
    Config,
    ConfigError,
    build_config,
    describe,
    dump_yaml,
    load_config,
    write_run_record,
)
from reidscale.config.fields import field_doc, option
from reidscale.config.loader import apply_overrides, parse_overrides

REPO = Path(__file__).resolve().parents[2]


@dataclass
class OptimToy:
    lr: float = option(0.1, "learning rate")
    steps: int = option(10, "number of steps")
    nesterov: bool = option(False, "nesterov momentum")
    kind: Literal["sgd", "adamw"] = option("sgd", "optimiser")
    betas: list[float] = option(doc="betas", factory=lambda: [0.9, 0.999])
    note: str | None = option(None, "free text")


@dataclass
class ToyConfig:
    optim: OptimToy = option(doc="optimiser", factory=OptimToy)
    name: str = option("toy", "run name")


def test_every_field_has_a_doc() -> None:
    def walk(cls: type) -> None:
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            assert field_doc(field), f"{cls.__name__}.{field.name} has no doc"
            if dataclasses.is_dataclass(hints[field.name]):
                walk(hints[field.name])

    walk(Config)
    rows = describe(Config)
    assert all(doc for _, _, doc in rows)
    assert ("eval.rerank.k1", "int", "k of the k-reciprocal neighbour sets") in rows


def test_overrides_parse_values_by_field_type() -> None:
    tree = apply_overrides(
        ToyConfig,
        {},
        [
            "--optim.lr",
            "0.05",
            "--optim.steps=7",
            "--optim.nesterov",
            "true",
            "--optim.betas",
            "[0.5, 0.6]",
            "--name",
            "123",
            "--optim.kind",
            "adamw",
        ],
    )
    cfg = build_config(ToyConfig, tree)
    assert cfg.optim.lr == 0.05 and cfg.optim.steps == 7 and cfg.optim.nesterov is True
    assert cfg.optim.betas == [0.5, 0.6] and cfg.optim.kind == "adamw"
    assert cfg.name == "123"  # a str field keeps the literal text, not the YAML int


def test_int_is_widened_to_float_but_not_the_reverse() -> None:
    cfg = build_config(ToyConfig, {"optim": {"lr": 1}})
    assert isinstance(cfg.optim.lr, float) and cfg.optim.lr == 1.0
    with pytest.raises(ConfigError, match=r"'optim.steps' expects int, got float 1.5"):
        build_config(ToyConfig, {"optim": {"steps": 1.5}})
    with pytest.raises(ConfigError, match=r"'optim.steps' expects int, got bool True"):
        build_config(ToyConfig, {"optim": {"steps": True}})


def test_unknown_key_names_close_matches() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lrr'.*did you mean 'optim.lr'"):
        apply_overrides(ToyConfig, {}, ["--optim.lrr", "0.1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.stpes'; did you mean 'steps'"):
        build_config(ToyConfig, {"optim": {"stpes": 3}})


def test_wrong_types_name_key_and_expected_type() -> None:
    with pytest.raises(ConfigError, match=r"'optim.lr' expects float, got str 'fast'"):
        build_config(ToyConfig, apply_overrides(ToyConfig, {}, ["--optim.lr", "fast"]))
    with pytest.raises(
        ConfigError, match=r"'optim.kind' expects one of 'sgd', 'adamw'.*did you mean 'adamw'"
    ):
        build_config(ToyConfig, {"optim": {"kind": "adamx"}})
    with pytest.raises(ConfigError, match=r"'optim.betas\[1\]' expects float, got str 'x'"):
        build_config(ToyConfig, {"optim": {"betas": [0.1, "x"]}})
    with pytest.raises(ConfigError, match=r"'optim' expects a mapping of OptimToy fields"):
        build_config(ToyConfig, {"optim": 3})
    with pytest.raises(ConfigError, match=r"'optim.note' expects str or null, got int 5"):
        build_config(ToyConfig, {"optim": {"note": 5}})


def test_malformed_override_tokens() -> None:
    assert parse_overrides(["--a.b=1", "--c.d", "x y"]) == [("a.b", "1"), ("c.d", "x y")]
    with pytest.raises(ConfigError, match="needs a value"):
        parse_overrides(["--a.b"])
    with pytest.raises(ConfigError, match="expected a config override"):
        parse_overrides(["stray"])


def test_yaml_files_in_configs_load_and_round_trip(tmp_path: Path) -> None:
    for path in sorted((REPO / "configs").glob("*.yaml")):
        cfg = load_config(Config, path)
        dumped = tmp_path / path.name
        dumped.write_text(dump_yaml(cfg))
        assert load_config(Config, dumped) == cfg
    rerank = load_config(Config, REPO / "configs" / "evaluate_rerank.yaml", ["--eval.rerank.k1", "30"])
    assert rerank.eval.rerank.enabled and rerank.eval.rerank.k1 == 30 and rerank.eval.metric == "euclidean"


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Config, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match=r"bad.yaml must hold a mapping"):
        load_config(Config, bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("eval:\n  metirc: cosine\n")
    with pytest.raises(
        ConfigError, match=r"unknown config key 'eval.metirc'; did you mean 'metric'.*typo.yaml"
    ):
        load_config(Config, typo)


def test_run_record_holds_resolved_config_and_commit(tmp_path: Path) -> None:
    cfg = load_config(Config, None, ["--run.name", "abc", "--eval.max_rank", "20"])
    config_path, info_path = write_run_record(tmp_path / "out" / "results", cfg, argv=["reidscale", "x"])
    assert config_path.name == "results.config.yaml" and info_path.name == "results.run.json"
    assert load_config(Config, config_path) == cfg
    assert yaml.safe_load(config_path.read_text())["eval"]["max_rank"] == 20
    info = json.loads(info_path.read_text())
    assert info["command"] == ["reidscale", "x"]
    assert info["versions"]["torch"]
    assert info["git_commit"] == "unknown" or len(info["git_commit"].split("-")[0]) == 40
