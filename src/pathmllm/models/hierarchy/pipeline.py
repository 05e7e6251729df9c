"""What a slide model needs from a slide, and getting it: the slide-side half of MLLM-HWSI.

A trained :class:`~pathmllm.models.hierarchy.slide_lm.HierarchicalSlideLM` only makes sense on
slides preprocessed the way its training slides were: same tiling (µm/px, patch size, region
size), same nucleus segmenter, same patch encoder, same cell-feature normalisation, same
selection limits and the same prompt. :class:`SlidePipelineSpec` records all of that; it is
saved beside the model as ``pathmllm_slide.json``, so ``pathmllm slide ask`` can run whatever
preprocessing a new slide lacks and read it exactly as training did.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "SPEC_FILE",
    "SlidePipelineSpec",
    "format_prompt",
    "load_spec",
    "prepare_slide",
    "prepare_slides",
    "read_hierarchy",
    "store_dir",
]

SPEC_FILE = "pathmllm_slide.json"


@dataclass
class SlidePipelineSpec:
    """Preprocessing, selection limits and prompt format of a slide model."""

    encoder: str = "handcrafted"
    """Patch encoder (``pathmllm models ls``) whose features the model reads."""
    encoder_weights: str | None = None
    """Local weights of the patch encoder (None: ``$PATHMLLM_WEIGHTS`` lookup or none needed)."""
    target_mpp: float = 0.5
    """Patch resolution in µm/px."""
    patch_size: int = 256
    """Patch side in pixels at ``target_mpp``."""
    region_size: int = 16
    """Patches per region side."""
    min_tissue: float = 0.25
    """Minimum tissue fraction of a kept patch."""
    cell_backend: str = "watershed"
    """Nucleus segmenter of the cells stage."""
    cell_weights: str | None = None
    """Its weights, for backends that need them."""
    cell_columns: list[str] = field(default_factory=lambda: [
        "area_um2", "perimeter_um", "eccentricity", "solidity", "hematoxylin_od", "eosin_od"])
    """Per-cell measurements fed to CCAF."""
    cell_mean: list[float] | None = None
    """Per-column mean of the training cells (features become ``(x - mean) / std``)."""
    cell_std: list[float] | None = None
    """Per-column standard deviation of the training cells."""
    max_cells_per_patch: int = 32
    """Largest nuclei kept per patch."""
    max_regions: int | None = 64
    """Regions read per slide (diversity + question relevance beyond this)."""
    max_patches_per_region: int | None = 64
    """Patches read per region."""
    prompt_template: str = "{slide}\n{question}\nAnswer: "
    """How a question becomes the LM prompt (``{slide}`` is the placeholder, ``{question}`` the
    question with its options). Ignored when ``chat_template`` is true."""
    chat_template: bool = False
    """Wrap the question in the tokenizer's chat template (instruction-tuned LMs)."""
    report_question: str = "Write the pathology report for this slide."
    """The question ``pathmllm slide report`` asks."""

    def tiling(self) -> Any:
        from pathmllm.wsi.tiling import TilingConfig

        return TilingConfig(target_mpp=self.target_mpp, patch_size=self.patch_size, region_size=self.region_size,
                            min_tissue=self.min_tissue)

    def cells(self) -> Any:
        from pathmllm.cells.slide import CellConfig

        return CellConfig(backend=self.cell_backend, weights=self.cell_weights)

    def save(self, folder: str | os.PathLike[str]) -> Path:
        from pathmllm.utils.atomic import write_json

        path = Path(folder) / SPEC_FILE
        write_json(path, asdict(self))
        return path


def load_spec(folder: str | os.PathLike[str]) -> SlidePipelineSpec:
    """Read ``folder/pathmllm_slide.json`` (a model folder written by ``pathmllm train slide``)."""
    from pathmllm.models.backbone import CheckpointError

    path = Path(folder) / SPEC_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder} has no {SPEC_FILE}: it was not written by `pathmllm train slide`, so the "
                              "preprocessing its slides need is unknown. Train or export the model with pathmllm.")
    raw = json.loads(path.read_text())
    known = set(SlidePipelineSpec.__dataclass_fields__)
    unknown = set(raw) - known
    if unknown:
        raise CheckpointError(f"{path}: unknown keys {sorted(unknown)} (written by a newer pathmllm?)")
    return SlidePipelineSpec(**raw)


def store_dir(stores: str | os.PathLike[str], slide_name: str, spec: SlidePipelineSpec) -> Path:
    """``<stores>/<slide>/<setting>``: where the stages of ``slide_name`` live for ``spec``."""
    return Path(stores) / slide_name / spec.tiling().setting_name


