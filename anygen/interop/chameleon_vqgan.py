"""Chameleon / Anole's image VQGAN (encoder *and* pixel decoder) on diffusers' ``VQModel``.

transformers' ``ChameleonVQVAE`` holds only the encoder and quantiser, so Chameleon-family models cannot draw
pixels through it. The released tokenizer is a taming-transformers VQGAN (``vqgan.ckpt``), the same architecture
as diffusers' ``VQModel``: per level ``num_res_blocks`` ResNet blocks (GroupNorm(32, eps 1e-6) + SiLU), attention
at the resolutions of ``attn_resolutions``, a stride-2 conv downsampler padded (0, 1, 0, 1), a mid block
(ResNet, attention, ResNet), ``quant_conv`` / ``post_quant_conv`` 1x1 convs, and a decoder with one more ResNet
block per level and nearest-neighbour upsampling followed by a 3x3 conv. This module builds that ``VQModel`` from
the ``vq_config`` of a transformers Chameleon checkpoint and converts weights in the taming key layout (the
layout of ``vqgan.ckpt`` and of transformers' ``model.vqmodel.*`` keys) to diffusers' names.

Weights come from safetensors only. The released ``vqgan.ckpt`` is a pickle; convert it once with
``safetensors.torch.save_file(torch.load("vqgan.ckpt", weights_only=True)["state_dict"], "vqgan.safetensors")``.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from PIL import Image
from safetensors import SafetensorError, safe_open
from torch import nn

from anygen.errors import CheckpointError, InvalidArgumentError
from anygen.image import to_pil, to_tensor
from anygen.tokenizers.weights import (
    PICKLE_SUFFIXES,
    load_state_strict,
    read_json_object,
    read_tokenizer_dir,
    write_tokenizer_dir,
)

GROUPS = 32  # GroupNorm groups of every VQGAN norm layer (fixed in Chameleon's code)
PREFIXES = ("model.vqmodel.", "vqmodel.")  # where a full Chameleon checkpoint keeps its VQ weights
TRAINING_ONLY = ("loss.",)  # discriminator / perceptual-loss weights stored in the released training checkpoint
CONVERT_HINT = ("convert it once with safetensors.torch.save_file(torch.load(path, weights_only=True)"
                "['state_dict'], 'vqgan.safetensors')")


def vqmodel_config(vq_config: Mapping[str, Any]) -> dict[str, Any]:
    """diffusers ``VQModel`` keyword arguments for a transformers ``ChameleonVQVAEConfig`` (as a dict).

    Raises :class:`CheckpointError` for the few Chameleon options ``VQModel`` cannot express.
    """
    ch = int(vq_config.get("base_channels", 128))
    mult = [int(m) for m in vq_config.get("channel_multiplier", (1, 1, 2, 2, 4))]
    if not mult or mult[0] != 1:
        raise CheckpointError(f"vq_config.channel_multiplier={mult} must start with 1 (VQModel's first level is "
                              "as wide as its input conv)")
    if any(ch * m % GROUPS for m in mult):
        raise CheckpointError(f"vq_config.base_channels={ch} times every channel_multiplier {mult} must be a "
                              f"multiple of {GROUPS} (GroupNorm groups)")
    if vq_config.get("double_latent", False):
        raise CheckpointError("vq_config.double_latent=True is a VAE, not a VQGAN; only False is supported")
    attention = vq_config.get("attn_type", "vanilla") == "vanilla"
    resolution = int(vq_config.get("resolution", 512))
    at = {int(r) for r in vq_config.get("attn_resolutions") or ()}
    attn_levels = [attention and resolution // 2 ** i in at for i in range(len(mult))]
    latent = int(vq_config.get("latent_channels", 256))
    return {
        "in_channels": int(vq_config.get("in_channels", 3)),
        "out_channels": int(vq_config.get("out_channels", 3)),
        "down_block_types": ["AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in attn_levels],
        "up_block_types": ["AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D" for a in reversed(attn_levels)],
        "block_out_channels": [ch * m for m in mult],
        "layers_per_block": int(vq_config.get("num_res_blocks", 2)),
        "latent_channels": latent,
        "num_vq_embeddings": int(vq_config.get("num_embeddings", 8192)),
        "vq_embed_dim": int(vq_config.get("embed_dim", latent)),
        "norm_num_groups": GROUPS,
        "sample_size": resolution,
        "mid_block_add_attention": attention,
    }


# ---- taming key layout -> diffusers key layout ---------------------------------------------------------------

_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
Rule = tuple[re.Pattern[str], Callable[[re.Match[str]], str]]  # a key pattern and the new name of a match


def _rules(levels: int) -> list[Rule]:
    """(pattern, new name) pairs; ``up.{i}`` is level ``i``, diffusers' ``up_blocks`` run from the lowest level."""
    up = lambda i: levels - 1 - int(i)  # noqa: E731
    rules: list[tuple[str, Callable[[re.Match[str]], str]]] = [
        (r"(encoder|decoder)\.(conv_in|conv_out)\.(\w+)", lambda m: f"{m[1]}.{m[2]}.{m[3]}"),
        (r"(encoder|decoder)\.norm_out\.(\w+)", lambda m: f"{m[1]}.conv_norm_out.{m[2]}"),
        (r"(encoder|decoder)\.mid\.block_([12])\.(\w+)\.(\w+)",
         lambda m: f"{m[1]}.mid_block.resnets.{int(m[2]) - 1}.{_RESNET[m[3]]}.{m[4]}"),
        (r"(encoder|decoder)\.mid\.attn_1\.(\w+)\.(\w+)",
         lambda m: f"{m[1]}.mid_block.attentions.0.{_ATTENTION[m[2]]}.{m[3]}"),
        (r"encoder\.down\.(\d+)\.block\.(\d+)\.(\w+)\.(\w+)",
         lambda m: f"encoder.down_blocks.{m[1]}.resnets.{m[2]}.{_RESNET[m[3]]}.{m[4]}"),
        (r"encoder\.down\.(\d+)\.attn\.(\d+)\.(\w+)\.(\w+)",
         lambda m: f"encoder.down_blocks.{m[1]}.attentions.{m[2]}.{_ATTENTION[m[3]]}.{m[4]}"),
        (r"encoder\.down\.(\d+)\.downsample\.conv\.(\w+)",
         lambda m: f"encoder.down_blocks.{m[1]}.downsamplers.0.conv.{m[2]}"),
        (r"decoder\.up\.(\d+)\.block\.(\d+)\.(\w+)\.(\w+)",
         lambda m: f"decoder.up_blocks.{up(m[1])}.resnets.{m[2]}.{_RESNET[m[3]]}.{m[4]}"),
        (r"decoder\.up\.(\d+)\.attn\.(\d+)\.(\w+)\.(\w+)",
         lambda m: f"decoder.up_blocks.{up(m[1])}.attentions.{m[2]}.{_ATTENTION[m[3]]}.{m[4]}"),
        (r"decoder\.up\.(\d+)\.upsample\.conv\.(\w+)",
         lambda m: f"decoder.up_blocks.{up(m[1])}.upsamplers.0.conv.{m[2]}"),
        (r"(quant_conv|post_quant_conv)\.(\w+)", lambda m: f"{m[1]}.{m[2]}"),
        (r"quantize\.embedding\.weight", lambda m: "quantize.embedding.weight"),
    ]
    return [(re.compile(pattern), rename) for pattern, rename in rules]


