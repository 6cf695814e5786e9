"""nbgrader settings for this course (nbgrader 0.9.6).

The repository root is the course directory:

- ``solutions/NN_topic/NN_topic.ipynb`` is the instructor's source (solutions and hidden tests);
- ``notebooks/NN_topic/NN_topic.ipynb`` is the learner's release, made by ``make release``.

An instructor grades submissions with the usual nbgrader commands from this folder
(``nbgrader collect``/``autograde``/``generate_feedback``); the gradebook and the
``submitted/``, ``autograded/`` and ``feedback/`` folders are ignored by git.
"""

c = get_config()  # noqa: F821  (provided by nbgrader when it loads this file)

c.CourseDirectory.course_id = "llm-course"
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "notebooks"

# Autograding runs the learner's cells in a sandboxed process and judges each locked test
# cell in the grader's own process (course_lib/autograde.py): nbgrader's Execute, which runs
# the tests inside the learner's kernel, is replaced.
from course_lib.autograde import RestoreCells, TrustedExecute  # noqa: E402
from nbconvert.preprocessors import ClearMetadataPreprocessor  # noqa: E402
from nbgrader.preprocessors import (  # noqa: E402
    AssignLatePenalties, CheckCellMetadata, ClearOutput, IgnorePattern, LimitOutput, OverwriteCells, OverwriteKernelspec,
    SaveAutoGrades,
)

# Before grading, every cell of the release with a grade id is made to appear once, as released
# (duplicated, renamed, retyped or deleted cells are set right, and each such change is one line
# in the log and in the class report); nbgrader's DeduplicateIds is replaced.
c.Autograde.sanitize_preprocessors = [ClearOutput, RestoreCells, OverwriteKernelspec, OverwriteCells, CheckCellMetadata]
c.Autograde.autograde_preprocessors = [
    TrustedExecute, IgnorePattern, ClearMetadataPreprocessor, LimitOutput, SaveAutoGrades, AssignLatePenalties, CheckCellMetadata,
]
# A learner's cell, or one call of a learner's function by a check, may use at most this many
# seconds of CPU time when graded (and ten times as long in wall time); then it is interrupted
# (or its process stopped and the cells before it run again), it fails, and grading goes on
# with the next cell. CPU time, so that a busy machine does not fail honest work.
c.TrustedExecute.timeout = 60
# The whole notebook, all cells and calls together (INSTRUCTORS.md: "Limits"): past the CPU or
# wall-time budget the remaining cells are not run and the remaining checks fail.
c.TrustedExecute.notebook_cpu_seconds = 180
c.TrustedExecute.notebook_wall_seconds = 600
c.TrustedExecute.memory_mib = 4096  # address space, not memory: lesson 11 maps 3.3 GB (sentence-transformers), 1 GB resident
c.TrustedExecute.processes = 256
c.TrustedExecute.output_chars = 1_000_000

# Feedback shows what each check printed and why it failed, never the hidden tests' source.
from course_lib.autograde import HideHiddenTests  # noqa: E402
from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor  # noqa: E402
from nbgrader.preprocessors import GetGrades  # noqa: E402

c.GenerateFeedback.preprocessors = [GetGrades, HideHiddenTests, CSSHTMLHeaderPreprocessor]

# `nbgrader zip_collect LESSON`: files downloaded from a learning platform, named
# STUDENT_anything_NN_topic.ipynb (Canvas: login_userid_attachmentid_NN_topic.ipynb), put in
# downloaded/LESSON/archive/ (zip archives of them too).
# nbgrader matches the pattern against the file's whole path.
c.FileNameCollectorPlugin.named_regexp = r".*/(?P<student_id>[A-Za-z0-9.@-]+)_(?:[^/]*_)?(?P<file_id>\d\d_[a-z0-9_]+\.ipynb)$"
# nbgrader's own Execute still runs `nbgrader validate` in the learner's kernel.
c.Execute.timeout = 30
c.Execute.interrupt_on_timeout = True

# Outputs never go into the learner's release.
c.ClearOutput.enabled = True
