#!/usr/bin/env python3
"""Time PyTorch on AlexNet's single-device twin, the way `alexnet bench` times
the two towers: a full training step (forward, cross-entropy, backward,
momentum SGD with weight decay) and inference, median of timed steps after
warm-up, on random 227x227 images.

The twin (docs/network.md): groups=2 in conv2, conv4, conv5; LRN(size=5, alpha=5e-4,
beta=0.75, k=2), which is the paper's alpha=1e-4 in PyTorch's convention.
PyTorch's LRN here spans all 96 (256) channels rather than each group's 48
(128): the same cost, one op instead of two.

    python3 bench/pytorch_twin.py --threads 2 --batch 128 [--amp] [--json]
    alexnet bench --cpu --batch 128 --against-pytorch [--python PATH]  (runs this script)
    python3 bench/pytorch_twin.py --device cuda [--exact | --tf32] [--amp | --bf16]
        [--channels-last] [--compile]

On CUDA, `--exact` is fp32 without TF32 anywhere, `--tf32` allows it in
convolutions and matrix products, neither leaves PyTorch's defaults (TF32
convolutions, exact matrix products). `--amp` is fp16 autocast (bf16 on the
CPU), `--bf16` bf16 autocast; `--channels-last` stores images and weights
NHWC; `--compile` runs the model through `torch.compile`.
"""

import argparse
import json
import statistics
import time

import torch
from torch import nn


def twin(classes: int = 1000) -> nn.Sequential:
    lrn = lambda: nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)
    return nn.Sequential(
        nn.Conv2d(3, 96, 11, stride=4), nn.ReLU(inplace=True), lrn(), nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(inplace=True), lrn(), nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Flatten(),
        nn.Linear(9216, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(4096, classes),
    )


def timed(step, warmup: int, steps: int) -> list:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CPU) or fp16 (CUDA)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--tf32", action="store_true",
                        help="CUDA: TF32 in convolutions and matrix products")
    parser.add_argument("--channels-last", action="store_true", help="NHWC images and weights")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--exact", action="store_true",
                        help="CUDA: no TF32 in convolutions (PyTorch allows it there by default)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # measured algorithms, as alexnet's cudnnFind
        if args.exact and args.tf32:
            parser.error("--exact and --tf32 contradict each other")
        if args.exact:
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        if args.tf32:
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cuda.matmul.allow_tf32 = True
    if args.amp and args.bf16:
        parser.error("--amp and --bf16 contradict each other")
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = twin().to(device, memory_format=memory_format)
    images = torch.randn(args.batch, 3, 227, 227, device=device).to(memory_format=memory_format)
    labels = torch.randint(0, 1000, (args.batch,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
    amp_dtype = torch.bfloat16 if device.type == "cpu" or args.bf16 else torch.float16
    autocast = args.amp or args.bf16
    forward = torch.compile(model) if args.compile else model
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=autocast):
            loss = nn.functional.cross_entropy(forward(images), labels)
        loss.backward()
        optimizer.step()
        sync()

    def infer_step():
        with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype, enabled=autocast):
            forward(images)
        sync()

    model.train()
    train = timed(train_step, args.warmup, args.steps)
    model.eval()
    infer = timed(infer_step, args.warmup, args.steps)
    report = {
        "torch": torch.__version__,
        "device": args.device,
        "threads": args.threads,
        "batch": args.batch,
        "amp": args.amp,
        "autocast_dtype": str(amp_dtype).removeprefix("torch.") if autocast else None,
        "channels_last": args.channels_last,
        "compiled": args.compile,
        "conv_tf32": device.type == "cuda" and torch.backends.cudnn.allow_tf32,
        "matmul_tf32": device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "train": {"step_seconds": train, "images_per_s": args.batch / statistics.median(train)},
        "inference": {"step_seconds": infer, "images_per_s": args.batch / statistics.median(infer)},
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        mode = f"{str(amp_dtype).removeprefix('torch.')} autocast" if autocast else "fp32"
        mode += ", channels-last" if args.channels_last else ""
        mode += ", compiled" if args.compile else ""
        print(f"pytorch {torch.__version__} twin, batch {args.batch}, {args.threads} threads, {mode}; "
              f"median of {args.steps} steps after warm-up")
        print(f"training   {report['train']['images_per_s']:8.1f} images/s")
        print(f"inference  {report['inference']['images_per_s']:8.1f} images/s")


if __name__ == "__main__":
    main()