def convert_vqgan_state_dict(state: Mapping[str, torch.Tensor], levels: int,
                             source: str | Path = "state dict") -> dict[str, torch.Tensor]:
    """Taming-layout VQGAN weights -> diffusers ``VQModel`` weights.

    Args:
        state: keys as in the released ``vqgan.ckpt`` (``encoder.down.0.block.0.conv1.weight`` ...), optionally
            prefixed ``model.vqmodel.`` as in a transformers Chameleon checkpoint; ``loss.*`` keys are dropped.
        levels: ``len(channel_multiplier)``, the number of resolution levels.
        source: named in errors.

    Returns:
        diffusers keys; attention projections become ``(C, C)`` linear weights.

    Raises:
        CheckpointError: a key that no VQGAN part has (naming the key and ``source``).
    """
    rules = _rules(levels)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = _strip_prefix(key)
        if key.startswith(TRAINING_ONLY):
            continue
        new = _rename(key, rules, source)
        out[new] = value[..., 0, 0] if ".attentions." in new and value.ndim == 4 else value  # 1x1 conv -> linear
    return out


def _strip_prefix(key: str) -> str:
    for prefix in PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _rename(key: str, rules: list[Rule], source: str | Path) -> str:
    for pattern, rename in rules:
        match = pattern.fullmatch(key)
        if match:
            try:
                return rename(match)
            except KeyError:
                break
    raise CheckpointError(f"{source}: key {key!r} is not part of a taming-layout VQGAN (expected encoder.*, "
                          "decoder.*, quant_conv.*, post_quant_conv.* or quantize.embedding.weight)")


