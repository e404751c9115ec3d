"""Write one benchmark's section of benchmarks/RESULTS.md between ``<!-- name:begin -->`` / ``<!-- name:end -->``."""

from __future__ import annotations

import platform
import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = "# Benchmark results\n\nEvery table is written by the script named in it; rerun the command to reproduce.\n"


def write_section(name: str, body: str, path: Path = RESULTS) -> None:
    """Replace (or append) the section ``name`` of ``path`` with ``body``; other sections are left as they are."""
    text = path.read_text() if path.exists() else HEADER
    block = f"<!-- {name}:begin -->\n{body.strip()}\n<!-- {name}:end -->"
    pattern = re.compile(rf"<!-- {re.escape(name)}:begin -->.*?<!-- {re.escape(name)}:end -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def publish(name: str, lines: list[str], write: bool = True) -> None:
    """Print a benchmark's section (``lines``, one per table row) and, with ``write``, store it as ``name``."""
    body = "\n".join(lines)
    print(body)
    if write:
        write_section(name, body)


def _cpuinfo(field: str) -> str | None:
    """The first ``field`` of ``/proc/cpuinfo`` (Linux), or None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    """The CPU's model name, for timing tables: the same script runs several times faster or slower on another CPU,
    so a figure is only comparable with one taken on the same model."""
    return _cpuinfo("model name") or platform.processor() or platform.machine() or "CPU"


def cpu_vendor() -> str:
    """``intel``, ``amd`` or the machine's architecture: tables whose winner depends on the CPU maker (e.g. MKL's
    kernels) keep one section per maker."""
    vendor = _cpuinfo("vendor_id")
    if vendor is None:
        return platform.machine().lower() or "cpu"
    return {"GenuineIntel": "intel", "AuthenticAMD": "amd"}.get(vendor, vendor.lower())
