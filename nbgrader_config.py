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

# A learner's cell may run for at most this many seconds when graded; then the kernel
# is interrupted, that cell fails, and grading goes on with the next cell.
c.Execute.timeout = 30
c.Execute.interrupt_on_timeout = True

# Outputs never go into the learner's release.
c.ClearOutput.enabled = True
