"""Recipe training settings reach `SFTConfig` as written; settings the library must own are refused."""

import pytest
from datasets import Dataset

from safe_cpift.pipeline.common import refuse_pipeline_owned
from safe_cpift.pipeline.from_recipe import spec_from_recipe
from safe_cpift.recipe import find_recipe, load_recipe
from safe_cpift.training import make_sft_trainer, sft_config

ROWS = Dataset.from_list([{"messages": [{"role": "user", "content": "what is 1 ?"},
                                        {"role": "assistant", "content": "the 1"}]}] * 4)


def test_gradient_checkpointing_is_not_dropped(tmp_path):
    assert sft_config(str(tmp_path), gradient_checkpointing=True).activation_checkpointing is True
    assert sft_config(str(tmp_path), activation_checkpointing=True).activation_checkpointing is True
    assert sft_config(str(tmp_path)).activation_checkpointing is False
    with pytest.raises(ValueError, match="disagree"):
        sft_config(str(tmp_path), gradient_checkpointing=True, activation_checkpointing=False)


@pytest.mark.parametrize("name", ["qwen2.5-0.5b-instruct", "qwen2.5-7b-instruct", "llama-3.1-8b-instruct"])
def test_real_recipe_training_settings_reach_sft_config(name, tiny_qwen2, qwen_tokenizer, tmp_path, monkeypatch):
    recipe = load_recipe(find_recipe(name), overrides=["training.gradient_checkpointing=true"])
    monkeypatch.setattr("safe_cpift.pipeline.from_recipe.build_evaluator", lambda recipe, world: _NoEval())
    spec = spec_from_recipe(recipe)
    train = spec.train
    assert train.precision == recipe.model.precision
    # bf16-sr needs torchao and bf16 weights; the settings pass through the same way in fp32
    precision = "fp32" if train.precision == "bf16-sr" else train.precision
    trainer = make_sft_trainer(tiny_qwen2(vocab=len(qwen_tokenizer)), qwen_tokenizer, ROWS, output_dir=str(tmp_path),
                               max_steps=1, learning_rate=train.learning_rate, batch_size=train.batch_size,
                               precision=precision, max_length=train.max_length, **train.overrides)
    args = trainer.args
    assert args.learning_rate == recipe.training["learning_rate"]
    assert args.per_device_train_batch_size == recipe.training["per_device_train_batch_size"]
    for key, value in recipe.training.items():
        got = args.activation_checkpointing if key == "gradient_checkpointing" else getattr(args, key)
        got = getattr(got, "value", got)  # enums (lr_scheduler_type, optim)
        assert got == value, f"training.{key}: recipe says {value!r}, SFTConfig has {got!r}"
    assert args.activation_checkpointing is True


class _NoEval:
    notes: list = []


@pytest.mark.parametrize("key,value", [("save_strategy", "steps"), ("push_to_hub", True),
                                       ("load_best_model_at_end", True)])
def test_pipeline_refuses_settings_it_would_drop(key, value):
    with pytest.raises(ValueError, match=f"`training.{key}: .*` cannot be honoured"):
        refuse_pipeline_owned({key: value})
    refuse_pipeline_owned({"save_strategy": "no", "weight_decay": 0.1})  # the defaults and others pass
