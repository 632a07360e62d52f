"""Every command README.md and the parameter files show, run as a user types it.

The commands are read from README.md (fenced ``bash`` blocks and inline code that starts
with ``kedro``, ``make``, ``python`` or an environment variable) and from the comments of
``conf/**/*.yml``. Each one must have an entry in :data:`COMMANDS` saying how it is run
here and what it must do, so a command added to the docs without a test fails
:func:`test_every_documented_command_is_covered`.

They run through the real command line (``bash -c``, the ``kedro`` of this venv on the
PATH) in a copy of the project whose ``conf/local`` holds tiny sizes (data, epochs,
population): the user's path, on settings small enough for CI. Placeholders such as
``<version>`` are filled in with what the earlier commands wrote. Commands that cannot
work offline (ImageNet weights, downloads) must fail fast with exit code 1 and the one
clear message that names the missing file, without a traceback. Long-running ``make``
targets (the test suite itself, the full benchmark) are checked with ``make -n``: the
command they run is tested in its own right.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from tiny_project import TINY

from evotune.config import merge_parameters

BIN = Path(sys.executable).parent


#: the tiny ViT of the embedded task (README "Backbones")
VIT = "backbone.arch=vit_tiny32,source_pretraining.arch=vit_tiny32"

#: the small timm model of docs/guides/export.md, from scratch on the embedded task
TIMM = "backbone.arch=timm/resnet10t,source_pretraining.arch=timm/resnet10t"

#: what README's "ImageNet weights" section puts in conf/local (arch kept small for the offline check)
IMAGENET_YAML = "backbone: {arch: resnet50, weights: imagenet}\n"


@dataclass
class Expect:
    """How a documented command is run here and what it must do."""

    run: str | None = None  # what is typed, when it differs from the documented text (placeholders filled)
    ok: bool = True  # exit code 0; else exit code 1 with `says` and no traceback
    says: tuple[str, ...] = ()  # text the output must contain
    never: tuple[str, ...] = ()  # text the output must not contain
    once: tuple[str, ...] = ()  # text the output must contain exactly once
    make_dry_run: bool = False  # a make target checked with `make -n` (long-running, tested elsewhere)
    server: int | None = None  # a server: started, answered HTTP on this port, stopped
    local: str | None = None  # conf/local parameters for this command only
    own_data: bool = False  # `local` is a user's data section: TINY's `data` (the embedded task's caps) left out
    files: tuple[str, ...] = ()  # paths (under the project) the command must create or refresh
    unchanged: tuple[str, ...] = ()  # paths it must leave alone (an earlier stage's versioned outputs)
    after: tuple[str, ...] = field(default_factory=tuple)  # commands that must have run first
    joins: str | None = None  # a search the command (a worker) joins: run once the worker waits for work
    matches: tuple[str, ...] = ()  # regular expressions the output must match
    check: Callable[[Path, str], None] | None = None  # more assertions on (project, output) after the command
    needs: str | None = None  # a module the command needs that the project does not install: skipped without it
    error_marker: str = "Error:"  # with ok=False: how the one clear message starts


OFFLINE = "cannot download"
NO_GPU = "CUDA_VISIBLE_DEVICES="  # a command prefix: no GPU visible
#: a search long enough to share (20 evaluations), a new study each time (search.seed); a worker joins it
#: with the same parameters (they make the study's fingerprint)
SHARED = "search.population=6,search.generations=2,search.seed={seed}"
SEARCH_TO_JOIN = f"kedro run --nodes evolutionary_search --params {SHARED}"
#: the worker's parameters: the search's, and it waits for work until the search ends (not fingerprinted): a
#: worker that starts late still gets the elite units the later generations queue two at a time
WORKER = f"{SHARED},search.worker_idle_timeout_s=900"
WORKER_TRAINED = (r"worker \S+ trained [1-9]\d* unit",)
#: what the paper's command says offline, and what it must not say (problems of another pipeline, twice the same)
PAPER_OFFLINE = dict(
    says=(OFFLINE, "resnet50-11ad3fa6.pth", "https://download.pytorch.org/models/resnet50-11ad3fa6.pth", "flowers-102",
          "102flowers.tgz", "EVOTUNE_OFFLINE", "nothing was run"),
    never=("--pipelines pretrained", "source_pretraining.arch", "Running node"),
    once=("ImageNet weights of resnet50 missing", "102flowers.tgz"),
)
CUDA = torch.cuda.is_available()  # ImageNet weights missing: the message says where to put them
MLFLOW = importlib.util.find_spec("kedro_mlflow") is not None  # the optional extra (tests/test_tracking.py)

COMMANDS: dict[str, Expect] = {
    # --- the two commands, and their make relatives
    # `make run` is `kedro run` in .venv (tested below for real): checked with make -n
    "make run": Expect(make_dry_run=True, says=(".venv/bin/kedro run",)),
    "make test": Expect(make_dry_run=True, says=('pytest -m "not slow and not integration"',)),
    'make run ARGS="--pipelines pretrained --params backbone.weights=none"': Expect(
        says=("Running node: load_pretrained_backbone", "Pipeline execution completed"),
        files=("data/06_models/backbone.pt",)),
    'make test ARGS="-k search"': Expect(make_dry_run=True, says=('pytest -m "not slow and not integration" -k search',)),
    "make viz": Expect(server=4141),
    "make benchmark": Expect(make_dry_run=True, says=("scripts/benchmark_evaluation.py",)),
    "make notebook": Expect(make_dry_run=True, says=("kedro jupyter notebook",)),
    "make test-all": Expect(make_dry_run=True, says=('pytest -m ""', "make test-tracking")),
    # the two tiers (docs/guides/testing.md): the marker expressions make passes to pytest
    "make test-integration": Expect(make_dry_run=True, says=('pytest -m "integration and not slow"',)),
    "make mutation": Expect(make_dry_run=True, says=('.[test,timm,mutation]', "mutmut run", "mutmut results")),
    ".venv/bin/python -m pytest -q tests/test_genome.py": Expect(says=(" passed",)),
    "make test-tracking": Expect(make_dry_run=True, says=(
        "_evotune_main_venv.pth", "constraints-mlflow.txt", "pytest tests/test_tracking.py")),
    "make upgrade": Expect(make_dry_run=True, says=("pip install", "--upgrade", "pytest")),
    "make constraints": Expect(make_dry_run=True, says=("pip freeze",)),
    # the documentation site: built for real by tests/test_docs.py (with the docs extra) and `make docs` in CI
    "make docs": Expect(make_dry_run=True, says=("mkdocs build --strict",)),
    # mypy on src/: run for real by `make typecheck` in .ci/run; here, that make runs mypy with the project's config
    "make typecheck": Expect(make_dry_run=True, says=("python -m mypy",)),
    "kedro viz": Expect(server=4141),
    # --- kedro run, as README shows it
    "kedro run": Expect(files=("data/08_reporting/latest/report.md", "data/06_models/source_model.pt",
                               "data/07_model_output/best_genome.json", "data/08_reporting/test_metrics.json",
                               *(f"data/08_reporting/latest/figures/{f}.png" for f in
                                 ("fitness", "block_selection", "gene_trajectories", "lr_multipliers",
                                  "training_curves", "confusion_matrix", "search_fidelity", "pareto_front")),
                               "data/08_reporting/search_fidelity_summary.json",
                               "data/07_model_output/picked_genome.json", "data/08_reporting/pareto_front.parquet"),
                        says=("Pipeline execution completed", "search fidelity: Spearman rho",
                              "source pretraining done: 1 epochs", "decoding train done:",
                              "BioTune search done: 9 trainings", "retrain ", "search fidelity: retrain and test done",
                              "confirm.rule best: the search's best genome")),
    "kedro run --nodes evolutionary_search --params progress.every_s=5": Expect(says=("BioTune search done: 9 trainings",)),
    "kedro run --params fidelity.enabled=false": Expect(
        files=("data/08_reporting/latest/report.md",),
        says=("search fidelity: switched off (fidelity.enabled: false), nothing trained",
              "Pipeline execution completed")),
    "source .venv/bin/activate && kedro run --pipelines reporting": Expect(files=("data/08_reporting/report.md",)),
    "kedro run --pipelines retrain": Expect(ok=False, says=("'picked_genome' has no saved version yet",
                                                            "kedro run --pipelines search")),
    "kedro run --pipelines reporting": Expect(files=("data/08_reporting/report.md",),
                                             unchanged=("data/07_model_output/retrained_models.pt",)),
    "kedro run --from-nodes retrain_best_genome": Expect(
        files=("data/07_model_output/retrained_models.pt", "data/08_reporting/test_metrics.json",
               "data/08_reporting/latest/report.md"),
        unchanged=("data/07_model_output/best_genome.json", "data/06_models/backbone.pt")),
    # docs/method/pareto.md: another pick rule after a default run (the search is not repeated): 3 genomes x 2 chunks
    # x 5 confirmation seeds, then the retraining, test, export and report of the picked genome
    "kedro run --from-nodes confirm_pick --params confirm.rule=confirmed": Expect(
        says=("confirm.rule confirmed: 3 genome(s) x 2 chunk(s) x 5 seed(s) = 30 trainings", "confirm.rule confirmed picked",
              "Pipeline execution completed"),
        files=("data/07_model_output/picked_genome.json", "data/07_model_output/confirmation.parquet",
               "data/08_reporting/latest/report.md", "data/07_model_output/retrained_models.pt"),
        unchanged=("data/07_model_output/best_genome.json", "data/07_model_output/search_trials.parquet"),
        after=("kedro run",)),
    "kedro run --from-nodes confirm_pick --params confirm.rule=parsimonious": Expect(
        says=("confirm.rule parsimonious picked",), files=("data/07_model_output/picked_genome.json",),
        unchanged=("data/07_model_output/best_genome.json",), after=("kedro run",)),
    "kedro run --from-nodes evolutionary_search": Expect(
        says=("Running node: evolutionary_search", "Running node: retrain_best_genome"),
        files=("data/07_model_output/retrained_models.pt", "data/08_reporting/latest/report.md"),
        unchanged=("data/06_models/backbone.pt",)),
    # two generations of 5 evaluations after the 4 of the initial population (N=4, E=1: 2 exploited + 3 children)
    "kedro run --nodes evolutionary_search --params search.generations=2": Expect(
        says=("N=4 E=1 G=2", "14 evaluations", "BioTune search done:"), files=("data/07_model_output/best_genome.json",)),
    # only the chosen methods run: 2 nodes per fixed-plan method, 4 per search baseline, 4 for BioTune,
    # 1 for the resamplings, 6 for the tables (the comparison's and the budgets')
    "kedro run --pipelines compare": Expect(files=("data/08_reporting/compare/comparison.md",
                                                   "data/08_reporting/compare/budgets.md",
                                                   "data/08_reporting/compare/accuracy_vs_trainings.png"),
                                            says=("Completed 19 out of 19 tasks", "resampling 2/2",
                                                  "compare.random_search.budget: 25 % of the budget")),
    'kedro run --pipelines compare --params "compare.methods=[linear_probe,lora,deft]"': Expect(
        says=("Completed 19 out of 19 tasks",), files=("data/08_reporting/compare/lora/metrics.json",)),
    # the table made from the saved metrics of earlier compare runs (README: "In parts"), training nothing
    'kedro run --pipelines compare --nodes compare.table,compare.table_markdown,compare.figure --params '
    '"compare.methods=[linear_probe,lora,deft]"': Expect(
        says=("Completed 3 out of 3 tasks",), files=("data/08_reporting/compare/comparison.md",),
        unchanged=("data/08_reporting/compare/lora/metrics.json",),
        after=('kedro run --pipelines compare --params "compare.methods=[linear_probe,lora,deft]"',)),
    # one group of an "In parts" comparison without BioTune: only its own nodes run, BioTune is not re-tested
    'kedro run --pipelines compare --nodes compare.tpe.search,compare.tpe.retrain,compare.tpe.test --params '
    '"compare.methods=[tpe]"': Expect(
        says=("Completed 3 out of 3 tasks",), files=("data/08_reporting/compare/tpe/metrics.json",),
        unchanged=("data/08_reporting/compare/biotune/metrics.json",), after=("kedro run --pipelines compare",)),
    # docs/method/pareto.md: the reference row and the multi-objective search (1 + 4 BioTune + 2 + 4 + 6 table nodes)
    'kedro run --pipelines compare --params "compare.methods=[from_scratch,nsga2]"': Expect(
        says=("Completed 17 out of 17 tasks", "nsga2: best genome"),
        files=("data/08_reporting/compare/nsga2/metrics.json", "data/08_reporting/compare/from_scratch/metrics.json",
               "data/08_reporting/compare/comparison.md")),
    # docs/results/augmentation.md: the two arms of the augmentation measurement (1 + 4 BioTune + 2 + 6 table nodes)
    'kedro run --pipelines compare --params "compare.methods=[full_finetune],training.augment=none"': Expect(
        says=("Completed 13 out of 13 tasks",), never=("training batches augmented",),
        files=("data/08_reporting/compare/full_finetune/metrics.json", "data/08_reporting/compare/comparison.md")),
    'kedro run --pipelines compare --params "compare.methods=[full_finetune],training.augment=standard"': Expect(
        says=("Completed 13 out of 13 tasks", "training batches augmented: standard"),
        files=("data/08_reporting/compare/full_finetune/metrics.json", "data/08_reporting/compare/comparison.md")),
    # the workers wait for the search (started once they wait), join it and train some of its units
    "kedro run --pipelines search_worker": Expect(run=f"kedro run --pipelines search_worker --params {WORKER}",
                                                  joins=SEARCH_TO_JOIN, matches=WORKER_TRAINED),
    "CUDA_VISIBLE_DEVICES=1 kedro run --pipelines search_worker": Expect(
        run=f"CUDA_VISIBLE_DEVICES=1 kedro run --pipelines search_worker --params {WORKER}", joins=SEARCH_TO_JOIN,
        matches=WORKER_TRAINED),
    # torch starts with 2 threads here (OMP_NUM_THREADS), so the setting shows
    "kedro run --params training.cpu_threads=1": Expect(run="OMP_NUM_THREADS=2 kedro run --params training.cpu_threads=1",
                                                         says=("torch CPU threads set to 1 (training.cpu_threads)",)),
    # experiment tracking: with the extra, the run is recorded (tests/test_tracking.py reads it back);
    # without it, the one message naming the install command
    "kedro run --params tracking.mlflow=true": Expect(
        ok=MLFLOW, files=("data/09_tracking/mlflow.db",) if MLFLOW else (),
        says=("Pipeline execution completed", "recorded in sqlite:///data/09_tracking/mlflow.db") if MLFLOW
        else ("tracking.mlflow is true", 'pip install -e ".[mlflow]"', "nothing was run")),
    "kedro run --pipelines search_worker --params training.cpu_threads=1": Expect(
        run=f"kedro run --pipelines search_worker --params training.cpu_threads=1,{WORKER}", joins=SEARCH_TO_JOIN,
        matches=WORKER_TRAINED),
    "kedro run --pipelines pretrained": Expect(ok=False, local=IMAGENET_YAML, says=(OFFLINE, "resnet50-11ad3fa6.pth")),
    # docs/guides/own-data.md: a conf/local that sets only data.source uses every image (2 classes x 40:
    # 20 % test, 20 % val, the rest train; the embedded task's caps 20 / 30 would leave 40 train images)
    "kedro run --pipelines data_processing": Expect(local="""\
