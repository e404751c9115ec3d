"""A stand-in for ``espeak-ng -v VOICE -s RATE -p PITCH --stdout TEXT`` over a bundled libespeak-ng.

Used by :mod:`anygen.data.speech` when no ``espeak-ng`` program is installed but the ``espeakng-loader`` package
(``pip install 'anygen[speech]'``) ships the library and its voice data. It runs as its own short-lived process,
one clip per process, exactly like the espeak-ng program: the library keeps waveform state between utterances, so
a second clip in the same process would not be bit-identical to the first one, and the library is never linked
into the caller. Standard library only, so it starts with ``python -S -I`` (no site-packages, no torch).

Usage: ``python -S -I espeak_bundled.py LIBRARY DATA_DIR -v VOICE -s RATE -p PITCH --stdout TEXT``; writes a
16-bit mono WAV to stdout at the library's rate (22050 Hz), exits 1 with a message on stderr on failure.
"""

from __future__ import annotations

import ctypes
import io
import sys
import wave

AUDIO_OUTPUT_SYNCHRONOUS = 2
ESPEAK_RATE, ESPEAK_PITCH = 1, 3
POS_CHARACTER = 1
SYNTH_FLAGS = 0x0000 | 0x0100 | 0x1000  # espeakCHARS_AUTO | espeakPHONEMES | espeakENDPAUSE, as the program


class VoiceSelector(ctypes.Structure):
    """``espeak_VOICE``: selects a voice by language (e.g. "en-gb") when no voice file has that name."""

    _fields_ = [("name", ctypes.c_char_p), ("languages", ctypes.c_char_p), ("identifier", ctypes.c_char_p),
                ("gender", ctypes.c_ubyte), ("age", ctypes.c_ubyte), ("variant", ctypes.c_ubyte),
                ("xx1", ctypes.c_ubyte), ("score", ctypes.c_int), ("spare", ctypes.c_void_p)]


CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


def synthesize(library: str, data_dir: str, voice: str, rate: int, pitch: int, text: str) -> tuple[bytes, int]:
    """Speak ``text``; returns ``(int16 little-endian samples, sample rate)``."""
    lib = ctypes.CDLL(library)
    sample_rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data_dir.encode(), 0)
    if sample_rate <= 0:
        raise RuntimeError(f"libespeak-ng could not read its data in {data_dir}")
    chunks: list[bytes] = []

    def collect(samples: ctypes.POINTER(ctypes.c_short), count: int, _events: ctypes.c_void_p) -> int:
        if samples and count > 0:
            chunks.append(ctypes.string_at(samples, 2 * count))
        return 0  # 0 = go on synthesizing

    callback = CALLBACK(collect)  # kept alive until synthesis ends
    lib.espeak_SetSynthCallback(callback)
    _set_voice(lib, voice)
    lib.espeak_SetParameter(ESPEAK_RATE, rate, 0)
    lib.espeak_SetParameter(ESPEAK_PITCH, pitch, 0)
    encoded = text.encode()
    if lib.espeak_Synth(ctypes.c_char_p(encoded), ctypes.c_size_t(len(encoded) + 1), 0, POS_CHARACTER, 0,
                        SYNTH_FLAGS, None, None) != 0:
        raise RuntimeError(f"libespeak-ng failed to speak {text!r}")
    lib.espeak_Synchronize()
    return b"".join(chunks), sample_rate


def _set_voice(lib: ctypes.CDLL, voice: str) -> None:
    """As the program does: a voice file of that name, else a voice of that language ("en-gb+f3")."""
    if lib.espeak_SetVoiceByName(voice.encode()) == 0:
        return
    selector = VoiceSelector(languages=voice.encode())
    if lib.espeak_SetVoiceByProperties(ctypes.byref(selector)) != 0:
        raise RuntimeError(f"unknown voice {voice!r}")


def _wav(samples: bytes, sample_rate: int) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(samples)
    return buffer.getvalue()


def main(argv: list[str]) -> int:
    library, data_dir, *options = argv
    flags = dict(zip(options[:-2:2], options[1:-2:2]))  # -v VOICE -s RATE -p PITCH, then --stdout TEXT
    if options[-2:-1] != ["--stdout"] or set(flags) != {"-v", "-s", "-p"}:
        print("usage: espeak_bundled.py LIBRARY DATA_DIR -v VOICE -s RATE -p PITCH --stdout TEXT", file=sys.stderr)
        return 2
    try:
        samples, rate = synthesize(library, data_dir, flags["-v"], int(flags["-s"]), int(flags["-p"]), options[-1])
    except (OSError, RuntimeError, ValueError) as err:
        print(f"espeak_bundled: {err}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(_wav(samples, rate))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
