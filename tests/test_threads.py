"""Thread tuning: the sweep over intra-op threads x spinning lands in session.json, the predictor (hence the
server) runs with it by default, and an explicit value still wins."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from slimformer.cpu import cpu_model, default_threads
from slimformer.errors import ModelError
from slimformer.predictor import ORT_SPINNING_ENTRY, SPINNING_KEY, OnnxPredictor, load
from slimformer.threads import thread_candidates, tune_threads
from slimformer.timing import sample_queries
from tests.test_profiling import write_three_intents

TINY_ONNX = Path(__file__).resolve().parent / "data" / "tiny_onnx"
TEXTS = [item["text"] for item in json.loads((TINY_ONNX / "reference.json").read_text())["texts"]]


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    return Path(shutil.copytree(TINY_ONNX, tmp_path / "tiny"))


def session_of(predictor: OnnxPredictor) -> tuple[int, str | None]:
    """Intra-op threads and the spinning entry of the ONNX Runtime session the predictor runs."""
    options = predictor.session.get_session_options()
    try:
        spinning = options.get_session_config_entry(ORT_SPINNING_ENTRY)
    except RuntimeError:  # never set: ONNX Runtime's default
        spinning = None
    return options.intra_op_num_threads, spinning


def test_thread_candidates() -> None:
    assert thread_candidates(1) == [1]
    assert thread_candidates(2) == [1, 2]
    assert thread_candidates(12) == [1, 2, 3, 4, 5, 6, 7, 8, 12]
    assert thread_candidates(64) == [1, 2, 3, 4, 5, 6, 7, 8, 16, 32, 64]


def test_tune_threads_records_the_fastest_setting(folder: Path) -> None:
    sweep = tune_threads(folder, sample_queries(TEXTS, 40), rounds=2)
    session = json.loads((folder / "session.json").read_text())
    assert session["max_length"] == 16  # what was there stays
    assert 1 <= session["threads"] <= default_threads()
    assert session[SPINNING_KEY] in (True, False)
    assert session["thread_sweep"] == sweep
    rows = sweep["p50_ms"]
    assert [(r["threads"], r["spinning"]) for r in rows] == [
        (count, spin) for count in thread_candidates(default_threads()) for spin in (True, False)
    ]
    fastest = min(rows, key=lambda r: r["p50_ms"])
    assert sweep["best"] == fastest and all(r["p50_ms"] > 0 for r in rows)
    assert (session["threads"], session[SPINNING_KEY]) == (fastest["threads"], fastest["spinning"])
    assert sweep["cpu"] == cpu_model() and sweep["cores"] == default_threads() and sweep["queries"] == 40
    predictor = load(folder)
    assert (predictor.threads, predictor.spinning) == (fastest["threads"], fastest["spinning"])
    assert session_of(predictor) == (fastest["threads"], "1" if fastest["spinning"] else "0")


def test_a_sweep_under_a_cpu_hog_is_timed_again_and_says_so(folder: Path, capsys) -> None:
    """Another process spinning on every core makes each try busy: all TUNE_TRIES are used, and the load is
    recorded and printed."""
    import subprocess
    import sys

    from slimformer.threads import TUNE_TRIES, print_sweep
    from slimformer.timing import QUIET_SHARE

    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(default_threads())]
    try:
        loaded = tune_threads(folder, sample_queries(TEXTS, 40), rounds=2)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert loaded["tries"] == TUNE_TRIES and loaded["others_cpu"] >= QUIET_SHARE
    print_sweep(loaded)
    assert f"in the least loaded of {TUNE_TRIES} tries" in capsys.readouterr().out


def test_least_loaded_stops_at_the_first_quiet_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from slimformer import timing

    shares = iter([0.5, 0.3, 0.02, 0.0])

    class Scripted:  # OtherLoad with the shares above, one per run
        def __enter__(self):
            self.share = next(shares)
            return self

        def __exit__(self, *exc):
            return None

        @property
        def busy(self) -> bool:
            return timing.is_busy(self.share)

    monkeypatch.setattr(timing, "OtherLoad", Scripted)
    runs = iter(["first", "second", "third", "fourth"])
    assert timing.least_loaded(lambda: next(runs), 5) == ("third", 0.02, 3)
    shares = iter([0.5, 0.3, 0.4])
    runs = iter(["first", "second", "third"])
    assert timing.least_loaded(lambda: next(runs), 3) == ("second", 0.3, 3)  # never quiet: the least loaded


def test_recorded_threads_and_spinning_are_the_default_and_explicit_values_win(folder: Path) -> None:
    session = json.loads((folder / "session.json").read_text())
    (folder / "session.json").write_text(json.dumps({**session, "threads": 2, SPINNING_KEY: False}))
    recorded = OnnxPredictor.from_file(folder / "model.onnx", folder)
    assert (recorded.threads, recorded.spinning) == (2, False) and session_of(recorded) == (2, "0")
    assert recorded.settings()[SPINNING_KEY] is False
    assert session_of(load(folder)) == (2, "0")
    explicit = OnnxPredictor.from_file(folder / "model.onnx", folder, threads=1, spinning=True)
    assert session_of(explicit) == (1, "1")
    assert session_of(load(folder, threads=1)) == (1, "0")  # threads given, spinning as recorded
    (folder / "session.json").write_text(json.dumps(session))  # nothing recorded: every core, ORT's default
    assert session_of(load(folder)) == (1, None)  # the fixture's session.json says 1 thread


def test_tune_threads_refuses_what_it_cannot_time(tmp_path: Path, folder: Path, tiny_classifier_dir: Path) -> None:
    with pytest.raises(ModelError, match="thread tuning is for ONNX Runtime folders"):
        tune_threads(tiny_classifier_dir, TEXTS)
    with pytest.raises(ModelError, match="at least one query"):
        tune_threads(folder, [])
    assert json.loads((folder / "session.json").read_text()) == json.loads((TINY_ONNX / "session.json").read_text())


def test_cli_tune_threads(folder: Path, tmp_path: Path, capsys) -> None:
    from slimformer.cli import main

    data = write_three_intents(tmp_path / "data")
    with pytest.raises(SystemExit) as exited:
        main(["tune-threads", str(folder), "--data", str(data), "--queries", "20", "--max-threads", "1"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    session = json.loads((folder / "session.json").read_text())
    assert session["threads"] == 1 and len(session["thread_sweep"]["p50_ms"]) == 2
    assert session["thread_sweep"]["queries"] == 20
    assert "fastest: 1 threads" in out and "written to session.json" in out


def deploy(folder: Path, tmp_path: Path, name: str, threads: int | None = None) -> Path:
    """write_deployable_model of the ONNX `folder` after a fake benchmark, with validation data of 3 intents."""
    from slimformer.data import load_data
    from slimformer.pipeline import Variant
    from slimformer.report import ReportConfig, write_deployable_model
    from tests.test_report import fake_result

    data = load_data(str(write_three_intents(tmp_path / "data")))
    benchmark = {
        "environment": {"cpu": "Test CPU", "cpu_count": 2, "isa": {}, "threads": 2, "platform": "linux"},
        "data": {"name": "three", "split": "test", "rows": 24},
        "config": {"latency_samples": 10, "warmup": 1, "batch_size": 8},
        "results": [fake_result("teacher", 0.9, 5.0, 9.0), fake_result("int8", 0.9, 0.5, 1.0, "onnxruntime")],
    }
    benchmark["environment"].update(python="3.11", versions={})
    variants = [Variant("teacher", tmp_path, "input"), Variant("int8", folder, "quantize")]
    return write_deployable_model(folder, tmp_path / name, benchmark, variants, ReportConfig(), threads, data)


def test_the_deployable_onnx_folder_is_tuned(folder: Path, tmp_path: Path) -> None:
    deployed = deploy(folder, tmp_path, "model")
    sweep = json.loads((deployed / "session.json").read_text())["thread_sweep"]
    assert sweep["queries"] == 200 and sweep["cpu"] == cpu_model()
    assert f"runs with {sweep['best']['threads']} intra-op threads" in (deployed / "README.md").read_text()
    fixed = deploy(folder, tmp_path, "fixed", threads=1)
    assert "thread_sweep" not in json.loads((fixed / "session.json").read_text())  # the recipe's threads win


def test_the_deployable_model_keeps_the_threads_it_was_benchmarked_with(folder: Path, tmp_path: Path) -> None:
    """A sweep its stage measured on this CPU is kept as it is; one from another CPU is measured again."""
    here = {"cpu": cpu_model(), "cores": 2, "queries": 7, "best": {"threads": 1, "spinning": False, "p50_ms": 0.1}}
    (folder / "session.json").write_text(json.dumps({"threads": 1, "thread_sweep": here}))
    deployed = deploy(folder, tmp_path, "kept")
    assert json.loads((deployed / "session.json").read_text())["thread_sweep"] == here

    elsewhere = {**here, "cpu": "Another CPU"}
    (folder / "session.json").write_text(json.dumps({"threads": 1, "thread_sweep": elsewhere}))
    deployed = deploy(folder, tmp_path, "again")
    sweep = json.loads((deployed / "session.json").read_text())["thread_sweep"]
    assert sweep["cpu"] == cpu_model() and sweep["queries"] == 200