# ---- reading weights -----------------------------------------------------------------------------------------


def read_chameleon_vq(directory: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The ``vq_config`` and the taming-layout VQ weights of a local transformers checkpoint directory.

    Accepts a ``ChameleonForConditionalGeneration`` / ``ChameleonModel`` directory (config with ``vq_config``,
    weights under ``model.vqmodel.``; only those tensors are read, not the language model's) or a
    ``ChameleonVQVAE`` directory (``model_type`` ``chameleon_vqgan``). Safetensors only; never downloads.
    """
    directory = Path(directory)
    config = read_json_object(directory / "config.json")
    vq_config = config if config.get("model_type") == "chameleon_vqgan" else config.get("vq_config")
    if not isinstance(vq_config, dict):
        raise CheckpointError(f"{directory / 'config.json'} has no vq_config (model_type="
                              f"{config.get('model_type')!r}); expected a transformers Chameleon checkpoint")
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
        found = f" (only pickles {pickles})" if pickles else ""
        raise CheckpointError(f"{directory} holds no .safetensors weights{found}; save the checkpoint with "
                              "safe_serialization=True")
    wanted = (lambda k: k.startswith(PREFIXES)) if vq_config is not config else (lambda k: True)  # noqa: E731
    state: dict[str, torch.Tensor] = {}
    for path in files:
        state.update(_read_safetensors(path, wanted))
    if not state:
        raise CheckpointError(f"{directory}: no VQ weights (keys starting with {PREFIXES[0]!r}) in "
                              f"{[p.name for p in files]}")
    return vq_config, state


def read_vqgan_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a released VQGAN converted to safetensors (pickle files are refused, with the conversion)."""
    path = Path(path)
    if path.suffix in PICKLE_SUFFIXES:
        raise CheckpointError(f"{path} is a pickle file; anygen never loads pickles: {CONVERT_HINT}")
    if not path.is_file():
        raise CheckpointError(f"VQGAN weights file {path} does not exist")
    return _read_safetensors(path, lambda key: True)


def _read_safetensors(path: Path, wanted: Callable[[str], bool]) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys() if wanted(k)}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"cannot read weights {path}: {err}") from err


# ---- the tokenizer ---------------------------------------------------------------------------------------------


def build_vqmodel(config: Mapping[str, Any], with_decoder: bool = True) -> nn.Module:
    """A diffusers ``VQModel`` from :func:`vqmodel_config` output; without a decoder its pixel half is removed."""
    from diffusers import VQModel  # heavy import, only when a Chameleon tokenizer is built

    try:
        model = VQModel(**config)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"cannot build a VQModel from {dict(config)}: {err}") from err
    if not with_decoder:
        model.decoder, model.post_quant_conv = None, None
    return model.eval()


