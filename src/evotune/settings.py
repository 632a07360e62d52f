"""Project settings. See https://docs.kedro.org/en/stable/kedro_project_setup/settings.html"""

from evotune.config import ProjectConfigLoader
from evotune.hooks import ComparePipelineHooks, ValidationHooks

# Parameters merge key by key (base < run environment < --params); see evotune.config.
CONFIG_LOADER_CLASS = ProjectConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
}

HOOKS = (ComparePipelineHooks(), ValidationHooks())
