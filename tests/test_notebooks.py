"""The four notebooks run top to bottom in a real Jupyter kernel (nbclient), on the smoke config.

They share one temporary output directory, in order, as a user working through them would: 03 reuses
the champion forecaster 01 registered, and 04 serves the models 03 registered. Parameters are injected
into each notebook's ``parameters`` cell (the papermill convention); the files in git stay unexecuted.
"""

from __future__ import annotations

import json

import pytest

from conftest import REPO, free_port

NOTEBOOKS = ("01_quickstart", "02_tuning", "03_agents", "04_serving")


def test_every_notebook_has_one_parameters_cell():
    # outputs stripped and valid code: tests/test_layout.py::test_notebooks_are_valid_and_outputs_stripped
    assert sorted(p.stem for p in (REPO / "notebooks").glob("*.ipynb")) == list(NOTEBOOKS)
    for name in NOTEBOOKS:
        nb = json.loads((REPO / "notebooks" / f"{name}.ipynb").read_text())
        tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, name
        source = "".join(tagged[0]["source"])
        assert "RAY_ADDRESS = None" in source and "OUTPUT_DIR" in source and "CONFIG" in source


@pytest.fixture(scope="module")
def shared_output(tmp_path_factory):
    return tmp_path_factory.mktemp("notebooks")


def _execute(name: str, parameters: dict) -> dict:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source += "\n# injected by the test\n" + "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
    # like Jupyter: the kernel starts in the notebook's folder
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    return nb


def _outputs(nb) -> str:
    return "\n".join(str(o.get("text", "")) + json.dumps(o.get("data", {}).get("text/plain", ""))
                     for c in nb.cells if c.cell_type == "code" for o in c.outputs)


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name, shared_output):
    nb = _execute(name, {"OUTPUT_DIR": str(shared_output), "SERVE_PORT": free_port()})
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    text = _outputs(nb)
    if name == "01_quickstart":
        assert len(images) >= 6  # close price + the five run figures
        assert list(shared_output.glob("smoke-2*/report.html"))
    elif name == "02_tuning":
        assert "config/learning_rate" in text and images
    elif name == "03_agents":
        assert len(images) == 3 and list(shared_output.glob("smoke-agents-*/report.html"))
    else:
        assert "'target_position'" in text and "'signal'" in text and images
