"""Reliability at the edges (issue 18): file-system problems, edited or damaged run directories, values that
cannot train. Each bad input is one line on stderr and exit status 2, and leaves no half-written file.

What a kill, a full disk or a second process leaves behind (issue 33): torn log tails, damaged dataset caches,
shared run and sweep directories; each case with a real kill, a real damaged file or a real second process."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import feedalign.files
from feedalign.cli import main
from feedalign.errors import ConfigError, RunDirError, os_error_line
from feedalign.training import Config, resume, train
from feedalign.training import integrity
from feedalign.training.checkpoint import read_checkpoint

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
        read_checkpoint(small_run, "best.pt")


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


# -- 4. what a kill, a full disk or a second process leaves behind (issue 33) ---------------------------------------

SRC = str(Path(__file__).parents[1] / "src")
FAULTS = str(Path(__file__).parent / "faults")


def feedalign_process(argv, **env) -> subprocess.Popen:
    """A real `feedalign` process of this source tree (its output kept for the assertions)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*env.pop("paths", []), SRC]), **env}
    return subprocess.Popen([sys.executable, "-m", "feedalign", *map(str, argv)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert path.exists(), proc.communicate()


def without_times(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]


def test_a_kill_mid_append_tears_the_log_and_the_resumed_run_is_bitwise_an_uninterrupted_one(tmp_path, capsys):
    """SIGKILL in the middle of an append to alignment.jsonl (tests/faults), then `train --resume`: the torn line is
    dropped by every reader and cut off before the next append; the result is bitwise that of a run never killed."""
    settings = [*SMALL[:-2], "--epochs", "3", "--alignment-every", "1", "--rule", "dfa"]
    killed = feedalign_process(["train", *settings, "--out-dir", tmp_path, "--name", "killed"], paths=[FAULTS],
                               FEEDALIGN_TEST_TEAR_ALIGNMENT_AT="6")  # step 6: epoch 2, after epoch 1's checkpoint
    killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL
    run_dir = tmp_path / "killed"
    log = (run_dir / "alignment.jsonl").read_bytes()
    assert not log.endswith(b"\n")  # torn: half a line at the end
    torn_line = log.count(b"\n") + 1

    # every reader drops it, saying so once
    code, _, err = run_cli(["plot", "alignment", run_dir, "-o", tmp_path / "a.png"], capsys)
    assert code == 0, err
    assert err.count(f"{run_dir / 'alignment.jsonl'} line {torn_line} is torn") == 1

    code, _, err = run_cli(["train", "--resume", run_dir, "--quiet"], capsys)
    assert code == 0, err
    assert "was cut off before appending" in err and "Traceback" not in err
    code, _, err = run_cli(["train", *settings, "--out-dir", tmp_path, "--name", "whole", "--quiet"], capsys)
    assert code == 0, err

    from feedalign.files import read_jsonl
    for name in ("alignment.jsonl", "metrics.jsonl"):
        assert without_times(read_jsonl(run_dir / name)) == without_times(read_jsonl(tmp_path / "whole" / name)), name
    assert (run_dir / "alignment.jsonl").read_bytes().endswith(b"\n")
    resumed, whole = (read_checkpoint(d, "latest.pt") for d in (run_dir, tmp_path / "whole"))
    assert resumed["epoch"] == whole["epoch"] == 3
    for key in whole["model"]:
        assert torch.equal(resumed["model"][key], whole["model"][key]), key


def test_a_torn_metrics_tail_is_dropped_and_a_damaged_middle_line_is_one_line(small_run, tmp_path, capsys):
    metrics = small_run / "metrics.jsonl"
    whole = metrics.read_bytes()
    metrics.write_bytes(whole[:-20])  # what a copy cut short leaves
    code, _, err = run_cli(["plot", "curves", small_run, "-o", tmp_path / "c.png"], capsys)
    assert code == 0 and "Traceback" not in err
    assert f"{metrics} line 3 is torn" in err and (tmp_path / "c.png").is_file()

    lines = whole.split(b"\n")
    lines[1] = lines[1][:30]  # a damaged line with whole lines after it: not a tail, refused
    metrics.write_bytes(b"\n".join(lines))
    for argv in (["plot", "curves", small_run, "-o", tmp_path / "d.png"], ["train", "--resume", small_run]):
        line = one_line_error(*run_cli(argv, capsys)[::2])
        assert f"'{metrics}' line 2 is damaged (not a JSON object" in line, line
    assert metrics.read_bytes() == b"\n".join(lines)  # refused, and left as it was


def test_the_reader_keeps_a_whole_last_row_without_its_newline(tmp_path):
    from feedalign.files import drop_torn_tail, read_jsonl
    path = tmp_path / "log.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}')  # written by hand, say: whole, only the newline missing
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    assert drop_torn_tail(path) is False and path.read_text() == '{"a": 1}\n{"a": 2}\n'
    path.write_bytes(b'{"a": 1}\n\x00\x00\x00')  # a crash's zero-filled block
    assert read_jsonl(path) == [{"a": 1}]
    assert drop_torn_tail(path) is True and path.read_bytes() == b'{"a": 1}\n'


@pytest.fixture(scope="module")
def mnist1d_cache(tmp_path_factory):
    """A cache holding a freshly generated MNIST-1D (generated once for the module: about 3 s)."""
    from feedalign.data import fetch
    cache = tmp_path_factory.mktemp("cache")
    fetch("mnist1d", cache_dir=cache)
    return cache


def same_size_and_mtime_flip(path: Path, offset: int) -> None:
    """Flip one byte of ``path``, then restore its size and mtime: bit rot that size-and-mtime stamps would trust."""
    st = path.stat()
    blob = bytearray(path.read_bytes())
    blob[offset] ^= 0x01
    path.write_bytes(bytes(blob))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


def test_a_damaged_mnist1d_cache_is_generated_again(mnist1d_cache, tmp_path, capsys, monkeypatch):
    """Truncated, or one byte flipped at the same size and mtime: `data list` says damaged, and the next train
    generates the file again (no zipfile traceback), then trains on the same data as before."""
    cache = tmp_path / "cache"
    shutil.copytree(mnist1d_cache, cache)
    monkeypatch.setenv("FEEDALIGN_CACHE", str(cache))
    npz = cache / "mnist1d" / "mnist1d.npz"
    good = npz.read_bytes()
    from feedalign.data import load
    before = load("mnist1d").train_x

    same_size_and_mtime_flip(npz, len(good) // 2)
    code, out, _ = run_cli(["data", "list"], capsys)
    assert code == 0 and any(line.split()[:2] == ["mnist1d", "damaged"] for line in out.splitlines()), out
    line = one_line_error(*run_cli(["data", "verify", "mnist1d"], capsys)[::2])
    assert "damaged in the cache: mnist1d (mnist1d.npz); `feedalign data fetch mnist1d` replaces them" in line

    npz.write_bytes(good[:len(good) // 3])  # a copy cut short
    code, _, err = run_cli(["train", *SMALL, "--out-dir", tmp_path / "runs"], capsys)
    assert code == 0, err
    assert f"{npz} does not match the SHA-256 recorded when it was written; generating it again" in err
    assert "Traceback" not in err
    assert (load("mnist1d").train_x == before).all()
    code, out, _ = run_cli(["data", "verify", "mnist1d"], capsys)
    assert code == 0 and "mnist1d: present" in out


def test_a_second_process_waits_for_the_one_filling_the_cache(tmp_path, capsys, monkeypatch):
    """While a real `data fetch mnist1d` generates into an empty cache, a load here waits for its lock (saying so),
    then reads what that process wrote instead of generating a second copy."""
    cache = tmp_path / "cache"
    filling = feedalign_process(["data", "fetch", "mnist1d", "--cache-dir", cache])
    lock = cache / ".mnist1d.lock"
    deadline = time.monotonic() + 120
    while not (lock.is_file() and lock.read_text().startswith(f"pid {filling.pid}:")) and time.monotonic() < deadline:
        assert filling.poll() is None, filling.communicate()
        time.sleep(0.01)
    from feedalign.data import load, mnist_1d
    monkeypatch.setattr(mnist_1d, "generate", lambda: pytest.fail("generated a second copy instead of waiting"))
    assert load("mnist1d", cache_dir=cache).train_x.shape == (3200, 40)
    assert filling.wait(timeout=120) == 0, filling.communicate()
    err = capsys.readouterr().err
    assert (f"feedalign: note: waiting for another feedalign process (pid {filling.pid}: feedalign data fetch mnist1d "
            f"--cache-dir {cache}), which is using the dataset cache folder {cache / 'mnist1d'}") in err, err


@pytest.mark.integration
def test_bit_rot_in_mnist_is_never_handed_out(mnist, tmp_path, capsys):
    """One byte of a cached MNIST label file flipped at the same size and mtime: every load hashes in full, so
    load refuses it in one line (download=False), `data list` says damaged, and a fetch from a source repairs it."""
    from feedalign.data import DatasetError, load
    from feedalign.data.store import cache_root
    real = cache_root() / "mnist"
    cache = tmp_path / "cache"
    shutil.copytree(real, cache / "mnist", ignore=shutil.ignore_patterns(".*"))
    labels = cache / "mnist" / "t10k-labels-idx1-ubyte"
    same_size_and_mtime_flip(labels, 8)  # the first test label: 7 becomes 6
    with pytest.raises(DatasetError, match=f"{labels} is damaged .*feedalign data fetch mnist"):
        load("mnist", cache_dir=cache, download=False)
    code, out, _ = run_cli(["data", "list", "--cache-dir", cache], capsys)
    assert any(line.split()[:2] == ["mnist", "damaged"] for line in out.splitlines()), out
    code, _, err = run_cli(["data", "fetch", "mnist", "--cache-dir", cache, "--data-dir", real.parent], capsys)
    assert code == 0, err
    assert load("mnist", cache_dir=cache, download=False).test_y[:5].tolist() == [7, 2, 1, 0, 4]


def test_a_second_process_is_refused_and_a_killed_one_leaves_no_lock(tmp_path, capsys):
    """A real `feedalign train` holds its run directory: `train --resume` of it from this process is refused in one
    line naming that process, which goes on; once it is SIGKILLed the lock is gone and the resume finishes the run."""
    run_dir = tmp_path / "r"
    first = feedalign_process(["train", *SMALL, "--epochs", "40", "--out-dir", tmp_path, "--name", "r"])
    try:
        wait_for(run_dir / "checkpoints" / "latest.pt", first)
        line = one_line_error(*run_cli(["train", "--resume", run_dir], capsys)[::2])
        assert line.startswith(f"feedalign: error: run directory '{run_dir}' is in use by another feedalign process "
                               f"(pid {first.pid}: feedalign train --dataset mnist1d "), line
        assert line.endswith("wait for it to finish or stop it, then run again (a killed process leaves no lock behind)")
        assert first.poll() is None  # the first one goes on, untouched
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.communicate()
    assert not (run_dir / "summary.json").exists()
    code, out, err = run_cli(["train", "--resume", run_dir, "--quiet"], capsys)
    assert code == 0, err
    assert json.loads((run_dir / "summary.json").read_text())["epochs_completed"] == 40


def test_two_trains_racing_for_one_name_leave_one_intact_run(tmp_path):
    """Two real processes start `train --name r` at the same moment: one trains, the other says so in one line
    (exit 2) and removes nothing of the winner's."""
    procs = [feedalign_process(["train", *SMALL, "--out-dir", tmp_path, "--name", "r"]) for _ in range(2)]
    results = [(p.wait(timeout=300), p.communicate()[1]) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    err = next(err for code, err in results if code == 2)
    line = one_line_error(2, err)
    assert str(tmp_path / "r") in line and ("already exists" in line or "just made by another process" in line), line
    run_dir = tmp_path / "r"
    for name in ("best.pt", "latest.pt"):
        assert integrity.verify(run_dir, f"checkpoints/{name}")
    assert json.loads((run_dir / "summary.json").read_text())["epochs_completed"] == 2


def test_a_second_sweep_over_one_folder_is_refused(tmp_path, capsys):
    spec = tmp_path / "spec.toml"
    spec.write_text('name = "s"\n[base]\ndataset = "mnist1d"\narchitecture = "40-16-10"\nepochs = 3\n'
                    'train_size = 256\ntest_size = 100\nalignment_every = 0\n[grid]\nrule = ["bp"]\n')
    first = feedalign_process(["sweep", spec, "--out-dir", tmp_path / "out", "--no-plot", "--workers", "1"])
    try:
        wait_for(tmp_path / "out" / "s" / "spec.json", first)
        line = one_line_error(*run_cli(["sweep", spec, "--out-dir", tmp_path / "out", "--no-plot"], capsys)[::2])
        assert line.startswith(f"feedalign: error: sweep directory '{tmp_path / 'out' / 's'}' is in use by another "
                               f"feedalign process (pid {first.pid}: feedalign sweep "), line
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the sweep and its worker: one process group
        first.communicate()
    code, out, err = run_cli(["sweep", spec, "--out-dir", tmp_path / "out", "--no-plot"], capsys)
    assert code == 0, err  # the kill left no lock: the rerun picks up where it stopped


def in_own_mounts(setup: str, script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run the shell commands ``setup`` (mounts), then the Python ``script`` (one feedalign process), in a mount
    namespace of their own (``unshare -rm``: root there, mounts invisible outside); skips where this machine allows
    neither root nor unprivileged user namespaces."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("mounting a file system for the test needs root or unprivileged user namespaces")
    (tmp_path / "script.py").write_text(script)
    return subprocess.run(["unshare", "-rm", "sh", "-c", f"{setup} && {sys.executable} {tmp_path / 'script.py'}"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": SRC})


def test_a_full_disk_during_data_fetch_leaves_no_dataset_folder(tmp_path):
    """`data fetch mnist1d` into a real 256 KB file system (the file is 841 KB): one line, exit 2, no mnist1d folder
    left behind; once the file system is grown, the same fetch succeeds."""
    cache = tmp_path / "cache"
    cache.mkdir()
    done = in_own_mounts(f"mount -t tmpfs -o size=256k tmpfs {cache}", f"""
import os, subprocess
from feedalign.cli import main
fetch = ["data", "fetch", "mnist1d", "--cache-dir", {str(cache)!r}]
print("rc", main(fetch), sorted(os.listdir({str(cache)!r})), flush=True)
subprocess.run(["mount", "-o", "remount,size=4m", {str(cache)!r}], check=True)  # space is free again
print("rc", main(fetch), sorted(os.listdir({str(cache)!r} + "/mnist1d")), flush=True)
""", tmp_path)
    lines = [line for line in done.stderr.splitlines() if line.startswith("feedalign: error:")]
    assert lines == [f"feedalign: error: cannot write {cache / 'mnist1d' / 'mnist1d.npz'}: no space left on the device "
                     "(disk full or over quota); free some space or choose a folder on another disk, then run again"], \
        done.stderr
    assert "Traceback" not in done.stderr
    full, ready, grown = done.stdout.splitlines()
    assert full == "rc 2 ['.mnist1d.lock']"  # the lock file beside the folder; no folder to take for the dataset
    assert ready == f"mnist1d: ready in {cache / 'mnist1d'}" and grown == "rc 0 ['.sha256.json', 'mnist1d.npz']"


def test_a_read_only_file_system_for_real(small_run, tmp_path):
    """The run's folder bind-mounted read-only (a real EROFS, which root cannot write past either): the finished run
    still resumes to itself, and a train into that folder is one line that writes nothing."""
    runs = small_run.parent
    before = sorted(str(p.relative_to(runs)) for p in runs.rglob("*"))
    done = in_own_mounts(f"mount --bind {runs} {runs} && mount -o remount,ro,bind {runs}", f"""
from feedalign.cli import main
print("rc", main(["train", "--resume", {str(small_run)!r}, "--quiet"]), flush=True)
print("rc", main(["train", *{SMALL!r}, "--out-dir", {str(runs)!r}]), flush=True)
""", tmp_path)
    assert [line for line in done.stdout.splitlines() if line.startswith("rc")] == ["rc 0", "rc 2"], done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("feedalign: error:")]
    assert len(lines) == 1 and "the file system there is read-only" in lines[0], done.stderr
    assert sorted(str(p.relative_to(runs)) for p in runs.rglob("*")) == before

def test_every_test_docs_reliability_names_exists():
    """docs/reliability.md names a test for each case; each must exist, so the page cannot outlive its evidence."""
    import re
    tests = Path(__file__).parent
    named = set(re.findall(r"`(?:(test_\w+\.py)::)?(test_\w+)`", (tests.parent / "docs" / "reliability.md").read_text()))
    assert len(named) >= 15
    for module, name in named:
        source = (tests / (module or "test_reliability.py")).read_text()
        assert f"def {name}(" in source, f"docs/reliability.md names {module or 'test_reliability.py'}::{name}"
