"""feedalign among the tools around it: file modes, --version, Dataset/DataLoader, TensorBoard, W&B and
MLflow, no apt-get by itself, sweep specs checked up front, shipped examples, torch.compile, and the wheel."""
import dataclasses
import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

import feedalign
from feedalign import data
from feedalign.cli import main
from feedalign.data import mnist as mnist_mod
from feedalign.errors import DatasetError
from feedalign.files import atomic_write, new_file_mode

ROOT = Path(__file__).parents[1]
SMALL = ["--dataset", "mnist1d", "--architecture", "40-16-10", "--epochs", "1", "--threads", "1", "--quiet"]


@pytest.fixture
def umask():
    """Set the process umask for one test; the old one comes back after it."""
    old = os.umask(0o022)
    os.umask(old)

    def set_(mask):
        os.umask(mask)
    yield set_
    os.umask(old)


def modes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_file()}


# -- files: the umask's mode, not mkstemp's 0600 ---------------------------------------------------

def test_every_file_of_a_run_is_0644_under_umask_022(tmp_path, umask, capsys):
    umask(0o022)
    assert main(["train", *SMALL, "--rule", "dfa", "--alignment-every", "20", "--out-dir", str(tmp_path),
                 "--name", "r"]) == 0
    found = modes(tmp_path / "r")
    assert {"config.toml", "metrics.jsonl", "metrics.csv", "summary.json", "alignment.jsonl", "accuracy.png",
            "checkpoints/latest.pt", "checkpoints/best.pt"} <= set(found)
    assert {name: oct(mode) for name, mode in found.items() if mode != 0o644} == {}


def test_atomic_write_follows_the_umask(tmp_path, umask):
    for mask, expected in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        umask(mask)
        assert new_file_mode() == expected
        atomic_write(tmp_path / f"f{mask}", "x")
        assert stat.S_IMODE((tmp_path / f"f{mask}").stat().st_mode) == expected


# -- --version ----------------------------------------------------------------------------------

