"""`feedalign train` / `feedalign compare`: overrides, bad input, resume after SIGKILL, the compare table."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from feedalign.cli import main
from feedalign.training import Config

SMALL = ["--dataset", "mnist1d", "--architecture", "40-32-10", "--epochs", "2", "--threads", "1", "--quiet"]


def run_cli(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_flags_override_the_config_file_and_the_saved_config_repeats_the_run(tmp_path, capsys):
    (tmp_path / "c.toml").write_text('dataset = "mnist1d"\narchitecture = "40-32-10"\nlr = 0.5\nepochs = 2\nthreads = 1\n')
    runs = tmp_path / "runs"
    code, out, err = run_cli(["train", "--config", str(tmp_path / "c.toml"), "--lr", "0.05", "--rule", "dfa",
                              "--out-dir", str(runs), "--name", "a", "--quiet"], capsys)
    assert code == 0, err
    assert out.startswith(f"run: {runs / 'a'}") and "trained" in out
    saved = Config.from_file(runs / "a" / "config.toml")
    assert saved.lr == 0.05 and saved.rule == "dfa" and saved.epochs == 2
    assert saved.name is None  # so that repeating it makes a new run directory
    code, out, err = run_cli(["train", "--config", str(runs / "a" / "config.toml"), "--quiet"], capsys)
    assert code == 0, err
    (repeat,) = [d for d in runs.iterdir() if d.name != "a"]
    assert repeat.name.endswith("-dfa-mnist1d")
    assert _without_times(runs / "a") == _without_times(repeat)


def _without_times(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if "seconds" not in k} for row in rows]


BAD = [
    (["--config", "{dir}/unknown.toml"], "unknown setting 'learning_rate'; valid settings: dataset"),
    (["--config", "{dir}/wrongtype.yaml"], "lr must be a number; got 'fast'"),
    (["--config", "{dir}/missing.toml"], "does not exist"),
    (["--config", "{dir}/broken.toml"], "does not parse"),
    (["--config", "{dir}/broken.yaml"], "does not parse"),
    (["--momentum", "1.5"], r"momentum must be in [0, 1)"),
    (["--epochs", "two"], "argument --epochs: invalid int value"),
    (["--architecture", "784-100-10"], "does not fit mnist1d: it needs input size 40 and output size 10"),
    (["--architecture", "40-100-3"], "does not fit mnist1d"),
    (["--rule", "dfa", "--architecture", "40-10"], "needs at least one hidden layer"),
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["--resume", "{dir}"], "is not a run directory"),
    (["--resume", "{dir}/nowhere"], "is not a run directory"),
]


@pytest.mark.parametrize("argv, message", BAD)
def test_bad_input_is_one_line_status_2_and_leaves_no_run(tmp_path, capsys, argv, message):
    (tmp_path / "unknown.toml").write_text("learning_rate = 0.1\n")
    (tmp_path / "wrongtype.yaml").write_text("lr: fast\n")
    (tmp_path / "broken.toml").write_text("lr = = 1\n")
    (tmp_path / "broken.yaml").write_text("lr: [1,\n")
    runs = tmp_path / "runs"
    argv = [a.format(dir=tmp_path) for a in argv]
    code, out, err = run_cli(["train", "--dataset", "mnist1d", "--architecture", "40-32-10", "--out-dir", str(runs),
                              "--quiet", *argv] if "--resume" not in argv else ["train", *argv], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("feedalign: error: ") and "Traceback" not in err
    assert message in err
    assert not runs.exists() or not any(runs.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_without_a_gpu_is_refused(tmp_path, capsys):
    code, out, err = run_cli(["train", *SMALL, "--device", "cuda", "--out-dir", str(tmp_path / "runs")], capsys)
    assert code == 2 and "no CUDA device is available" in err and not (tmp_path / "runs").exists()


def test_an_unwritable_out_dir_is_one_line(capsys):
    code, out, err = run_cli(["train", *SMALL, "--out-dir", "/proc/feedalign-test-runs"], capsys)
    assert code == 2 and err.count("\n") == 1 and "/proc/feedalign-test-runs" in err


def test_an_internal_error_is_a_traceback_not_a_usage_error(tmp_path):
    """Only the project's own errors are bad input: a plain ValueError from a bug keeps its traceback."""
    code = ("import sys\n"
            "import feedalign.training.engine as engine\n"
            "def bug(*args, **kwargs):\n"
            "    raise ValueError('shapes do not match (a bug)')\n"
            "engine._train_epoch = bug\n"
            "from feedalign.cli import main\n"
            f"sys.exit(main(['train', *{SMALL!r}, '--out-dir', {str(tmp_path / 'runs')!r}]))\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    bug = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert bug.returncode == 1
    assert "Traceback (most recent call last)" in bug.stderr and "ValueError: shapes do not match" in bug.stderr
    assert "feedalign: error:" not in bug.stderr


def test_a_user_error_is_one_line_and_a_plain_value_error_propagates(tmp_path, capsys, monkeypatch):
    import feedalign.training.engine as engine
    from feedalign.errors import ConfigError

    def refuse(*args, **kwargs):
        raise ConfigError("a setting the user can change")

    monkeypatch.setattr(engine, "_train_epoch", refuse)
    code, out, err = run_cli(["train", *SMALL, "--out-dir", str(tmp_path / "a")], capsys)
    assert code == 2 and err == "feedalign: error: a setting the user can change\n"

    def bug(*args, **kwargs):
        raise ValueError("internal")

    monkeypatch.setattr(engine, "_train_epoch", bug)
    with pytest.raises(ValueError, match="internal"):
        main(["train", *SMALL, "--out-dir", str(tmp_path / "b")])
    assert "feedalign: error" not in capsys.readouterr().err


def test_resume_refuses_setting_overrides(tmp_path, capsys):
    code, out, err = run_cli(["train", *SMALL, "--out-dir", str(tmp_path), "--name", "r"], capsys)
    assert code == 0
    code, out, err = run_cli(["train", "--resume", str(tmp_path / "r"), "--lr", "0.5"], capsys)
    assert code == 2 and "drop --lr" in err


def test_resume_after_sigkill_is_bitwise_identical(tmp_path, capsys):
    """Kill a real `feedalign train` process mid-run, resume it, and compare with an uninterrupted run."""
    settings = ["--dataset", "mnist1d", "--architecture", "40-64-64-10", "--rule", "dfa", "--epochs", "6",
                "--batch-size", "16", "--threads", "1", "--optimizer", "sgd", "--momentum", "0.9",
                "--schedule", "cosine", "--progress", "lines"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "feedalign", "train", *settings, "--out-dir", str(tmp_path),
                             "--name", "killed"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = run_dir / "checkpoints" / "latest.pt"
    deadline = time.monotonic() + 120
    while not latest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)  # well inside epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and latest.exists()
    assert not (run_dir / "summary.json").exists()
    killed_epoch = torch.load(latest, weights_only=True)["epoch"]
    assert killed_epoch < 6

    code, out, err = run_cli(["train", "--resume", str(run_dir), "--quiet"], capsys)
    assert code == 0, err
    code, out, err = run_cli(["train", *settings, "--out-dir", str(tmp_path), "--name", "whole", "--quiet"], capsys)
    assert code == 0, err

    resumed = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)
    whole = torch.load(tmp_path / "whole" / "checkpoints" / "latest.pt", weights_only=True)
    assert resumed["epoch"] == whole["epoch"] == 6
    assert resumed["model"].keys() == whole["model"].keys() and "feedback" in whole["model"]
    for key in whole["model"]:
        assert torch.equal(resumed["model"][key], whole["model"][key]), key
    assert _without_times(run_dir) == _without_times(tmp_path / "whole")
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (run_dir, tmp_path / "whole"))
    for key in ("best_epoch", "test_error_at_best", "final_test_error", "outcome", "outcome_epoch", "steps"):
        assert s1[key] == s2[key], key


