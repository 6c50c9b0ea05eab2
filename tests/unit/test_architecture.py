"""docs/ARCHITECTURE.md and the import contract `make lint` checks name the same layers, in the same order."""

from __future__ import annotations

import re
import tomllib

from service.config import PROJECT_ROOT


def test_the_architecture_page_draws_the_layers_the_contract_enforces():
    config = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    contract = next(c for c in config["contracts"] if c["type"] == "layers")
    enforced = [[name.strip().removeprefix("service.") for name in layer.split(":")] for layer in contract["layers"]]
    page = (PROJECT_ROOT / "docs" / "ARCHITECTURE.md").read_text()
    block = page.split("## The layers", 1)[1].split("```")[1]
    drawn: list[list[str]] = []
    for line in block.strip().splitlines():
        names = re.match(r"\s*((?::\s*)?[a-z_]+(?:\s*:\s*[a-z_]+)*)", line).group(1)
        words = [w.strip() for w in names.split(":") if w.strip()]
        if line.startswith(" "):  # a layer continued on the next line
            drawn[-1].extend(words)
        else:
            drawn.append(words)
    assert drawn == enforced

