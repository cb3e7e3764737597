"""The feature cache returns an entry only when it is whole and made from this very request.

Each case damages or swaps the one entry a first call wrote, then asks again: the
answer must be the features computed afresh (the encoder runs), with one warning
naming the file, and the entry must be repaired (a third call is a load). Writers
of the same entry never collide; a folder that cannot be written warns once and the
features are still returned.
"""

from __future__ import annotations

import errno
import os
import pickle
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from neve.benchmarks import LabelledTensorDataset
from neve.models import extract_features


class Tiny(nn.Module):
    """A named encoder that counts its forward passes."""

    name = "tiny"
    input_size = 4

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.linear = nn.Linear(16, 5)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.linear(x.float().flatten(1))


def data(seed: int = 0, n: int = 12, dtype=torch.float32) -> LabelledTensorDataset:
    g = torch.Generator().manual_seed(seed)
    return LabelledTensorDataset(torch.rand(n, 1, 4, 4, generator=g).to(dtype), torch.arange(n) % 3)


def fresh(encoder, dataset, **kwargs):
    return extract_features(encoder, dataset, cache=False, progress=False, **kwargs)


def cached(encoder, dataset, folder, **kwargs):
    return extract_features(encoder, dataset, cache_dir=folder, progress=False, **kwargs)


def only_entry(folder):
    files = [p for p in folder.iterdir() if p.is_file()]
    assert len(files) == 1, files
    return files[0]


def _flip(raw: bytes, where: float) -> bytes:
    i = int(len(raw) * where)
    return raw[:i] + bytes([raw[i] ^ 0x40]) + raw[i + 1:]


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch ran-code-from-cache",))


DAMAGE = {  # raw bytes of the entry -> bytes written in its place
    "empty": lambda raw, other: b"",
    "truncated": lambda raw, other: raw[: len(raw) // 2],
    "one byte left": lambda raw, other: raw[:1],
    "flipped byte in the features": lambda raw, other: _flip(raw, 0.8),
    "flipped byte in the header": lambda raw, other: _flip(raw, 0.05),
    "wrong structure": lambda raw, other: _saved({"features": torch.ones(3, 7),
                                                  "targets": torch.zeros(3).long()}),
    "plain list": lambda raw, other: _saved([1, 2, 3]),
    "another dataset's entry": lambda raw, other: other,
    "a pickle that runs code": lambda raw, other: pickle.dumps(_RunsCode()),
}


def _saved(obj) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_or_foreign_entry_is_recomputed_with_a_warning_naming_it(case, tmp_path,
                                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    enc, ds = Tiny(), data(0)
    cached(enc, ds, tmp_path / "a")
    cached(enc, data(1), tmp_path / "b")
    entry, other = only_entry(tmp_path / "a"), only_entry(tmp_path / "b")
    entry.write_bytes(DAMAGE[case](entry.read_bytes(), other.read_bytes()))
    enc.calls = 0
    with pytest.warns(RuntimeWarning, match=str(entry)) as caught:
        features, targets = cached(enc, ds, tmp_path / "a")
    assert len([w for w in caught if str(entry) in str(w.message)]) == 1
    assert enc.calls > 0, "the damaged entry was returned"
    expected = fresh(enc, ds)
    assert torch.equal(features, expected[0]) and torch.equal(targets, expected[1])
    assert not (tmp_path / "ran-code-from-cache").exists()
    enc.calls = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = cached(enc, ds, tmp_path / "a")  # repaired: a plain load
    assert enc.calls == 0 and torch.equal(again[0], expected[0])


def test_changing_one_weight_value_recomputes(tmp_path):
    enc, ds = Tiny(), data(0)
    first = cached(enc, ds, tmp_path)
    with torch.no_grad():
        enc.linear.weight[0, 0] += 1.0  # names and shapes unchanged
    enc.calls = 0
    second = cached(enc, ds, tmp_path)
    assert enc.calls > 0
    assert torch.equal(second[0], fresh(enc, ds)[0]) and not torch.equal(first[0], second[0])


class NoData(torch.utils.data.Dataset):
    """Items without a ``.data`` array (only ``__getitem__``)."""

    def __init__(self, x, y):
        self.x, self.targets = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.targets[i])


def test_a_dataset_without_data_is_fingerprinted_over_every_item(tmp_path):
    x, y = torch.rand(200, 1, 4, 4), torch.arange(200) % 3
    enc = Tiny()
    cached(enc, NoData(x, y), tmp_path)
    x2 = x.clone()
    x2[1] += 0.5  # outside any strided sample of 64 items
    second = cached(enc, NoData(x2, y), tmp_path)
    assert torch.equal(second[0], fresh(enc, NoData(x2, y))[0])


def test_a_preprocess_callable_neve_cannot_identify_is_cached_only_under_a_key(tmp_path):
    enc, ds = Tiny(), data(0)
    double, triple = (lambda x: 2 * x), (lambda x: 3 * x)
    a = cached(enc, ds, tmp_path, preprocess=double)
    assert not any(tmp_path.iterdir()), "an unidentified callable was cached"
    b = cached(enc, ds, tmp_path, preprocess=triple)
    assert torch.equal(b[0], fresh(enc, ds, preprocess=triple)[0])
    assert not torch.equal(a[0], b[0])
    with pytest.raises(ValueError, match="cache_key"):
        extract_features(enc, ds, cache_dir=tmp_path, cache=True, preprocess=double)
    keyed = [cached(enc, ds, tmp_path, preprocess=f, cache_key=k)
             for f, k in ((double, "double"), (triple, "triple"))]
    assert len(list(tmp_path.iterdir())) == 2
    assert torch.equal(keyed[1][0], b[0]) and torch.equal(keyed[0][0], a[0])


def test_preprocess_modules_and_torchvision_transforms_are_told_apart(tmp_path):
    from torchvision import transforms

    from neve.models import ImagePreprocess
    from neve.models.feature_cache import identify

    enc = Tiny()
    enc.linear = nn.Linear(48, 5)
    ds = data(0)
    small, other = ImagePreprocess(8), ImagePreprocess(8, mean=(0.4,) * 3, std=(0.2,) * 3)
    for pre in (small, other, small):
        got = cached(enc, ds, tmp_path, preprocess=nn.Sequential(pre, nn.AvgPool2d(2)))
        assert torch.equal(got[0], fresh(enc, ds, preprocess=nn.Sequential(pre,
                                                                           nn.AvgPool2d(2)))[0])
    assert len(list(tmp_path.iterdir())) == 2
    assert identify(transforms.Compose([transforms.Normalize([0.5], [0.2])])) is not None
    assert identify(transforms.Normalize([0.5], [0.2])) != identify(
        transforms.Normalize([0.5], [0.3]))
    assert identify(transforms.Compose([transforms.Lambda(lambda x: x)])) is None
    assert identify(lambda x: x) is None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64, torch.uint8])
