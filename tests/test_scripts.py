"""The README's measurement scripts run as documented (tiny settings, real code paths)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from evotune.machine import cpu_facts

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), ROOT / "scripts" / name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.integration
def test_benchmark_embedded_times_both_paths_on_the_same_genomes(tmp_path):
    out = tmp_path / "bench.json"
    proc = run_script("benchmark_evaluation.py", "--epochs", "2", "--n-train", "2", "--n-val", "2",
                      "--pretrain-per-class", "10", "--pretrain-epochs", "1", "--population", "2",
                      "--seeds", "3", "--threads", "1", "--out", str(out))
    assert "fast/naive" in proc.stdout
    result = json.loads(out.read_text())
    rows = {(r["genome"], r["path"]): r for r in result["table"]}
    for genome in ("all", "head", "mixed", "rand1", "rand2", "RANDOM", "ALL"):
        assert {(genome, "fast"), (genome, "naive")} <= set(rows), genome
        fast, naive = rows[(genome, "fast")], rows[(genome, "naive")]
        assert fast["evals_per_hour"] > 0 and naive["evals_per_hour"] > 0
        assert fast["speedup_evals_per_hour"] == pytest.approx(fast["evals_per_hour"] / naive["evals_per_hour"])
        # the compute floor is measured, not derived: on these tiny settings it can time as long as a whole
        # evaluation (CI saw 0.46615 s against 0.46609 s), so only its presence and the ratio are checked
        assert 0 < naive["floor_s_per_eval"] < float("inf") and naive["s_per_eval"] > 0
        assert fast["max_speedup_at_floor"] == pytest.approx(naive["s_per_eval"] / naive["floor_s_per_eval"])
    assert rows[("RANDOM", "fast")]["evaluations"] == 2
    # same genomes, seeds and data: the two paths reach the same accuracy (20 validation images)
    by_key = {}
    for e in result["evaluations"]:
        by_key.setdefault((e["genome"], e["seed"]), {})[e["path"]] = e
    assert len(by_key) == 5
    for pair in by_key.values():
        assert pair["fast"]["mask"] == pair["naive"]["mask"]
        assert pair["fast"]["epochs_run"] == pair["naive"]["epochs_run"] == 2
        assert abs(pair["fast"]["best_val_acc"] - pair["naive"]["best_val_acc"]) <= 0.05 + 1e-9
    assert result["machine"]["device"] == "cpu"


@pytest.mark.slow
def test_benchmark_flowers_preset_runs(tmp_path):
    out = tmp_path / "bench.csv"
    run_script("benchmark_evaluation.py", "--preset", "flowers", "--classes", "3", "--n-train", "2", "--n-val", "1",
               "--epochs", "1", "--genomes", "head,mixed", "--weights", "random", "--out", str(out))
    table = pd.read_csv(out)
    assert set(table["genome"]) == {"head", "mixed", "ALL"}
    assert (table.loc[table["path"] == "fast", "speedup_evals_per_hour"] > 0).all()
    assert (table["preset"] == "flowers").all()


def trials_file(tmp_path, histories, seconds=3.0):
    """A search_trials table as the search writes it (Parquet, lists as lists)."""
    rows = []
    for i, hs in enumerate(histories):
        accs = [max(h) for h in hs]
        rows.append({"key": f"e{i}", "valid": True, "cached": False, "fitness": 1 - sum(accs) / len(accs),
                     "seconds": seconds, "val_accs": accs, "epochs": [len(h) for h in hs], "val_histories": hs})
    path = tmp_path / "search_trials.parquet"
    pd.DataFrame(rows).to_parquet(path)
    return path


@pytest.mark.integration
def test_pruning_replay_cuts_what_the_rule_says_and_reports_a_cut_best(tmp_path):
    replay = load_script("pruning_replay.py")
    # e2 starts badly and ends best: a median rule after epoch 1 cuts it
    path = trials_file(tmp_path, [[[0.5, 0.6, 0.7]], [[0.8, 0.9, 0.9]], [[0.2, 0.3, 0.95]]])
    trials = replay.load_trials(path)
    out = replay.replay(trials, replay.Rule(percentile=50, warmup=1, min_reference=2))
    assert out["evaluations_cut"] == 1
    assert out["epochs_saved_pct"] == pytest.approx(100 * 2 / 9)
    assert out["time_saved_pct"] == pytest.approx(100 * 2 / 9)
    assert out["best_cut"] is True and out["best_after_pruning_is_best"] is False
    # too few references: nothing is cut
    none = replay.replay(trials, replay.Rule(percentile=50, warmup=1, min_reference=3))
    assert none["evaluations_cut"] == 0 and none["epochs_saved_pct"] == 0
    # the whole script on the file
    proc = run_script("pruning_replay.py", str(path), "--percentiles", "50", "--warmups", "1",
                      "--min-reference", "2", "--out", str(tmp_path / "replay.csv"))
    assert "p50 after epoch 1" in proc.stdout
    assert len(pd.read_csv(tmp_path / "replay.csv")) == 2  # with and without skipping seeds


@pytest.mark.integration
def test_pruning_replay_skips_the_other_seeds_of_a_cut_genome(tmp_path):
    replay = load_script("pruning_replay.py")
    path = trials_file(tmp_path, [[[0.5, 0.6]], [[0.8, 0.9]], [[0.1, 0.2], [0.9, 0.95]]])
    trials = replay.load_trials(path)
    keep = replay.replay(trials, replay.Rule(50, 1, 2, skip_seeds=False))
    skip = replay.replay(trials, replay.Rule(50, 1, 2, skip_seeds=True))
    assert keep["epochs_saved_pct"] == pytest.approx(100 * 1 / 8)
    assert skip["epochs_saved_pct"] == pytest.approx(100 * 3 / 8)


@pytest.mark.integration
def test_pruning_replay_explains_a_file_that_is_not_a_trials_table(tmp_path):
    replay = load_script("pruning_replay.py")
    path = tmp_path / "old.csv"
    pd.DataFrame([{"key": "a", "valid": True, "cached": False, "fitness": 0.1, "seconds": 1.0}]).to_csv(path)
    with pytest.raises(SystemExit, match="not a search_trials.parquet"):
        replay.load_trials(path)
    with pytest.raises(SystemExit, match="no such file"):
        replay.load_trials(tmp_path / "missing.csv")


def test_fitness_noise_components_recover_a_known_structure():
    noise = load_script("fitness_noise.py")
    genome = np.array([-3.0, -1.0, 1.0, 3.0])  # var (ddof 1) 20/3
    chunk = np.array([-2.0, 2.0])
    seed = np.array([-1.0, 1.0, -1.0, 1.0])  # within-cell var (ddof 1) 4/3
    acc = 70.0 + genome[:, None, None] + chunk[None, :, None] + seed[None, None, :]
    c = noise.variance_components(acc, search_seeds=3)
    assert c["seed_var"] == pytest.approx(4 / 3)
    assert c["genome_chunk_var"] == 0.0  # no interaction: (MS_GC - MS_E) / S < 0 is reported as 0
    # every genome shifts the same between the chunks: chunk main effect only
    assert c["chunk_main_var"] == pytest.approx(8.0)
    # the signal is the genomes' spread, less the (zero) interaction noise of a genome mean
    assert c["signal_var"] == pytest.approx(20 / 3)
    assert c["noise_var_within_chunk"] == pytest.approx(4 / 9)
    assert c["reliability_within_chunk"] == pytest.approx((20 / 3) / (20 / 3 + 4 / 9))
    assert c["noise_var_search"] == pytest.approx(4 / 9 + c["chunk_main_var"])
    # pure seed noise: no signal, no chunk effect beyond what the seeds make
    rng = np.random.default_rng(0)
    flat = 50.0 + rng.normal(0.0, 2.0, size=(40, 2, 6))
    f = noise.variance_components(flat, search_seeds=3)
    assert f["seed_std"] == pytest.approx(2.0, rel=0.1)
    assert f["reliability"] < 0.2
    assert f["signal_std"] < 1.0


@pytest.mark.integration
def test_fitness_noise_runs_the_search_evaluator_on_every_chunk_and_seed(tmp_path):
    out = tmp_path / "noise.json"
    proc = run_script("fitness_noise.py", "--classes", "3", "--train-per-class", "2", "--val-per-class", "2",
                      "--genomes", "3", "--seeds", "2", "--epochs", "1", "--image-size", "16",
                      "--pretrain-per-class", "6", "--pretrain-epochs", "1", "--threads", "1", "--out", str(out))
    assert "reliability" in proc.stdout
    result = json.loads(out.read_text())
    s = result["settings"]
    assert (s["classes"], s["n_chunks"], s["image_size"], s["seeds"]) == (3, 2, 16, 2)
    assert s["seed_list"][:2] == [684, 559]  # the search's seeds first
    assert (s["train_images_per_eval"], s["val_images_per_eval"]) == (3, 3)  # 2 per class, 2 chunks
    assert [(t["genome"], t["chunk"]) for t in result["trainings"]] == [
        (g, c) for g in ("full", "head", "rand1") for c in (0, 1)]
    assert all(len(t["val_accs"]) == 2 for t in result["trainings"])
    assert result["summary"]["search_evaluations"] == 75
    assert result["summary"]["seconds_per_search_eval"] > 0


def test_time_run_copies_the_project_fresh_and_times_each_node(tmp_path):
    """scripts/time_run.py: the copy has conf/local and the raw inputs but no earlier outputs; a node's time runs
    from its `Running node:` line to the next one; the command's exit status and output come through."""
    time_run = load_script("time_run.py")
    root = tmp_path / "project"
    for d in ("conf/base", "conf/local", "data/01_raw/my_images", "data/06_models", ".git", "src/pkg/__pycache__"):
        (root / d).mkdir(parents=True)
    (root / "conf/local/parameters.yml").write_text("mine: 1\n")
    (root / "data/01_raw/my_images/a.png").write_bytes(b"raw")
    (root / "data/06_models/model.pt").write_bytes(b"an earlier run's model")
    (root / "src/pkg/__pycache__/x.pyc").write_bytes(b"")
    copy = tmp_path / "copy"
    time_run.fresh_copy(root, copy)
    assert (copy / "conf/local/parameters.yml").read_text() == "mine: 1\n"
    assert (copy / "data/01_raw/my_images/a.png").read_bytes() == b"raw"
    assert (copy / "data/06_models").is_dir() and not any((copy / "data/06_models").iterdir())
    assert not (copy / ".git").exists() and not (copy / "src/pkg/__pycache__").exists()

    assert time_run.node_times([("a", 1.0), ("b", 3.5)], 10.0) == [
        {"node": "a", "start_s": 1.0, "seconds": 2.5}, {"node": "b", "start_s": 3.5, "seconds": 6.5}]

    time_run.ROOT = root  # the tiny project above, not this checkout (not a git checkout: no commit to name)
    out = tmp_path / "timing.json"
    script = "import sys; print('Running node: first_node: f() -> [x]'); print('Running node: second'); sys.exit(3)"
    rc = time_run.main(["--out", str(out), "--", sys.executable, "-c", script])
    result = json.loads(out.read_text())
    assert rc == result["returncode"] == 3
    assert [n["node"] for n in result["nodes"]] == ["first_node", "second"]
    assert result["wall_s"] >= result["nodes"][-1]["start_s"] >= 0
    assert result["machine"]["avx512"] == cpu_facts()["avx512"] and result["machine"]["cores"] >= 1
    assert result["commit"] is None
