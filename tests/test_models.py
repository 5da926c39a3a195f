"""Models from names (ResNets, the registry, module:function), describe()'s accounting of every error path,
the CIFAR-10 recipe (per-channel normalisation, seeded crop + flip) and `feedalign train --model resnet20`."""
from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import feedalign
import feedalign.data
from feedalign.cli import main
from feedalign.convert import BackpropFallbackWarning, describe
from feedalign.data.augment import normalize_channels, random_crop_flip
from feedalign.errors import ConfigError
from feedalign.models import CifarResNet, ShortcutA, build_architecture, resnet, resnet20
from feedalign.training import Config

FA_TYPE = ("fa", "usf", "kp")


def write_cifar(root: Path, rows: int) -> Path:
    """Six CIFAR-10 python batches of ``rows`` random images each, in the original pickle format."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        batch = {b"labels": [int(v) for v in rng.integers(0, 10, rows)],
                 b"data": rng.integers(0, 256, size=(rows, 3072), dtype=np.uint8)}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return root


@pytest.fixture
def cifar(tmp_path, monkeypatch):
    monkeypatch.setenv("FEEDALIGN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FEEDALIGN_DATA", str(write_cifar(tmp_path / "data", rows=16)))
    return tmp_path


# -- ResNets ---------------------------------------------------------------------------------------------------

def test_resnet20_is_he_et_al_cifar_resnet():
    model = resnet20()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) + 1 == 20 and all(c.bias is None for c in convs)
    # "0.27M" (He et al. 2016, Table 6): convs 432 + 13824 + 50688 + 202752, BatchNorm 1376, fc 650 = 269722, the count
    # Idelbayev's pytorch_resnet_cifar10 (BioTorch's source) prints for its option-A ResNet-20
    assert sum(p.numel() for p in model.parameters()) == 269722
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert len([m for m in resnet(56).modules() if isinstance(m, nn.Conv2d)]) == 55
    shortcuts = [m for m in model.modules() if isinstance(m, ShortcutA)]
    assert len(shortcuts) == 2  # option A where the stage changes: no parameters
    x = torch.randn(1, 16, 32, 32)
    out = shortcuts[0](x)
    assert out.shape == (1, 32, 16, 16) and torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert not out[:, :8].any() and not out[:, 24:].any()
    with pytest.raises(ConfigError, match="depth 6n \\+ 2"):
        resnet(21)


def test_build_architecture_names_and_user_functions():
    assert isinstance(build_architecture("resnet20", "tanh", (3, 32, 32), 10), CifarResNet)
    assert isinstance(build_architecture("784-10", "tanh", (1, 28, 28), 10), nn.Sequential)
    with pytest.raises(ConfigError, match="cannot import 'no_such_module_xyz'"):
        build_architecture("no_such_module_xyz:build", "tanh", (3, 32, 32), 10)
    with pytest.raises(ConfigError, match="has no function 'nothing'"):
        build_architecture("feedalign.models:nothing", "tanh", (3, 32, 32), 10)
    with pytest.raises(ConfigError, match="needs square images"):
        build_architecture("resnet20", "tanh", (40,), 10)
    for bad in ("resnet21", "mod:"):
        with pytest.raises(ConfigError, match="named model: .*resnet20|module:function"):
            Config(architecture=bad)


# -- describe: no silent backprop ------------------------------------------------------------------------------

@pytest.mark.parametrize("rule", FA_TYPE)
def test_mlp_and_resnet20_have_no_backprop_rows(rule):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no BackpropFallbackWarning either
        mlp = feedalign.convert(feedalign.mlp("20-16-16-4"), rule)
        net = feedalign.convert(resnet20(), rule, strict=True)
    assert describe(mlp).backprop == [] and {r.signal for r in describe(mlp)} == {rule}
    rows = describe(net)
    assert rows.backprop == []
    by_kind = {}
    for r in rows:
        by_kind.setdefault(r.kind, set()).add(r.signal)
    assert by_kind.pop("BatchNorm2d") == {"local"}  # elementwise gain: counted apart, see convert.ModuleHandler
    assert set().union(*by_kind.values()) == {rule}
    weights = [r for r in rows if r.parameter == "weight" and r.signal == rule]
    assert len(weights) == 20  # 19 convolutions and the classifier
    assert f"rule={rule}" in repr(net).splitlines()[1]  # extra_repr: the counts


def test_plain_model_describes_as_bp_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = feedalign.convert(_Attention(), "bp")
    rows = describe(model)
    assert rows.backprop == [] and {r.signal for r in rows} == {"bp", "local"}
    assert "signal" in str(rows).splitlines()[0]


class _Attention(nn.Module):
    """A tiny transformer-style block: Linear embedding, nn.MultiheadAttention, LayerNorm, Linear readout."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
        self.norm = nn.LayerNorm(8)
        self.readout = nn.Linear(8, 3)

    def forward(self, x):
        h = self.embed(x)
        h = self.norm(h + self.attention(h, h, h)[0])
        return self.readout(h.mean(1))


