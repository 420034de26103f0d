"""The PostgreSQL state on a real server: versioned schema, several writers
(the audit chain stays one unbroken chain, a plan is claimed once), errors
mapped like SQLite's, and the password never shown."""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import timedelta

import pytest
import yaml

from engine import audit
from engine.auth import AuthError, Link, Links
from engine.config import load_config
from engine.core.errors import PlanStateError, StateError
from engine.core.types import PlanStatus
from engine.db import redact_url
from engine.postgres import MIGRATIONS, PG_SCHEMA_VERSION, PgStore
from engine.store import open_store
from tests.engine.test_store import NOW, make_decision, plan
from tests.support import ROOT
from tests.support.postgres import PASSWORD, pg_server, pg_url  # noqa: F401 - fixtures


def test_a_new_database_gets_the_current_schema_once_and_a_newer_one_is_refused(pg_url):
    with open_store(pg_url) as s, open_store(pg_url) as again:
        assert isinstance(s, PgStore) and s.shared
        assert s.schema_version == again.schema_version == PG_SCHEMA_VERSION
        assert [r[0] for r in s.db.execute("SELECT version FROM schema_version ORDER BY version")] == \
            sorted(MIGRATIONS) == list(range(2, PG_SCHEMA_VERSION + 1))
        s.db.execute("INSERT INTO schema_version(version) VALUES (?)", (PG_SCHEMA_VERSION + 1,))
    with pytest.raises(StateError, match=f"schema version {PG_SCHEMA_VERSION + 1} is newer"):
        open_store(pg_url)


def test_a_version_2_database_is_upgraded_to_the_version_3_tables(pg_url):
    with open_store(pg_url) as s:
        s.db.execute("DROP TABLE anomaly_masks")
        s.db.execute("DROP TABLE notify_cursors")
        s.db.execute("DELETE FROM schema_version WHERE version > 2")  # as written before version 3
    with open_store(pg_url) as s:
        assert [r[0] for r in s.db.execute("SELECT version FROM schema_version ORDER BY version")] == \
            list(range(2, PG_SCHEMA_VERSION + 1))
        assert s.anomaly_masks("web") == {} and s.notify_cursors() == {}


def test_a_version_3_database_is_upgraded_to_the_shared_model_checkpoints_keeping_its_rows(pg_url):
    with open_store(pg_url) as s:  # as a forescale of schema 3 left it: no models table
        s.record_decision(make_decision(NOW), "dry-run", "dry-run", NOW)
        s.db.execute("DROP TABLE models")
        s.db.execute("DROP TABLE calibration_pairs")  # (version 5)
        s.db.execute("DROP TABLE notify_shard_cursors")  # (version 6)
        s.db.execute("DELETE FROM schema_version WHERE version >= 4")
        assert s.schema_version == 3
    with open_store(pg_url) as s:
        assert s.schema_version == PG_SCHEMA_VERSION
        assert len(s.decisions()) == 1 and audit.verify(s).ok
        s.save_model("web", {"key": "k", "last_fit": 1}, b"\x00model\xff")
        assert s.load_model("web") == ({"key": "k", "last_fit": 1}, b"\x00model\xff")


def test_replicas_opening_a_fresh_database_at_once_migrate_it_once(pg_url):
    errors = []

    def opener():
        try:
            PgStore(pg_url).close()  # each its own pool: as separate processes would
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with open_store(pg_url) as s:
        assert s.db.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == len(MIGRATIONS)  # each once


_WRITER = """
import sys
from datetime import datetime, timedelta, timezone
from engine.store import open_store
from tests.engine.test_store import make_decision
url, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
t0 = datetime(2024, 3, 1, tzinfo=timezone.utc)
with open_store(url, audit_key=b"k" * 32) as s:
    for i in range(n):
        d = make_decision(t0 + timedelta(minutes=i), target=who)
        s.record_decision(d, "auto", "intent", d.at)
        s.set_decision_status(d.id, "applied", d.at)
"""


def test_the_audit_chain_stays_one_unbroken_chain_with_several_writing_processes(pg_url):
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, pg_url, f"replica-{i}", "25"], cwd=ROOT,
                              stderr=subprocess.PIPE, text=True) for i in range(3)]
    for p in procs:
        assert p.wait(120) == 0, p.stderr.read()
    with open_store(pg_url, audit_key=b"k" * 32) as s:
        status = audit.verify(s)
        assert status.ok, status.reason
        assert status.records == 3 * 25 * 2
        seqs = [r[0] for r in s.db.execute("SELECT seq FROM audit ORDER BY seq")]
        assert seqs == list(range(1, 151))  # no gap, no duplicate
        assert s.db.execute("SELECT COUNT(*) FROM decisions WHERE status='applied'").fetchone()[0] == 75
        # and an edit behind forescale's back is found, as on SQLite
        s.db.execute("UPDATE decisions SET desired=60 WHERE id=(SELECT MIN(id) FROM decisions)")
        assert not audit.verify(s).ok


