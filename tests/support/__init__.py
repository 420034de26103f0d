"""Test support shared by the suite: paths, loopback servers, fakes that
speak a platform's wire protocol, and the contract suites."""

from pathlib import Path

#: the repository root
ROOT = Path(__file__).resolve().parents[2]
#: the shared traces beside the repository (absent on a clone of the repo alone)
TRACES = ROOT.parent / "shared" / "traces"
#: fixtures shipped with the tests
FIXTURES = ROOT / "tests" / "fixtures"