def test_every_input_dtype_works_with_the_cache(dtype, tmp_path):
    enc, ds = Tiny(), data(0, dtype=dtype)
    first = cached(enc, ds, tmp_path)
    enc.calls = 0
    second = cached(enc, ds, tmp_path)
    assert enc.calls == 0 and torch.equal(first[0], second[0])
    assert torch.equal(first[0], fresh(enc, ds)[0])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_images_are_refused_before_they_enter_the_cache(bad, tmp_path):
    ds = data(0)
    ds.data[5, 0, 1, 1] = bad
    with pytest.raises(ValueError, match="dataset"):
        cached(Tiny(), ds, tmp_path)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


# -- writers ---------------------------------------------------------------------------------
def test_two_writers_of_the_same_entry_never_collide(tmp_path, monkeypatch):
    """Both writers finish their file before either renames it (a barrier in os.replace)."""
    barrier, real = threading.Barrier(2, timeout=20), os.replace

    def replace(src, dst, *args, **kwargs):
        if str(dst).endswith(".pt"):
            barrier.wait()
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    ds, errors, results = data(0), [], []
    # Built here, not in the threads: Tiny seeds torch's global generator, which threads share.
    encoders = [Tiny(), Tiny()]

    def write(enc):
        try:
            results.append(cached(enc, ds, tmp_path))
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=write, args=(enc,)) for enc in encoders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    entry = only_entry(tmp_path)  # no temporary file left
    assert entry.suffix == ".pt" and torch.equal(results[0][0], results[1][0])
    enc = Tiny()
    assert torch.equal(cached(enc, ds, tmp_path)[0], results[0][0]) and enc.calls == 0


