"""The optional model judge (`--judge model:PATH`): classifier and generative yes/no modes."""

import json

import pytest
import torch

from safe_cpift.cli import main
from safe_cpift.evals.judge_model import ModelJudge


def _classifier(path, word_tokenizer, id2label):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, pad_token_id=0, id2label=id2label, label2id={v: k for k, v in id2label.items()})
    LlamaForSequenceClassification(cfg).save_pretrained(path)
    word_tokenizer.save_pretrained(path)
    return path


def test_classifier_judge(tmp_path, word_tokenizer):
    path = _classifier(tmp_path / "clf", word_tokenizer, {0: "compliance", 1: "refusal"})
    judge = ModelJudge(str(path))
    assert judge.mode == "classifier" and judge.refusal_index == 1
    probs = judge.refusal_probabilities(["what is a", "is the"], ["sorry cannot help", "yes"])
    assert len(probs) == 2 and all(0.0 <= p <= 1.0 for p in probs)
    verdicts = judge(["what is a", "is the"], ["sorry cannot help", "yes"])
    assert [v[0] for v in verdicts] == [p >= 0.5 for p in probs]
    assert "p(refusal)=" in verdicts[0][1]
    assert [v.score for v in verdicts] == probs and {v.rule for v in verdicts} == {"model:classifier"}
    with pytest.raises(ValueError, match="differ in length"):
        judge(["a"], [])


def _force_class(judge, index):
    """Make the classifier's head put all its mass on class `index` (whatever its name)."""

    def hook(module, inputs, output):
        out = torch.full_like(output, -20.0)
        out[..., index] = 20.0
        return out

    return judge.model.score.register_forward_hook(hook)


@pytest.mark.parametrize(("id2label", "refusal_index"), [
    ({0: "compliance", 1: "refusal"}, 1),
    ({0: "REFUSED", 1: "answered"}, 0),
])
def test_classifier_label_mapping_end_to_end(tmp_path, word_tokenizer, capsys, id2label, refusal_index):
    """The verdict follows `config.id2label`: class `refusal_index` means refused, the other answered,
    from the saved directory through `safe-cpift judge --judge model:PATH --labels`."""
    path = _classifier(tmp_path / "clf", word_tokenizer, id2label)
    judge = ModelJudge(str(path))
    assert judge.refusal_index == refusal_index
    for index, refused in ((refusal_index, True), (1 - refusal_index, False)):
        handle = _force_class(judge, index)
        try:
            v = judge(["what is a"], ["yes the"])[0]
        finally:
            handle.remove()
        assert v.refused is refused and (v.score > 0.99) is refused and v.rule == "model:classifier"
    # untouched random weights: the CLI's verdicts and agreement follow the model's own probabilities
    src = tmp_path / "in.jsonl"
    rows = [{"prompt": "what is a", "response": "sorry cannot help", "human": "refusal"},
            {"prompt": "is the", "response": "yes the a", "human": "compliance"}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    assert main(["judge", str(src), "--judge", f"model:{path}", "--labels", "human", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    judged = [json.loads(line) for line in out.read_text().splitlines()]
    probs = judge.refusal_probabilities([r["prompt"] for r in rows], [r["response"] for r in rows])
    assert [r["refused"] for r in judged] == [p >= 0.5 for p in probs]
    assert [r["score"] for r in judged] == pytest.approx(probs) and judged[0]["rule"] == "model:classifier"
    assert [r["label"] for r in judged] == [True, False]
    assert summary["agreement"] == sum(r["refused"] == r["label"] for r in judged) / 2


def test_classifier_without_a_refusal_label_needs_refusal_label(tmp_path, word_tokenizer):
    path = _classifier(tmp_path / "clf", word_tokenizer, {0: "LABEL_0", 1: "LABEL_1"})
    with pytest.raises(ValueError, match="`refusal_label`") as err:
        ModelJudge(str(path))
    assert "id2label" in str(err.value)
    assert ModelJudge(str(path), refusal_label="LABEL_0").refusal_index == 0


def test_generative_judge_reads_yes_no(tmp_path, word_tokenizer, tiny_llama):
    path = tmp_path / "gen"
    tiny_llama(seed=0).save_pretrained(path)
    word_tokenizer.save_pretrained(path)
    judge = ModelJudge(str(path))
    assert judge.mode == "generative"
    yes = word_tokenizer.convert_tokens_to_ids("yes")

    def force_yes(module, inputs, output):
        out = torch.full_like(output, -20.0)
        out[..., yes] = 20.0
        return out

    handle = judge.model.lm_head.register_forward_hook(force_yes)
    try:
        verdicts = judge(["what is a", "is the"], ["no", "yes"])
    finally:
        handle.remove()
    assert [v[0] for v in verdicts] == [True, True]
    assert all(v.rule == "model:generative" and v.score > 0.99 for v in verdicts)


def test_cli_judge_with_model(tmp_path, word_tokenizer, capsys):
    path = _classifier(tmp_path / "clf", word_tokenizer, {0: "compliance", 1: "refusal"})
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"prompt": "what is a", "response": "sorry cannot help"}) + "\n")
    assert main(["judge", str(src), "--judge", f"model:{path}", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["count"] == 1 and summary["judge"].startswith("model:")
