"""nbgrader settings for a student's JupyterLab and nbgrader commands (`make lab` puts this folder on
JUPYTER_CONFIG_PATH, so the instructor's own Jupyter set-up is left alone).

The Assignments panel and `nbgrader fetch_assignment` / `submit` go through the exchange directory the
instructor released into:
    NBGRADER_EXCHANGE   the exchange directory (default: nbgrader's, /usr/local/share/nbgrader/exchange)
    NBGRADER_COURSE     the course id (default: transformer-course, as in the repository's nbgrader_config.py)
A fetched assignment lands in <course>/<assignment>/ under the folder JupyterLab (or the command) runs in,
so it never clashes with exercises/<assignment>/. Submit (the panel's and `nbgrader submit`'s) is
grader.lab.submit.SafeSubmit: it refuses to hand in the fetched copy unchanged while a copy with work in it
exists under the served folder (exercises/<assignment>/, where `make lab` has the student work), and says so.
"""

import os

c = get_config()  # noqa: F821  (provided by traitlets when it loads this file)

c.CourseDirectory.course_id = os.environ.get("NBGRADER_COURSE") or "transformer-course"
c.Exchange.root = os.environ.get("NBGRADER_EXCHANGE") or "/usr/local/share/nbgrader/exchange"
c.Exchange.path_includes_course = True
c.ExchangeFactory.submit = "grader.lab.submit.SafeSubmit"
