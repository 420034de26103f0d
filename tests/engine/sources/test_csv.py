"""The CSV metric source and the replay source built on it.

Timestamp forms are those of ../shared/traces/README.md; the handling of
unsorted rows, duplicates, gaps and bad cells is the one documented in
engine/sources/csv.py.
"""

from __future__ import annotations

import io
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from engine.core.errors import DataError
from engine.sources import registry
from engine.sources.csv import CsvConfig, CsvSource, ReplayConfig, ReplaySource, read_csv
from engine.core.types import Series
from tests.support import TRACES

UTC = timezone.utc


def csv_file(tmp_path: Path, text: str, name: str = "trace.csv") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def epoch(*args) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp())


# ------------------------------------------------------------------ timestamp forms
@pytest.mark.parametrize("cell, expected", [
    ("2013-07-01T00:05:00Z", epoch(2013, 7, 1, 0, 5)),        # UTC
    ("2014-02-14T14:30:00", epoch(2014, 2, 14, 14, 30)),      # no zone: taken as UTC
    ("172800", 172800),                                       # integer seconds
    ("1372637100", epoch(2013, 7, 1, 0, 5)),                  # Unix time is integer seconds too
    ("2013-07-01T02:05:00+02:00", epoch(2013, 7, 1, 0, 5)),  # an explicit offset is honoured
])
def test_the_three_timestamp_forms_of_the_shared_traces_are_read(tmp_path, cell, expected):
    s = read_csv(csv_file(tmp_path, f"timestamp,value\n{cell},1.5\n"))
    assert s.timestamps.tolist() == [expected]
    assert s.values.tolist() == [1.5]


@pytest.mark.parametrize("relpath, first", [
    ("nab/ec2_cpu_utilization_5f5533.csv", None),
    ("nab/nyc_taxi.csv", epoch(2014, 7, 1)),
    ("google_cluster_2019/cell_avg_cpu_usage_5min.csv", 0),
])
def test_real_traces_in_each_form_load_sorted_without_gaps_in_their_values(relpath, first):
    path = TRACES / relpath
    s = read_csv(path)
    assert len(s) > 1000
    assert np.all(np.diff(s.timestamps) > 0)
    assert s.name == path.stem
    if first is not None:
        assert int(s.timestamps[0]) == first


def test_other_columns_are_ignored_and_column_names_are_configurable(tmp_path):
    p = csv_file(tmp_path, "host,t,load,note\na,0,1,x\nb,60,2,y\n")
    s = read_csv(p, timestamp_column="t", value_column="load")
    assert (s.timestamps.tolist(), s.values.tolist()) == ([0, 60], [1.0, 2.0])
    # a trailing comma (an empty cell past the header) is harmless
    assert read_csv(csv_file(tmp_path, "timestamp,value\n0,1\n60,2,\n")).values.tolist() == [1.0, 2.0]


def test_a_byte_order_mark_and_blank_lines_are_tolerated(tmp_path):
    p = tmp_path / "bom.csv"
    p.write_bytes("\ufefftimestamp,value\n0,1\n\n60,2\n   ,  \n".encode("utf-8"))
    assert read_csv(p).values.tolist() == [1.0, 2.0]


# --------------------------------------------------------------- documented handling
def test_unsorted_rows_are_sorted_by_time(tmp_path):
    s = read_csv(csv_file(tmp_path, "timestamp,value\n300,3\n0,1\n600,4\n60,2\n"))
    assert s.timestamps.tolist() == [0, 60, 300, 600]
    assert s.values.tolist() == [1.0, 2.0, 3.0, 4.0]


def test_duplicate_timestamps_are_averaged_over_their_valid_values(tmp_path):
    # 60: (2 + 4) / 2 = 3; 120: (5 + NaN) -> 5; 180: (NaN, NaN) -> NaN (a gap)
    s = read_csv(csv_file(tmp_path, "timestamp,value\n0,1\n60,2\n60,4\n120,5\n120,\n180,nan\n180,NaN\n"))
    assert s.timestamps.tolist() == [0, 60, 120, 180]
    assert s.values[:3].tolist() == [1.0, 3.0, 5.0]
    assert np.isnan(s.values[3])


