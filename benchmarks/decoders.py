"""Compare a learned image decoder (diffusion or upscale) with the image tokenizer's own (VQ) decoder; write the
``decoders`` section of benchmarks/RESULTS.md (``decoders-upscale`` for an upscale decoder).

Both decoders render the tokenizer's codes of held-out images: ShapesEval's test scenes and crops of the held-out
photos (``coffee``, ``flower``: never used to train the tokenizer or the decoder), drawn at the diffusion decoder's
size. A decoder that renders larger than the tokenizer (``upscale`` 4: 256x256 px from the codes of a 64x64 image)
is compared with the VQ decoder's output upsampled bicubically to that size; the codes are those of the originals
area-downsampled to the tokenizer's size. Reported: PSNR / SSIM to the originals, the ShapesEval pass rate of the
renderings, and the time to render one image at 10 / 20 / 50 DDIM steps on the CPU threads given. The diffusion
decoder is measured at one step (its direct estimate, closest to the original) and at each of ``--steps`` (sharper,
a sample of the details the codes leave open); an upscale decoder renders in one deterministic pass.

    python benchmarks/decoders.py --decoder pkg://anygen-tiny/decoders/image \
        --tokenizer pkg://anygen-tiny/tokenizers/image --threads 2
    python benchmarks/decoders.py --decoder pkg://anygen-tiny/decoders/image-upscale --threads 2

``pkg://`` names a folder shipped inside the package (the same from every working directory).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import cpu_name, write_section
from tokenizer_quality import Row, render, ssim, timed

from anygen.assets import resolve_path
from anygen.decoders import DiffusionDecoder, UpscaleDecoder, VQDecoder, load_decoder
from anygen.tokenizers import ImageVQ
from anygen.training.sources import image_batch
from anygen.training.tokenizer_tasks import EVAL_SEED, psnr

TIMED_STEPS = (10, 20, 50)


def held_out(size: tuple[int, int], n_per_category: int, n_photos: int) -> tuple[torch.Tensor, torch.Tensor, object]:
    """ShapesEval test scenes ``(S, 3, H, W)``, held-out photo crops ``(P, 3, H, W)`` and the ShapesEval suite."""
    from anygen.data.scenes import render_scene
    from anygen.evaluation.shapes import ShapesEval
    from anygen.image import to_tensor

    suite = ShapesEval(n_per_category=n_per_category, seed=1, split="test")
    scenes = to_tensor([render_scene(s.scene, size[0]) for s in suite.samples])
    photos = torch.cat([image_batch({"photos": 1.0}, 32, size, EVAL_SEED, i, "eval") for i in range(n_photos // 32)])
    return scenes, photos, suite


def render_batched(decode, codes: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """``decode`` applied to ``codes`` in chunks of ``batch`` rows."""
    return torch.cat([decode(chunk) for chunk in codes.split(batch)])


def rows(decoder: DiffusionDecoder | UpscaleDecoder, tokenizer: ImageVQ, n_per_category: int, n_photos: int,
         steps: list[int], guidance_scale: float) -> list[Row]:
    from anygen.image import to_pil

    size = decoder.image_size
    scenes, photos, suite = held_out(size, n_per_category, n_photos)
    vq = VQDecoder(tokenizer)
    upscaled = decoder.config.upscale > 1
    diffusion = isinstance(decoder, DiffusionDecoder)

    def sampled(n: int):
        return lambda c: decoder.decode(c, num_inference_steps=n, guidance_scale=guidance_scale,
                                        generator=torch.Generator().manual_seed(0))

    counts = sorted({1, *steps}) if diffusion else []
    label = f"VQ{' (bicubic)' if upscaled else ''} / " + (" / ".join(
        f"diffusion {n} step{'s' if n > 1 else ''}" for n in counts) if diffusion else "upscale")
    out: list[Row] = []
    for name, images in (("held-out shape scenes", scenes), ("held-out photo crops", photos)):
        codes = decoder.encode(images)
        renders = [render_batched(sampled(n), codes) for n in counts] if diffusion else [
            render_batched(decoder.decode, codes)]
        rendered = [decoder.reconstruction(codes), *renders]
        note = f"{len(images)} images" + (f"; DDIM, guidance {guidance_scale}" if diffusion else "")
        out += [Row(f"PSNR (dB), {name}: {label}", " / ".join(f"{psnr(r, images):.2f}" for r in rendered), note),
                Row(f"SSIM, {name}: {label}", " / ".join(f"{ssim(r, images):.4f}" for r in rendered), "")]
        if images is scenes:
            passes = [suite.score(to_pil(x)).overall for x in (images, *rendered)]
            out.append(Row(f"ShapesEval pass: originals / {label}", " / ".join(f"{p:.3f}" for p in passes),
                           "read rate of the decoded test scenes"))
    one = decoder.encode(photos[:1])
    out.append(Row("time per image, VQ decoder", f"{1000 * timed(lambda: vq.decode(one)):.1f} ms", "batch 1"))
    if diffusion:
        for n in TIMED_STEPS:
            seconds = timed(lambda n=n: decoder.decode(one, num_inference_steps=n))
            out.append(Row(f"time per image, diffusion {n} steps", f"{seconds:.2f} s", "batch 1, DDIM, guidance 1"))
    else:
        out.append(Row("time per image, upscale decoder", f"{1000 * timed(lambda: decoder.decode(one)):.1f} ms",
                       "batch 1"))
    params = sum(p.numel() for p in decoder.parameters()) - sum(p.numel() for p in decoder.tokenizer.parameters())
    shape = (f"patch {decoder.config.patch_size}, prediction {decoder.config.prediction_type}" if diffusion else
             f"{decoder.config.blocks} residual blocks of {decoder.config.channels} channels")
    out.append(Row(f"{'diffusion' if diffusion else 'upscale'} decoder parameters", f"{params / 1e6:.2f} M",
                   f"without its frozen tokenizer copy; {size[0]}x{size[1]} px from "
                   f"{decoder.codes_size[0]}x{decoder.codes_size[1]} px codes, {shape}"))
    return out


def check_same_tokenizer(decoder: DiffusionDecoder | UpscaleDecoder, tokenizer: ImageVQ) -> None:
    """The decoder was trained on its own copy of the tokenizer; comparing against another one means nothing."""
    own = decoder.tokenizer.state_dict()
    other = tokenizer.state_dict()
    same = own.keys() == other.keys() and all(own[k].shape == other[k].shape and
                                              torch.allclose(own[k].float(), other[k].float(), atol=1e-3)
                                              for k in own)
    if not same:
        raise SystemExit("--tokenizer differs from the tokenizer the decoder was trained with")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decoder", default="pkg://anygen-tiny/decoders/image")
    parser.add_argument("--tokenizer", default="pkg://anygen-tiny/tokenizers/image")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, nargs="+", default=[20],
                        help="DDIM step counts of the quality columns of a diffusion decoder (1 step is always "
                             "measured)")
    parser.add_argument("--guidance-scale", type=float, default=1.0)
    parser.add_argument("--scenes-per-category", type=int, default=20)
    parser.add_argument("--photos", type=int, default=128)
    parser.add_argument("--no-write", action="store_true", help="print the section without writing RESULTS.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python benchmarks/decoders.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    decoder = load_decoder(resolve_path(args.decoder))
    tokenizer = ImageVQ.from_pretrained(resolve_path(args.tokenizer))
    check_same_tokenizer(decoder, tokenizer)
    kind = "Diffusion" if isinstance(decoder, DiffusionDecoder) else "Upscale"
    header = f"Command: `{command.strip()}` ({cpu_name()}, {args.threads} threads, torch {torch.__version__})."
    table = render(rows(decoder, tokenizer, args.scenes_per_category, args.photos, args.steps, args.guidance_scale),
                   f"{kind} decoder (`{args.decoder}`) vs the tokenizer's VQ decoder (`{args.tokenizer}`)")
    title = "## Decoders" if kind == "Diffusion" else "## Upscale decoder"
    body = "\n".join([title, "", header, "", table])
    print(body)
    if not args.no_write:
        write_section("decoders" if kind == "Diffusion" else "decoders-upscale", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