def prepare_slide(
    slide: str | os.PathLike[str],
    stores: str | os.PathLike[str],
    spec: SlidePipelineSpec,
    *,
    mpp: float | None = None,
    device: str = "auto",
) -> Path:
    """Run the stages ``slide`` lacks for ``spec`` (tiling, cells, patch features); return its store.

    Stages already done with the same parameters are skipped, so this is cheap on a prepared
    slide. Raises ``ValueError`` for a slide without tissue (nothing to read).
    """
    from pathmllm.cells.slide import segment_slide
    from pathmllm.encoders.extract import ExtractConfig, extract_slide_features
    from pathmllm.wsi.pipeline import tile_slide

    tiling = spec.tiling()
    tiled = tile_slide(slide, stores, tiling, mpp=mpp)
    if tiled.n_patches == 0:
        raise ValueError(f"{slide}: no tissue found (0 patches at {spec.target_mpp} µm/px with min_tissue "
                         f"{spec.min_tissue}); there is nothing for the slide model to read. Check that the file "
                         "holds tissue, or lower min_tissue.")
    segment_slide(slide, stores, tiling, spec.cells(), mpp=mpp)
    extract_slide_features(slide, stores, ExtractConfig(encoder=spec.encoder, weights=spec.encoder_weights,
                                                        device=device), tiling, mpp=mpp)
    return Path(tiled.store)


def _one_thread() -> None:
    """Worker initializer: one torch thread per process (the processes share the cores)."""
    import torch

    torch.set_num_threads(1)


def _prepare_one(path: str, stores: str, spec: dict[str, Any], mpp: float | None, device: str) -> tuple[str, str | None]:
    """Worker of :func:`prepare_slides`: ``(store or slide path, error message or None)``."""
    try:
        return str(prepare_slide(path, stores, SlidePipelineSpec(**spec), mpp=mpp, device=device)), None
    except Exception as exc:  # reported, and the other slides go on
        return path, f"{type(exc).__name__}: {exc}"


def prepare_slides(
    slides: list[str | os.PathLike[str]],
    stores: str | os.PathLike[str],
    spec: SlidePipelineSpec,
    *,
    workers: int = 1,
    mpp: float | None = None,
    device: str = "cpu",
) -> tuple[list[Path], list[str]]:
    """:func:`prepare_slide` for many slides, ``workers`` at a time (spawned processes, one torch
    thread each). Returns ``(stores, problems)``: a failing slide is reported and skipped, the
    others finish; a rerun skips the stages already done."""
    from pathmllm.utils.pool import process_map

    done: list[Path] = []
    problems: list[str] = []
    items = [str(s) for s in slides]
    for path, (out, err) in zip(items, process_map(_prepare_one, items, workers,
                                                   initializer=_one_thread if workers > 1 else None,
                                                   extra_args=(str(stores), asdict(spec), mpp, device)), strict=True):
        if err is None:
            done.append(Path(out))
        else:
            problems.append(f"{path}: {err}")
    return done, problems


def read_hierarchy(store: str | os.PathLike[str], spec: SlidePipelineSpec, question_vec: Any | None = None,
                   selection_map: Any | None = None) -> Any:
    """Load a prepared store as the model reads it (:func:`~pathmllm.models.hierarchy.store_batch.load_slide_hierarchy`
    with the spec's columns, normalisation and limits)."""
    from pathmllm.models.hierarchy.store_batch import load_slide_hierarchy

    return load_slide_hierarchy(
        store, spec.encoder, cell_columns=spec.cell_columns, max_cells_per_patch=spec.max_cells_per_patch,
        max_regions=spec.max_regions, max_patches_per_region=spec.max_patches_per_region,
        question_vec=question_vec, selection_map=selection_map, cell_mean=spec.cell_mean, cell_std=spec.cell_std,
    )


def format_prompt(spec: SlidePipelineSpec, tokenizer: Any, question: str, slide_token: str = "<slide>") -> str:
    """The LM prompt for ``question`` (options included): the spec's template, or the tokenizer's
    chat template when ``spec.chat_template``."""
    if spec.chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("chat_template is true but the tokenizer has no chat template; set chat_template: false")
        return tokenizer.apply_chat_template([{"role": "user", "content": f"{slide_token}\n{question}"}],
                                             tokenize=False, add_generation_prompt=True)
    return spec.prompt_template.format(slide=slide_token, question=question)
