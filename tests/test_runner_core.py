"""The runner package's own guarantees: it never imports torch, and the shell entry stays thin."""
import os
import pkgutil
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_no_runner_module_imports_torch():
    names = sorted(m.name for m in pkgutil.iter_modules([os.path.join(REPO, "runner")]))
    assert {"cli", "launch", "plan", "runinfo", "stages", "preflight"} <= set(names)
    code = ("import importlib, sys\n"
            f"sys.path.insert(0, {REPO!r})\n"
            f"for n in {names!r}:\n"
            "    importlib.import_module('runner.' + n)\n"
            "import runner.__main__\n"
            "print('torch' in sys.modules, sorted(m for m in sys.modules if m.startswith('runner')))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    loaded, mods = p.stdout.split(" ", 1)
    assert loaded == "False"
    assert all(f"runner.{n}" in mods for n in names)  # every module really was imported


def test_the_shell_entry_is_thin():
    text = open(os.path.join(REPO, "run_experiments.sh")).read()
    assert len(text.splitlines()) < 150
    assert not re.search(r"\beval\b", text)
    # CUDA_VISIBLE_DEVICES is exported before the one Python the script starts
    assert text.index("export CUDA_VISIBLE_DEVICES") < text.index('exec "$PYTHON"')