class _Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(4, 8, batch_first=True)
        self.conv = nn.Conv1d(8, 8, 3)
        self.readout = nn.Linear(8, 3)

    def forward(self, x):
        h = self.lstm(x)[0].transpose(1, 2)
        return self.readout(self.conv(h).mean(2))


@pytest.mark.parametrize("rule", ["fa", "usf", "kp"])
def test_attention_and_recurrent_models_have_no_backprop_rows(rule):
    """nn.MultiheadAttention and nn.LSTM are swapped for feedalign.models.sequence's modules, whose weight products go
    through converted layers; so are the builders' transformer and LSTM."""
    for make in (_Attention, feedalign.vit_tiny, feedalign.lstm_classifier):
        with warnings.catch_warnings():
            warnings.simplefilter("error", BackpropFallbackWarning)
            rows = describe(feedalign.convert(make(), rule))
        assert rows.backprop == [] and set(rows.counts()) <= {rule, "local"}, (make, rows.summary())


class _Unsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(4, 8, batch_first=True)
        self.conv = nn.Conv1d(8, 8, 3)
        self.bilinear = nn.Bilinear(8, 8, 8)
        self.readout = nn.Linear(8, 3)

    def forward(self, x):
        h = self.conv(self.lstm(x)[0].transpose(1, 2)).mean(2)
        return self.readout(self.bilinear(h, h))


@pytest.mark.parametrize("make, named", [(_Unsupported, ["conv (Conv1d)", "bilinear (Bilinear)"])])
def test_unsupported_modules_warn_once_and_strict_refuses(make, named):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = feedalign.convert(make(), "fa")
    messages = [str(w.message) for w in caught if issubclass(w.category, BackpropFallbackWarning)]
    assert len(messages) == 1 and all(n in messages[0] for n in named), messages
    assert "out_proj" not in messages[0]  # named once, by the module that hides it
    rows = describe(model)
    assert rows.backprop and {r.signal for r in rows.backprop} == {"backprop"}
    assert {r.signal for r in rows if r.module.startswith(("lstm", "readout"))} == {"fa"}
    loss = model(torch.randn(2, 5, 4)).sum()
    loss.backward()  # still trains: the warning is about which path the error takes, not a failure
    with pytest.raises(ConfigError, match="cannot reach " + named[0].replace("(", r"\(").replace(")", r"\)")):
        feedalign.convert(make(), "usf", strict=True)


def test_tapping_rules_refuse_layers_used_functionally():
    with pytest.raises(ValueError, match="need the cut points: convert\\(model, rule, taps="):
        feedalign.convert(_Attention(), "dfa")  # after Launay et al. 2020: the user names the block outputs
    with pytest.raises(TypeError, match="strict must be True or False"):
        feedalign.convert(feedalign.mlp("4-4-2"), "fa", strict=1)


# -- the CIFAR recipe on tensors -------------------------------------------------------------------------------

