"""Tiny random public checkpoints (Chameleon, Janus, Emu3) saved as transformers writes them, with a tokenizer.json,
for the interop tests. Weights are re-drawn with a wide std: the default init (0.02) makes these models emit one
repeated token, which would let a broken mapping pass a parity test."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from anygen.tokenizers.text import TextTokenizer

CORPUS = ["a red circle", "a blue square on the left", "two green triangles", "a yellow star above a cat",
          "draw 16*16 pixels", "0 1 2 3 4 5 6 7 8 9"] * 4
LM = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
          max_position_embeddings=512)


def widen(module: nn.Module, std: float, seed: int) -> None:
    """Re-draw every matrix (and embedding) of ``module`` from N(0, std); norms and biases keep their values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def codebook_from_latents(quantize: nn.Module, latents: torch.Tensor, seed: int) -> None:
    """Codebook rows drawn from real latents ``(N, D)`` (as k-means would), so that encoding uses many codes."""
    g = torch.Generator().manual_seed(seed)
    weight = quantize.embedding.weight
    with torch.no_grad():
        weight.copy_(latents[torch.randperm(len(latents), generator=g)[: weight.shape[0]]])


def text_tokenizer(added: list[str]) -> tuple[TextTokenizer, dict[str, int]]:
    """A small byte-level BPE with ``added`` special tokens after its own ids; returns it and ``token -> id``."""
    tok = TextTokenizer.train(CORPUS, vocab_size=300)
    tok.backend.add_special_tokens(added)
    return tok, tok.backend.get_vocab(with_added_tokens=True)


