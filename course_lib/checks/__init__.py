"""Checks that grade the exercises, one module per lesson topic.

- ``basics``     lesson 00
- ``attention``  lesson 01
- ``tokenizer``  lesson 02 (a BPE merge step)
- ``models``     lesson 02 (next-token loss, masking rule, cached generation)
"""
