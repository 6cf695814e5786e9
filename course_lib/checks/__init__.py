"""Checks that grade the exercises, one module per lesson topic.

- ``basics``     lesson 00
- ``attention``  lesson 01
"""
