"""Writes a random-weight model folder from a config, for smoke runs where no weights may travel.

    python scripts/random_model.py --out /tmp/pdserve-random --tokenizer <folder with tokenizer files>

Timings do not depend on the weights' values, so a random SmolLM2-shaped (or larger) Llama exercises the same
kernels, KV sizes and transfers as the real model. (`builtin:stand-in` is one of these, provisioned by pdserve.)
"""

from __future__ import annotations

import argparse

from serving.model import RandomModel, write_random_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--tokenizer", required=True, help="folder holding tokenizer.json & tokenizer_config.json")
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--heads", type=int, default=9)
    parser.add_argument("--kv-heads", type=int, default=3)
    parser.add_argument("--intermediate", type=int, default=1536)
    args = parser.parse_args()
    shape = RandomModel("random", hidden=args.hidden, layers=args.layers, heads=args.heads, kv_heads=args.kv_heads,
                        intermediate=args.intermediate)
    write_random_model(shape, args.tokenizer, args.out)
    print(args.out)


if __name__ == "__main__":
    main()