data:
  source: {kind: image_folder, path: data/01_raw/my_images}
""", own_data=True, says=("image_folder data/01_raw/my_images", "splits: 48 train, 16 val, 16 test images, 2 classes",
                          "train: 48 images of 32px"), never=("per_class=",)),
    # docs/guides/own-data.md "Augmentation": the search with augmented training batches
    "kedro run --nodes evolutionary_search --params training.augment=standard": Expect(
        says=("training batches augmented: standard", "BioTune search done: 9 trainings")),
    # the paper's setting (docs/guides/paper.md), offline here (EVOTUNE_OFFLINE=1): it stops in the pre-run check,
    # before anything trains, naming the weights and the data to fetch and their URLs, and only what applies
    "kedro run --env paper --params paper.dataset=flowers102,paper.arch=resnet50": Expect(ok=False, **PAPER_OFFLINE),
    "kedro run --env paper": Expect(ok=False, **PAPER_OFFLINE),
    # offline switched on by the variable (docs/guides/paper.md): the same one message, no download tried
    "EVOTUNE_OFFLINE=1 kedro run --env paper --params paper.dataset=flowers102,paper.arch=resnet50": Expect(
        ok=False, **PAPER_OFFLINE),
    "kedro run --env paper --params paper.dataset=dtd,paper.arch=vgg19": Expect(
        ok=False, says=(OFFLINE, "vgg19-dcbb9e9d.pth", "dtd-r1.0.1.tar.gz", "nothing was run"),
        never=PAPER_OFFLINE["never"], once=("ImageNet weights of vgg19 missing", "dtd-r1.0.1.tar.gz")),
    "kedro run --env paper --params paper.dataset=flowers102,paper.arch=resnet50,fidelity.enabled=true": Expect(
        ok=False, **PAPER_OFFLINE),
    # the sweep: every setting checked before anything trains, all problems at once (a tiny sweep that trains:
    # test_sweep_runs_two_settings_resumes_and_writes_the_table)
    "kedro sweep": Expect(ok=False, says=("36 of 36 settings cannot run here; nothing was run", "svhn-inception_v3:",
                                          "inception_v3_google-0cc3c7bd.pth", "train_32x32.mat"),
                          never=("Running node",)),
    "kedro sweep --settings flowers102:resnet50,dtd:vgg19": Expect(
        ok=False, says=("2 of 2 settings cannot run here", "flowers102-resnet50:", "dtd-vgg19:", "102flowers.tgz",
                        "vgg19-dcbb9e9d.pth"), never=("Running node",)),
    "kedro run --env paper --pipelines pretrained --params paper.dataset=flowers102,paper.arch=resnet50":
        Expect(ok=False, says=(OFFLINE, "resnet50-11ad3fa6.pth", "flowers-102")),
    "kedro run --env paper --pipelines compare --params paper.dataset=flowers102,paper.arch=resnet50":
        Expect(ok=False, says=("backbone.arch resnet50", "`kedro run --env paper` with the same --params")),
    "kedro run --env paper --pipelines compare --params paper.dataset=dtd,paper.arch=vgg19":
        Expect(ok=False, says=("backbone.arch vgg19", "`kedro run --env paper` with the same --params")),
    "kedro ipython": Expect(run="kedro ipython -c \"print('population', catalog.load('params:search')['population'])\"",
                            says=("population 4",)),
    # --- the exported model
    # the log names the rule that chose the seed ("seed", not the default rule)
    "kedro run --pipelines export --params export.selection=seed,export.seed=559": Expect(
        says=("(seed 559, seed)",),
        files=("data/07_model_output/exported_model.safetensors", "data/07_model_output/exported_model.pt2",
               "data/07_model_output/exported_model.json")),
    "kedro run --pipelines predict --params predict.source=data/01_raw/new_images": Expect(
        says=("skipped 3 (1 empty file, 1 not an image, 1 unreadable image", "corrupt.jpg", "readme.txt",
              "empty.png"),
        files=("data/07_model_output/predictions.csv", "data/07_model_output/prediction_skipped.csv")),
    "kedro run --pipelines predict --params predict.source=new/list.csv,predict.csv_column=filename": Expect(
        files=("data/07_model_output/predictions.csv",)),
    # the oldest of several exports, loaded and used (on the CPU where there is no GPU)
    "kedro run --pipelines predict --params predict.source=new_images,predict.model_version=<version>,"
    "predict.device=cuda": Expect(
        run="kedro run --pipelines predict --params predict.source=new_images,predict.model_version="
            f"$(ls data/07_model_output/exported_model.json | head -1),predict.device={'cuda' if CUDA else 'cpu'}",
        check=lambda project, out: loaded_the_oldest_export(project, out),
        files=("data/07_model_output/predictions.csv",)),
    "kedro run --pipelines predict": Expect(ok=False, says=("predict.source is not set",)),
    # --- the scripts
    # the timing script of docs/guides/first-run.md: the run in a fresh copy (conf/local's tiny parameters come
    # along), the project's own data/ untouched, each node timed
    "python scripts/time_run.py --out timing.json -- kedro run": Expect(
        says=("| node | seconds |", "| evolutionary_search |", "| write_report |", "(exit 0)"),
        files=("timing.json",), unchanged=("data/08_reporting/latest/report.md",), after=("kedro run",),
        check=lambda project, out: timed_run(project)),
    'python scripts/time_run.py --out timing-quick.json -- kedro run --params '
    '"search.generations=2,search.seeds=[684],fidelity.enabled=false"': Expect(
        says=("| evolutionary_search |", "search.generations=2"), files=("timing-quick.json",)),
    "python scripts/transfer_check.py": Expect(run="python scripts/transfer_check.py --seeds 1",
                                               says=("from scratch",)),
    "python scripts/pruning_replay.py <search_trials.parquet>": Expect(
        run="python scripts/pruning_replay.py "
            "$(ls data/07_model_output/search_trials.parquet/*/search_trials.parquet | tail -1)",
        says=("trained evaluations",)),
    "python scripts/benchmark_evaluation.py --checkpoint data/06_models/source_model.pt/<version>/source_model.pt "
    "--seeds 684 559 --repeats 2 --population 8 --out bench.json": Expect(
        run="python scripts/benchmark_evaluation.py --checkpoint $(ls data/06_models/source_model.pt/*/source_model.pt | tail -1) "
            "--seeds 684 --repeats 1 --population 1 --epochs 1 --n-train 2 --n-val 2 --genomes head --out bench.json",
        files=("bench.json",)),
    "python scripts/fitness_noise.py --checkpoint data/06_models/source_model.pt/<version>/source_model.pt "
    "--genomes 8 --seeds 6 --out fitness_noise.json": Expect(
        run="python scripts/fitness_noise.py --checkpoint $(ls data/06_models/source_model.pt/*/source_model.pt | tail -1) "
            "--genomes 3 --seeds 2 --epochs 1 --classes 3 --train-per-class 2 --val-per-class 2 --out fitness_noise.json",
        says=("reliability",), files=("fitness_noise.json",)),
    # the GPU commands, with the GPU hidden (the same answer on any machine; the GPU path: scripts/device_check.sh)
    "python scripts/benchmark_evaluation.py --preset flowers --device cuda --seeds 684 559 629 --out bench_gpu.json":
        Expect(run=f"{NO_GPU} python scripts/benchmark_evaluation.py --preset flowers --device cuda --seeds 684 559 629 "
                   "--out bench_gpu.json", ok=False, says=("CUDA is not available",)),
    # what the device check runs (docs/guides/gpus.md; the script is run by its interpreter, as the check does)
    "scripts/benchmark_evaluation.py --preset flowers --device cuda --seeds 684 559 629": Expect(
        run=f"{NO_GPU} python scripts/benchmark_evaluation.py --preset flowers --device cuda --seeds 684 559 629",
        ok=False, says=("CUDA is not available",)),
    # the GPU check (README "Checking a GPU machine"): its dry run on the CPU for real (every step, a summary);
    # the plain command with the GPU hidden stops saying there is none
    "DEVICE_CHECK_ALLOW_CPU=1 PYTHON=.venv/bin/python scripts/device_check.sh /tmp/out": Expect(
        run=f"{NO_GPU} DEVICE_CHECK_ALLOW_CPU=1 DEVICE_CHECK_BUDGET_S=840 PYTHON=.venv/bin/python scripts/device_check.sh "
            "device_out",
        says=("evotune device check", "cuda_tests", "benchmark", "extrapolate"), files=("device_out/summary.txt",)),
    "scripts/device_check.sh OUT_DIR": Expect(
        run=f"{NO_GPU} PYTHON=.venv/bin/python scripts/device_check.sh device_out_gpu", ok=False,
        error_marker="no CUDA GPU visible", says=("GPU: none",), files=("device_out_gpu/gpu.txt",)),
    # it downloads from a package index: offline (no index), it fails on the first pinned wheel, saying which
    "scripts/fetch_device_wheels.sh": Expect(run="PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 scripts/fetch_device_wheels.sh "
                                                 "wheels_offline", ok=False, error_marker="ERROR:",
                                             says=("kedro==1.7.0",)),
    "pytest -m cuda": Expect(run="python -m pytest -m cuda -q -p no:cacheprovider -o addopts= tests/test_cuda.py",
                             says=("passed",) if CUDA else ("skipped",)),
    # installs need a package index: checked offline by what they give (tests/installed_extra.py)
    'pip install -e ".[test]"': Expect(run="python tests/installed_extra.py test",
                                       says=("requirements installed and within their ranges",)),
    # the two installs of make (docs/guides/install.md): make run's runtime, make test's test extras and timm
    "pip install -c constraints.txt -e .": Expect(run="python tests/installed_extra.py",
                                                  says=("requirements installed and within their ranges",)),
    'pip install -c constraints.txt -e ".[test,timm]"': Expect(run="python tests/installed_extra.py test timm",
                                                             says=("requirements installed and within their ranges",)),
    # the PostgreSQL driver of the workers guide (in the test extra: tests/test_search_survival.py uses it)
    'pip install "psycopg[binary]"': Expect(run="python -c 'import psycopg; print(\"psycopg\", psycopg.__version__)'",
                                           says=("psycopg 3.",)),
    # optuna-dashboard is no dependency of the project (docs/guides/workers.md): run where it is installed
    "pip install optuna-dashboard": Expect(run="python -c 'import optuna_dashboard; print(\"optuna-dashboard\")'",
                                          says=("optuna-dashboard",), needs="optuna_dashboard"),
    "optuna-dashboard sqlite:///data/07_model_output/optuna_studies.db": Expect(server=8080, needs="optuna_dashboard"),
    "pip install timm": Expect(run="python -c 'import timm; print(\"timm\", timm.__version__)'", says=("timm 1.",)),
    'pip install -e ".[timm]"': Expect(run="python tests/installed_extra.py timm",
                                       says=("requirements installed and within their ranges",)),
    'pip install -e ".[mlflow]"': Expect(run="python tests/installed_extra.py mlflow", needs="kedro_mlflow",
                                         says=("requirements installed and within their ranges",)),
    "mlflow ui --backend-store-uri sqlite:///data/09_tracking/mlflow.db": Expect(server=5000, needs="mlflow"),
    # --- the quick first run (docs/guides/first-run.md): 2 generations (4 + 2 x (1 + 4) = 14 evaluations at the
    # tiny sizes) with one search seed, no fidelity
    "make quick": Expect(make_dry_run=True, says=(
        '.venv/bin/kedro run --params "search.generations=2,search.seeds=[684],fidelity.enabled=false"',)),
    'kedro run --params "search.generations=2,search.seeds=[684],fidelity.enabled=false"': Expect(
        says=("BioTune search done: 14 trainings", "search fidelity: switched off (fidelity.enabled: false), nothing trained",
              "Pipeline execution completed"),
        files=("data/08_reporting/latest/report.md", "data/07_model_output/exported_model.safetensors")),
    # --- a timm model end to end (docs/guides/export.md): source pretraining, search, retrain, export (weights
    # keyed as timm's model, the torch.export archive) and report, then predict with that export
    f'kedro run --params "{TIMM},fidelity.enabled=false"': Expect(
        says=("pretraining timm/resnet10t", "BioTune search done: 9 trainings", "exported timm/resnet10t",
              "Pipeline execution completed"),
        files=("data/08_reporting/latest/report.md", "data/07_model_output/exported_model.safetensors",
               "data/07_model_output/exported_model.pt2", "data/07_model_output/exported_model.json")),
    "kedro run --pipelines predict --params predict.source=new_images,predict.top_k=2": Expect(
        says=("with timm/resnet10t", "classified 9 of 12 files"),
        files=("data/07_model_output/predictions.csv",)),
    # --- a vision transformer end to end (README "Backbones": the measured run; issue 13): search, retrain,
    # export and report with the tiny ViT, then its comparison with full fine-tuning. Last before LAST: the
    # newest backbone is then a ViT.
    f'kedro run --params "{VIT},source_pretraining.training.epochs=40,source_pretraining.training.cosine_t_max=40,'
    'source_pretraining.training.patience=8,fidelity.enabled=false"': Expect(
        says=("pretraining vit_tiny32", "BioTune search done: 9 trainings", "Pipeline execution completed"),
        files=("data/08_reporting/latest/report.md", "data/07_model_output/best_genome.json",
               "data/08_reporting/test_metrics.json", "data/07_model_output/exported_model.pt2")),
    f'kedro run --pipelines compare --params "{VIT},compare.methods=[full_finetune],compare.resamplings=1"': Expect(
        says=("Completed 13 out of 13 tasks",), files=("data/08_reporting/compare/full_finetune/metrics.json",)),
}

#: the order the commands run in: the default run first, later ones use what it wrote
ORDER = ["kedro run --pipelines retrain", "kedro run"]  # the first on the fresh copy


def normalise(cmd: str) -> str:
    return " ".join(cmd.replace("\\\n", " ").split())


#: an inline code span is a command when it starts (after any VAR=value prefixes) with one of these programs
PROGRAMS = r"(kedro|make|python3?|source|pytest|pip|bash|optuna-dashboard|mlflow|mkdocs|scripts/\S+|\.venv/bin/\S+|\.ci/\S+)"
INLINE_COMMAND = re.compile(rf"^([A-Za-z_][A-Za-z0-9_]*=\S*\s+)*{PROGRAMS}\s")


def documented_commands(root: Path) -> set[str]:
    """The commands README.md, the pages of docs/ and the comments of conf/**/*.yml show, in the project at ``root``:
    every line of a fenced ``bash`` block (whatever it starts with: a script, an environment variable, pytest,
    optuna-dashboard, mlflow ...), inline code that starts with a program (:data:`INLINE_COMMAND`), and the
    ``kedro run`` commands of the YAML comments."""
    found: set[str] = set()
    readme = "\n".join(p.read_text() for p in [root / "README.md", *sorted((root / "docs").rglob("*.md"))])
    for block in re.findall(r"```(?:bash|sh|shell|console)\n(.*?)```", readme, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.split(r"\s{2,}#|^#", line.strip())[0].strip().removeprefix("$ ")
            if line:
                found.add(normalise(line))
    for span in re.findall(r"`([^`\n]+)`", readme):
        if INLINE_COMMAND.match(span):
            found.add(normalise(span))
    for block in re.findall(r"\n\n((?:(?: {4}|\t)[^\n]*\n)+)", readme):  # indented code blocks
        for line in block.splitlines():
            line = re.split(r"\s{2,}#", line.strip())[0].strip()
            if INLINE_COMMAND.match(line):
                found.add(normalise(line))
    for yml in (root / "conf").rglob("*.yml"):
        for line in yml.read_text().splitlines():
            if "#" in line:
                for m in re.findall(r"(kedro run[^`\n)]*)", line.split("#", 1)[1]):
                    found.add(normalise(m.strip().rstrip(".,:")))
    return found


def test_every_documented_command_is_covered(root):
    documented = documented_commands(root)
    missing = sorted(documented - set(COMMANDS))
    assert not missing, f"documented but not tested (add them to COMMANDS): {missing}"
    stale = sorted(set(COMMANDS) - documented)
    assert not stale, f"tested but no longer documented (remove them from COMMANDS): {stale}"


# --------------------------------------------------------------------------- the project copy


@pytest.fixture(scope="module")
def project(tmp_path_factory, root):
    dst = tmp_path_factory.mktemp("cli-project")
    for name in ("pyproject.toml", ".telemetry", "Makefile", "constraints.txt", "constraints-mlflow.txt"):
        shutil.copy2(root / name, dst / name)  # copy2: the venv's install stamp stays newer
    shutil.copytree(root / "scripts", dst / "scripts")
    shutil.copytree(root / "tests", dst / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    (dst / "src").mkdir()  # the package is imported from the installed project
    shutil.copytree(root / "conf", dst / "conf", ignore=shutil.ignore_patterns("local"))
    (dst / "conf" / "local").mkdir()
    (dst / "conf" / "local" / "parameters_tiny.yml").write_text(TINY)
    for layer in (root / "data").iterdir():
        if layer.is_dir():
            (dst / "data" / layer.name).mkdir(parents=True)
    make_image_folder(dst / "data" / "01_raw" / "my_images", per_class=40)
    make_new_images(dst / "data" / "01_raw" / "new_images")
    make_new_images(dst / "new_images")
    (dst / "new").mkdir()
    (dst / "new" / "list.csv").write_text("filename\n" + "".join(f"../new_images/test_{i:02d}.png\n" for i in range(5)))
    venv = Path(sys.prefix)
    (dst / ".venv").symlink_to(venv)  # `make` and `source .venv/bin/activate` use this environment
    return dst


def timed_run(project: Path) -> None:
    result = json.loads((project / "timing.json").read_text())
    assert result["returncode"] == 0 and result["command"] == ["kedro", "run"]
    nodes = [n["node"] for n in result["nodes"]]
    assert {"make_source_dataset", "evolutionary_search", "retrain_best_genome"} <= set(nodes), nodes
    assert nodes[-1] == "write_report", nodes
    assert 0 < sum(n["seconds"] for n in result["nodes"]) <= result["wall_s"] + 1


def make_image_folder(root: Path, per_class: int = 8) -> None:
    """docs/guides/own-data.md's layout: one folder per class, with a text file that is ignored.
    8 per class: the fewest a class needs with the default splits and two search chunks."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            a = (rng.random((40, 48, 3)) * 80).astype(np.uint8)
            a[:, c * 20:(c + 1) * 20] += 150
            Image.fromarray(a).save(root / name / f"{i}.png")
    (root / "cat" / "notes.txt").write_text("not an image")


