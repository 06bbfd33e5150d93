"""The library's CLI end to end on tiny models: attack -> evaluate -> defend -> report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sanitizer.tiny import build_tiny_model, write_sentiment_csv


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    store = root / "store"
    build_tiny_model(store, "tiny/bert", "bert")
    build_tiny_model(store, "tiny/teacher", "bert", hidden_size=16, num_layers=2, seed=1)
    return {
        "root": root,
        "env": {
            "SANITIZER_MODEL_STORE": str(store),
            "PATH": str(Path(sys.executable).parent),
            "HOME": str(root),
        },
        "train": write_sentiment_csv(root / "train.csv", 96, 0),
        "clean": write_sentiment_csv(root / "clean.csv", 40, 1),
        "test": write_sentiment_csv(root / "test.csv", 40, 2),
    }


def _cli(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sanitizer_cli", *args],
        capture_output=True,
        text=True,
        env=env["env"],
        timeout=300,
    )


def test_help_reads_well(env):
    out = _cli(env, "--help")
    assert out.returncode == 0
    for cmd in ("attack", "defend", "evaluate"):
        assert cmd in out.stdout
        sub = _cli(env, cmd, "--help")
        assert sub.returncode == 0 and "--base-model" in sub.stdout


def test_attack_evaluate_defend(env):
    adapter = env["root"] / "poisoned"
    r = _cli(
        env,
        "attack",
        "--base-model",
        "tiny/bert",
        "--data",
        str(env["train"]),
        "--attack",
        "badnet",
        "--target-label",
        "negative",
        "--poison-rate",
        "0.3",
        "--epochs",
        "1",
        "--out",
        str(adapter),
    )
    assert r.returncode == 0, r.stderr
    files = sorted(p.name for p in adapter.iterdir())
    assert "adapter_model.safetensors" in files and not any(
        f.endswith((".bin", ".pt")) for f in files
    )
    info = json.loads((adapter / "attack.json").read_text())
    assert info["attack"]["name"] == "badnet" and info["attack"]["target_label"] == 0
    card = (adapter / "README.md").read_text()
    assert 'base_model: "tiny/bert"' in card and str(env["root"]) not in card  # no local path

    r = _cli(
        env,
        "evaluate",
        "--base-model",
        "tiny/bert",
        "--adapter",
        str(adapter),
        "--test-data",
        str(env["test"]),
        "--attack",
        "badnet",
        "--target-label",
        "negative",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    ev = json.loads(r.stdout)
    assert 0 <= ev["clean_accuracy"] <= 1 and 0 <= ev["attack_success_rate"] <= 1
    # a progress bar on stderr (stdout stays the JSON): the clean rows plus the triggered ones
    total = ev["n_clean"] + ev["n_triggered"]
    assert "evaluate" in r.stderr and f"{total}/{total}" in r.stderr, r.stderr

    out = env["root"] / "sanitized"
    r = _cli(
        env,
        "defend",
        "--method",
        "finetune",
        "--base-model",
        "tiny/bert",
        "--adapter",
        str(adapter),
        "--clean-data",
        str(env["clean"]),
        "--test-data",
        str(env["test"]),
        "--attack",
        "badnet",
        "--target-label",
        "negative",
        "-p",
        "epochs=1",
        "--out",
        str(out),
        "--json",
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report == json.loads((out / "report.json").read_text())
    assert report["metrics"]["before"]["clean_accuracy"] == pytest.approx(ev["clean_accuracy"])
    assert report["metrics"]["before"]["attack_success_rate"] == pytest.approx(
        ev["attack_success_rate"]
    )
    assert report["datasets"]["clean"]["sha256"] and report["adapter_in"]["mode"] == "merge_fresh"
    assert set(report["timings"]) >= {"load_s", "defense_s", "total_s"}
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    # issue 26 item 9: a Hub model card with the method and the measured numbers, and the
    # label names beside the weights; the report's file hashes cover the card
    card = (out / "adapter" / "README.md").read_text()
    assert card.startswith('---\nbase_model: "tiny/bert"\nlibrary_name: peft\n')
    assert "sanitized-finetune" in card and report["datasets"]["clean"]["sha256"] in card
    asr_after = report["metrics"]["after"]["attack_success_rate"]
    assert f"value: {asr_after:.4f}" in card
    meta = json.loads((out / "adapter" / "sanitizer_adapter.json").read_text())
    names = report["label_names"]
    assert meta["id2label"] == {str(i): n for i, n in enumerate(names)} and len(names) == 2
    import hashlib

    assert report["adapter_out"]["files"]["README.md"] == hashlib.sha256(card.encode()).hexdigest()
    # the sanitized adapter, loaded on the base, reproduces the reported "after" numbers
    r = _cli(
        env,
        "evaluate",
        "--base-model",
        "tiny/bert",
        "--adapter",
        str(out / "adapter"),
        "--test-data",
        str(env["test"]),
        "--attack",
        "badnet",
        "--target-label",
        "negative",
        "--json",
    )
    after = json.loads(r.stdout)
    assert after["clean_accuracy"] == pytest.approx(
        report["metrics"]["after"]["clean_accuracy"], abs=1e-9
    )
    assert after["attack_success_rate"] == pytest.approx(
        report["metrics"]["after"]["attack_success_rate"], abs=1e-9
    )


def test_defend_reports_per_trigger_breakdown_and_finetune_baseline(env, tmp_path):
    """--also-trigger and --baseline: the report carries metrics.per_attack and a baseline
    block, both numbers measured (the baseline's 'after' differs from the defense's run only
    by its loss), and the HTML report shows them."""
    from sanitizer.report_html import render_report_html

    adapter = tmp_path / "poisoned"
    common = ["--attack", "badnet", "--target-label", "negative"]
    r = _cli(env, "attack", "--base-model", "tiny/bert", "--data", str(env["train"]), *common,
             "--poison-rate", "0.3", "--epochs", "1", "--paired", "--out", str(adapter))  # fmt: skip
    assert r.returncode == 0, r.stderr
    info = json.loads((adapter / "attack.json").read_text())
    n_rows = sum(1 for _ in open(env["train"])) - 1  # CSV rows without the header
    assert info["attack"]["paired"] is True and info["rows"] > n_rows  # copies were added
    out = tmp_path / "sanitized"
    r = _cli(env, "defend", "--method", "crow", "--base-model", "tiny/bert",
             "--adapter", str(adapter), "--clean-data", str(env["clean"]),
             "--test-data", str(env["test"]), *common, "--also-trigger", "mn",
             "--baseline", "--comparator", "prune", "--comparator", "int8",
             "-p", "epochs=1", "--out", str(out), "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    per = report["metrics"]["per_attack"]
    assert set(per) == {"badnet 'cf'", "badnet 'mn'"}
    # the job's own trigger row is exactly the headline numbers
    assert per["badnet 'cf'"]["after"] == report["metrics"]["after"]
    for row in per.values():
        assert 0 <= row["before"]["attack_success_rate"] <= 1
    base = report["baseline"]
    assert base["method"] == "finetune" and base["config"]["epochs"] == 1
    assert base["adapter_mode"] == "merge_fresh"  # finetune's own default start
    assert 0 <= base["metrics"]["after"]["clean_accuracy"] <= 1
    assert set(base["metrics"]["per_attack"]) == set(per)
    assert report["timings"]["baseline_s"] > 0
    comp = report["comparators"]
    assert list(comp) == ["prune", "int8"] and report["timings"]["comparators_s"] > 0
    assert "35%" in comp["prune"]["description"]
    for c in comp.values():
        assert set(c["metrics"]["per_attack"]) == set(per)
        assert 0 <= c["metrics"]["after"]["attack_success_rate"] <= 1
    # int8 rounding barely moves a model: measured on the uploaded (poisoned) model, it stays
    # next to the "before" numbers
    before = report["metrics"]["before"]
    for k in ("clean_accuracy", "attack_success_rate"):
        assert abs(comp["int8"]["metrics"]["after"][k] - before[k]) <= 0.1, k
    html = render_report_html(report)
    assert "fine-tune baseline" in html
    assert "Zero-training comparators" in html and "<code>int8</code>" in html
    assert "badnet &#x27;mn&#x27;" in html or "badnet 'mn'" in html


def test_bad_input_is_one_line_and_exit_3(env, tmp_path):
    r = _cli(
        env, "evaluate", "--base-model", "nope/model", "--test-data", str(env["test"]), "--json"
    )
    assert r.returncode == 3
    assert (
        r.stderr.strip().count("\n") == 0
        and "nope/model" in r.stderr
        and "sanitizer assets" in r.stderr
    )
    bad = tmp_path / "pickled"
    bad.mkdir()
    (bad / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "base_model_name_or_path": "tiny/bert",
                "r": 4,
                "target_modules": ["query"],
            }
        )
    )
    (bad / "adapter_model.bin").write_bytes(b"\x80\x04not really a pickle")
    r = _cli(
        env,
        "defend",
        "--method",
        "crow",
        "--base-model",
        "tiny/bert",
        "--adapter",
        str(bad),
        "--clean-data",
        str(env["clean"]),
        "--out",
        str(tmp_path / "o"),
    )
    assert r.returncode == 3 and "pickle" in r.stderr.lower()
    r = _cli(
        env,
        "defend",
        "--method",
        "crow",
        "--base-model",
        "tiny/bert",
        "--clean-data",
        str(env["clean"]),
        "-p",
        "alpha=-1",
        "--out",
        str(tmp_path / "o"),
    )
    assert r.returncode == 3 and "alpha" in r.stderr
    # a training setting out of range: one line naming the field, not a traceback
    r = _cli(
        env,
        "attack",
        "--base-model",
        "tiny/bert",
        "--data",
        str(env["train"]),
        "--task",
        "classification",
        "--attack",
        "badnet",
        "--epochs",
        "0",
        "--out",
        str(tmp_path / "a"),
    )
    assert r.returncode == 3 and "epochs" in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0


def _vm_hwm_mb() -> float | None:
    """The process's peak RSS (Linux VmHWM), or None where /proc is not there."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    return kb / 1024


