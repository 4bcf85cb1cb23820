"""Does an SSGRL checkpoint's semantic decoupling decouple? (issue 18, item 3)

For every ``--every``-th image of a split, SSGRL's class features f^c (the attention-pooled features,
one per class) are compared: their cosine between classes (1 for all pairs: one feature shared by all
classes, as a plain pooled baseline has), their cosine with the globally average-pooled feature, and
for the named pairs. Prints a Markdown table.

Usage: python scripts/ssgrl_decoupling.py MODEL DATA_ROOT [--split val] [--every 10] [--pair cow sheep ...]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mlc.data.factory import build_dataset, infer_kind
from mlc.models import load_model
from mlc.serving import model_input


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("data_root")
    parser.add_argument("--split", default="val")
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--pair", nargs=2, action="append", default=None, metavar=("A", "B"))
    args = parser.parse_args()
    model = load_model(args.model).eval()
    if not hasattr(model, "semantic_decoupling"):
        raise SystemExit(f"{args.model} is a {model.model_name} model, not ssgrl")
    data = build_dataset(infer_kind(args.data_root), args.data_root, args.split)
    classes = model.classes
    pairs = args.pair or [["cow", "sheep"]]
    cosines, to_average = [], []
    with torch.no_grad():
        for i in range(0, len(data), args.every):
            features = model.forward_features(model_input(data.load_image(i), model))
            decoupled, _ = model.semantic_decoupling(features, model.label_embeddings)
            f = torch.nn.functional.normalize(decoupled[0], dim=-1)  # (C, N)
            average = torch.nn.functional.normalize(features.mean((2, 3))[0], dim=0)
            cosines.append((f @ f.T).numpy())
            to_average.append((f @ average).numpy())
    cos, avg = np.mean(cosines, 0), np.mean(to_average, 0)
    off = cos[~np.eye(len(classes), dtype=bool)]
    print(f"{args.model} on {len(cosines)} images of {args.split} (every {args.every}th)\n")
    print("| measure | cosine |\n|---|---:|")
    print(f"| f^c against f^c' (class pairs), median | {np.median(off):.3f} |")
    print(f"| f^c against f^c' (class pairs), lowest | {off.min():.3f} |")
    print(f"| f^c against the average-pooled feature, median | {np.median(avg):.3f} |")
    for a, b in pairs:
        print(f"| f^{a} against f^{b} | {cos[classes.index(a), classes.index(b)]:.3f} |")
    emb = torch.nn.functional.normalize(model.label_embeddings, dim=-1)
    for a, b in pairs:
        print(f"| label embeddings of {a} and {b} | {(emb[classes.index(a)] @ emb[classes.index(b)]).item():.3f} |")


if __name__ == "__main__":
    main()
