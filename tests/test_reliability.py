"""Reliability at the edges (issue 18): file-system problems, edited or damaged run directories, values that
cannot train. Each bad input is one line on stderr and exit status 2, and leaves no half-written file."""
import errno
import json
import os
import shutil

import pytest

import feedalign.files
from feedalign.cli import main
from feedalign.errors import ConfigError, RunDirError, os_error_line
from feedalign.training import Config, resume, train
from feedalign.training import integrity

SMALL = ["--dataset", "mnist1d", "--architecture", "40-16-10", "--epochs", "2", "--threads", "1", "--quiet",
         "--train-size", "256", "--test-size", "100", "--alignment-every", "0"]


def run_cli(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err) -> str:
    """The error line of a refused command: exit 2, one 'feedalign: error:' line, no traceback."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("feedalign: error:")]
    assert len(lines) == 1, err
    return lines[0]


def leftovers(folder) -> list[str]:
    """Temporary files of atomic writes left anywhere under ``folder`` (there must be none)."""
    return [str(p) for p in folder.rglob("*.part")]


@pytest.fixture
def small_run(tmp_path, capsys):
    code, _, err = run_cli(["train", *SMALL, "--out-dir", tmp_path / "runs", "--name", "r"], capsys)
    assert code == 0, err
    return tmp_path / "runs" / "r"


# -- 1. file-system problems ----------------------------------------------------------------------------------

def test_each_fixable_os_error_names_the_path_and_the_fix(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = {
        errno.ENOSPC: "free some space", errno.EROFS: "read-only", errno.EISDIR: "is a folder where a file is needed",
        errno.EACCES: "cannot create it in folder", errno.ENOTDIR: "is a file where a folder is needed",
    }
    for code, fix in cases.items():
        path = str(a_file / "out.json") if code == errno.ENOTDIR else str(tmp_path / "missing.json")
        line = os_error_line(OSError(code, os.strerror(code), path))
        assert fix in line and path in line, line
    assert "already exists" in os_error_line(FileExistsError(errno.EEXIST, "File exists", str(tmp_path)))
    assert "exists but is not a folder" in os_error_line(FileExistsError(errno.EEXIST, "File exists", str(a_file)))
    assert os_error_line(OSError(errno.ENOSPC, "No space left on device")) is not None  # a full disk names no path
    assert os_error_line(OSError(errno.EBADF, "Bad file descriptor")) is None  # about no path: a bug, traceback


def test_a_real_bug_keeps_its_traceback(monkeypatch):
    import feedalign.cli.data_cmd as data_cmd

    def broken(args):
        raise OSError(errno.EBADF, "Bad file descriptor")
    monkeypatch.setattr(data_cmd, "_list", broken)
    with pytest.raises(OSError):
        main(["data", "list"])


@pytest.mark.parametrize("command", [
    ["data", "fetch", "mnist1d", "--cache-dir", "{file}"],
    ["reproduce", "toy1d", "--quick", "--out", "{file}"],
    ["compare", *SMALL, "--rules", "bp", "--out-dir", "{file}/sub"],
    ["sweep", "{spec}", "--out-dir", "{file}", "--no-plot"],
    ["bench", "--smoke", "--json", "{file}/bench.json"],
    ["plot", "curves", "{run}", "-o", "{file}/curves.png"],
])
def test_a_file_where_a_folder_is_needed(command, tmp_path, request, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    spec = tmp_path / "spec.toml"
    spec.write_text('name = "s"\n[base]\ndataset = "mnist1d"\narchitecture = "40-16-10"\nepochs = 1\n'
                    '[grid]\nrule = ["bp"]\n')
    run = request.getfixturevalue("small_run") if "{run}" in command else None
    argv = [c.format(file=a_file, spec=spec, run=run) for c in command]
    line = one_line_error(*run_cli(argv, capsys)[::2])
    assert str(a_file) in line and "is a file where a folder is needed" in line
    assert a_file.read_text() == "keep me"


@pytest.mark.parametrize("command", [
    ["bench", "--smoke", "--json", "{folder}"],
    ["plot", "curves", "{run}", "-o", "{folder}"],
    ["train", "--config", "{folder}"],
    ["sweep", "{folder}"],
])
def test_a_folder_where_a_file_is_needed(command, tmp_path, request, capsys):
    folder = tmp_path / "fig.png"
    folder.mkdir()
    run = request.getfixturevalue("small_run") if "{run}" in command else None
    argv = [c.format(folder=folder, run=run) for c in command]
    line = one_line_error(*run_cli(argv, capsys)[::2])
    assert str(folder) in line and "folder" in line


def test_disk_full_while_writing_a_checkpoint_keeps_the_run_resumable(tmp_path, capsys, monkeypatch):
    """ENOSPC from the writer (simulated at the rename of epoch 2's best.pt): one line, the epoch-1 files intact."""
    real_replace = os.replace

    def full_disk(src, dst, *a, **k):
        if str(dst).endswith("best.pt") and (tmp_path / "runs" / "r" / "checkpoints" / "latest.pt").exists():
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst, *a, **k)
    monkeypatch.setattr(feedalign.files.os, "replace", full_disk)
    code, _, err = run_cli(["train", *SMALL, "--lr", "0.5", "--out-dir", tmp_path / "runs", "--name", "r"], capsys)
    line = one_line_error(code, err)
    run_dir = tmp_path / "runs" / "r"
    assert line == (f"feedalign: error: cannot write {run_dir / 'checkpoints' / 'best.pt'}: no space left on the device "
                    "(disk full or over quota); free some space or choose a folder on another disk, then run again")
    assert f"feedalign train --resume {run_dir}" in err
    assert leftovers(tmp_path) == []
    monkeypatch.undo()
    for name in ("best.pt", "latest.pt"):  # what the manifest holds still matches what is on disk
        assert integrity.verify(run_dir, f"checkpoints/{name}")
    code, out, err = run_cli(["train", "--resume", run_dir, "--quiet"], capsys)
    assert code == 0, err and "best epoch" in out