def make_new_images(root: Path) -> None:
    """Images to classify: PNGs, a 16-bit PNG, a corrupt JPEG, a text file and a zero-byte PNG."""
    import io

    rng = np.random.default_rng(1)
    root.mkdir(parents=True)
    for i in range(8):
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(root / f"test_{i:02d}.png")
    Image.fromarray(np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60).save(root / "deep16.png")
    jpeg = io.BytesIO()
    Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(jpeg, format="JPEG")
    (root / "corrupt.jpg").write_bytes(jpeg.getvalue()[:200])
    (root / "readme.txt").write_text("these are new images")
    (root / "empty.png").write_bytes(b"")


def environment() -> dict:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", KEDRO_DISABLE_TELEMETRY="1",
               DO_NOT_TRACK="1", MPLBACKEND="Agg", PYTHONUNBUFFERED="1", COLUMNS="250",  # no wrapped log lines
               EVOTUNE_OFFLINE="1")  # nothing is downloaded (tests/test_downloads.py serves its own files)
    env.pop("VIRTUAL_ENV", None)
    return env


def shell(project: Path, command: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], cwd=project, env=environment(), capture_output=True, text=True,
                          timeout=timeout)


def installed_by_make(root: Path) -> bool:
    """`make` reinstalls unless the venv carries its stamps (`make test`'s install, which holds the runtime
    and stamps both, and `make run`'s), newer than the project's (at ``root``) pyproject.toml and constraints.txt."""
    stamps = [Path(sys.prefix) / name for name in (".installed", ".installed-run")]
    return all(stamp.is_file() and all(stamp.stat().st_mtime >= (root / f).stat().st_mtime
                                       for f in ("pyproject.toml", "constraints.txt")) for stamp in stamps)


