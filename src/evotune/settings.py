"""Project settings. See https://docs.kedro.org/en/stable/kedro_project_setup/settings.html"""

import warnings

from evotune.config import ProjectConfigLoader
from evotune.hooks import ComparePipelineHooks, ProgressHooks, ValidationHooks
from evotune.tracking import PLUGIN_NAMES, MlflowTrackingHooks

# Kedro 1.7's config loader calls OmegaConf.register_new_resolver, which omegaconf 2.4 marks deprecated:
# three warnings on every run that a user can do nothing about (Kedro's to change).
warnings.filterwarnings("ignore", message=r"register_new_resolver\(\) is deprecated", category=UserWarning)

# Parameters merge key by key (base < run environment < --params); see evotune.config.
CONFIG_LOADER_CLASS = ProjectConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
}

# Kedro (pluggy) calls hooks in the reverse order of this tuple: the parameters are checked first,
# then progress reads its own, and a run the checks stop starts no MLflow run.
HOOKS = (MlflowTrackingHooks(), ComparePipelineHooks(), ProgressHooks(), ValidationHooks())

# Installed, kedro-mlflow would record every run; tracking is off unless a run sets
# tracking.mlflow: true, and MlflowTrackingHooks then drives kedro-mlflow's hook (evotune.tracking).
DISABLE_HOOKS_FOR_PLUGINS = PLUGIN_NAMES
