"""Does the invisible watermark survive, and what does marking cost? Detection rates and CPU latency.

For each size, N images are watermarked with a random 48-bit payload (as StoreContent does) and read
back: as stored, after JPEG re-encoding at quality 90 and 75 (Pillow writes no metadata, so the C2PA
manifest is gone: only the watermark is left), and after a 10% downscale. An image is detected when
the payload read is within `MAX_BIT_ERRORS` bits of its own, which is how VerifyProvenance matches
payloads to items. The same read on the unmarked originals gives the false-positive rate.

Latency per image on this CPU, as StoreContent pays it: `watermark_ms` (decode the PNG, embed,
encode the PNG again) and `sign_ms` (build, sign and embed the C2PA manifest with the development
certificate; ES256). Their sum is what marking adds to a generation's store stage; `benchmarks/
serving_overhead.py` shows that stage (`store`) next to the rest of a served generation.

The images are synthetic, multi-scale smooth noise with fine grain (no weights can be downloaded
here, and the tiny model's outputs are pure noise, which flatters no watermark): real photographs
and real model outputs compress differently, so treat the rates as indicative.

    python benchmarks/provenance.py                          # 20 images at 64 (sign only), 512 and 1024
    python benchmarks/provenance.py --images 2 --sizes 64 256 --json   # tiny mode, as the tests run it
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import numpy as np
import PIL.Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from control_plane.provenance import watermark
from control_plane.provenance.certificates import SigningCredentials, ensure_development_credentials
from control_plane.provenance.manifest import ManifestFacts, TrainingUse, sign_png

ATTACKS = ("none", "jpeg_q90", "jpeg_q75", "resize_90pct")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20, help="images per size")
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[64, 512, 1024],
        help="square image sizes in pixels (under 256x256 only the manifest is measured: no watermark fits)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    args = parser.parse_args(argv)
    if args.images < 1 or any(size < 8 for size in args.sizes):
        parser.error("--images must be >= 1 and every size >= 8")

    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as home:
        credentials = ensure_development_credentials(Path(home) / "c2pa")
        _warm_up(credentials)
        rows = [_measure(size, args.images, rng, credentials) for size in args.sizes]
    report = {"images_per_size": args.images, "max_bit_errors": watermark.MAX_BIT_ERRORS, "sizes": rows}
    if args.json:
        print(json.dumps(report))
    else:
        for row in rows:
            if row["detection"] is None:
                print(
                    f"{row['size']}x{row['size']}: too small for the watermark (stored without one); added per image "
                    f"p50: sign {row['sign_ms_p50']:.1f} ms"
                )
                continue
            rates = ", ".join(f"{attack} {row['detection'][attack]:.0%}" for attack in ATTACKS)
            print(
                f"{row['size']}x{row['size']}: detected {rates}; false positives {row['false_positive_rate']:.0%}; "
                f"added per image p50: watermark {row['watermark_ms_p50']:.1f} ms + sign {row['sign_ms_p50']:.1f} ms"
                f" = {row['marking_ms_p50']:.1f} ms"
            )
    return 0


def _measure(size: int, count: int, rng: np.random.Generator, credentials: SigningCredentials) -> dict:  # type: ignore[type-arg]
    if not watermark.fits(size, size):
        return _measure_signing_only(size, count, rng, credentials)
    detected = dict.fromkeys(ATTACKS, 0)
    false_positives = 0
    watermark_ms: list[float] = []
    sign_ms: list[float] = []
    for _ in range(count):
        original = _synthetic_image(size, rng)
        png = _encode(original, "PNG")
        payload = int(rng.integers(0, 1 << watermark.PAYLOAD_BITS))
        started = time.perf_counter()
        marked_png = watermark.embed_in_png(png, payload)
        watermark_ms.append((time.perf_counter() - started) * 1000)
        facts = ManifestFacts(uuid4(), "bench", "", datetime.now(UTC), TrainingUse.ALLOWED)
        started = time.perf_counter()
        sign_png(marked_png, facts, credentials)
        sign_ms.append((time.perf_counter() - started) * 1000)

        marked = _decode(marked_png)
        attacked = {
            "none": marked,
            "jpeg_q90": _decode(_encode(marked, "JPEG", quality=90)),
            "jpeg_q75": _decode(_encode(marked, "JPEG", quality=75)),
            "resize_90pct": np.asarray(
                PIL.Image.fromarray(marked).resize((round(size * 0.9),) * 2, PIL.Image.Resampling.BICUBIC)
            ),
        }
        for attack, pixels in attacked.items():
            detected[attack] += _nearest(pixels, payload) <= watermark.MAX_BIT_ERRORS
        false_positives += _nearest(original, payload) <= watermark.MAX_BIT_ERRORS
    watermark_p50, sign_p50 = statistics.median(watermark_ms), statistics.median(sign_ms)
    return {
        "size": size,
        "detection": {attack: hits / count for attack, hits in detected.items()},
        "false_positive_rate": false_positives / count,
        "watermark_ms_p50": watermark_p50,
        "sign_ms_p50": sign_p50,
        "marking_ms_p50": watermark_p50 + sign_p50,
        "watermark_ms_max": max(watermark_ms),
        "sign_ms_max": max(sign_ms),
    }


def _measure_signing_only(size: int, count: int, rng: np.random.Generator, credentials: SigningCredentials) -> dict:  # type: ignore[type-arg]
    """Images under the watermark's minimum (tiny-sd's 64x64): StoreContent only signs them."""
    sign_ms = []
    for _ in range(count):
        png = _encode(_synthetic_image(size, rng), "PNG")
        facts = ManifestFacts(uuid4(), "bench", "", datetime.now(UTC), TrainingUse.ALLOWED)
        started = time.perf_counter()
        sign_png(png, facts, credentials)
        sign_ms.append((time.perf_counter() - started) * 1000)
    sign_p50 = statistics.median(sign_ms)
    return {
        "size": size,
        "detection": None,
        "false_positive_rate": None,
        "watermark_ms_p50": 0.0,
        "sign_ms_p50": sign_p50,
        "marking_ms_p50": sign_p50,
        "watermark_ms_max": 0.0,
        "sign_ms_max": max(sign_ms),
    }


def _nearest(pixels: np.ndarray, payload: int) -> int:
    """Fewest bit errors of any payload read from `pixels` (as read and scaled back), as verify matches."""
    return min((watermark.bit_errors(read, payload) for read in watermark.read_payloads(pixels)), default=48)


def _synthetic_image(size: int, rng: np.random.Generator) -> np.ndarray:
    layers = []
    for cells, weight in ((4, 0.5), (16, 0.3), (64, 0.15)):
        cells = min(cells, size)
        coarse = (rng.random((cells, cells, 3)) * 255).astype(np.uint8)
        layers.append(
            weight * np.asarray(PIL.Image.fromarray(coarse).resize((size, size), PIL.Image.Resampling.BICUBIC), float)
        )
    grain = rng.normal(0, 4, (size, size, 3))
    return np.clip(sum(layers) + grain, 0, 255).astype(np.uint8)  # type: ignore[no-any-return]


def _encode(pixels: np.ndarray, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    PIL.Image.fromarray(pixels).save(out, format=fmt, **options)
    return out.getvalue()


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(PIL.Image.open(io.BytesIO(data)).convert("RGB"))


def _warm_up(credentials: SigningCredentials) -> None:
    # Loads OpenCV, PyWavelets and the C2PA library once, as a running control plane has.
    png = _encode(np.zeros((256, 256, 3), np.uint8), "PNG")
    sign_png(
        watermark.embed_in_png(png, 1),
        ManifestFacts(uuid4(), "warm", "", datetime.now(UTC), TrainingUse.ALLOWED),
        credentials,
    )


if __name__ == "__main__":
    sys.exit(main())
