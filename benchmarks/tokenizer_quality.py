"""Measure the trained tokenizers and write the ``tokenizers`` and ``audio-codecs`` sections of benchmarks/RESULTS.md.

Image tokenizer: PSNR / SSIM on held-out shape scenes (ShapesEval's test prompts, rendered) and on held-out photo
crops (``coffee``, ``flower``: never used for training), codebook usage and perplexity, and the ShapesEval pass rate
of the reconstructions against the originals'. Audio codecs (``--audio DIR [DIR ...]``, one column each): log-mel
distance on held-out speech (held-out voices) and melodies / chords (held-out timbre included), keyword, melody
and chord recognition of the reconstructions against the originals', codebook usage, tokens per second.
``--front-ends``: the same judges on Griffin-Lim inversions of the exact (unquantised) spectrogram front ends a
codec can use (linear STFT bins, 80 / 128 / 256 mel bands). Optional waveform codec (``--waveform DIR``): SI-SNR
and log-mel distance on the same held-out clips, keyword and melody recognition of its reconstructions, codebook
usage, tokens per second. All: encode / decode throughput on the CPU threads given. ``--parts`` picks the image
and / or audio sections (each is written on its own).

    python benchmarks/tokenizer_quality.py --parts audio --front-ends --threads 2 \
        --audio pkg://anygen-tiny/tokenizers/audio runs/tokenizers/audio-v5/final \
        [--waveform runs/tokenizers/audio-waveform-final]
"""

from __future__ import annotations

import argparse
import functools
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import write_section

from anygen.assets import resolve_path
from anygen.audio import log_mel
from anygen.tokenizers import AudioCodec, ImageVQ, WaveformCodec
from anygen.tokenizers.audio import AudioCodecConfig
from anygen.tokenizers.quantizer import codebook_usage
from anygen.training.sources import image_batch
from anygen.training.tokenizer_tasks import EVAL_SEED, mean_codebook_usage, psnr, si_snr


