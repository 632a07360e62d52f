"""Run the search node or a worker node in its own process (used by test_search_survival.py).

usage: python search_process.py {search|worker} INPUTS.pt
"""

import logging
import os
import sys

import torch

from evotune.pipelines.search.nodes import run_search, run_search_worker
from evotune.search.store import StudyStore

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    torch.set_num_threads(1)
    if os.environ.get("EVOTUNE_TEST_DETERMINISTIC"):  # tests/test_cuda.py: the same kernels as the test process
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    role, path = sys.argv[1], sys.argv[2]
    inputs = torch.load(path, weights_only=False)
    args = (inputs["backbone"], inputs["train"], inputs["val"], StudyStore(inputs["storage"]), inputs["search"],
            inputs["training"])
    if role == "search":
        trials, _, best = run_search(*args)
        print("BEST", best.key, best.fitness, flush=True)
    else:
        log = run_search_worker(*args)
        print("WORKER_UNITS", len(log), flush=True)
