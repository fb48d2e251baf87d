#!/usr/bin/env python3
"""A stand-in for what scripts/gpu-bundle packs, for tests/gpu_check: copied
under each of the bundle's names, it answers as that program would, with
made-up figures, so that scripts/gpu-check's order, time budget, ratios and
reports are checked with no GPU. FAKE_SLOW names a program (`gpu-tests`,
`nccl-tests`) that sleeps a minute before it answers."""

import json
import os
import sys
import time

name = os.path.basename(sys.argv[0])
args = sys.argv[1:]
if os.environ.get("FAKE_SLOW") == name:
    time.sleep(60)

if name in ("gpu-tests", "nccl-tests"):
    print("running 9 tests\ntest result: ok. 9 passed; 0 failed; 0 ignored")
elif name == "alexnet" and args[0] == "info":
    print("GPU 0: a stand-in")
elif name == "alexnet":
    # Training images/s by precision; inference twice that.
    precision = args[args.index("--precision") + 1] if "--precision" in args else \
        "tf32" if "--tf32" in args else "fp32"
    train = {"fp32": 1000, "tf32": 2000, "bf16": 3000, "fp16": 2500}[precision]
    gib = 2**30
    print(json.dumps({
        "train": {"images_per_s": train},
        "inference": {"images_per_s": 2 * train},
        "layers": [{"name": "conv1", "train_forward_ms": 1.5, "train_backward_ms": 3.0,
                    "inference_ms": 1.0, "forward_gflops": 20000, "backward_gflops": 25000}],
        "gpu_memory_before": [[0, gib]],
        "gpu_memory_in_use": [[0, gib + int(1.2 * gib)]],
        "gpu_peak_predicted": {"tensors": gib, "workspace_bound": gib // 2},
    }))
elif name == "pytorch_twin.py":
    train, infer = (6000, 30000) if "--compile" in args else (5000, 20000) if "--amp" in args \
        else (2000, 8000) if "--exact" in args else (4000, 16000)
    print(json.dumps({"train": {"images_per_s": train}, "inference": {"images_per_s": infer}}))
else:
    sys.exit(f"fake_bundle.py: no stand-in for {name} {args}")
