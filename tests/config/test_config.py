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
    ConfigError,
    Section,
    build_config,
    compose_root,
    describe,
    dump_yaml,
    load_config,
    write_run_record,
)
from reidscale.config.loader import apply_overrides, parse_overrides
from reidscale.jobs.roots import command_sections, every_command_root, root_for
from reidscale.utils.options import field_doc, option

#: the command each file of configs/ is written for, by file-name prefix
CONFIG_COMMANDS = {"evaluate": "evaluate", "finetune": "finetune", "scl": "pretrain", "cion": "pretrain"}

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

    walk(every_command_root())
    rows = describe(every_command_root())
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
    paths = sorted((REPO / "configs").glob("*.yaml"))
    assert {path.name.split("_")[0].split(".")[0] for path in paths} == set(CONFIG_COMMANDS)
    for path in paths:
        root = root_for(CONFIG_COMMANDS[path.name.split("_")[0].split(".")[0]])
        cfg = load_config(root, path)
        dumped = tmp_path / path.name
        dumped.write_text(dump_yaml(cfg))
        assert load_config(root, dumped) == cfg
    rerank = load_config(
        root_for("evaluate"), REPO / "configs" / "evaluate_rerank.yaml", ["--eval.rerank.k1", "30"]
    )
    assert rerank.eval.rerank.enabled and rerank.eval.rerank.k1 == 30 and rerank.eval.metric == "euclidean"


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(root_for("evaluate"), tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match=r"bad.yaml must hold a mapping"):
        load_config(root_for("evaluate"), bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("eval:\n  metirc: cosine\n")
    with pytest.raises(
        ConfigError, match=r"unknown config key 'eval.metirc'; did you mean 'metric'.*typo.yaml"
    ):
        load_config(root_for("evaluate"), typo)


def test_run_record_holds_resolved_config_and_commit(tmp_path: Path) -> None:
    cfg = load_config(root_for("evaluate"), None, ["--run.name", "abc", "--eval.max_rank", "20"])
    config_path, info_path = write_run_record(tmp_path / "out" / "results", cfg, argv=["reidscale", "x"])
    assert config_path.name == "results.config.yaml" and info_path.name == "results.run.json"
    assert load_config(root_for("evaluate"), config_path) == cfg
    assert yaml.safe_load(config_path.read_text())["eval"]["max_rank"] == 20
    info = json.loads(info_path.read_text())
    assert info["command"] == ["reidscale", "x"]
    assert info["versions"]["torch"]
    assert info["git_commit"] == "unknown" or len(info["git_commit"].split("-")[0]) == 40


def test_each_command_reads_only_its_sections() -> None:
    assert [s.key for s in command_sections("evaluate")] == ["run", "tracking", "eval"]
    finetune = [section.key for section in command_sections("finetune")]
    assert [s.key for s in command_sections("export")] == [*finetune, "export"]  # the run's config + export
    assert [s.key for s in command_sections("extract")] == finetune
    pretrain = [section.key for section in command_sections("pretrain")]
    assert pretrain == [
        "run",
        "tracking",
        "eval",
        "train",
        "model",
        "pretrain",
        "pretrain_data",
        "scl",
        "cion",
    ]
    assert [s.key for s in command_sections("demo")] == pretrain
    assert "finetune" in [section.key for section in command_sections("finetune")]
    with pytest.raises(ConfigError, match=r"unknown config key 'scl.temperature'.*valid keys here: run"):
        load_config(root_for("finetune"), None, ["--scl.temperature", "0.1"])
    with pytest.raises(ValueError, match=r"unknown command 'train'; commands with a config: pretrain"):
        command_sections("train")


def test_compose_root_refuses_repeated_keys_and_non_dataclasses() -> None:
    root = compose_root("ToyRoot", [Section("toy", ToyConfig, "the toy")])
    assert load_config(root, None, ["--toy.optim.lr", "0.5"]).toy.optim.lr == 0.5
    assert describe(root)[0] == ("toy.optim.lr", "float", "learning rate")
    with pytest.raises(ValueError, match=r"section key\(s\) \['toy'\] given more than once"):
        compose_root("Twice", [Section("toy", ToyConfig, "a"), Section("toy", OptimToy, "b")])
    with pytest.raises(ValueError, match=r"section 'n' must be a dataclass"):
        compose_root("Bad", [Section("n", int, "a number")])


def test_config_command_lists_what_a_command_reads(capsys: pytest.CaptureFixture[str]) -> None:
    from reidscale.cli import main

    assert main(["config", "evaluate"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert "--eval.rerank.k1" in listed and "--run.name" in listed
    assert not any(key.startswith(("--train.", "--scl.", "--finetune.", "--model.")) for key in listed)
    assert main(["config"]) == 0
    every = capsys.readouterr().out
    assert "--scl.temperature" in every and "--export.opset" in every and "--finetune.dataset" in every


def test_a_field_the_job_derives_set_by_the_user_is_an_error_naming_it() -> None:
    from reidscale.engine.config import TrainConfig, with_derived_fields

    derived = with_derived_fields(TrainConfig(), {"micro_batch": 8, "global_batch": None}, "pretrain", {})
    assert (derived.micro_batch, derived.global_batch) == (8, None)
    with pytest.raises(
        ValueError, match=r"train.micro_batch is set to 64, but pretrain derives it \(from pretrain"
    ):
        with_derived_fields(
            TrainConfig(micro_batch=64),
            {"micro_batch": 8},
            "pretrain",
            {"micro_batch": "from pretrain.batch_size"},
        )
