"""Install hybridrag as a new user gets it: a wheel (or an editable install) in a fresh venv
outside the checkout. Used by tests/test_package.py and tests/test_demo.py.

Nothing is downloaded: the wheel is built without build isolation, installed with
``--no-deps``, and the new venv sees the dependencies of the running environment through a
``.pth`` file listing its site-packages as plain paths. A plain path line does not run that
folder's own ``.pth`` hooks (such as an editable hybridrag's import finder), so the only
hybridrag the new venv can import is the one installed into it (callers check ``__file__``).
"""
from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

class Installed(NamedTuple):
    python: Path  # the venv's interpreter
    wheel: Path   # what was installed


ROOT = Path(__file__).resolve().parents[1]
# what the build reads: pyproject.toml names README.md (readme) and the two source folders
SOURCES = ("pyproject.toml", "README.md", "hybridrag", "pipelines")


def copy_source(dst: Path) -> Path:
    """The checkout's packaging inputs, copied (a build in place would leave build/ behind)."""
    dst.mkdir(parents=True)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.nbi", "*.nbc", "*.egg-info", "build")
    for name in SOURCES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=skip)
        else:
            shutil.copy2(src, dst / name)
    return dst


def build_wheel(src: Path, out: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "-w", str(out), str(src)], check=True, cwd=src, env=clean_env(),
                   capture_output=True, timeout=300)
    (wheel,) = out.glob("hybridrag-*.whl")
    return wheel


def fresh_venv(path: Path) -> Path:
    """A new venv (no pip of its own) that sees the running environment's packages; its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    py = path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True, env=clean_env()).stdout.strip()
    deps = [p for p in site.getsitepackages() + [site.getusersitepackages()] if os.path.isdir(p)]
    (Path(purelib) / "_running_env_packages.pth").write_text("\n".join(deps) + "\n")
    return py


def pip_install(py: Path, *args: str) -> None:
    # pip itself comes from the running environment (through the .pth) and installs into py's venv
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-build-isolation",
                    *args], check=True, env=clean_env(), capture_output=True, timeout=300)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without PYTHONPATH (which may point at the checkout), offline."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONNOUSERSITE="1", **extra)
    return env