@dataclass
class Row:
    """One line of the results table."""

    metric: str
    value: str
    note: str = ""


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean SSIM of two ``(B, 3, H, W)`` batches in ``[0, 1]`` (scikit-image, per image)."""
    from skimage.metrics import structural_similarity

    x, y = a.clamp(0, 1).permute(0, 2, 3, 1).numpy(), b.clamp(0, 1).permute(0, 2, 3, 1).numpy()
    return float(np.mean([structural_similarity(i, j, channel_axis=2, data_range=1.0) for i, j in zip(x, y)]))


def timed(fn, repeats: int = 3) -> float:
    """Best wall time of ``repeats`` calls (seconds)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def edit_locality(model: ImageVQ, per_op: int = 20) -> tuple[float, int, int]:
    """Share of codes an edit leaves alone where it leaves the pixels alone: held-out (test) edits, each source and
    target encoded; over the grid cells whose pixel block is identical in both, the fraction with the same code.
    1.0 for codes that depend only on their own block; an edit of a picture is then a copy of most of its codes."""
    from anygen.data.edits import EDIT_OPS, sample_edit
    from anygen.data.scenes import render_scene
    from anygen.image import to_tensor

    size, f = tuple(model.config.image_size), model.config.downsample
    edits = [sample_edit(np.random.default_rng([EVAL_SEED, i]), op, "test") for op in EDIT_OPS for i in range(per_op)]
    source = to_tensor([render_scene(e.source, size[0]) for e in edits])
    target = to_tensor([render_scene(e.target, size[0]) for e in edits])
    same_codes = (model.encode(source) == model.encode(target)).view(len(edits), size[0] // f, size[1] // f)
    same_block = ((source - target).abs().amax(1) == 0).unflatten(1, (size[0] // f, f)).unflatten(3, (size[1] // f, f))
    still = same_block.all(4).all(2)  # (B, H/f, W/f): cells whose pixels the edit did not touch
    return float(same_codes[still].float().mean()), int(still.sum()), len(edits)


def image_rows(model: ImageVQ, n_per_category: int, n_photos: int) -> list[Row]:
    from anygen.data.scenes import render_scene
    from anygen.evaluation.shapes import ShapesEval
    from anygen.image import to_pil, to_tensor

    size = tuple(model.config.image_size)
    suite = ShapesEval(n_per_category=n_per_category, seed=1, split="test")
    scenes = to_tensor([render_scene(s.scene, size[0]) for s in suite.samples])
    photos = torch.cat([image_batch({"photos": 1.0}, 32, size, EVAL_SEED, i, "eval")
                        for i in range(-(-n_photos // 32))])[:n_photos]
    scene_codes, photo_codes = model.encode(scenes), model.encode(photos)
    scene_rec, photo_rec = model.decode(scene_codes, size), model.decode(photo_codes, size)
    original_pass = suite.score(to_pil(scenes)).overall
    recon_pass = suite.score(to_pil(scene_rec)).overall
    used, perplexity = codebook_usage(torch.cat([scene_codes.flatten(), photo_codes.flatten()]), model.codebook_size)
    kept, cells, n_edits = edit_locality(model)
    batch = photos[:32]
    encode_s = timed(lambda: model.encode(batch))
    decode_s = timed(lambda: model.decode(model.encode(batch), size))
    params = sum(p.numel() for p in model.parameters())
    return [
        Row("tokens per image", f"{model.tokens_for(size)}",
            f"{size[0]}x{size[1]} px, codebook {model.codebook_size}"),
        Row("parameters", f"{params / 1e6:.2f} M ({2 * params / 1e6:.1f} MB in fp16)", ""),
        Row("PSNR, held-out shape scenes", f"{psnr(scene_rec, scenes):.2f} dB",
            f"{len(scenes)} ShapesEval test scenes"),
        Row("SSIM, held-out shape scenes", f"{ssim(scene_rec, scenes):.4f}", ""),
        Row("PSNR, held-out photo crops", f"{psnr(photo_rec, photos):.2f} dB",
            f"{len(photos)} crops of coffee / flower"),
        Row("SSIM, held-out photo crops", f"{ssim(photo_rec, photos):.4f}", ""),
        Row("codebook usage", f"{100 * used:.1f} % (perplexity {perplexity:.0f})", f"of {model.codebook_size} codes"),
        Row("codes kept where an edit keeps the pixels", f"{100 * kept:.1f} %",
            f"{cells} untouched cells of {n_edits} held-out one-object edits"),
        Row("ShapesEval pass, originals", f"{original_pass:.3f}", ""),
        Row("ShapesEval pass, reconstructions",
            f"{recon_pass:.3f} ({100 * recon_pass / max(original_pass, 1e-9):.1f} % of the originals' rate)",
            "target >= 95 % of the originals' rate"),
        Row("image encode throughput", f"{32 / encode_s:.0f} images/s", "batch 32"),
        Row("image encode + decode throughput", f"{32 / decode_s:.0f} images/s", "batch 32"),
    ]


def mel_l1(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Mean |log-mel difference| (natural-log units) over the common frames."""
    a, b = log_mel(reference), log_mel(other)
    frames = min(a.shape[-1], b.shape[-1])
    return float((a[..., :frames] - b[..., :frames]).abs().mean())


@functools.lru_cache(maxsize=1)
def held_out_audio(n_per_word: int, n_music: int) -> tuple[list, list]:
    """Held-out speech (test voices) and melodies / chords (test timbres): the same clips for every audio table."""
    from anygen.data.melody import sample_chord, sample_melody
    from anygen.evaluation.speech import speech_samples

    speech = speech_samples(n_per_word=n_per_word, seed=0, split="test")
    rng = np.random.default_rng([EVAL_SEED, 5])
    music = [sample_melody(rng, "test") if i % 3 else sample_chord(rng, "test") for i in range(n_music)]
    return speech, music


def round_trip(codec: AudioCodec | WaveformCodec, wave: torch.Tensor) -> torch.Tensor:
    """Encode and decode one clip, cut back to its length."""
    return codec.decode(codec.encode([wave]))[0][: wave.shape[-1]]


def recognition_rows(speech: list, music: list, speech_rec: list[torch.Tensor],
                     music_rec: list[torch.Tensor]) -> list[Row]:
    """Keyword accuracy and melody / chord recognition of the originals and of their reconstructions."""
    from anygen.evaluation.melody import score_music_audio
    from anygen.evaluation.speech import default_classifier

    classifier, truth = default_classifier(), [s.text for s in speech]
    kw_orig = np.mean([h == t for h, t in zip(classifier.predict([s.waveform for s in speech]), truth)])
    kw_rec = np.mean([h == t for h, t in zip(classifier.predict(speech_rec), truth)])
    orig = [score_music_audio(m.waveform, 16000, m)["passed"] for m in music]
    rec = [score_music_audio(r, 16000, m)["passed"] for r, m in zip(music_rec, music)]

    def rate(passed, kind):
        return float(np.mean([p for p, m in zip(passed, music) if kind in (m.kind, "all")]))

    kinds = {kind: sum(m.kind == kind for m in music) for kind in ("melody", "chord")}
    rows = [Row("keyword accuracy, originals", f"{kw_orig:.3f}", "anygen.evaluation.speech.KeywordClassifier"),
            Row("keyword accuracy, reconstructions", f"{kw_rec:.3f} ({100 * kw_rec / max(kw_orig, 1e-9):.1f} %)",
                "(% of the originals' rate; target >= 95 %)")]
    for kind, label in (("all", "melody / chord"), ("melody", "melody"), ("chord", "chord")):
        note = "anygen.evaluation.melody" if kind == "all" else f"{kinds[kind]} of the clips"
        a, b = rate(orig, kind), rate(rec, kind)
        rows += [Row(f"{label} recognition, originals", f"{a:.3f}", note),
                 Row(f"{label} recognition, reconstructions", f"{b:.3f} ({100 * b / max(a, 1e-9):.1f} %)",
                     "(% of the originals' rate; target >= 95 %)" if kind == "all" else "")]
    return rows


def throughput(codec: AudioCodec | WaveformCodec, speech: list) -> tuple[float, float]:
    """Seconds of audio encoded, and encoded + decoded, per second of wall time on one 10 s clip."""
    clip = torch.cat([s.waveform for s in speech])[: 10 * 16000]
    seconds = clip.shape[0] / 16000
    encode_s = timed(lambda: codec.encode([clip]), 2)
    round_trip_s = timed(lambda: codec.decode(codec.encode([clip])), 2)
    return seconds / encode_s, seconds / round_trip_s


def audio_rows(codec: AudioCodec, n_per_word: int, n_music: int) -> list[Row]:
    speech, music = held_out_audio(n_per_word, n_music)
    speech_rec = [round_trip(codec, s.waveform) for s in speech]
    music_rec = [round_trip(codec, m.waveform) for m in music]
    gl_only = [codec.features_to_waveform(codec.features(s.waveform[None]))[0][: s.waveform.shape[-1]] for s in speech]
    codes = [codec.encode([w]) for w in [s.waveform for s in speech] + [m.waveform for m in music]]
    used, perplexity = codebook_usage(torch.cat([c.flatten() for c in codes]), codec.codebook_size)
    encode_rate, round_trip_rate = throughput(codec, speech)
    params = sum(p.numel() for p in codec.parameters())
    config = codec.config
    front_end = f"{config.bins} linear bins" if config.features == "linear" else f"{config.n_mels} mel bands"
    return [
        Row("tokens per second of audio", f"{codec.tokens_for(16000)}",
            f"({config.frame_rate:.0f} frames/s x {codec.num_codebooks} codebook(s) of {codec.codebook_size})"),
        Row("front end", front_end, "log power, 100 frames/s"),
        Row("parameters", f"{params / 1e6:.2f} M ({2 * params / 1e6:.1f} MB in fp16)", ""),
        Row("log-mel L1, held-out speech",
            f"{np.mean([mel_l1(s.waveform, r) for s, r in zip(speech, speech_rec)]):.3f}",
            f"{len(speech)} clips, held-out voices; natural-log units, after Griffin-Lim"),
        Row("log-mel L1, Griffin-Lim of the true spectrogram",
            f"{np.mean([mel_l1(s.waveform, g) for s, g in zip(speech, gl_only)]):.3f}",
            "the floor set by phase reconstruction alone"),
        Row("log-mel L1, held-out melodies / chords",
            f"{np.mean([mel_l1(m.waveform, r) for m, r in zip(music, music_rec)]):.3f}",
            f"{len(music)} clips, test timbres"),
        Row("codebook usage (speech + music)", f"{100 * used:.1f} % (perplexity {perplexity:.0f})",
            "codes of all held-out clips above; target >= 80 %"),
        *recognition_rows(speech, music, speech_rec, music_rec),
        Row("audio encode throughput", f"{encode_rate:.0f} s of audio / s", "one 10 s clip"),
        Row("audio encode + decode throughput", f"{round_trip_rate:.1f} s of audio / s",
            f"one 10 s clip; Griffin-Lim {config.griffin_lim_iters} iterations"),
    ]


FRONT_ENDS = {"linear STFT (513 bins)": AudioCodecConfig(features="linear", channels=8),
              **{f"mel ({n} bands)": AudioCodecConfig(features="mel", n_mels=n, channels=8) for n in (80, 128, 256)}}


def front_end_rows(n_per_word: int, n_music: int) -> list[Row]:
    """Judges on Griffin-Lim inversions of each exact front end: what a perfect codec on it could keep at best."""
    from anygen.evaluation.melody import score_music_audio
    from anygen.evaluation.speech import default_classifier

    speech, music = held_out_audio(n_per_word, n_music)
    truth = [s.text for s in speech]
    rows = []
    for name, config in FRONT_ENDS.items():
        codec = AudioCodec(config).eval()

        def invert(w):
            return codec.features_to_waveform(codec.features(w[None]))[0][: w.shape[-1]]

        keywords = np.mean([h == t for h, t in zip(default_classifier().predict([invert(s.waveform) for s in speech]),
                                                   truth)])
        passed = [score_music_audio(invert(m.waveform), 16000, m)["passed"] for m in music]
        melody = np.mean([p for p, m in zip(passed, music) if m.kind == "melody"])
        chord = np.mean([p for p, m in zip(passed, music) if m.kind == "chord"])
        rows.append(Row(name, f"{keywords:.3f}", f"{melody:.3f} | {chord:.3f}"))
    return rows


def waveform_rows(codec: WaveformCodec, n_per_word: int, n_music: int) -> list[Row]:
    speech, music = held_out_audio(n_per_word, n_music)
    speech_rec = [round_trip(codec, s.waveform) for s in speech]
    music_rec = [round_trip(codec, m.waveform) for m in music]

    def snr(clips, recs):
        return np.mean([float(si_snr(r[None], c.waveform[None])[0]) for c, r in zip(clips, recs)])

    codes = [codec.encode([w]).reshape(-1, codec.num_codebooks) for w in [c.waveform for c in speech + music]]
    used, perplexity = mean_codebook_usage(torch.cat(codes), codec.codebook_size)
    encode_rate, round_trip_rate = throughput(codec, speech)
    params = sum(p.numel() for p in codec.parameters())
    return [
        Row("tokens per second of audio", f"{codec.tokens_for(16000)}",
            f"{codec.config.frame_rate:.0f} frames/s x {codec.num_codebooks} codebook(s) of {codec.codebook_size}"),
        Row("parameters", f"{params / 1e6:.2f} M ({2 * params / 1e6:.1f} MB in fp16)", ""),
        Row("SI-SNR, held-out speech", f"{snr(speech, speech_rec):.2f} dB", f"{len(speech)} clips, held-out voices"),
        Row("SI-SNR, held-out melodies / chords", f"{snr(music, music_rec):.2f} dB",
            f"{len(music)} clips, test timbres"),
        Row("log-mel L1, held-out speech",
            f"{np.mean([mel_l1(s.waveform, r) for s, r in zip(speech, speech_rec)]):.3f}",
            "natural-log units, as in the audio codec's table"),
        Row("log-mel L1, held-out melodies / chords",
            f"{np.mean([mel_l1(m.waveform, r) for m, r in zip(music, music_rec)]):.3f}",
            ""),
        Row("codebook usage (speech + music)", f"{100 * used:.1f} %",
            f"mean over the {codec.num_codebooks} codebooks; perplexity {perplexity:.0f} of {codec.codebook_size}"),
        *recognition_rows(speech, music, speech_rec, music_rec),
        Row("audio encode throughput", f"{encode_rate:.0f} s of audio / s", "one 10 s clip"),
        Row("audio encode + decode throughput", f"{round_trip_rate:.1f} s of audio / s", "one 10 s clip, one pass"),
    ]


def render(rows: list[Row], title: str) -> str:
    lines = [f"### {title}", "", "| metric | value | note |", "|---|---|---|"]
    lines += [f"| {r.metric} | {r.value} | {r.note} |" for r in rows]
    return "\n".join(lines)


def render_columns(tables: list[list[Row]], names: list[str], title: str) -> str:
    """One table with a value column per measured model (rows matched by position; notes from the first)."""
    lines = [f"#### {title}", "", "| metric | " + " | ".join(f"`{n}`" for n in names) + " | note |",
             "|---|" + "---|" * len(names) + "---|"]
    for rows in zip(*tables):
        lines.append(f"| {rows[0].metric} | " + " | ".join(r.value for r in rows) + f" | {rows[0].note} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=("image", "audio"), default=["image", "audio"])
    parser.add_argument("--image", nargs="+", default=["pkg://anygen-tiny/tokenizers/image"],
                        help="one or more ImageVQ directories, measured side by side (pkg:// names one shipped "
                             "inside the package)")
    parser.add_argument("--audio", nargs="+", default=["pkg://anygen-tiny/tokenizers/audio"],
                        help="one or more AudioCodec directories, measured side by side")
    parser.add_argument("--front-ends", action="store_true", help="also judge Griffin-Lim of the exact front ends")
    parser.add_argument("--waveform", default=None, help="also measure a WaveformCodec saved in this directory")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scenes-per-category", type=int, default=20)
    parser.add_argument("--photos", type=int, default=128, help="held-out photo crops")
    parser.add_argument("--words", type=int, default=4, help="held-out clips per keyword")
    parser.add_argument("--music", type=int, default=60)
    parser.add_argument("--no-write", action="store_true", help="print the sections without writing RESULTS.md")
    args = parser.parse_args(argv)
    if args.photos < 1:
        parser.error(f"--photos={args.photos} must be >= 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    command = "python benchmarks/tokenizer_quality.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    header = f"Command: `{command.strip()}` (CPU, {args.threads} threads, torch {torch.__version__})."
    # No global inference_mode: the keyword classifier is fitted with autograd; the tokenizers run under no_grad.
    if "image" in args.parts:
        tables = [image_rows(ImageVQ.from_pretrained(resolve_path(d)), args.scenes_per_category, args.photos)
                  for d in args.image]
        body = "\n".join(["## Tokenizers", "", header, "", render_columns(tables, args.image, "Image tokenizers")])
        _publish("tokenizers", body, args.no_write)
    if "audio" in args.parts:
        tables = [audio_rows(AudioCodec.from_pretrained(resolve_path(d)), args.words, args.music) for d in args.audio]
        sections = ["### Audio codecs", "", header, "", render_columns(tables, args.audio, "Spectrogram codecs")]
        if args.front_ends:
            sections += ["", "#### Front ends: Griffin-Lim of the exact spectrogram (no codec)", "",
                         "| front end | keyword accuracy | melody recognition | chord recognition |",
                         "|---|---|---|---|"]
            sections += [f"| {r.metric} | {r.value} | {r.note} |" for r in front_end_rows(args.words, args.music)]
        if args.waveform:
            sections += ["", render(waveform_rows(WaveformCodec.from_pretrained(resolve_path(args.waveform)),
                                                  args.words, args.music),
                                    f"Waveform codec (`{args.waveform}`)")]
        _publish("audio-codecs", "\n".join(sections), args.no_write)
    return 0


def _publish(name: str, body: str, no_write: bool) -> None:
    print(body + "\n")
    if not no_write:
        write_section(name, body)


if __name__ == "__main__":
    raise SystemExit(main())
