"""The pool's model matching at fleet size: the cost of matching one request's model
against every installed name of every backend, as `BackendPool.candidates` does with the
core's `same_model` (Ollama's naming rules, case-folded).

    python bench/model_match.py [--backends 64] [--models 28] [--rounds 200]

Run by hand; prints a table: milliseconds per request-equivalent with names remembered
(`model_key`'s cache, as the gateway runs) and with the cache bypassed (every name
normalised again, as before the cache).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.ollama import names


def per_request_ms(backends: int, models: int, rounds: int, *, cached: bool) -> float:
    installed = [f"library/model{i}:{i % 4 + 1}b" for i in range(models)]
    wanted = installed[-1].removeprefix("library/")
    key = names.model_key if cached else names.normalize_model_name

    def same(a: str, b: str) -> bool:
        return key(a).casefold() == key(b).casefold()

    started = time.perf_counter()
    for _ in range(rounds):
        for _ in range(backends):
            any(same(m, wanted) for m in installed)
    return (time.perf_counter() - started) / rounds * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", type=int, default=64)
    parser.add_argument("--models", type=int, default=28)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    rows = [
        ("names normalised each time", False),
        ("model_key cache (the gateway)", True),
    ]
    print(f"{args.backends} backends x {args.models} installed models, one request's match")
    print(f"{'matching':32} {'ms/request':>10}")
    for label, cached in rows:
        ms = per_request_ms(args.backends, args.models, args.rounds, cached=cached)
        print(f"{label:32} {ms:10.3f}")


if __name__ == "__main__":
    main()
