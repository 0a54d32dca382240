"""What the benchmarks share: finding go and granary, a clean go
environment, and a small SVG bar chart (no plotting library needed)."""

import os
import shutil
import subprocess
import sys
from html import escape
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def find_go():
    """go from PATH, else from the repository's virtualenv."""
    go = shutil.which("go") or str(ROOT / ".venv" / "bin" / "go")
    if not os.access(go, os.X_OK):
        sys.exit("go not found: run `bash scripts/setup.sh` (installs Go into .venv) or put go on PATH")
    return go


def build_granary():
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "granary"], cwd=ROOT, check=True)
    return str(ROOT / "target" / "release" / "granary")


def go_env(cache, work):
    """An environment in which go uses `cache` and nothing from the user."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GO", "GRANARY_"))}
    env.update(
        GOCACHE=str(cache),
        GOENV="off",
        GOFLAGS="",
        GOTOOLCHAIN="local",
        GOPROXY="off",
        GOPATH=str(Path(work) / "gopath"),
        PATH=f"{Path(find_go()).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


def write_bar_chart(path, title, groups):
    """groups: [(label, {series: value})]. Draws grouped horizontal bars with
    a line at 1.0 (native)."""
    series = sorted({s for _, values in groups for s in values})
    colors = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759"]
    top = max([v for _, values in groups for v in values.values()] + [1.0]) * 1.1
    bar, gap, left, width = 18, 14, 110, 460
    height = 40 + len(groups) * (len(series) * bar + gap) + 40
    scale = width / top
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 80}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        f'<text x="10" y="20" font-size="14">{escape(title)}</text>',
    ]
    y = 40
    for label, values in groups:
        out.append(f'<text x="10" y="{y + bar}">{escape(label)}</text>')
        for i, s in enumerate(series):
            v = values.get(s, 0)
            out.append(
                f'<rect x="{left}" y="{y}" width="{v * scale:.1f}" height="{bar - 3}" '
                f'fill="{colors[i % len(colors)]}"/>'
            )
            out.append(f'<text x="{left + v * scale + 4:.1f}" y="{y + bar - 6}">{s} {v:.3f}x</text>')
            y += bar
        y += gap
    x1 = left + scale
    out.append(f'<line x1="{x1:.1f}" y1="32" x2="{x1:.1f}" y2="{y}" stroke="#333" stroke-dasharray="4 3"/>')
    out.append(f'<text x="{x1 + 3:.1f}" y="{y + 14}">native = 1.0</text>')
    out.append("</svg>")
    Path(path).write_text("\n".join(out) + "\n")
