"""dvc.yaml names, per stage, every porover_lib module its notebook imports (directly or through other
porover_lib modules, function-level imports included), so a stage reruns when code it runs changes."""
import ast
import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _file(module: str) -> Path:
    path = ROOT / Path(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _imports(source: str, module: str) -> set[str]:
    package = module if _file(module).name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            parts = package.split(".")[: len(package.split(".")) - max(node.level - 1, 0)] if node.level else []
            base = ".".join(parts + ([node.module] if node.module else []))
            if base.startswith("porover_lib"):
                found |= {f"{base}.{a.name}" if _file(f"{base}.{a.name}").exists() else base for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("porover_lib")}
    return found


def _closure(modules: set[str]) -> set[Path]:
    seen, todo = set(), list(modules)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            parts = module.split(".")
            todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # a package's __init__ runs first
            todo += _imports(_file(module).read_text(), module)
    return {_file(m).relative_to(ROOT) for m in seen}


def test_each_stage_depends_on_the_modules_its_notebook_runs():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        notebook = next(d for d in stage["deps"] if d.startswith("notebooks/"))
        cells = json.loads((ROOT / notebook).read_text())["cells"]
        code = "\n".join(line for c in cells if c["cell_type"] == "code"
                         for line in "".join(c["source"]).splitlines() if not line.startswith("%"))
        needed = _closure(_imports(code, "__main__"))
        deps = [Path(d) for d in stage["deps"] if d.startswith("porover_lib")]
        missing = sorted(str(f) for f in needed if not any(f == d or d in f.parents for d in deps))
        assert not missing, f"{name}: dvc.yaml deps lack {missing}"
        unused = sorted(str(d) for d in deps if d.suffix == ".py" and d not in needed)
        assert not unused, f"{name}: dvc.yaml deps name {unused}, which its notebook never imports"
    assert "porover_lib/plots.py" not in stages["sft"]["deps"] + stages["preference_optimization"]["deps"]


def test_each_stage_tracks_the_prompt_sets_it_reads():
    """Editing a prompt set a stage samples from (its limit, its source) must rerun that stage."""
    from porover_lib.config import load_params

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for profile in ("default", "smoke"):
        params = load_params(ROOT / "params" / f"{profile}.yaml")
        reads = {"overgenerate": params.overgenerate.sets, "preference_data": params.preference.sets,
                 "evaluate": params.evaluate.sets}
        for stage, sets in reads.items():
            tracked = {key for entry in stages[stage].get("params", []) if isinstance(entry, dict)
                       for keys in entry.values() for key in keys}
            missing = sorted(f"prompts.{s}" for s in sets if f"prompts.{s}" not in tracked and "prompts" not in tracked)
            assert not missing, f"{stage}: dvc.yaml params lack {missing}"
