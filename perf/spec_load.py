"""What the nesting guard costs: composing a spec with zlayer's event-driven composer (which refuses nesting past
serde's 128 levels before anything recurses) against PyYAML's own C composer (which recurses on the C stack and
segfaults on about 50,000 levels), both over libyaml's parser, on every valid example spec and ZLayer's reference
examples; and compose with the conversion to values that every check starts from.

Runs standalone (`python perf/spec_load.py [--rounds N]`). Last line: one JSON object with the medians
(µs per spec) and `compose_vs_pyyaml` (target ≤ 2: the guard costs its Python loop over libyaml's events, a
fraction of a millisecond on a real spec, against the 0.15 s a `zlayer validate` takes in all).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from zlayer.errors import SpecError  # noqa: E402
from zlayer.spec.loader import _compose, _compose_nodes  # noqa: E402

SPECS = sorted((ROOT / "tests" / "unit" / "spec" / "examples" / "valid").glob("*.y*ml"))
REFERENCE = ROOT.parent / "shared" / "reference" / "zlayer-examples"
SPECS += sorted(REFERENCE.glob("*.y*ml")) if REFERENCE.is_dir() else []


def pyyaml(text: str) -> object:
    loader = yaml.CSafeLoader(text)
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


def guarded(text: str) -> object:
    loader = yaml.CSafeLoader(text)
    try:
        return _compose_nodes(loader, "bench")
    finally:
        loader.dispose()


def _single_mapping(text: str) -> bool:
    """Whether every composer takes ``text`` (a reference file with several documents is left out)."""
    try:
        pyyaml(text), guarded(text), _compose(text, "bench")
    except (yaml.YAMLError, SpecError):
        return False
    return True


def median_us(fn: Callable[[str], object], texts: list[str], rounds: int) -> float:
    """Median over rounds of the time to run ``fn`` on every text once, in µs."""
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for text in texts:
            fn(text)
        times.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    texts = [t for t in (p.read_text() for p in SPECS) if _single_mapping(t)]
    peer = median_us(pyyaml, texts, args.rounds)
    ours = median_us(guarded, texts, args.rounds)
    whole = median_us(lambda t: _compose(t, "bench"), texts, args.rounds)
    n = len(texts)
    print(f"{n} specs, {sum(map(len, texts))} bytes: PyYAML compose {peer / n:.0f} µs/spec, guarded {ours / n:.0f}"
          f" µs/spec, compose+convert {whole / n:.0f} µs/spec")  # fmt: skip
    figures = {"specs": n, "pyyaml_compose_us": round(peer / n, 1), "compose_us": round(ours / n, 1),
               "compose_convert_us": round(whole / n, 1), "compose_vs_pyyaml": round(ours / peer, 2)}  # fmt: skip
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
