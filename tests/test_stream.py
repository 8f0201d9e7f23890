"""stream_sim: the notebook's real-time cells, each mode against the real database."""

import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from vectorstore.models import Document

pytestmark = pytest.mark.django_db

KEYS = {"mode", "count", "seconds", "throughput_per_s", "latency_ms", "embed_ms", "write_ms"}


def test_all_three_modes_store_each_record_and_plot(tmp_path):
    """insert, copy and batch each store every record once, report the documented keys, and plot a PNG."""
    out = StringIO()
    png = tmp_path / "latency.png"
    call_command(
        "stream_sim",
        *("--count", "6", "--mode", "insert", "--mode", "copy", "--mode", "batch", "--batch-size", "4"),
        *("--id-prefix", "t-", "--plot", str(png), "--keep", "--json"),
        stdout=out,
    )
    runs = json.loads(out.getvalue().strip().splitlines()[-1])["runs"]
    assert [r["mode"] for r in runs] == ["insert", "copy", "batch"]
    for run in runs:
        assert set(run) >= KEYS
        assert run["count"] == 6
        assert set(run["latency_ms"]) == {"p50", "p95", "p99", "max", "mean"}
        assert 0 < run["latency_ms"]["p50"] <= run["latency_ms"]["p99"] <= run["latency_ms"]["max"]
        assert run["embed_ms"]["p50"] > 0 and run["write_ms"]["p50"] > 0
    for mode in ("insert", "copy", "batch"):
        assert Document.objects.filter(external_id__startswith=f"t-{mode}-").count() == 6
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rate_spaces_arrivals():
    """With --rate, 5 records at 20/s take at least the 0.2 s between first and last arrival."""
    out = StringIO()
    call_command("stream_sim", "--count", "5", "--rate", "20", "--mode", "batch", "--json", stdout=out)
    run = json.loads(out.getvalue().strip().splitlines()[-1])
    assert run["seconds"] >= 0.2 and run["rate"] == 20.0


def test_bad_options_are_command_errors(tmp_path):
    with pytest.raises(CommandError, match="--count must be at least 1"):
        call_command("stream_sim", "--count", "0")
    with pytest.raises(CommandError, match="no such file"):
        call_command("stream_sim", "--source", str(tmp_path / "missing.parquet"))


@pytest.mark.django_db(transaction=True)
def test_plot_without_matplotlib_is_refused_before_any_record_is_written(clean_env):
    """stream_sim --plot on an install without the [plot] extra: a CommandError naming the extra, and no
    record stored (it used to write them all, then fail)."""
    from django.db import connection

    from tests.helpers import database_url, run_python

    code = """
import sys
class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "matplotlib":
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, _NotInstalled())
import os, django
os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
django.setup()
from django.core.management import call_command
from django.core.management.base import CommandError
try:
    call_command("stream_sim", "--count", "2", "--plot", "latency.png")
except CommandError as exc:
    print("refused:", exc)
"""
    result = run_python(code, {**clean_env, "DATABASE_URL": database_url(connection.settings_dict)})
    assert result.returncode == 0, result.stderr
    assert "vectorstore[plot]" in result.stdout
    assert not Document.objects.exists()


def test_a_run_removes_its_records_unless_kept(capsys):
    """By default the records a run wrote are gone at its end (they are copies of real records, which
    they would crowd in searches), and it says so; --keep keeps them; --clean removes what runs kept."""
    before = Document.objects.count()
    call_command("stream_sim", "--count", "4", "--mode", "batch", "--batch-size", "2", "--json")
    out = capsys.readouterr().out.strip().splitlines()
    assert json.loads(out[-1])["removed"] == 4 and "removed the 4 records this run wrote" in out[-2]
    assert Document.objects.count() == before
    call_command("stream_sim", "--count", "3", "--keep", "--json")
    out = capsys.readouterr().out.strip().splitlines()
    assert json.loads(out[-1])["removed"] is None and "stream_sim --clean removes them" in out[-2]
    assert Document.objects.filter(external_id__startswith="stream-").count() == 3
    call_command("stream_sim", "--clean", "--json")
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"removed": 3}
    assert Document.objects.count() == before


@pytest.mark.parametrize(
    ("latencies", "scale"), [((18.0, 48.0), "linear"), ((2.0, 900.0), "log")], ids=["narrow", "wide"]
)
def test_the_plot_labels_its_axes_with_plain_numbers(latencies, scale):
    """A run of 18-48 ms (the README's own command) gets a linear axis with numbered ticks; one over
    decades a log axis labelled 2, 5, 10, 20...: never an unlabelled log axis or ``4 x 10^1``."""
    import numpy as np

    from vectorstore.loading import stream

    values = list(np.linspace(*latencies, 50))
    report = stream.StreamReport(mode="insert", batch_size=1, rate=None)
    report.latencies, report.embed, report.write = (
        values,
        [v * 0.8 for v in values],
        [v * 0.2 for v in values],
    )
    fig = stream.figure([report])
    fig.canvas.draw()
    left, right = fig.axes
    assert left.get_xscale() == scale and scale in left.get_xlabel()
    for labels in (left.get_xticklabels(), right.get_yticklabels()):
        shown = [t.get_text() for t in labels if t.get_text()]
        assert len(shown) >= 2, shown
        assert all(float(text) > 0 or text == "0" for text in shown), shown
