"""The tiny world's data: determinism, held-out splits, tokenizer round-trips (fast tests)."""

import pytest

from safe_cpift.toyworld import REFUSALS_TEST, REFUSALS_TRAIN, ToyWorld, ToyWorldConfig, safety, tasks


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return ToyWorld(ToyWorldConfig(version=1, seed=3, cache_dir=str(tmp_path_factory.mktemp("cache"))))


def test_same_seed_same_data_and_other_seed_differs():
    a, b, c = (ToyWorld(ToyWorldConfig(version=1, seed=s)) for s in (5, 5, 6))
    for name in a.task_names:
        assert a.task_train(name)["messages"] == b.task_train(name)["messages"]
    assert a.safety_train()["messages"] == b.safety_train()["messages"]
    assert a.harmful_test()["messages"] == b.harmful_test()["messages"]
    assert a.task_train("copy")["messages"] != c.task_train("copy")["messages"]


def test_six_tasks_with_conflicting_pairs_on_same_inputs(world):
    assert len(world.task_names) >= 6
    pairs = {(n, tasks.TASKS[n].conflicts_with) for n in world.task_names}
    assert len({frozenset(p) for p in pairs}) >= 2
    for a, b in pairs:
        ra, rb = world.task_rows(a, "train"), world.task_rows(b, "train")
        # same inputs, different instruction, mostly different answers
        assert [r["prompt"].split(":", 1)[1] for r in ra] == [r["prompt"].split(":", 1)[1] for r in rb]
        assert sum(x["response"] != y["response"] for x, y in zip(ra, rb, strict=False)) > 0.5 * len(ra)


def test_task_answers_are_exact():
    assert tasks.task_rows("sort_down", [list("dbca")])[0] == {
        "prompt": "sort down: d b c a", "response": "d c b a", "task": "sort_down"}
    assert tasks.task_rows("flip", [list("abh")])[0]["response"] == "h b a"
    assert tasks.task_rows("code_shift", [list("abh")])[0]["response"] == "b c a"
    assert tasks.task_rows("code_mirror", [list("abh")])[0]["response"] == "h g a"
    with pytest.raises(ValueError, match="`nope`"):
        tasks.task_rows("nope", [])


def test_task_test_inputs_never_in_train(world):
    train = {r["prompt"] for r in world.task_rows("copy", "train")}
    assert not train & {r["prompt"] for r in world.task_rows("copy", "test")}
    ds = world.task_train("flip")
    assert ds[0]["messages"][0]["role"] == "user" and ds[0]["messages"][1]["role"] == "assistant"


def test_held_out_templates_actions_phrasings_never_in_training_data(world):
    train_split, test_split = safety.split_actions()
    held_actions = {a for _, a in test_split.harmful + test_split.benign}
    assert held_actions and not held_actions & {a for _, a in train_split.harmful + train_split.benign}
    train_text = [m["content"] for msgs in world.safety_train()["messages"] for m in msgs]
    train_text += [r["prompt"] + " " + r["response"] for r in world.alignment_rows()]
    joined = "\n".join(train_text)
    for action in held_actions:
        assert action not in joined, action
    for template in safety.TEMPLATES_TEST:
        assert template.split("{action}")[0].strip() not in joined, template
    for phrase in REFUSALS_TEST + safety.HELPFUL_TEST:
        assert phrase.split("{action}")[0].strip() not in joined, phrase
    # and the evaluation sets use only held-out ones
    for row in world.harmful_test().to_list() + world.benign_test().to_list():
        assert row["action"] in held_actions and row["template"] in safety.TEMPLATES_TEST
    assert len(world.harmful_test()) >= 150 and len(world.benign_test()) >= 150
    assert all(r["harmful"] for r in world.harmful_test().to_list())
    assert not any(r["harmful"] for r in world.benign_test().to_list())


def test_quick_mode_evaluates_fewer_prompts():
    quick = ToyWorld(ToyWorldConfig(version=1, quick=True))
    full = ToyWorld(ToyWorldConfig(version=1))
    assert len(quick.harmful_test()) < len(full.harmful_test())
    assert len(quick.task_test("copy")) < len(full.task_test("copy"))
    assert quick.cache_dir == full.cache_dir  # same models in quick and full mode


def test_every_action_described_in_pretraining_corpus():
    from safe_cpift.toyworld import corpus

    text = " ".join(corpus.corpus_documents(0))
    for harmful, benign in safety.CATEGORIES.values():
        for action in harmful + benign:
            assert action in text
    assert "sort up:" not in text and "<|assistant|>" not in text


def test_general_qa_is_held_out_from_instruction_data(world):
    qa = world.general_qa()
    assert len(qa) > 20 and set(qa.column_names) >= {"question", "answer", "messages"}
    assert not set(qa["question"]) & {r["prompt"] for r in world.instruction_rows()}


def test_refusal_phrasings_are_varied():
    assert len(REFUSALS_TRAIN) >= 5 and len(REFUSALS_TEST) >= 5
    assert not set(REFUSALS_TRAIN) & set(REFUSALS_TEST)


@pytest.mark.parametrize("text", [
    "Hello wörld 🤖 — 日本語 ✓", "sort up: d b c a", "  leading and trailing  \n\ttabs", "",
    "Ünïcödé ∑ 𝔘 \u200b zero-width", "<|end|> literal-looking special",
])
def test_tokenizer_round_trips_arbitrary_text(world, text):
    tok = world.tokenizer()
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert tok.unk_token_id is None or tok.unk_token_id not in ids


def test_tokenizer_chat_template_marks_assistant_tokens(world):
    tok = world.tokenizer()
    msgs = [{"role": "user", "content": "copy: a b"}, {"role": "assistant", "content": "a b"}]
    enc = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    marked = [t for t, m in zip(enc["input_ids"], enc["assistant_masks"], strict=False) if m]
    assert tok.decode(marked) == "a b<|end|>"
    assert tok.pad_token_id is not None and tok.eos_token_id is not None and tok.pad_token_id != tok.eos_token_id
    prompt = tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|assistant|>\n")


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="`hidden_size`"):
        ToyWorldConfig(version=1, hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="`pretrain_steps`"):
        ToyWorldConfig(version=1, pretrain_steps=0)
    with pytest.raises(ValueError, match="`tasks`"):
        ToyWorld().evaluate(None, None, tasks=["nope"])
