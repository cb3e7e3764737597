"""SLCA state survives neve's checkpointing: a resumed run ends exactly where a full one ends."""

from pathlib import Path

import torch
from resume_harness import run_full_and_resumed

from neve.plugins import ClassifierAlignmentPlugin, SlowLearnerPlugin

RUN = Path(__file__).with_name("slca_digits_run.py")


def test_resumed_slca_run_ends_exactly_where_uninterrupted_run_ends(tmp_path):
    a, b = run_full_and_resumed(RUN, tmp_path)
    assert sorted(b["accs"]) == [3, 4]
    for k in a["state"]:
        assert torch.equal(a["state"][k], b["state"][k]), k
    for i in (3, 4):
        assert a["accs"][i] == b["accs"][i]
    assert sorted(a["means"]) == sorted(b["means"]) == list(range(10))
    for c in a["means"]:
        assert torch.equal(a["means"][c], b["means"][c])
        assert torch.equal(a["scatters"][c], b["scatters"][c])
    assert a["losses"] == b["losses"] and len(a["losses"]) == 4


def test_plugin_state_dicts_round_trip():
    plugin = ClassifierAlignmentPlugin(samples_per_class=8, covariance="shared", seed=3)
    gen = torch.Generator().manual_seed(0)
    plugin.stats.update(torch.randn(40, 4, generator=gen), torch.arange(40) % 3, group=0)
    plugin.experiences_seen = 1
    plugin.unaligned_head = {"w": torch.randn(3, 4, generator=gen)}
    copy = ClassifierAlignmentPlugin()
    copy.load_state_dict(plugin.state_dict())
    assert copy.samples_per_class == 8 and copy.seed == 3 and copy.experiences_seen == 1
    assert copy.stats.covariance == "shared"
    torch.testing.assert_close(copy.stats.shared_covariance(), plugin.stats.shared_covariance())
    assert torch.equal(copy.unaligned_head["w"], plugin.unaligned_head["w"])
    x1, _ = plugin.stats.sample(5, torch.Generator().manual_seed(1))
    x2, _ = copy.stats.sample(5, torch.Generator().manual_seed(1))
    assert torch.equal(x1, x2)
    slow = SlowLearnerPlugin(0.0)
    slow2 = SlowLearnerPlugin()
    slow2.load_state_dict(slow.state_dict())
    assert slow2.backbone_lr_scale == 0.0