def images(seed: int, n: int, size: int) -> torch.Tensor:
    """Smooth random images ``(n, 3, size, size)`` in [0, 1] (low-frequency noise, upsampled)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    return nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


# ---- Chameleon -------------------------------------------------------------------------------------------------
def chameleon_token(code: int) -> str:
    return "IMGIMG" + "".join(chr(ord("A") + int(d)) for d in str(code)) + "Z"


CHAMELEON_VQ = dict(embed_dim=8, num_embeddings=32, latent_channels=8, resolution=16, base_channels=32,
                    channel_multiplier=[1, 2, 2], num_res_blocks=1, attn_resolutions=[])


def chameleon_source(directory: Path) -> Path:
    """A saved ``ChameleonForConditionalGeneration`` (16 x 16 images = 4 x 4 codes of 32) and its tokenizer."""
    from transformers import ChameleonConfig, ChameleonForConditionalGeneration

    codes = CHAMELEON_VQ["num_embeddings"]
    tok, vocab = text_tokenizer(["<pad>", "<s>", "</s>", "<racm3:break>", "<eoss>", "<image>",
                                 *[chameleon_token(c) for c in range(codes)]])
    config = ChameleonConfig(vocab_size=tok.vocab_size, vocabulary_map=vocab, vq_config=CHAMELEON_VQ,
                             bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"], pad_token_id=vocab["<pad>"], **LM)
    torch.manual_seed(0)
    model = ChameleonForConditionalGeneration(config).eval()
    widen(model.model.layers, 0.3, 1)
    widen(model.model.embed_tokens, 1.0, 2)
    widen(model.lm_head, 0.5, 3)
    vq = model.model.vqmodel
    widen(vq, 0.2, 4)
    with torch.no_grad():
        latents = vq.quant_conv(vq.encoder(images(5, 6, 16) * 2 - 1))
    codebook_from_latents(vq.quantize, latents.permute(0, 2, 3, 1).reshape(-1, 8), 6)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def chameleon_image_tokenizer(directory: Path):
    """The checkpoint's VQ encoder with a random pixel decoder (transformers' checkpoints carry none)."""
    from anygen.interop.chameleon_vqgan import ChameleonImageTokenizer, build_vqmodel, vqmodel_config

    encoder = ChameleonImageTokenizer.from_chameleon(directory).vqgan
    vqgan = build_vqmodel(vqmodel_config(CHAMELEON_VQ), with_decoder=True)
    vqgan.load_state_dict(encoder.state_dict(), strict=False)
    widen(vqgan.decoder, 0.2, 7)
    return ChameleonImageTokenizer(vqgan)


# ---- Janus -----------------------------------------------------------------------------------------------------
JANUS_TOKENS = ["<｜▁pad▁｜>", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<begin_of_image>", "<end_of_image>",
                "<image_placeholder>"]
JANUS_VQ = dict(embed_dim=8, num_embeddings=32, base_channels=32, channel_multiplier=[1, 2, 2], num_res_blocks=1,
                latent_channels=8, projection_dim=32, image_token_embed_dim=32)  # 16 x 16 images, 4 x 4 codes


def janus_source(directory: Path, with_decoder: bool = True) -> Path:
    """A saved ``JanusForConditionalGeneration`` (16 x 16 images = 4 x 4 codes of 32) and its tokenizer."""
    from transformers import JanusConfig, JanusForConditionalGeneration

    tok, vocab = text_tokenizer(JANUS_TOKENS)
    text = dict(model_type="llama", vocab_size=tok.vocab_size, bos_token_id=vocab["<｜begin▁of▁sentence｜>"],
                eos_token_id=vocab["<｜end▁of▁sentence｜>"], pad_token_id=vocab["<｜▁pad▁｜>"], **LM)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=16,
                  patch_size=4, projection_dim=32, num_image_tokens=16)  # 16 / 4 = 4 patches a side (the VQ grid)
    config = JanusConfig(text_config=text, vision_config=vision, vq_config=JANUS_VQ,
                         image_token_id=vocab["<image_placeholder>"])
    torch.manual_seed(0)
    model = JanusForConditionalGeneration(config).eval()
    widen(model.model.language_model, 0.3, 1)
    widen(model.model.language_model.embed_tokens, 1.0, 2)
    for i, part in enumerate([model.model.generation_embeddings, model.model.generation_aligner,
                              model.model.generation_head]):
        widen(part, 0.5, 3 + i)
    vq = model.model.vqmodel
    widen(vq, 0.2, 6)
    with torch.no_grad():
        latents = vq.quant_conv(vq.encoder(images(7, 6, 16) * 2 - 1))
    codebook_from_latents(vq.quantize, latents.permute(0, 2, 3, 1).reshape(-1, 8), 8)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    if not with_decoder:  # a checkpoint whose VQ-VAE lost its decoder weights
        from safetensors.torch import load_file, save_file

        path = next(directory.glob("*.safetensors"))
        save_file({k: v for k, v in load_file(path).items() if ".vqmodel.decoder." not in k}, str(path),
                  metadata={"format": "pt"})
    return directory


# ---- Emu3 ------------------------------------------------------------------------------------------------------
EMU3_TOKENS = ["<|endoftext|>", "<|extra_203|>", "<|extra_204|>", "<|image start|>", "<|image end|>",
               "<|image token|>", "<|extra_200|>", "<|extra_201|>", "<image>"]
EMU3_VQ = dict(codebook_size=32, embed_dim=4, latent_channels=4, base_channels=32, channel_multiplier=[1, 2, 2],
               num_res_blocks=1, attn_resolutions=[], hidden_size=64, num_attention_heads=1,
               temporal_downsample_factor=4)  # 16 x 16 images, 4 x 4 codes


def emu3_source(directory: Path) -> Path:
    """A saved ``Emu3ForConditionalGeneration`` (16 x 16 images = 4 x 4 codes of 32) and its tokenizer."""
    from transformers import Emu3Config, Emu3ForConditionalGeneration

    codes = EMU3_VQ["codebook_size"]
    tok, vocab = text_tokenizer([*EMU3_TOKENS, *[f"<|visual token {c:06d}|>" for c in range(codes)]])
    text = dict(vocab_size=tok.vocab_size, pad_token_id=vocab["<|endoftext|>"], bos_token_id=vocab["<|extra_203|>"],
                eos_token_id=vocab["<|extra_204|>"], **LM)
    config = Emu3Config(vocabulary_map=vocab, text_config=text, vq_config=EMU3_VQ)
    torch.manual_seed(0)
    model = Emu3ForConditionalGeneration(config).eval()
    widen(model.model.text_model.layers, 0.3, 1)
    widen(model.model.text_model.embed_tokens, 1.0, 2)
    widen(model.lm_head, 0.5, 3)
    vq = model.model.vqmodel
    widen(vq, 0.2, 4)
    with torch.no_grad():
        pixels = images(5, 6, 16) * 2 - 1
        latents = vq.quant_conv(vq.encoder(pixels[:, None].repeat(1, 4, 1, 1, 1)).permute(0, 2, 1, 3, 4))
    codebook_from_latents(vq.quantize, latents.permute(0, 2, 3, 4, 1).reshape(-1, 4), 6)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory
