"""MedPLIB's Mixture-of-Experts feed-forward: N expert FFNs and a per-token router.

In chosen decoder layers of a Hugging Face causal LM (Qwen2 / Llama style, each
``model.model.layers[i].mlp`` maps ``(B, T, H) -> (B, T, H)``) the FFN is replaced by
:class:`MoEFeedForward`: ``N`` experts (default 2: a vision-language expert and a grounding
expert, each a copy of the original FFN or loaded from given state dicts) and a router
``Linear(H, N)`` that picks, per token, the top-``k`` experts (top-1 by default).

Output convention (the routing weight):

* ``top_k == 1``: **straight-through** Switch routing, ``y = (p_i / sg(p_i)) * E_i(x)`` where
  ``p_i`` is the router's softmax probability of the chosen expert and ``sg`` stops the
  gradient. Its *value* is exactly ``E_i(x)`` (``p / p`` is exactly 1.0 in IEEE arithmetic), so a
  freshly converted model whose experts are copies of the original FFN computes exactly the
  original model; its *gradient* with respect to the router is ``E_i(x) * dp_i / p_i`` (the
  Switch Transformer's ``y = p_i * E_i(x)`` gradient, divided by ``p_i``), so the router learns
  from the language-modelling loss. (Plain Switch ``y = p_i E_i(x)`` would shrink every FFN
  output by ``p_i`` right after conversion and break the pretrained model.)
* ``top_k > 1``: ``y = sum_j w_j E_j(x)`` with ``w`` the softmax renormalised over the chosen
  ``k`` experts (``w_j = p_j / sum_chosen p``; weights sum to 1, gradient flows to the router).

Cost: each token runs only its chosen expert(s). Tokens are grouped by expert (a stable sort of
the expert indices), each expert runs once on its tokens (``index_select``), and the results are
written back in place (``index_copy_`` for top-1, ``index_add_`` for top-k) -- never all experts
on all tokens.

The router computes its logits in the model's dtype and the softmax in float32. After every
forward a module keeps ``last_router_logits`` ``(B*T, N)`` (float32, with its graph while grad
is enabled) and ``last_expert_index`` ``(B*T, k)`` for :func:`load_balancing_loss`,
:func:`router_z_loss` and :func:`routing_statistics`. ``force_expert = i`` sends every token to
expert ``i`` (training a single expert in a stage; the benchmark's reference).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MoEFeedForward",
    "convert_to_moe",
    "decoder_layers",
    "load_balancing_loss",
    "count_fractions",
    "router_z_loss",
    "routing_counts",
    "routing_statistics",
]


class MoEFeedForward(nn.Module):
    """N experts and a per-token top-k router in place of one FFN.

    Args:
        experts: the expert modules (each maps ``(..., H) -> (..., H)``).
        hidden_size: ``H``, the router's input size.
        top_k: experts per token (``1 <= top_k <= len(experts)``).
        jitter: multiplicative router-input noise ``x * U(1 - jitter, 1 + jitter)`` while
            training (Switch Transformer); 0 disables it.
        router_std: standard deviation of the router's normal initialisation.
    """

    def __init__(
        self,
        experts: Sequence[nn.Module],
        hidden_size: int,
        top_k: int = 1,
        jitter: float = 0.0,
        *,
        router_std: float = 0.02,
    ) -> None:
        super().__init__()
        experts = list(experts)
        if not experts:
            raise ValueError("MoEFeedForward needs at least one expert")
        if not 1 <= int(top_k) <= len(experts):
            raise ValueError(f"top_k={top_k} must be between 1 and the number of experts ({len(experts)})")
        if jitter < 0:
            raise ValueError(f"jitter must be >= 0, got {jitter}")
        self.experts = nn.ModuleList(experts)
        self.num_experts = len(experts)
        self.hidden_size = int(hidden_size)
        self.top_k = int(top_k)
        self.jitter = float(jitter)
        ref = next(experts[0].parameters(), None)
        self.router = nn.Linear(
            self.hidden_size, self.num_experts, bias=False,
            device=ref.device if ref is not None else None, dtype=ref.dtype if ref is not None else None,
        )
        nn.init.normal_(self.router.weight, std=router_std)
        #: route every token to this expert (None: the router decides)
        self.force_expert: int | None = None
        #: set by :func:`convert_to_moe`: the decoder layer this module sits in
        self.layer_index: int | None = None
        self.last_router_logits: torch.Tensor | None = None
        self.last_expert_index: torch.Tensor | None = None

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, top_k={self.top_k}, jitter={self.jitter}"

    def _run_expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        # experts are FFNs written for (B, T, H): give them (1, n, H)
        return self.experts[e](x.unsqueeze(0)).squeeze(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.hidden_size:
            raise ValueError(f"expected hidden size {self.hidden_size}, got input of shape {tuple(x.shape)}")
        shape = x.shape
        flat = x.reshape(-1, self.hidden_size)
        m = flat.shape[0]

        router_in = flat
        if self.training and self.jitter > 0:
            noise = torch.empty_like(flat).uniform_(1.0 - self.jitter, 1.0 + self.jitter)
            router_in = flat * noise
        logits = F.linear(router_in.to(self.router.weight.dtype), self.router.weight).float()
        self.last_router_logits = logits

        if self.force_expert is not None:
            e = int(self.force_expert)
            if not 0 <= e < self.num_experts:
                raise ValueError(f"force_expert={e} out of range for {self.num_experts} experts")
            self.last_expert_index = torch.full((m, 1), e, dtype=torch.long, device=flat.device)
            return self._run_expert(e, flat).reshape(shape)

        need_grad = torch.is_grad_enabled() and (self.router.weight.requires_grad or router_in.requires_grad)
        if self.top_k == 1:
            if need_grad:
                probs = logits.softmax(dim=-1)
                p, index = probs.max(dim=-1, keepdim=True)
                weight = p / p.detach()  # straight-through: value exactly 1, gradient to the router
            else:
                index = logits.argmax(dim=-1, keepdim=True)
                weight = None  # exactly 1
        else:
            probs = logits.softmax(dim=-1)
            p, index = probs.topk(self.top_k, dim=-1)
            weight = p / p.sum(dim=-1, keepdim=True)
        self.last_expert_index = index
        if m == 0:
            return x.clone()

        # group the (token, slot) assignments by expert
        flat_index = index.reshape(-1)
        counts = torch.bincount(flat_index, minlength=self.num_experts).tolist()
        if self.top_k == 1 and max(counts) == m:  # every token chose the same expert: no gathering
            e = counts.index(m)
            y = self._run_expert(e, flat)
            if weight is not None:
                y = y * weight.to(y.dtype)
            return y.reshape(shape)

        order = torch.argsort(flat_index, stable=True)
        tokens = order // self.top_k if self.top_k > 1 else order
        slot_weight = weight.reshape(-1).index_select(0, order) if weight is not None else None
        # top-1: every token is written exactly once (index_copy_ into an uninitialised tensor);
        # top-k: the k weighted expert outputs of a token are summed (index_add_)
        out = torch.empty_like(flat) if self.top_k == 1 else torch.zeros_like(flat)
        start = 0
        for e, n in enumerate(counts):
            if n == 0:
                continue
            tok = tokens[start:start + n]
            y = self._run_expert(e, flat.index_select(0, tok))
            if slot_weight is not None:
                y = y * slot_weight[start:start + n].unsqueeze(-1).to(y.dtype)
            if self.top_k == 1:
                out.index_copy_(0, tok, y.to(out.dtype))
            else:
                out.index_add_(0, tok, y.to(out.dtype))
            start += n
        return out.reshape(shape)


# --------------------------------------------------------------------------- conversion


def _unwrap(model: Any) -> Any:
    """The base transformers model under a peft wrapper (``PeftModel.get_base_model()``)."""
    get_base = getattr(model, "get_base_model", None)
    if callable(get_base):
        return get_base()
    return model


def decoder_layers(model: Any) -> nn.ModuleList:
    """The decoder layers of a Hugging Face causal LM (peft-wrapped or not)."""
    base = _unwrap(model)
    inner = getattr(base, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        get_decoder = getattr(base, "get_decoder", None)
        if callable(get_decoder):
            try:
                layers = getattr(get_decoder(), "layers", None)
            except (AttributeError, NotImplementedError):
                layers = None
    if layers is None:
        layers = getattr(base, "layers", None)
    if layers is None:
        raise ValueError(
            f"cannot find the decoder layers of {type(base).__name__}: expected `model.model.layers`, "
            "`model.get_decoder().layers` or `model.layers`"
        )
    return layers


def _hidden_size(model: Any, mlp: nn.Module) -> int:
    base = _unwrap(model)
    config = getattr(base, "config", None)
    if config is not None:
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        size = getattr(text, "hidden_size", None)
        if size:
            return int(size)
    size = getattr(mlp, "hidden_size", None)
    if size:
        return int(size)
    raise ValueError("cannot tell the hidden size: no `config.hidden_size` and no `mlp.hidden_size`")


def convert_to_moe(
    model: Any,
    layers: Sequence[int] | str = "all",
    num_experts: int = 2,
    top_k: int = 1,
    expert_state_dicts: Sequence[Mapping[str, torch.Tensor] | None] | None = None,
    *,
    jitter: float = 0.0,
) -> list[MoEFeedForward]:
    """Replace the FFN (``.mlp``) of the chosen decoder layers by :class:`MoEFeedForward`.

    Args:
        model: a Hugging Face causal LM (``model.model.layers``, ``get_decoder().layers``), peft
            wrappers included (``get_base_model()``).
        layers: decoder layer indices (negative ones count from the end) or ``"all"``.
        num_experts: experts per layer (MedPLIB: 2, vision-language and grounding).
        top_k: experts per token.
        expert_state_dicts: ``num_experts`` FFN state dicts (``None`` entries: a copy of the
            original FFN); each expert starts as a copy of the layer's FFN and then loads its
            state dict. ``None``: every expert is a copy of the original FFN.
        jitter: router-input noise while training (see :class:`MoEFeedForward`).

    Returns:
        the new modules, in the order of ``layers`` (each with ``layer_index`` set).
    """
    if num_experts < 1:
        raise ValueError(f"num_experts must be >= 1, got {num_experts}")
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k={top_k} must be between 1 and num_experts={num_experts}")
    if expert_state_dicts is not None and len(expert_state_dicts) != num_experts:
        raise ValueError(
            f"expert_state_dicts has {len(expert_state_dicts)} entries, expected num_experts={num_experts}"
        )
    all_layers = decoder_layers(model)
    n = len(all_layers)
    if isinstance(layers, str):
        if layers != "all":
            raise ValueError(f"layers must be a list of indices or 'all', got {layers!r}")
        indices = list(range(n))
    else:
        indices = []
        for i in layers:
            i = int(i)
            if not -n <= i < n:
                raise IndexError(f"layer index {i} out of range: the model has {n} decoder layers")
            i = i % n
            if i not in indices:
                indices.append(i)

    modules: list[MoEFeedForward] = []
    for i in indices:
        layer = all_layers[i]
        mlp = getattr(layer, "mlp", None)
        if not isinstance(mlp, nn.Module):
            raise ValueError(
                f"decoder layer {i} ({type(layer).__name__}) has no `.mlp` feed-forward module to convert"
            )
        if isinstance(mlp, MoEFeedForward):
            raise ValueError(f"decoder layer {i} is already a Mixture-of-Experts layer")
        experts = []
        for e in range(num_experts):
            expert = copy.deepcopy(mlp)
            state = expert_state_dicts[e] if expert_state_dicts is not None else None
            if state is not None:
                expert.load_state_dict(state)
            experts.append(expert)
        moe = MoEFeedForward(experts, _hidden_size(model, mlp), top_k=top_k, jitter=jitter)
        moe.layer_index = i
        moe.train(mlp.training)
        layer.mlp = moe
        modules.append(moe)
    return modules


# --------------------------------------------------------------------------- losses and statistics


def _check(moe_modules: Sequence[MoEFeedForward]) -> list[MoEFeedForward]:
    modules = list(moe_modules)
    if not modules:
        raise ValueError("no MoE modules given")
    for mod in modules:
        if mod.last_router_logits is None or mod.last_expert_index is None:
            raise RuntimeError("run a forward pass before computing MoE losses or statistics")
    return modules


def _mask(token_mask: torch.Tensor | None, m: int, device: torch.device) -> torch.Tensor | None:
    if token_mask is None:
        return None
    mask = token_mask.reshape(-1).to(device=device, dtype=torch.bool)
    if mask.numel() != m:
        raise ValueError(f"token mask has {mask.numel()} entries, the last forward routed {m} tokens")
    return mask


def load_balancing_loss(
    moe_modules: Sequence[MoEFeedForward], token_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Switch-Transformer auxiliary loss ``N * sum_i f_i * P_i``, averaged over the modules.

    ``f_i``: fraction of tokens whose first (top-1) choice is expert ``i``; ``P_i``: mean router
    probability of expert ``i``. Equals 1 for uniform routing (its minimum for balanced
    assignments). ``token_mask`` ``(B, T)`` (e.g. the attention mask) leaves padding out.
    """
    losses = []
    for mod in _check(moe_modules):
        logits, index = mod.last_router_logits, mod.last_expert_index
        mask = _mask(token_mask, logits.shape[0], logits.device)
        if mask is not None:
            logits, index = logits[mask], index[mask]
        if logits.shape[0] == 0:
            losses.append(logits.sum() * 0.0)
            continue
        probs = logits.softmax(dim=-1)
        f = F.one_hot(index[:, 0], mod.num_experts).float().mean(dim=0)
        losses.append(mod.num_experts * (f * probs.mean(dim=0)).sum())
    return torch.stack(losses).mean()