def test_compare_prints_the_table_and_writes_its_files(tmp_path, capsys):
    code, out, err = run_cli(["compare", "--dataset", "mnist1d", "--architecture", "40-32-10", "--epochs", "2",
                              "--threads", "1", "--rules", "bp,dfa", "--seeds", "2", "--out-dir", str(tmp_path),
                              "--name", "cmp", "--quiet"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["rule", "test", "error"]
    assert [line.split()[0] for line in lines[2:4]] == ["bp", "dfa"]
    assert "±" in lines[2] and "2 trained" in lines[2]
    cmp = tmp_path / "cmp"
    for name in ("compare.json", "compare.md", "curves.png", "bp-seed0/summary.json", "dfa-seed1/summary.json"):
        assert (cmp / name).is_file(), name
    data = json.loads((cmp / "compare.json").read_text())
    assert [r["rule"] for r in data["rows"]] == ["bp", "dfa"] and data["seeds"] == [0, 1]
    assert len(data["rows"][0]["test_errors"]) == 2


def test_compare_in_worker_processes_gives_the_same_numbers(tmp_path, capsys):
    args = ["compare", "--dataset", "mnist1d", "--architecture", "40-32-10", "--epochs", "2", "--threads", "1",
            "--rules", "bp,fa,dfa", "--seeds", "2", "--out-dir", str(tmp_path), "--quiet"]
    code, _, err = run_cli(args + ["--name", "one", "--population", "off"], capsys)  # bitwise: separate runs
    assert code == 0, err
    code, _, err = run_cli(args + ["--name", "two", "--workers", "2"], capsys)
    assert code == 0, err
    one, two = (json.loads((tmp_path / n / "compare.json").read_text()) for n in ("one", "two"))
    assert [r["test_errors"] for r in one["rows"]] == [r["test_errors"] for r in two["rows"]]
    assert _without_times(tmp_path / "one" / "fa-seed1") == _without_times(tmp_path / "two" / "fa-seed1")
    code, _, err = run_cli(args + ["--name", "bad", "--workers", "0"], capsys)
    assert code == 2 and "--workers must be at least 1" in err


def test_compare_trains_seeds_as_a_population_by_default(tmp_path, capsys):
    """The seeds of bp and dfa train as populations (feedalign.training.population), wm separately;
    the numbers equal separate runs' to float tolerance and every run directory is an ordinary one."""
    args = ["compare", "--dataset", "mnist1d", "--architecture", "40-32-10", "--epochs", "1", "--threads", "1",
            "--rules", "dfa,wm", "--seeds", "2", "--train-size", "1280", "--out-dir", str(tmp_path), "--quiet"]
    for name, extra in (("pop", []), ("off", ["--population", "off"])):
        code, _, err = run_cli(args + ["--name", name] + extra, capsys)
        assert code == 0, err
    pop, off = (json.loads((tmp_path / n / "compare.json").read_text()) for n in ("pop", "off"))
    for a, b in zip(pop["rows"], off["rows"]):
        assert a["test_errors"] == pytest.approx(b["test_errors"], abs=2e-3)
    for run in ("dfa-seed0", "dfa-seed1", "wm-seed1"):
        assert (tmp_path / "pop" / run / "checkpoints" / "latest.pt").is_file()
        assert json.loads((tmp_path / "pop" / run / "summary.json").read_text())["steps"] == 20
    code, _, err = run_cli(args + ["--name", "bad", "--population", "maybe"], capsys)
    assert code == 2


def test_compare_validates_every_rule_before_training(tmp_path, capsys):
    code, out, err = run_cli(["compare", "--dataset", "mnist1d", "--architecture", "40-10", "--rules", "bp,dfa",
                              "--out-dir", str(tmp_path), "--quiet"], capsys)
    assert code == 2 and "needs at least one hidden layer" in err and not any(tmp_path.iterdir())
