"""Paired multi-seed comparisons of distillation methods (``tools/compare.py``): plan and check every
(row, seed) run, train the missing ones (``runner``) with a task's backend (``detection``,
``classification``), pair the rows by seed (``stats``) and report (``report``)."""
