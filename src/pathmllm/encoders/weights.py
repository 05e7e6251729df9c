"""Local weights: an explicit path, or ``$PATHMLLM_WEIGHTS`` with a small mapping file.

Nothing is ever downloaded. Lookup order for an encoder called ``NAME``:

1. the path the user gives (``--weights`` / ``weights=``): a file or a folder;
2. ``$PATHMLLM_WEIGHTS/weights.yaml`` (or ``weights.json``), mapping ``NAME: relative/or/absolute/path``
   (like TRIDENT's local checkpoint table);
3. ``$PATHMLLM_WEIGHTS/NAME`` (a file or folder of that name).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

ENV = "PATHMLLM_WEIGHTS"
MAPPING_FILES = ("weights.yaml", "weights.yml", "weights.json")
#: file names looked for inside a weights folder, in order
STATE_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin",
               "open_clip_model.safetensors", "model.pth", "checkpoint.pth", "model.pt")
#: prefixes stripped from checkpoint keys (DDP, Lightning, DINO teacher wrappers)
STRIP_PREFIXES = ("module.", "model.", "backbone.", "encoder.", "_orig_mod.")


class WeightsNotFoundError(FileNotFoundError):
    """No local weights for an encoder that needs them; the message lists where we looked."""


class WeightsMismatchError(ValueError):
    """A checkpoint whose keys or shapes do not fit the architecture."""


def weights_root() -> Path | None:
    root = os.environ.get(ENV)
    return Path(root).expanduser() if root else None


def weights_table(root: Path | None = None) -> dict[str, Path]:
    """The mapping file in the weights folder, with paths made absolute."""
    root = root or weights_root()
    if root is None:
        return {}
    for name in MAPPING_FILES:
        f = root / name
        if not f.exists():
            continue
        text = f.read_text()
        if f.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{f}: expected a mapping of encoder name -> path")
        return {str(k): (root / str(v)).expanduser() for k, v in data.items()}
    return {}


def find_weights(name: str, explicit: str | os.PathLike[str] | None = None, hint: str = "") -> Path | None:
    """The weights path for ``name``, or None when nothing is configured (see module doc)."""
    if explicit is not None:
        p = Path(explicit).expanduser()
        if not p.exists():
            raise WeightsNotFoundError(f"weights for {name!r}: {p} does not exist")
        return p
    root = weights_root()
    if root is not None:
        table = weights_table(root)
        if name in table:
            if not table[name].exists():
                raise WeightsNotFoundError(
                    f"weights for {name!r}: the mapping in {root} points to {table[name]}, which does not exist"
                )
            return table[name]
        if (root / name).exists():
            return root / name
    return None


def require_weights(name: str, explicit: str | os.PathLike[str] | None, hint: str) -> Path:
    p = find_weights(name, explicit)
    if p is None:
        root = weights_root()
        where = f"${ENV}={root} has no entry for it" if root else f"${ENV} is not set"
        raise WeightsNotFoundError(
            f"encoder {name!r} needs local weights and none were found ({where}). Pass --weights PATH, "
            f"or add '{name}: <path>' to $PATHMLLM_WEIGHTS/weights.yaml. Expected: {hint or 'a checkpoint file'}. "
            "pathmllm never downloads weights."
        )
    return p


def state_file(path: Path) -> Path:
    """A checkpoint file: ``path`` itself, or the first known file inside the folder ``path``."""
    if path.is_file():
        return path
    for name in STATE_FILES:
        if (path / name).exists():
            return path / name
    found = sorted(p.name for p in path.glob("*") if p.suffix in (".safetensors", ".bin", ".pth", ".pt"))
    if len(found) == 1:
        return path / found[0]
    raise WeightsNotFoundError(
        f"{path}: no checkpoint file in this folder (looked for {', '.join(STATE_FILES)}"
        + (f"; found several: {', '.join(found)}" if found else "") + ")"
    )


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint (safetensors, or a torch pickle loaded with ``weights_only``) into a flat state dict."""
    import torch

    f = state_file(Path(path))
    try:
        if f.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(f))
        else:
            state = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, not a checkpoint, a pickle that is not weights-only
        raise WeightsMismatchError(f"{f}: cannot read it as a checkpoint ({type(exc).__name__}: {exc})") from exc
    for key in ("state_dict", "model", "teacher", "model_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise WeightsMismatchError(f"{f}: not a state dict of tensors")
    return {_strip(k): v for k, v in state.items()}


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in STRIP_PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def load_into(model: Any, state: dict[str, Any], what: str, ignore: tuple[str, ...] = ()) -> None:
    """Load ``state`` into ``model`` strictly; mismatches raise :class:`WeightsMismatchError`
    listing the missing, unexpected and wrongly-shaped keys. Keys starting with ``ignore``
    (e.g. a classification head the encoder drops) may be absent or extra."""
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(ignore)} if ignore else state
    missing = [k for k in own if k not in state and not k.startswith(ignore)]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches ({'; '.join(shapes[:3])})")
        if missing:
            parts.append(f"{len(missing)} missing keys ({', '.join(missing[:4])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({', '.join(unexpected[:4])})")
        raise WeightsMismatchError(
            f"the checkpoint does not fit {what}: {'; '.join(parts)}. Is it the right file for this encoder?"
        )
    model.load_state_dict(state, strict=True)
