"""Zoo checkpoint packing: what a trained network needs to code, in a small file (int8 / float16 weights, the
entropy-bottleneck tables the encoder used; a random-weight test codec's large tensors as the seed that draws them)."""

from __future__ import annotations

import numpy as np
import torch
from compressai.entropy_models import GaussianConditional

from mutualfc.models import ENTROPY_TABLES, FeatureCompressionModel, is_entropy_table, is_linear_transform

_INT8 = "::int8"
_SCALE = "::scale"
_DERIVED = "::transpose_of_synthesis"  # marker: this analysis transform is the transpose of its synthesis (PCA)
_SEEDED = "::seeded"  # int64 [seed, exponent, *shape]: the tensor ``seeded_tensor`` draws from them
SEEDED_BITS = 12  # a seeded tensor's integers lie in [-2**11, 2**11)


def seeded_tensor(shape: tuple[int, ...], seed: int, exponent: int) -> torch.Tensor:
    """Integers from numpy's frozen legacy generator (``RandomState``, the same stream on every platform and
    release) times ``2**exponent``: float32 values every machine draws alike, so that a random-weight codec's large
    tensors (a four-level test codec's prediction map is 26M weights) travel as two numbers."""
    draw = np.random.RandomState(seed).randint(-(2 ** (SEEDED_BITS - 1)), 2 ** (SEEDED_BITS - 1), size=shape)
    return torch.from_numpy(draw.astype(np.float32) * np.float32(2.0**exponent))


def _quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8 (keeps zoo checkpoints small; encoder and decoder use the same values)."""
    scale = w.abs().flatten(1).amax(1).clamp_min(1e-12) / 127
    scale = scale.half().float()
    q = torch.round(w / scale.view(-1, *([1] * (w.dim() - 1)))).clamp(-127, 127).to(torch.int8)
    return q, scale.half()


def _is_pca_pair(state: dict[str, torch.Tensor], analysis: str) -> bool:
    """Whether ``<prefix>.lin_a`` is the orthonormal PCA analysis of ``<prefix>.lin_s`` (weight = its transpose,
    bias = -weight @ mean): true for closed-form transforms that training kept frozen."""
    synthesis = analysis[: -len("lin_a")] + "lin_s"
    keys = [f"{p}.{t}" for p in (analysis, synthesis) for t in ("weight", "bias")]
    if not all(k in state for k in keys):
        return False
    wa, ba, ws, mean = (state[k].double() for k in keys)
    if wa.dim() != 4 or not torch.equal(wa.flatten(1), ws.flatten(1).T):
        return False
    return torch.allclose(ba, -(wa.flatten(1) @ mean), rtol=1e-4, atol=1e-5)


def pack_state(
    state: dict[str, torch.Tensor], seeded: dict[str, tuple[int, int]] | None = None
) -> dict[str, torch.Tensor]:
    """Large non-linear weights as int8 + per-channel scale, other floats (the closed-form linear transforms
    included) as float16; integer tables as they are. A PCA analysis transform is not stored: it is the transpose
    of its synthesis (only the encoder uses it, so rounding in re-deriving its bias cannot desynchronise decoding).
    ``seeded``: tensors that ``seeded_tensor`` drew, by name -> (seed, exponent), stored as those two numbers
    (ValueError if a tensor is not what they draw)."""
    out = {}
    for k, (seed, exponent) in (seeded or {}).items():
        if not torch.equal(state[k], seeded_tensor(tuple(state[k].shape), seed, exponent)):
            raise ValueError(f"{k} is not the tensor seed {seed} draws")
        out[k + _SEEDED] = torch.tensor([seed, exponent, *state[k].shape], dtype=torch.int64)
    derived = {k[: -len(".weight")] for k in state if k.endswith("lin_a.weight") and _is_pca_pair(state, k[:-7])}
    for k, v in state.items():
        if k in (seeded or {}):
            continue
        prefix = k.rpartition(".")[0]
        if prefix in derived:
            out[prefix + _DERIVED] = torch.ones(())
            continue
        big = v.is_floating_point() and k.endswith(".weight") and v.dim() >= 2 and v.numel() >= 4096
        if big and not is_linear_transform(k):  # the linear transforms stay float16: near-lossless at the top
            out[k + _INT8], out[k + _SCALE] = _quantize_weight(v.float())
        elif v.is_floating_point() and not k.endswith("scale_table"):
            out[k] = v.half()
        else:
            out[k] = v
    return out


def unpack_state(packed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    drawn = {}  # seeded tensors first: a derived analysis transform may read one
    for k, v in packed.items():
        if k.endswith(_SEEDED):
            seed, exponent, *shape = v.tolist()
            drawn[k[: -len(_SEEDED)]] = seeded_tensor(tuple(shape), seed, exponent)
    packed = {k: v for k, v in packed.items() if not k.endswith(_SEEDED)} | drawn
    out = {}
    for k, v in packed.items():
        if k.endswith(_DERIVED):
            synthesis = k[: -len(_DERIVED) - len("lin_a")] + "lin_s"
            ws, mean = packed[synthesis + ".weight"].double(), packed[synthesis + ".bias"].double()
            wa = ws.flatten(1).T
            out[k[: -len(_DERIVED)] + ".weight"] = wa.float().view(*wa.shape, 1, 1)
            out[k[: -len(_DERIVED)] + ".bias"] = (-(wa @ mean)).float()
            continue
        if k.endswith(_SCALE):
            continue
        if k.endswith(_INT8):
            name = k[: -len(_INT8)]
            scale = packed[name + _SCALE].float()
            out[name] = v.float() * scale.view(-1, *([1] * (v.dim() - 1)))
        else:
            out[k] = v.float() if v.is_floating_point() else v
    return out


GAUSSIAN_TABLES = "gaussian_tables."  # one copy of the Gaussian conditionals' tables, shared by all of them


def gaussian_tables(net: FeatureCompressionModel) -> dict[str, torch.Tensor]:
    """The Gaussian conditionals' tables (every one of them has the same: they depend only on the scale table)."""
    gc = next(m for m in net.modules() if isinstance(m, GaussianConditional))
    return {GAUSSIAN_TABLES + name: getattr(gc, name).clone() for name in ENTROPY_TABLES}


