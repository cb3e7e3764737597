"""G-ACIL on Si-Blurry CIFAR-100 with a frozen backbone: A_last after the 5 tasks.

Zhuang et al., "GACL: Exemplar-Free Generalized Analytic Continual Learning",
NeurIPS 2024: Si-Blurry (Moon et al., ICCV 2023; 50% disjoint classes, 10%
blurry samples, 5 tasks), a frozen DeiT-S/16 pretrained on 611 ImageNet classes
that do not overlap the benchmark's, a random buffer of 5000 units and gamma 100.
Those weights are not public in timm: pass them with ``--weights``. The frozen
features are computed once; the analytic head sees the online stream in
experiences of ``--batch-size`` samples (its solution does not depend on it) and
is evaluated on the test samples of the classes seen so far every
``--eval-period`` samples, as Si-Blurry's authors do: ``a_auc`` is the area under
those accuracies, ``a_last`` the accuracy on the seen classes at the end.

    python examples/reproduce/gacil.py --data-root data --weights deit_s_611.pth
    python examples/reproduce/gacil.py --smoke
"""

from __future__ import annotations

import time

from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.plugins import EvaluationPlugin
from common import backbone, fake_dataset, parser, real_dataset, report
from torch import nn

from neve.benchmarks import LabelledTensorDataset, si_blurry_benchmark
from neve.models import extract_features
from neve.plugins import AnytimeAccuracy, LastAccuracy, SeenClassesEvaluation
from neve.strategies import AnalyticCIL

PAPER = {"a_last": 70.31,
         "source": "Zhuang et al., NeurIPS 2024 (GACL), Si-Blurry CIFAR-100, A_last of G-ACIL"}
ACC = "Top1_Acc_Stream/eval_phase/test_stream/Task000"


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--backbone", default="timm/deit_small_patch16_224")
    p.add_argument("--buffer-size", type=int, default=5000)
    p.add_argument("--gamma", type=float, default=100.0)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--eval-period", type=int, default=1000,
                   help="samples of the stream between two evaluations on the seen classes")
    args = p.parse_args(argv)
    start = time.perf_counter()
    RNGManager.set_random_seeds(args.seed)
    if args.smoke:
        args.buffer_size, args.eval_period = 128, 20
        train, test = (fake_dataset("cifar100", 6, 10, args.seed + k) for k in (0, 1))
    else:
        train, test = (real_dataset("cifar100", args.data_root, t) for t in (True, False))
    net = backbone(args, args.backbone, "timm/vit_tiny_patch16_224", input_size=224)
    train, test = (LabelledTensorDataset(*extract_features(net, d, device=args.device,
                                                          cache=not args.smoke, progress=False))
                   for d in (train, test))
    bm = si_blurry_benchmark(train, test, n_tasks=5, disjoint_class_ratio=0.5,
                             blurry_sample_ratio=0.1, seed=args.seed, online=True,
                             experience_size=args.batch_size)
    periodic = SeenClassesEvaluation(test, every=args.eval_period)
    auc, last = AnytimeAccuracy(), LastAccuracy()
    strategy = AnalyticCIL(
        backbone=nn.Identity(), feature_dim=net.feature_dim, buffer_size=args.buffer_size,
        gamma=args.gamma, buffer_seed=args.seed, train_mb_size=args.batch_size,
        eval_mb_size=1024, device=args.device, plugins=[periodic],
        evaluator=EvaluationPlugin(auc, last, accuracy_metrics(stream=True), loggers=[]),
    )
    for exp in bm.train_stream:
        strategy.train(exp)
    strategy.eval(periodic.seen_stream())
    metrics = {"a_last": 100 * last.result(), "a_auc": 100 * auc.result(),
               "seen_class_accuracies": [100 * a for a in auc.accuracies],
               "all_test_classes": 100 * strategy.eval(bm.test_stream)[ACC]}
    protocol = {"benchmark": "Si-Blurry CIFAR-100, 5 tasks, 50% disjoint, 10% blurry",
                "backbone": net.name, "frozen": True, "buffer_size": args.buffer_size,
                "gamma": args.gamma, "online_batch": args.batch_size,
                "eval_period": args.eval_period, "evaluated_on": "the classes seen so far"}
    return report("gacil", args, metrics, PAPER, protocol, start)


if __name__ == "__main__":
    main()
