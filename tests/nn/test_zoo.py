from __future__ import annotations

import json

import pytest

from qsim.cli import main
from qsim.config import AcceleratorConfig
from qsim.nn.estimate import estimate_network
from qsim.nn.zoo import NETWORKS, bert_base_encoder_block, mobilenet_v2, resnet18, resnet50
from qsim.timing import estimate_gemm


@pytest.mark.parametrize("make, layers, macs, out", [
    # published MAC counts: ResNet-18 1.81 G, ResNet-50 4.09 G, MobileNetV2 0.30 G
    (resnet18, 49, 1_814_073_344, "float32[1x1000]"),
    (resnet50, 122, 4_089_184_256, "float32[1x1000]"),
    (mobilenet_v2, 100, 300_774_272, "float32[1x1000]"),
    # 4 projections 128x768x768 + 12 heads x 2 x 128x64x128 + FFN 2 x 128x768x3072
    (bert_base_encoder_block, 22, 4 * 128 * 768 * 768 + 24 * 128 * 64 * 128 + 2 * 128 * 768 * 3072,
     "float32[1x128x768]"),
])
def test_zoo_shapes_and_macs(make, layers, macs, out):
    g = make()
    assert len(g.layers) == layers
    assert g.macs(1) == macs
    assert str(g.infer(1)[g.outputs[0]]) == out


def test_network_estimate_is_the_sum_of_its_gemms():
    cfg = AcceleratorConfig()
    est = estimate_network(resnet18(), cfg, batch=2)
    expected = sum(estimate_gemm(cfg, g.m, g.k, g.n).cycles * g.count for _, g in resnet18().gemms(2))
    assert est.cycles == expected
    assert est.macs == 2 * 1_814_073_344
    assert est.utilization == pytest.approx(est.macs / (64 * est.cycles))
    assert est.layers[0].name == "conv1" and est.layers[0].gemm.m == 2 * 112 * 112


def test_resnet50_estimate_pinned():
    est = estimate_network(resnet50(), AcceleratorConfig(), batch=1)
    assert est.cycles == 64_181_405
    assert round(est.utilization, 4) == 0.9955


def test_cli_network_estimate(capsys):
    assert main(["estimate", "--network", "mobilenet_v2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["macs"] == 300_774_272 and len(data["layers"]) == 53
    assert main(["estimate", "--network", "vgg"]) == 2
    assert capsys.readouterr().err == ("qsim: error: unknown network 'vgg' (available: resnet18, "
                                       "resnet50, mobilenet_v2, bert_base_block)\n")
    assert main(["estimate", "--m", "3"]) == 2
    assert "estimate needs --network NAME or all of --m --k --n (missing --k --n)" in capsys.readouterr().err
    assert set(NETWORKS) == {"resnet18", "resnet50", "mobilenet_v2", "bert_base_block"}
