"""The method registry and the specs registered in it: lookups, refusals, and what each spec declares."""

from __future__ import annotations

import dataclasses

import pytest

from reidscale.methods import method_names, method_spec, methods_of, register_method
from reidscale.methods.registry import check_method


def test_the_registered_methods_and_their_sections() -> None:
    assert method_names("pretrain") == ("selective", "cion") and method_names("finetune") == ("bot",)
    assert [s.key for s in method_spec("pretrain", "selective").sections] == [
        "pretrain",
        "pretrain_data",
        "scl",
    ]
    assert [s.key for s in method_spec("pretrain", "cion").sections] == ["pretrain", "pretrain_data", "cion"]
    assert [s.key for s in method_spec("finetune", "bot").sections] == ["finetune", "bot"]
    assert methods_of("evaluate") == ()


def test_unknown_methods_are_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"pretrain: unknown method 'moco'; known methods: selective, cion"):
        method_spec("pretrain", "moco")
    with pytest.raises(
        ValueError, match=r"pretrain.method must be one of \('selective', 'cion'\), got 'moco'"
    ):
        check_method("pretrain", "moco", "pretrain.method")
    check_method("pretrain", "selective", "pretrain.method")
    with pytest.raises(ValueError, match=r"pretrain.method must be one of"):
        from reidscale.methods.pretraining import PretrainConfig

        PretrainConfig(method="moco")


def test_a_second_registration_of_a_name_is_refused() -> None:
    again = dataclasses.replace(method_spec("finetune", "bot"), description="another")
    with pytest.raises(ValueError, match=r"method 'bot' of finetune is already registered"):
        register_method(again)


def test_each_spec_derives_the_batch_fields_from_its_own_section() -> None:
    from reidscale.config import load_config
    from reidscale.jobs.roots import root_for

    pretrain = load_config(root_for("pretrain"), None, ["--pretrain.batch_size", "32"])
    derived = method_spec("pretrain", "selective").derive_train(pretrain, 4, 10)
    assert derived.values == {
        "micro_batch": 8,
        "global_batch": None,
        "grad_accumulation": 1,
        "eval_every": 10,
    }
    assert set(derived.reasons) == set(derived.values)
    finetune = load_config(root_for("finetune"), None, ["--finetune.ids_per_batch", "8"])
    derived = method_spec("finetune", "bot").derive_train(finetune, 2, 10)
    assert derived.values == {"micro_batch": 16, "global_batch": None, "grad_accumulation": 1}
    with pytest.raises(
        ValueError, match=r"finetune.ids_per_batch \(8\) must be a multiple of the number of ranks"
    ):
        method_spec("finetune", "bot").derive_train(finetune, 3, 10)
