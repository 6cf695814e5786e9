"""course_lib: the reference code of the course "All you need about LLMs".

One module per idea; each function's docstring names the lesson that teaches it.

- ``device``     lesson 00: which device to compute on, seeding
- ``glossary``   lesson 00 (and every lesson after): the source text's terms
- ``attention``  lesson 01: softmax, scaled dot-product attention, masks, multi-head attention
- ``checks``     the checks that grade the exercises
- ``grading``    release, autograde and self-check with nbgrader
"""

__version__ = "0.1.0"