def test_two_stores_claiming_one_approved_plan_at_once_claim_it_once(pg_url):
    with open_store(pg_url) as s:
        s.save_plan(plan())
        s.transition_plan("p1", PlanStatus.APPROVED, NOW, identity="unix:ana", allowed_from=(PlanStatus.PENDING,))
    wins, losses = [], []
    barrier = threading.Barrier(4)

    def claim():
        st = PgStore(pg_url)  # a pool of its own: another replica
        try:
            barrier.wait()
            st.transition_plan("p1", PlanStatus.APPLYING, NOW + timedelta(minutes=1),
                               allowed_from=(PlanStatus.APPROVED,))
            wins.append(1)
        except PlanStateError:
            losses.append(1)
        finally:
            st.close()

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (len(wins), len(losses)) == (1, 3)


def test_a_duplicate_key_is_the_same_error_as_on_sqlite(pg_url):
    with open_store(pg_url) as s:
        s.save_plan(plan())
        link = Link("once-only", "p1", "approve", "email", 10**10)
        Links.spend(s, link, NOW)
        assert Links.used(s, link)
        with pytest.raises(AuthError, match="already used"):
            Links.spend(s, link, NOW)


def test_a_decision_round_trips_through_rows_read_by_name_and_index(pg_url):
    with open_store(pg_url) as s:
        d = make_decision(NOW)
        s.record_decision(d, "auto", "intent", NOW)
        row = s.db.execute("SELECT id, desired FROM decisions WHERE id=?", (d.id,)).fetchone()
        assert row[0] == row["id"] == d.id and row[1] == row["desired"] == d.desired
        assert s.unfinished_intents("web")[0]["id"] == d.id
        assert dict(zip(row.keys(), row)) == {"id": d.id, "desired": d.desired}
        # what `--target` is checked against when a listing is empty
        assert s.targets() == [d.target]


def test_a_unix_socket_url_with_its_directory_in_the_query_opens_the_database(pg_server, tmp_path, monkeypatch):
    """libpq's ``postgresql://user@/db?host=DIR`` (no host before the path)
    was refused as having no host."""
    from tests.support.postgres import PASSWORD, USER

    db = pg_server.fresh_database().rsplit("/", 1)[1]
    url = f"postgresql://{USER}@/{db}?host={pg_server.root}&port={pg_server.port}"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"state: '{url}'\ntargets:\n  - name: web\n    source: {{type: csv, path: x.csv}}\n"
                   "    policy: {capacity_per_replica: 10}\nstate_password_env: FS_TEST_PG_PW\n")
    monkeypatch.setenv("FS_TEST_PG_PW", PASSWORD)
    with open_store(load_config(cfg)) as s:
        s.record_decision(make_decision(NOW), "dry-run", "dry-run", NOW)
        assert s.targets() == ["web"]