def test_random_crop_flip_matches_a_per_image_reference():
    x = torch.randn(6, 3, 8, 8)
    fill = torch.tensor([-1.0, -2.0, -3.0])
    out = random_crop_flip(x, padding=2, generator=torch.Generator().manual_seed(5), pad_value=fill)
    g = torch.Generator().manual_seed(5)  # the same draws, in the documented order
    offsets = torch.randint(0, 5, (2, 6), generator=g)
    flips = torch.rand(6, generator=g) < 0.5
    for n in range(6):
        padded = fill.view(3, 1, 1).expand(3, 12, 12).clone()
        padded[:, 2:10, 2:10] = x[n]
        crop = padded[:, offsets[0, n]:offsets[0, n] + 8, offsets[1, n]:offsets[1, n] + 8]
        assert torch.equal(out[n], crop.flip(2) if flips[n] else crop)
    assert flips.any() and not flips.all() and (offsets != 2).any()  # the draw exercised both cases
    again = random_crop_flip(x, padding=2, generator=torch.Generator().manual_seed(5), pad_value=fill)
    assert torch.equal(out, again)


def test_per_channel_normalisation_uses_the_training_split(cifar):
    data = feedalign.data.load("cifar10", validation_size=16, flatten=False)
    data = normalize_channels(data)
    assert torch.allclose(data.train_x.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(data.train_x.std((0, 2, 3)), torch.ones(3), atol=1e-4)
    assert data.pad_value.shape == (3,) and (data.pad_value < 0).all()


def test_config_model_alias_and_milestones(tmp_path):
    (tmp_path / "c.toml").write_text('model = "resnet20"\ndataset = "cifar10"\nschedule = "multistep"\n'
                                     'milestones = "100,150,200"\n')
    config = Config.from_file(tmp_path / "c.toml")
    assert config.architecture == "resnet20" and config.schedule_milestones() == [100, 150, 200]
    with pytest.raises(ConfigError, match="name the same setting"):
        Config.from_dict({"model": "resnet20", "architecture": "lenet5"})
    with pytest.raises(ConfigError, match="needs milestones"):
        Config(schedule="multistep")
    with pytest.raises(ConfigError, match="increasing positive epochs"):
        Config(milestones="150,100")


# -- from the command line -------------------------------------------------------------------------------------

CIFAR_RUN = ["--dataset", "cifar10", "--validation-size", "16", "--epochs", "1", "--batch-size", "32",
             "--normalize", "channel", "--augment", "crop-flip", "--init", "xavier", "--weight-decay", "5e-4",
             "--schedule", "multistep", "--milestones", "1", "--lr", "0.1", "--threads", "1", "--quiet"]


def test_train_resnet20_on_cifar_format_files_from_the_cli(cifar, capsys):
    runs = cifar / "runs"
    for name in ("a", "b"):
        code = main(["train", "--model", "resnet20", "--rule", "usf", *CIFAR_RUN, "--out-dir", str(runs),
                     "--name", name])
        out, err = capsys.readouterr()
        assert code == 0, err
    rows = [(runs / n / "metrics.jsonl").read_text().splitlines() for n in ("a", "b")]
    strip = [[{k: v for k, v in json.loads(r).items() if "seconds" not in k} for r in rs] for rs in rows]
    assert strip[0] == strip[1] and len(strip[0]) == 2  # the seed fixes crops and flips: same numbers again
    assert 'architecture = "resnet20"' in (runs / "a" / "config.toml").read_text()


@pytest.mark.parametrize("model, dataset, rule", [("vit-tiny", "mnist", "fa"), ("vit-tiny", "mnist", "dfa"),
                                                  ("lstm", "mnist", "usf"), ("lstm", "mnist1d", "dfa")])
def test_transformer_and_lstm_from_the_cli(model, dataset, rule, tmp_path, capsys):
    try:
        feedalign.data.load(dataset, download=False)
    except feedalign.data.DatasetError as err:
        pytest.skip(str(err).splitlines()[0])
    code = main(["train", "--model", model, "--dataset", dataset, "--rule", rule, "--epochs", "1", "--train-size",
                 "256", "--validation-size", "64", "--test-size", "64", "--threads", "1", "--quiet",
                 "--out-dir", str(tmp_path), "--name", "run"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["best_epoch"] is not None and f'architecture = "{model}"' in (tmp_path / "run" / "config.toml").read_text()


def test_user_model_and_bad_combinations_from_the_cli(cifar, tmp_path, monkeypatch, capsys):
    (tmp_path / "mynets.py").write_text(
        "from torch import nn\n"
        "def build(input_shape, num_classes):\n"
        "    return nn.Sequential(nn.Conv2d(input_shape[0], 4, 3), nn.ReLU(), nn.Flatten(),\n"
        "                         nn.Linear(4 * 30 * 30, num_classes))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code = main(["train", "--model", "mynets:build", "--rule", "fa", *CIFAR_RUN, "--out-dir", str(tmp_path / "r")])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    code = main(["train", "--model", "3072-10", "--augment", "crop-flip", "--dataset", "cifar10",
                 "--validation-size", "16", "--quiet"])
    assert code == 2 and "augment = 'crop-flip' crops images" in capsys.readouterr().err


# -- feedalign reproduce biotorch-cifar --------------------------------------------------------------------------

def test_reproduce_biotorch_cifar_quick_and_without_data(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FEEDALIGN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FEEDALIGN_DATA", str(tmp_path / "empty"))
    code = main(["reproduce", "biotorch-cifar", "--quick", "--out", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert code == 2 and "feedalign data fetch cifar10" in err and "FEEDALIGN_DATA" in err
    assert len(err.strip().splitlines()) == 1
    monkeypatch.setenv("FEEDALIGN_DATA", str(write_cifar(tmp_path / "data", rows=24)))
    code = main(["reproduce", "biotorch-cifar", "--quick", "--out", str(tmp_path / "out"), "--workers", "2"])
    assert code == 0, capsys.readouterr().err
    results = json.loads((tmp_path / "out" / "biotorch-cifar" / "results.json").read_text())
    claims = {c["key"]: c for c in results["claims"]}
    assert claims["resnet20_fa"]["paper_value"] == 32.16 and claims["resnet20_usf"]["paper_value"] == 10.05
    assert {k.split("_")[1] for k in claims if k.startswith("resnet20_")} == {
        "bp", "fa", "dfa", "usf", "brsf", "frsf", "kp", "wm", "drtp"}
    run_config = Config.from_file(next((tmp_path / "out" / "biotorch-cifar").glob("runs-*/*-dfa-seed0/config.toml")))
    assert (run_config.architecture, run_config.lr, run_config.weight_decay, run_config.augment) == (
        "resnet20", 0.001, 1e-4, "crop-flip")


def test_a_resumed_run_replays_the_same_crops_and_flips(cifar):
    from feedalign.training import resume, train

    class StopInEpochTwo:
        def on_step(self, step, model, batch):
            if step == 3:  # 64 training images, batch 32: the first step of epoch 2, after epoch 1's checkpoint
                raise KeyboardInterrupt

    config = Config(dataset="cifar10", architecture="lenet5", activation="relu", rule="fa", validation_size=16,
                    epochs=2, batch_size=32, normalize="channel", augment="crop-flip", alignment_every=0,
                    out_dir=str(cifar / "runs"), threads=1)
    whole = train(config.replace(name="whole"), progress="none")
    with pytest.raises(KeyboardInterrupt):
        train(config.replace(name="cut"), [StopInEpochTwo()], progress="none")
    resumed = resume(cifar / "runs" / "cut", progress="none")

    def strip(rows):
        return [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]
    assert strip(resumed.metrics) == strip(whole.metrics) and len(whole.metrics) == 3


def test_register_model_validates_and_the_registry_builds_it(monkeypatch):
    from feedalign import models
    from feedalign.models import registry
    monkeypatch.setattr(registry, "MODELS", dict(registry.MODELS))  # leave the real registry as it was
    spec = models.ModelSpec(lambda shape, classes, act: nn.Sequential(nn.Flatten(), nn.Linear(8, classes)),
                            inputs="native", description="test", needs="")
    models.register_model("tiny-test", spec)
    assert models.input_layout("tiny-test") == "native" and Config(architecture="tiny-test").architecture
    assert build_architecture("tiny-test", "tanh", (8,), 3)(torch.randn(2, 8)).shape == (2, 3)
    for bad in ("tiny-test", "784-10", "a:b", ""):
        with pytest.raises(ValueError, match="empty, taken"):
            models.register_model(bad, spec)
    with pytest.raises(ValueError, match="unknown input layout"):
        models.register_model("other", models.ModelSpec(spec.build, inputs="sideways", description=""))
    with pytest.raises(TypeError, match="expects a ModelSpec"):
        models.register_model("other", spec.build)
