"""The instructor's batch autograder: `python -m grader grade SUBMISSIONS --out OUT [--workers N] [--db-url URL]`.

What it does
    SUBMISSIONS holds nbgrader's submitted layout, <student_id>/<assignment_id>/<assignment_id>.ipynb.
    OUT becomes an nbgrader course directory (grader.course): the instructor notebooks are copied to
    OUT/source and recorded in the gradebook with `generate_assignment`; every submission is autograded
    and gets feedback (`autograde`, `generate_feedback`); the gradebook is OUT/gradebook.db (SQLite) or any
    SQLAlchemy URL given with --db-url; OUT/grades.csv has one row per submission
    (student_id, assignment, score, max_score, status, reason, seconds) and
    OUT/feedback/<student_id>/<assignment_id>/<notebook>.html is the page to return to the student.
    A submission that cannot be graded (invalid JSON, dead kernel, ...) scores 0 with the reason in
    grades.csv and in its feedback page; the command still grades everything else and exits 0.

Parallelism (grader.cli.grade_jobs)
    N worker processes each grade in a private course directory OUT/.work/worker-<pid>/ with its own
    SQLite gradebook copied from a template, so no two processes write to one database. Each worker
    returns a plain `Result` (scores per graded cell, comments, a reason); the main process alone writes
    them into the main gradebook and grades.csv.

Trust boundary, now and next
    A `Runner` (grader.runner) turns a `Job` into a `Result`. Today's `NbgraderRunner` is plain nbgrader:
    the student's code runs in a fresh Jupyter kernel, a separate process, but the test cells (and the
    `transformer_ref.testing` checks they call) run in that same kernel, so a determined student can patch
    a check or read the reference. Hidden tests never reach the student's screen (grader.feedback redacts
    them from the feedback), but they do run next to the student's code.

    The next step is a sandboxed Runner that keeps the comparison outside the student's process, using
    the three steps `transformer_ref.testing` is built around:
      1. make_cases(exercise, seed)  (grader process, trusted): inputs from a seed the student never sees;
      2. run_student(exercise, impl, cases)  (sandbox: no network, read-only files, CPU/memory/time
         limits, e.g. a container or nsjail): execute only the student's solution cells and call their
         functions on the cases; the Outcomes (outputs, errors, shortcut calls) go back as a file
         (tensors via torch.save);
      3. compare(exercise, cases, outcomes)  (grader process, trusted): load them with
         torch.load(weights_only=True), compare with the reference, name the mistake, write the scores.
    Such a runner plugs into `grader.cli.grade_jobs` unchanged, because everything outside `Runner.run`
    (job discovery, the worker pool, merging into the gradebook, grades.csv) only sees Jobs and Results.
"""
