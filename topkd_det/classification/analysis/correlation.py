"""Fig. 6: how far a student's logit structure is from its teacher's.

Two class-by-class matrices are offered, each computed for teacher and student over the same test images:
- ``mean_logit`` (default, what the DKD/mdistiller figure plots, ``tools/visualizations/correlation.ipynb``):
  M[i, j] = the mean logit of class j over the test images of true class i;
- ``pearson``: the Pearson correlation between the logits of classes i and j over all test images.
The heat-map is the normalised absolute difference |M_s − M_t| / max_diff with the diagonal set to 0
(mdistiller's convention, max_diff 3.0 there, "a common max-value for fair comparison between methods";
2.0 for ``pearson``, the largest possible difference of two correlations). Its mean over all C×C entries
(diagonal included, as mdistiller prints it) is the number reported.
"""
from typing import Dict

import numpy as np

MATRICES = ("mean_logit", "pearson")
DEFAULT_MAX_DIFF = {"mean_logit": 3.0, "pearson": 2.0}


def class_matrix(logits: np.ndarray, labels: np.ndarray, kind: str) -> np.ndarray:
    num_classes = logits.shape[1]
    if kind == "pearson":
        return np.nan_to_num(np.corrcoef(logits, rowvar=False))  # a constant logit column has no correlation
    matrix = np.zeros((num_classes, num_classes))
    for c in range(num_classes):
        rows = logits[labels == c]
        matrix[c] = rows.mean(0) if len(rows) else np.nan
    return matrix


def difference(student_logits: np.ndarray, teacher_logits: np.ndarray, labels: np.ndarray, kind: str = "mean_logit",
               max_diff: float = 0.0) -> Dict:
    max_diff = max_diff or DEFAULT_MAX_DIFF[kind]
    diff = np.abs(class_matrix(student_logits, labels, kind) - class_matrix(teacher_logits, labels, kind)) / max_diff
    np.fill_diagonal(diff, 0.0)
    present = ~np.isnan(diff).all(1)  # classes absent from the test labels have no mean_logit row
    diff = diff[present][:, present] if kind == "mean_logit" else diff
    return {"diff": diff, "mean": float(diff.mean()), "max": float(diff.max()), "max_diff": max_diff}


def plot(path: str, panels, vmax: float = 1.0) -> None:
    """Heat-maps side by side, one per {"title", "diff", "mean"}, on one colour scale (0..vmax)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels) + 0.8, 3.6), squeeze=False)
    image = None
    for ax, panel in zip(axes[0], panels):
        image = ax.imshow(panel["diff"], vmin=0.0, vmax=vmax, cmap="PuBuGn")
        ax.set_title(f"{panel['title']}\nmean {panel['mean']:.4f}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=list(axes[0]), fraction=0.02 * len(panels), pad=0.02)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
