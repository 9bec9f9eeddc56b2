"""A pipeline run in a temporary copy of the working tree: what the end-to-end tests share."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STAGES = ["overgenerate", "select", "sft", "preference_data", "preference_optimization", "evaluate"]


def run(cmd, cwd, timeout=900, **env):
    """Run `cmd` with the venv's tools first on PATH; fail with the tail of its output."""
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", **env)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def copy_working_tree(work: Path) -> None:
    """Tracked and untracked (not ignored) files as they are now, without the committed run's outputs."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    for name in files:
        src = REPO / name
        if src.is_file() and not name.startswith(("outputs/", "dvc.lock")):
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, work / name)


def repro(work: Path, profile: str, **env) -> str:
    """`git init`, resolve `params/<profile>.yaml` into params/active.yaml, `dvc repro`; the log."""
    run(["git", "init", "-q"], work)
    run([sys.executable, "-m", "porover_lib.config", f"params/{profile}.yaml", "--write", "params/active.yaml"], work)
    return run(["dvc", "repro"], work, timeout=1500, **env)


def assert_every_stage_rendered(work: Path, log: str) -> None:
    """Every stage ran and rendered its notebook with outputs and without an error cell."""
    for stage in STAGES:
        assert f"Running stage '{stage}'" in log
    for nb in sorted((work / "notebooks").glob("0*.ipynb")):
        rendered = json.loads((work / "outputs" / "notebooks" / nb.name).read_text())
        outputs = [o for c in rendered["cells"] for o in c.get("outputs", [])]
        assert not [o for o in outputs if o["output_type"] == "error"], nb.name
        assert outputs, nb.name
