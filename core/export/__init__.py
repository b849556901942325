"""Exports of FlexBin checkpoints for edge runtimes: `core.export.openvino` (torch -> OpenVINO IR)
and `core.export.runtime` (plain numpy + OpenVINO pre/post-processing, shipped inside the IR zip)."""
