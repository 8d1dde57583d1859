"""Everything that checks student code: the per-assignment checks and the instructor's batch autograder.

    grader/checks/       the checks the notebooks call (check_<item>) and the grader uses: one module per
                         assignment (cases, reference, forbidden shortcuts, known mistakes, check_<item>),
                         plus the shared machinery (cases, run, shortcuts, compare, results, report)
    python -m grader grade SUBMISSIONS --out OUT [--workers N] [--db-url URL] [--no-sandbox] ...

How a class is graded
    SUBMISSIONS holds nbgrader's submitted layout, <student_id>/<assignment_id>/<assignment_id>.ipynb.
    OUT becomes an nbgrader course (grader.course): the instructor notebooks are copied to OUT/source and
    recorded in the gradebook. Each submission is one `Job`, graded by `SandboxRunner` (grader.runner) in
    a worker process (grader.cli.grade_jobs):
      1. grader.submission: the items and their points come from the instructor's notebook; from the
         submission only code is taken (test cells dropped whatever their metadata says, locked cells as
         released, solution cells by grade_id);
      2. grader.execution + grader.sandbox (bwrap, harness, channel): that code runs in a bubblewrap sandbox, then
         each item's function is called on cases made here from seeds the student never sees; only the
         outputs come back, as plain tensors and numbers; a crash or hang costs the step it happened in;
      3. grader.checks.compare.grade, here: comparison with transformer_ref, partial credit per group
         of cases, the likely mistake; shortcuts found in the source here and by trip-wires in the sandbox;
      4. nbgrader: scores and comments go into the worker's gradebook, GenerateFeedback writes the HTML
         page (grader.feedback redacts hidden tests); the main process merges every result into the main
         gradebook (any SQLAlchemy URL) and OUT/grades.csv.
"""
