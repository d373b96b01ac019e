"""Analyses of trained classifiers (the paper's Table 7 and Figs. 5-6): a linear transfer probe, t-SNE of
the penultimate features, and the teacher-student logit-correlation difference. Each reads checkpoints
written by tools/train_cls.py; the tools in tools/ are their command lines."""


class AnalysisError(ValueError):
    """Bad input to an analysis (a file, a folder, an option), reported as one line."""
