"""nbgrader configuration for the course (read by `nbgrader ...` run in this directory and by JupyterLab).

Lifecycle: solutions/<id>/<id>.ipynb (instructor source) --`make exercises`--> exercises/<id>/<id>.ipynb
(the released notebook, committed). Grading a class is `python -m grader grade ...` (see grader/), which
reads this file for the feedback settings below and points nbgrader at its own course directory; plain
`nbgrader autograde` / `nbgrader generate_feedback` in this directory work too.
"""

import os

c = get_config()  # noqa: F821  (provided by traitlets when it loads this file)

ROOT = os.path.dirname(os.path.abspath(__file__))

# Course layout: the instructor sources are solutions/, the released notebooks exercises/.
c.CourseDirectory.root = ROOT
c.CourseDirectory.course_id = "transformer-course"
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "exercises"
# The default SQLite gradebook, spelled out; `make exercises` runs with --no-db and never creates it.
c.CourseDirectory.db_url = "sqlite:///" + os.path.join(ROOT, "gradebook.db")

# Generating exercises: solution regions become a stub that fails loudly until the student writes code,
# hidden tests are removed (nbgrader stores them in the gradebook and restores them when autograding).
c.ClearSolutions.begin_solution_delimeter = "BEGIN SOLUTION"
c.ClearSolutions.end_solution_delimeter = "END SOLUTION"
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
c.ClearHiddenTests.begin_test_delimeter = "BEGIN HIDDEN TESTS"
c.ClearHiddenTests.end_test_delimeter = "END HIDDEN TESTS"
c.ClearHiddenTests.enforce_metadata = True

# Plain `nbgrader autograde` (python -m grader does not use these: it runs student code in its sandbox with
# its own limits, see `python -m grader grade --help`).
# Autograding: every exercise cell runs in well under a few seconds on one CPU core; 60 s leaves room for
# a slow CI machine while an infinite loop is still cut off (the cell gets a CellTimeoutError and the
# rest of the notebook runs on). After the interrupt nbgrader would, by default, fail the whole notebook
# when the kernel's output stream stays silent; raise_on_iopub_timeout = False grades the other cells.
c.ExecutePreprocessor.timeout = 60
c.Execute.timeout = 60
c.Execute.interrupt_on_timeout = True
c.Execute.raise_on_iopub_timeout = False
# Starting a kernel on a busy 2-core machine can take longer than nbclient's default minute.
c.Execute.startup_timeout = 180
c.Execute.execute_retries = 0
# A student who deletes a test cell gets it back from the gradebook (so it is graded, not skipped).
c.OverwriteCells.add_missing_cells = True
# Keep huge printed outputs out of the autograded notebook and the feedback.
c.LimitOutput.max_lines = 200
c.LimitOutput.max_traceback = 60

# Late submissions: an assignment is late when its submission's timestamp (timestamp.txt, written by
# `nbgrader submit` and kept by `nbgrader collect`) is past the assignment's due date in the gradebook (set with
# `nbgrader db assignment add 03_attention --duedate="2026-12-01 17:00:00 Europe/Berlin"`, or in formgrader;
# no due date, never late). The course-wide rule: 10% of each notebook's score per day or part of a day late,
# never more than the score (grader.gradebook.LatePenaltyPerDay). nbgrader records it as the notebook's
# late_submission_penalty; both `python -m grader grade` and plain `nbgrader autograde` apply it. For no penalty
# use nbgrader's own plugin: plugin_class = "nbgrader.plugins.LateSubmissionPlugin" (penalty_method "none" or
# "zero").
c.AssignLatePenalties.plugin_class = "grader.gradebook.LatePenaltyPerDay"
c.LatePenaltyPerDay.percent_per_day = 10.0

# Feedback: the standard nbgrader feedback plus a pass that removes hidden test code from test cells and
# from tracebacks, so the HTML a student receives shows visible tests and diagnostics only.
c.GenerateFeedback.preprocessors = [
    "nbgrader.preprocessors.GetGrades",
    "grader.feedback.InertComments",
    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
    "grader.feedback.RedactHiddenTests",
]
