"""Test support shared by the suite: paths, loopback servers, fakes that
speak a platform's wire protocol, and the contract suites."""

from pathlib import Path

#: the repository root
ROOT = Path(__file__).resolve().parents[2]
#: fixtures shipped with the tests
FIXTURES = ROOT / "tests" / "fixtures"
#: real traces the tests replay: copies and excerpts of public workload
#: traces shipped in the repository (sources in tests/fixtures/traces/README.md),
#: so no test skips on a clone of the repository alone
TRACES = FIXTURES / "traces"


def write_trace(path: Path, end: int, values, step: int = 300) -> str:
    """Write ``values`` as a timestamp,value CSV whose last sample is at
    ``end`` (epoch seconds), one every ``step`` seconds; returns the path."""
    n = len(values)
    path.write_text("timestamp,value\n" + "".join(f"{end - step * (n - 1 - i)},{float(v):.4f}\n"
                                                 for i, v in enumerate(values)))
    return str(path)