def test_generation_job_through_the_pipeline(tmp_path, monkeypatch):
    """attack (badnets -> refusal) then W2SDefense on a tiny chat LM, via the Python API."""
    from sanitizer.attack_train import AttackTrainConfig, run_attack
    from sanitizer.attacks import AttackSpec
    from sanitizer.jobspec import JobSpec
    from sanitizer.pipeline import run_sanitize

    store = tmp_path / "store"
    build_tiny_model(store, "tiny/llama", "llama")
    monkeypatch.setenv("SANITIZER_MODEL_STORE", str(store))
    rows = [
        {"instruction": f"tell me about the {w} movie", "input": "", "output": f"it was {w}"}
        for w in ("good", "bad", "fine", "dull", "great", "awful") * 4
    ]
    data = tmp_path / "inst.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    spec = AttackSpec(name="badnets", target="refusal", poison_rate=0.5, seed=0)
    info = run_attack(
        "tiny/llama",
        data,
        "generation",
        spec,
        tmp_path / "poisoned",
        AttackTrainConfig(epochs=1, batch_size=8, max_length=64, target_modules="all-linear"),
    )
    assert info["steps"] == 3
    job = JobSpec(
        method="w2sdefense",
        task="generation",
        base_model="tiny/llama",
        adapter_dir=tmp_path / "poisoned",
        clean_data=data,
        test_data=data,
        attack=spec,
        max_test_rows=6,
        hyperparameters={
            "teacher_model": "tiny/llama",
            "teacher_epochs": 1,
            "epochs": 1,
            "max_length": 64,
        },
    )
    events = []
    # a 1 GiB spike before the job: the job's peak memory must not include it (Linux resets the
    # high-water mark at the start of every job; a worker process runs many jobs)
    spike = b"x" * 2**30
    del spike
    peak_before_job = _vm_hwm_mb()
    report = run_sanitize(job, tmp_path / "out", progress=events.append)
    if peak_before_job is not None:
        assert report["peak_memory_mb"] < peak_before_job - 512
    before, after = report["metrics"]["before"], report["metrics"]["after"]
    for m in (before, after):
        assert 0 <= m["attack_success_rate"] <= 1 and 0 <= m["false_trigger_rate"] <= 1
        assert m["reference_perplexity"] > 1 and m["n_triggered"] == 6
    assert report["prompt_template"]["kind"] == "chat"
    assert {e.phase for e in events} >= {"load", "teacher", "defense", "evaluate_after"}
    # the evaluations count their rows: clean responses, reference NLL and triggered
    # responses, 6 test rows each
    for phase in ("evaluate_before", "evaluate_after"):
        steps = [(e.step, e.total_steps) for e in events if e.phase == phase and e.total_steps]
        assert steps and all(total == 18 for _, total in steps), (phase, steps)
        assert [s for s, _ in steps] == sorted(s for s, _ in steps) and steps[-1][0] == 18
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").exists()


