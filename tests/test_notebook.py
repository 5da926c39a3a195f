"""examples/quickstart.ipynb runs top to bottom (executed with nbclient, smaller sizes injected after its
`parameters` cell, as papermill does) and is committed without outputs."""
import json
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).parents[1] / "examples" / "quickstart.ipynb"
SMALL = """train_examples = 3_200
test_examples = 1_000
epochs = 1
hidden = 32
evaluate_every = 5"""


def test_quickstart_notebook_is_committed_without_outputs():
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    assert sum("parameters" in c["metadata"].get("tags", []) for c in cells) == 1


@pytest.mark.integration
def test_quickstart_notebook_runs_and_its_rules_learn_and_align(tmp_path, mnist):
    import nbclient
    import nbformat
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    at = next(i for i, c in enumerate(notebook.cells) if "parameters" in c.metadata.get("tags", []))
    notebook.cells.insert(at + 1, nbformat.v4.new_code_cell(SMALL, metadata={"tags": ["injected-parameters"]}))
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    text = "\n".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
    # the training cell's lines: "<rule>: test error E% after S steps, hidden signal angle A deg"
    results = {}
    for line in text.splitlines():
        if ": test error " in line:
            rule, rest = line.split(": test error ")
            results[rule] = (float(rest.split("%")[0]), float(rest.split("angle ")[1].split(" deg")[0]))
    assert set(results) == {"bp", "fa", "dfa"}
    assert results["bp"][0] < 30 and results["fa"][0] < 50 and results["dfa"][0] < 50  # 50 steps; chance is 90%
    assert results["bp"][1] == pytest.approx(0, abs=1e-3)  # BP's signal is the gradient
    assert results["fa"][1] < 80 and results["dfa"][1] < 80  # the rules' signals already point downhill
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) == 1
    assert "alignment with backprop, rule dfa" in text and "the rule's feedback replaces W^T" in text  # table, describe
