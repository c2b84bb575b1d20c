"""Sony MCT (``model-compression-toolkit``) mixed-precision post-training quantization, run as a
baseline beside fqopt's plans: the tool a user would most likely pick instead of fqopt.

MCT chooses per-layer weight bits {8, 4, 2} under a weights-memory budget
(``ResourceUtilization(weights_memory=avg_bits · n_weights / 8)``) and quantizes with its own
recipe (BatchNorm folded into the convolution, MSE-chosen thresholds, bias correction), on its
IMX500 v1 target platform; ``activations=False`` turns activation quantization off so that the
comparison with fqopt's weight-only plans is like for like.

Optional dependency (``pip install 'fqopt[bench]'``, never a runtime requirement): everything
here fails with :class:`MCTUnavailable` when it is missing, and with :class:`MCTFailed` when
MCT cannot trace or quantize the model (its torch.fx tracer rejects some graphs).
"""

from __future__ import annotations

import copy
import logging
import os
import sys
import time
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["MCTUnavailable", "MCTFailed", "MCTResult", "available", "mct_quantize",
           "TraceableViT"]


class MCTUnavailable(RuntimeError):
    """``model-compression-toolkit`` is not installed."""


class MCTFailed(RuntimeError):
    """MCT raised while tracing or quantizing the model (message: its first line)."""


@dataclass
class MCTResult:
    """MCT's quantized model and what it spent.

    model: the quantized torch module (its input is the float image batch, as the original's);
    avg_bits: parameter-weighted average weight bits over every Conv2d/Linear weight of the
    original model (a weight MCT left unquantized counts as 32 bits).
    """

    model: nn.Module
    avg_bits: float
    weights_counted: int
    n_weights: int
    seconds: float
    info: dict = field(default_factory=dict)


def available() -> bool:
    """Whether ``model-compression-toolkit`` can be imported."""
    try:
        import model_compression_toolkit  # noqa: F401  # deferred: optional dependency, probed only
    except ImportError:
        return False
    return True


def _import_mct():
    try:
        import model_compression_toolkit as mct  # deferred: optional dependency
    except ImportError:
        raise MCTUnavailable("model-compression-toolkit is not installed "
                             "(pip install 'fqopt[bench]')") from None
    return mct


def _target_platform(activations: bool):
    """MCT's IMX500 v1 platform (weights {8, 4, 2}); without activation quantization when
    ``activations`` is False."""
    # deferred: optional dependency
    from model_compression_toolkit.target_platform_capabilities.tpc_models.imx500_tpc.v1_0 \
        import tpc as imx

    if activations:
        return imx.get_tpc()
    base, mixed, default = imx.get_op_quantization_configs()

    def weights_only(cfg):
        return cfg.clone_and_edit(enable_activation_quantization=False)
    return imx.generate_tpc(default_config=weights_only(default), base_config=weights_only(base),
                            mixed_precision_cfg_list=[weights_only(c) for c in mixed],
                            name="imx500_weights_only")


def _weight_bits(qmodel: nn.Module) -> tuple[int, float]:
    """``(weights MCT quantized, their average bits)`` from its wrapped layers."""
    total = bits = 0
    for mod in qmodel.modules():
        quantizers = getattr(mod, "weights_quantizers", None)
        if not quantizers:
            continue
        for attr, q in quantizers.items():
            n = getattr(mod.layer, attr).numel()
            total += n
            bits += n * int(q.num_bits)
    return total, bits / max(total, 1)


class _Silenced:
    """File descriptors 1 and 2 to /dev/null inside the block (MCT's MILP solver and progress
    bars write at the C level); exceptions still propagate."""

    def __enter__(self):
        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = [os.dup(1), os.dup(2)]
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.close(null)

    def __exit__(self, *exc):
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in zip((1, 2), self.saved):
            os.dup2(saved, fd)
            os.close(saved)


