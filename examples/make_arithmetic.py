"""Write a small prompt/completion data set (train + validation) for trying `winnow train`.

Run: ``python examples/make_arithmetic.py examples/data``
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path


def main(out: str) -> None:
    rng = random.Random(0)
    pairs = sorted({(rng.randint(0, 99), rng.randint(0, 99)) for _ in range(400)})
    rng.shuffle(pairs)
    rows = [{"prompt": f"What is {a} plus {b}?", "completion": f"{a} plus {b} is {a + b}."} for a, b in pairs]
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in (("train.jsonl", rows[:-40]), ("val.jsonl", rows[-40:])):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
    print(f"wrote {len(rows) - 40} training and 40 validation pairs to {folder}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "examples/data")
