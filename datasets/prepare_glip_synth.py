#!/usr/bin/env python
"""Generate the glip_synth benchmark under $DETECTRON2_DATASETS/glip_synth (default datasets/)."""

import argparse
import os

from glip_d2.data.synthetic import DEFAULT_COUNTS, HELDOUT, generate_glip_synth


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    default_root = os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "glip_synth")
    parser.add_argument("--root", default=default_root, help=f"output folder ({default_root})")
    parser.add_argument("--seed", type=int, default=0)
    for split, n in DEFAULT_COUNTS.items():
        parser.add_argument(f"--num-{split.replace('_', '-')}", type=int, default=n)
    args = parser.parse_args()
    counts = {s: getattr(args, f"num_{s}") for s in DEFAULT_COUNTS}
    for split, n in counts.items():
        if n < 1:
            parser.error(f"--num-{split.replace('_', '-')} must be >= 1, got {n}")
    os.makedirs(args.root, exist_ok=True)
    meta = generate_glip_synth(args.root, counts, args.seed)
    print(f"wrote glip_synth to {args.root}: {meta['counts']}")
    print("held-out colour-shape combinations:", ", ".join(" ".join(p) for p in HELDOUT))


if __name__ == "__main__":
    main()
