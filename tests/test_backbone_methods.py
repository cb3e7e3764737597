"""Every method of neve on the backbones of pretrained_backbone (issue #15.2).

Tiny random-weight models (timm ``vit_tiny_patch16_224`` at 32 px, torchvision
``resnet18`` and ``squeezenet1_1``) on 20-60 random images: each test compares
what the method stored or fitted with the same quantity computed directly from
the backbone's features.
"""

import pytest
import torch
from avalanche.benchmarks import nc_benchmark
from torch import nn

from neve.benchmarks import (
    CurriculumDesigner,
    LabelledTensorDataset,
    encode_episodes,
    instance_test_episodes,
    paired_conditions,
    run_episodes,
)
from neve.models import PretrainedClassifier, pretrained_backbone
from neve.models.ridge import joint_ridge_solution
from neve.plugins import ClassifierAlignmentPlugin, SlowLearnerPlugin
from neve.strategies import SLCA, AnalyticCIL, NearestPrototype


def images(n_classes: int, per_class: int, channels: int = 1, size: int = 28, seed: int = 0):
    """Random images whose brightness depends on the class, and their labels."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n_classes).repeat_interleave(per_class)
    x = torch.rand(len(y), channels, size, size, generator=g) * 0.5
    x = x + (y.float() / (2 * n_classes)).view(-1, 1, 1, 1)
    return LabelledTensorDataset(x, y)


def features_of(backbone, data) -> torch.Tensor:
    backbone.eval()
    with torch.no_grad():
        return backbone(backbone.transform(data.data)).double()


def test_slca_on_a_timm_vit_with_layernorm_only():
    pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = pretrained_backbone("timm/vit_tiny_patch16_224", weights=None, input_size=32)
    kinds = {type(m) for m in vit.modules()}
    assert any(issubclass(k, nn.LayerNorm) for k in kinds)
    assert not any(issubclass(k, nn.modules.batchnorm._BatchNorm) for k in kinds)
    data = images(4, 10)
    bm = nc_benchmark(data, data, n_experiences=2, task_labels=False, seed=0,
                      fixed_class_order=[0, 1, 2, 3])
    model = PretrainedClassifier(vit, num_classes=2, preprocess=True)
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    strategy = SLCA(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4),
        train_mb_size=10, train_epochs=1, eval_mb_size=40,
        slow_learner=SlowLearnerPlugin(0.01),
        alignment=ClassifierAlignmentPlugin(samples_per_class=16, epochs=1, batch_size=16),
    )
    for exp in bm.train_stream:
        strategy.train(exp)
    groups = sorted(strategy.optimizer.param_groups, key=lambda g: g["lr"])
    assert [g["lr"] for g in groups] == pytest.approx([1e-4, 1e-2])
    backbone_ids = {id(p) for p in vit.parameters()}
    assert {id(p) for p in groups[0]["params"]} == backbone_ids
    moved = [not torch.equal(before[k], v) for k, v in vit.state_dict().items()]
    assert any(moved)  # the slow learner trains the ViT
    # the stored class statistics are the class means of the final ViT's features
    feats = features_of(vit, data)
    stats = strategy.alignment.stats
    assert sorted(stats.means) == [0, 1, 2, 3]
    for c in (2, 3):  # learned last: the ViT has not changed since
        assert torch.allclose(stats.means[c].double(), feats[data.targets == c].mean(0),
                              atol=1e-5)


def test_analytic_cil_on_a_torchvision_resnet_equals_the_joint_ridge_solution():
    torch.manual_seed(0)
    resnet = pretrained_backbone("torchvision/resnet18", weights=None, input_size=32)
    data = images(4, 10, channels=3, seed=1)
    bm = nc_benchmark(data, data, n_experiences=2, task_labels=False, seed=0,
                      fixed_class_order=[0, 1, 2, 3])
    acil = AnalyticCIL(backbone=nn.Sequential(resnet.transform, resnet), feature_dim=512,
                       buffer_size=64, gamma=1.0, train_mb_size=8, eval_mb_size=40)
    for exp in bm.train_stream:
        acil.train(exp)
    with torch.no_grad():
        buffered = acil.model.buffer(features_of(resnet, data).float())
        w = joint_ridge_solution(buffered, data.targets, 1.0)
    assert torch.allclose(acil.head.weight, w, rtol=1e-6, atol=1e-8)


def test_curriculum_designer_teacher_squeezenet_as_the_paper():
    """The paper's teacher: SqueezeNet 1.1's whole 1000-d output (random weights here)."""
    torch.manual_seed(0)
    teacher = pretrained_backbone("torchvision/squeezenet1_1", weights=None, input_size=64)
    assert teacher.feature_dim == 1000
    data = images(5, 6, seed=2)
    designer = CurriculumDesigner(teacher, max_per_class=None).fit(data)
    feats = features_of(teacher, data)
    protos = torch.stack([feats[data.targets == c].mean(0) for c in range(5)])
    assert torch.allclose(designer.prototypes_, protos, rtol=1e-5, atol=1e-7)
    u = protos / protos.norm(dim=1, keepdim=True)
    cosine = (1 - u @ u.T).fill_diagonal_(0)
    assert torch.allclose(designer.distances_, cosine, atol=1e-6)
    assert len(designer.rank()) == 120


def test_instance_test_encoders_on_a_timm_vit():
    pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = pretrained_backbone("timm/vit_tiny_patch16_224", weights=None, input_size=32)
    data = images(2, 20, seed=3)
    episodes = list(encode_episodes(
        paired_conditions(clean=instance_test_episodes(data, 1, images_per_episode=20,
                                                       support_sets=4, seed=0)), vit))
    bm = episodes[0]["clean"]
    query = bm.test_stream[0].dataset
    x = torch.stack([query[i][0] for i in range(len(query))])
    source = data.data[bm.source_indices]
    assert x.shape == (20, 192)
    assert torch.allclose(x.double(), features_of(vit, LabelledTensorDataset(
        source, torch.zeros(20, dtype=torch.long))), atol=1e-5)
    res = run_episodes(lambda: NearestPrototype(num_classes=20, feature_dim=vit.feature_dim),
                       episodes, progress=False)
    assert res.mean("clean") == 1.0  # clean queries are the support images themselves
