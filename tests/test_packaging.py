"""What ``pip install forescale`` gets: the deploy files in the wheel, core
dependencies that are all used, heavy libraries as extras with a clear
error when missing."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.support import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGES = ("engine", "forecasters", "actuators", "policies")
#: distribution name -> the module it is imported as
IMPORT_NAME = {"PyYAML": "yaml", "prometheus-client": "prometheus_client", "python-dateutil": "dateutil"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!\[; ]", requirement, maxsplit=1)[0]


def _imported_modules() -> set[str]:
    found = set()
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            for m in re.finditer(r"^\s*(?:import|from)\s+([A-Za-z_]\w*)", path.read_text(), re.M):
                found.add(m.group(1))
    return found


def test_every_core_dependency_is_imported_by_the_package():
    imported = _imported_modules()
    unused = [r for r in PYPROJECT["project"]["dependencies"]
              if IMPORT_NAME.get(_name(r), _name(r).replace("-", "_")) not in imported]
    assert not unused, f"declared but never imported: {unused}"


def test_plotting_and_statsmodels_are_extras_and_dev_pulls_every_extra():
    core = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    assert not {"matplotlib", "statsmodels", "pandas", "torch", "prophet"} & core
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert [_name(r) for r in extras["plot"]] == ["matplotlib"]
    assert [_name(r) for r in extras["holt-winters"]] == ["statsmodels"]
    every = set(extras) - {"all", "dev"}
    (all_req,) = extras["all"]
    assert set(all_req.partition("[")[2].rstrip("]").split(",")) == every
    assert "forescale[all]" in extras["dev"]


def test_the_wheel_ships_the_deploy_files_where_pip_installs_them(tmp_path):
    # build from a copy: the build writes build/ and *.egg-info next to the sources
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "tests", "build", "dist", "*.egg-info",
                                                             "__pycache__", "forescale-demo", "benchmarks"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("forescale-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(n.split("/data/share/forescale/", 1)[1] for n in names if "/data/share/forescale/" in n)
    expected = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "deploy").rglob("*") if p.is_file())
    assert shipped == expected and "deploy/systemd/forescale.service" in shipped
    assert "engine/data/demo_rds_cpu.csv" in names
    # installed, they land under <prefix>/share/forescale/deploy, the path `forescale --help` names
    prefix = tmp_path / "prefix"
    # --ignore-installed: without it pip uninstalls the running forescale
    # (the developer's editable install) before installing into the prefix
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed",
                    "--prefix", str(prefix), str(wheel)], check=True, capture_output=True, timeout=300)
    assert (prefix / "share" / "forescale" / "deploy" / "grafana" / "forescale-dashboard.json").is_file()


def test_help_names_a_deploy_folder_that_exists_in_a_checkout_too():
    """In an editable install (a checkout) nothing is under
    <prefix>/share/forescale: --help named a folder that did not exist."""
    r = subprocess.run([sys.executable, "-m", "engine.cli", "--help"], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("deployment files"))
    folder = Path(line.rsplit(": ", 1)[1])
    assert (folder / "grafana" / "forescale-dashboard.json").is_file(), line


def _without(module: str, *argv: str, cwd: Path) -> subprocess.CompletedProcess:
    """The CLI in a process where ``module`` cannot be imported."""
    code = (f"import sys; sys.modules[{module!r}] = None\n"
            f"from engine.cli import main\nsys.exit(main({list(argv)!r}))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_plot_without_matplotlib_is_one_line_naming_the_extra(tmp_path):
    from engine.store import Store

    Store(tmp_path / "s.db").close()
    r = _without("matplotlib", "accuracy", "--state", str(tmp_path / "s.db"), "--plot", str(tmp_path / "a.png"),
                 cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines == ["forescale: error: accuracy --plot needs matplotlib, which is not installed: "
                     "pip install 'forescale[plot]'"]


def test_holt_winters_without_statsmodels_names_its_extra(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("targets:\n  - name: web\n    source: {type: csv, path: x.csv}\n"
                   "    forecaster: {name: holt_winters}\n    policy: {capacity_per_replica: 10}\n")
    r = _without("statsmodels", "validate", "--config", str(cfg), cwd=tmp_path)
    assert r.returncode == 2 and "pip install 'forescale[holt-winters]'" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_the_demo_runs_without_matplotlib(tmp_path):
    r = _without("matplotlib", "demo", "--out", str(tmp_path / "demo"), "--days", "0.2", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "pip install 'forescale[plot]'" in r.stdout
    assert (tmp_path / "demo" / "backtest.json").exists() and not (tmp_path / "demo" / "backtest.png").exists()
