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