def test_disk_full_before_the_first_checkpoint_leaves_nothing(tmp_path, capsys, monkeypatch):
    def full_disk(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(feedalign.files.os, "fsync", full_disk)
    line = one_line_error(*run_cli(["train", *SMALL, "--out-dir", tmp_path / "runs"], capsys)[::2])
    assert "no space left on the device" in line and str(tmp_path / "runs") in line
    assert list((tmp_path / "runs").iterdir()) == []


def test_read_only_file_system_is_one_line(tmp_path, capsys, monkeypatch):
    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "runs" / "r"))
    monkeypatch.setattr("pathlib.Path.mkdir", read_only)
    line = one_line_error(*run_cli(["train", *SMALL, "--out-dir", tmp_path / "runs", "--name", "r"], capsys)[::2])
    assert line == (f"feedalign: error: cannot write {tmp_path / 'runs' / 'r'}: the file system there is read-only; "
                    "choose an output folder on a writable disk")


@pytest.fixture
def read_only_folder(tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:  # root (with CAP_DAC_OVERRIDE) writes anyway: then there is nothing to test
        (folder / "probe").write_text("")
    except PermissionError:
        yield folder
    else:
        pytest.skip("this user writes into a 0555 folder (root ignores permissions)")
    finally:
        folder.chmod(0o755)


@pytest.mark.parametrize("command", [
    ["train", *SMALL, "--out-dir", "{folder}"],
    ["bench", "--smoke", "--json", "{folder}/b.json"],
    ["data", "fetch", "mnist1d", "--cache-dir", "{folder}"],
])
def test_a_read_only_output_folder(command, read_only_folder, capsys):
    argv = [c.format(folder=read_only_folder) for c in command]
    line = one_line_error(*run_cli(argv, capsys)[::2])
    assert "permission denied" in line and f"chmod u+rwx {read_only_folder}" in line
    assert list(read_only_folder.iterdir()) == []


# -- 2. run-directory integrity ---------------------------------------------------------------------------------

def _edit(path, old, new):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_resume_refuses_an_edited_config_naming_the_changed_fields(small_run, capsys):
    _edit(small_run / "config.toml", "lr = 0.05", "lr = 0.1")
    _edit(small_run / "config.toml", 'architecture = "40-16-10"', 'architecture = "40-64-10"')
    line = one_line_error(*run_cli(["train", "--resume", small_run], capsys)[::2])
    assert "was edited since the run started (architecture: '40-16-10' -> '40-64-10'; lr: 0.05 -> 0.1)" in line
    _edit(small_run / "config.toml", "lr = 0.1", "lr = 'fast'")  # no longer a config at all
    assert "no longer reads as a config" in one_line_error(*run_cli(["train", "--resume", small_run], capsys)[::2])


def test_a_damaged_checkpoint_is_refused_by_every_reader_and_kept(small_run, capsys, tmp_path):
    best = small_run / "checkpoints" / "best.pt"
    damaged = bytearray(best.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    best.write_bytes(bytes(damaged))
    for argv in (["train", "--resume", small_run], ["plot", "hidden", small_run, "-o", tmp_path / "h.png"]):
        line = one_line_error(*run_cli(argv, capsys)[::2])
        assert f"'{best}' is damaged: its SHA-256 is not the one recorded" in line
        assert best.read_bytes() == bytes(damaged)  # the evidence stays
    with pytest.raises(RunDirError, match="damaged"):
        integrity.read_checkpoint(small_run, "best.pt")


def test_a_finished_run_resumes_to_itself_and_plots(small_run, capsys, tmp_path):
    code, out, err = run_cli(["train", "--resume", small_run, "--quiet"], capsys)
    assert code == 0 and "note" not in err
    code, out, err = run_cli(["plot", "hidden", small_run, "-o", tmp_path / "h.png"], capsys)
    assert code == 0, err


def test_a_run_directory_without_manifest_resumes_unverified_and_says_so_once(tmp_path, capsys):
    config = Config(dataset="mnist1d", architecture="40-16-10", epochs=2, threads=1, train_size=256, test_size=100,
                    alignment_every=0, out_dir=str(tmp_path), name="old")
    run_dir = train(config.replace(epochs=1), progress="none").run_dir
    (run_dir / "integrity.json").unlink()  # as an older feedalign left it
    (run_dir / "summary.json").unlink()
    _edit(run_dir / "config.toml", "epochs = 1", "epochs = 2")  # unverifiable: accepted as it is
    result = resume(run_dir, progress="none")
    err = capsys.readouterr().err
    assert err.count("has no integrity.json") == 1 and result.summary["epochs_completed"] == 2
    assert integrity.verify(run_dir, "checkpoints/latest.pt")  # recorded from then on
    resume(run_dir, progress="none")
    assert "integrity.json" not in capsys.readouterr().err


def test_a_kill_between_manifest_and_checkpoint_leaves_a_readable_pair(small_run):
    """write_file accepts the old and the new hash while the checkpoint is renamed: either file verifies."""
    latest = small_run / "checkpoints" / "latest.pt"
    old = latest.read_bytes()
    manifest = integrity.load(small_run)
    manifest["files"]["checkpoints/latest.pt"].append(integrity.sha256(b"the next checkpoint"))
    (small_run / "integrity.json").write_text(json.dumps(manifest))  # the state just before the rename
    assert integrity.verify(small_run, "checkpoints/latest.pt")
    latest.write_bytes(b"the next checkpoint")  # ... and just after it
    assert integrity.verify(small_run, "checkpoints/latest.pt")
    latest.write_bytes(old[:-1])
    with pytest.raises(RunDirError):
        integrity.verify(small_run, "checkpoints/latest.pt")


# -- 3. values that cannot train --------------------------------------------------------------------------------

@pytest.mark.parametrize("changes, message", [
    ({"lr": 0.0}, "lr must be > 0"),
    ({"lr": -0.1}, "lr must be > 0"),
    ({"epochs": 0}, "epochs must be >= 1"),
    ({"max_memory": 0.0}, "max_memory must be > 0"),
    ({"architecture": "784-99999999999-10"}, r"needs at least 9.\d+e\+05 GB to train .* of available memory"),
    ({"architecture": "784-99999999999999999999999999-10"}, "GB of available memory"),  # no overflow
    ({"architecture": "784-240x99999999999-10"}, "more than 100000 layers"),
    ({"architecture": "784-4000-10", "max_memory": 0.01},  # weights, gradients and feedback: 3 float32 a parameter
     rf"needs at least {3 * 4 * (784 * 4000 + 4000 + 4000 * 10 + 10) / 1e9:.3g} GB .* 0.01 GB of max_memory"),
])
def test_values_that_cannot_train_are_refused_before_anything_is_allocated(changes, message):
    with pytest.raises(ConfigError, match=message):
        Config(**changes)


def test_the_command_line_and_sweep_specs_share_the_checks(tmp_path, capsys):
    line = one_line_error(*run_cli(["train", *SMALL, "--lr", "0"], capsys)[::2])
    assert line == "feedalign: error: lr must be > 0.0; got 0.0"
    line = one_line_error(*run_cli(["train", *SMALL, "--architecture", "40-99999999999-10"], capsys)[::2])
    assert "needs at least" in line
    spec = tmp_path / "spec.toml"
    spec.write_text('[base]\ndataset = "mnist1d"\narchitecture = "40-16-10"\n[grid]\nlr = [0.1, 0.0]\n')
    assert "lr must be > 0" in one_line_error(*run_cli(["sweep", spec, "--dry-run"], capsys)[::2])


@pytest.mark.parametrize("argv, message", [
    (["--round-seconds", "-1"], "--round-seconds must be a positive number of seconds; got -1.0"),
    (["--round-seconds", "nan"], "--round-seconds must be a positive number of seconds; got nan"),
    (["--sizes", "784-99999999999-10", "--rules", "fa"], "architecture '784-99999999999-10' needs at least"),
])
def test_bench_refuses_values_that_cannot_run(argv, message, capsys):
    line = one_line_error(*run_cli(["bench", "--no-epoch", "--rounds", "1", *argv], capsys)[::2])
    assert message in line


def test_bench_python_api_checks_the_same():
    from feedalign.bench import run
    with pytest.raises(ConfigError, match="round seconds"):
        run(["20-16-5:8"], ["fa"], device="cpu", min_round_s=0.0, epoch=False)
