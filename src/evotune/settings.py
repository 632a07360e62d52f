"""Project settings. See https://docs.kedro.org/en/stable/kedro_project_setup/settings.html"""

import warnings

from evotune.config import ProjectConfigLoader
from evotune.hooks import ComparePipelineHooks, ProgressHooks, ValidationHooks

# Kedro 1.7's config loader calls OmegaConf.register_new_resolver, which omegaconf 2.4 marks deprecated:
# three warnings on every run that a user can do nothing about (Kedro's to change).
warnings.filterwarnings("ignore", message=r"register_new_resolver\(\) is deprecated", category=UserWarning)

# Parameters merge key by key (base < run environment < --params); see evotune.config.
CONFIG_LOADER_CLASS = ProjectConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
}

# pluggy calls the hooks registered last first: the parameters are checked before progress reads its own
HOOKS = (ComparePipelineHooks(), ProgressHooks(), ValidationHooks())