def wait_for_http(port: int, proc: subprocess.Popen, timeout: float = 300) -> bytes:  # a loaded CPU starts viz slowly
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                return r.read()
        except (OSError, ValueError):
            time.sleep(1)
    raise AssertionError(f"nothing answered on port {port} within {timeout}s")


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


#: last: it replaces the newest target data with the README's image folder (other classes)
LAST = ["kedro run --pipelines data_processing"]


def ordered() -> list[str]:
    return ORDER + [c for c in COMMANDS if c not in ORDER + LAST] + LAST


@pytest.mark.integration
@pytest.mark.parametrize("documented", ordered())
def test_documented_command(project, documented, root):
    spec = COMMANDS[documented]
    if spec.needs and importlib.util.find_spec(spec.needs) is None:
        pytest.skip(f"{spec.needs} is not installed here (not a dependency of the project)")
    if documented.startswith(("make ", "source .venv")) and not installed_by_make(root):
        pytest.skip("make would reinstall the project: this venv was not made by `make` (no current .installed stamp)")
    tiny = project / "conf" / "local" / "parameters_tiny.yml"
    if spec.local:  # this command's conf/local: the tiny sizes updated with its own file
        base = yaml.safe_load(TINY)
        if spec.own_data:
            base.pop("data")
        tiny.write_text(yaml.safe_dump(merge_parameters(base, yaml.safe_load(spec.local))))
    try:
        command = spec.run or documented
        if spec.make_dry_run:
            command = command.replace("make ", "make -n ", 1)
        if spec.server:
            if not port_free(spec.server):
                pytest.skip(f"port {spec.server} is taken on this machine")
            proc = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=project, env=environment(),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            try:
                assert b"<html" in wait_for_http(spec.server, proc).lower()
            finally:
                try:
                    os.killpg(proc.pid, 15)
                except ProcessLookupError:  # it exited already: the assertion above says why
                    pass
                proc.wait(timeout=30)
            return
        before = {f: _mtime(project / f) for f in spec.files + spec.unchanged}
        seed = str(1000 + ordered().index(documented))  # a new study per command that joins a search
        command = command.replace("{seed}", seed)
        if spec.joins:  # the worker waits for work first, so that the search cannot end before it joins
            proc, out = join(project, command, spec.joins.replace("{seed}", seed))
        else:
            proc = shell(project, command)
            out = proc.stdout + proc.stderr
        if spec.check is not None:
            spec.check(project, out)
        for pattern in spec.matches:
            assert re.search(pattern, out), f"`{command}` did not print {pattern!r}:\n{out[-4000:]}"
        if spec.ok:
            assert proc.returncode == 0, f"`{command}` failed:\n{out[-4000:]}"
        else:
            assert proc.returncode == 1, f"`{command}` should fail with exit code 1:\n{out[-4000:]}"
            assert "Traceback" not in out, f"`{command}` printed a traceback:\n{out[-6000:]}"
            assert spec.error_marker in out, out[-3000:]
        for text in spec.says:
            assert text in out, f"`{command}` did not say {text!r}:\n{out[-4000:]}"
        for text in spec.never:
            assert text not in out, f"`{command}` said {text!r}:\n{out[-4000:]}"
        for text in spec.once:
            assert out.count(text) == 1, f"`{command}` said {text!r} {out.count(text)} times:\n{out[-4000:]}"
        for f in spec.files:
            assert _mtime(project / f) > before[f], f"`{command}` did not write {f}"
        for f in spec.unchanged:
            assert _mtime(project / f) == before[f] > 0, f"`{command}` rewrote {f}"
    finally:
        tiny.write_text(TINY)


