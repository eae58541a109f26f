"""Evaluation prompts keep the whole conversation up to the final assistant turn."""

import json

from safe_cpift.evals import sources
from safe_cpift.evals.generation import build_chat_prompts, generate_responses
from safe_cpift.pipeline.evaluator import prompt_and_reference

CONVERSATION = [
    {"role": "system", "content": "you are a helpful assistant ."},
    {"role": "user", "content": "what is 1 ?"},
    {"role": "assistant", "content": "the 1"},
    {"role": "user", "content": "what is 2 ?"},
    {"role": "assistant", "content": "the 2"},
]


def test_task_prompts_keep_system_and_earlier_turns(qwen_tokenizer):
    prompt, reference = prompt_and_reference(CONVERSATION)
    assert reference == "the 2" and prompt == CONVERSATION[:-1]
    rendered = build_chat_prompts(qwen_tokenizer, [prompt])[0]
    assert rendered == qwen_tokenizer.apply_chat_template(CONVERSATION[:-1], tokenize=False, add_generation_prompt=True)
    for turn in CONVERSATION[:-1]:
        assert turn["content"] in rendered
    assert prompt_and_reference(CONVERSATION[1:3]) == ("what is 1 ?", "the 1")  # one user turn: a plain string


def test_suite_data_files_keep_the_conversation(tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps({"messages": CONVERSATION}) + "\n")
    rows = sources.task_rows(str(path))
    (row,) = next(iter(rows.values()))
    assert row["prompt"] == CONVERSATION[:-1] and row["reference"] == "the 2"
    harmful = tmp_path / "harmful.jsonl"
    harmful.write_text(json.dumps({"messages": CONVERSATION[:4]}) + "\n")
    (prow,) = sources.prompt_rows(str(harmful), "refusal")
    assert prow["prompt"] == CONVERSATION[:4]  # the second user turn, after the first exchange


def test_recipe_prompt_specs_keep_the_conversation(tmp_path):
    from types import SimpleNamespace

    from safe_cpift.data import load_prompts
    from safe_cpift.pipeline.from_recipe import _prompt_rows

    path = tmp_path / "harmful.jsonl"
    path.write_text(json.dumps({"messages": CONVERSATION[:4]}) + "\n")
    spec = SimpleNamespace(source=str(path), column="messages", where=None, limit=None, subset=None, split="test")
    assert _prompt_rows(spec, None) == [{"prompt": CONVERSATION[:4], "type": ""}]
    assert load_prompts(str(path), column="messages") == [CONVERSATION[:4]]


def test_generation_sees_the_earlier_turns(tiny_qwen2, qwen_tokenizer):
    model = tiny_qwen2(vocab=len(qwen_tokenizer))
    one = generate_responses(model, qwen_tokenizer, ["what is 2 ?"], max_new_tokens=4, progress=False)
    whole = generate_responses(model, qwen_tokenizer, [CONVERSATION[:-1]], max_new_tokens=4, progress=False)
    assert len(one) == len(whole) == 1
    # the conversation reaches the model: its logits at the reply differ from the single-turn prompt's
    import torch

    ids = [qwen_tokenizer(t, add_special_tokens=False, return_tensors="pt")["input_ids"]
           for t in build_chat_prompts(qwen_tokenizer, ["what is 2 ?", CONVERSATION[:-1]])]
    with torch.no_grad():
        a, b = (model(input_ids=i).logits[0, -1] for i in ids)
    assert ids[1].shape[1] > ids[0].shape[1] and not torch.allclose(a, b)
