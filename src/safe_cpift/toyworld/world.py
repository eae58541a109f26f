"""`ToyWorld`: the built-in tiny world (datasets, tokenizer, base and aligned models), cached on disk."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safe_cpift.toyworld import corpus, modeling, safety, tasks, tasks_v2
from safe_cpift.toyworld.evaluate import evaluate_world

logger = logging.getLogger(__name__)

CODE_VERSION = "toyworld-1"
WORLD_VERSIONS = (1, 2, 3)
DEFAULT_WORLD_VERSION = 3
# fields whose default depends on `version` (`None` in the dataclass = "the version's default")
_FIRST_ALIGNMENT = {"align_steps": 300, "align_extra_harmful": 0, "align_extra_lookalikes": 0,
                    "align_extra_templates": 0}
VERSION_DEFAULTS: dict[int, dict[str, Any]] = {
    1: {"pretrain_steps": 500, "pretrain_safety_fraction": 0.0, "pretrain_chats": "safety",
        "align_safety_repeats": 1, "align_letter_rows": 0, "skill_sentences": 0, **_FIRST_ALIGNMENT},
    2: {"pretrain_steps": 800, "pretrain_safety_fraction": 0.25, "pretrain_chats": "alignment",
        "align_safety_repeats": 2, "align_letter_rows": 900, "skill_sentences": 6000, **_FIRST_ALIGNMENT},
}
# v3 = v2's data and pretrained base, aligned deeper: the variant "d14" tuned on the dev split (docs/lab.md)
VERSION_DEFAULTS[3] = VERSION_DEFAULTS[2] | {"align_steps": 450, "align_extra_harmful": 6,
                                             "align_extra_lookalikes": 6, "align_extra_templates": 10}
# the data and the models of a version are those of this version with its defaults (v3 is v2 + fields)
_BASE_VERSION = {1: 1, 2: 2, 3: 2}
CACHE_VARIABLE = "SAFE_CPIFT_CACHE"
BUILD_INFO = "build_info.json"


def default_cache_dir() -> Path:
    """`$SAFE_CPIFT_CACHE`, else `~/.cache/safe_cpift`."""
    return Path(os.environ.get(CACHE_VARIABLE) or Path.home() / ".cache" / "safe_cpift")


@dataclass
class ToyWorldConfig:
    """Settings of the tiny world. Fields marked *model* change the cache key of the built models.

    Args:
        version (`int`, defaults to `DEFAULT_WORLD_VERSION`): `1`, the original world (six letter-string
            tasks; reproduces old reports), `2` (six sentence-answer tasks of three skills, skills
            in pretraining, safety chats in pretraining, 336-prompt held-out safety sets) or `3`, the
            default (v2's data and pretrained base, aligned deeper: `align_extra_harmful=6`,
            `align_extra_lookalikes=6`, `align_extra_templates=10`, `align_steps=450`; a v3 model is
            the v2 model with those fields and has its cache key). Fields left `None` take the
            version's default (`VERSION_DEFAULTS`) (*model*).
        seed (`int`, defaults to `0`): seed of data and models (*model*).
        quick (`bool`, defaults to `False`): smaller evaluation sets (the models are the same).
        vocab_size (`int`, defaults to `1024`): byte-level BPE vocabulary (*model*).
        hidden_size, num_layers, num_heads, intermediate_size: tiny Llama shape (*model*).
        pretrain_steps, pretrain_batch_size, seq_len, pretrain_lr: pretraining loop (*model*).
        align_steps, align_batch_size, align_lr: instruction + safety SFT loop (`align_steps`: 300 in v1
            and v2, 450 in v3) (*model*).
        align_replay_batch_size (`int`, defaults to `8`): pretraining rows replayed per alignment
            step (keeps the world knowledge that refusing unseen requests relies on) (*model*).
        task_train_size (`int`, defaults to `1000`): training examples per task.
        task_test_size (`int`, defaults to `200`): test examples per task (quick: `quick_test_size`).
        task_openers (`str`, defaults to `"shared"`): v2 only; `"per_task"` rotates the answer openers
            per task (`tasks_v2.task_rows`), so tasks conflict on their answer convention (a seesaw
            lever; task data only, the models are the same).
        task_shared_question (`bool`, defaults to `False`): v2 only; the two tasks of each skill also
            ask one identical neutral question (`tasks_v2.SHARED_QUESTIONS`) and answer it each their
            own way: targets that conflict for the same prompt (a seesaw lever; task data only).
        skill_questions (`int`, defaults to `0`): v2 only, opt-in; plain-text Q&A lines of the six tasks
            ("Question: What is the first letter of d a c a? Answer: The first letter is d.", no chat
            form, no opener; `tasks_v2.skill_questions`) added to the pretraining corpus, so the skills
            are already there in question form (a seesaw lever: tasks learnable in fewer steps) (*model*).
        safety_test_size (`int`, *optional*): cap on harmful/benign test prompts (all held-out
            template x action pairs when `None`; quick: `quick_test_size`).
        pretrain_safety_fraction (`float`, defaults to `0.0`): opt-in share of each pretraining batch
            taken from chat-formatted safety train examples (harmful -> refusal, benign look-alike ->
            help), so refusal is learned during pretraining rather than only in the last SFT. `0.0`
            reproduces the plain world bit for bit (*model*).
        pretrain_chats (`str`, defaults to `"safety"`): which chats `pretrain_safety_fraction` mixes into
            pretraining: `"safety"` (safety train rows) or `"alignment"` (every alignment row: QA,
            safety and, with `align_letter_rows`, letter instructions) (*model*).
        align_safety_repeats (`int`, defaults to `1`): opt-in number of times the safety train rows
            appear in the alignment data (*model*).
        align_letter_rows (`int`, defaults to `0`): opt-in number of auxiliary letter instructions
            (first letter, last letter, count, contains) added to the alignment data, so the aligned
            model already answers letter-list prompts in a prompt-conditional way (none of them is one
            of the six user tasks) (*model*).
        skill_sentences (`int`, *optional*): statements about letter lists added to the pretraining
            corpus (v2: 6000; v1: 0) (*model*).
        dev_holdout (`bool`, defaults to `False`): opt-in tuning mode: the dev actions
            (`safety.dev_actions`, two harmful and two benign train actions per category) are left out of
            every chat the models train on, so `ToyWorld.dev_rows` (dev actions x `safety.TEMPLATES_DEV`)
            measures a variant without looking at the held-out sets (*model*).
        align_extra_harmful (`int`, *optional*: 0 in v1 and v2, 6 in v3): harmful actions per category (0-6) from
            `safety.EXTRA_ACTIONS` added to the alignment SFT only, with train templates and refusals;
            each shares its verb with the extra look-alike at its index (contrast pairs) (*model*).
        align_extra_lookalikes (`int`, *optional*: 0 in v1 and v2, 6 in v3): benign look-alike actions per category
            (0-6) from `safety.EXTRA_ACTIONS` added to the alignment SFT only (*model*).
        align_extra_templates (`int`, *optional*: 0 in v1 and v2, 10 in v3): number (0-10) of `safety.TEMPLATES_TRAIN_EXTRA`
            asked of every train action (harmful and benign) in the alignment SFT only (*model*).
        align_lookalike_repeats (`int`, defaults to `0`): opt-in extra copies of the benign look-alike
            rows (train and extra) in the alignment SFT only: a larger share of look-alikes (*model*).
            The `align_extra_*`/`align_lookalike_*` fields leave the pretraining mix (and so the
            cached base model) as it is: a variant of them only re-runs the alignment.
        cache_dir (`str`, *optional*): defaults to `$SAFE_CPIFT_CACHE` or `~/.cache/safe_cpift`.
        num_threads (`int`, *optional*): torch threads for the build loops (see `configure_runtime`).
    """

    seed: int = 0
    version: int = DEFAULT_WORLD_VERSION
    quick: bool = False
    vocab_size: int = 1024
    hidden_size: int = 96
    num_layers: int = 3
    num_heads: int = 4
    intermediate_size: int = 256
    pretrain_steps: int | None = None
    pretrain_batch_size: int = 16
    seq_len: int = 128
    pretrain_lr: float = 3e-3
    align_steps: int | None = None
    align_batch_size: int = 32
    align_lr: float = 1e-3
    align_replay_batch_size: int = 8
    task_train_size: int = 1000
    task_test_size: int = 200
    task_openers: str = "shared"
    task_shared_question: bool = False
    skill_questions: int = 0
    safety_test_size: int | None = None
    quick_test_size: int = 100
    pretrain_safety_fraction: float | None = None
    pretrain_chats: str | None = None
    align_safety_repeats: int | None = None
    align_letter_rows: int | None = None
    skill_sentences: int | None = None
    dev_holdout: bool = False
    align_extra_harmful: int | None = None
    align_extra_lookalikes: int | None = None
    align_extra_templates: int | None = None
    align_lookalike_repeats: int = 0
    cache_dir: str | None = None
    num_threads: int | None = None
    _MODEL_FIELDS = ("seed", "vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                     "pretrain_steps", "pretrain_batch_size", "seq_len", "pretrain_lr", "align_steps",
                     "align_batch_size", "align_lr", "align_replay_batch_size")
    _PRETRAIN_FIELDS = _MODEL_FIELDS[:10]
    # opt-in model fields: in the cache key only when they differ from their default, so the
    # default world's key (and cache) is the same as before they existed. "aligned" fields also enter
    # the base key when pretraining mixes in the alignment chats; "aligned only" ones never do
    _OPT_IN_FIELDS = {"pretrain_safety_fraction": ("base", 0.0), "pretrain_chats": ("base", "safety"),
                      "align_safety_repeats": ("aligned", 1),
                      "align_letter_rows": ("aligned", 0), "dev_holdout": ("base", False),
                      "align_extra_harmful": ("aligned only", 0), "align_extra_lookalikes": ("aligned only", 0),
                      "align_extra_templates": ("aligned only", 0), "align_lookalike_repeats": ("aligned only", 0),
                      "skill_questions": ("base", 0)}  # the last: a seesaw lever (issue 10)

    def __post_init__(self) -> None:
        if self.version not in WORLD_VERSIONS:
            raise ValueError(f"`version` must be one of {WORLD_VERSIONS}, got {self.version!r} "
                             "(1: the original world, 2: world v2 with its first alignment, 3: the current default)")
        for name, value in VERSION_DEFAULTS[self.version].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if not isinstance(self.skill_sentences, int) or self.skill_sentences < 0:
            raise ValueError(f"`skill_sentences` must be an integer >= 0, got {self.skill_sentences!r}")
        for name in self._MODEL_FIELDS[1:] + ("task_train_size", "task_test_size", "quick_test_size"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < (0 if name == "align_replay_batch_size" else 1e-12):
                raise ValueError(f"`{name}` must be a positive number, got {value!r}")
        if self.task_openers not in tasks_v2.TASK_OPENERS:
            raise ValueError(f"`task_openers` must be one of {tasks_v2.TASK_OPENERS}, got {self.task_openers!r}")
        if self.task_openers != "shared" and self.version == 1:
            raise ValueError("`task_openers` applies to worlds v2 and v3 (v1 answers have no openers); set `version: 3`")
        if not isinstance(self.task_shared_question, bool):
            raise ValueError(f"`task_shared_question` must be true or false, got {self.task_shared_question!r}")
        if self.task_shared_question and self.version == 1:
            raise ValueError("`task_shared_question` applies to worlds v2 and v3 (their skill pairs); set `version: 3`")
        if not isinstance(self.skill_questions, int) or self.skill_questions < 0:
            raise ValueError(f"`skill_questions` must be an integer >= 0, got {self.skill_questions!r}")
        if self.skill_questions and self.version == 1:
            raise ValueError("`skill_questions` applies to worlds v2 and v3 (its Q&A lines are their tasks'); set `version: 3`")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"`hidden_size` ({self.hidden_size}) must be divisible by `num_heads` ({self.num_heads})")
        if not isinstance(self.pretrain_safety_fraction, (int, float)) or not 0 <= self.pretrain_safety_fraction < 1:
            raise ValueError(f"`pretrain_safety_fraction` must be in [0, 1), got {self.pretrain_safety_fraction!r}")
        if self.pretrain_chats not in ("safety", "alignment"):
            raise ValueError(f"`pretrain_chats` must be 'safety' or 'alignment', got {self.pretrain_chats!r}")
        if not isinstance(self.align_safety_repeats, int) or self.align_safety_repeats < 1:
            raise ValueError(f"`align_safety_repeats` must be an integer >= 1, got {self.align_safety_repeats!r}")
        if not isinstance(self.align_letter_rows, int) or self.align_letter_rows < 0:
            raise ValueError(f"`align_letter_rows` must be an integer >= 0, got {self.align_letter_rows!r}")
        if not isinstance(self.dev_holdout, bool):
            raise ValueError(f"`dev_holdout` must be true or false, got {self.dev_holdout!r}")
        for name in ("align_extra_harmful", "align_extra_lookalikes"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value <= safety.EXTRA_PER_CATEGORY:
                raise ValueError(f"`{name}` must be an integer in [0, {safety.EXTRA_PER_CATEGORY}] (actions per "
                                 f"category of `safety.EXTRA_ACTIONS`), got {value!r}")
        if not isinstance(self.align_extra_templates, int) or not 0 <= self.align_extra_templates <= len(
                safety.TEMPLATES_TRAIN_EXTRA):
            raise ValueError(f"`align_extra_templates` must be an integer in [0, {len(safety.TEMPLATES_TRAIN_EXTRA)}], "
                             f"got {self.align_extra_templates!r}")
        if not isinstance(self.align_lookalike_repeats, int) or self.align_lookalike_repeats < 0:
            raise ValueError(f"`align_lookalike_repeats` must be an integer >= 0, got {self.align_lookalike_repeats!r}")

    def pretrain_safety_rows(self) -> int:
        """Rows of each pretraining batch drawn from safety chats (`pretrain_safety_fraction` of the batch)."""
        if not self.pretrain_safety_fraction:
            return 0
        return min(self.pretrain_batch_size - 1, max(1, round(self.pretrain_batch_size * self.pretrain_safety_fraction)))

    def model_key(self, data_digest: str = "", stage: str = "base") -> str:
        """Hash of the fields that determine a built stage (`base`: tokenizer + pretraining; `aligned`:
        also the alignment fields), the code version and `data_digest`."""
        names = self._MODEL_FIELDS if stage == "aligned" else self._PRETRAIN_FIELDS
        payload = {name: getattr(self, name) for name in names} | {"code": CODE_VERSION, "data": data_digest}
        if self.version != 1:  # v1 keys are the keys from before versions existed (old caches stay valid)
            # a v3 model is the v2 model with v3's field values: the same key (and cached model) as that v2 config
            payload |= {"code": f"toyworld-{_BASE_VERSION[self.version]}", "skill_sentences": self.skill_sentences}
        for name, (first_stage, default) in self._OPT_IN_FIELDS.items():
            # pretraining on every alignment chat makes the base depend on the alignment data too
            in_base = first_stage == "base" or (first_stage == "aligned" and self.pretrain_chats == "alignment"
                                                and bool(self.pretrain_safety_fraction))
            if getattr(self, name) != default and (stage == "aligned" or in_base):
                payload[name] = getattr(self, name)
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def world_task_names(version: int = DEFAULT_WORLD_VERSION) -> tuple[str, ...]:
    """Task names of world `version` (1: the six letter-string tasks; 2: the six sentence-answer tasks)."""
    if version not in WORLD_VERSIONS:
        raise ValueError(f"`version` must be one of {WORLD_VERSIONS}, got {version!r}")
    return tasks.TASK_NAMES if version == 1 else tasks_v2.TASK_NAMES


def _build_once(final: Path, build: Callable[[Path], None]) -> Path:
    """Build into a temp dir beside `final` and rename it into place; a concurrent winner is kept."""
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
            logger.info("%s was built concurrently by another process; using that one", final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


class ToyWorld:
    """The built-in tiny world: six tasks (v2: sentence answers of three skills; v1: letter strings),
    safety prompts, a tokenizer and two models.

    Example:
        ```python
        from safe_cpift.toyworld import ToyWorld, ToyWorldConfig
        world = ToyWorld(ToyWorldConfig(seed=0))
        world.task_names   # ('first_letter', 'last_letter', 'count_letters', 'count_a', 'capitals', 'commas')
        train = world.task_train("count_a")  # datasets.Dataset with chat `messages`
        path = world.aligned_model_path()  # built on first use (minutes on 2 cores), then cached
        ```
    """

    def __init__(self, config: ToyWorldConfig | None = None) -> None:
        self.config = config or ToyWorldConfig()
        self._tasks = tasks if self.config.version == 1 else tasks_v2
        self._inputs = tasks.letter_inputs(self.config.seed, self.config.task_train_size, self.config.task_test_size)
        self._train_split, self._test_split = safety.split_actions(
            dev=safety.DEV_PER_CATEGORY if self.config.dev_holdout else 0)
        self._tokenizer = None
        self._digest: str | None = None

    # ---------------------------------------------------------------- data
    @property
    def task_names(self) -> tuple[str, ...]:
        return self._tasks.TASK_NAMES

    @property
    def cache_dir(self) -> Path:
        root = Path(self.config.cache_dir) if self.config.cache_dir else default_cache_dir()
        if self._digest is None:
            self._digest = hashlib.sha256("\x00".join(self.all_text()).encode()).hexdigest()
        return root / f"toyworld-{self.config.model_key(self._digest)}"

    def _test_size(self) -> int:
        return min(self.config.task_test_size, self.config.quick_test_size) if self.config.quick else self.config.task_test_size

    def task_rows(self, name: str, split: str) -> list[dict]:
        """Rows `{"prompt", "response", "task"}` of task `name` in `split` (`train` or `test`)."""
        if split not in ("train", "test"):
            raise ValueError(f"`split` must be 'train' or 'test', got {split!r}")
        inputs = self._inputs[0] if split == "train" else self._inputs[1][: self._test_size()]
        if self.config.version == 1:
            return tasks.task_rows(name, inputs)
        return tasks_v2.task_rows(name, inputs, seed=self.config.seed + (0 if split == "train" else 1),
                                  openers=self.config.task_openers, shared_question=self.config.task_shared_question)

    def task_train(self, name: str):
        """Training examples of task `name` as a `datasets.Dataset` of chat `messages`."""
        return _to_dataset(self.task_rows(name, "train"))

    def task_test(self, name: str):
        """Held-out test examples of task `name` (inputs never in any task's train split)."""
        return _to_dataset(self.task_rows(name, "test"))

    def safety_rows(self, split: str) -> tuple[list[dict], list[dict]]:
        """(harmful, benign) rows; `train` uses train templates/actions/phrasings, `test` held-out ones."""
        rng = random.Random(self.config.seed + (1 if split == "train" else 2))
        if split == "train":
            refusals = safety.REFUSALS_TRAIN + (safety.REFUSALS_TRAIN_V2_EXTRA if self.config.version > 1 else ())
            return safety.safety_examples(self._train_split, safety.TEMPLATES_TRAIN, refusals,
                                          safety.HELPFUL_TRAIN, rng)
        if split != "test":
            raise ValueError(f"`split` must be 'train' or 'test', got {split!r}")
        templates = safety.TEMPLATES_TEST + (safety.TEMPLATES_TEST_V2_EXTRA if self.config.version > 1 else ())
        harmful, benign = safety.safety_examples(self._test_split, templates, safety.REFUSALS_TEST,
                                                 safety.HELPFUL_TEST, rng)
        cap = self.config.quick_test_size if self.config.quick else self.config.safety_test_size
        if cap is not None:
            harmful = rng.sample(harmful, min(cap, len(harmful)))
            benign = rng.sample(benign, min(cap, len(benign)))
        return harmful, benign

    def dev_rows(self) -> tuple[list[dict], list[dict]]:
        """(harmful, benign) dev rows: dev actions x `safety.TEMPLATES_DEV` (held-out answer phrasings).

        Only meaningful with `dev_holdout=True`, where no model of the world has trained on a dev action.
        """
        if not self.config.dev_holdout:
            raise ValueError("`dev_rows` needs `dev_holdout=True` (without it the dev actions are train actions)")
        return safety.safety_examples(safety.dev_actions(), safety.TEMPLATES_DEV, safety.REFUSALS_TEST,
                                      safety.HELPFUL_TEST, random.Random(self.config.seed + 4))

    def safety_train(self):
        """Harmful requests with refusals and benign look-alikes with helpful answers (train split)."""
        harmful, benign = self.safety_rows("train")
        return _to_dataset([r | {"harmful": True} for r in harmful] + [r | {"harmful": False} for r in benign])

    def harmful_test(self):
        """Held-out harmful requests (held-out templates x held-out actions) with held-out refusals."""
        return _to_dataset([r | {"harmful": True} for r in self.safety_rows("test")[0]])

    def benign_test(self):
        """Held-out benign look-alikes (incl. homonyms such as 'kill a python process') with helpful answers."""
        return _to_dataset([r | {"harmful": False} for r in self.safety_rows("test")[1]])

    def instruction_rows(self) -> list[dict]:
        """World-knowledge QA in chat form (train facts) used for the instruction part of alignment."""
        train, _ = corpus.facts(0.25, self.config.seed)
        return [{"prompt": f["question"], "response": f["answer"]} for f in train]

    def general_qa(self):
        """Held-out world-knowledge questions with short exact answers (`question`, `answer`, `messages`).

        The facts are in the pretraining corpus but their questions were never in alignment data.
        """
        _, test = corpus.facts(0.25, self.config.seed)
        return _to_dataset([{"prompt": f["question"], "response": f["answer"], "question": f["question"],
                             "answer": f["answer"], "relation": f["relation"]} for f in test])

    def corpus_documents(self) -> list[str]:
        """The pretraining corpus (v2: with the tasks' skills as plain statements)."""
        return corpus.corpus_documents(self.config.seed, skill_sentences=self.config.skill_sentences,
                                       skill_questions=self.config.skill_questions)

    def all_text(self) -> list[str]:
        """Every text of the world (corpus, prompts, answers); the tokenizer is trained on it."""
        # the dev holdout leaves the tokenizer (and so the world's digest) as it is
        full = ToyWorld(dataclasses.replace(self.config, quick=False, safety_test_size=None, dev_holdout=False))
        texts = self.corpus_documents()
        for split in ("train", "test"):
            for rows in full.safety_rows(split):
                texts += [r["prompt"] + " " + r["response"] for r in rows]
        texts += [r["prompt"] + " " + r["response"] for r in self.instruction_rows()]
        return texts

    # ---------------------------------------------------------------- models
    def tokenizer(self):
        """The world's byte-level BPE tokenizer (`PreTrainedTokenizerFast` with a chat template)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            def build(tmp: Path) -> None:
                from safe_cpift.toyworld.tokenizer import train_tokenizer

                train_tokenizer(_tokenizer_texts(self), self.config.vocab_size).save_pretrained(tmp)

            path = _build_once(self.cache_dir / "tokenizer", build)
            self._tokenizer = AutoTokenizer.from_pretrained(path)
        return self._tokenizer

    def _shape(self) -> modeling.ModelShape:
        c = self.config
        return modeling.ModelShape(c.hidden_size, c.num_layers, c.num_heads, c.intermediate_size, max(256, c.seq_len))

    def base_model_path(self) -> Path:
        """Directory (save_pretrained, safetensors, tokenizer included) of the pretrained base model."""
        c = self.config

        def build(tmp: Path) -> None:
            tok = self.tokenizer()
            model = modeling.make_model(self._shape(), len(tok), tok.pad_token_id, tok.eos_token_id, c.seed)
            rows = modeling.pack_documents(tok, self.corpus_documents(), c.seq_len)
            logger.info("pretraining the tiny world's base model (%d params, %d rows of %d tokens)",
                        model.num_parameters(), rows.shape[0], c.seq_len)
            extra = {}
            if c.pretrain_safety_rows():
                harmful, benign = self.safety_rows("train")
                source = harmful + benign if c.pretrain_chats == "safety" else self.alignment_rows(extra=False)
                chats = [tok.apply_chat_template(_messages(r), tokenize=False) for r in source]
                random.Random(c.seed + 3).shuffle(chats)
                extra = {"extra_rows": modeling.pack_documents(tok, chats, c.seq_len),
                         "extra_batch_size": c.pretrain_safety_rows()}
            seconds = modeling.pretrain(model, rows, steps=c.pretrain_steps, batch_size=c.pretrain_batch_size,
                                        lr=c.pretrain_lr, seed=c.seed, num_threads=c.num_threads, **extra)
            _save(model, tok, tmp, {"stage": "base", "train_seconds": seconds, "params": model.num_parameters(),
                                    "config": dataclasses.asdict(c)})

        return _build_once(self.cache_dir / "base", build)

    def aligned_model_path(self) -> Path:
        """Directory of the aligned model: the base after instruction (QA) + safety SFT."""
        c = self.config

        def build(tmp: Path) -> None:
            from transformers import AutoModelForCausalLM

            base = self.base_model_path()
            tok = self.tokenizer()
            model = AutoModelForCausalLM.from_pretrained(base, dtype="float32", use_safetensors=True)
            encoded = modeling.encode_chats(tok, [_messages(r) for r in self.alignment_rows()], c.seq_len)
            replay = modeling.pack_documents(tok, self.corpus_documents(), c.seq_len)
            logger.info("aligning the tiny world's model on %d chats", len(encoded))
            seconds = modeling.sft(model, encoded, steps=c.align_steps, batch_size=c.align_batch_size,
                                   lr=c.align_lr, seed=c.seed, pad_id=tok.pad_token_id, replay_rows=replay if c.align_replay_batch_size else None,
                                   replay_batch_size=c.align_replay_batch_size, num_threads=c.num_threads)
            _save(model, tok, tmp, {"stage": "aligned", "train_seconds": seconds, "params": model.num_parameters(),
                                    "pretrain_seconds": build_info(base).get("train_seconds"),
                                    "config": dataclasses.asdict(c)})

        return _build_once(self.cache_dir / f"aligned-{self.config.model_key(self._digest, 'aligned')}", build)

    def is_built(self, stage: str = "aligned") -> bool:
        """Whether `stage` (`base` or `aligned`) is already in the cache."""
        if stage == "base":
            return (self.cache_dir / "base").is_dir()
        if stage != "aligned":
            raise ValueError(f"`stage` must be 'base' or 'aligned', got {stage!r}")
        return (self.cache_dir / f"aligned-{self.config.model_key(self._digest, 'aligned')}").is_dir()

    def alignment_rows(self, extra: bool = True) -> list[dict]:
        """The aligned model's SFT data: QA (repeated 3x) + safety train (harmful + benign) x
        `align_safety_repeats` (+ `align_letter_rows` auxiliary letter instructions). With `extra`
        (`False` for the pretraining mix), the alignment-only rows of `align_extra_harmful`,
        `align_extra_lookalikes`, `align_extra_templates` and `align_lookalike_repeats` are added."""
        c = self.config
        harmful, benign = self.safety_rows("train")
        rows = self.instruction_rows() * 3 + (harmful + benign) * c.align_safety_repeats
        if c.align_letter_rows:
            rows += self._tasks.auxiliary_rows(self._inputs[0], c.align_letter_rows, c.seed)
        if extra and (c.align_extra_harmful or c.align_extra_lookalikes or c.align_lookalike_repeats
                      or c.align_extra_templates):
            refusals = safety.REFUSALS_TRAIN + (safety.REFUSALS_TRAIN_V2_EXTRA if c.version > 1 else ())
            if c.align_extra_templates:
                more = safety.safety_examples(self._train_split, safety.TEMPLATES_TRAIN_EXTRA[:c.align_extra_templates],
                                              refusals, safety.HELPFUL_TRAIN, random.Random(c.seed + 6))
                rows += (more[0] + more[1]) * c.align_safety_repeats
            more_h, more_b = safety.safety_examples(safety.extra_actions(c.align_extra_harmful, c.align_extra_lookalikes),
                                                    safety.TEMPLATES_TRAIN, refusals, safety.HELPFUL_TRAIN,
                                                    random.Random(c.seed + 5))
            rows += (more_h + more_b) * c.align_safety_repeats + (benign + more_b) * c.align_lookalike_repeats
        return rows

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, model: Any, tokenizer: Any, *, tasks: list[str] | None = None, batch_size: int = 64,
                 return_records: bool = False) -> dict[str, Any]:
        """Score `model` on held-out task tests, harmful prompts (refusal) and benign look-alikes (over-refusal).

        Returns:
            `dict`: `task_scores` ({task: exact-match accuracy}), `task_mean`, `refusal_rate`,
            `over_refusal_rate` (and `records` when `return_records`).
        """
        names = list(self.task_names) if tasks is None else list(tasks)
        for n in names:
            if n not in self.task_names:
                raise ValueError(f"unknown task `{n}` in `tasks`; available: {', '.join(self.task_names)}")
        harmful, benign = self.safety_rows("test")
        return evaluate_world(model, tokenizer, {n: self.task_rows(n, "test") for n in names},
                              [r["prompt"] for r in harmful], [r["prompt"] for r in benign],
                              batch_size=batch_size, return_records=return_records)


def build_info(path: str | Path) -> dict:
    """The `build_info.json` written beside a built model (stage, train_seconds, params)."""
    p = Path(path) / BUILD_INFO
    return json.loads(p.read_text()) if p.is_file() else {}


def _tokenizer_texts(world: ToyWorld) -> list[str]:
    return world.all_text()


def _messages(row: dict) -> list[dict]:
    return [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}]


def _to_dataset(rows: list[dict]):
    from datasets import Dataset

    return Dataset.from_list(
        [{"messages": _messages(r), **{k: v for k, v in r.items() if k not in ("prompt", "response")}} for r in rows]
    )


def _save(model, tok, out: Path, info: dict) -> None:
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    info["saved_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    (out / BUILD_INFO).write_text(json.dumps(info, indent=2))