def test_duplicates_in_different_forms_of_the_same_instant_are_averaged(tmp_path):
    # 2013-07-01T00:05:00Z and 1372637100 are the same second: (2 + 6) / 2 = 4
    s = read_csv(csv_file(tmp_path, "timestamp,value\n2013-07-01T00:05:00Z,2\n1372637100,6\n"))
    assert (s.timestamps.tolist(), s.values.tolist()) == ([1372637100], [4.0])


@pytest.mark.parametrize("cell", ["", "NaN", "nan", "null", "None", "  "])
def test_an_empty_or_nan_value_is_a_gap(tmp_path, cell):
    s = read_csv(csv_file(tmp_path, f"timestamp,value\n0,1\n60,{cell}\n120,3\n"))
    assert s.timestamps.tolist() == [0, 60, 120]
    assert np.isnan(s.values[1])
    assert s.n_valid == 2
    assert s.last_valid() == (datetime.fromtimestamp(120, UTC), 3.0)


@pytest.mark.parametrize("rows, line, message", [
    ("0,1\n60,-2\n", 3, "value -2 is negative"),
    ("0,1\n60,2\n120,inf\n", 4, "value 'inf' is infinite"),
    ("0,-inf\n", 2, "value '-inf' is infinite"),
    ("0,1\n60,abc\n", 3, "value 'abc' is not a number"),
    ("yesterday,1\n", 2, "unparsable timestamp 'yesterday'"),
    (",1\n", 2, "empty timestamp"),
    ("0,1\n60\n", 3, "expected 2 columns, got 1"),
    ("2013-13-01T00:00:00Z,1\n", 2, "unparsable timestamp '2013-13-01T00:00:00Z'"),
    # a decimal comma (5,7 meant 5.7) was read as 5, the 7 dropped
    ("0,1\n60,5,7\n", 3, "expected 2 columns, got 3"),
    # epoch milliseconds read as seconds: the year 58857 (a traceback in
    # the backtest; live, every sample outside the history window)
    ("1733000000000,1\n", 2, "timestamp 1733000000000 is past the year 9999 read as seconds"),
    ("-5,1\n", 2, "timestamp -5 is negative"),
])
def test_a_bad_cell_is_a_data_error_naming_the_file_and_line(tmp_path, rows, line, message):
    p = csv_file(tmp_path, "timestamp,value\n" + rows)
    with pytest.raises(DataError) as info:
        read_csv(p)
    assert info.value.where == f"{p}:{line}"
    assert str(info.value).startswith(f"{p}:{line}: ")
    assert message in str(info.value)


@pytest.mark.parametrize("text, where, message", [
    ("", "", "empty file (expected a header 'timestamp,value')"),
    ("timestamp,value\n", "", "no data rows"),
    ("time,value\n0,1\n", ":1", "lacks the columns 'timestamp' and 'value'"),
    ("timestamp,load\n0,1\n", ":1", "header ['timestamp', 'load']"),
])
def test_an_empty_file_or_missing_columns_is_a_data_error(tmp_path, text, where, message):
    p = csv_file(tmp_path, text)
    with pytest.raises(DataError) as info:
        read_csv(p)
    assert info.value.where == f"{p}{where}"
    assert message in str(info.value)


def test_a_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv: cannot open: No such file"):
        read_csv(tmp_path / "nope.csv")


def test_a_file_that_is_not_utf8_is_a_data_error_naming_the_line(tmp_path):
    p = tmp_path / "latin1.csv"
    p.write_bytes(b"timestamp,value\n0,1\n60,2\n120,\xb53\n")
    with pytest.raises(DataError) as info:
        read_csv(p)
    assert info.value.where == f"{p}:4"
    assert "not UTF-8" in str(info.value)