class ChameleonImageTokenizer(nn.Module):
    """Chameleon / Anole's VQGAN as an anygen image tokenizer: images <-> ``(H/16) * (W/16)`` codes of 8192.

    Args:
        vqgan: a diffusers ``VQModel`` (see :func:`build_vqmodel`); its ``decoder`` may be ``None`` (encoding
            only: :meth:`decode` then raises :class:`CheckpointError`).
        image_size: ``(H, W)`` that PIL inputs are resized to and that :meth:`decode` draws by default
            (default: the VQGAN's training resolution, 512 for Chameleon: 1024 codes).

    Build it from a checkpoint with :meth:`from_chameleon`; save / load with :meth:`save_pretrained` /
    :meth:`from_pretrained` (what ``AnyGen`` does for its tokenizers).

    Example:
        >>> tok = ChameleonImageTokenizer.from_chameleon(                                         # doctest: +SKIP
        ...     "Anole-7b-hf", vqgan_weights="vqgan.safetensors")
        >>> codes = tok.encode(images)            # (B, 1024) long codes in [0, 8192)           # doctest: +SKIP
        >>> tok.decode(codes).shape               # (B, 3, 512, 512) in [0, 1]                  # doctest: +SKIP
    """

    modality = "image"
    num_codebooks = 1
    variable_length = False

    def __init__(self, vqgan: nn.Module, image_size: Sequence[int] | None = None) -> None:
        super().__init__()
        self.vqgan = vqgan.eval()
        config = vqgan.config
        self.codebook_size = int(config.num_vq_embeddings)
        self.downsample = 2 ** (len(config.block_out_channels) - 1)
        size = image_size or (config.sample_size, config.sample_size)
        self.image_size = (int(size[0]), int(size[1]))
        self._grid(self.image_size)

    @property
    def has_decoder(self) -> bool:
        return self.vqgan.decoder is not None

    # -- construction ---------------------------------------------------------------------------------------
    @classmethod
    def from_chameleon(cls, checkpoint_dir: str | Path, vqgan_weights: str | Path | None = None,
                       image_size: Sequence[int] | None = None) -> ChameleonImageTokenizer:
        """From a local transformers Chameleon / Anole checkpoint directory, plus the released VQGAN's weights.

        Args:
            checkpoint_dir: a ``ChameleonForConditionalGeneration`` (or ``ChameleonVQVAE``) directory; its
                ``model.vqmodel.*`` tensors give the encoder, quantiser and (when present) the decoder.
            vqgan_weights: the released ``vqgan.ckpt`` converted to safetensors (taming key layout); it supplies
                the pixel decoder that transformers' checkpoints usually lack. Its codebook must equal the
                checkpoint's (else it belongs to another tokenizer). The checkpoint's own encoder is kept.
            image_size: see the class.
        """
        vq_config, state = read_chameleon_vq(checkpoint_dir)
        config = vqmodel_config(vq_config)
        levels = len(config["block_out_channels"])
        state = convert_vqgan_state_dict(state, levels, checkpoint_dir)
        if vqgan_weights is not None:
            extra = convert_vqgan_state_dict(read_vqgan_weights(vqgan_weights), levels, vqgan_weights)
            _check_same_codebook(state, extra, checkpoint_dir, vqgan_weights)
            state = {**extra, **state}
        return cls.from_state_dict(config, state, image_size, source=checkpoint_dir)

    @classmethod
    def from_state_dict(cls, config: Mapping[str, Any], state: Mapping[str, torch.Tensor],
                        image_size: Sequence[int] | None = None, source: str | Path = "state dict",
                        ) -> ChameleonImageTokenizer:
        """From :func:`vqmodel_config` output and diffusers-layout weights (decoder keys optional, all or none)."""
        with_decoder = any(k.startswith("decoder.") for k in state)
        vqgan = build_vqmodel(config, with_decoder)
        if not with_decoder:
            state = {k: v for k, v in state.items() if not k.startswith("post_quant_conv.")}
        load_state_strict(vqgan, dict(state), source)
        return cls(vqgan, image_size)

    # -- protocol -------------------------------------------------------------------------------------------
    def tokens_for(self, item_shape: Sequence[int]) -> int:
        """Codes for an ``(H, W)`` image: ``(H / 16) * (W / 16)`` for Chameleon."""
        h, w = self._grid(item_shape)
        return h * w

    @torch.no_grad()
    def latents(self, batch: Image.Image | Sequence[Image.Image | torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """Images -> the continuous latents ``(B, embed_dim, h, w)`` that :meth:`encode` quantises."""
        size = None if isinstance(batch, torch.Tensor) else self.image_size
        pixels = to_tensor(batch, size=size).to(self._device)
        self._grid(pixels.shape[-2:])
        return self.vqgan.encode(pixels * 2.0 - 1.0).latents

    @torch.no_grad()
    def encode(self, batch: Image.Image | Sequence[Image.Image | torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """Images -> ``(B, h * w)`` long codes in raster order.

        Args:
            batch: float ``(B, 3, H, W)`` in ``[0, 1]`` (``H, W`` multiples of 16), or PIL images / ``(3, H, W)``
                tensors, which are resized to :attr:`image_size`.
        """
        latents = self.latents(batch)  # (B, D, h, w)
        flat = rearrange(latents, "b d h w -> (b h w) d")
        codebook = self.vqgan.quantize.embedding.weight  # (K, D)
        distances = flat.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1) - 2 * flat @ codebook.T  # (N, K)
        return distances.argmin(1).reshape(latents.shape[0], -1)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
        """``(B, h * w)`` codes -> images ``(B, 3, H, W)`` in ``[0, 1]`` (``size`` defaults to :attr:`image_size`)."""
        if not self.has_decoder:
            raise CheckpointError("this Chameleon tokenizer has no pixel decoder weights (transformers' Chameleon "
                                  "checkpoints ship only the encoder): build it with ChameleonImageTokenizer."
                                  "from_chameleon(dir, vqgan_weights='vqgan.safetensors'), the released VQGAN "
                                  f"converted to safetensors ({CONVERT_HINT})")
        h, w = self._grid(size or self.image_size)
        if codes.ndim != 2 or codes.shape[1] != h * w or codes.is_floating_point() or codes.dtype == torch.bool:
            raise InvalidArgumentError(f"codes must be an integer tensor (B, {h * w}) for a {h}x{w} grid, got "
                                       f"{tuple(codes.shape)} {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise InvalidArgumentError(f"codes must lie in [0, {self.codebook_size}), got [{int(codes.min())}, "
                                       f"{int(codes.max())}]")
        vectors = self.vqgan.quantize.embedding(codes.long().to(self._device))  # (B, h * w, D)
        latents = rearrange(vectors, "b (h w) d -> b d h w", h=h, w=w)
        pixels = self.vqgan.decode(latents, force_not_quantize=True).sample  # (B, 3, H, W) in ~[-1, 1]
        return ((pixels + 1.0) / 2.0).clamp(0, 1)

    def decode_to_pil(self, codes: torch.Tensor, size: Sequence[int] | None = None) -> list[Image.Image]:
        """Like :meth:`decode`, returning RGB PIL images."""
        return to_pil(self.decode(codes, size))

    # -- saving ---------------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None) -> None:
        """Write ``config.json`` + ``model.safetensors`` (diffusers layout; the decoder only if this one has it)."""
        config = {"vqmodel": dict(self._vqmodel_kwargs()), "image_size": list(self.image_size),
                  "has_decoder": self.has_decoder}
        write_tokenizer_dir(directory, type(self).__name__, config, self.vqgan, dtype)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> ChameleonImageTokenizer:
        """Load a directory written by :meth:`save_pretrained` (safetensors only; strict keys and shapes)."""
        saved = read_tokenizer_dir(directory, cls.__name__)
        try:
            config, image_size, with_decoder = (saved.config["vqmodel"], saved.config["image_size"],
                                                bool(saved.config["has_decoder"]))
        except KeyError as err:
            raise CheckpointError(f"{directory}: tokenizer config lacks {err}") from err
        vqgan = build_vqmodel(config, with_decoder)
        load_state_strict(vqgan, saved.state_dict, Path(directory))
        return cls(vqgan, image_size)

    # -- helpers --------------------------------------------------------------------------------------------
    @property
    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _vqmodel_kwargs(self) -> dict[str, Any]:
        names = inspect.signature(type(self.vqgan).__init__).parameters
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.vqgan.config.items() if k in names}

    def _grid(self, size: Sequence[int]) -> tuple[int, int]:
        f = self.downsample
        if len(size) != 2 or any(int(s) < f or int(s) % f for s in size):
            raise InvalidArgumentError(f"image size {tuple(int(s) for s in size)} must be (H, W), both positive "
                                       f"multiples of {f} (the VQGAN's downsampling factor)")
        return int(size[0]) // f, int(size[1]) // f


def _check_same_codebook(state: Mapping[str, torch.Tensor], extra: Mapping[str, torch.Tensor],
                         checkpoint: str | Path, weights: str | Path) -> None:
    """The VQGAN file must hold the checkpoint's codebook: otherwise its decoder draws another tokenizer's codes."""
    key = "quantize.embedding.weight"
    if key not in extra or key not in state:
        return
    a, b = state[key].float(), extra[key].float()
    if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-2, atol=1e-3):
        raise CheckpointError(f"{weights}: its codebook ({key}, shape {tuple(b.shape)}) differs from the one in "
                              f"{checkpoint} (shape {tuple(a.shape)}): the VQGAN file belongs to another tokenizer")
