"""Fuzz targets for the readers of untrusted files (`python3 make.py fuzz [SECONDS]`).

Each target is seeded with valid files that the project writes itself and may end only in its
documented outcomes; targets.py lists them, run.py drives them (atheris where it is installed,
else a seeded mutation loop), mutate.py holds the mutations the loop and the tests share.
"""
