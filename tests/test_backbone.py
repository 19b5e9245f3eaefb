"""fpn_backbone: torchvision's BackboneWithFPN over a ResNeXt, accepted by its detectors."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection import FasterRCNN, RetinaNet
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d

import resnext
from resnext import fpn_backbone

# A narrow ResNeXt-50 (base_planes 16: 1.5M parameters) keeps detection steps fast on a CPU.
NARROW = "resnext50_32x4d_p16"
SMALL = dict(min_size=64, max_size=64, rpn_pre_nms_top_n_train=50, rpn_post_nms_top_n_train=20,
             rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=20, box_batch_size_per_image=16,
             rpn_batch_size_per_image=32)  # fmt: skip


def _targets():
    return [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[10.0, 12.0, 60.0, 50.0]]), "labels": torch.tensor([2])},
    ]


def test_faster_rcnn_trains_and_predicts_on_it():
    backbone = fpn_backbone(NARROW, out_channels=32)
    assert isinstance(backbone, BackboneWithFPN) and backbone.out_channels == 32
    detector = FasterRCNN(backbone, num_classes=3, **SMALL).train()
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    losses = detector(images, _targets())
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    sum(losses.values()).backward()
    body = dict(backbone.body.named_parameters())
    assert body["layer4.0.conv2.weight"].grad.abs().sum() > 0  # trainable_stages=3: 2..4
    assert body["layer2.0.conv1.weight"].grad is not None
    assert body["layer1.0.conv1.weight"].grad is None and not body["conv1.weight"].requires_grad
    detector.eval()
    with torch.no_grad():
        out = detector(images)
    assert len(out) == 2 and set(out[0]) == {"boxes", "labels", "scores"}


def test_retinanet_accepts_it():
    detector = RetinaNet(fpn_backbone(NARROW, out_channels=32), num_classes=3, min_size=64,
                         max_size=64).eval()  # fmt: skip
    with torch.no_grad():
        out = detector([torch.rand(3, 64, 64)])
    assert set(out[0]) == {"boxes", "labels", "scores"}


def test_same_names_and_outputs_as_torchvisions_resnet_fpn_backbone():
    theirs = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=2).eval()
    ours = fpn_backbone("resnet18", trainable_stages=2, frozen_bn=True).eval()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    trainable = [n for n, p in ours.named_parameters() if p.requires_grad]
    assert trainable == [n for n, p in theirs.named_parameters() if p.requires_grad]
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert list(a) == list(b) == ["0", "1", "2", "3", "pool"]
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_weights_load_and_bn_freezes_as_torchvision_does(tmp_path):
    source = resnext.create_model(NARROW)
    for m in source.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
    torch.save(source.state_dict(), tmp_path / "w.pth")
    backbone = fpn_backbone(NARROW, weights=tmp_path / "w.pth", returned_stages=(2, 3, 4))
    assert isinstance(backbone.body.layer3[0].bn2, FrozenBatchNorm2d)
    assert torch.equal(backbone.body.layer3[0].bn2.running_mean, source.layer3[0].bn2.running_mean)
    assert torch.equal(backbone.body.layer4[2].conv2.weight, source.layer4[2].conv2.weight)
    assert [b[0].weight.shape[1] for b in backbone.fpn.inner_blocks] == [128, 256, 512]
    scratch = fpn_backbone(NARROW)  # no weights: BN trains (torchvision: BatchNorm2d then)
    assert type(scratch.body.bn1) is torch.nn.BatchNorm2d


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"trainable_stages": 6}, r"trainable_stages=6 is out of range .* use 0..5"),
        ({"returned_stages": (0, 1)}, r"returned_stages=\[0, 1\] is out of range .* 1..4"),
    ],
)
def test_out_of_range_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fpn_backbone(NARROW, **kwargs)
