"""The provenance package without services: watermark, signed manifests, credentials, file decoding."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID, uuid4

import numpy as np
import PIL.Image
import pytest

from control_plane.errors import InvalidArgument
from control_plane.provenance import watermark
from control_plane.provenance.certificates import (
    SigningCredentials,
    SigningCredentialsError,
    create_development_chain,
    ensure_development_credentials,
    load_signing_credentials,
)
from control_plane.provenance.manifest import (
    TRAINED_ALGORITHMIC_MEDIA,
    ManifestFacts,
    ManifestStatus,
    TrainingUse,
    read_manifest,
    sign_png,
)
from control_plane.provenance.verify import decode_image

KEY = b"k" * 32
NOW = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)


def _image(size: int, seed: int = 0) -> np.ndarray:
    # Smooth noise: closer to a generated image than white noise, which JPEG cannot compress.
    coarse = np.random.default_rng(seed).random((size // 8, size // 8, 3))
    return np.asarray(
        PIL.Image.fromarray((coarse * 255).astype("uint8")).resize((size, size), PIL.Image.Resampling.BICUBIC)
    )


def _encode(rgb: np.ndarray, fmt: str = "PNG", **options: object) -> bytes:
    out = io.BytesIO()
    PIL.Image.fromarray(rgb).save(out, format=fmt, **options)
    return out.getvalue()


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(PIL.Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture(scope="module")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> SigningCredentials:
    return ensure_development_credentials(tmp_path_factory.mktemp("c2pa"))


class TestWatermark:
    def test_payload_is_a_keyed_48_bit_hash_of_the_content_id(self) -> None:
        content_id = uuid4()
        payload = watermark.payload_for(KEY, content_id)
        assert 0 <= payload < 1 << 48
        assert payload == watermark.payload_for(KEY, content_id)
        assert payload != watermark.payload_for(b"j" * 32, content_id)

    @pytest.mark.parametrize("quality", [90, 75])
    def test_payload_survives_jpeg_reencoding(self, quality: int) -> None:
        payload = watermark.payload_for(KEY, UUID(int=quality))
        marked = _decode(watermark.embed_in_png(_encode(_image(512)), payload))
        reencoded = _decode(_encode(marked, "JPEG", quality=quality))
        assert min(watermark.bit_errors(read, payload) for read in watermark.read_payloads(reencoded)) <= 2

    def test_payload_survives_a_ten_percent_downscale(self) -> None:
        payload = watermark.payload_for(KEY, UUID(int=7))
        marked = PIL.Image.fromarray(_decode(watermark.embed_in_png(_encode(_image(512, 1)), payload)))
        resized = np.asarray(marked.resize((461, 461), PIL.Image.Resampling.BICUBIC))
        assert min(watermark.bit_errors(read, payload) for read in watermark.read_payloads(resized)) <= 2

    def test_unmarked_image_reads_far_from_any_payload(self) -> None:
        payload = watermark.payload_for(KEY, UUID(int=9))
        reads = list(watermark.read_payloads(_image(512, 2)))
        assert reads and min(watermark.bit_errors(read, payload) for read in reads) > watermark.MAX_BIT_ERRORS

    def test_images_under_256x256_cannot_carry_one(self) -> None:
        assert not watermark.fits(64, 64) and watermark.fits(256, 256)
        with pytest.raises(ValueError, match="smaller than"):
            watermark.embed_watermark(_image(128), 1)
        assert list(watermark.read_payloads(_image(64))) == []

    def test_marks_read_back_with_invisible_watermarks_own_reader_and_ours_agrees_with_it(self) -> None:
        # The format's reference implementation (its package import pulls in torch: tests only).
        from imwatermark.maxDct import EmbedMaxDct

        reference = EmbedMaxDct(watermarks=[], wmLen=watermark.PAYLOAD_BITS, scales=[36, 0, 0], block=4)
        payload = watermark.payload_for(KEY, UUID(int=11))
        marked = watermark.embed_watermark(_image(512, 5), payload)
        bits = reference.decode(np.ascontiguousarray(marked[:, :, ::-1]))
        assert int("".join("1" if bit else "0" for bit in bits), 2) == payload
        for pixels in (marked, _image(256, 6), _image(320, 7), _image(264, 9)[:261, :262]):
            ours = next(watermark.read_payloads(pixels))
            theirs = reference.decode(np.ascontiguousarray(pixels[:, :, ::-1]))
            assert ours == int("".join("1" if bit else "0" for bit in theirs), 2)

    def test_the_watermark_is_faint(self) -> None:
        original = _image(512, 8)
        marked = watermark.embed_watermark(original, watermark.payload_for(KEY, UUID(int=12)))
        mse = np.mean((original.astype(float) - marked.astype(float)) ** 2)
        assert mse > 0 and 10 * np.log10(255**2 / mse) > 38  # PSNR; invisible-watermark's embedder: ~30 dB

    def test_marking_and_reading_load_neither_torch_nor_opencv(self) -> None:
        import subprocess
        import sys

        code = (
            "import sys, numpy; from control_plane.provenance import watermark; "
            "image = numpy.zeros((256, 256, 3), 'uint8'); "
            "list(watermark.read_payloads(watermark.embed_watermark(image, 1))); "
            "print('torch' in sys.modules or 'cv2' in sys.modules)"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out.strip() == "False"


class TestManifest:
    def test_signed_png_reads_back_trusted_with_what_it_states(self, credentials: SigningCredentials) -> None:
        content_id = uuid4()
        facts = ManifestFacts(content_id, "tiny-sd", "v1", NOW, TrainingUse.NOT_ALLOWED)
        signed, label = sign_png(_encode(_image(64)), facts, credentials)

        reading = read_manifest(signed, "image/png", credentials.trust_anchors_pem)

        assert reading.status is ManifestStatus.TRUSTED, reading.explanation
        assert reading.label == label and label.startswith("urn:c2pa:")
        assert reading.claim_generator == "atelier"
        assert reading.actions == ("c2pa.created",)
        assert reading.digital_source_type == TRAINED_ALGORITHMIC_MEDIA
        assert (reading.content_id, reading.model, reading.model_version) == (str(content_id), "tiny-sd", "v1")
        assert reading.training_use == "notAllowed"
        assert datetime.fromisoformat(reading.created_at) == NOW

    def test_an_edit_names_its_upload_as_parent_ingredient(self, credentials: SigningCredentials) -> None:
        upload = _encode(_image(64, 3))
        facts = ManifestFacts(uuid4(), "tiny-sd", "", NOW, TrainingUse.ALLOWED, ingredient_png=upload)
        signed, _ = sign_png(_encode(_image(64, 4)), facts, credentials)

        reading = read_manifest(signed, "image/png", credentials.trust_anchors_pem)

        assert reading.status is ManifestStatus.TRUSTED
        assert reading.actions == ("c2pa.opened", "c2pa.edited")
        assert reading.ingredient_count == 1
        assert reading.training_use == "allowed"

    def test_another_signers_manifest_is_untrusted_not_an_error(
        self, credentials: SigningCredentials, tmp_path: Path
    ) -> None:
        stranger = ensure_development_credentials(tmp_path / "stranger")
        signed, _ = sign_png(_encode(_image(64)), ManifestFacts(uuid4(), "m", "", NOW, TrainingUse.ALLOWED), stranger)
        reading = read_manifest(signed, "image/png", credentials.trust_anchors_pem)
        assert reading.status is ManifestStatus.UNTRUSTED
        assert reading.failure_codes == ("signingCredential.untrusted",)

    def test_altered_pixels_make_the_manifest_invalid(self, credentials: SigningCredentials) -> None:
        signed, _ = sign_png(
            _encode(_image(64)), ManifestFacts(uuid4(), "m", "", NOW, TrainingUse.ALLOWED), credentials
        )
        altered = bytearray(signed)
        altered[signed.index(b"IDAT") + 50] ^= 0xFF
        reading = read_manifest(bytes(altered), "image/png", credentials.trust_anchors_pem)
        assert reading.status is ManifestStatus.INVALID
        assert "assertion.dataHash.mismatch" in reading.failure_codes

    def test_a_plain_file_has_no_manifest(self, credentials: SigningCredentials) -> None:
        reading = read_manifest(_encode(_image(64)), "image/png", credentials.trust_anchors_pem)
        assert reading.status is ManifestStatus.ABSENT


class TestCredentials:
    def test_development_pair_is_created_once_and_reused(self, tmp_path: Path) -> None:
        first = ensure_development_credentials(tmp_path)
        again = ensure_development_credentials(tmp_path)
        assert first == again and first.development
        assert (tmp_path / "signer.key").stat().st_mode & 0o077 == 0

    def test_production_files_load_and_trust_the_chains_root(self, tmp_path: Path) -> None:
        chain, key, root = create_development_chain(NOW, organization="Example Corp")
        (tmp_path / "chain.pem").write_bytes(chain)
        (tmp_path / "key.pem").write_bytes(key)
        loaded = load_signing_credentials(tmp_path / "chain.pem", tmp_path / "key.pem")
        assert not loaded.development and loaded.trust_anchors_pem == root

    def test_a_key_of_another_certificate_is_refused(self, tmp_path: Path) -> None:
        chain, _, _ = create_development_chain(NOW)
        _, other_key, _ = create_development_chain(NOW)
        (tmp_path / "chain.pem").write_bytes(chain)
        (tmp_path / "key.pem").write_bytes(other_key)
        with pytest.raises(SigningCredentialsError, match="is not the key of the first certificate"):
            load_signing_credentials(tmp_path / "chain.pem", tmp_path / "key.pem")

    def test_a_missing_file_is_named(self, tmp_path: Path) -> None:
        with pytest.raises(SigningCredentialsError, match="ATELIER_C2PA_CERT"):
            load_signing_credentials(tmp_path / "none.pem", tmp_path / "key.pem")

    def test_config_needs_the_certificate_and_key_together_and_names_a_bad_file(self, tmp_path: Path) -> None:
        from control_plane.bootstrap import load_signing
        from control_plane.config import ConfigError, ControlPlaneConfig

        with pytest.raises(ConfigError, match="ATELIER_C2PA_CERT, ATELIER_C2PA_KEY"):
            ControlPlaneConfig(c2pa_cert_file=tmp_path / "chain.pem")
        (tmp_path / "chain.pem").write_text("not a certificate")
        (tmp_path / "key.pem").write_text("not a key")
        config = ControlPlaneConfig(
            home=tmp_path, c2pa_cert_file=tmp_path / "chain.pem", c2pa_key_file=tmp_path / "key.pem"
        )
        with pytest.raises(ConfigError, match="holds no PEM certificate"):
            load_signing(config)
        assert load_signing(ControlPlaneConfig(home=tmp_path)).development


class TestDecodingFilesToVerify:
    def test_jpeg_and_png_are_read(self) -> None:
        assert decode_image(_encode(_image(64), "JPEG"))[0] == "image/jpeg"
        media_type, rgb = decode_image(_encode(_image(64)))
        assert media_type == "image/png" and rgb.shape == (64, 64, 3)

    @pytest.mark.parametrize(
        ("data", "problem"),
        [
            (b"", "must not be empty"),
            (b"%PDF-1.7 not an image", "is not a PNG, JPEG or WebP image"),
            (_encode(_image(256))[:-4000], "truncated or corrupt"),
        ],
        ids=["empty", "not-an-image", "truncated"],
    )
    def test_bad_files_are_invalid_arguments_naming_the_problem(self, data: bytes, problem: str) -> None:
        with pytest.raises(InvalidArgument, match=problem) as raised:
            decode_image(data)
        assert raised.value.field == "data"


def test_the_benchmark_tiny_mode_reports_detection_rates_and_added_latency() -> None:
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[3]
    result = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "provenance.py"), "--images", "2", "--sizes", "64", "256", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    small, row = json.loads(result.stdout)["sizes"]
    assert small["size"] == 64 and small["detection"] is None and small["sign_ms_p50"] > 0 == small["watermark_ms_p50"]
    assert row["size"] == 256 and set(row["detection"]) == {"none", "jpeg_q90", "jpeg_q75", "resize_90pct"}
    assert row["detection"]["none"] == 1.0 and row["false_positive_rate"] == 0.0
    assert row["watermark_ms_p50"] > 0 and row["sign_ms_p50"] > 0
