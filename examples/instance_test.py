"""Instance-recognition test (Kowadlo et al., 2022) in a few lines, with neve and Avalanche.

Each episode: 20 distinct images of one class, each its own label, shown as S
support sets; then name each image again from a clean, occluded or noisy copy.
Baselines learn on the frozen EfficientNet-Lite0 features; with ``--convnets``
the authors' own learners run too: a 3-stage conv net pretrained on Fashion-MNIST
classes 0-4 and tuned on all layers (Pretrain+Tune), and a 4-stage ProtoNet
meta-trained on instance episodes of those classes, scored by dot product; the
episodes then draw from the held-out classes 5-9.

    python examples/instance_test.py                     # Fashion-MNIST, 20 episodes
    python examples/instance_test.py --dataset digits    # sklearn digits
    python examples/instance_test.py --support-sets 20 --episodes 50
    python examples/instance_test.py --convnets          # + the authors' conv-net learners
"""

from __future__ import annotations

import argparse

import torch

from neve.benchmarks import (
    BackboneFeatures,
    IndexedSubset,
    digits,
    encode_episodes,
    fashion_mnist,
    instance_test_episodes,
    paired_conditions,
    run_episodes,
)
from neve.models import meta_train_protonet, pretrain_convnet, pretrained_backbone
from neve.strategies import NearestPrototype, paper_replay_settings, pretrain_tune, tune_network


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=["fashion_mnist", "digits"], default="fashion_mnist")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--support-sets", type=int, default=4, help="S; 20/S images per set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--convnets", action="store_true",
                        help="also the authors' conv nets (Fashion-MNIST only)")
    args = parser.parse_args(argv)

    data = fashion_mnist()[1] if args.dataset == "fashion_mnist" else digits(seed=args.seed)[0]
    if args.convnets:
        if args.dataset != "fashion_mnist":
            parser.error("--convnets needs --dataset fashion_mnist (28x28 images)")
        train = fashion_mnist()[0]
        body = pretrain_convnet(train, [0, 1, 2, 3, 4], stages=3, seed=args.seed)  # cached
        protonet = meta_train_protonet(train, [0, 1, 2, 3, 4], stages=4, seed=args.seed)
        data = IndexedSubset(data, torch.nonzero(data.targets >= 5).flatten())  # held out
    conditions = {"clean": (None, 0.0), "occlusion r=0.3": ("occlusion", 0.3),
                  "noise p=0.4": ("noise", 0.4)}
    # same seed and presentation: the conditions share their support sets, so
    # each learner is trained once per episode and scored on every condition
    episodes = paired_conditions(**{
        name: instance_test_episodes(data, args.episodes, images_per_episode=20,
                                     support_sets=args.support_sets, corruption=corruption,
                                     severity=severity, seed=args.seed)
        for name, (corruption, severity) in conditions.items()
    })
    images = list(episodes)
    backbone = pretrained_backbone("efficientnet-lite0", input_size=64)
    episodes = list(encode_episodes(images, backbone, device=args.device))

    replay_sets, replay_samples = paper_replay_settings(args.support_sets)
    learners = {
        "Pretrain+Tune": lambda: pretrain_tune(20, lr=0.01, steps_per_set=5, device=args.device),
        "nearest prototype": lambda: NearestPrototype(num_classes=20, device=args.device),
        "prototype, dot product": lambda: NearestPrototype(
            num_classes=20, normalize=False, scoring="dot", device=args.device),
    }
    if replay_sets:
        learners["Pretrain+Tune + replay"] = lambda: pretrain_tune(
            20, lr=0.01, steps_per_set=5, replay_sets=replay_sets,
            replay_samples=replay_samples, device=args.device)

    inputs = dict.fromkeys(learners, episodes)
    if args.convnets:
        learners["conv Pretrain+Tune"] = lambda: tune_network(body, 20, device=args.device)
        inputs["conv Pretrain+Tune"] = images
        if replay_sets:
            learners["conv Pretrain+Tune + replay"] = lambda: tune_network(
                body, 20, replay_sets=replay_sets, replay_samples=replay_samples,
                device=args.device)
            inputs["conv Pretrain+Tune + replay"] = images
        learners["conv ProtoNet (dot)"] = lambda: NearestPrototype(
            num_classes=20, feature_dim=protonet.feature_dim, normalize=False, scoring="dot",
            device=args.device)
        inputs["conv ProtoNet (dot)"] = list(encode_episodes(images, BackboneFeatures(protonet)))

    print(f"\n{args.dataset}: {args.episodes} episodes, {args.support_sets} support sets "
          f"of {20 // args.support_sets} images; accuracy (mean +- 95% CI)")
    print(f"{'learner':28s}" + "".join(f"{c:>20s}" for c in conditions))
    table = {}
    for name, factory in learners.items():
        res = run_episodes(factory, inputs[name], name=name, progress=False)
        table[name] = res.to_dict(per_episode=False)
        print(f"{name:28s}" + "".join(
            f"{100 * res.mean(c):13.1f} +- {100 * res.ci95(c):4.1f}" for c in conditions))
    return table


if __name__ == "__main__":
    main()