def test_the_password_is_never_shown(pg_server, tmp_path, capsys):
    url = pg_server.fresh_database()
    wrong = url.replace(PASSWORD, "not-the-password-123")
    with pytest.raises(StateError) as exc:
        open_store(wrong)
    assert "not-the-password-123" not in str(exc.value) and PASSWORD not in str(exc.value)
    assert "password authentication failed" in str(exc.value)
    assert redact_url(url) in str(exc.value) or "127.0.0.1" in str(exc.value)
    # validate shows where state is kept, without the password
    cfg = tmp_path / "c.yaml"
    from tests.support.live import target_dict, write_trace

    trace = write_trace(tmp_path / "load.csv", [100.0] * 30)
    cfg.write_text(yaml.safe_dump({"state": url, "server": {"enabled": False},
                                   "targets": [target_dict("web", trace)]}))
    out = subprocess.run([sys.executable, "-m", "engine.cli", "validate", "--config", str(cfg)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert PASSWORD not in out.stdout + out.stderr and redact_url(url) in out.stdout
    # a malformed URL is refused naming the field, without echoing the password
    cfg.write_text(yaml.safe_dump({"state": f"postgresql://forescale:{PASSWORD}@127.0.0.1:99999999/x",
                                   "targets": [target_dict("web", trace)]}))
    out = subprocess.run([sys.executable, "-m", "engine.cli", "validate", "--config", str(cfg)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "state" in out.stderr and PASSWORD not in out.stdout + out.stderr


def test_the_password_can_come_from_the_variable_the_config_names(pg_server, tmp_path, monkeypatch):
    url = pg_server.fresh_database()
    from tests.support.live import target_dict, write_trace

    trace = write_trace(tmp_path / "load.csv", [100.0] * 30)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"state": url.replace(f":{PASSWORD}", ""), "state_password_env": "DB_PW",
                                   "targets": [target_dict("web", trace)]}))
    monkeypatch.delenv("DB_PW", raising=False)
    with pytest.raises(Exception, match="state_password_env: environment variable DB_PW is not set"):
        open_store(load_config(cfg))
    monkeypatch.setenv("DB_PW", PASSWORD)
    with open_store(load_config(cfg)) as s:
        assert s.schema_version == PG_SCHEMA_VERSION
        assert PASSWORD not in s.path
    from engine.auth import config_secrets

    assert PASSWORD in config_secrets(load_config(cfg))  # so the log redactor knows it


def test_forescale_fit_on_a_postgresql_state_saves_into_the_shared_table_the_daemon_restores(pg_url, tmp_path,
                                                                                              capsys):
    import time

    import numpy as np

    from engine.build import build_targets
    from engine.cli import main
    from engine.core.units import from_epoch, isoformat
    from tests.support import write_trace

    end = int(time.time()) // 300 * 300
    t = np.arange(3 * 288)
    trace = write_trace(tmp_path / "cpu.csv", end, 50 + 30 * np.sin(2 * np.pi * t / 288))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"state": pg_url, "server": {"enabled": False}, "targets": [
        {"name": "cpu", "source": {"type": "csv", "path": trace},
         "forecaster": {"name": "seasonal_naive", "history": "3d"}, "policy": {"capacity_per_replica": 5}}]}))
    assert main(["fit", "--config", str(cfg), "--executor", "local", "--workers", "1", "--at",
                 isoformat(from_epoch(end)), "--json", "-q"]) == 0
    doc = yaml.safe_load(capsys.readouterr().out)
    fitted = doc["targets"]["cpu"]["fitted"]
    assert PASSWORD not in doc["state"] and "models table" in doc["state"]
    assert not (tmp_path / "c.models").exists() and not list(tmp_path.glob("*.models"))  # no files: the table
    conf = load_config(cfg)
    with open_store(conf) as store:
        (lt,) = build_targets(conf, store)
        res = lt.run(from_epoch(end))
    assert res.details.get("model", "").startswith(f"model {fitted} restored"), res.details
    assert res.forecast.model_version == fitted
def test_a_version_4_database_gains_the_calibration_pairs_and_they_round_trip(pg_url):
    import numpy as np

    from engine.core.types import Series

    with open_store(pg_url) as s:  # made current, then set back to what version 4 had
        s.db.execute("DROP TABLE calibration_pairs")
        s.db.execute("DROP TABLE notify_shard_cursors")  # (version 6)
        s.db.execute("DROP TABLE fits_started")  # (version 7)
        s.db.execute("DELETE FROM schema_version WHERE version >= 5")
    with open_store(pg_url) as s:
        assert s.schema_version == PG_SCHEMA_VERSION == 8
        s.record_calibration("web", "mstl", [(300, 1000, 1300, {0.5: 1.0, 0.9: 2.0}),
                                             (600, 1000, 1600, {0.5: 1.5, 0.9: 2.5})])
        assert s.fill_calibration_actuals("web", Series(np.array([1300, 1600]), np.array([3.0, np.nan]), "web")) == 1
        s.record_calibration("web", "mstl", [(300, 1300, 1600, {0.5: 4.0})], drop_before=1400)
    with open_store(pg_url) as s:  # another process reads what was kept
        assert s.calibration_pairs("web", "mstl", since=0) == [(600, 1000, 1600, {0.5: 1.5, 0.9: 2.5}, None),
                                                               (300, 1300, 1600, {0.5: 4.0}, None)]