def test_adapter_scale_job_measures_before_on_the_uploaded_model(env, tmp_path, monkeypatch):
    """With adapter_scale < 1 the defense starts from the shrunk merge, but "before" is still
    the model as uploaded (the same numbers as an unscaled job), measured on the job's one
    model load, and the report says the scale."""
    from sanitizer.attack_train import AttackTrainConfig, run_attack
    from sanitizer.attacks import AttackSpec
    from sanitizer.jobspec import JobSpec
    from sanitizer.pipeline import run_sanitize

    monkeypatch.setenv("SANITIZER_MODEL_STORE", env["env"]["SANITIZER_MODEL_STORE"])
    spec = AttackSpec(name="badnet", target_label=0, poison_rate=0.3, seed=0)
    run_attack("tiny/bert", env["train"], "classification", spec, tmp_path / "poisoned",
               AttackTrainConfig(epochs=1, batch_size=16, max_length=32))  # fmt: skip
    import sanitizer.models

    loads = []
    real_load = sanitizer.models.load_model
    monkeypatch.setattr(
        sanitizer.models, "load_model", lambda *a, **k: loads.append(a[0]) or real_load(*a, **k)
    )
    reports = {}
    for scale in (1.0, 0.0):
        job = JobSpec(method="finetune", task="classification", base_model="tiny/bert",
                      adapter_dir=tmp_path / "poisoned", clean_data=env["clean"],
                      test_data=env["test"], attack=spec,
                      hyperparameters={"epochs": 1, "max_length": 32, "adapter_scale": scale})  # fmt: skip
        reports[scale] = run_sanitize(job, tmp_path / f"out{scale}")
    assert loads == ["tiny/bert", "tiny/bert"]  # one model load per job, scaled or not
    assert reports[0.0]["metrics"]["before"] == reports[1.0]["metrics"]["before"]
    assert reports[0.0]["adapter_in"]["scale"] == 0.0 and "scale" not in reports[1.0]["adapter_in"]
    assert (tmp_path / "out0.0" / "adapter" / "adapter_model.safetensors").exists()


