"""Where the in-process benchmarks put their results: results/<stem>.json and <stem>.png."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def save_results(
    stem: str, results: dict[str, Any], chart: Callable[[dict[str, Any], Path], None]
) -> None:
    """Write ``results`` as JSON and ``chart`` them as a PNG, then say where."""
    RESULTS.mkdir(exist_ok=True)
    data, image = RESULTS / f"{stem}.json", RESULTS / f"{stem}.png"
    data.write_text(json.dumps(results, indent=2))
    chart(results, image)
    print(f"\nwrote {data} and {image}")


def thread_split_chart(
    path: Path,
    labels: list[str],
    loop: list[float],
    other: list[float],
    *,
    other_label: str,
    ylabel: str,
    title: str,
) -> None:
    """A bar per label: the event loop thread's CPU, with other threads' stacked on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(labels, loop, color="#3366cc", label="event loop thread")
    ax.bar(labels, other, bottom=loop, color="#99bbee", label=other_label)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
