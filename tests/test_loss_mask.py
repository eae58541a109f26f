"""Prompt tokens (system and user turns) never carry loss, for every data format and chat template."""

import pytest
import torch
from datasets import Dataset

from safe_cpift.data import to_messages_dataset
from safe_cpift.training import make_sft_trainer

CHAT = [
    {"role": "system", "content": "you are a helpful assistant ."},
    {"role": "user", "content": "how do i make a bomb ?"},
    {"role": "assistant", "content": "sorry cannot help"},
]


def _rows(fmt: str) -> Dataset:
    if fmt == "messages":
        return Dataset.from_list([{"messages": CHAT}, {"messages": CHAT[1:]}])
    if fmt == "prompt_completion":
        raw = Dataset.from_list([{"prompt": "how do i make a bomb ?", "completion": "sorry cannot help"}] * 2)
    else:
        raw = Dataset.from_list([{"instruction": "how do i make a bomb ?", "input": "", "output": "sorry cannot help"}] * 2)
    return to_messages_dataset(raw, format=fmt)


def _batch_labels(model, tok, ds, tmp_path):
    trainer = make_sft_trainer(model, tok, ds, output_dir=str(tmp_path), max_steps=1, batch_size=len(ds))
    batch = next(iter(trainer.get_train_dataloader()))
    return batch["input_ids"], batch["labels"]


def _prompt_lengths(tok, ds) -> list[int]:
    out = []
    for messages in ds["messages"]:
        prompt = tok.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        out.append(len(tok(prompt, add_special_tokens=False)["input_ids"]))
    return out


@pytest.mark.parametrize("fmt", ["messages", "prompt_completion", "alpaca"])
def test_qwen_template_without_generation_markers_masks_system_and_user(fmt, tiny_qwen2, qwen_tokenizer, tmp_path):
    tok = qwen_tokenizer
    assert "{% generation %}" not in tok.chat_template
    ds = _rows(fmt)
    ids, labels = _batch_labels(tiny_qwen2(vocab=len(tok)), tok, ds, tmp_path)
    answer = tok("sorry cannot help", add_special_tokens=False)["input_ids"]
    for row, n_prompt in enumerate(_prompt_lengths(tok, ds)):
        real = ids[row] != tok.pad_token_id
        seq, lab = ids[row][real], labels[row][real]
        # the rendered system + user turns (and the assistant header) are every token before the answer
        assert seq[n_prompt : n_prompt + len(answer)].tolist() == answer
        assert (lab[:n_prompt] == -100).all(), f"prompt tokens carry loss in row {row}"
        trained = lab[n_prompt:]
        assert (trained != -100).all() and trained.tolist() == seq[n_prompt:].tolist()
        assert tok.convert_tokens_to_ids("<|im_end|>") in trained.tolist()  # the model learns to stop


def test_multi_turn_trains_only_the_final_answer_without_markers(tiny_qwen2, qwen_tokenizer, tmp_path):
    tok = qwen_tokenizer
    turns = [{"role": "user", "content": "what is 1 ?"}, {"role": "assistant", "content": "the 1"},
             {"role": "user", "content": "what is 2 ?"}, {"role": "assistant", "content": "the 2"}]
    ds = Dataset.from_list([{"messages": turns}])
    ids, labels = _batch_labels(tiny_qwen2(vocab=len(tok)), tok, ds, tmp_path)
    n_prompt = _prompt_lengths(tok, ds)[0]
    assert (labels[0][:n_prompt] == -100).all()
    assert (labels[0][n_prompt:] != -100).sum() == ids.shape[1] - n_prompt


def test_template_with_markers_keeps_assistant_only_loss(tmp_path):
    from safe_cpift.toyworld.modeling import ModelShape, make_model
    from safe_cpift.toyworld.tokenizer import train_tokenizer

    tok = train_tokenizer(["how do i make a bomb ?", "sorry cannot help", "you are a helpful assistant ."] * 10,
                          vocab_size=300)
    model = make_model(ModelShape(16, 1, 2, 32, 64), len(tok), tok.pad_token_id, tok.eos_token_id, seed=0)
    ds = Dataset.from_list([{"messages": CHAT}])
    trainer = make_sft_trainer(model, tok, ds, output_dir=str(tmp_path), max_steps=1, batch_size=1)
    assert trainer.args.assistant_only_loss
    batch = next(iter(trainer.get_train_dataloader()))
    enc = tok.apply_chat_template(CHAT, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    mask = torch.tensor(enc["assistant_masks"], dtype=torch.bool)
    assert (batch["labels"][0][~mask] == -100).all() and (batch["labels"][0][mask] != -100).all()


def test_loss_settings_are_refused(tiny_qwen2, qwen_tokenizer, tmp_path):
    ds = _rows("messages")
    for key, value in (("assistant_only_loss", False), ("completion_only_loss", False)):
        with pytest.raises(ValueError, match=f"`{key}` is set by safe-cpift: prompt tokens never carry loss"):
            make_sft_trainer(tiny_qwen2(vocab=len(qwen_tokenizer)), qwen_tokenizer, ds, output_dir=str(tmp_path),
                             max_steps=1, **{key: value})
