"""The paper's settings (Kedro environment ``conf/paper``) and their fail-fast check.

``conf/paper/parameters.yml`` holds the table of the 9 datasets (their
``data.source``) and 4 architectures (their image sizes) and the chosen
``paper.dataset`` / ``paper.arch``; runtime parameters choose another
(``kedro run --env paper --params paper.dataset=dtd,paper.arch=vgg19``). Kedro
merges runtime parameters into the configuration *before* interpolation, so
``data``, ``backbone`` and the study name follow the choice; a name that is not
in the table resolves to ``null``.

:func:`check_paper_setting` turns every problem of a paper run into one clear
error before anything trains: unknown names (with the valid ones), ImageNet
weights that are neither in the torch hub cache nor downloadable, and data that
is neither there nor downloadable (``download: true``, the paper environment's
default). Offline (``EVOTUNE_OFFLINE=1``, or a host that does not answer) each
message names the file, where it goes and its URL. It looks at the file system
and, for what is missing, asks the file's host once (a HEAD request, see
:mod:`evotune.downloads`); it loads no data and no model. Call it early, e.g.
from the project's validation hook::

    from evotune.paper_setting import check_paper_setting
    check_paper_setting(params)      # no-op when params has no `paper` key
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .downloads import unreachable
from .errors import EvotuneError

#: what must exist under ``data.source.root`` for each torchvision dataset (offline)
TORCHVISION_EXPECTED: dict[str, tuple[str, ...]] = {
    "Flowers102": ("flowers-102/jpg", "flowers-102/imagelabels.mat", "flowers-102/setid.mat"),
    "FGVCAircraft": ("fgvc-aircraft-2013b/data/images", "fgvc-aircraft-2013b/data/variants.txt"),
    "DTD": ("dtd/dtd/images", "dtd/dtd/labels"),
    "CIFAR10": ("cifar-10-batches-py/data_batch_1", "cifar-10-batches-py/test_batch"),
    "STL10": ("stl10_binary/train_X.bin", "stl10_binary/test_X.bin"),
    "MNIST": ("MNIST/raw/train-images-idx3-ubyte", "MNIST/raw/t10k-images-idx3-ubyte"),
    "USPS": ("usps.bz2", "usps.t.bz2"),
    "SVHN": ("train_32x32.mat", "test_32x32.mat"),
}


class PaperSettingError(EvotuneError):
    """A paper setting cannot run here; the message lists every problem and what to do."""


def paper_setting_problems(params: dict[str, Any], *, check_files: bool = True) -> list[str]:
    """Every problem of the paper setting in ``params`` (empty when it can run, or when not a paper run)."""
    paper = params.get("paper")
    if not isinstance(paper, dict):
        return []
    problems: list[str] = []
    datasets, archs = paper.get("datasets") or {}, paper.get("archs") or {}
    dataset, arch = paper.get("dataset"), paper.get("arch")
    if dataset not in datasets:
        problems.append(f"paper.dataset {dataset!r} is not a paper dataset; valid: {', '.join(datasets)} "
                        "(e.g. --params paper.dataset=dtd).")
    if arch not in archs:
        problems.append(f"paper.arch {arch!r} is not a paper architecture; valid: {', '.join(archs)} "
                        "(e.g. --params paper.arch=vgg19).")
    if problems:
        return problems
    backbone, data = params.get("backbone", {}), params.get("data", {})
    if backbone.get("arch") != arch:
        problems.append(f"backbone.arch is {backbone.get('arch')!r} but paper.arch is {arch!r}: keep "
                        "`backbone.arch: ${{paper.arch}}` in conf/paper/parameters_backbone.yml.")
    image = data.get("image", {})
    from .backbones import get_arch

    spec = get_arch(arch)
    if image.get("crop_size") != spec.input_size:
        problems.append(f"data.image.crop_size is {image.get('crop_size')} but {arch} expects {spec.input_size}px.")
    if check_files:
        problems += weights_problems(arch, backbone)
        problems += _data_problems(dataset, data.get("source"))
    return problems


def check_paper_setting(params: dict[str, Any], *, check_files: bool = True) -> None:
    """Raise :class:`PaperSettingError` listing every problem of the paper setting (no-op outside ``paper``)."""
    problems = paper_setting_problems(params, check_files=check_files)
    if problems:
        paper = params.get("paper", {})
        raise PaperSettingError(
            f"The paper setting dataset={paper.get('dataset')!r}, arch={paper.get('arch')!r} cannot run here; "
            "nothing was run:\n  - " + "\n  - ".join(problems)
        )


def weights_problems(arch: str, backbone: dict) -> list[str]:
    """Why ``backbone.weights`` cannot be used here (empty when it can: a cached or downloadable
    file, a checkpoint that exists, none or source). The one check of the weights before a run."""
    from .backbones import imagenet_variant, imagenet_weights_problem, is_weights_url, url_weights_problem

    weights = str(backbone.get("weights", "imagenet")).strip()
    variant = imagenet_variant(weights)
    if variant is not None:
        problem = imagenet_weights_problem(arch, backbone.get("torch_home"), variant)
    elif is_weights_url(weights):
        problem = url_weights_problem(weights, backbone.get("torch_home"))
    elif weights.lower() not in ("none", "random", "scratch", "source") and not Path(weights).expanduser().is_file():
        problem = f"backbone.weights: the checkpoint file '{weights}' does not exist."
    else:
        problem = None
    return [] if problem is None else [problem]


def _data_problems(dataset: str, source: dict | None) -> list[str]:
    if not isinstance(source, dict):
        return [f"data.source is not set for paper dataset {dataset!r} (paper.datasets.{dataset})."]
    kind = source.get("kind")
    if kind == "torchvision":
        root = Path(str(source.get("root", ""))).expanduser()
        name = str(source.get("name"))
        expected = TORCHVISION_EXPECTED.get(name, ())
        missing = [root / e for e in expected if not (root / e).exists()] if root.is_dir() else [root]
        if not missing:
            return []
        where = (f"{missing[0]} does not exist (root '{root}', absolute '{root.resolve()}')")
        from .data.sources import torchvision_download_url

        url = torchvision_download_url(name)
        if source.get("download"):
            why = unreachable(url) if url else None
            if why is None:
                return []  # downloaded by torchvision when the data stage starts
            return [
                f"data of {dataset} (torchvision {name}) missing: {where}. This machine cannot download it ({why}; "
                f"download: true): on a machine with internet download {url} (torchvision's download of {name}) "
                f"and copy the extracted files so that {', '.join(str(root / e) for e in expected) or root} exist, "
                f"or point data.source.root (paper.datasets.{dataset}.root) at the folder holding them."
            ]
        return [
            f"data of {dataset} (torchvision {name}) missing: {where}. Copy the extracted files so that "
            f"{', '.join(str(root / e) for e in expected) or root} exist, or point data.source.root "
            f"(paper.datasets.{dataset}.root) at the folder holding them, or set "
            f"paper.datasets.{dataset}.download: true (torchvision downloads {url or 'it'})."
        ]
    if kind == "csv":
        out = []
        path = Path(str(source.get("path", ""))).expanduser()
        if not path.is_file():
            out.append(f"data of {dataset}: the CSV file {path} (absolute '{path.resolve()}') does not exist; set "
                       f"paper.datasets.{dataset}.path (for ISIC 2020: ISIC_2020_Training_GroundTruth.csv).")
        root = Path(str(source.get("root") or path.parent)).expanduser()
        if not root.is_dir():
            out.append(f"data of {dataset}: the image folder {root} (absolute '{root.resolve()}') does not exist; "
                       f"set paper.datasets.{dataset}.root to the folder of the <{source.get('image_col')}>"
                       f"{source.get('extension', '')} images.")
        return out
    return []