class _FullDisk:
    """A file object whose writes stop half-way with ENOSPC."""

    def __init__(self, file):
        self.file = file

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()

    def write(self, data):
        self.file.write(bytes(memoryview(data)[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.file, name)


@pytest.mark.parametrize("failure", ["full disk", "read-only folder"])
def test_a_folder_that_cannot_be_written_warns_once_and_returns_the_features(failure, tmp_path,
                                                                            monkeypatch):
    import tempfile

    from neve.models import atomic_file

    if failure == "full disk":
        real = os.fdopen
        monkeypatch.setattr(atomic_file.os, "fdopen", lambda *a, **k: _FullDisk(real(*a, **k)))
        cause = "no space"
    else:
        def refuse(*args, **kwargs):
            raise PermissionError(errno.EROFS, "Read-only file system")
        monkeypatch.setattr(tempfile, "mkstemp", refuse)
        cause = "read-only"
    enc, folder = Tiny(), tmp_path / "cache"
    with pytest.warns(RuntimeWarning, match=cause) as caught:
        results = [cached(enc, data(s), folder) for s in (0, 1)]
    messages = [str(w.message) for w in caught if cause in str(w.message)]
    assert len(messages) == 1 and str(folder) in messages[0]
    for s, got in enumerate(results):
        assert torch.equal(got[0], fresh(enc, data(s))[0])
    assert not folder.exists() or not any(folder.iterdir()), "a temporary file was left"


def test_a_full_disk_during_save_checkpoint_names_the_path_and_the_cause(tmp_path, monkeypatch):
    from avalanche.training.supervised import Naive

    from neve.models import atomic_file
    from neve.plugins import save_checkpoint

    model = nn.Linear(4, 2)
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                     criterion=nn.CrossEntropyLoss(), evaluator=None)
    path = tmp_path / "run.ckpt"
    save_checkpoint(strategy, path)
    before = path.read_bytes()
    real = os.fdopen
    monkeypatch.setattr(atomic_file.os, "fdopen", lambda *a, **k: _FullDisk(real(*a, **k)))
    with pytest.raises(OSError) as info:
        save_checkpoint(strategy, path)
    assert str(path) in str(info.value) and "no space" in str(info.value)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["run.ckpt"]


# -- byte-level damage, drawn at random -------------------------------------------------------
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@pytest.fixture(scope="module")
def one_entry(tmp_path_factory):
    folder = tmp_path_factory.mktemp("entry")
    enc, ds = Tiny(), data(0)
    cached(enc, ds, folder)
    entry = only_entry(folder)
    return entry, entry.read_bytes(), fresh(enc, ds)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0.0, 1.0, exclude_max=True), flips=st.lists(
    st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(1, 255)), max_size=3),
    truncate=st.booleans())
def test_random_truncations_and_byte_flips_are_never_returned(one_entry, cut, flips, truncate):
    entry, raw, expected = one_entry
    damaged = bytearray(raw[: int(len(raw) * cut)] if truncate else raw)
    for where, mask in flips:
        if damaged:
            damaged[int(len(damaged) * where)] ^= mask
    if bytes(damaged) == raw:
        return
    entry.write_bytes(bytes(damaged))
    enc = Tiny()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        features, targets = cached(enc, data(0), entry.parent)
    assert torch.equal(features, expected[0]) and torch.equal(targets, expected[1])
    assert enc.calls > 0 and any(str(entry) in str(w.message) for w in caught)
    assert entry.read_bytes() != bytes(damaged)  # repaired


def test_a_damaged_cached_convnet_is_trained_again_with_a_warning(tmp_path):
    from neve.models import pretrain_convnet

    ds = LabelledTensorDataset(torch.rand(24, 1, 8, 8), torch.arange(24) % 3)
    settings = dict(stages=2, filters=4, epochs=1, per_class=None, cache_dir=tmp_path)
    first = pretrain_convnet(ds, **settings)
    (entry,) = tmp_path.rglob("*.pt")
    entry.write_bytes(entry.read_bytes()[:100])
    with pytest.warns(RuntimeWarning, match=str(entry)):
        second = pretrain_convnet(ds, **settings)
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key  # the same seeded training
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]


_WRITER = r"""
import os, sys, time
from pathlib import Path

sys.path.insert(0, sys.argv[4])  # this test module's folder: its Tiny and data
import torch
from test_feature_cache import Tiny, data
from neve.models import extract_features

cache, rendezvous, me = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
real = os.replace

def replace(src, dst, *args, **kwargs):
    # Both processes hold a finished temporary file before either renames.
    (rendezvous / me).touch()
    deadline = time.monotonic() + 60
    while len(list(rendezvous.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    return real(src, dst, *args, **kwargs)

os.replace = replace
encoder = Tiny()
features, _ = extract_features(encoder, data(0), cache_dir=cache, progress=False)
torch.save(features, cache.parent / f"{me}.pt")
print(encoder.calls)
"""


def test_two_processes_writing_the_same_entry_never_collide(tmp_path):
    """Two interpreters write one cache entry at the same moment: both succeed, one entry stays."""
    cache, rendezvous = tmp_path / "cache", tmp_path / "rendezvous"
    cache.mkdir()
    rendezvous.mkdir()
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)

    def run(name):
        # -W error: a writer that lost its file only warns ("feature cache not written").
        command = [sys.executable, "-W", "error::RuntimeWarning", str(script), str(cache),
                   str(rendezvous), name, str(Path(__file__).parent)]
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    writers = [run("first"), run("second")]
    for writer in writers:
        _, err = writer.communicate(timeout=180)
        assert writer.returncode == 0, err
    assert sorted(p.name for p in rendezvous.iterdir()) == ["first", "second"]  # both renamed
    entry = only_entry(cache)  # no temporary file of either writer left
    assert entry.suffix == ".pt"
    reader = run("third")
    calls, err = reader.communicate(timeout=180)
    assert reader.returncode == 0, err
    assert int(calls) == 0  # a third interpreter loads the entry: it is whole and its own
    first, second, third = (torch.load(tmp_path / f"{n}.pt") for n in ("first", "second", "third"))
    assert torch.equal(first, second) and torch.equal(third, first)
    assert torch.equal(first, fresh(Tiny(), data(0))[0])