def loaded_the_oldest_export(project: Path, out: str) -> None:
    """predict.model_version=<the oldest version>: that export's model classified the images (the log names its
    creation time), not the newest one."""
    versions = sorted((project / "data" / "07_model_output" / "exported_model.json").iterdir())
    assert len(versions) >= 2, "the earlier commands should have left several exports"
    created = [json.loads((v / "exported_model.json").read_text())["created"] for v in versions]
    assert created[0] != created[-1]
    assert f"exported {created[0]}" in out and f"exported {created[-1]}" not in out, out[-3000:]


def join(project: Path, worker: str, search: str) -> tuple[subprocess.Popen, str]:
    """Start ``worker`` in the background; once it waits for work (it has logged its study), run ``search`` to its
    end; then the worker's process and output. The search may not end before the worker has joined, however
    slow the machine is: a worker that starts after a tiny search ended would train nothing."""
    log = project / "worker.log"
    proc = subprocess.Popen(["bash", "-c", worker], cwd=project, env=environment(), stdout=log.open("w"),
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None and "search worker" not in log.read_text():
            time.sleep(0.2)
        assert proc.poll() is None, f"`{worker}` ended before the search started:\n{log.read_text()[-4000:]}"
        searched = shell(project, search)
        assert searched.returncode == 0, f"`{search}` failed:\n{(searched.stdout + searched.stderr)[-4000:]}"
        proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    return proc, log.read_text()


def _mtime(path: Path) -> float:
    return path.stat().st_mtime if path.exists() else 0.0


@pytest.mark.parametrize("params, says", [
    ("search.generations=abc", "search.generations must be an integer, got 'abc'"),
    ("retrain.seeds=684", "retrain.seeds must be a list of integers, got 684"),
    ('"compare.methods=[linear_probe,nope]"', "Unknown method 'nope'"),
    ("progress.display=fancy", "progress.display must be one of auto, bar, lines, off, got 'fancy'"),
    ("confirm.rule=luckiest", "confirm.rule must be one of best, confirmed, parsimonious, got 'luckiest'"),
])
@pytest.mark.integration
def test_bad_parameters_stop_the_run_with_one_message(project, params, says):
    pipeline = "compare" if "compare." in params else "__default__"
    proc = shell(project, f"kedro run --pipelines {pipeline} --params {params}", timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in out, out[-4000:]
    assert says in out and "nothing was run" in out, out[-3000:]
    assert "Running node" not in out, "a node ran before the parameters were checked"


@pytest.mark.integration
def test_bad_data_stops_the_run_before_source_pretraining(project):
    """A corrupt file in the user's folder is found before the slowest stage, with every bad file named."""
    root = project / "data" / "01_raw" / "broken_images"
    make_image_folder(root)
    (root / "cat" / "0.png").write_bytes(b"")
    (root / "dog" / "3.png").write_bytes((root / "dog" / "2.png").read_bytes()[:100])
    proc = shell(project, "kedro run --params data.source.kind=image_folder,data.source.path=data/01_raw/broken_images",
                 timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in out, out[-4000:]
    assert "2 of 16 image files cannot be read" in out and "cat/0.png" in out and "dog/3.png" in out, out[-3000:]
    assert "Running node" not in out, "a node (source pretraining) ran before the data was checked"


@pytest.mark.integration
def test_every_dataset_panel_of_kedro_viz_answers_after_a_run(project):
    """`kedro viz` after `kedro run` (issue 26): every dataset's panel (GET /api/nodes/<id>, what a click on a
    dataset asks) answers, previews of the saved tables included. Runs the tiny default run first when the
    earlier tests of this module did not."""
    if not list((project / "data" / "07_model_output" / "search_trials.parquet").glob("*/search_trials.parquet")):
        proc = shell(project, "kedro run")
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    port = 4143
    if not port_free(port):
        pytest.skip(f"port {port} is taken on this machine")
    proc = subprocess.Popen(["bash", "-c", f"exec kedro viz run --no-browser --port {port}"], cwd=project,
                            env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_for_http(port, proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/main", timeout=60) as r:
            nodes = json.loads(r.read())["nodes"]
        datasets = [n for n in nodes if n["type"] == "data"]
        assert any(n["name"] == "search_trials" for n in datasets)
        failed = {}
        for n in datasets:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/nodes/{n['id']}", timeout=60) as r:
                    json.loads(r.read())
            except urllib.error.HTTPError as e:
                failed[n["name"]] = e.code
        assert not failed, f"dataset panels that do not answer (HTTP status): {failed}"
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def make_class_folder(root: Path, seed: int, per_class: int = 12) -> None:
    """A small image folder of two classes (a bright band on the left or on the right)."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(("left", "right")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            a = (rng.random((36, 36, 3)) * 80).astype(np.uint8)
            a[:, c * 18:(c + 1) * 18] += 150
            Image.fromarray(a).save(root / name / f"{i}.png")


#: two tiny settings of the paper's sweep: data the test makes, resnet10 from scratch, the toy sizes
SWEEP_PARAMS = ",".join([
    "paper.datasets.bands_a.kind=image_folder", "paper.datasets.bands_a.path=data/01_raw/bands_a",
    "paper.datasets.bands_b.kind=image_folder", "paper.datasets.bands_b.path=data/01_raw/bands_b",
    "paper.archs.resnet10.resize_size=32", "paper.archs.resnet10.crop_size=32", "backbone.weights=none",
    "data.split.train_per_class=4", "data.split.val_per_class=4", "search.population=4", "search.elite=1",
    "search.generations=1", "search.seeds=[1]", "training.epochs=1", "training.batch_size=32", "retrain.seeds=[559]",
    "compare.methods=[full_finetune]", "compare.resamplings=1", "progress.display=lines",
])


@pytest.mark.integration
def test_sweep_runs_two_settings_resumes_and_writes_the_table(project):
    """`kedro sweep` (docs/guides/paper.md): each setting in a folder of its own, finished steps skipped (a
    stopped sweep resumes), one table beside the paper's numbers."""
    for name, seed in (("bands_a", 3), ("bands_b", 4)):
        make_class_folder(project / "data" / "01_raw" / name, seed)
    sweep = f'kedro sweep --out data/sweep_test --params "{SWEEP_PARAMS}" --settings '
    out = project / "data" / "sweep_test"
    first = shell(project, sweep + "bands_a:resnet10")  # stopped after its first setting
    log = first.stdout + first.stderr
    assert first.returncode == 0, log[-4000:]
    assert (out / "bands_a-resnet10" / "sweep_run.json").is_file() and not (out / "bands_b-resnet10").exists()
    assert "search fidelity: switched off (fidelity.enabled: false)" in log  # off in the paper environment
    report = sorted((out / "bands_a-resnet10" / "08_reporting" / "test_metrics.json").glob("*/test_metrics.json"))
    assert len(report) == 1  # the setting's own versioned outputs, not the project's data/
    again = shell(project, sweep + "bands_a:resnet10,bands_b:resnet10")  # resumed: bands_a is not redone
    log = again.stdout + again.stderr
    assert again.returncode == 0, log[-4000:]
    assert log.count("done before, skipped") == 2, log[-4000:]
    assert "bands_b-resnet10 compare: kedro run --env paper --pipelines compare" in log, log[-4000:]
    assert len(sorted((out / "bands_a-resnet10" / "08_reporting" / "test_metrics.json").glob("*/*.json"))) == 1
    table = (out / "sweep_table.md").read_text()
    for setting in ("| bands_a | resnet10 | biotune |", "| bands_a | resnet10 | full_finetune |",
                    "| bands_b | resnet10 | biotune |", "| bands_b | resnet10 | full_finetune |"):
        assert setting in table, table
    assert "paper test acc. %" in table and "difference (pp)" in table
    rows = pd.read_csv(out / "sweep_table.csv")
    assert len(rows) == 4 and rows["trainings"].gt(0).all() and rows["test_macro_accuracy_pct"].between(0, 100).all()
