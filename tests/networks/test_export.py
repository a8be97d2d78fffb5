"""Eval-mode export: torch.export (all variants) and ONNX (torch.onnx.export, dynamo exporter), 2D tiny."""

from __future__ import annotations

import pytest
import torch
from networks_cases import IN_CH, NAMES, OUT_CH, make

# eff_unet's ONNX export takes ~10 s on 2 cores: `make test-fast` leaves it out
ONNX_CASES = [pytest.param(name, marks=pytest.mark.slow) if name == "eff_unet" else name for name in NAMES]


@pytest.mark.parametrize("name", NAMES)
def test_torch_export_matches_eager(name: str) -> None:
    model = make(name, 2, ds=True, cgm=True).eval()  # heads exist but eval returns one tensor
    x = torch.randn(1, IN_CH, 32, 32)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x))


@pytest.mark.parametrize("name", ONNX_CASES)
def test_onnx_export(name: str) -> None:
    onnx = pytest.importorskip("onnx", reason="onnx not installed (dev extra)")
    pytest.importorskip("onnxscript", reason="onnxscript not installed (dev extra)")
    gate = name == "unet"  # also export the opt-in CGM gating path once
    model = make(name, 2, cgm=gate, cgm_gate=gate).eval()
    x = torch.randn(1, IN_CH, 32, 32)
    program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
    onnx.checker.check_model(program.model_proto)
    (output,) = program.model_proto.graph.output
    dims = [d.dim_value for d in output.type.tensor_type.shape.dim]
    assert dims == [1, OUT_CH, 32, 32]
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return  # numerical check needs onnxruntime (not a dependency)
    with torch.no_grad():
        torch.testing.assert_close(program(x)[0], model(x), rtol=1e-4, atol=1e-4)
