"""The config root of every command: the sections it reads, composed from the sections their subsystems
own (``reidscale config COMMAND`` lists them). The training commands add the sections of the methods they
train (``reidscale.methods``)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from reidscale.config.compose import Section, compose_root
from reidscale.engine.config import TrainConfig
from reidscale.evaluation.config import EvalConfig
from reidscale.export import ExportConfig
from reidscale.methods import methods_of
from reidscale.models.config import ModelConfig
from reidscale.tracking.config import TrackingConfig
from reidscale.utils.options import option


@dataclass
class RunConfig:
    """Identity and location of a run."""

    name: str = option("reidscale", "run name: the output folder name and the tracker run name")
    output_dir: str = option(
        "runs", "parent folder of training run folders (<output_dir>/<name>); evaluate writes beside --output"
    )
    seed: int = option(0, "random seed for everything the run draws")


RUN = Section("run", RunConfig, "run identity and output location")
TRACKING = Section("tracking", TrackingConfig, "experiment trackers")
EVAL = Section("eval", EvalConfig, "evaluation")
TRAIN = Section("train", TrainConfig, "training engine (DeepSpeed ZeRO, optimizer, schedules, checkpoints)")
MODEL = Section(
    "model",
    ModelConfig,
    "backbone to build and its input size (reidscale.models.list_backbones() names them)",
)
EXPORT = Section("export", ExportConfig, "reidscale export (state_dict + checked ONNX)")

#: the sections every training command reads, before those of its methods
TRAINING_SECTIONS: tuple[Section, ...] = (RUN, TRACKING, EVAL, TRAIN, MODEL)
#: commands that train
TRAINING_COMMANDS: tuple[str, ...] = ("pretrain", "finetune")
#: command → the sections of a command that trains nothing. ``extract`` and ``export`` take the
#: fine-tuning config the weights were trained with (they read ``model`` and ``finetune`` / ``export``).
OTHER_COMMANDS: dict[str, tuple[Section, ...]] = {"evaluate": (RUN, TRACKING, EVAL)}
USES_FINETUNE_CONFIG: dict[str, tuple[Section, ...]] = {"extract": (), "export": (EXPORT,)}
#: commands that run another command's config: the demo runs ``pretrain``
ALIASES: dict[str, str] = {"demo": "pretrain"}


def command_sections(command: str) -> tuple[Section, ...]:
    """The sections ``command`` reads, in order, each once (ValueError naming the known commands)."""
    command = canonical_command(command)
    if command in OTHER_COMMANDS:
        return OTHER_COMMANDS[command]
    if command in USES_FINETUNE_CONFIG:
        return (*command_sections("finetune"), *USES_FINETUNE_CONFIG[command])
    if command not in TRAINING_COMMANDS:
        known = ", ".join([*TRAINING_COMMANDS, *OTHER_COMMANDS, *USES_FINETUNE_CONFIG, *ALIASES])
        raise ValueError(f"unknown command {command!r}; commands with a config: {known}")
    sections = list(TRAINING_SECTIONS)
    for spec in methods_of(command):
        sections.extend(s for s in spec.sections if s.key not in {known.key for known in sections})
    return tuple(sections)


def canonical_command(command: str) -> str:
    """The command whose config ``command`` reads (``demo`` → ``pretrain``; others are themselves)."""
    return ALIASES.get(command, command)


def root_for(command: str) -> type:
    """The config root dataclass of ``command`` (``load_config(root_for("pretrain"), path, overrides)``),
    e.g. ``PretrainRoot``; one class per command (aliases included), so that loads compare equal."""
    return _root(canonical_command(command))


@functools.cache
def _root(command: str) -> type:
    return compose_root(f"{command.capitalize()}Root", command_sections(command), module=__name__)


def __getattr__(name: str) -> type:
    """``PretrainRoot``, ``FinetuneRoot``, ... and ``AllCommandsRoot`` by name (how pickle finds them)."""
    if name == "AllCommandsRoot":
        return every_command_root()
    command = name.removesuffix("Root").lower()
    if name.endswith("Root") and command in (*TRAINING_COMMANDS, *OTHER_COMMANDS, *USES_FINETUNE_CONFIG):
        return root_for(command)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def every_command_root() -> type:
    """One root holding the sections of every command (what ``reidscale config`` lists without a command)."""
    sections: list[Section] = []
    for command in (*TRAINING_COMMANDS, *OTHER_COMMANDS, *USES_FINETUNE_CONFIG):
        sections.extend(
            s for s in command_sections(command) if s.key not in {known.key for known in sections}
        )
    return compose_root("AllCommandsRoot", sections, module=__name__)
