"""engine.progress: a bar on a terminal, nothing anywhere else."""

from __future__ import annotations

import io

from engine.progress import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_is_drawn_on_a_terminal():
    out = Terminal()
    with progress(5, "epochs", file=out) as bar:
        for _ in range(5):
            bar.update()
    assert bar.shown and bar.done == 5
    text = out.getvalue()
    assert "epochs" in text and "5/5" in text


def test_nothing_is_written_when_not_a_terminal_or_quiet():
    for out, quiet in ((io.StringIO(), False), (Terminal(), True)):
        with progress(3, "epochs", quiet=quiet, file=out) as bar:
            bar.update(3)
        assert out.getvalue() == "" and not bar.shown and bar.done == 3


def test_an_open_ended_count_needs_no_total():
    out = Terminal()
    with progress(None, "cycles", file=out) as bar:
        bar.update(7)
    assert "7" in out.getvalue() and "cycles" in out.getvalue()


# ------------------------------------------------------------- where it is used
SMALL = {"lookback": 12, "horizon": 4, "hidden_size": 8, "epochs": 3, "patience": 10, "seed": 3}


def _sine(n: int, end: int = 1_700_000_100):
    import numpy as np

    from engine.core.types import Series

    t = np.arange(n)
    return Series(end - 300 * (n - 1 - t), 50 + 20 * np.sin(2 * np.pi * t / 288))


def test_the_lstm_reports_every_epoch_to_its_callback():
    import pytest

    pytest.importorskip("torch", reason="the LSTM needs torch (pip install 'forescale[lstm]')")
    from forecasters.lstm import GlobalLSTM, LSTMForecaster

    seen = []
    model = LSTMForecaster(SMALL, on_epoch=lambda e, n: seen.append((e, n)))
    model.fit(_sine(3 * 288))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    seen.clear()
    GlobalLSTM(SMALL, on_epoch=lambda e, n: seen.append((e, n))).fit({"a": _sine(3 * 288)})
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert LSTMForecaster(SMALL).on_epoch is None  # off by default


def test_train_global_draws_its_epochs_on_a_terminal_and_not_with_quiet(tmp_path, monkeypatch, capsys):
    import json
    import sys
    import time

    import pytest
    import yaml

    pytest.importorskip("torch", reason="the LSTM needs torch (pip install 'forescale[lstm]')")
    from engine.cli import main

    end = int(time.time()) // 300 * 300
    s = _sine(3 * 288, end)
    trace = tmp_path / "a.csv"
    trace.write_text("timestamp,value\n" + "".join(f"{t},{v:.4f}\n" for t, v in zip(s.timestamps, s.values)))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"state": str(tmp_path / "s.db"), "targets": [{
        "name": "a", "source": {"type": "csv", "path": str(trace)},
        "forecaster": {"name": "lstm", "history": "3d", "params": SMALL}, "policy": {"capacity_per_replica": 5}}]}))
    # the level-free network (the default) and the older multi-series one
    level_free = {"hidden_size": 8, "head_width": 16, "epochs": 3, "origin_stride": 1, "device": "cpu"}
    for quiet, model in ((False, []), (True, []), (False, ["--model", "lstm"]), (True, ["--model", "lstm"])):
        err = Terminal()
        monkeypatch.setattr(sys, "stderr", err)
        params = SMALL if model else level_free
        args = ["train-global", "--config", str(cfg), "--out", str(tmp_path / "g.pt"), "--params", json.dumps(params),
                "--json"] + model + (["--quiet"] if quiet else [])
        assert main(args) == 0
        doc = json.loads(capsys.readouterr().out)  # stdout holds the JSON report alone
        assert doc["targets"] == {"a": {"samples": 3 * 288}}
        if quiet:
            assert "epochs" not in err.getvalue()
        else:
            # the level-free model trains three networks (its default ensemble), 3 epochs each
            assert "train-global: epochs" in err.getvalue() and ("3/3" if model else "9/9") in err.getvalue()
