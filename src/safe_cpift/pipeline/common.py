"""What every stage shares: the run context, stage summaries, and "train a model and save it".

Each stage body is a function `body(ctx, tmp) -> dict` that writes its files under `tmp` (the stage's
temporary directory) and returns a JSON summary; the runner writes the summary as `stage.json` and
renames `tmp` into place. Later stages only read earlier stages from disk (never from memory), so a
resumed run computes exactly what an uninterrupted one does.
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from safe_cpift.pipeline.spec import PipelineSpec
from safe_cpift.runtime import scoped_threads

logger = logging.getLogger(__name__)

SUMMARY = "stage.json"
MODEL_DIR = "model"
REGION_DIR = "region"
ADAPTER_DIR = "adapter"


class RunContext:
    """The spec plus access to completed stages and cached inputs (tokenizer, datasets).

    Args:
        spec (`PipelineSpec`): the run's settings.
        root (`Path`): the run directory; completed stage `name` lives in `root / name`.
        observer (`StageObserver`, *optional*): gets a training callback (progress bar) per SFT.
    """

    def __init__(self, spec: PipelineSpec, root: Path, observer: Any | None = None) -> None:
        self.spec = spec
        self.root = Path(root)
        self.observer = observer  # a `StageObserver` (progress lines and training bars), or None
        self.current_stage = ""
        self._tokenizer: Any = None
        self._tasks: dict[str, Any] = {}
        self._safety: Any = None
        self._theta0: Any = None

    # -------------------------------------------------------------- completed stages
    def stage_dir(self, name: str) -> Path:
        path = self.root / name
        if not (path / SUMMARY).is_file():
            raise FileNotFoundError(f"stage `{name}` is not complete in {self.root} (no {SUMMARY})")
        return path

    def summary(self, name: str) -> dict[str, Any]:
        return json.loads((self.stage_dir(name) / SUMMARY).read_text())

    def model_dir(self, name: str) -> Path:
        """The model a stage produced (`aligned` names the starting model θ0)."""
        if name == "aligned":
            return Path(self.spec.aligned_model)
        return self.stage_dir(name) / MODEL_DIR

    def theta0(self) -> Path:
        """θ0 as regions and fusion stream it: its checkpoint directory (a hub id's local snapshot), so no
        stage holds it in memory."""
        if self._theta0 is None:
            self._theta0 = local_checkpoint(self.spec.aligned_model)
        return self._theta0

    def region(self, name: str) -> Any:
        from safe_cpift.regions import CoreRegion

        return CoreRegion.load(self.stage_dir(name) / REGION_DIR)

    # -------------------------------------------------------------- inputs
    def check_inputs(self) -> None:
        """Check the local model directories and load every task's data and the safety data once, so bad
        inputs fail before the run directory is created."""
        from safe_cpift.models import check_model_dir

        for source in (self.spec.aligned_model, self.spec.base_model):
            if source is not None:
                check_model_dir(source)
        if self.spec.tokenizer:
            check_model_dir(self.spec.tokenizer, weights=False)
        for task in self.spec.task_names:
            self.task_data(task)
        self.safety_data()

    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from safe_cpift.models import load_tokenizer

            self._tokenizer = load_tokenizer(self.spec.tokenizer_source, trust_remote_code=self.spec.trust_remote_code)
        return self._tokenizer

    def task_data(self, name: str) -> Any:
        if name not in self._tasks:
            ds = self.spec.load_task(name)
            if len(ds) == 0:
                raise ValueError(f"task `{name}` has no training rows")
            self._tasks[name] = ds
        return self._tasks[name]

    def safety_data(self) -> Any:
        if self._safety is None:
            ds = self.spec.load_safety()
            if len(ds) == 0:
                raise ValueError("the safety dataset has no rows")
            self._safety = ds
        return self._safety


def local_checkpoint(source: str | Path) -> Path:
    """The local directory of a model: `source` itself, or a hub id's snapshot in the Hugging Face cache
    (its config and safetensors weights, downloaded when missing as `from_pretrained` would)."""
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(source), allow_patterns=["*.json", "*.safetensors"]))
    except Exception as err:  # offline without a cached copy, an unknown id, no access
        raise ValueError(f"cannot read the weights of `{source}` ({type(err).__name__}: {err}); pass a local "
                         "`save_pretrained` directory, or download the model first") from err


class CheckpointWeights(Mapping):
    """A checkpoint's tensors as `load_model(source, spec)` would hold them (in the run's `dtype`), read
    from the file only when asked for: θ_aligned and θ_base for repair, `direction` and Safe LoRA
    without more models in memory.

    Args:
        ctx (`RunContext`): the run (its `dtype`).
        source (`str` or `Path`): a checkpoint directory or a hub id (its local snapshot).
        dtype (`torch.dtype`, *optional*): instead of the run's `dtype`, e.g. the dtype `load_model(...,
            train=True)` loads.
    """

    def __init__(self, ctx: RunContext, source: str | Path, dtype: Any = None) -> None:
        import torch

        from safe_cpift.io import open_checkpoint

        self.reader = open_checkpoint(local_checkpoint(source))
        if dtype is None and ctx.spec.dtype != "auto":
            dtype = getattr(torch, ctx.spec.dtype)
        self.dtype = dtype  # None: the checkpoint's own dtype

    def __getitem__(self, name: str) -> Any:
        t = self.reader[name]
        return t if self.dtype is None or not t.is_floating_point() else t.to(self.dtype)

    def __contains__(self, name: object) -> bool:
        return name in self.reader

    def __iter__(self) -> Iterator[str]:
        return iter(self.reader)

    def __len__(self) -> int:
        return len(self.reader)


def load_model(source: str | Path, spec: PipelineSpec | None = None, *, train: bool = False,
               device: str | None = None) -> Any:
    """Load a causal LM the way the run's spec says (dtype, device, remote code); refuse architectures it cannot handle.

    Args:
        train (`bool`, *optional*): load trainable weights in the dtype the run's precision trains
            (float32 master weights, or bf16 for `bf16-sr`); otherwise in the run's `dtype`
            (`auto`: the checkpoint's own dtype). See docs/dtypes.md.
        device (`str`, *optional*): overrides the run's device (`spec.device`, `--device`, auto).
    """
    from safe_cpift.architectures import check_architecture
    from safe_cpift.models import load_causal_lm
    from safe_cpift.runtime import resolve_device

    if spec is None:
        model = load_causal_lm(str(source), device=resolve_device(device))
    else:
        if train:
            from safe_cpift.precision import load_dtype

            dtype: Any = load_dtype(spec.train.precision)
        else:
            dtype = spec.dtype
        model = load_causal_lm(str(source), dtype=dtype, trust_remote_code=spec.trust_remote_code,
                               device=resolve_device(device or spec.device))
    check_architecture(model)  # quantized or oddly tied weights: a ValueError naming the architecture
    return model


def save_model(model: Any, tokenizer: Any, out_dir: Path) -> Path:
    """`save_pretrained` (safetensors) of the model and its tokenizer into `out_dir`."""
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def mix(ctx: RunContext, tasks: dict[str, int], safety: int, seed: int) -> tuple[Any, dict[str, int]]:
    """A shuffled dataset with `tasks[name]` rows of each task and `safety` safety rows."""
    from safe_cpift.data import mix_datasets

    sources = {f"task:{t}": ctx.task_data(t) for t, n in tasks.items() if n}
    counts = {f"task:{t}": n for t, n in tasks.items() if n}
    if safety:
        sources["safety"] = ctx.safety_data()
        counts["safety"] = safety
    ds = mix_datasets(sources, counts, seed=seed)
    return ds, {k.removeprefix("task:"): v for k, v in counts.items()}


def split_evenly(total: int, names: list[str]) -> dict[str, int]:
    """`total` examples split over `names` as evenly as possible (earlier names get the remainder)."""
    q, r = divmod(total, len(names))
    return {n: q + (1 if i < r else 0) for i, n in enumerate(names)}


def train_and_save(ctx: RunContext, start: str | Path, dataset: Any, tmp: Path, *, seed: int,
                   freeze: Any | None = None, out_name: str = MODEL_DIR,
                   callbacks: list[Any] | None = None, learning_rate: float | None = None,
                   lora: Any | None = None) -> dict[str, Any]:
    """One SFT epoch over `dataset` from model `start`; saves the model to `tmp / out_name`.

    Args:
        ctx (`RunContext`).
        start (`str` or `Path`): the model to start from (a directory).
        dataset (`datasets.Dataset`): chat `messages`, exactly the examples to train on (one epoch).
        tmp (`Path`): the stage's temporary directory.
        seed (`int`): seed of data order and initialisation of the trainer.
        freeze (`CoreRegion`, *optional*): entries kept at their start values (`CoreFreezeCallback`).
        callbacks (`list[TrainerCallback]`, *optional*): more callbacks (protections), before the freeze.
        learning_rate (`float`, *optional*): instead of the run's `train.learning_rate`.
        lora (`peft.LoraConfig`, *optional*): train a LoRA adapter (initialised from `seed`) instead of every
            weight; the adapter is saved to `tmp / ADAPTER_DIR` and the model to `tmp / out_name` merged.

    Returns:
        `dict`: `train_seconds`, `examples_seen`, `steps`, `final_loss`, `frozen_entries`.
    """
    from safe_cpift.training import train_sft

    spec = ctx.spec
    model = load_model(start, spec, train=True)
    if lora is not None:
        model = with_adapter(model, lora, seed)
    tokenizer = ctx.tokenizer()
    callbacks = list(callbacks or [])
    if freeze is not None and freeze.num_selected:
        from safe_cpift.protect.freeze import CoreFreezeCallback

        callbacks.append(CoreFreezeCallback(freeze))
    bar = ctx.observer.training_callback(ctx.current_stage) if ctx.observer is not None else None
    if bar is not None:
        callbacks.append(bar)
    overrides = dict(spec.train.overrides)
    if spec.train.max_length is not None:
        overrides.setdefault("max_length", spec.train.max_length)
    refuse_pipeline_owned(overrides)
    work = Path(tmp) / "_trainer"
    with scoped_threads(spec.num_threads):
        stats = train_sft(model, tokenizer, dataset, output_dir=str(work), num_train_epochs=1,
                          learning_rate=learning_rate or spec.train.learning_rate, batch_size=spec.train.batch_size,
                          callbacks=callbacks, seed=seed, precision=spec.train.precision, **overrides)
    shutil.rmtree(work, ignore_errors=True)
    if lora is not None:
        model.save_pretrained(Path(tmp) / ADAPTER_DIR)  # adapter_model.safetensors + adapter_config.json
        model = model.merge_and_unload()
    save_model(model, tokenizer, Path(tmp) / out_name)
    # the finished trainer holds the model and its optimiser state in reference cycles (the model's own
    # wrapped `forward` is one): free them now, not whenever Python next collects its oldest objects
    del model
    gc.collect()
    out = _stats_dict(stats)
    # one epoch over exactly these rows: the examples seen are the rows (the trainer's
    # steps x batch size over-counts a partial last batch)
    out["examples_seen"] = len(dataset)
    out["frozen_entries"] = int(freeze.num_selected) if freeze is not None else 0
    out["start"] = str(start)
    return out


def with_adapter(model: Any, lora: Any, seed: int) -> Any:
    """`peft.get_peft_model(model, lora)` with the adapter's random initialisation drawn from `seed`
    (the process-wide RNG is left as it was)."""
    import torch
    from peft import get_peft_model

    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return get_peft_model(model, lora)


# SFTConfig settings the pipeline owns: it saves each stage's model itself and deletes the
# trainer's scratch directory, so checkpoints or uploads asked for here would be silently lost
SAVING_OWNED = {
    "save_strategy": ("no",), "push_to_hub": (False,), "load_best_model_at_end": (False,),
    "resume_from_checkpoint": (None,), "output_dir": (),
}


def refuse_pipeline_owned(settings: dict[str, Any]) -> None:
    """Raise for training settings the pipeline must override (instead of dropping them)."""
    for key, allowed in SAVING_OWNED.items():
        if key in settings and settings[key] not in allowed:
            raise ValueError(f"`training.{key}: {settings[key]!r}` cannot be honoured: the pipeline saves each stage's "
                             "model itself and removes the trainer's scratch directory; remove the setting "
                             "(use `output_dir` and the run directory's stage models instead)")


def _stats_dict(stats: Any) -> dict[str, Any]:
    if isinstance(stats, dict):
        d = dict(stats)
    else:
        d = {k: getattr(stats, k) for k in ("train_seconds", "examples_seen", "steps", "final_loss")
             if hasattr(stats, k)}
    return {"train_seconds": float(d.get("train_seconds", 0.0)), "examples_seen": int(d.get("examples_seen", 0)),
            "steps": int(d.get("steps", 0)),
            "final_loss": None if d.get("final_loss") is None else float(d["final_loss"])}
