"""Generation parameters as the control plane stores them (JSON in `content.parameters`)."""

from __future__ import annotations

import json

from control_plane.entrypoints.convert import parameters_from_dict, parameters_to_dict
from protos.atelier.v1 import common_pb2


def test_enums_are_stored_by_name_and_read_back() -> None:
    parameters = common_pb2.GenerationParameters(
        model="tiny-sd", steps=4, mode=common_pb2.GENERATION_MODE_INPAINT, strength=0.5
    )
    stored = json.loads(json.dumps(parameters_to_dict(parameters)))
    assert stored["mode"] == "GENERATION_MODE_INPAINT"
    assert parameters_from_dict(stored) == parameters


def test_rows_stored_with_enum_numbers_still_read() -> None:
    old_row = {"model": "tiny-sd", "mode": common_pb2.GENERATION_MODE_IMAGE_TO_IMAGE}
    assert parameters_from_dict(old_row).mode == common_pb2.GENERATION_MODE_IMAGE_TO_IMAGE