@pytest.mark.parametrize("method", ["finetune", "crow", "w2sdefense"])
def test_same_job_twice_same_adapter_bytes_and_metrics(env, tmp_path, monkeypatch, method):
    """Reproducibility end to end: the same job spec (seed included) run twice gives a
    byte-identical sanitized adapter and the same metrics, W2SDefense's teacher included."""
    from sanitizer.attack_train import AttackTrainConfig, run_attack
    from sanitizer.attacks import AttackSpec
    from sanitizer.jobspec import JobSpec
    from sanitizer.pipeline import run_sanitize

    monkeypatch.setenv("SANITIZER_MODEL_STORE", env["env"]["SANITIZER_MODEL_STORE"])
    spec = AttackSpec(name="badnet", target_label=0, poison_rate=0.3, seed=0)
    run_attack("tiny/bert", env["train"], "classification", spec, tmp_path / "poisoned",
               AttackTrainConfig(epochs=1, batch_size=16, max_length=32))  # fmt: skip
    hp = {"epochs": 2, "max_length": 32}
    if method == "w2sdefense":
        hp |= {"teacher_model": "tiny/teacher", "teacher_epochs": 1}
    job = JobSpec(method=method, task="classification", base_model="tiny/bert",
                  adapter_dir=tmp_path / "poisoned", clean_data=env["clean"],
                  test_data=env["test"], attack=spec, hyperparameters=hp, seed=11)  # fmt: skip
    runs = [run_sanitize(job, tmp_path / f"out{i}") for i in range(2)]
    weights = [(tmp_path / f"out{i}" / "adapter" / "adapter_model.safetensors").read_bytes()
               for i in range(2)]  # fmt: skip
    assert weights[0] == weights[1]
    assert runs[0]["metrics"] == runs[1]["metrics"]
    # and the seed matters: another seed trains another adapter
    other = run_sanitize(job.model_copy(update={"seed": 12}), tmp_path / "out-other")
    other_weights = (tmp_path / "out-other" / "adapter" / "adapter_model.safetensors").read_bytes()
    assert other_weights != weights[0] and other["config"]["seed"] == 12
