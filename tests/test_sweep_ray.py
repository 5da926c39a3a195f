"""The Ray backend: a two-trial sweep (plus one trial that fails) on a local Ray instance."""
import json

import pytest

ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'feedalign[ray]' to run the Ray backend test")
pytest.importorskip("ray.tune", reason="ray[tune] is not installed: pip install 'feedalign[ray]'")

pytestmark = pytest.mark.slow


@pytest.fixture
def local_ray(tmp_path):
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


def test_ray_sweep_two_trials_and_failures(tmp_path, local_ray):
    """Two trials train; two that hold out more validation examples than mnist1d has fail without stopping the
    sweep (an architecture that does not fit would be refused before any trial starts)."""
    from feedalign.sweeps import load_spec, run_sweep
    spec_path = tmp_path / "spec.toml"
    spec_path.write_text(f"""
name = "ray2"
out_dir = "{tmp_path / 'out'}"
retries = 0
[base]
dataset = "mnist1d"
architecture = "40-8-10"
epochs = 1
batch_size = 256
[grid]
rule = ["bp", "dfa"]
validation_size = [800, 100000]
""")
    spec = load_spec(spec_path)
    result = run_sweep(spec, backend="ray", plot=False, log=lambda m: None)
    rows = json.loads((result.sweep_dir / "results.json").read_text())["runs"]
    assert len(rows) == 4
    good = [r for r in rows if r["validation_size"] == 800]
    bad = [r for r in rows if r["validation_size"] == 100000]
    assert [r["rule"] for r in good] == ["bp", "dfa"]
    assert all(r["status"] == "done" and r["outcome"] in ("trained", "refused") for r in good)
    assert all((result.sweep_dir / "runs" / r["key"] / "summary.json").is_file() for r in good)
    assert all(len(r["val_curve"]) == 2 for r in good)  # epochs 0 and 1, reported back by the trial
    assert all(r["status"] in ("invalid", "crashed") and "leaves no training data" in r["error"] for r in bad)
    csv_rows = (result.sweep_dir / "results.csv").read_text().splitlines()
    assert len(csv_rows) == 5 and "outcome" in csv_rows[0]