def test_a_version_5_database_gains_the_notifiers_shard_cursors_fenced_by_epoch(pg_url):
    with open_store(pg_url) as s:  # made current, then set back to what version 5 had
        s.record_decision(make_decision(NOW), "dry-run", "dry-run", NOW)
        s.save_notify_cursors({"hook": 7}, NOW)
        s.db.execute("DROP TABLE notify_shard_cursors")
        s.db.execute("DROP INDEX plan_transitions_seq")
        s.db.execute("DROP TABLE fits_started")  # (version 7)
        s.db.execute("DELETE FROM schema_version WHERE version >= 6")
        assert s.schema_version == 5
    with open_store(pg_url) as s:
        assert s.schema_version == PG_SCHEMA_VERSION == 8
        assert len(s.decisions()) == 1 and s.notify_cursors() == {"hook": 7} and s.notify_shard_cursors() == {}
        s.save_notify_shard_cursor("hook", 4, 1, 9, NOW, fence=lambda db: {"epoch": 3, "holder": "b"})
        s.save_notify_shard_cursor("hook", 4, 1, 8, NOW, fence=lambda db: {"epoch": 2, "holder": "a"})  # older
    with open_store(pg_url) as s:  # another process reads what was kept
        assert s.notify_shard_cursors() == {("hook", 4, 1): 9}


def test_a_version_6_database_gains_the_fits_under_way_shared_by_the_replicas(pg_url):
    with open_store(pg_url) as s:  # made current, then set back to what version 6 had
        s.record_decision(make_decision(NOW), "dry-run", "dry-run", NOW)
        s.db.execute("DROP TABLE fits_started")
        s.db.execute("DELETE FROM schema_version WHERE version >= 7")
        assert s.schema_version == 6
    with open_store(pg_url) as s:
        assert s.schema_version == PG_SCHEMA_VERSION == 8
        assert len(s.decisions()) == 1 and s.started_fit("web") is None
        s.fit_started("web", "lstm", "k1", 1, NOW)
    with open_store(pg_url) as s:  # another replica reads the fit the first did not outlive
        got = s.started_fit("web")
        assert (got["model"], got["key"], got["failures"], got["started_at"]) == ("lstm", "k1", 1, NOW)
        s.fit_ended("web")
        assert s.started_fit("web") is None


def test_a_version_7_database_gains_the_sample_sources_keeping_its_cached_samples(pg_url):
    from engine.core.types import Series
    import numpy as np

    with open_store(pg_url) as s:  # made current, then set back to what version 7 had
        s.cache_samples("web", Series(np.array([60, 120]), np.array([1.0, 2.0]), "web"))
        s.db.execute("DROP TABLE sample_sources")
        s.db.execute("DELETE FROM schema_version WHERE version >= 8")
        assert s.schema_version == 7
    with open_store(pg_url) as s:
        assert s.schema_version == PG_SCHEMA_VERSION == 8
        assert s.cached_samples("web").values.tolist() == [1.0, 2.0] and s.samples_source("web") is None
        s.cache_samples("web", Series(np.array([180]), np.array([3.0]), "web"), "abc", NOW)
    with open_store(pg_url) as s:
        assert s.samples_source("web") == "abc"
        assert s.drop_samples("web") == 3 and len(s.cached_samples("web")) == 0 and s.samples_source("web") is None


def test_a_fit_under_way_counts_as_alive_while_the_replica_that_began_it_beats(pg_url):
    from engine.leases import Leases

    with open_store(pg_url) as a, open_store(pg_url) as b:
        a.replica, a.replica_ttl = "daemon:host-a:11:aa", 30.0
        b.replica, b.replica_ttl = "daemon:host-b:12:bb", 30.0
        a.fit_started("web", "lstm", "k1", 2, NOW)
        got = b.started_fit("web")
        assert (got["holder"], got["failures"], got["alive"]) == (a.replica, 2, False)  # a never beat: gone
        leases = Leases(a, shards=2, lease_s=30.0, holder=a.replica)
        leases.renew()  # a's heartbeat
        assert b.started_fit("web")["alive"] and not a.started_fit("web")["alive"]  # a's own is not another's
        a.db.execute("UPDATE replicas SET seen_at = clock_timestamp() - interval '31 seconds' WHERE holder=?",
                     (a.replica,))
        assert not b.started_fit("web")["alive"]  # silent for longer than the lease: killed
        leases.renew()
        assert b.started_fit("web")["alive"]
        leases.release()  # stopped: its heartbeat goes with its leases
        assert not b.started_fit("web")["alive"]
        b.fit_ended("web")  # not b's fit: kept
        assert b.started_fit("web")["holder"] == a.replica
        b.fit_ended("web", a.replica)  # taken up
        assert b.started_fit("web") is None