def test_version_flag_prints_the_package_version():
    out = subprocess.run([sys.executable, "-m", "feedalign", "--version"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert out.returncode == 0 and out.stdout.strip() == f"feedalign {feedalign.__version__}"


# -- data as a torch Dataset -----------------------------------------------------------------------

def test_split_dataset_works_with_dataloader_samplers_and_transforms():
    splits = data.load("mnist1d", seed=3)
    train = splits.dataset("train")
    assert isinstance(train, torch.utils.data.Dataset) and len(train) == len(splits.train_x)
    x, y = train[5]
    assert torch.equal(x, splits.train_x[5]) and int(y) == int(splits.train_y[5])
    # A sampler picks the examples; a DataLoader collates them into the same rows as indexing the tensors.
    order = list(torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:40])
    loader = torch.utils.data.DataLoader(train, batch_size=16, sampler=order)
    xs, ys = zip(*loader)
    assert [len(b) for b in xs] == [16, 16, 8]
    assert torch.equal(torch.cat(xs), splits.train_x[order]) and torch.equal(torch.cat(ys), splits.train_y[order])
    noisy = splits.dataset("test", transform=lambda v: v * 2, target_transform=lambda t: t + 100)
    x, y = noisy[0]
    assert torch.equal(x, splits.test_x[0] * 2) and int(y) == int(splits.test_y[0]) + 100
    assert len(splits.dataset("val")) == len(splits.val_x)


def test_split_dataset_bad_arguments():
    splits = data.load("toy1d")
    with pytest.raises(DatasetError, match="split must be one of train, val, validation, test; got 'dev'"):
        splits.dataset("dev")
    with pytest.raises(TypeError, match="transform must be callable or None; got int"):
        splits.dataset("train", transform=3)


# -- no apt-get unless asked -------------------------------------------------------------------------

def test_fashion_fetch_never_runs_apt_get_by_itself(tmp_path, monkeypatch):
    """Even as root with apt-get on PATH, a failed fetch names the command instead of running it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "apt-get-ran"
    (bin_dir / "apt-get").write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    (bin_dir / "apt-get").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(mnist_mod, "_debian_folder", lambda: None)  # the package is not installed
    monkeypatch.setitem(data.REGISTRY, "fashion-mnist", dataclasses.replace(mnist_mod.FASHION_MNIST, mirrors=()))
    with pytest.raises(DatasetError, match=r"sudo apt-get install -y dataset-fashion-mnist.*--install"):
        data.fetch("fashion-mnist", cache_dir=tmp_path / "cache", progress=False)
    assert not marker.exists()


def test_install_flag_is_for_fashion_mnist_only(capsys):
    assert main(["data", "fetch", "mnist", "--install"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--install applies to fashion-mnist only" in err


# -- logging to TensorBoard, W&B (offline) and MLflow (file store), each read back with its own reader --------

@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed")
def test_log_tensorboard_writes_event_files_with_metrics_and_angles(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    assert main(["train", *SMALL, "--epochs", "2", "--rule", "fa", "--alignment-every", "25", "--log", "tensorboard",
                 "--out-dir", str(tmp_path), "--name", "r"]) == 0
    run = tmp_path / "r"
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][1:]
    summary = json.loads((run / "summary.json").read_text())
    logged = events.Scalars("metrics/val_accuracy")
    assert [e.value for e in logged] == pytest.approx([m["val_accuracy"] for m in metrics])
    assert logged[-1].step == summary["steps"]
    alignment = [json.loads(line) for line in (run / "alignment.jsonl").read_text().splitlines()]
    angles = events.Scalars("alignment/layer1/signal_angle")
    expected = [(r["step"], r["signal_angle"]) for r in alignment if r["layer"] == 1]
    assert [(e.step, pytest.approx(e.value)) for e in angles] == expected
    assert {"metrics/train_loss", "metrics/test_accuracy", "alignment/layer1/update_angle"} <= tags
    assert stat.S_IMODE(next((run / "tensorboard").iterdir()).stat().st_mode) & 0o044 == 0o044  # readable by others


def _logged_run(tmp_path, name: str) -> tuple[Path, list[dict], list[dict]]:
    """A tiny FA run with ``--log NAME``; its directory, metrics rows (epochs 1, 2) and alignment rows."""
    assert main(["train", *SMALL, "--epochs", "2", "--rule", "fa", "--alignment-every", "25", "--log", name,
                 "--out-dir", str(tmp_path), "--name", "r"]) == 0
    run = tmp_path / "r"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][1:]
    alignment = [json.loads(line) for line in (run / "alignment.jsonl").read_text().splitlines()]
    return run, metrics, alignment


def _expected(run: Path, metrics: list[dict], alignment: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """What every logger must have sent: (step, value) per series, from the run directory's own files."""
    per_epoch = json.loads((run / "summary.json").read_text())["steps"] // len(metrics)
    return {"metrics/val_accuracy": [(m["epoch"] * per_epoch, m["val_accuracy"]) for m in metrics],
            "metrics/train_loss": [(m["epoch"] * per_epoch, m["train_loss"]) for m in metrics],
            "metrics/epoch": [(m["epoch"] * per_epoch, m["epoch"]) for m in metrics],
            "alignment/layer1/signal_angle": [(r["step"], r["signal_angle"]) for r in alignment if r["layer"] == 1]}


def wandb_records(path: Path):
    """The records of a W&B run file (``run-ID.wandb``), parsed with W&B's own protobuf schema.

    wandb >= 0.19 writes the file from its Go core and ships no Python reader, so this reads its
    LevelDB-log framing (7-byte file header; 32 KiB blocks of chunks, each with a 7-byte header:
    CRC, length, type 1 full / 2 first / 3 middle / 4 last)."""
    import struct

    from wandb.proto import wandb_internal_pb2
    raw = path.read_bytes()
    assert raw[:4] == b":W&B", raw[:7]
    pos, parts = 7, b""
    while pos + 7 <= len(raw):
        room = 32768 - pos % 32768
        if room < 7:  # a block's tail too short for a header is padding
            pos += room
            continue
        length, kind = struct.unpack("<HB", raw[pos + 4:pos + 7])
        if kind == 0:  # zero padding
            pos += room
            continue
        parts += raw[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            yield record
            parts = b""


@pytest.mark.integration
def test_log_wandb_offline_run_holds_the_run_directorys_metrics_and_angles(tmp_path, monkeypatch, capsys):
    """W&B with no network (WANDB_MODE=offline): the offline run file holds each epoch's metrics and each
    alignment measurement at its optimizer step, equal to metrics.jsonl and alignment.jsonl."""
    for var, value in (("WANDB_MODE", "offline"), ("WANDB_SILENT", "true"), ("WANDB_PROJECT", "feedalign-test"),
                       ("WANDB_CONFIG_DIR", str(tmp_path / "wb-config")),
                       ("WANDB_CACHE_DIR", str(tmp_path / "wb-cache")),
                       ("WANDB_DATA_DIR", str(tmp_path / "wb-data"))):
        monkeypatch.setenv(var, value)
    run, metrics, alignment = _logged_run(tmp_path, "wandb")
    (path,) = (run / "wandb").glob("offline-run-*/run-*.wandb")  # the logger puts W&B's files in the run directory
    # W&B's core process writes the file after finish() returns (one time in five it held only its
    # header when read at once): the run is all there once its exit record is
    deadline = time.monotonic() + 60
    while not any(r.WhichOneof("record_type") == "exit" for r in wandb_records(path)):
        assert time.monotonic() < deadline, "no exit record in the W&B run file after 60 s"
        time.sleep(0.05)
    logged: dict[str, list[tuple[int, float]]] = {}
    config = {}
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                logged.setdefault(key, []).append((record.history.step.num, json.loads(item.value_json)))
        elif kind in ("run", "config"):  # init's config comes in the run record, later updates on their own
            items = record.run.config.update if kind == "run" else record.config.update
            config.update({item.key: json.loads(item.value_json) for item in items})
    for key, expected in _expected(run, metrics, alignment).items():
        assert [(step, pytest.approx(value)) for step, value in expected] == logged[key], key
    assert config["rule"] == "fa" and config["architecture"] == "40-16-10"  # the run's config came along


@pytest.mark.integration
def test_log_mlflow_file_store_holds_the_run_directorys_metrics_and_angles(tmp_path, monkeypatch, capsys):
    """MLflow with a local file store (MLFLOW_TRACKING_URI=file:...), read back with MLflow's own client."""
    import mlflow
    from mlflow.tracking import MlflowClient
    store = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses the file store unless asked
    mlflow.set_tracking_uri(store.as_uri())  # the URI a previous test in this process may have cached
    run, metrics, alignment = _logged_run(tmp_path, "mlflow")
    client = MlflowClient(tracking_uri=store.as_uri())
    (found,) = client.search_runs(experiment_ids=["0"])
    assert found.info.run_name == "r" and found.info.status == "FINISHED"
    assert found.data.params["rule"] == "fa" and found.data.params["architecture"] == "40-16-10"
    for key, expected in _expected(run, metrics, alignment).items():
        history = sorted((m.step, m.value) for m in client.get_metric_history(found.info.run_id, key))
        assert [(step, pytest.approx(value)) for step, value in expected] == history, key


def test_log_bad_names_are_one_line_errors(tmp_path, capsys, monkeypatch):
    assert main(["train", *SMALL, "--log", "tensorbored", "--out-dir", str(tmp_path)]) == 2
    assert "unknown logger 'tensorbored'; choose from tensorboard, wandb, mlflow" in capsys.readouterr().err
    for name in ("wandb", "mlflow", "tensorboard"):
        # The test extra installs all three; None in sys.modules is Python's own "cannot be imported"
        # (find_spec gives None, import raises), which is what a user without the package sees.
        with monkeypatch.context() as blocked:
            blocked.setitem(sys.modules, name, None)
            assert importlib.util.find_spec(name) is None
            assert main(["train", *SMALL, "--log", name, "--out-dir", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"pip install 'feedalign[{name}]'" in err
    assert not any(tmp_path.iterdir())  # nothing trained


# -- sweeps: unfit specs stop before any run; legends; shipped examples ----------------------------------

SPEC = """
name = "s"
out_dir = "{out}"
[base]
dataset = "mnist"
architecture = "784-8-10"
epochs = 1
[grid]
rule = ["bp", "fa"]
lr = [0.1, 0.01]
"""


def test_unfit_sweep_stops_before_the_first_run(tmp_path, capsys):
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.format(out=tmp_path / "out"))
    assert main(["sweep", str(spec), "--set", "epochs=1", "--set", "dataset=mnist1d"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert ("architecture '784-8-10' does not fit mnist1d: it needs input size 40 and output size 10" in err
            and "(and 3 more of the 4 runs); nothing was run" in err)
    assert not (tmp_path / "out").exists()
    assert main(["sweep", str(spec), "--set", "dataset=mnist1d", "--dry-run"]) == 2
    assert main(["sweep", str(spec), "--set", "dataset=mnist1d", "--set", "architecture=40-8-10", "--dry-run"]) == 0
    # regression tasks: their output width comes from the generated data
    assert main(["sweep", str(spec), "--set", "dataset=linear-task", "--dry-run"]) == 2
    assert "does not fit linear-task: it needs input size 30 and output size 10" in capsys.readouterr().err


def test_heatmap_legend_names_every_letter_it_shows():
    from feedalign.sweeps.plots import _letters, outcome_legend
    rows = [{"outcome": o} for o in ("trained", "invalid", "crashed", "mystery")]
    legend = outcome_legend(rows)
    assert legend == "T trained  X crashed  I invalid  ? no outcome"
    for letter in _letters(rows):
        if letter.isalpha() or letter == "?":
            assert f"{letter} " in legend
    assert outcome_legend([{"outcome": "invalid"}]) == "I invalid"


def test_sweep_example_copies_a_shipped_spec_that_runs_as_the_readme_says(tmp_path, monkeypatch, capsys):
    from feedalign.cli.sweep_cmd import example_names
    from feedalign.sweeps import load_spec
    monkeypatch.chdir(tmp_path)
    assert example_names() == ["sensitivity-dfa-wd", "sensitivity-init-lr"]
    assert main(["sweep", "--example", "sensitivity-init-lr"]) == 0
    copied = tmp_path / "sensitivity-init-lr.toml"
    assert copied.read_bytes() == (ROOT / "src/feedalign/sweeps/examples/sensitivity-init-lr.toml").read_bytes()
    assert main(["sweep", "--example", "sensitivity-init-lr"]) == 2  # never overwrites
    assert "already exists" in capsys.readouterr().err
    assert main(["sweep", "--example", "nope"]) == 2
    assert "shipped examples: sensitivity-dfa-wd, sensitivity-init-lr" in capsys.readouterr().err
    assert main(["sweep"]) == 2
    # The README's reduced command, as written (--dry-run: check and list, run nothing)
    assert main(["sweep", "sensitivity-init-lr.toml", "--set", "epochs=1", "--set", "dataset=mnist1d",
                 "--set", "architecture=40-200-100-10", "--dry-run"]) == 0
    assert "120 runs" in capsys.readouterr().out
    for name in example_names():  # every shipped spec fits as written
        from feedalign.sweeps.spec import check_fit
        spec = load_spec(ROOT / "src/feedalign/sweeps/examples" / f"{name}.toml")
        check_fit(spec.points(), name)


def test_readme_sweep_commands_match_the_cli():
    readme = (ROOT / "README.md").read_text()
    assert "feedalign sweep --example sensitivity-init-lr" in readme
    assert ("feedalign sweep sensitivity-init-lr.toml --set epochs=1 --set dataset=mnist1d --set "
            "architecture=40-200-100-10") in readme


# -- torch.compile --------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("rule", ["fa", "dfa"])
@pytest.mark.parametrize("sizes", ["12-10-8-3", "12-10-3"])  # one hidden layer: dynamo traces the Python node
def test_converted_model_trains_under_torch_compile_as_without(rule, sizes, recwarn):
    """A few SGD steps through ``torch.compile(model)`` leave the weights an uncompiled twin reaches."""
    torch.manual_seed(0)
    model = feedalign.convert(feedalign.mlp(sizes, activation="tanh"), rule, seed=0)
    twin = feedalign.convert(feedalign.mlp(sizes, activation="tanh"), rule, seed=0)
    twin.load_state_dict(model.state_dict())
    compiled = torch.compile(model)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (model, twin)]
    gen = torch.Generator().manual_seed(1)
    for _ in range(4):
        x, y = torch.randn(16, 12, generator=gen), torch.randint(0, 3, (16,), generator=gen)
        for net, opt in zip((compiled, twin), opts):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    assert feedalign.feedback_matrices(model)  # still a converted model with its feedback
    assert not [w for w in recwarn if "C/C++ Python extension" in str(w.message)]  # no graph break at the node


# -- packaging ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_wheel_and_sdist_ship_py_typed_and_example_specs_and_the_wheel_runs(tmp_path):
    """Build both from a copy of the tree; install the wheel (no deps) into a fresh venv and run its script,
    with the test environment's packages (torch, ...) on PYTHONPATH for the dependencies."""
    src = tmp_path / "tree"
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    dist = tmp_path / "dist"
    build = ("import sys; from setuptools import build_meta as b; out = sys.argv[1]; "  # build_wheel changes sys.argv
             "print(b.build_wheel(out)); print(b.build_sdist(out))")
    out = subprocess.run([sys.executable, "-c", build, str(dist)], cwd=src, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"feedalign/py.typed", "feedalign/sweeps/examples/sensitivity-init-lr.toml",
            "feedalign/sweeps/examples/sensitivity-dfa-wd.toml", "feedalign/models/__init__.py",
            "feedalign/bench/__init__.py", "feedalign/rules/fused.py",
            "feedalign/experiments/paper_numbers.toml"} <= set(names)
    import tarfile
    members = tarfile.open(sdist).getnames()
    assert any(m.endswith("src/feedalign/py.typed") for m in members)
    assert any(m.endswith("src/feedalign/sweeps/examples/sensitivity-init-lr.toml") for m in members)
    assert any(m.endswith("src/feedalign/models/sequence.py") for m in members)
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "Requires-Dist: torch>=2.1\n" in metadata and "Typing :: Typed" in metadata
    assert "Provides-Extra: tensorboard" in metadata  # no Project-URL: the project has no public address yet

    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the tree under test must not shadow the wheel
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    out = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                          "--no-index", "-q", str(wheel)], capture_output=True, text=True, timeout=300, env=env,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    deps = {p.split("site-packages")[0] + "site-packages" for p in (torch.__file__, json.__file__)
            if "site-packages" in p}
    env["PYTHONPATH"] = os.pathsep.join(sorted(deps))
    where = subprocess.run([str(python), "-c", "import feedalign; print(feedalign.__file__)"], env=env,
                           capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr  # the installed wheel, not the tree
    for argv in (["--version"], ["compare", "--help"], ["sweep", "--example", "sensitivity-dfa-wd"]):
        ran = subprocess.run([str(venv / "bin" / "feedalign"), *argv], env=env, capture_output=True, text=True,
                             timeout=120, cwd=tmp_path)
        assert ran.returncode == 0, ran.stderr
    assert (tmp_path / "sensitivity-dfa-wd.toml").is_file()