def test_a_text_stream_reads_like_a_file():
    s = read_csv(io.StringIO("timestamp,value\n0,1\n60,2\n"), name="stream")
    assert (s.name, s.values.tolist()) == ("stream", [1.0, 2.0])
    with pytest.raises(DataError, match=r"^stream:3: value 'x' is not a number"):
        read_csv(io.StringIO("timestamp,value\n0,1\n60,x\n"), name="stream")


# ------------------------------------------------------------------- Series.regular
def test_regular_resamples_by_mean_into_bins_that_end_on_the_grid_and_leaves_empty_bins_nan():
    # step 300: a sample at t falls in the bin (t - 300, t] labelled by its end
    #   t=  1, 100, 300 -> bin 300: mean(1, 2, 3) = 2
    #   t= 301, 599     -> bin 600: mean(10, 20) = 15
    #   nothing in (600, 900] -> bin 900: NaN (a gap)
    #   t= 901 (NaN), 1000, 1200 (NaN) -> bin 1200: the NaNs are ignored -> 7
    #   (the newest sample is on the grid: see the newest-bin rule below)
    s = Series(np.array([1, 100, 300, 301, 599, 901, 1000, 1200]),
               np.array([1, 2, 3, 10, 20, np.nan, 7, np.nan], dtype=float))
    r = s.regular(timedelta(minutes=5))
    assert r.timestamps.tolist() == [300, 600, 900, 1200]
    assert r.values[[0, 1, 3]].tolist() == [2.0, 15.0, 7.0]
    assert np.isnan(r.values[2])


def test_regular_never_labels_a_bin_after_the_newest_sample():
    # samples at :x2 and :x7 on a 5-minute grid (the NAB ec2 traces): the
    # newest sample at 1020 (3 s after nothing, 120 s after the 900 boundary)
    # would end the bin (900, 1200], a label after every sample and after a
    # cycle's now of 1023; it joins the bin of 900 instead
    s = Series(np.array([120, 420, 720, 1020]), np.array([1.0, 2.0, 3.0, 5.0]))
    r = s.regular(timedelta(minutes=5))
    assert r.timestamps.tolist() == [300, 600, 900]
    assert r.values.tolist() == [1.0, 2.0, 4.0]  # bin 900 holds 720 and 1020
    assert int(r.timestamps[-1]) <= int(s.timestamps[-1])
    # once the next sample arrives the bins are the ordinary ones again
    r2 = Series(np.array([120, 420, 720, 1020, 1320]), np.arange(1.0, 6.0)).regular(timedelta(minutes=5))
    assert r2.timestamps.tolist() == [300, 600, 900, 1200]
    assert r2.values.tolist() == [1.0, 2.0, 3.0, 4.5]


def test_regular_of_an_already_regular_series_is_the_same_series():
    s = Series(np.arange(0, 3000, 300), np.arange(10, dtype=float))
    r = s.regular(timedelta(seconds=300))
    assert r.timestamps.tolist() == s.timestamps.tolist()
    assert r.values.tolist() == s.values.tolist()


def test_regular_of_an_empty_series_is_empty():
    assert len(Series(np.array([], dtype=np.int64), np.array([])).regular(timedelta(minutes=5))) == 0


# ----------------------------------------------------------------- sources
def test_csv_source_serves_samples_in_start_exclusive_end_inclusive_windows(tmp_path):
    csv_file(tmp_path, "timestamp,value\n0,1\n60,2\n120,3\n180,4\n")
    src = CsvSource(CsvConfig(path=Path("trace.csv")), base_dir=tmp_path)  # relative to base_dir
    at = lambda s: datetime.fromtimestamp(s, UTC)
    assert src.fetch(None, at(120)).timestamps.tolist() == [0, 60, 120]
    assert src.fetch(at(60), at(180)).timestamps.tolist() == [120, 180]
    assert src.fetch(at(60), at(60)).timestamps.tolist() == []
    assert src.fetch(at(180), at(999)).timestamps.tolist() == []


def test_csv_source_rereads_the_file_when_it_changes(tmp_path):
    p = csv_file(tmp_path, "timestamp,value\n0,1\n")
    src = CsvSource(CsvConfig(path=p))
    end = datetime.fromtimestamp(10_000, UTC)
    assert src.fetch(None, end).values.tolist() == [1.0]
    p.write_text("timestamp,value\n0,1\n60,2\n", encoding="utf-8")
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert src.fetch(None, end).values.tolist() == [1.0, 2.0]