class TraceableViT(nn.Module):
    """A timm ``VisionTransformer`` (one class token, learned position embedding, token pooling)
    written with plain tensor operations over the original's own modules, so that MCT's torch.fx
    tracer can read it (timm's forward threads ``attn_mask=None`` through every block and uses
    fused attention, which MCT 2.6 cannot trace). Same outputs to float rounding."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        if getattr(vit, "num_prefix_tokens", None) != 1 or getattr(vit, "global_pool",
                                                                    None) != "token":
            raise MCTFailed("the MCT wrapper handles ViTs with one class token and token "
                            "pooling only")
        self.vit = vit
        self.tokens = vit.patch_embed.num_patches + vit.num_prefix_tokens
        self.dim = vit.embed_dim
        self.heads = vit.blocks[0].attn.num_heads

    def _attention(self, a, x):
        hd = self.dim // self.heads
        qkv = a.qkv(x).reshape(-1, self.tokens, 3, self.heads, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        q, k = a.q_norm(q), a.k_norm(k)
        attn = torch.softmax((q * a.scale) @ k.transpose(-2, -1), dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(-1, self.tokens, self.dim)
        x = getattr(a, "norm", nn.Identity())(x)
        return a.proj(x)

    def forward(self, x):
        v = self.vit
        x = v.patch_embed(x).reshape(-1, self.tokens - 1, self.dim)   # NHWC or NLC → NLC
        cls = v.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + v.pos_embed
        x = v.norm_pre(x)
        for b in v.blocks:
            x = x + b.ls1(self._attention(b.attn, b.norm1(x)))
            x = x + b.ls2(b.mlp(b.norm2(x)))
        x = v.norm(x)
        return v.head(v.fc_norm(x[:, 0]))


def _is_vit(model: nn.Module) -> bool:
    return all(hasattr(model, a) for a in ("patch_embed", "blocks", "cls_token", "pos_embed"))


def mct_quantize(model: nn.Module, batches, *, avg_bits: float, activations: bool = False,
                 mp_images: int | None = None) -> MCTResult:
    """Quantize a copy of ``model`` with MCT's mixed precision at ``avg_bits`` weight memory.

    model: the FP model (left untouched; a copy is traced, on the CPU).
    batches: representative input batches (a list of ``[B, 3, H, W]`` float tensors, normalized
        as the model expects: what ``fqopt.data.iter_batches`` yields).
    avg_bits: the weights-memory budget as parameter-weighted average bits over the model's
        Conv2d/Linear weights (``weights_memory = avg_bits · n_weights / 8`` bytes).
    activations: quantize activations to 8 bits as MCT does by default (False: weights only).
    mp_images: images MCT's mixed-precision search scores with (None: MCT's default).
    """
    mct = _import_mct()
    batches = [b for b in batches]
    if not batches:
        raise ValueError("mct_quantize needs at least one representative batch")
    fp = copy.deepcopy(model).cpu().eval()
    if _is_vit(fp):
        fp = TraceableViT(fp).eval()
    n_weights = sum(m.weight.numel() for m in fp.modules()
                    if isinstance(m, (nn.Conv2d, nn.Linear)))

    def representative():
        for x in batches:
            yield [x.cpu()]

    resources = mct.core.ResourceUtilization(weights_memory=avg_bits * n_weights / 8)
    core = mct.core.CoreConfig(
        mixed_precision_config=mct.core.MixedPrecisionQuantizationConfig(
            **({"num_of_images": int(mp_images)} if mp_images else {})))
    t0 = time.perf_counter()
    logging.getLogger("Model Compression Toolkit").setLevel(logging.ERROR)
    try:
        with _Silenced():
            q, _ = mct.ptq.pytorch_post_training_quantization(
                fp, representative, target_resource_utilization=resources, core_config=core,
                target_platform_capabilities=_target_platform(activations))
    except Exception as exc:  # MCT's tracer fails on some graphs: the caller records it
        first = (str(exc).splitlines() or [""])[0][:160]
        raise MCTFailed(f"MCT failed: {type(exc).__name__}: {first}") from None
    counted, bits = _weight_bits(q)
    avg = (bits * counted + 32 * (n_weights - counted)) / n_weights
    return MCTResult(model=q.eval(), avg_bits=float(avg), weights_counted=counted,
                     n_weights=n_weights, seconds=time.perf_counter() - t0,
                     info={"mct_version": getattr(mct, "__version__", "?"),
                           "activations": bool(activations)})