def export_state(
    net: FeatureCompressionModel, seeded: dict[str, tuple[int, int]] | None = None
) -> dict[str, torch.Tensor]:
    """Packed weights plus every entropy table built from exactly the unpacked weights: the bottlenecks' tables and
    one copy of the Gaussian conditionals' (shared by all of them). Tables are part of the format: a decoder uses the
    stored ones rather than computing them again in floating point, which another machine might round otherwise.
    ``seeded``: as ``pack_state`` takes it."""
    packed = pack_state({k: v for k, v in net.state_dict().items() if not is_entropy_table(k)}, seeded)
    net.load_state_dict(unpack_state(packed), strict=False)
    net.update(force=True)
    tables = {k: v for k, v in net.state_dict().items() if is_entropy_table(k) and ".entropy_bottleneck." in k}
    return packed | tables | gaussian_tables(net)


def load_packed(net: FeatureCompressionModel, packed: dict[str, torch.Tensor]) -> None:
    """Load a zoo checkpoint: unpack the weights, use the stored entropy tables (the shared Gaussian ones go to every
    Gaussian conditional; checkpoints without them get them from ``update()``). RuntimeError if it does not fit."""
    shared = {k[len(GAUSSIAN_TABLES) :]: v for k, v in packed.items() if k.startswith(GAUSSIAN_TABLES)}
    state = unpack_state({k: v for k, v in packed.items() if not k.startswith(GAUSSIAN_TABLES)})
    missing = [k for k in net.state_dict() if k not in state and not is_entropy_table(k)]
    unexpected = [k for k in state if k not in net.state_dict()]
    if missing or unexpected:
        raise RuntimeError(f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    if shared:
        for name, m in net.named_modules():
            if isinstance(m, GaussianConditional):
                state |= {f"{name}.{t}": v for t, v in shared.items()}
    net.load_state_dict(state, strict=False)
    net.update()
