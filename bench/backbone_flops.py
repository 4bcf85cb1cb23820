"""FLOPs, parameters and training activation memory of backbones at given sizes (measured, CPU).

Usage: python bench/backbone_flops.py [--backbones efficientnet_lite0 efficientnet_lite2 resnet101]
       [--sizes 224 448] [--tflops 60] [--images 5011] [--epochs 20]
Prints a Markdown table per (backbone, size): parameters, forward GFLOPs per image (counted by
``torch.utils.flop_counter`` on the real modules: convolutions and matmuls, 1 multiply-add = 2
FLOPs), the activations a training step keeps for backward per image (bytes of the tensors autograd
saves, under bf16 autocast and in float32, summed by storage), and the expected GPU time of one
whole-backbone fine-tuning epoch over ``--images`` images at ``--tflops`` effective TFLOP/s
(training step ~ 3 x forward FLOPs) and of ``--epochs`` such epochs. The time is an estimate from
FLOPs, not a measurement: depthwise convolutions run far below a GPU's peak, so ``--tflops`` is a
sustained rate, not the datasheet's. Nothing is downloaded (random weights have the same cost).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from mlc.models.backbones import create_backbone  # noqa: E402


def forward_flops(model: torch.nn.Module, size: int) -> float:
    """FLOPs of one forward pass of one image at ``size`` px."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())


def saved_activation_bytes(model: torch.nn.Module, size: int, bf16: bool, batch: int = 2) -> float:
    """Bytes per image of the tensors autograd keeps for the backward pass of a training step
    (train mode, channels_last), each storage counted once."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.device.type == "cpu" and not isinstance(t, torch.nn.Parameter) and t.requires_grad is not None:
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    x = torch.zeros(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        model(x).float().sum()
    return sum(n for ptr, n in storages.items() if ptr not in params) / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["efficientnet_lite0", "efficientnet_lite1",
                                                          "efficientnet_lite2", "resnet101"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[224, 448])
    parser.add_argument("--tflops", type=float, default=60.0, help="sustained TFLOP/s assumed for the time estimate")
    parser.add_argument("--images", type=int, default=5011, help="training images per epoch (VOC 2007 trainval: 5011)")
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()

    print(f"| backbone | px | params (M) | GFLOPs fwd / img | GMACs | train activations / img bf16 (MiB) | "
          f"fp32 (MiB) | est. s / epoch ({args.images} img, {args.tflops:g} TFLOP/s) | est. min / {args.epochs} epochs |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.backbones:
        model = create_backbone(name, pretrained=False).to(memory_format=torch.channels_last)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        for size in args.sizes:
            flops = forward_flops(model.eval(), size)
            bf16 = saved_activation_bytes(model, size, True) / 2**20
            fp32 = saved_activation_bytes(model, size, False) / 2**20
            epoch = 3 * flops * args.images / (args.tflops * 1e12)
            print(f"| {name} | {size} | {params:.2f} | {flops / 1e9:.2f} | {flops / 2e9:.2f} | {bf16:.0f} | {fp32:.0f} | "
                  f"{epoch:.0f} | {epoch * args.epochs / 60:.1f} |")


if __name__ == "__main__":
    main()
