"""What does scanning every generated image cost? The output classifier's added latency per image, against
the generation time measured in the same run.

Both arms run through the replica's own code: the model's backend on its one model thread, batched by its
`BatchScheduler`; one arm with the output classifier the replica loads (`StableDiffusionSafetyChecker`,
batched on the device right after the pipeline call), one without. Reported per image: the generation's wall
time without scanning, with scanning, the classifier's own pass (`scan_ms`, device time: it ends with the
verdicts on the host), and the ratio of the scan to the generation.

GPU mode builds architecture-accurate random-weight models in fp16 from published configs: the SD 1.5
pipeline (512x512, 50 steps) of `diffusion_latency.py` and SD 1.5's safety checker (CLIP ViT-L/14 vision
tower at 224x224, projection 768, 17 + 3 concept embeddings). The CPU tiny mode runs tiny-sd (64x64) with
the builtin tiny-safety-checker; it is what the tests run.

    python benchmarks/output_scan.py --tiny --json                 # CPU, as the tests run it
    PYTHONPATH=. python benchmarks/output_scan.py --batch 8        # a GPU machine
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.diffusion_latency import WORKLOADS, _device_name, _pipeline, _timed_batch
from inference.backends import create_backend
from inference.deployments.batching import BatchScheduler, ModelThread
from inference.safety import (
    TINY_SAFETY_CHECKER,
    OutputClassifier,
    SafetyCheckerClassifier,
    load_output_classifier,
)

# SD 1.5's safety_checker/config.json: the fields that set the shapes (CLIP ViT-L/14's vision tower).
SD15_SAFETY_CHECKER_VISION = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 224,
    "patch_size": 14,
}
SD15_SAFETY_CHECKER_PROJECTION = 768


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="CPU mode: tiny-sd at 64x64, tiny-safety-checker")
    parser.add_argument("--steps", type=int, help="override the workload's steps")
    parser.add_argument("--batch", type=int, default=4, help="images per pipeline call (and classifier pass)")
    parser.add_argument("--iterations", type=int, default=3, help="timed batches per arm")
    parser.add_argument("--cache-dir", type=Path, help="unused; accepted as the other benchmarks take it")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    model = "tiny-sd" if args.tiny else "sd15"
    if args.tiny:
        torch.set_num_threads(1)
    size, steps = WORKLOADS[model]
    steps = args.steps or steps
    model_thread = ModelThread("bench-scan")
    pipeline = _pipeline(model, device)
    backend = model_thread.call(lambda: create_backend("eager", pipeline))
    classifier = model_thread.call(lambda: _classifier(model, device))

    plain = BatchScheduler(backend, max_batch_images=args.batch, model_thread=model_thread)
    scanned = BatchScheduler(backend, max_batch_images=args.batch, model_thread=model_thread, classifier=classifier)
    for scheduler in (plain, scanned):  # warm-up: allocator, cuDNN autotuning, the classifier's first pass
        _timed_batch(scheduler, size, steps, args.batch)
    # Interleaved, so drift (thermal, other processes) hits both arms alike.
    plain_s: list[float] = []
    scanned_s: list[float] = []
    scan_ms: list[float] = []
    for _ in range(args.iterations):
        plain_s.append(_timed_batch(plain, size, steps, args.batch)[0])
        wall, result = _timed_batch(scanned, size, steps, args.batch)
        scanned_s.append(wall)
        scan_ms.append(result.scan_ms)
    model_thread.shutdown()

    generation_ms = statistics.median(plain_s) / args.batch * 1000
    with_scan_ms = statistics.median(scanned_s) / args.batch * 1000
    scan_per_image_ms = statistics.median(scan_ms) / args.batch
    report: dict[str, Any] = {
        "device": _device_name(device),
        "torch": torch.__version__,
        "model": model,
        "classifier": classifier.name,
        "size": size,
        "steps": steps,
        "batch": args.batch,
        "generation_ms_per_image": round(generation_ms, 3),
        "generation_with_scan_ms_per_image": round(with_scan_ms, 3),
        "scan_ms_per_image": round(scan_per_image_ms, 3),
        "added_ms_per_image": round(with_scan_ms - generation_ms, 3),
        "scan_to_generation_ratio": round(scan_per_image_ms / generation_ms, 5),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print("  ".join(f"{key}={value}" for key, value in report.items()))
    return 0


def _classifier(model: str, device: str) -> OutputClassifier:
    """The replica's classifier for the workload: tiny for tiny-sd, SD 1.5's architecture (random) otherwise."""
    dtype = torch.float16 if device == "cuda" else torch.float32
    if model == "tiny-sd":
        return load_output_classifier(TINY_SAFETY_CHECKER, None, device=device, dtype=dtype)
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig

    config = CLIPConfig(vision_config=SD15_SAFETY_CHECKER_VISION, projection_dim=SD15_SAFETY_CHECKER_PROJECTION)
    with torch.device(device):
        checker = StableDiffusionSafetyChecker(config)
    return SafetyCheckerClassifier(checker, "sd15-safety-checker-random", device=device, dtype=dtype)


if __name__ == "__main__":
    sys.exit(main())
