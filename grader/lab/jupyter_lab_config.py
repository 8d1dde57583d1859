"""JupyterLab settings for a student's `make lab` (this folder is on JUPYTER_CONFIG_PATH for that command only).

settings/overrides.json changes defaults a student may still change in Settings: notebooks autosave every 5
seconds instead of 120, so that a test cell's check, which compares the kernel's definitions with the saved
notebook (grader/checks/state.py), sees a cell edited and not run again within seconds.
"""

import os

c = get_config()  # noqa: F821  (provided by traitlets when it loads this file)

c.LabApp.app_settings_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "settings")