def test_csv_source_on_a_missing_file_is_a_data_error(tmp_path):
    src = CsvSource(CsvConfig(path=tmp_path / "gone.csv"))
    with pytest.raises(DataError, match="gone.csv: cannot read"):
        src.fetch(None, datetime(2024, 1, 1, tzinfo=UTC))


def test_replay_shifts_the_trace_to_start_at_and_serves_only_up_to_now(tmp_path):
    # recorded at relative seconds 0, 300, 600, 900; replayed from 2024-01-01
    csv_file(tmp_path, "timestamp,value\n0,1\n300,2\n600,3\n900,4\n")
    start = datetime(2024, 1, 1, tzinfo=UTC)
    src = ReplaySource(ReplayConfig(path=tmp_path / "trace.csv", start_at=start))
    base = int(start.timestamp())
    assert src.span == timedelta(seconds=900)
    # at start + 7 min the samples at +0 and +5 min have happened
    s = src.fetch(None, start + timedelta(minutes=7))
    assert s.timestamps.tolist() == [base, base + 300]
    assert s.values.tolist() == [1.0, 2.0]
    # the next fetch asks for what is new since the last one: (start + 7m, start + 15m]
    s = src.fetch(start + timedelta(minutes=7), start + timedelta(minutes=15))
    assert s.timestamps.tolist() == [base + 600, base + 900]
    assert src.fetch(None, start - timedelta(seconds=1)).timestamps.tolist() == []


def test_replay_without_start_at_serves_the_trace_as_recorded(tmp_path):
    csv_file(tmp_path, "timestamp,value\n2013-07-01T00:00:00Z,1\n2013-07-01T00:05:00Z,2\n")
    src = ReplaySource(ReplayConfig(path=tmp_path / "trace.csv"))
    s = src.fetch(None, datetime(2013, 7, 1, 0, 4, tzinfo=UTC))
    assert s.timestamps.tolist() == [epoch(2013, 7, 1)]


def test_sources_resolve_by_name_in_the_registry():
    assert registry.get("csv") is CsvSource
    assert registry.get("replay") is ReplaySource
    with pytest.raises(Exception, match="unknown metric source 'cvs'; known: csv, prometheus, replay"):
        registry.get("cvs")


# ------------------------------------------- off-grid samples in the live loop
def test_a_replay_of_an_off_grid_trace_on_a_clock_at_37_seconds_uses_its_forecasts(tmp_path):
    """NAB's ec2 trace samples at :x2 and :x7; a cycle at hh:m7:37 used to
    bin the newest sample into the bin ending hh:(m+3)0, after ``now``, and
    every cycle fell back as look-ahead (1,440 of 1,440 on the full trace)."""
    from datetime import datetime, timezone

    from engine.core.clock import ManualClock
    from engine.store import Store
    from tests.support import FIXTURES
    from tests.support.live import Platform, build_live, target_dict, write_config

    trace = FIXTURES / "traces" / "nab" / "ec2_cpu_utilization_5f5533.csv"
    t = target_dict("ec2", trace, mode="observe")
    t["source"] = {"type": "replay", "path": str(trace)}
    cfg = write_config(tmp_path / "c.yaml", [t])
    # the trace starts 2014-02-14T14:27:00; begin 3 h in, 37 s after a sample
    clock = ManualClock(datetime(2014, 2, 14, 17, 27, 37, tzinfo=timezone.utc))
    with Store(tmp_path / "s.db") as store:
        live = build_live(cfg, store, Platform(3))
        results = []
        for _ in range(100):
            results.append(live.run(clock.now()))
            clock.advance(timedelta(minutes=5))
    errors = [r.details.get("forecast_error") for r in results if r.details.get("forecast_error")]
    assert not errors, errors[:3]
    assert all(r.decision is not None and r.forecast is not None and not r.decision.fallback for r in results)
