"""Plugins: lazy built-ins, entry points, clear errors, no heavy imports."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from engine.core.errors import PluginError
from engine.core.registry import Registry
from tests.support import ROOT

HEAVY = ["torch", "prophet", "cmdstanpy", "statsmodels", "boto3", "botocore", "kubernetes",
         "alibabacloud_ecs20140526", "matplotlib"]


def test_importing_the_packages_imports_no_heavy_dependency():
    code = textwrap.dedent(f"""
        import sys
        import engine, policies, forecasters, actuators
        import engine.cycle, engine.config, engine.store, engine.cli, engine.daemon, engine.backtest
        import forecasters.lstm, forecasters.prophet_model, forecasters.holt_winters
        import actuators.aws, actuators.alibaba, actuators.kubernetes, actuators.terraform
        heavy = [m for m in {HEAVY!r} if m in sys.modules]
        assert not heavy, heavy
        print("clean")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "clean" in r.stdout, r.stderr


def test_unknown_name_lists_the_known_ones():
    import forecasters

    with pytest.raises(PluginError) as e:
        forecasters.registry.get("arima_plus")
    msg = str(e.value)
    assert "unknown forecaster 'arima_plus'" in msg
    for name in ("seasonal_naive", "holt_winters", "prophet", "lstm", "auto"):
        assert name in msg


def test_a_missing_extra_names_the_package_and_the_install_command():
    reg = Registry("forecaster", "forescale.test-none")
    reg.add("fancy", "forescale_missing_pkg_xyz.models:Fancy", extra="fancy", packages=("forescale_missing_pkg_xyz",))
    with pytest.raises(PluginError) as e:
        reg.get("fancy")
    assert "forescale_missing_pkg_xyz" in str(e.value)
    assert "pip install 'forescale[fancy]'" in str(e.value)


def test_entry_point_plugins_are_found_and_validated(tmp_path, monkeypatch):
    # a real installed distribution on sys.path, as pip would leave it
    pkg = tmp_path / "myforecaster"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent("""
        from forecasters.naive import Persistence

        class Flat(Persistence):
            name = "flat"

        class Broken:
            pass
    """))
    dist = tmp_path / "myforecaster-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myforecaster\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[forescale.forecasters]\nflat = myforecaster:Flat\nbroken = myforecaster:Broken\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import forecasters

    assert "flat" in forecasters.registry.names()
    cls = forecasters.registry.get("flat")
    assert cls.__name__ == "Flat"
    with pytest.raises(PluginError, match="lacks"):
        forecasters.registry.get("broken")


def test_actuator_registry_resolves_every_builtin():
    import actuators

    for name in ("dry-run", "aws-asg", "aws-ec2", "alibaba-ecs", "alibaba-ecs-group", "terraform",
                 "kubernetes", "kubernetes-hpa-floor"):
        cls = actuators.registry.get(name)
        assert hasattr(cls, "Config") and hasattr(cls, "apply")


# ------------------------------------------------------------------ capabilities
def test_every_builtin_declares_its_capabilities():
    import actuators
    import forecasters
    from engine import sources
    from engine.core.plugins import Capabilities, check_capabilities

    declared = {}
    for kind, reg in (("actuator", actuators.registry), ("metric source", sources.registry),
                      ("forecaster", forecasters.registry)):
        for name in reg.names():
            try:
                cls = reg.get(name)
            except PluginError:  # an optional extra not installed here
                continue
            declared[name] = check_capabilities(kind, name, cls)
            assert isinstance(declared[name], Capabilities)
    # what the wiring and the engine act on
    assert declared["aws-ec2"] == Capabilities(takes_ladder=True, stepwise_apply=True)
    assert declared["alibaba-ecs"] == Capabilities(takes_ladder=True, stepwise_apply=True)
    assert declared["terraform"] == Capabilities(needs_base_dir=True, takes_ladder=True)
    for horizontal in ("aws-asg", "alibaba-ecs-group", "kubernetes", "kubernetes-hpa-floor"):
        assert declared[horizontal] == Capabilities()
    assert declared["csv"] == declared["replay"] == Capabilities(needs_base_dir=True)
    assert declared["prometheus"] == Capabilities(needs_base_dir=True, needs_interval=True)
    assert declared["persistence"] == Capabilities()
    if "lstm" in declared:
        assert declared["lstm"] == Capabilities(takes_covariates=True, init_from=True)


def test_a_malformed_declaration_is_refused_when_the_plugin_registers():
    import forecasters
    from forecasters.naive import Persistence

    from engine.core.plugins import Capabilities

    class Undeclared(Persistence):
        capabilities = {"init_from": True}  # a dict, not a declaration

    class Confused(Persistence):
        capabilities = Capabilities(takes_ladder=True)  # an actuator's flag

    with pytest.raises(PluginError, match="not an engine.core.plugins.Capabilities"):
        forecasters.registry.register("undeclared", Undeclared)
    with pytest.raises(PluginError, match="declares takes_ladder, which a forecaster cannot have"):
        forecasters.registry.register("confused", Confused)
    assert "undeclared" not in forecasters.registry.names()


def test_the_wiring_passes_what_a_source_declares_not_what_its_signature_says(tmp_path):
    from pydantic import BaseModel

    from engine import sources
    from engine.build import build_source
    from engine.config import parse_config
    from engine.core.plugins import Capabilities

    class DeclaredConfig(BaseModel):
        type: str = "declared"

    class Declared:
        """Takes **kwargs: a signature probe would find nothing."""
        Config = DeclaredConfig
        capabilities = Capabilities(needs_base_dir=True, needs_interval=True)

        def __init__(self, config, **kwargs):
            self.kwargs = kwargs

        def fetch(self, start, end):
            raise NotImplementedError

    class Silent(Declared):
        """Names base_dir in its signature, declares nothing: gets nothing."""
        capabilities = Capabilities()

        def __init__(self, config, base_dir=None):
            self.kwargs = {"base_dir": base_dir}

    sources.registry.register("declared", Declared)
    sources.registry.register("silent", Silent)
    try:
        doc = {"targets": [{"name": n, "interval": "2m", "source": {"type": n},
                            "policy": {"capacity_per_replica": 10}} for n in ("declared", "silent")]}
        config = parse_config(doc, base_dir=tmp_path)
        declared, silent = (build_source(t, config) for t in config.targets)
        assert declared.kwargs == {"base_dir": tmp_path, "interval": config.targets[0].interval}
        assert silent.kwargs == {"base_dir": None}
    finally:
        sources.registry.unregister("declared")
        sources.registry.unregister("silent")
