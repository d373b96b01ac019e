"""Fig. 5: t-SNE of penultimate features, with numbers for how well the classes separate.

The embedding is scikit-learn's ``TSNE`` (defaults, as mdistiller's t-SNE notebook, with a fixed seed).
Separation is reported two ways: the silhouette score of the 2-D points under the true labels (-1..1,
higher is better separated) and the 5-nearest-neighbour accuracy in the 2-D embedding (leave-one-out,
%). Both are computed on the embedding the picture shows.
"""
from typing import Dict, List, Sequence

import numpy as np


def embed(features: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    from sklearn.manifold import TSNE

    perplexity = min(perplexity, (len(features) - 1) / 3)  # TSNE needs perplexity < n
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features)


def separation(points: np.ndarray, labels: np.ndarray, neighbours: int = 5) -> Dict[str, float]:
    from sklearn.metrics import silhouette_score
    from sklearn.neighbors import NearestNeighbors

    k = min(neighbours, len(points) - 1)
    _, index = NearestNeighbors(n_neighbors=k + 1).fit(points).kneighbors(points)
    votes = labels[index[:, 1:]]  # each point's k nearest others (itself is column 0)
    predicted = np.array([np.bincount(row, minlength=labels.max() + 1).argmax() for row in votes])
    return {"silhouette": float(silhouette_score(points, labels)),
            f"knn{k}_top1": float((predicted == labels).mean() * 100)}


def plot(path: str, panels: Sequence[Dict], num_classes: int) -> None:
    """One scatter per panel ({"title", "points", "labels", "silhouette"}), coloured by class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(len(panels), 3)
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4 * rows), squeeze=False)
    cmap = plt.get_cmap("tab10" if num_classes <= 10 else "tab20")
    for ax, panel in zip(axes.flat, panels):
        ax.scatter(panel["points"][:, 0], panel["points"][:, 1], c=[cmap(int(c) % cmap.N) for c in panel["labels"]],
                   s=2, alpha=0.6, linewidths=0)
        ax.set_title(f"{panel['title']}\nsilhouette {panel['silhouette']:.3f}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_points(path: str, panels: Sequence[Dict]) -> None:
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "x", "y", "label"])
        for panel in panels:
            for (x, y), label in zip(panel["points"], panel["labels"]):
                writer.writerow([panel["title"], f"{x:.4f}", f"{y:.4f}", int(label)])


def summary(panels: List[Dict]) -> List[Dict]:
    return [{k: v for k, v in panel.items() if k not in ("points", "labels")} for panel in panels]
