"""`CoreRegion`: which scalar entries of which tensors form a task's (or safety's) core.

A region maps tensor names to the sorted flat indices of their core entries, plus the metadata
needed to use it safely: `top_p`, `scope`, `scorer` and a fingerprint (names, shapes, dtypes) of the
model it was extracted from. On disk it is a directory with `region.safetensors` (one integer
tensor of indices per tensor with core entries; int32 unless a tensor has 2^31 entries or more)
and `region.json` (metadata). Scoring and selection live in `safe_cpift.regions.scoring`.

Which tensors count: every floating-point tensor of the state dict or checkpoint you pass (for a
module, its named parameters, tied weights once); integer tensors and rotary `inv_freq` buffers
never do. Ties are broken by (score descending, tensor name in natural order, flat index ascending).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from safe_cpift.regions.scoring import (
    PrecomputedScores,
    TensorSource,
    UpdateScores,
    counts_as_weight,
    importance_scores,
    natural_key,
)
from safe_cpift.regions.select import select

logger = logging.getLogger(__name__)

REGION_FILE = "region.safetensors"
META_FILE = "region.json"
FORMAT = "safe_cpift.core_region"
VERSION = 1
SCOPES = ("global", "tensor", "layer")
SCORERS = ("update", "alignment", "importance")

Fingerprint = dict[str, tuple[list[int], str]]

_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "base_model.model.", "_fsdp_wrapped_module.")
_ADAPTER = re.compile(r"(^|\.)(lora_[A-Za-z_]+|original_module|lora_magnitude_vector)(\.|$)")
_INFIX = re.compile(r"\.(base_layer|modules_to_save\.[^.]+|_checkpoint_wrapped_module|_fsdp_wrapped_module)\.")


def normalize_name(name: str) -> str | None:
    """Strip DDP/compile/FSDP/PEFT wrapping from a parameter name; None for adapter-only tensors.

    `module.model.layers.0.q_proj.weight` and `base_model.model.model.layers.0.q_proj.base_layer.weight`
    both become `model.layers.0.q_proj.weight`; LoRA `lora_A`/`lora_B` tensors give None.
    """
    if _ADAPTER.search(name):
        return None
    name = _INFIX.sub(".", name)
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
    return name


def check_top_p(top_p: Any) -> float:
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < float(top_p) <= 1:
        raise ValueError(f"`top_p` must be a fraction in (0, 1] (e.g. 0.01 for the top 1%), got {top_p!r}")
    return float(top_p)


def _check_choice(field: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"`{field}` must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


def _fingerprint_of(x: Any) -> tuple[dict[str, tuple[list[int], str]], set[str]]:
    """(normalized name -> (shape, dtype), alias names) of a model, state dict, fingerprint, region or path."""
    if isinstance(x, CoreRegion):
        return {normalize_name(n) or n: v for n, v in x.fingerprint.items()}, set()
    if isinstance(x, torch.nn.Module):
        out: dict[str, tuple[list[int], str]] = {}
        aliases: set[str] = set()
        seen: set[int] = set()
        for n, p in x.named_parameters(remove_duplicate=False):
            norm = normalize_name(n)
            if norm is None or not counts_as_weight(n, p.dtype):
                continue
            if id(p) in seen:
                aliases.add(norm)
            seen.add(id(p))
            out.setdefault(norm, (list(p.shape), str(p.dtype).removeprefix("torch.")))
        return out, aliases
    if isinstance(x, Mapping) and x and not isinstance(next(iter(x.values())), torch.Tensor):
        return {normalize_name(n) or n: (list(s), str(d).removeprefix("torch.")) for n, (s, d) in x.items()}, set()
    fp = TensorSource(x).fingerprint()
    return {normalize_name(n) or n: v for n, v in fp.items()}, set()


class CoreRegion:
    """A set of core entries: sorted flat indices per tensor, with the model's fingerprint.

    Args:
        indices (`Mapping[str, torch.Tensor]`): flat indices per tensor name (any order; duplicates
            are an error). Tensors without core entries may be left out.
        fingerprint (`Mapping[str, tuple[list[int], str]]`): name -> (shape, dtype) of every tensor
            of the model the region belongs to, in tie-break order.
        top_p (`float`): the fraction asked for. scope (`str`), scorer (`str`): how it was made.
        metadata (`dict`, *optional*): anything JSON-serializable worth keeping (sources, threshold).
    """

    def __init__(self, indices: Mapping[str, torch.Tensor], fingerprint: Mapping[str, tuple[list[int], str]],
                 *, top_p: float, scope: str, scorer: str, metadata: dict[str, Any] | None = None) -> None:
        self._fingerprint: Fingerprint = {n: (list(s), str(d).removeprefix("torch.")) for n, (s, d) in fingerprint.items()}
        self._indices: dict[str, torch.Tensor] = {}
        for name in sorted(indices, key=natural_key):
            if name not in self._fingerprint:
                raise ValueError(f"indices given for tensor `{name}`, which is not in the region's fingerprint")
            idx = torch.as_tensor(indices[name]).reshape(-1)
            if idx.dtype not in (torch.int32, torch.int64):
                idx = idx.to(torch.int64)
            if idx.numel() == 0:
                continue
            if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):  # already ascending: no sort
                idx = torch.sort(idx).values
                if not bool((idx[1:] > idx[:-1]).all()):
                    raise ValueError(f"indices of `{name}` contain duplicates")
            numel = math.prod(self._fingerprint[name][0])
            if int(idx[0]) < 0 or int(idx[-1]) >= numel:
                raise ValueError(f"indices of `{name}` fall outside its {numel} entries")
            self._indices[name] = idx.to(torch.int32) if numel < 2**31 else idx.to(torch.int64)
        self.top_p = float(top_p)
        self.scope = scope
        self.scorer = scorer
        self.metadata: dict[str, Any] = dict(metadata or {})
        self._normalized = {normalize_name(n) or n: n for n in self._fingerprint}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_update(cls, base: Any, tuned: Any, top_p: float = 0.01, scope: str = "global",
                    scorer: str = "update", *, progress: bool = True,
                    num_threads: int | None = None) -> CoreRegion:
        """The entries that moved most between two models: score |θ_tuned − θ_base|.

        Args:
            base, tuned (`nn.Module`, state dict, or checkpoint directory/file): the same
                architecture before and after training (or base and aligned for `scorer="alignment"`).
                Checkpoints are streamed tensor by tensor; neither model is loaded whole.
            top_p (`float`, *optional*, defaults to `0.01`): fraction in (0, 1] of entries to keep
                (`round(top_p · N)`, at least one, for `scope="global"`).
            scope (`str`, *optional*, defaults to `"global"`): `"global"` (one exact threshold over
                all entries, as in the paper), `"tensor"` (top-p of each tensor) or `"layer"` (whole
                decoder layers ranked by summed score until top_p of all entries is covered).
            scorer (`str`, *optional*, defaults to `"update"`): the label, `"update"` or `"alignment"`.
            progress (`bool`, *optional*, defaults to `True`): tqdm bar (on terminals only).
            num_threads (`int`, *optional*, defaults to `torch.get_num_threads()`): worker threads that
                score and cut chunks of a `global` selection (the region is the same for any number).
        """
        top_p = check_top_p(top_p)
        _check_choice("scope", scope, SCOPES)
        _check_choice("scorer", scorer, ("update", "alignment"))
        b, t = TensorSource(base), TensorSource(tuned)
        indices, info = select(UpdateScores(b, t), top_p, scope, progress, num_threads)
        meta = {"base": b.label, "tuned": t.label, **info}
        region = cls(indices, b.fingerprint(), top_p=top_p, scope=scope, scorer=scorer, metadata=meta)
        logger.info("core region: %d of %d entries (%s, scope=%s, top_p=%g)", region.num_selected,
                    region.num_total, scorer, scope, top_p)
        if scope == "layer" and region.fraction > 2 * top_p:
            logger.warning("scope='layer' keeps whole layers %s: %.2f%% of all entries for top_p=%g",
                           info.get("layers"), 100 * region.fraction, top_p)
        return region

    @classmethod
    def from_scores(cls, scores: Mapping[str, torch.Tensor], top_p: float = 0.01, scope: str = "global",
                    scorer: str = "importance", *, fingerprint: Mapping[str, tuple[list[int], str]] | None = None,
                    metadata: dict[str, Any] | None = None, num_threads: int | None = None) -> CoreRegion:
        """The top-p entries of precomputed per-tensor scores (higher = more core); `num_threads` as in
        `from_update`."""
        top_p = check_top_p(top_p)
        _check_choice("scope", scope, SCOPES)
        names = sorted(scores, key=natural_key)
        fp = dict(fingerprint) if fingerprint is not None else {
            n: (list(scores[n].shape), str(scores[n].dtype).removeprefix("torch.")) for n in names}
        indices, info = select(PrecomputedScores(scores, names), top_p, scope, progress=False,
                               num_threads=num_threads)
        return cls(indices, fp, top_p=top_p, scope=scope, scorer=scorer, metadata={**(metadata or {}), **info})

    @classmethod
    def from_importance(cls, model: torch.nn.Module, dataset: Any, top_p: float = 0.01, scope: str = "global",
                        *, tokenizer: Any = None, loss_fn: Any = None, batch_size: int = 8,
                        max_length: int = 512, max_batches: int | None = None, progress: bool = True) -> CoreRegion:
        """The entries that matter most for a dataset: SNIP score |θ ⊙ ∇L| summed over batches.

        Args:
            model (`nn.Module`): the model to score; its weights are not changed.
            dataset: rows (`messages`, `text` or `prompt`/`completion`; needs `tokenizer`) or an
                iterable of ready batches (dicts of tensors for `model(**batch)`).
            top_p, scope: as in `from_update`.
            loss_fn (`Callable`, *optional*): `loss_fn(model, batch) -> loss` instead of `model(**batch).loss`.
            batch_size, max_length, max_batches: batching of text rows and an optional cap.
        """
        top_p = check_top_p(top_p)
        _check_choice("scope", scope, SCOPES)
        scores = importance_scores(model, dataset, tokenizer=tokenizer, loss_fn=loss_fn, batch_size=batch_size,
                                   max_length=max_length, max_batches=max_batches, progress=progress)
        fp = TensorSource(model).fingerprint()
        return cls.from_scores({n: scores[n] for n in fp}, top_p, scope, "importance", fingerprint=fp)

    # ------------------------------------------------------------------ access
    @property
    def fingerprint(self) -> Fingerprint:
        """name -> (shape, dtype) of every tensor of the model the region belongs to."""
        return dict(self._fingerprint)

    def names(self) -> list[str]:
        """Names of the tensors that hold at least one core entry (tie-break order)."""
        return list(self._indices)

    def _resolve_name(self, name: str) -> str:
        if name in self._fingerprint:
            return name
        norm = normalize_name(name)
        if norm is not None and norm in self._normalized:
            return self._normalized[norm]
        raise KeyError(f"tensor `{name}` is not part of the model this region was extracted from")

    def indices(self, name: str) -> torch.Tensor:
        """Sorted int64 flat indices of the core entries of tensor `name` (empty if it has none).

        Wrapped names (`module.`, `base_model.model.`, `.base_layer.`) are accepted.
        """
        idx = self._indices.get(self._resolve_name(name))
        return torch.empty(0, dtype=torch.int64) if idx is None else idx.to(torch.int64)

    def raw_indices(self, name: str) -> torch.Tensor:
        """Like `indices` but in the stored dtype (int32 for tensors under 2^31 entries); no copy."""
        idx = self._indices.get(self._resolve_name(name))
        return torch.empty(0, dtype=torch.int32) if idx is None else idx

    def mask(self, name: str) -> torch.Tensor:
        """Boolean tensor shaped like tensor `name`, true at its core entries."""
        key = self._resolve_name(name)
        shape = self._fingerprint[key][0]
        m = torch.zeros(math.prod(shape), dtype=torch.bool)
        if key in self._indices:
            m[self._indices[key].to(torch.int64)] = True
        return m.view(shape)

    def counts(self) -> dict[str, int]:
        """Core entries per tensor (tensors with none left out)."""
        return {n: idx.numel() for n, idx in self._indices.items()}

    @property
    def num_selected(self) -> int:
        return sum(idx.numel() for idx in self._indices.values())

    @property
    def num_total(self) -> int:
        return sum(math.prod(s) for s, _ in self._fingerprint.values())

    @property
    def fraction(self) -> float:
        """Share of all entries of the model that are core."""
        total = self.num_total
        return self.num_selected / total if total else 0.0

    def __len__(self) -> int:
        return self.num_selected

    def __repr__(self) -> str:
        return (f"CoreRegion(entries={self.num_selected}, fraction={self.fraction:.4g}, top_p={self.top_p:g}, "
                f"scope={self.scope!r}, scorer={self.scorer!r}, tensors={len(self._indices)})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CoreRegion):
            return NotImplemented
        return (self._fingerprint == other._fingerprint and self._indices.keys() == other._indices.keys()
                and all(torch.equal(self._indices[n].to(torch.int64), other._indices[n].to(torch.int64))
                        for n in self._indices))

    # ------------------------------------------------------------------ compatibility
    def check_compatible(self, other: Any, *, check_dtype: bool = True) -> None:
        """Raise ValueError naming the first tensor where `other` differs from the region's model.

        Args:
            other: a model, state dict, checkpoint path, fingerprint mapping or another region.
            check_dtype (`bool`, *optional*, defaults to `True`): also require equal dtypes (indices
                only depend on shapes, so freezing and set operations skip this check).
        """
        theirs, aliases = _fingerprint_of(other)
        fix = "use a region extracted from this model's architecture (same names and shapes)"
        mine = {}
        for name, (shape, dtype) in self._fingerprint.items():
            norm = normalize_name(name) or name
            mine[norm] = name
            if norm not in theirs:
                raise ValueError(f"tensor `{name}` of the region is missing from the model; {fix}")
            their_shape, their_dtype = theirs[norm]
            if list(their_shape) != list(shape):
                raise ValueError(f"tensor `{name}` has shape {list(their_shape)} in the model but {shape} in the region; {fix}")
            if check_dtype and their_dtype != dtype:
                raise ValueError(
                    f"tensor `{name}` is {their_dtype} in the model but {dtype} in the region; pass "
                    "`check_dtype=False` if only the dtype changed"
                )
        for norm in theirs:
            if norm not in mine and norm not in aliases:
                raise ValueError(f"tensor `{norm}` of the model is not in the region's model; {fix}")

    def resolve(self, model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
        """Map each region tensor with core entries to the model's parameter (names/shapes checked)."""
        self.check_compatible(model, check_dtype=False)
        params: dict[str, torch.nn.Parameter] = {}
        for n, p in model.named_parameters(remove_duplicate=False):
            norm = normalize_name(n)
            if norm is not None and (norm not in params or ".modules_to_save." in n):
                params[norm] = p
        out = {name: params[normalize_name(name) or name] for name in self._indices}
        owner: dict[int, str] = {}
        for name, p in out.items():
            if id(p) in owner:  # e.g. a region of an untied model applied to a model with tied embeddings
                from safe_cpift.architectures import describe_architecture

                raise ValueError(
                    f"the region has core entries in both `{owner[id(p)]}` and `{name}`, which are one tied tensor "
                    f"in this {describe_architecture(model)} model; the region was extracted from a model where they "
                    "are separate. Extract the region from this model (tied tensors count once) instead of "
                    "untying it silently"
                )
            owner[id(p)] = name
        return out

    # ------------------------------------------------------------------ set operations
    def _pairs(self, other: CoreRegion) -> list[tuple[str, np.ndarray, np.ndarray]]:
        if not isinstance(other, CoreRegion):
            raise TypeError(f"expected a CoreRegion, got {type(other).__name__}")
        self.check_compatible(other, check_dtype=False)
        empty = np.empty(0, dtype=np.int64)
        out = []
        for name in self._fingerprint:
            a = self._indices.get(name)
            b = other._indices.get(other._resolve_name(name))
            if a is None and b is None:
                continue
            out.append((name, empty if a is None else a.numpy().astype(np.int64),
                        empty if b is None else b.numpy().astype(np.int64)))
        return out

    def intersection_size(self, other: CoreRegion) -> int:
        return sum(np.intersect1d(a, b, assume_unique=True).size for _, a, b in self._pairs(other))

    def jaccard(self, other: CoreRegion) -> float:
        """|A ∩ B| / |A ∪ B| (1.0 when both are empty)."""
        inter = self.intersection_size(other)
        union = self.num_selected + other.num_selected - inter
        return inter / union if union else 1.0

    def overlap(self, other: CoreRegion) -> float:
        """Overlap coefficient |A ∩ B| / min(|A|, |B|) (0.0 when either is empty)."""
        smaller = min(self.num_selected, other.num_selected)
        return self.intersection_size(other) / smaller if smaller else 0.0

    def _combine(self, other: CoreRegion, op: str) -> CoreRegion:
        fn = np.union1d if op == "union" else (lambda a, b: np.intersect1d(a, b, assume_unique=True))
        indices = {n: torch.from_numpy(fn(a, b)) for n, a, b in self._pairs(other)}
        region = CoreRegion(indices, self._fingerprint, top_p=self.top_p,
                            scope=self.scope if self.scope == other.scope else "mixed",
                            scorer=self.scorer if self.scorer == other.scorer else "mixed",
                            metadata={"combined": op})
        region.top_p = region.fraction
        return region

    def union(self, other: CoreRegion) -> CoreRegion:
        """Entries core in either region (`top_p` set to the result's fraction)."""
        return self._combine(other, "union")

    def intersection(self, other: CoreRegion) -> CoreRegion:
        """Entries core in both regions (`top_p` set to the result's fraction)."""
        return self._combine(other, "intersection")

    __or__ = union
    __and__ = intersection

    def stats(self) -> dict[str, Any]:
        """Share of the region by module type (embed/attn/mlp/norm/lm_head/other) and by layer."""
        from safe_cpift.regions.stats import region_stats

        return region_stats(self.counts(), self._fingerprint)

    # ------------------------------------------------------------------ persistence
    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": VERSION,
            "top_p": self.top_p, "scope": self.scope, "scorer": self.scorer,
            "num_selected": self.num_selected, "num_total": self.num_total, "fraction": self.fraction,
            "counts": self.counts(),
            "fingerprint": {n: [s, d] for n, (s, d) in self._fingerprint.items()},
            "metadata": self.metadata,
        }

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write `region.safetensors` + `region.json` into directory `path`, atomically."""
        from safetensors.torch import save_file

        from safe_cpift import __version__
        from safe_cpift.io import atomic_directory, atomic_write_json

        meta = self.to_json()
        meta["safe_cpift_version"] = __version__
        with atomic_directory(path, overwrite=overwrite) as tmp:
            tensors = {n: idx.contiguous() for n, idx in self._indices.items()}
            if not tensors:  # safetensors needs at least one entry to be a useful file; keep it valid
                tensors = {"__empty__": torch.empty(0, dtype=torch.int32)}
            save_file(tensors, str(tmp / REGION_FILE), metadata={"format": FORMAT, "version": str(VERSION)})
            atomic_write_json(tmp / META_FILE, meta)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> CoreRegion:
        """Read a region saved by `save` (safetensors + JSON; nothing is unpickled)."""
        from safetensors import safe_open

        path = Path(path)
        meta_file, data_file = path / META_FILE, path / REGION_FILE
        if not meta_file.is_file() or not data_file.is_file():
            raise FileNotFoundError(f"no core region at {path} (expected {META_FILE} and {REGION_FILE})")
        meta = json.loads(meta_file.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{meta_file} is not a safe-cpift core region (format {meta.get('format')!r})")
        if int(meta.get("version", 0)) > VERSION:
            raise ValueError(f"{path} was written by a newer safe-cpift (region version {meta['version']}); upgrade")
        fingerprint = {n: (s, d) for n, (s, d) in meta["fingerprint"].items()}
        with safe_open(str(data_file), framework="pt") as f:
            indices = {n: f.get_tensor(n) for n in f.keys() if n != "__empty__"}
        region = cls(indices, fingerprint, top_p=meta["top_p"], scope=meta["scope"], scorer=meta["scorer"],
                     metadata=meta.get("metadata"))
        expected = meta.get("counts", {})
        if region.counts() != expected:
            raise ValueError(f"{path} is inconsistent: counts in {META_FILE} do not match {REGION_FILE}")
        return region