def router_z_loss(moe_modules: Sequence[MoEFeedForward], token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """ST-MoE router z-loss ``mean_tokens(logsumexp(logits) ** 2)``, averaged over the modules."""
    losses = []
    for mod in _check(moe_modules):
        logits = mod.last_router_logits
        mask = _mask(token_mask, logits.shape[0], logits.device)
        if mask is not None:
            logits = logits[mask]
        if logits.shape[0] == 0:
            losses.append(logits.sum() * 0.0)
            continue
        losses.append(torch.logsumexp(logits, dim=-1).pow(2).mean())
    return torch.stack(losses).mean()


@torch.no_grad()
def routing_counts(
    moe_modules: Sequence[MoEFeedForward], token_groups: Mapping[str, torch.Tensor]
) -> dict[str, dict[int, torch.Tensor]]:
    """Routing assignments per expert (float64 counts ``(N,)``), per token group and layer, of
    the last forward: what :func:`routing_statistics` normalises, and what processes add up."""
    modules = _check(moe_modules)
    counts: dict[str, dict[int, torch.Tensor]] = {}
    for name, group in token_groups.items():
        per_layer: dict[int, torch.Tensor] = {}
        for pos, mod in enumerate(modules):
            index = mod.last_expert_index
            mask = _mask(group, index.shape[0], index.device)
            chosen = index[mask].reshape(-1)
            key = mod.layer_index if mod.layer_index is not None else pos
            per_layer[key] = torch.bincount(chosen, minlength=mod.num_experts).double()
        counts[name] = per_layer
    return counts


def count_fractions(counts: torch.Tensor) -> list[float]:
    """Counts per expert -> fractions (NaN for a group with no tokens)."""
    total = float(counts.sum())
    return [float("nan")] * counts.numel() if total == 0 else (counts / total).tolist()


def routing_statistics(
    moe_modules: Sequence[MoEFeedForward], token_groups: Mapping[str, torch.Tensor]
) -> dict[str, dict[int, list[float]]]:
    """Fraction of routing assignments per expert, per token group and layer, of the last forward.

    ``token_groups``: name -> boolean ``(B, T)`` mask of the last forward's tokens (e.g. text,
    image tokens, ``[SEG]``). Returns ``{group: {layer: [fraction of expert 0, ...]}}``; with
    top-k each token counts k times, so the fractions sum to 1. The layer key is the decoder
    layer index (``layer_index``; the position in ``moe_modules`` where unset); a group with no
    tokens gets NaN fractions.
    """
    return {name: {layer: count_fractions(c) for layer, c in per.items()}
            for name, per in routing_counts(moe_modules, token_groups).items()}
