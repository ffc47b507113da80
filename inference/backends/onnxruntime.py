"""The onnxruntime backend: text encoder, UNet and VAE decoder exported to ONNX, run by ONNX Runtime.

The export happens once per weights hash, opset and library versions, under a file lock, into the
backend's cache directory; every replica then loads the same files. It runs on ONNX Runtime's CPU
execution provider (with the replica's torch thread count), for SD 1.x/2.x and SDXL pipelines. SDXL's
two text encoders stay in PyTorch (they run once per request; the pipeline reads their penultimate
hidden states and pooled projection, which the single-output export does not carry).
"""

from __future__ import annotations

import importlib
import importlib.util
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

# From the defining module: diffusers' lazy top-level namespace shows type checkers placeholder classes.
from diffusers.pipelines.pipeline_utils import DiffusionPipeline

from inference.backends._artifacts import cached_artifact, device_model, weights_hash
from inference.backends.base import BackendOptions, BackendUnavailable
from inference.backends.eager import EagerBackend
from inference.backends.onnx_export import (
    OPSET,
    Runner,
    TextEncoderAdapter,
    UNetAdapter,
    VaeDecoderAdapter,
    export_text_encoder,
    export_unet,
    export_vae_decoder,
    export_versions,
    onnx_modules_of,
)

_GRAPHS = ("text_encoder", "unet", "vae_decoder")


class OnnxRuntimeBackend(EagerBackend):
    """Runs diffusers' denoising loop with the three networks executed by ONNX Runtime on the CPU."""

    name: str = "onnxruntime"
    # Its exported graphs hold no VAE encoder, which edits need; validation refuses edits for it.
    supports_editing: bool = False

    def __init__(self, pipeline: DiffusionPipeline, options: BackendOptions | None = None) -> None:
        """Export (or reuse the cached export of) `pipeline`'s networks and swap ONNX Runtime sessions in.

        Raises:
            BackendUnavailable: onnxruntime or onnx is not installed.
            ValueError: The pipeline is not on the CPU, or not an SD 1.x/2.x-style pipeline.
        """
        for package in ("onnx", "onnxruntime"):
            if importlib.util.find_spec(package) is None:
                raise BackendUnavailable(
                    f"backend='onnxruntime' needs the {package!r} package: pip install 'atelier[onnx]'."
                )
        if pipeline.device.type != "cpu":
            raise ValueError("backend='onnxruntime' runs on the CPU execution provider: set the model's device='cpu'.")
        ort: Any = importlib.import_module("onnxruntime")
        onnx: Any = importlib.import_module("onnx")
        unet, vae = onnx_modules_of(pipeline)
        text_encoder: Any = pipeline.text_encoder
        # SDXL's encoders stay in PyTorch (see the module's docstring).
        graphs = _GRAPHS if getattr(pipeline, "text_encoder_2", None) is None else _GRAPHS[1:]
        max_tokens = int(pipeline.tokenizer.model_max_length)
        key = {
            "weights": weights_hash(text_encoder, unet, vae),
            "profile": f"dynamic-batch-size-tokens{max_tokens}-opset{OPSET}-{unet.dtype}-{'+'.join(graphs)}",
            "device": device_model(pipeline.device),
            **export_versions(),
            "onnx": str(onnx.__version__),
        }

        def export(directory: Path) -> None:
            if "text_encoder" in graphs:
                export_text_encoder(text_encoder, directory / "text_encoder.onnx", max_tokens=max_tokens)
            export_unet(unet, directory / "unet.onnx")
            export_vae_decoder(vae, directory / "vae_decoder.onnx")

        root = options.cache_dir if options and options.cache_dir else Path(tempfile.mkdtemp(prefix="atelier-onnx-"))
        self.export_dir = cached_artifact(root, "onnx", key, export)
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = torch.get_num_threads()
        session_options.inter_op_num_threads = 1
        runners = {
            graph: _session_runner(
                ort.InferenceSession(
                    str(self.export_dir / f"{graph}.onnx"), session_options, providers=["CPUExecutionProvider"]
                )
            )
            for graph in graphs
        }
        if "text_encoder" in runners:
            pipeline.text_encoder = TextEncoderAdapter(text_encoder, runners["text_encoder"])
        pipeline.unet = UNetAdapter(unet, runners["unet"])
        pipeline.vae = VaeDecoderAdapter(vae, runners["vae_decoder"])
        super().__init__(pipeline)


def _session_runner(session: Any) -> Runner:
    def run(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        feed = {name: np.ascontiguousarray(tensor.detach().cpu().numpy()) for name, tensor in inputs.items()}
        (output,) = session.run(None, feed)
        return torch.from_numpy(output)

    return run
